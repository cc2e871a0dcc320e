"""Features benchmark: Mia's nightly snapshot work against DuckDB SQL and plain pandas.

One generated world (subscribers x days of raw usage, payments and app events) is written once
under benchmarks/results/ and reused. Each engine then computes the same snapshot families
(profile, usage, spend, top-ups, balance, app) as of the last day, each run in a fresh subprocess
so that its peak memory (max RSS) is its own:

- mia: the nightly work, i.e. the daily aggregate of the new day (written to the data root) plus
  the snapshot from the daily aggregates of the last 90 days (`features.snapshot`);
- duckdb: the snapshot written as SQL over the raw events of the last 90 days;
- pandas: the snapshot written as straightforward pandas over the same raw events.

The outputs are checked equal (same rows and values; floats to 1e-9 relative), and medians of the
wall time and peak RSS over the repeats are printed as a Markdown table.

    python -m benchmarks.features --subscribers 100000 --days 90 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.common import READY, RESULTS, SEED, START, peak_mib, run_child
from features.catalog import (
    DEFAULT_WINDOWS,
    feature_names,
    trend_windows,
    usage_unit,
)
from features.daily import build_daily, build_daily_range
from features.snapshot import compute_snapshot
from mia.ingest import raw_state
from mia.lake import Lake, end_of_day, partition_files, scan_partitions, write_partition
from mia.schema import (
    APP_SCREENS,
    PAYMENT_METHODS,
    SNAPSHOT_DATE,
    SUBSCRIBER_ID,
    USAGE_KINDS,
)

logger = logging.getLogger(__name__)

TABLES = ("usage", "payments", "app_events")
STATE = {"subscribers"}
ENGINES = ("mia", "duckdb", "pandas")
WINDOWS = DEFAULT_WINDOWS

# Mean events per subscriber per day, and the mix of usage kinds.
USAGE_RATE, PAYMENT_RATE, APP_RATE = 4.0, 0.08, 2.0
KIND_MIX = (0.25, 0.2, 0.1, 0.4, 0.02, 0.03)


# ---------------------------------------------------------------------------- the world


def _day_events(date: dt.date, subscribers: int, seed: int) -> dict[str, pl.DataFrame]:
    """One day of raw usage, payments and app events, seeded by the day."""
    rng = np.random.default_rng([seed, date.toordinal()])
    activity = np.random.default_rng(seed).gamma(2.0, 0.5, subscribers)  # stable per subscriber
    day_start = np.datetime64(dt.datetime.combine(date, dt.time()), "us")

    def rows(rate: float) -> np.ndarray:
        counts = rng.poisson(rate * activity)
        return np.repeat(np.arange(1, subscribers + 1, dtype=np.int64), counts)

    def stamps(n: int) -> np.ndarray:
        return day_start + rng.integers(0, 86_400_000_000, n).astype("timedelta64[us]")

    ids = rows(USAGE_RATE)
    kinds = rng.choice(len(USAGE_KINDS), ids.size, p=KIND_MIX)
    usage = pl.DataFrame(
        {
            SUBSCRIBER_ID: ids,
            "ts": stamps(ids.size),
            "kind": np.asarray(USAGE_KINDS)[kinds],
            "quantity": np.round(rng.gamma(1.5, 20.0, ids.size), 3),
            "charge": np.round(rng.gamma(1.0, 0.4, ids.size), 2),
        }
    )
    ids = rows(PAYMENT_RATE)
    payments = pl.DataFrame(
        {
            SUBSCRIBER_ID: ids,
            "ts": stamps(ids.size),
            "amount": np.round(rng.gamma(2.0, 8.0, ids.size), 2),
            "method": np.asarray(PAYMENT_METHODS)[rng.integers(0, len(PAYMENT_METHODS), ids.size)],
        }
    )
    ids = rows(APP_RATE)
    app = pl.DataFrame(
        {
            SUBSCRIBER_ID: ids,
            "ts": stamps(ids.size),
            "screen": np.asarray(APP_SCREENS)[rng.integers(0, len(APP_SCREENS), ids.size)],
        }
    )
    return {
        "usage": usage.sort("ts"),
        "payments": payments.sort("ts"),
        "app_events": app.sort("ts"),
    }


def _subscribers(subscribers: int, last_day: dt.date, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng([seed, 1])
    return pl.DataFrame(
        {
            SUBSCRIBER_ID: np.arange(1, subscribers + 1, dtype=np.int64),
            "region": np.asarray([f"region_{i:02d}" for i in range(12)])[
                rng.integers(0, 12, subscribers)
            ],
            "device_os": np.asarray(["android", "ios", "other"])[
                rng.choice(3, subscribers, p=(0.6, 0.35, 0.05))
            ],
            "device_vendor": np.asarray([f"vendor_{i}" for i in range(8)])[
                rng.integers(0, 8, subscribers)
            ],
            "tariff_id": np.asarray([f"tariff_{i}" for i in range(6)])[
                rng.integers(0, 6, subscribers)
            ],
            "activation_date": np.datetime64(last_day, "D")
            - rng.integers(0, 3000, subscribers).astype("timedelta64[D]"),
        }
    ).with_columns(pl.col("activation_date").cast(pl.Date))


def generate_world(root: Path, subscribers: int, days: int, seed: int = SEED) -> Lake:
    """Write the raw world and Mia's daily aggregates of every day but the last (once)."""
    lake = Lake(root)
    if (root / READY).exists():
        return lake
    last_day = START + dt.timedelta(days=days - 1)
    for offset in range(days):
        date = START + dt.timedelta(days=offset)
        for table, frame in _day_events(date, subscribers, seed).items():
            write_partition(frame, lake.raw(table, date))
        logger.info("generated %s", date)
    write_partition(_subscribers(subscribers, last_day, seed), lake.raw("subscribers", last_day))
    # Earlier nights already folded their day; the benchmark times the last night.
    build_daily_range(lake, START, last_day - dt.timedelta(days=1))
    (root / READY).write_text(json.dumps({"subscribers": subscribers, "days": days}))
    return lake


