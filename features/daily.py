"""Daily aggregates: each day's raw events folded into one row per subscriber, once.

`aggregate_day` is the pure core on frames; `build_daily` reads one ingested day from the data
root and writes `data/daily/<table>/date=D/`. Quantities and amounts are stored in fixed point
(thousandths of the unit, Int64), so window sums over them are exact and do not depend on the
order in which a parallel engine adds the rows: the same inputs give byte-identical snapshots.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from mia.errors import InputError
from mia.ingest import MANIFEST_FILE, manifest_path, raw_events, raw_state
from mia.lake import (
    Lake,
    end_of_day,
    naming_damage,
    partition_files,
    remove_path,
    remove_temporaries,
    write_json,
    write_partition,
)
from mia.schema import (
    APP_SCREENS,
    CATEGORY,
    DATE,
    EVENT,
    KIND,
    OFFER_EVENTS,
    OFFER_ID,
    PAYMENT_METHODS,
    SUBSCRIBER_ID,
    TABLES,
    TRANSFER_KINDS,
    TS,
    USAGE_KINDS,
)

logger = logging.getLogger(__name__)

# Event tables folded into daily aggregates, in build order.
DAILY_TABLES = ("usage", "offer_events", "payments", "app_events", "transfers")
# Daily sums of quantities and amounts are stored in units of 1 / FIXED_POINT.
FIXED_POINT = 1000
MILLI = "_milli"
# Categories are the catalog's own names (any number of them), stored as text.
CATEGORY_TYPE = pl.String
# Folder under daily/ of the build manifests (metadata, not a table).
DAILY_MANIFEST_DIR = "_built"
_COUNT = pl.Int32
_FIXED = pl.Int64


class DailyInputError(InputError):
    """Raw events that cannot be folded into daily aggregates."""


def to_fixed(expr: pl.Expr) -> pl.Expr:
    """A quantity in thousandths of its unit, as an exact integer."""
    return (expr * FIXED_POINT).round().cast(_FIXED)


def from_fixed(expr: pl.Expr) -> pl.Expr:
    """A fixed-point integer back in its unit, as a float."""
    return expr.cast(pl.Float64) / FIXED_POINT


def _usage_columns() -> dict[str, pl.DataType]:
    columns: dict[str, pl.DataType] = {}
    for kind in USAGE_KINDS:
        columns[f"{kind}_quantity{MILLI}"] = _FIXED
        columns[f"{kind}_events"] = _COUNT
    columns[f"charge{MILLI}"] = _FIXED
    return columns


def _payments_columns() -> dict[str, pl.DataType]:
    columns: dict[str, pl.DataType] = {f"topup_amount{MILLI}": _FIXED, "topups": _COUNT}
    columns.update({f"{method}_topups": _COUNT for method in PAYMENT_METHODS})
    return columns


def _app_columns() -> dict[str, pl.DataType]:
    columns: dict[str, pl.DataType] = {"screen_views": _COUNT}
    columns.update({f"{screen}_views": _COUNT for screen in APP_SCREENS})
    return columns


def _transfers_columns() -> dict[str, pl.DataType]:
    columns: dict[str, pl.DataType] = {}
    for kind in TRANSFER_KINDS:
        columns[f"{kind}_gigabytes{MILLI}"] = _FIXED
        columns[f"{kind}_transfers"] = _COUNT
        columns[f"{kind}_amount{MILLI}"] = _FIXED
    return columns


# Offer event -> its count column (daily aggregates and the offer state).
OFFER_COUNT_COLUMNS = {
    "impression": "impressions",
    "click": "clicks",
    "accept": "accepts",
    "dismiss": "dismisses",
}

# Columns after the keys, per table.
DAILY_VALUE_COLUMNS: dict[str, dict[str, pl.DataType]] = {
    "usage": _usage_columns(),
    "offer_events": {OFFER_COUNT_COLUMNS[event]: _COUNT for event in OFFER_EVENTS},
    "payments": _payments_columns(),
    "app_events": _app_columns(),
    "transfers": _transfers_columns(),
}


def daily_keys(table: str) -> dict[str, pl.DataType]:
    """Key columns of a daily aggregate: subscriber, date (and category for offer events)."""
    keys: dict[str, pl.DataType] = {SUBSCRIBER_ID: pl.Int64, DATE: pl.Date}
    if table == "offer_events":
        keys[CATEGORY] = CATEGORY_TYPE
    return keys


def daily_schema(table: str) -> dict[str, pl.DataType]:
    """Column -> dtype of the daily aggregate of an event table."""
    if table not in DAILY_VALUE_COLUMNS:
        raise DailyInputError(f"table {table!r} has no daily aggregate; known: {DAILY_TABLES}.")
    return {**daily_keys(table), **DAILY_VALUE_COLUMNS[table]}


def empty_daily(table: str) -> pl.LazyFrame:
    """A daily aggregate with no rows (a table delivered, but silent in a window)."""
    return pl.LazyFrame(schema=daily_schema(table))


# Per-event columns computed once before the group-by (a value in fixed point, a flag per kind),
# so that each daily column is a plain or masked sum of them.
_EVENT = "_event_"


def _fixed(value: str) -> str:
    return f"{_EVENT}{value}{MILLI}"


def _flag(column: str, value: str) -> str:
    return f"{_EVENT}{column}_is_{value}"


def _event_columns(table: str) -> list[pl.Expr]:
    """Per-event columns the aggregations of `table` read: fixed-point values, kind flags."""
    values = {
        "usage": ("quantity", "charge"),
        "payments": ("amount",),
        "transfers": ("gb", "amount"),
    }
    flags = {
        "usage": (KIND, USAGE_KINDS),
        "payments": ("method", PAYMENT_METHODS),
        "app_events": ("screen", APP_SCREENS),
        "transfers": (KIND, TRANSFER_KINDS),
        "offer_events": (EVENT, tuple(OFFER_COUNT_COLUMNS)),
    }
    exprs = [to_fixed(pl.col(value)).alias(_fixed(value)) for value in values.get(table, ())]
    if table in flags:
        column, kinds = flags[table]
        exprs += [(pl.col(column) == kind).alias(_flag(column, kind)) for kind in kinds]
    return exprs


def _count(column: str, value: str) -> pl.Expr:
    return pl.col(_flag(column, value)).sum().cast(_COUNT)


def _fixed_sum(value: str, flag: tuple[str, str] | None = None) -> pl.Expr:
    fixed = pl.col(_fixed(value))
    if flag is not None:
        fixed = pl.when(pl.col(_flag(*flag))).then(fixed).otherwise(0)
    return fixed.sum().cast(_FIXED)


def _aggregations(table: str) -> list[pl.Expr]:
    """Per-subscriber aggregations of one day's events (with `_event_columns`), one expression
    per daily column."""
    if table == "usage":
        exprs = []
        for kind in USAGE_KINDS:
            exprs.append(_fixed_sum("quantity", (KIND, kind)).alias(f"{kind}_quantity{MILLI}"))
            exprs.append(_count(KIND, kind).alias(f"{kind}_events"))
        exprs.append(_fixed_sum("charge").alias(f"charge{MILLI}"))
        return exprs
    if table == "payments":
        exprs = [
            _fixed_sum("amount").alias(f"topup_amount{MILLI}"),
            pl.len().cast(_COUNT).alias("topups"),
        ]
        exprs += [_count("method", method).alias(f"{method}_topups") for method in PAYMENT_METHODS]
        return exprs
    if table == "app_events":
        exprs = [pl.len().cast(_COUNT).alias("screen_views")]
        exprs += [_count("screen", s).alias(f"{s}_views") for s in APP_SCREENS]
        return exprs
    if table == "transfers":
        exprs = []
        for kind in TRANSFER_KINDS:
            exprs.append(_fixed_sum("gb", (KIND, kind)).alias(f"{kind}_gigabytes{MILLI}"))
            exprs.append(_count(KIND, kind).alias(f"{kind}_transfers"))
            exprs.append(_fixed_sum("amount", (KIND, kind)).alias(f"{kind}_amount{MILLI}"))
        return exprs
    if table == "offer_events":
        return [_count(EVENT, event).alias(column) for event, column in OFFER_COUNT_COLUMNS.items()]
    raise DailyInputError(f"table {table!r} has no daily aggregate; known: {DAILY_TABLES}.")


def _check_columns(table: str, frame: pl.LazyFrame, needed: list[str]) -> None:
    present = set(frame.collect_schema().names())
    missing = [column for column in needed if column not in present]
    if missing:
        raise DailyInputError(f"{table}: columns {missing} missing (rule: contract columns).")


def _offer_categories(catalog: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """offer_id -> category from the catalog."""
    catalog = catalog.lazy()
    _check_columns("catalog", catalog, [OFFER_ID, CATEGORY])
    return catalog.select(pl.col(OFFER_ID), pl.col(CATEGORY).cast(CATEGORY_TYPE)).unique(
        OFFER_ID, keep="first", maintain_order=True
    )


def with_offer_category(
    offer_events: pl.LazyFrame, catalog: pl.DataFrame | pl.LazyFrame
) -> pl.LazyFrame:
    """Offer events with the category of their offer; raises if an offer is not in the catalog."""
    categories = _offer_categories(catalog)
    unknown = (
        offer_events.select(OFFER_ID)
        .unique()
        .join(categories.filter(pl.col(CATEGORY).is_not_null()), on=OFFER_ID, how="anti")
        .sort(OFFER_ID)
        .collect()
    )
    if unknown.height:
        examples = unknown.get_column(OFFER_ID).head(5).to_list()
        raise DailyInputError(
            f"offer_events: column {OFFER_ID!r}: {unknown.height} offer(s) not in the catalog "
            f"with a known category (rule: every offer shown is in the catalog), e.g. {examples}."
        )
    return offer_events.join(categories, on=OFFER_ID, how="left")


def aggregate_table(
    table: str,
    events: pl.DataFrame | pl.LazyFrame,
    date: dt.date,
    catalog: pl.DataFrame | pl.LazyFrame | None = None,
) -> pl.DataFrame:
    """One day's events of one table as per-subscriber daily aggregates (sorted by key)."""
    schema = daily_schema(table)
    frame = events.lazy()
    # An optional column (offer_events.propensity) may be left out: no aggregate reads one.
    _check_columns(table, frame, [c.name for c in TABLES[table].columns if not c.optional])
    # Ingest refuses events after their delivery day; this keeps the rule even for hand-made
    # frames, so no daily aggregate can carry the future.
    frame = frame.filter(pl.col(TS) < end_of_day(date))
    keys = [SUBSCRIBER_ID]
    if table == "offer_events":
        if catalog is None:
            raise DailyInputError("offer_events: the catalog is needed to know offer categories.")
        frame = with_offer_category(frame, catalog)
        keys.append(CATEGORY)
    result = (
        frame.with_columns(_event_columns(table))
        .group_by(keys)
        .agg(_aggregations(table))
        .with_columns(pl.lit(date, dtype=pl.Date).alias(DATE))
        .select([pl.col(name).cast(dtype) for name, dtype in schema.items()])
        .sort(keys)
        .collect(engine="streaming")
        .rechunk()  # one chunk: the same bytes when written, however the engine split the work
    )
    logger.debug("daily %s %s: %d rows", table, date, result.height)
    return result


