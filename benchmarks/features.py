"""Features benchmark: Mia against DuckDB SQL and plain pandas, on the same inputs.

One generated world (subscribers x days of raw usage, payments and app events, plus Mia's daily
aggregates of every day) is written once under benchmarks/results/ and reused. Every engine then
does the same work in two scenarios, each run in a fresh subprocess so that its peak memory (max
RSS) and CPU time are its own:

- nightly: fold the new (last) day's raw events into daily aggregates and write them (Parquet,
  zstd), then compute the snapshot as of that day from the SAME daily-aggregate files of the last
  90 days (Mia's `daily/` partitions, written by `features.daily`);
- rebuild: compute the snapshot from the raw events of the last 90 days (Mia: the daily aggregates
  of every day with `features.daily.build_daily_range`, then the snapshot).

Engines: mia (polars: `features.daily` and `features.snapshot`), duckdb (SQL) and pandas (plain
pandas). DuckDB is given as many threads as polars uses. The outputs are checked equal to Mia's
(same rows and values; floats to 1e-9 relative), the new day's daily aggregates as well; any
difference fails the run. Medians over the repeats of wall time, CPU time (user + system of the
engine's process, all threads) and peak RSS are printed as Markdown tables, with each engine's
ratio to Mia (engine / mia: above 1 means Mia is faster).

    python -m benchmarks.features --subscribers 100000 --days 90 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from benchmarks.common import READY, RESULTS, SEED, START, peak_mib, run_child
from features.catalog import DEFAULT_WINDOWS, feature_names, trend_windows, usage_unit
from features.daily import DAILY_VALUE_COLUMNS, FIXED_POINT, MILLI, build_daily, build_daily_range
from features.snapshot import compute_snapshot
from mia.ingest import raw_state, state_delivery
from mia.lake import (
    Lake,
    end_of_day,
    files_between,
    partition_files,
    scan_partitions,
    write_partition,
)
from mia.schema import (
    APP_SCREENS,
    DATE,
    PAYMENT_METHODS,
    SNAPSHOT_DATE,
    SUBSCRIBER_ID,
    USAGE_KINDS,
)

logger = logging.getLogger(__name__)

TABLES = ("usage", "payments", "app_events")
STATE = {"subscribers"}
ENGINES = ("mia", "duckdb", "pandas")
SCENARIOS = ("nightly", "rebuild")
WINDOWS = DEFAULT_WINDOWS
PROMISED = "promised_payment_topups"  # the daily column of promised payments

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
    """Write the raw world and Mia's daily aggregates of every day (once)."""
    lake = Lake(root)
    if (root / READY).exists():
        last_day = max(lake.dates("raw", "usage"))
        build_daily(lake, last_day)  # worlds cached before the last day was folded too
        return lake
    last_day = START + dt.timedelta(days=days - 1)
    for offset in range(days):
        date = START + dt.timedelta(days=offset)
        for table, frame in _day_events(date, subscribers, seed).items():
            write_partition(frame, lake.raw(table, date))
        logger.info("generated %s", date)
    write_partition(_subscribers(subscribers, last_day, seed), lake.raw("subscribers", last_day))
    # The daily aggregates every engine's nightly snapshot reads (the last day's included).
    build_daily_range(lake, START, last_day)
    (root / READY).write_text(json.dumps({"subscribers": subscribers, "days": days}))
    return lake


def compared_columns() -> list[str]:
    """The snapshot columns all three engines compute."""
    return [SUBSCRIBER_ID, SNAPSHOT_DATE, *feature_names({*TABLES, *STATE}, WINDOWS)]


def window_start(lake: Lake, as_of: dt.date) -> dt.date:
    """First day of the longest window ending with `as_of` (or of the world, if shorter)."""
    return max(as_of - dt.timedelta(days=max(WINDOWS) - 1), min(lake.dates("raw", "usage")))


def _raw_files(lake: Lake, table: str, first: dt.date, last: dt.date) -> list[Path]:
    return [
        file
        for date in lake.dates("raw", table)
        if first <= date <= last
        for file in partition_files(lake.raw(table, date))
    ]


def _daily_files(lake: Lake, table: str, as_of: dt.date) -> list[tuple[dt.date, Path]]:
    return files_between(lake.root / "daily" / table, window_start(lake, as_of), as_of)


