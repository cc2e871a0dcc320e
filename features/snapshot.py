"""Point-in-time feature snapshots: one row per subscriber as of the end of a day.

`compute_snapshot` is pure: window features from daily aggregates (`features.daily`) plus the state
tables as of that day. `build_snapshot` reads the data root (daily aggregates of the last
`max(windows)` days up to `as_of`, never later) and writes `data/features/snapshot=D/`.
Every column is declared in `features.catalog`; wide features are conditional sums over one
group-by per table (no pivots), and the whole plan is collected once with the streaming engine.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from features.catalog import (
    DEFAULT_WINDOWS,
    DEVICE_OS_TYPE,
    OFFER_COUNTS,
    PROFILE_WORDS,
    check_windows,
    features_for_tables,
    offer_windows,
    snapshot_categories,
    trend_windows,
    usage_unit,
)
from features.daily import (
    CATEGORY_TYPE,
    DAILY_TABLES,
    MILLI,
    empty_daily,
    from_fixed,
    is_built,
)
from mia.errors import InputError
from mia.hashing import shard_of
from mia.ingest import raw_state
from mia.lake import (
    Lake,
    Shard,
    files_between,
    naming_damage,
    only_shard,
    partition_files,
    remove_path,
    replace_path,
    scan_partitions,
    write_parquet,
    write_partition,
)
from mia.schema import (
    APP_SCREENS,
    CATEGORY,
    DATE,
    PAYMENT_METHODS,
    PRODUCT_ID,
    REQUIRED_TABLES,
    SNAPSHOT_DATE,
    SUBSCRIBER_ID,
    TRANSFER_KINDS,
    USAGE_KINDS,
)
from mia.settings import Settings

logger = logging.getLogger(__name__)

# Intermediate columns. Pass 1 (per bucket): window bucket, days with ..., latest day with ...;
# pass 2 (per subscriber): last day with ... (turned into "days since" features).
_BUCKET = "_bucket"
_DAYS = "_days_"
_LATEST = "_latest_"
_LAST = "_last_"


class SnapshotInputError(InputError):
    """Inputs a snapshot cannot be built from."""


def _since(as_of: dt.date, column: str) -> pl.Expr:
    return (pl.lit(as_of, dtype=pl.Date) - pl.col(column)).dt.total_days()


class _Windows:
    """Window sums over daily aggregates, in two passes that keep the wide work small.

    Pass 1 groups the daily rows of each *bucket* (the days whose shortest window holding them
    is the same; its index) by subscriber (and category), with plain sums only. Pass 2 turns the
    few bucket rows per subscriber into one row of window features with conditional sums. The
    family functions ask for features through `total`, `days` and `last_date`, which record what
    pass 1 must compute.
    """

    def __init__(self, as_of: dt.date, windows: Sequence[int]) -> None:
        self.as_of = as_of
        self.windows = tuple(windows)
        self.first_pass: dict[str, pl.Expr] = {}

    def _inside(self, window: int, category: str | None) -> pl.Expr:
        inside = pl.col(_BUCKET) <= self.windows.index(window)
        return inside if category is None else inside & (pl.col(CATEGORY) == category)

    def _need(self, name: str, expr: pl.Expr) -> str:
        self.first_pass.setdefault(name, expr.alias(name))
        return name

    def total(self, column: str, window: int, category: str | None = None) -> pl.Expr:
        """Sum of a daily column over the window (of one offer category)."""
        name = self._need(column, pl.col(column).sum())
        return pl.when(self._inside(window, category)).then(pl.col(name)).otherwise(0).sum()

    def days(self, window: int, where: str | None = None) -> pl.Expr:
        """Days in the window with a daily row (where `where` > 0)."""
        if where is None:
            name = self._need(_DAYS, pl.len())
        else:
            name = self._need(f"{_DAYS}{where}", (pl.col(where) > 0).sum())
        return pl.when(self._inside(window, None)).then(pl.col(name)).otherwise(0).sum()

    def last_date(self, where: str | None = None, category: str | None = None) -> pl.Expr:
        """Latest day with a daily row (where `where` > 0, of one category); null when none."""
        if where is None:
            name = self._need(_LATEST, pl.col(DATE).max())
        else:
            name = self._need(
                f"{_LATEST}{where}", pl.when(pl.col(where) > 0).then(pl.col(DATE)).max()
            )
        if category is None:
            return pl.col(name).max()
        return pl.when(pl.col(CATEGORY) == category).then(pl.col(name)).max()

    def bucket_days(self) -> list[tuple[dt.date, dt.date]]:
        """(first, last) day of each bucket, most recent bucket first."""
        bounds = []
        for index, window in enumerate(self.windows):
            newest = 0 if index == 0 else self.windows[index - 1]
            bounds.append(
                (self.as_of - dt.timedelta(days=window - 1), self.as_of - dt.timedelta(days=newest))
            )
        return bounds

    def aggregate(self, daily: pl.LazyFrame, features: list[pl.Expr]) -> pl.LazyFrame:
        """Per-subscriber window features of one daily table (after `features` were built).

        Pass 1 groups each bucket's days apart (a date-range filter, which a scan of daily
        partitions answers by skipping the other days' files), so its key is the subscriber
        (and category) alone; the buckets' rows are then stacked for pass 2.
        """
        keys = [SUBSCRIBER_ID]
        if CATEGORY in daily.collect_schema().names():
            keys.append(CATEGORY)
        buckets = pl.concat(
            [
                daily.filter(pl.col(DATE).is_between(pl.lit(first), pl.lit(last), closed="both"))
                .group_by(keys)
                .agg(list(self.first_pass.values()))
                .with_columns(pl.lit(index, dtype=pl.Int8).alias(_BUCKET))
                for index, (first, last) in enumerate(self.bucket_days())
            ]
        )
        return buckets.group_by(SUBSCRIBER_ID).agg(features)


def _usage(w: _Windows) -> list[pl.Expr]:
    exprs = []
    for kind in USAGE_KINDS:
        unit = usage_unit(kind)
        quantity, events = f"{kind}_quantity{MILLI}", f"{kind}_events"
        for window in w.windows:
            exprs.append(from_fixed(w.total(quantity, window)).alias(f"{kind}_{unit}_{window}d"))
            exprs.append(w.total(events, window).alias(f"{kind}_events_{window}d"))
            exprs.append(w.days(window, where=events).alias(f"{kind}_active_days_{window}d"))
    for window in w.windows:
        exprs.append(w.days(window).alias(f"usage_active_days_{window}d"))
        exprs.append(from_fixed(w.total(f"charge{MILLI}", window)).alias(f"charges_{window}d"))
    return exprs


def _usage_derived(windows: Sequence[int]) -> list[pl.Expr]:
    pair = trend_windows(windows)
    if pair is None:
        return []
    short, long = pair
    exprs = []
    for kind in USAGE_KINDS:
        unit = usage_unit(kind)
        recent, baseline = pl.col(f"{kind}_{unit}_{short}d"), pl.col(f"{kind}_{unit}_{long}d")
        exprs.append(
            pl.when(baseline > 0)
            .then((recent / short) / (baseline / long))
            .alias(f"{kind}_trend_{short}d_vs_{long}d")
        )
    return exprs


def _payments(w: _Windows) -> list[pl.Expr]:
    longest = w.windows[-1]
    promised = "promised_payment_topups"
    exprs = []
    for window in w.windows:
        exprs.append(
            from_fixed(w.total(f"topup_amount{MILLI}", window)).alias(f"topup_amount_{window}d")
        )
        exprs.append(w.total("topups", window).alias(f"topups_{window}d"))
        exprs.append(w.total(promised, window).alias(f"promised_payments_{window}d"))
    exprs.append(w.last_date(where="topups").alias(f"{_LAST}topup"))
    exprs.append(w.last_date(where=promised).alias(f"{_LAST}promised_payment"))
    exprs += [
        w.total(f"{method}_topups", longest).alias(f"{method}_topups_{longest}d")
        for method in PAYMENT_METHODS
    ]
    return exprs


def _payments_derived(as_of: dt.date, windows: Sequence[int]) -> list[pl.Expr]:
    longest = windows[-1]
    topups = pl.col(f"topups_{longest}d")
    exprs = [
        _since(as_of, f"{_LAST}topup").alias("days_since_last_topup"),
        _since(as_of, f"{_LAST}promised_payment").alias("days_since_last_promised_payment"),
    ]
    exprs += [
        pl.when(topups > 0)
        .then(pl.col(f"{method}_topups_{longest}d") / topups)
        .otherwise(0.0)
        .alias(f"{method}_topup_share_{longest}d")
        for method in PAYMENT_METHODS
    ]
    exprs += [
        (pl.col(f"topup_amount_{window}d") - pl.col(f"charges_{window}d")).alias(
            f"balance_proxy_{window}d"
        )
        for window in windows
    ]
    return exprs


def _app(w: _Windows) -> list[pl.Expr]:
    exprs = []
    for window in w.windows:
        exprs.append(w.total("screen_views", window).alias(f"app_screen_views_{window}d"))
        exprs.append(w.days(window).alias(f"app_active_days_{window}d"))
        exprs += [
            w.total(f"{screen}_views", window).alias(f"{screen}_screen_views_{window}d")
            for screen in APP_SCREENS
        ]
    exprs.append(w.last_date().alias(f"{_LAST}app_visit"))
    return exprs


def _transfers(w: _Windows) -> list[pl.Expr]:
    exprs = []
    for window in w.windows:
        for kind in TRANSFER_KINDS:
            exprs.append(
                from_fixed(w.total(f"{kind}_gigabytes{MILLI}", window)).alias(
                    f"{kind}_gigabytes_{window}d"
                )
            )
            exprs.append(w.total(f"{kind}_transfers", window).alias(f"{kind}_transfers_{window}d"))
        for kind in ("market_sell", "market_buy"):
            exprs.append(
                from_fixed(w.total(f"{kind}_amount{MILLI}", window)).alias(
                    f"{kind}_amount_{window}d"
                )
            )
    return exprs


def _offers(w: _Windows, categories: Sequence[str]) -> list[pl.Expr]:
    exprs = []
    for category in categories:
        for count in OFFER_COUNTS:
            exprs += [
                w.total(count, window, category).alias(f"{category}_{count}_{window}d")
                for window in offer_windows(w.windows)
            ]
        exprs.append(
            w.last_date(where="accepts", category=category).alias(f"{_LAST}{category}_accept")
        )
    return exprs


def _offers_derived(as_of: dt.date, categories: Sequence[str]) -> list[pl.Expr]:
    return [
        _since(as_of, f"{_LAST}{category}_accept").alias(f"{category}_days_since_last_accept")
        for category in categories
    ]


_AGGREGATIONS = {
    "usage": _usage,
    "payments": _payments,
    "app_events": _app,
    "transfers": _transfers,
}


def _profile(subscribers: pl.DataFrame | pl.LazyFrame, as_of: dt.date) -> pl.LazyFrame:
    frame = subscribers.lazy()
    expected = [SUBSCRIBER_ID, "activation_date", *PROFILE_WORDS]
    missing = [c for c in expected if c not in frame.collect_schema().names()]
    if missing:
        raise SnapshotInputError(f"subscribers: columns {missing} missing (rule: contract).")
    return frame.select(
        pl.col(SUBSCRIBER_ID).cast(pl.Int64),
        _since(as_of, "activation_date").alias("tenure_days"),
        *[
            pl.col(c).cast(pl.String).cast(DEVICE_OS_TYPE if c == "device_os" else pl.Categorical)
            for c in PROFILE_WORDS
        ],
    )


def _holdings(
    holdings: pl.DataFrame | pl.LazyFrame,
    catalog: pl.DataFrame | pl.LazyFrame,
    as_of: dt.date,
    categories: Sequence[str],
) -> pl.LazyFrame:
    """Products held at the end of `as_of`, and one flag per category of the products held."""
    day = pl.lit(as_of, dtype=pl.Date)
    active = (
        holdings.lazy()
        .filter(
            (pl.col("start_date") <= day)
            & (pl.col("end_date").is_null() | (pl.col("end_date") >= day))
        )
        .select(SUBSCRIBER_ID, PRODUCT_ID)
        .unique()
    )
    product_categories = (
        catalog.lazy()
        .select(PRODUCT_ID, pl.col(CATEGORY).cast(pl.String).cast(CATEGORY_TYPE, strict=False))
        .drop_nulls()
        .unique()
    )
    counts = active.group_by(SUBSCRIBER_ID).agg(pl.len().alias("products_held"))
    flags = (
        active.join(product_categories, on=PRODUCT_ID, how="inner")
        .group_by(SUBSCRIBER_ID)
        .agg([(pl.col(CATEGORY) == c).any().cast(pl.Int8).alias(f"holds_{c}") for c in categories])
    )
    return counts.join(flags, on=SUBSCRIBER_ID, how="left")


def _categories(
    catalog: pl.DataFrame | pl.LazyFrame | None, offer_events: pl.LazyFrame | None
) -> tuple[str, ...]:
    """Offer categories with features: those of the catalog in force, else (frames without a
    catalog) those shown in the window. Never the events' alone when there is a catalog: a shard's
    events would give it other columns than its neighbours'."""
    source = catalog if catalog is not None else offer_events
    if source is None:
        return ()
    return snapshot_categories(source.lazy().select(pl.col(CATEGORY)).collect().to_series())


