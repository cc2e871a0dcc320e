"""Training labels: did the subscriber accept an offer after seeing it, in (T, T + horizon]?

A snapshot for day T sees everything up to the end of T; its labels look only at events from
the first instant after T up to the end of day T + horizon. A row exists for each offer (or
category) shown in that window; its label is 1 when the subscriber accepted that offer at or
after an impression of it inside the window. Accepts without an impression in the window
(organic) make no row and no positive.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable

import polars as pl

from features.daily import with_offer_category
from features.snapshot import read_snapshot
from mia.errors import InputError
from mia.ingest import raw_events, raw_state
from mia.lake import Lake, end_of_day
from mia.schema import CATEGORY, EVENT, LABEL, OFFER_ID, SNAPSHOT_DATE, SUBSCRIBER_ID, TS

logger = logging.getLogger(__name__)

_FIRST_IMPRESSION = "_first_impression"
_LAST_ACCEPT = "_last_accept"


class LabelInputError(InputError):
    """Inputs labels cannot be built from."""


def label_window(snapshot_date: dt.date, horizon_days: int) -> tuple[dt.datetime, dt.datetime]:
    """[start, stop) timestamps of the label window (T, T + horizon] of a snapshot day."""
    if not isinstance(horizon_days, int) or horizon_days < 1:
        raise LabelInputError(f"horizon_days == {horizon_days!r}, must be an integer >= 1.")
    return end_of_day(snapshot_date), end_of_day(snapshot_date + dt.timedelta(days=horizon_days))


def offer_labels(
    offer_events: pl.LazyFrame | pl.DataFrame,
    catalog: pl.DataFrame | pl.LazyFrame,
    snapshot_date: dt.date,
    horizon_days: int,
) -> pl.DataFrame:
    """[subscriber_id, snapshot_date, offer_id, category, label] per offer shown in the window."""
    start, stop = label_window(snapshot_date, horizon_days)
    events = offer_events.lazy()
    missing = [c for c in (SUBSCRIBER_ID, OFFER_ID, TS, EVENT) if c not in events.collect_schema()]
    if missing:
        raise LabelInputError(f"offer_events: columns {missing} missing (rule: contract).")
    in_window = events.filter(
        (pl.col(TS) >= start) & (pl.col(TS) < stop) & pl.col(EVENT).is_in(["impression", "accept"])
    ).select(SUBSCRIBER_ID, OFFER_ID, TS, EVENT)
    per_offer = (
        in_window.group_by(SUBSCRIBER_ID, OFFER_ID)
        .agg(
            pl.when(pl.col(EVENT) == "impression").then(pl.col(TS)).min().alias(_FIRST_IMPRESSION),
            pl.when(pl.col(EVENT) == "accept").then(pl.col(TS)).max().alias(_LAST_ACCEPT),
        )
        .filter(pl.col(_FIRST_IMPRESSION).is_not_null())
    )
    labelled = with_offer_category(per_offer, catalog).select(
        pl.col(SUBSCRIBER_ID),
        pl.lit(snapshot_date, dtype=pl.Date).alias(SNAPSHOT_DATE),
        pl.col(OFFER_ID),
        pl.col(CATEGORY).cast(pl.String),
        (pl.col(_LAST_ACCEPT) >= pl.col(_FIRST_IMPRESSION))
        .fill_null(False)
        .cast(pl.Int8)
        .alias(LABEL),
    )
    result = labelled.sort(SUBSCRIBER_ID, OFFER_ID).collect(engine="streaming").rechunk()
    logger.info(
        "offer labels %s +%dd: %d rows, %d positive",
        snapshot_date,
        horizon_days,
        result.height,
        int(result.get_column(LABEL).sum()),
    )
    return result


def category_labels(
    offer_events: pl.LazyFrame | pl.DataFrame,
    catalog: pl.DataFrame | pl.LazyFrame,
    snapshot_date: dt.date,
    horizon_days: int,
) -> pl.DataFrame:
    """[subscriber_id, snapshot_date, category, label] per category shown in the window."""
    offers = offer_labels(offer_events, catalog, snapshot_date, horizon_days)
    return (
        offers.group_by(SUBSCRIBER_ID, SNAPSHOT_DATE, CATEGORY)
        .agg(pl.col(LABEL).max())
        .sort(SUBSCRIBER_ID, CATEGORY)
    )


def lake_category_labels(lake: Lake, snapshot_date: dt.date, horizon_days: int) -> pl.DataFrame:
    """Category labels of a snapshot day from the ingested offer events of the label window."""
    start, _ = label_window(snapshot_date, horizon_days)
    last_day = snapshot_date + dt.timedelta(days=horizon_days)
    events = raw_events(lake, "offer_events", start.date(), last_day)
    catalog = raw_state(lake, "catalog", last_day)
    if events is None or catalog is None:
        raise LabelInputError(f"offer_events or catalog not ingested up to {last_day}.")
    return category_labels(events, catalog, snapshot_date, horizon_days)


def training_frame(
    lake: Lake, snapshot_dates: Iterable[dt.date], horizon_days: int
) -> pl.DataFrame:
    """Stored snapshots joined to their category labels: one row per subscriber x day x category."""
    frames = []
    for snapshot_date in sorted(set(snapshot_dates)):
        labels = lake_category_labels(lake, snapshot_date, horizon_days)
        snapshot = read_snapshot(lake, snapshot_date)
        frames.append(
            labels.join(snapshot, on=[SUBSCRIBER_ID, SNAPSHOT_DATE], how="inner").sort(
                SUBSCRIBER_ID, CATEGORY
            )
        )
    if not frames:
        raise LabelInputError("snapshot_dates is empty, must name at least one day.")
    return pl.concat(frames, how="vertical")
