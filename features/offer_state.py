"""Offer state: per subscriber x offer, the whole history of offer events folded into one row.

The state as of day D holds, for every (subscriber_id, offer_id) ever shown or answered up to the
end of D, the count and the last time of each offer event (impression, click, accept, dismiss).
It is built once per ingested day from the state of the previous ingested day plus that day's raw
offer events, and stored as `data/daily/offer_state/date=D/` (one Parquet file stored by shard,
sorted by subscriber_id and offer_id within a shard, and the manifest it was built from), so
eligibility sees every past response at the cost of one new day of events per night.

`fold_offer_events` is the pure core on frames; `update_offer_state` keeps the stored states
current; `read_offer_state` reads the state of a night. A state is current when its manifest names
the digest of its day's ingest manifest and the digest of the manifest of the state it was built
from, so a day ingested again, or any earlier state rebuilt, makes every later state be rebuilt.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from pathlib import Path
from typing import Any

import polars as pl

from features.daily import OFFER_COUNT_COLUMNS, ingest_fingerprint, read_build_manifest
from mia.ingest import MANIFEST_FILE, ingested_dates, raw_events
from mia.lake import (
    Lake,
    Shard,
    atomic_path,
    end_of_day,
    partition_files,
    read_partition,
    remove_temporaries,
    write_json,
    write_parquet,
)
from mia.schema import DATE, EVENT, OFFER_ID, SUBSCRIBER_ID, TABLES, TS

logger = logging.getLogger(__name__)

# Folder under daily/ of the stored states.
OFFER_STATE = "offer_state"
KEYS = (SUBSCRIBER_ID, OFFER_ID)
_COUNT = pl.Int64  # a whole history of counts
_TS_TYPE = TABLES["offer_events"].polars_schema[TS]


def last_column(event: str) -> str:
    """Column of the state holding the time of the last `event` (e.g. last_dismiss_ts)."""
    return f"last_{event}_ts"


OFFER_STATE_SCHEMA: dict[str, pl.DataType] = {
    SUBSCRIBER_ID: pl.Int64,
    OFFER_ID: pl.String,
    **{last_column(event): _TS_TYPE for event in OFFER_COUNT_COLUMNS},
    **{count: _COUNT for count in OFFER_COUNT_COLUMNS.values()},
}


def empty_offer_state() -> pl.DataFrame:
    """An offer state with no rows (no offer event yet)."""
    return pl.DataFrame(schema=OFFER_STATE_SCHEMA)


def is_offer_state(frame: pl.DataFrame | pl.LazyFrame) -> bool:
    """True when `frame` has the columns of an offer state (rather than raw offer events)."""
    return set(OFFER_STATE_SCHEMA) <= set(frame.lazy().collect_schema().names())


def fold_offer_events(
    previous: pl.DataFrame | None,
    events: pl.DataFrame | pl.LazyFrame | None,
    as_of: dt.date,
) -> pl.DataFrame:
    """The offer state as of the end of `as_of`: `previous` plus the `events` up to then.

    With no `previous`, the state of every event given: over all events up to `as_of`, the
    from-scratch state. Sorted by subscriber_id, offer_id.
    """
    parts = [] if previous is None else [previous.lazy().select(list(OFFER_STATE_SCHEMA))]
    if events is not None:
        day = events.lazy().filter(pl.col(TS) < end_of_day(as_of))  # never the future
        parts.append(
            day.group_by(KEYS).agg(
                *(
                    pl.col(TS).filter(pl.col(EVENT) == event).max().alias(last_column(event))
                    for event in OFFER_COUNT_COLUMNS
                ),
                *(
                    (pl.col(EVENT) == event).sum().alias(count)
                    for event, count in OFFER_COUNT_COLUMNS.items()
                ),
            )
        )
    if not parts:
        return empty_offer_state()
    typed = [pl.col(column).cast(dtype) for column, dtype in OFFER_STATE_SCHEMA.items()]
    return (
        pl.concat([part.select(typed) for part in parts])
        .group_by(KEYS)
        .agg(
            *(pl.col(last_column(event)).max() for event in OFFER_COUNT_COLUMNS),
            *(pl.col(count).sum() for count in OFFER_COUNT_COLUMNS.values()),
        )
        .select(typed)
        .sort(KEYS)
        .collect()
    )


def offer_state_manifest_path(lake: Lake, date: dt.date) -> Path:
    """The manifest of the stored offer state of `date`, inside its partition."""
    return lake.daily(OFFER_STATE, date) / MANIFEST_FILE


def _reference(lake: Lake, date: dt.date | None) -> dict[str, Any] | None:
    """What a state built on top of the state of `date` records about it (None: from nothing)."""
    if date is None:
        return None
    path = offer_state_manifest_path(lake, date)
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    return {DATE: date.isoformat(), "manifest": digest}


def _wanted_manifest(lake: Lake, date: dt.date, previous: dt.date | None) -> dict[str, Any]:
    return {
        DATE: date.isoformat(),
        "ingest": ingest_fingerprint(lake, date),
        "previous": _reference(lake, previous),
    }


def _write_offer_state(lake: Lake, date: dt.date, state: pl.DataFrame, manifest: dict) -> None:
    """The state and its manifest as one partition, swapped in at once."""
    directory = lake.daily(OFFER_STATE, date)
    remove_temporaries(directory.parent, directory.name)  # left by a killed build
    with atomic_path(directory) as temporary:
        temporary.mkdir(parents=True)
        write_parquet(state, temporary / "part-0.parquet", by_shard=True)
        write_json(manifest, temporary / MANIFEST_FILE)


def _stored_state(lake: Lake, date: dt.date, shard: Shard | None = None) -> pl.DataFrame:
    return read_partition(partition_files(lake.daily(OFFER_STATE, date)), shard).select(
        list(OFFER_STATE_SCHEMA)
    )


def update_offer_state(lake: Lake, as_of: dt.date) -> list[dt.date]:
    """Build the offer state of every ingested day up to `as_of` that is not current; returns
    the days built. A current state is not read: a night reads the events of its new day only."""
    built: list[dt.date] = []
    previous: dt.date | None = None
    state: pl.DataFrame | None = None  # the state of `previous`, when already in memory
    for date in ingested_dates(lake):
        if date > as_of:
            break
        manifest = _wanted_manifest(lake, date, previous)
        if read_build_manifest(offer_state_manifest_path(lake, date)) == manifest:
            previous, state = date, None
            continue
        if state is None and previous is not None:
            state = _stored_state(lake, previous)
        events = raw_events(lake, "offer_events", date, date)
        state = fold_offer_events(state, events, date)
        _write_offer_state(lake, date, state, manifest)
        logger.info(
            "offer state %s: %d subscriber x offer pairs with offer events", date, state.height
        )
        built.append(date)
        previous = date
    return built


def read_offer_state(lake: Lake, as_of: dt.date, shard: Shard | None = None) -> pl.DataFrame:
    """The offer state as of the end of `as_of` (of one shard's subscribers with `shard`).

    Days without a delivery carry the state of the latest ingested day before them. A state that
    is missing or not current (the daily step did not run since a day was ingested) is folded
    from every raw offer event up to `as_of` instead: slower, never stale.
    """
    days = [date for date in ingested_dates(lake) if date <= as_of]
    if not days:
        return empty_offer_state()
    last = days[-1]
    previous = days[-2] if len(days) > 1 else None
    if read_build_manifest(offer_state_manifest_path(lake, last)) == _wanted_manifest(
        lake, last, previous
    ):
        return _stored_state(lake, last, shard)
    logger.warning(
        "offer state of %s is not built; folding every offer event up to %s (run the daily step "
        "to store it)",
        last,
        as_of,
    )
    return fold_offer_events(None, raw_events(lake, "offer_events", None, last, shard=shard), last)