def aggregate_day(
    events: Mapping[str, pl.DataFrame | pl.LazyFrame], date: dt.date
) -> dict[str, pl.DataFrame]:
    """Daily aggregates of every event table in `events` (offer_events needs `catalog` too)."""
    unknown = sorted(set(events) - set(DAILY_TABLES) - {"catalog"})
    if unknown:
        raise DailyInputError(
            f"tables {unknown} have no daily aggregate; expected some of {DAILY_TABLES} "
            "(and 'catalog' for offer categories)."
        )
    catalog = events.get("catalog")
    return {
        table: aggregate_table(table, events[table], date, catalog=catalog)
        for table in DAILY_TABLES
        if table in events
    }


def is_built(lake: Lake, table: str, date: dt.date) -> bool:
    """True when the daily aggregate of `table` on `date` exists."""
    return bool(partition_files(lake.daily(table, date)))


def build_daily(lake: Lake, date: dt.date, force: bool = False) -> bool:
    """Fold the ingested events of `date` into daily aggregates; True if anything was built.

    Tables already built for that day are skipped unless `force`; a rebuilt day replaces the
    previous partition atomically. The day's build manifest (`daily_manifest_path`) names the
    ingest the aggregates come from; a forced build marks it pending first, so a build that is
    interrupted half-way is redone in full (`daily_needs_rebuild`).
    """
    marker = daily_manifest_path(lake, date)
    done = {DATE: date.isoformat(), "ingest": ingest_fingerprint(lake, date)}
    if force or read_build_manifest(marker) != done:  # only an unfinished build leaves temporaries
        _remove_leftovers(lake, date)
    if force:
        write_json({DATE: date.isoformat(), "building": True}, marker)
    built = False
    catalog: pl.DataFrame | None = None
    for table in DAILY_TABLES:
        if not partition_files(lake.raw(table, date)):
            if force and lake.daily(table, date).exists():
                remove_path(lake.daily(table, date))  # the day was re-delivered without it
                built = True
            continue
        if not force and is_built(lake, table, date):
            continue
        events = raw_events(lake, table, date, date)
        if events is None:
            continue
        if table == "offer_events":
            catalog = raw_state(lake, "catalog", date)
            if catalog is None:
                raise DailyInputError(
                    f"offer_events on {date}: no catalog ingested for that day "
                    f"in {lake.root / 'raw' / 'catalog'}."
                )
        with naming_damage(partition_files(lake.raw(table, date))):
            aggregate = aggregate_table(table, events, date, catalog=catalog)
        write_partition(aggregate, lake.daily(table, date), by_shard=True)
        if logger.isEnabledFor(logging.INFO):  # counting subscribers costs a pass: only if shown
            logger.info(
                "daily aggregate %s %s: %d rows (one per %s) for %d subscribers",
                table,
                date,
                aggregate.height,
                " x ".join(name for name in daily_keys(table) if name != DATE),
                aggregate[SUBSCRIBER_ID].n_unique(),
            )
        built = True
    if built or read_build_manifest(marker) != done:
        write_json(done, marker)
    return built