def compute_snapshot(
    daily: Mapping[str, pl.LazyFrame | pl.DataFrame],
    state: Mapping[str, pl.DataFrame | pl.LazyFrame | None],
    as_of: dt.date,
    windows: Sequence[int] = DEFAULT_WINDOWS,
) -> pl.DataFrame:
    """Features of every subscriber of `state['subscribers']` as of the end of `as_of`.

    `daily` maps event tables to their daily aggregates (rows after `as_of` or before the longest
    window are ignored); `state` holds `subscribers` and, for holdings features, `holdings` and
    `catalog`. Families whose table is absent are left out; see `features.catalog`.
    """
    try:
        windows = check_windows(windows)
    except ValueError as error:
        raise SnapshotInputError(str(error)) from None
    unknown = sorted(set(daily) - set(DAILY_TABLES))
    if unknown:
        raise SnapshotInputError(f"daily: tables {unknown} unknown; expected {DAILY_TABLES}.")
    subscribers = state.get("subscribers")
    if subscribers is None:
        raise SnapshotInputError("state: the subscribers table is required.")
    holdings = state.get("holdings")
    if holdings is not None and state.get("catalog") is None:
        raise SnapshotInputError("state: holdings features need the catalog as well.")

    if "payments" in daily and "usage" not in daily:
        raise SnapshotInputError("daily: payments features (balance) need usage aggregates too.")

    first_day = as_of - dt.timedelta(days=windows[-1] - 1)
    recent = {
        table: frame.lazy().filter(
            pl.col(DATE).is_between(pl.lit(first_day), pl.lit(as_of), closed="both")
        )
        for table, frame in daily.items()
    }
    categories = _categories(state.get("catalog"), recent.get("offer_events"))
    frame = _profile(subscribers, as_of)
    for table in DAILY_TABLES:
        if table not in daily:
            continue
        windows_of_table = _Windows(as_of, windows)
        if table == "offer_events":
            wanted = _offers(windows_of_table, categories)
        else:
            wanted = _AGGREGATIONS[table](windows_of_table)
        features = windows_of_table.aggregate(recent[table], wanted)
        frame = frame.join(features, on=SUBSCRIBER_ID, how="left")
    if holdings is not None:
        frame = frame.join(
            _holdings(holdings, state["catalog"], as_of, categories), on=SUBSCRIBER_ID, how="left"
        )

    available = {"subscribers", *daily, *(["holdings"] if holdings is not None else [])}
    catalog = features_for_tables(available, windows, categories)
    # Counts and sums are 0 when nothing happened; "days since" and trends stay empty.
    schema = frame.collect_schema()
    names = {f.name for f in catalog}
    frame = frame.with_columns(
        pl.col(name).fill_null(0)
        for name, dtype in schema.items()
        if name in names and dtype.is_numeric()
    )
    # Ratios, balances and "days since" from the filled window sums.
    derived: list[pl.Expr] = []
    if "usage" in daily:
        derived += _usage_derived(windows)
    if "payments" in daily:
        derived += _payments_derived(as_of, windows)
    if "app_events" in daily:
        derived.append(_since(as_of, f"{_LAST}app_visit").alias("days_since_last_app_visit"))
    if "offer_events" in daily:
        derived += _offers_derived(as_of, categories)
    frame = frame.with_columns(derived)
    return (
        frame.select(
            pl.col(SUBSCRIBER_ID),
            pl.lit(as_of, dtype=pl.Date).alias(SNAPSHOT_DATE),
            *[pl.col(f.name).cast(f.dtype) for f in catalog],
        )
        .sort(SUBSCRIBER_ID)
        .collect(engine="streaming")
        .rechunk()  # one chunk: the same bytes when written, however the engine split the work
    )