def _window_files(lake: Lake, table: str, as_of: dt.date) -> list[str]:
    first = as_of - dt.timedelta(days=max(WINDOWS) - 1)
    return [
        str(file)
        for date in lake.dates("raw", table)
        if first <= date <= as_of
        for file in partition_files(lake.raw(table, date))
    ]


def compared_columns() -> list[str]:
    """The snapshot columns all three engines compute."""
    return [SUBSCRIBER_ID, SNAPSHOT_DATE, *feature_names({*TABLES, *STATE}, WINDOWS)]


# ---------------------------------------------------------------------------- engines


def run_mia(lake: Lake, as_of: dt.date) -> pl.DataFrame:
    """Nightly work: fold the new day, then the snapshot from the daily aggregates."""
    build_daily(lake, as_of, force=True)
    first = as_of - dt.timedelta(days=max(WINDOWS) - 1)
    daily = {table: scan_partitions(lake.root / "daily" / table, first, as_of) for table in TABLES}
    state = {"subscribers": raw_state(lake, "subscribers", as_of)}
    return compute_snapshot(daily, state, as_of, WINDOWS)


def _sql_window(as_of: dt.date, window: int) -> str:
    return f"day > DATE '{as_of - dt.timedelta(days=window)}'"


def _duckdb_sql(lake: Lake, as_of: dt.date) -> str:
    """The snapshot families as one DuckDB query over the raw events of the window.

    Events are first summed per subscriber and day (wide, with FILTER clauses), then the days
    are summed per subscriber over each window: no DISTINCT, no pivot.
    """
    first = as_of - dt.timedelta(days=max(WINDOWS) - 1)
    where = f"ts >= TIMESTAMP '{first} 00:00:00' AND ts < TIMESTAMP '{end_of_day(as_of)}'"

    def source(table: str) -> str:
        files = ", ".join(f"'{file}'" for file in _window_files(lake, table, as_of))
        return f"(SELECT *, CAST(ts AS DATE) AS day FROM read_parquet([{files}]) WHERE {where})"

    usage_day = ["SUM(charge) AS charge"]
    for kind in USAGE_KINDS:
        usage_day += [
            f"COALESCE(SUM(quantity) FILTER (kind = '{kind}'), 0) AS {kind}_quantity",
            f"COUNT(*) FILTER (kind = '{kind}') AS {kind}_events",
        ]
    payments_day = [
        "SUM(amount) AS amount",
        "COUNT(*) AS topups",
        "COUNT(*) FILTER (method = 'promised_payment') AS promised",
    ]
    payments_day += [f"COUNT(*) FILTER (method = '{m}') AS {m}_topups" for m in PAYMENT_METHODS]
    app_day = ["COUNT(*) AS views"]
    app_day += [f"COUNT(*) FILTER (screen = '{s}') AS {s}_views" for s in APP_SCREENS]

    usage_columns, payment_columns, app_columns = [], [], []
    for window in WINDOWS:
        inside = _sql_window(as_of, window)
        for kind in USAGE_KINDS:
            unit = usage_unit(kind)
            usage_columns += [
                f"COALESCE(SUM({kind}_quantity) FILTER ({inside}), 0) AS {kind}_{unit}_{window}d",
                f"COALESCE(SUM({kind}_events) FILTER ({inside}), 0) AS {kind}_events_{window}d",
                f"COUNT(*) FILTER ({inside} AND {kind}_events > 0) AS {kind}_active_days_{window}d",
            ]
        usage_columns += [
            f"COUNT(*) FILTER ({inside}) AS usage_active_days_{window}d",
            f"COALESCE(SUM(charge) FILTER ({inside}), 0) AS charges_{window}d",
        ]
        payment_columns += [
            f"COALESCE(SUM(amount) FILTER ({inside}), 0) AS topup_amount_{window}d",
            f"COALESCE(SUM(topups) FILTER ({inside}), 0) AS topups_{window}d",
            f"COALESCE(SUM(promised) FILTER ({inside}), 0) AS promised_payments_{window}d",
        ]
        app_columns += [
            f"COALESCE(SUM(views) FILTER ({inside}), 0) AS app_screen_views_{window}d",
            f"COUNT(*) FILTER ({inside}) AS app_active_days_{window}d",
        ]
        app_columns += [
            f"COALESCE(SUM({screen}_views) FILTER ({inside}), 0) AS {screen}_screen_views_{window}d"
            for screen in APP_SCREENS
        ]
    longest = max(WINDOWS)
    payment_columns += [
        f"DATE '{as_of}' - MAX(day) AS days_since_last_topup",
        f"DATE '{as_of}' - MAX(day) FILTER (promised > 0) AS days_since_last_promised_payment",
    ]
    payment_columns += [
        f"SUM({method}_topups) / SUM(topups) AS {method}_topup_share_{longest}d"
        for method in PAYMENT_METHODS
    ]
    app_columns.append(f"DATE '{as_of}' - MAX(day) AS days_since_last_app_visit")

    derived = []
    short, long = trend_windows(WINDOWS)
    for kind in USAGE_KINDS:
        unit = usage_unit(kind)
        recent, base = f"u.{kind}_{unit}_{short}d", f"u.{kind}_{unit}_{long}d"
        derived.append(
            f"CASE WHEN {base} > 0 THEN ({recent} / {short}) / ({base} / {long}) END "
            f"AS {kind}_trend_{short}d_vs_{long}d"
        )
    derived += [
        f"COALESCE(p.topup_amount_{w}d, 0) - COALESCE(u.charges_{w}d, 0) AS balance_proxy_{w}d"
        for w in WINDOWS
    ]

    def per_subscriber(table: str, per_day: list[str], columns: list[str]) -> str:
        return f"""
        SELECT subscriber_id, {", ".join(columns)} FROM (
            SELECT subscriber_id, day, {", ".join(per_day)}
            FROM {source(table)} GROUP BY subscriber_id, day
        ) GROUP BY subscriber_id"""

    return f"""
    WITH u AS ({per_subscriber("usage", usage_day, usage_columns)}),
    p AS ({per_subscriber("payments", payments_day, payment_columns)}),
    a AS ({per_subscriber("app_events", app_day, app_columns)})
    SELECT s.subscriber_id, DATE '{as_of}' AS snapshot_date,
           DATE '{as_of}' - s.activation_date AS tenure_days,
           s.region, s.device_os, s.device_vendor, s.tariff_id,
           u.* EXCLUDE (subscriber_id), p.* EXCLUDE (subscriber_id), a.* EXCLUDE (subscriber_id),
           {", ".join(derived)}
    FROM s LEFT JOIN u USING (subscriber_id) LEFT JOIN p USING (subscriber_id)
    LEFT JOIN a USING (subscriber_id)
    ORDER BY s.subscriber_id
    """