def _subscriber_files(lake: Lake, as_of: dt.date) -> list[Path]:
    delivered = state_delivery(lake, "subscribers", as_of)
    return partition_files(lake.raw("subscribers", delivered)) if delivered else []


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Stopwatch:
    """Wall and CPU time (user + system, all threads of this process) of named phases."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the body of the `with` block as phase `name`."""
        wall, cpu = time.perf_counter(), _cpu_seconds()
        yield
        self.phases[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": _cpu_seconds() - cpu}


# ---------------------------------------------------------------------------- mia (polars)


def _scratch_lake(lake: Lake, scratch: Path) -> Lake:
    """A data root whose raw/ is the world's: Mia's builds write there, never into the world."""
    scratch.mkdir(parents=True)
    (scratch / "raw").symlink_to(lake.root.resolve() / "raw", target_is_directory=True)
    return Lake(scratch)


def _mia_snapshot(daily_root: Lake, lake: Lake, as_of: dt.date) -> pl.DataFrame:
    first = window_start(lake, as_of)
    daily = {t: scan_partitions(daily_root.root / "daily" / t, first, as_of) for t in TABLES}
    state = {"subscribers": raw_state(lake, "subscribers", as_of)}
    return compute_snapshot(daily, state, as_of, WINDOWS)


def mia_nightly(lake: Lake, as_of: dt.date, scratch: Path, clock: Stopwatch) -> pl.DataFrame:
    """Mia's night: `build_daily` of the new day, then `compute_snapshot` from daily aggregates."""
    own = _scratch_lake(lake, scratch / "lake")
    with clock.phase("new day"):
        build_daily(own, as_of, force=True)
    for table in TABLES:
        (scratch / f"daily-{table}.parquet").symlink_to(partition_files(own.daily(table, as_of))[0])
    with clock.phase("snapshot"):
        return _mia_snapshot(lake, lake, as_of)


def mia_rebuild(lake: Lake, as_of: dt.date, scratch: Path, clock: Stopwatch) -> pl.DataFrame:
    """Mia from raw events: `build_daily_range` over the window, then `compute_snapshot`."""
    own = _scratch_lake(lake, scratch / "lake")
    with clock.phase("daily aggregates"):
        build_daily_range(own, window_start(lake, as_of), as_of)
    with clock.phase("snapshot"):
        return _mia_snapshot(own, lake, as_of)


# ---------------------------------------------------------------------------- duckdb


def _duckdb_connection() -> Any:
    import duckdb

    connection = duckdb.connect()
    connection.execute(f"SET threads = {pl.thread_pool_size()}")
    return connection


def _sql_files(files: list[Path]) -> str:
    return "[" + ", ".join(f"'{file}'" for file in files) + "]"


def _sql_fixed(column: str) -> str:
    return f"CAST(ROUND({column} * {FIXED_POINT}) AS BIGINT)"


def _duckdb_daily_columns(table: str) -> list[str]:
    """Mia's daily columns as SQL aggregates of raw events (one group per subscriber-day)."""
    if table == "usage":
        columns = []
        for kind in USAGE_KINDS:
            columns += [
                f"SUM(CASE WHEN kind = '{kind}' THEN {_sql_fixed('quantity')} ELSE 0 END) "
                f"AS {kind}_quantity{MILLI}",
                f"COUNT(CASE WHEN kind = '{kind}' THEN 1 END) AS {kind}_events",
            ]
        return [*columns, f"SUM({_sql_fixed('charge')}) AS charge{MILLI}"]
    if table == "payments":
        columns = [f"SUM({_sql_fixed('amount')}) AS topup_amount{MILLI}", "COUNT(*) AS topups"]
        return columns + [
            f"COUNT(CASE WHEN method = '{method}' THEN 1 END) AS {method}_topups"
            for method in PAYMENT_METHODS
        ]
    columns = ["COUNT(*) AS screen_views"]
    return columns + [
        f"COUNT(CASE WHEN screen = '{screen}' THEN 1 END) AS {screen}_views"
        for screen in APP_SCREENS
    ]


def _duckdb_raw_days(lake: Lake, table: str, first: dt.date, as_of: dt.date) -> str:
    """Raw events of [first, as_of] summed per subscriber and day, as Mia's daily columns."""
    files = _sql_files(_raw_files(lake, table, first, as_of))
    return f"""(
        SELECT subscriber_id, CAST(ts AS DATE) AS date, {", ".join(_duckdb_daily_columns(table))}
        FROM read_parquet({files})
        WHERE ts >= TIMESTAMP '{first} 00:00:00' AND ts < TIMESTAMP '{end_of_day(as_of)}'
        GROUP BY ALL)"""


def _duckdb_snapshot_sql(sources: dict[str, str], subscribers: str, as_of: dt.date) -> str:
    """The snapshot as one query over per-subscriber-day rows of each table (`sources`).

    Like Mia: the rows of each table are first summed per subscriber and window bucket (the
    shortest window holding the day), then the few bucket rows per subscriber are summed into
    the windows.
    """
    first = as_of - dt.timedelta(days=max(WINDOWS) - 1)
    bucket = "CASE " + " ".join(
        f"WHEN date > DATE '{as_of}' - {window} THEN {index}"
        for index, window in enumerate(WINDOWS[:-1])
    )
    bucket += f" ELSE {len(WINDOWS) - 1} END"
    longest = max(WINDOWS)

    def within(window: int, value: str) -> str:
        return f"SUM(CASE WHEN bucket <= {WINDOWS.index(window)} THEN {value} ELSE 0 END)"

    def fixed(window: int, value: str) -> str:
        return f"CAST({within(window, value)} AS DOUBLE) / {FIXED_POINT}"

    usage_days = ["COUNT(*) AS days", f"SUM(charge{MILLI}) AS charge"]
    usage = []
    for kind in USAGE_KINDS:
        usage_days += [
            f"SUM({kind}_quantity{MILLI}) AS {kind}_quantity",
            f"SUM({kind}_events) AS {kind}_events",
            f"SUM(CASE WHEN {kind}_events > 0 THEN 1 ELSE 0 END) AS {kind}_days",
        ]
    for window in WINDOWS:
        for kind in USAGE_KINDS:
            unit = usage_unit(kind)
            usage += [
                f"{fixed(window, f'{kind}_quantity')} AS {kind}_{unit}_{window}d",
                f"{within(window, f'{kind}_events')} AS {kind}_events_{window}d",
                f"{within(window, f'{kind}_days')} AS {kind}_active_days_{window}d",
            ]
        usage += [
            f"{within(window, 'days')} AS usage_active_days_{window}d",
            f"{fixed(window, 'charge')} AS charges_{window}d",
        ]
    payment_days = [
        f"SUM(topup_amount{MILLI}) AS amount",
        "SUM(topups) AS topups",
        "MAX(date) FILTER (topups > 0) AS last_topup",
        f"MAX(date) FILTER ({PROMISED} > 0) AS last_promised",
    ] + [f"SUM({method}_topups) AS {method}_topups" for method in PAYMENT_METHODS]
    payments = []
    for window in WINDOWS:
        payments += [
            f"{fixed(window, 'amount')} AS topup_amount_{window}d",
            f"{within(window, 'topups')} AS topups_{window}d",
            f"{within(window, PROMISED)} AS promised_payments_{window}d",
        ]
    payments += [
        f"DATE '{as_of}' - MAX(last_topup) AS days_since_last_topup",
        f"DATE '{as_of}' - MAX(last_promised) AS days_since_last_promised_payment",
    ]
    payments += [
        f"CASE WHEN SUM(topups) > 0 THEN CAST(SUM({method}_topups) AS DOUBLE) / SUM(topups) "
        f"ELSE 0.0 END AS {method}_topup_share_{longest}d"
        for method in PAYMENT_METHODS
    ]
    app_days = ["COUNT(*) AS days", "SUM(screen_views) AS views", "MAX(date) AS last_visit"]
    app_days += [f"SUM({screen}_views) AS {screen}_views" for screen in APP_SCREENS]
    app = []
    for window in WINDOWS:
        app += [
            f"{within(window, 'views')} AS app_screen_views_{window}d",
            f"{within(window, 'days')} AS app_active_days_{window}d",
        ]
        app += [
            f"{within(window, f'{screen}_views')} AS {screen}_screen_views_{window}d"
            for screen in APP_SCREENS
        ]
    app.append(f"DATE '{as_of}' - MAX(last_visit) AS days_since_last_app_visit")

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

    def per_subscriber(table: str, per_bucket: list[str], columns: list[str]) -> str:
        return f"""
        SELECT subscriber_id, {", ".join(columns)} FROM (
            SELECT subscriber_id, {bucket} AS bucket, {", ".join(per_bucket)}
            FROM {sources[table]}
            WHERE date BETWEEN DATE '{first}' AND DATE '{as_of}'
            GROUP BY ALL
        ) GROUP BY subscriber_id"""

    return f"""
    WITH u AS ({per_subscriber("usage", usage_days, usage)}),
    p AS ({per_subscriber("payments", payment_days, payments)}),
    a AS ({per_subscriber("app_events", app_days, app)})
    SELECT s.subscriber_id, DATE '{as_of}' AS snapshot_date,
           DATE '{as_of}' - s.activation_date AS tenure_days,
           s.region, s.device_os, s.device_vendor, s.tariff_id,
           u.* EXCLUDE (subscriber_id), p.* EXCLUDE (subscriber_id), a.* EXCLUDE (subscriber_id),
           {", ".join(derived)}
    FROM read_parquet({subscribers}) AS s
    LEFT JOIN u USING (subscriber_id) LEFT JOIN p USING (subscriber_id)
    LEFT JOIN a USING (subscriber_id)
    ORDER BY s.subscriber_id
    """


def _duckdb_snapshot(connection: Any, sql: str) -> pl.DataFrame:
    """Run the snapshot query; counts and sums of subscribers without rows become 0."""
    frame = pl.from_arrow(connection.sql(sql).to_arrow_table())
    keep_null = {name for name in frame.columns if "days_since" in name or "_trend_" in name}
    return frame.with_columns(
        pl.col(name).fill_null(0)
        for name, dtype in frame.schema.items()
        if dtype.is_numeric() and name not in keep_null
    )


def duckdb_nightly(lake: Lake, as_of: dt.date, scratch: Path, clock: Stopwatch) -> pl.DataFrame:
    """DuckDB's night: the new day's daily aggregates (COPY to Parquet), then the snapshot SQL
    over Mia's daily-aggregate files of the window."""
    connection = _duckdb_connection()
    with clock.phase("new day"):
        for table in TABLES:
            files = _sql_files(_raw_files(lake, table, as_of, as_of))
            connection.execute(f"""
                COPY (
                    SELECT subscriber_id, DATE '{as_of}' AS date,
                           {", ".join(_duckdb_daily_columns(table))}
                    FROM read_parquet({files}) WHERE ts < TIMESTAMP '{end_of_day(as_of)}'
                    GROUP BY subscriber_id ORDER BY subscriber_id
                ) TO '{scratch / f"daily-{table}.parquet"}' (FORMAT parquet, COMPRESSION zstd)
                """)
    with clock.phase("snapshot"):
        sources = {
            table: "read_parquet("
            f"{_sql_files([file for _, file in _daily_files(lake, table, as_of)])}, "
            "hive_partitioning = true)"
            for table in TABLES
        }
        sql = _duckdb_snapshot_sql(sources, _sql_files(_subscriber_files(lake, as_of)), as_of)
        return _duckdb_snapshot(connection, sql)


def duckdb_rebuild(lake: Lake, as_of: dt.date, scratch: Path, clock: Stopwatch) -> pl.DataFrame:
    """DuckDB from raw events: one query, raw events summed per subscriber-day then windowed."""
    connection = _duckdb_connection()
    with clock.phase("snapshot from raw events"):
        first = window_start(lake, as_of)
        sources = {table: _duckdb_raw_days(lake, table, first, as_of) for table in TABLES}
        sql = _duckdb_snapshot_sql(sources, _sql_files(_subscriber_files(lake, as_of)), as_of)
        return _duckdb_snapshot(connection, sql)


# ---------------------------------------------------------------------------- pandas


def _pandas_fixed(values: Any) -> Any:
    return (values * FIXED_POINT).round().astype("int64")


def _pandas_daily(events: Any, table: str, keys: list[str]) -> Any:
    """Mia's daily columns from raw events, one row per `keys` (a pandas DataFrame)."""
    import pandas as pd

    columns: dict[str, Any] = {}
    if table == "usage":
        events = events.assign(
            _quantity=_pandas_fixed(events["quantity"]), _charge=_pandas_fixed(events["charge"])
        )
        totals = events.groupby(keys)["_charge"].sum()
        by_kind = (
            events.groupby([*keys, "kind"])["_quantity"]
            .agg(["sum", "size"])
            .unstack("kind", fill_value=0)
        )
        for kind in USAGE_KINDS:
            columns[f"{kind}_quantity{MILLI}"] = by_kind.get(("sum", kind), 0)
            columns[f"{kind}_events"] = by_kind.get(("size", kind), 0)
        columns[f"charge{MILLI}"] = totals
    elif table == "payments":
        events = events.assign(_amount=_pandas_fixed(events["amount"]))
        totals = events.groupby(keys)["_amount"].agg(["sum", "size"])
        by_method = events.groupby([*keys, "method"]).size().unstack("method", fill_value=0)
        columns[f"topup_amount{MILLI}"] = totals["sum"]
        columns["topups"] = totals["size"]
        for method in PAYMENT_METHODS:
            columns[f"{method}_topups"] = by_method.get(method, 0)
    else:
        totals = events.groupby(keys).size()
        by_screen = events.groupby([*keys, "screen"]).size().unstack("screen", fill_value=0)
        columns["screen_views"] = totals
        for screen in APP_SCREENS:
            columns[f"{screen}_views"] = by_screen.get(screen, 0)
    frame = pd.DataFrame(columns, index=totals.index)
    return frame.astype({name: "int64" for name in columns}).reset_index()


def _pandas_raw(lake: Lake, table: str, first: dt.date, as_of: dt.date) -> Any:
    import pandas as pd

    events = pd.concat([pd.read_parquet(f) for f in _raw_files(lake, table, first, as_of)])
    start, stop = pd.Timestamp(first), pd.Timestamp(end_of_day(as_of))
    return events[(events["ts"] >= start) & (events["ts"] < stop)]


def _pandas_snapshot(daily: dict[str, Any], subscribers: Any, as_of: dt.date) -> Any:
    """The snapshot from per-subscriber-day rows (`date` a datetime column) of each table."""
    import pandas as pd

    as_of_ts = pd.Timestamp(as_of)
    longest = max(WINDOWS)
    subscribers = subscribers.set_index(SUBSCRIBER_ID)
    result: dict[str, Any] = {
        "tenure_days": (as_of_ts - pd.to_datetime(subscribers["activation_date"])).dt.days
    }
    for column in ("region", "device_os", "device_vendor", "tariff_id"):
        result[column] = subscribers[column]
    windows: dict[str, dict[int, Any]] = {}
    for table, frame in daily.items():
        frame = frame[(frame[DATE] > as_of_ts - pd.Timedelta(days=longest))]
        frame = frame[frame[DATE] <= as_of_ts]
        daily[table] = frame
        days_ago = (as_of_ts - frame[DATE]).dt.days
        windows[table] = {window: frame[days_ago < window] for window in WINDOWS}

    for window, recent in windows["usage"].items():
        grouped = recent.groupby(SUBSCRIBER_ID)
        sums = grouped[list(DAILY_VALUE_COLUMNS["usage"])].sum()
        for kind in USAGE_KINDS:
            events = f"{kind}_events"
            result[f"{kind}_{usage_unit(kind)}_{window}d"] = (
                sums[f"{kind}_quantity{MILLI}"] / FIXED_POINT
            )
            result[f"{kind}_events_{window}d"] = sums[events]
            result[f"{kind}_active_days_{window}d"] = (
                (recent[events] > 0).groupby(recent[SUBSCRIBER_ID]).sum()
            )
        result[f"usage_active_days_{window}d"] = grouped.size()
        result[f"charges_{window}d"] = sums[f"charge{MILLI}"] / FIXED_POINT

    for window, recent in windows["payments"].items():
        sums = recent.groupby(SUBSCRIBER_ID)[list(DAILY_VALUE_COLUMNS["payments"])].sum()
        result[f"topup_amount_{window}d"] = sums[f"topup_amount{MILLI}"] / FIXED_POINT
        result[f"topups_{window}d"] = sums["topups"]
        result[f"promised_payments_{window}d"] = sums[PROMISED]
        if window == longest:
            for method in PAYMENT_METHODS:
                share = (sums[f"{method}_topups"] / sums["topups"]).where(sums["topups"] > 0, 0.0)
                result[f"{method}_topup_share_{longest}d"] = share
    payments = daily["payments"]
    for name, column in (("topup", "topups"), ("promised_payment", PROMISED)):
        paid = payments[payments[column] > 0]
        last = paid.groupby(SUBSCRIBER_ID)[DATE].max()
        result[f"days_since_last_{name}"] = (as_of_ts - last).dt.days

    for window, recent in windows["app_events"].items():
        grouped = recent.groupby(SUBSCRIBER_ID)
        sums = grouped[list(DAILY_VALUE_COLUMNS["app_events"])].sum()
        result[f"app_screen_views_{window}d"] = sums["screen_views"]
        result[f"app_active_days_{window}d"] = grouped.size()
        for screen in APP_SCREENS:
            result[f"{screen}_screen_views_{window}d"] = sums[f"{screen}_views"]
    last = daily["app_events"].groupby(SUBSCRIBER_ID)[DATE].max()
    result["days_since_last_app_visit"] = (as_of_ts - last).dt.days

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


def _pandas_subscribers(lake: Lake, as_of: dt.date) -> Any:
    import pandas as pd

    return pd.concat([pd.read_parquet(f) for f in _subscriber_files(lake, as_of)])


def pandas_nightly(lake: Lake, as_of: dt.date, scratch: Path, clock: Stopwatch) -> Any:
    """pandas's night: the new day's daily aggregates (to Parquet), then the snapshot from
    Mia's daily-aggregate files of the window (a pandas DataFrame)."""
    import pandas as pd

    with clock.phase("new day"):
        for table in TABLES:
            day = _pandas_daily(_pandas_raw(lake, table, as_of, as_of), table, [SUBSCRIBER_ID])
            day.insert(1, DATE, pd.Timestamp(as_of))
            day.to_parquet(scratch / f"daily-{table}.parquet", compression="zstd", index=False)
    with clock.phase("snapshot"):
        daily = {}
        for table in TABLES:
            columns = [SUBSCRIBER_ID, *DAILY_VALUE_COLUMNS[table]]
            daily[table] = pd.concat(
                pd.read_parquet(file, columns=columns).assign(**{DATE: pd.Timestamp(date)})
                for date, file in _daily_files(lake, table, as_of)
            )
        return _pandas_snapshot(daily, _pandas_subscribers(lake, as_of), as_of)


def pandas_rebuild(lake: Lake, as_of: dt.date, scratch: Path, clock: Stopwatch) -> Any:
    """pandas from raw events: summed per subscriber-day, then windowed (a pandas DataFrame)."""
    with clock.phase("snapshot from raw events"):
        first = window_start(lake, as_of)
        daily = {}
        for table in TABLES:
            events = _pandas_raw(lake, table, first, as_of)
            events = events.assign(**{DATE: events["ts"].dt.normalize()})
            daily[table] = _pandas_daily(events, table, [SUBSCRIBER_ID, DATE])
        return _pandas_snapshot(daily, _pandas_subscribers(lake, as_of), as_of)


Runner = Callable[[Lake, dt.date, Path, Stopwatch], Any]
RUNNERS: dict[str, dict[str, Runner]] = {
    "nightly": {"mia": mia_nightly, "duckdb": duckdb_nightly, "pandas": pandas_nightly},
    "rebuild": {"mia": mia_rebuild, "duckdb": duckdb_rebuild, "pandas": pandas_rebuild},
}
WORK = {
    "nightly": {
        "mia": "`build_daily` of the new day + `compute_snapshot` (polars)",
        "duckdb": "new day: COPY ... GROUP BY; snapshot: one SQL query",
        "pandas": "new day: groupby; snapshot: groupby per window",
    },
    "rebuild": {
        "mia": "`build_daily_range` (90 days) + `compute_snapshot`",
        "duckdb": "one SQL query (per subscriber-day, then windows)",
        "pandas": "groupby per subscriber-day, then per window",
    },
}


def _child(engine: str, scenario: str, world: Path, output: Path) -> None:
    """Run one engine once in this (fresh) process; write its result, print its timings."""
    lake = Lake(world)
    as_of = max(lake.dates("raw", "usage"))
    clock = Stopwatch()
    result = RUNNERS[scenario][engine](lake, as_of, output, clock)
    peak = peak_mib()
    frame = result if isinstance(result, pl.DataFrame) else pl.from_pandas(result)
    frame.write_parquet(output / "snapshot.parquet")
    sys.stdout.write(json.dumps({"phases": clock.phases, "peak_mib": peak}) + "\n")


# ---------------------------------------------------------------------------- comparison


def _normalised(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AssertionError(f"columns missing: {missing[:5]} (of {len(missing)})")
    exprs = []
    for name in columns:
        dtype = frame.schema[name]
        if name in (SNAPSHOT_DATE, DATE):
            exprs.append(pl.col(name).cast(pl.Date))
        elif dtype.is_float():
            exprs.append(pl.col(name).cast(pl.Float64))
        elif dtype.is_numeric():
            exprs.append(pl.col(name).cast(pl.Int64).cast(pl.Float64))
        else:
            exprs.append(pl.col(name).cast(pl.String))
    return frame.select(exprs).sort(SUBSCRIBER_ID)


def compare(
    reference: pl.DataFrame,
    other: pl.DataFrame,
    rtol: float = 1e-9,
    columns: list[str] | None = None,
) -> list[str]:
    """Columns whose values differ (floats beyond `rtol`, nulls in different places)."""
    columns = columns or compared_columns()
    left, right = _normalised(reference, columns), _normalised(other, columns)
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


def _check(outputs: dict[str, dict[str, Path]]) -> None:
    """Raise unless every engine's snapshot (and new day) equals Mia's, in both scenarios."""
    reference = pl.read_parquet(outputs["nightly"]["mia"] / "snapshot.parquet")
    for scenario, runs in outputs.items():
        for engine, output in runs.items():
            differing = compare(reference, pl.read_parquet(output / "snapshot.parquet"))
            if differing:
                raise AssertionError(
                    f"{scenario}: {engine}'s snapshot differs from mia's nightly one in "
                    f"{differing[:10]}"
                )
    for table in TABLES:
        columns = [SUBSCRIBER_ID, DATE, *DAILY_VALUE_COLUMNS[table]]
        mia = pl.read_parquet(outputs["nightly"]["mia"] / f"daily-{table}.parquet")
        for engine in ENGINES:
            other = pl.read_parquet(outputs["nightly"][engine] / f"daily-{table}.parquet")
            differing = compare(mia, other, columns=columns)
            if differing:
                raise AssertionError(
                    f"nightly: {engine}'s daily aggregate of {table} differs from mia's in "
                    f"{differing[:10]}"
                )


# ---------------------------------------------------------------------------- the report


def _medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per phase and in total, and the median peak RSS."""
    phases = list(runs[0]["phases"])
    medians = {
        phase: {
            key: statistics.median(run["phases"][phase][key] for run in runs)
            for key in ("wall_s", "cpu_s")
        }
        for phase in phases
    }
    medians["total"] = {
        key: statistics.median(sum(p[key] for p in run["phases"].values()) for run in runs)
        for key in ("wall_s", "cpu_s")
    }
    medians["peak"] = {"mib": statistics.median(run["peak_mib"] for run in runs)}
    return medians


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}" if reference > 0 else "-"


def _tables(medians: dict[str, dict[str, dict[str, dict[str, float]]]]) -> list[str]:
    nightly = medians["nightly"]
    lines = [
        "**nightly** (new day's daily aggregates from its raw events, written to Parquet; "
        "snapshot from the same daily-aggregate files of the last 90 days)",
        "",
        "| engine | new day: wall / CPU (s) | snapshot: wall / CPU (s) | nightly: wall (s) "
        "| nightly: CPU (s) | peak RSS (MiB) | wall / Mia | CPU / Mia | snapshot CPU / Mia |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    mia = nightly["mia"]
    for engine in ENGINES:
        run = nightly[engine]
        lines.append(
            f"| {engine} | {run['new day']['wall_s']:.2f} / {run['new day']['cpu_s']:.2f} "
            f"| {run['snapshot']['wall_s']:.2f} / {run['snapshot']['cpu_s']:.2f} "
            f"| {run['total']['wall_s']:.2f} | {run['total']['cpu_s']:.2f} "
            f"| {run['peak']['mib']:.0f} "
            f"| {_ratio(run['total']['wall_s'], mia['total']['wall_s'])} "
            f"| {_ratio(run['total']['cpu_s'], mia['total']['cpu_s'])} "
            f"| {_ratio(run['snapshot']['cpu_s'], mia['snapshot']['cpu_s'])} |"
        )
    rebuild = medians["rebuild"]
    mia = rebuild["mia"]
    lines += [
        "",
        "**rebuild** (snapshot from the raw events of the last 90 days)",
        "",
        "| engine | work | wall (s) | CPU (s) | peak RSS (MiB) | wall / Mia | CPU / Mia |",
        "|---|---|---|---|---|---|---|",
    ]
    for engine in ENGINES:
        run = rebuild[engine]
        lines.append(
            f"| {engine} | {WORK['rebuild'][engine]} | {run['total']['wall_s']:.2f} "
            f"| {run['total']['cpu_s']:.2f} | {run['peak']['mib']:.0f} "
            f"| {_ratio(run['total']['wall_s'], mia['total']['wall_s'])} "
            f"| {_ratio(run['total']['cpu_s'], mia['total']['cpu_s'])} |"
        )
    return lines


def run_benchmark(subscribers: int, days: int, repeats: int, world: Path | None = None) -> str:
    """Generate (or reuse) the world, run every scenario and engine `repeats` times, check the
    outputs equal, tabulate."""
    world = world or RESULTS / f"world-{subscribers}x{days}"
    started = time.perf_counter()
    lake = generate_world(world, subscribers, days)
    logger.info("world ready in %.1f s: %s", time.perf_counter() - started, world)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        scenario: {engine: [] for engine in ENGINES} for scenario in SCENARIOS
    }
    with tempfile.TemporaryDirectory() as scratch:
        outputs = {
            scenario: {engine: Path(scratch) / f"{scenario}-{engine}" for engine in ENGINES}
            for scenario in SCENARIOS
        }
        for repeat in range(repeats):
            for scenario in SCENARIOS:
                for engine in ENGINES:
                    output = outputs[scenario][engine]
                    if output.exists():
                        shutil.rmtree(output)
                    output.mkdir()
                    arguments = ["--scenario", scenario, "--world", str(world)]
                    result = run_child(
                        "benchmarks.features", engine, [*arguments, "--output", str(output)]
                    )
                    runs[scenario][engine].append(result)
                    logger.info("repeat %d %s %s: %s", repeat + 1, scenario, engine, result)
        _check(outputs)
    rows_per_day = {
        table: pl.scan_parquet(partition_files(lake.raw(table, START)))
        .select(pl.len())
        .collect()
        .item()
        for table in TABLES
    }
    medians = {
        scenario: {engine: _medians(runs[scenario][engine]) for engine in ENGINES}
        for scenario in SCENARIOS
    }
    lines = [
        f"Features benchmark: {subscribers:,} subscribers x {days} days "
        f"(raw rows on day 1: {', '.join(f'{t} {n:,}' for t, n in rows_per_day.items())}); "
        f"{len(compared_columns()) - 2} snapshot columns compared; medians of {repeats} runs; "
        f"polars and DuckDB on {pl.thread_pool_size()} threads; CPU = user + system time of the "
        "engine's process; ratios are engine / mia.",
        "",
        *_tables(medians),
        "",
        "Outputs: duckdb equal, pandas equal to Mia's in both scenarios (the snapshots, and the "
        "new day's daily aggregates).",
    ]
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
    parser.add_argument("--scenario", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.scenario, args.world, args.output)
        return 0
    if args.subscribers < 1 or args.days < 2 or args.repeats < 1:
        parser.error("--subscribers >= 1, --days >= 2 and --repeats >= 1 are required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.stdout.write(run_benchmark(args.subscribers, args.days, args.repeats, args.world))
    return 0


if __name__ == "__main__":
    sys.exit(main())