def snapshot_inputs(
    lake: Lake,
    as_of: dt.date,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    shard: Shard | None = None,
) -> tuple[dict[str, pl.LazyFrame], dict[str, pl.DataFrame]]:
    """Daily aggregates of the window ending with `as_of` and state tables as of `as_of`.

    With `shard` (shard, n_shards), only that shard's subscribers. Reads no partition after
    `as_of`. Raises when a required table has no daily aggregates up to
    `as_of`, or when an ingested day of the window has not been aggregated yet.
    """
    windows = check_windows(windows)
    first_day = as_of - dt.timedelta(days=windows[-1] - 1)
    daily: dict[str, pl.LazyFrame] = {}
    for table in DAILY_TABLES:
        built = [day for day in lake.dates("daily", table) if day <= as_of]
        if not built:
            if table in REQUIRED_TABLES:
                raise SnapshotInputError(
                    f"{table}: no daily aggregates up to {as_of} in {lake.root / 'daily' / table}; "
                    "run features.daily.build_daily_range first."
                )
            continue
        pending = [
            day
            for day in lake.dates("raw", table)
            if first_day <= day <= as_of
            and partition_files(lake.raw(table, day))
            and not is_built(lake, table, day)
        ]
        if pending:
            raise SnapshotInputError(
                f"{table}: ingested days {[str(day) for day in pending[:5]]} (of {len(pending)}) "
                f"have no daily aggregates; run features.daily.build_daily_range up to {as_of}."
            )
        scan = scan_partitions(lake.root / "daily" / table, first_day, as_of, shard=shard)
        daily[table] = scan if scan is not None else empty_daily(table)
    state: dict[str, pl.DataFrame] = {}
    for table in ("subscribers", "catalog", "holdings"):
        frame = raw_state(lake, table, as_of, shard=shard)
        if frame is None:
            if table in REQUIRED_TABLES:
                raise SnapshotInputError(f"{table}: nothing ingested up to {as_of}.")
            continue
        state[table] = frame
    return daily, state