def daily_manifest_path(lake: Lake, date: dt.date) -> Path:
    """Where the build manifest of the daily aggregates of `date` lives."""
    return lake.root / "daily" / DAILY_MANIFEST_DIR / f"date={date.isoformat()}" / MANIFEST_FILE


def daily_needs_rebuild(lake: Lake, date: dt.date) -> bool:
    """True when the aggregates of `date` must be built again in full: a forced build was
    interrupted, or they were built from an earlier ingest of the day."""
    marker = read_build_manifest(daily_manifest_path(lake, date))
    if marker is None:  # never completed: build_daily builds the tables still missing
        return False
    return bool(marker.get("building")) or marker.get("ingest") != ingest_fingerprint(lake, date)


def read_build_manifest(path: Path) -> dict[str, Any] | None:
    """A build manifest (None when absent; `building` when unreadable, so it is redone)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:  # unreadable: treat as an interrupted build
        return {"building": True}


def ingest_fingerprint(lake: Lake, date: dt.date) -> str | None:
    """A digest of the day's ingest manifest: it changes whenever the day is ingested anew."""
    path = manifest_path(lake, date)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _remove_leftovers(lake: Lake, date: dt.date) -> None:
    """Temporary partitions and manifests of `date` that a killed build left behind."""
    partition = f"date={date.isoformat()}"
    for table in (*DAILY_TABLES, DAILY_MANIFEST_DIR):
        remove_temporaries(lake.daily(table, date).parent, partition)
    remove_temporaries(daily_manifest_path(lake, date).parent, MANIFEST_FILE)


def build_daily_range(
    lake: Lake, start: dt.date, end: dt.date, force: bool = False
) -> list[dt.date]:
    """Build the daily aggregates of every day in [start, end]; returns the days built."""
    if end < start:
        raise DailyInputError(f"end == {end}, must not precede start == {start}.")
    built = []
    for offset in range((end - start).days + 1):
        date = start + dt.timedelta(days=offset)
        if build_daily(lake, date, force=force):
            built.append(date)
    return built