def run_duckdb(lake: Lake, as_of: dt.date) -> pl.DataFrame:
    """The snapshot families as DuckDB SQL over raw events (missing counts filled with 0)."""
    import duckdb

    files = [str(f) for f in partition_files(lake.raw("subscribers", as_of))]
    connection = duckdb.connect()
    connection.execute(f"CREATE VIEW s AS SELECT * FROM read_parquet({files})")
    frame = pl.from_arrow(connection.sql(_duckdb_sql(lake, as_of)).to_arrow_table())
    connection.close()
    keep_null = {name for name in frame.columns if "days_since" in name or "_trend_" in name}
    return frame.with_columns(
        pl.col(name).fill_null(0)
        for name, dtype in frame.schema.items()
        if dtype.is_numeric() and name not in keep_null
    )


def run_pandas(lake: Lake, as_of: dt.date):
    """The snapshot families as straightforward pandas over raw events (a pandas DataFrame)."""
    import pandas as pd

    first = pd.Timestamp(as_of - dt.timedelta(days=max(WINDOWS) - 1))
    stop = pd.Timestamp(end_of_day(as_of))
    as_of_ts = pd.Timestamp(as_of)

    def load(table: str) -> pd.DataFrame:
        frame = pd.concat([pd.read_parquet(f) for f in _window_files(lake, table, as_of)])
        frame = frame[(frame["ts"] >= first) & (frame["ts"] < stop)]
        return frame.assign(day=frame["ts"].dt.normalize())

    subscribers = pd.concat(
        [pd.read_parquet(f) for f in partition_files(lake.raw("subscribers", as_of))]
    ).set_index(SUBSCRIBER_ID)
    result: dict[str, object] = {}
    result["tenure_days"] = (as_of_ts - pd.to_datetime(subscribers["activation_date"])).dt.days
    for column in ("region", "device_os", "device_vendor", "tariff_id"):
        result[column] = subscribers[column]

    usage = load("usage")
    per_day = usage.groupby([SUBSCRIBER_ID, "day", "kind"], as_index=False).agg(
        quantity=("quantity", "sum"), events=("quantity", "size"), charge=("charge", "sum")
    )
    for window in WINDOWS:
        recent = per_day[per_day["day"] > as_of_ts - pd.Timedelta(days=window)]
        by_kind = recent.groupby([SUBSCRIBER_ID, "kind"]).agg(
            quantity=("quantity", "sum"), events=("events", "sum"), days=("day", "size")
        )
        wide = by_kind.unstack("kind")
        for kind in USAGE_KINDS:
            unit = usage_unit(kind)
            for name, column in (
                (f"{kind}_{unit}_{window}d", "quantity"),
                (f"{kind}_events_{window}d", "events"),
                (f"{kind}_active_days_{window}d", "days"),
            ):
                values = wide[(column, kind)] if (column, kind) in wide.columns else None
                result[name] = values if values is not None else 0
        result[f"usage_active_days_{window}d"] = recent.groupby(SUBSCRIBER_ID)["day"].nunique()
        result[f"charges_{window}d"] = recent.groupby(SUBSCRIBER_ID)["charge"].sum()

    payments = load("payments")
    longest = max(WINDOWS)
    for window in WINDOWS:
        recent = payments[payments["day"] > as_of_ts - pd.Timedelta(days=window)]
        grouped = recent.groupby(SUBSCRIBER_ID)
        result[f"topup_amount_{window}d"] = grouped["amount"].sum()
        result[f"topups_{window}d"] = grouped.size()
        promised = recent[recent["method"] == "promised_payment"]
        result[f"promised_payments_{window}d"] = promised.groupby(SUBSCRIBER_ID).size()
    result["days_since_last_topup"] = (
        as_of_ts - payments.groupby(SUBSCRIBER_ID)["day"].max()
    ).dt.days
    promised = payments[payments["method"] == "promised_payment"]
    result["days_since_last_promised_payment"] = (
        as_of_ts - promised.groupby(SUBSCRIBER_ID)["day"].max()
    ).dt.days
    methods = pd.crosstab(payments[SUBSCRIBER_ID], payments["method"])
    for method in PAYMENT_METHODS:
        share = methods[method] / methods.sum(axis=1) if method in methods else 0.0
        result[f"{method}_topup_share_{longest}d"] = share

    app = load("app_events")
    for window in WINDOWS:
        recent = app[app["day"] > as_of_ts - pd.Timedelta(days=window)]
        result[f"app_screen_views_{window}d"] = recent.groupby(SUBSCRIBER_ID).size()
        result[f"app_active_days_{window}d"] = recent.groupby(SUBSCRIBER_ID)["day"].nunique()
        screens = pd.crosstab(recent[SUBSCRIBER_ID], recent["screen"])
        for screen in APP_SCREENS:
            result[f"{screen}_screen_views_{window}d"] = screens[screen] if screen in screens else 0
    result["days_since_last_app_visit"] = (
        as_of_ts - app.groupby(SUBSCRIBER_ID)["day"].max()
    ).dt.days

    result = pd.DataFrame(result, index=subscribers.index)
    keep_null = [c for c in result.columns if "days_since" in c]
    numeric = [c for c in result.columns if c not in keep_null and c not in subscribers.columns]
    result[numeric] = result[numeric].fillna(0)
    derived = {}
    short, long = trend_windows(WINDOWS)
    for kind in USAGE_KINDS:
        unit = usage_unit(kind)
        base = result[f"{kind}_{unit}_{long}d"]
        trend = (result[f"{kind}_{unit}_{short}d"] / short) / (base / long)
        derived[f"{kind}_trend_{short}d_vs_{long}d"] = trend.where(base > 0)
    for window in WINDOWS:
        derived[f"balance_proxy_{window}d"] = (
            result[f"topup_amount_{window}d"] - result[f"charges_{window}d"]
        )
    result = pd.concat([result, pd.DataFrame(derived)], axis=1)
    result.insert(0, SNAPSHOT_DATE, as_of)
    return result.reset_index().sort_values(SUBSCRIBER_ID)