def shard_part(shard: int) -> str:
    """File stem of one shard's rows inside a snapshot partition."""
    return f"part-{shard:04d}"


def build_snapshot(
    lake: Lake,
    as_of: dt.date,
    settings: Settings | None = None,
    write: bool = True,
    shard: int | None = None,
) -> pl.DataFrame:
    """The snapshot of `as_of` from the data root; written atomically to lake.snapshot(as_of).

    With `shard`, only the subscribers of that shard of `settings.n_shards` are computed and the
    result is returned, not written (`write_snapshot_shard` stores it); the union of the shards
    equals the whole snapshot.
    """
    settings = settings or Settings()
    if shard is not None and not 0 <= shard < settings.n_shards:
        raise SnapshotInputError(
            f"shard == {shard}, must be in [0, {settings.n_shards}) (rule: shard)."
        )
    part = None if shard is None else (shard, settings.n_shards)
    daily, state = snapshot_inputs(lake, as_of, settings.windows, shard=part)
    first_day = as_of - dt.timedelta(days=max(settings.windows) - 1)
    window = [
        file
        for table in daily
        for _, file in files_between(lake.root / "daily" / table, first_day, as_of)
    ]
    with naming_damage(window):
        snapshot = compute_snapshot(daily, state, as_of, settings.windows)
    logger.info(
        "snapshot %s%s: %d subscribers, %d features",
        as_of,
        "" if shard is None else f" shard {shard}/{settings.n_shards}",
        snapshot.height,
        snapshot.width - 2,
    )
    if write and shard is None:
        write_partition(snapshot, lake.snapshot(as_of))
    return snapshot


def snapshot_work_dir(lake: Lake, as_of: dt.date) -> Path:
    """Hidden folder where the shards of a snapshot are gathered before it is swapped in."""
    target = lake.snapshot(as_of)
    return target.parent / f".{target.name}.shards"


def write_snapshot_shard(
    lake: Lake, as_of: dt.date, settings: Settings, shard: int
) -> tuple[Path, int]:
    """Build one shard of the snapshot into the work folder; returns (file, rows)."""
    snapshot = build_snapshot(lake, as_of, settings, write=False, shard=shard)
    path = write_parquet(snapshot, snapshot_work_dir(lake, as_of) / f"{shard_part(shard)}.parquet")
    return path, snapshot.height


def publish_snapshot_shards(lake: Lake, as_of: dt.date, n_shards: int) -> Path:
    """Swap the gathered shards in as lake.snapshot(as_of); raises when a shard is missing."""
    work = snapshot_work_dir(lake, as_of)
    expected = {f"{shard_part(shard)}.parquet" for shard in range(n_shards)}
    found = {path.name for path in partition_files(work)}
    if found != expected:
        raise SnapshotInputError(
            f"snapshot {as_of}: shards {sorted(expected - found)[:5]} missing and "
            f"{sorted(found - expected)[:5]} unexpected in {work} (rule: one file per shard)."
        )
    replace_path(work, lake.snapshot(as_of))
    return lake.snapshot(as_of)