RUNNERS = {"mia": run_mia, "duckdb": run_duckdb, "pandas": run_pandas}


def _child(engine: str, world: Path, output: Path) -> None:
    """Run one engine once in this (fresh) process; write its timing and result."""
    lake = Lake(world)
    as_of = max(lake.dates("raw", "usage"))
    started = time.perf_counter()
    result = RUNNERS[engine](lake, as_of)
    wall = time.perf_counter() - started
    peak = peak_mib()
    frame = result if isinstance(result, pl.DataFrame) else pl.from_pandas(result)
    frame.write_parquet(output)
    sys.stdout.write(json.dumps({"wall_s": wall, "peak_mib": peak}) + "\n")


# ---------------------------------------------------------------------------- comparison


def _normalised(frame: pl.DataFrame) -> pl.DataFrame:
    columns = compared_columns()
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AssertionError(f"columns missing: {missing[:5]} (of {len(missing)})")
    exprs = []
    for name in columns:
        dtype = frame.schema[name]
        if name == SNAPSHOT_DATE:
            exprs.append(pl.col(name).cast(pl.Date))
        elif dtype.is_numeric():
            exprs.append(pl.col(name).cast(pl.Float64))
        else:
            exprs.append(pl.col(name).cast(pl.String))
    return frame.select(exprs).sort(SUBSCRIBER_ID)