def clear_snapshot_shards(lake: Lake, as_of: dt.date) -> None:
    """Remove shards left in the work folder by an earlier, interrupted run."""
    remove_path(snapshot_work_dir(lake, as_of))


def read_snapshot(lake: Lake, as_of: dt.date) -> pl.DataFrame:
    """The stored snapshot of `as_of` (all shards, by subscriber_id); raises when never built."""
    return scan_snapshot(lake, as_of).collect().sort(SUBSCRIBER_ID)


def scan_snapshot(lake: Lake, as_of: dt.date) -> pl.LazyFrame:
    """The stored snapshot of `as_of`, lazily (in no particular order); raises when never built."""
    files = partition_files(lake.snapshot(as_of))
    if not files:
        raise SnapshotInputError(f"no snapshot for {as_of} in {lake.snapshot(as_of)}.")
    return pl.scan_parquet(files)


def read_snapshot_shard(lake: Lake, as_of: dt.date, shard: int, n_shards: int) -> pl.DataFrame:
    """One shard's rows of the stored snapshot of `as_of`: its own file when the snapshot was
    stored with `n_shards` shards, else the snapshot's rows of that shard (one pass, streamed)."""
    files = partition_files(lake.snapshot(as_of))
    own = lake.snapshot(as_of) / f"{shard_part(shard)}.parquet"
    if len(files) == n_shards and own in files:
        return pl.read_parquet(own)
    rows = only_shard(scan_snapshot(lake, as_of), (shard, n_shards))
    return rows.collect(engine="streaming").sort(SUBSCRIBER_ID)


def shard_rows(frame: pl.DataFrame, shard: int, n_shards: int) -> pl.DataFrame:
    """Rows of `frame` whose subscriber falls in `shard` of `n_shards`."""
    if n_shards == 1:
        return frame
    return frame.filter(pl.Series(shard_of(frame[SUBSCRIBER_ID], n_shards) == shard))