def compare(reference: pl.DataFrame, other: pl.DataFrame, rtol: float = 1e-9) -> list[str]:
    """Columns whose values differ (floats beyond `rtol`, nulls in different places)."""
    left, right = _normalised(reference), _normalised(other)
    if left.height != right.height:
        return [f"rows: {left.height} != {right.height}"]
    differing = []
    for name in left.columns:
        a, b = left.get_column(name), right.get_column(name)
        if a.dtype == pl.Float64:
            x, y = a.to_numpy(), b.to_numpy()
            same_nulls = np.array_equal(np.isnan(x), np.isnan(y))
            if not same_nulls or not np.allclose(x, y, rtol=rtol, atol=1e-9, equal_nan=True):
                differing.append(name)
        elif not a.equals(b):
            differing.append(name)
    return differing


def run_benchmark(subscribers: int, days: int, repeats: int, world: Path | None = None) -> str:
    """Generate (or reuse) the world, run every engine `repeats` times, check, tabulate."""
    world = world or RESULTS / f"world-{subscribers}x{days}"
    started = time.perf_counter()
    lake = generate_world(world, subscribers, days)
    logger.info("world ready in %.1f s: %s", time.perf_counter() - started, world)
    timings: dict[str, list[dict[str, float]]] = {engine: [] for engine in ENGINES}
    with tempfile.TemporaryDirectory() as scratch:
        outputs = {engine: Path(scratch) / f"{engine}.parquet" for engine in ENGINES}
        for repeat in range(repeats):
            for engine in ENGINES:
                arguments = ["--world", str(world), "--output", str(outputs[engine])]
                timings[engine].append(run_child("benchmarks.features", engine, arguments))
                logger.info("repeat %d %s: %s", repeat + 1, engine, timings[engine][-1])
        mia = pl.read_parquet(outputs["mia"])
        checks = {}
        for engine in ("duckdb", "pandas"):
            differing = compare(mia, pl.read_parquet(outputs[engine]))
            if differing:
                raise AssertionError(f"{engine} differs from mia in {differing[:10]}")
            checks[engine] = "equal"
    rows_per_day = {
        table: pl.scan_parquet(partition_files(lake.raw(table, START)))
        .select(pl.len())
        .collect()
        .item()
        for table in TABLES
    }
    median = {
        engine: {key: statistics.median(run[key] for run in runs) for key in ("wall_s", "peak_mib")}
        for engine, runs in timings.items()
    }
    mia_wall, mia_peak = median["mia"]["wall_s"], median["mia"]["peak_mib"]
    lines = [
        f"Features benchmark: {subscribers:,} subscribers x {days} days "
        f"(raw rows on day 1: {', '.join(f'{t} {n:,}' for t, n in rows_per_day.items())}); "
        f"{len(compared_columns()) - 2} snapshot columns compared; medians of {repeats} runs.",
        "",
        "| engine | work | wall (s) | peak RSS (MiB) | Mia / engine: time | memory |",
        "|---|---|---|---|---|---|",
    ]
    work = {
        "mia": "new day's daily aggregate + snapshot from daily aggregates",
        "duckdb": "snapshot from raw events (SQL)",
        "pandas": "snapshot from raw events (pandas)",
    }
    for engine in ENGINES:
        wall, peak = median[engine]["wall_s"], median[engine]["peak_mib"]
        lines.append(
            f"| {engine} | {work[engine]} | {wall:.2f} | {peak:.0f} | {mia_wall / wall:.2f} "
            f"| {mia_peak / peak:.2f} |"
        )
    lines += ["", f"Outputs: duckdb {checks['duckdb']}, pandas {checks['pandas']} (to Mia's)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.features", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--world", type=Path, default=None, help="where the world is kept")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.world, args.output)
        return 0
    if args.subscribers < 1 or args.days < 2 or args.repeats < 1:
        parser.error("--subscribers >= 1, --days >= 2 and --repeats >= 1 are required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.stdout.write(run_benchmark(args.subscribers, args.days, args.repeats, args.world))
    return 0


if __name__ == "__main__":
    sys.exit(main())
