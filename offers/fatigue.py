"""Contact fatigue: stop showing what a subscriber keeps ignoring, and cap contacts per week.

Two eligibility rules read what this module computes from the recent offer events:

- `fatigue`: an offer is suppressed for `fatigue_suppress_days` (M) nights after the subscriber
  ignored it `fatigue_ignores` (N) times within `fatigue_window_days` (D) days. An impression is
  *ignored* when no accept or dismiss of the same offer by the same subscriber follows it (at the
  same time or later, up to the end of `as_of`). The N-th ignored impression within D days (its
  date and the dates of the N - 1 before it span fewer than D days) triggers the suppression: the
  nights after its date, up to and including its date + M, are suppressed. With
  `fatigue_scope = "category"`, the ignored impressions of all offers of a category count
  together and the trigger suppresses the whole category. Per offer, the catalog's optional
  columns `fatigue_ignores`, `fatigue_window_days` and `fatigue_suppress_days` override the
  settings (offer scope; the category scope uses the settings). N = 0 turns the rule off.
- `weekly_cap`: a subscriber with `weekly_contact_cap` impressions or more in the 7 days up to
  `as_of` gets no offer tonight (0, the default, turns it off).

Everything is judged for the night `as_of + 1` with the events up to the end of `as_of`.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from mia.lake import end_of_day
from mia.schema import CATEGORY, EVENT, FATIGUE_COLUMNS, OFFER_ID, SUBSCRIBER_ID, TS
from mia.settings import Settings

RESPONSES = ("accept", "dismiss")
CAP_DAYS = 7  # the weekly cap counts the impressions of the 7 days up to as_of

FATIGUED_UNTIL = "_fatigued_until"  # last night a pair is suppressed
WEEK_CONTACTS = "_week_contacts"  # impressions of the subscriber in the last CAP_DAYS days

_DATE = "_date"
_IGNORES, _WINDOW, _SUPPRESS = (f"_{column}" for column in FATIGUE_COLUMNS)


def fatigue_limits(catalog: pl.DataFrame, settings: Settings) -> pl.DataFrame:
    """Per offer: offer_id, category and the N, D, M in force (catalog override or setting)."""
    defaults = (
        settings.fatigue_ignores,
        settings.fatigue_window_days,
        settings.fatigue_suppress_days,
    )
    overrides = settings.fatigue_scope == "offer"
    return catalog.select(
        OFFER_ID,
        CATEGORY,
        *[
            (
                pl.col(column).cast(pl.Int64).fill_null(default)
                if overrides and column in catalog.columns
                else pl.lit(default, dtype=pl.Int64)
            ).alias(name)
            for column, name, default in zip(
                FATIGUE_COLUMNS, (_IGNORES, _WINDOW, _SUPPRESS), defaults, strict=True
            )
        ],
    )


def lookback_days(catalog: pl.DataFrame, settings: Settings) -> int:
    """Days of offer events, up to as_of, that the fatigue and cap rules need."""
    limits = fatigue_limits(catalog, settings)
    longest = (limits[_WINDOW] + limits[_SUPPRESS]).max() if limits.height else 0
    return max(int(longest or 0), CAP_DAYS)


def _events_up_to(events: pl.LazyFrame, as_of: dt.date) -> pl.LazyFrame:
    return events.filter(pl.col(TS) < end_of_day(as_of)).select(SUBSCRIBER_ID, OFFER_ID, TS, EVENT)


def fatigued_pairs(
    events: pl.LazyFrame, catalog: pl.DataFrame, settings: Settings, as_of: dt.date
) -> pl.LazyFrame:
    """[subscriber_id, offer_id, _fatigued_until]: the pairs a trigger suppresses, with the last
    night it suppresses (may lie before the night: the rule compares)."""
    limits = fatigue_limits(catalog, settings).filter(pl.col(_IGNORES) > 0)
    recent = _events_up_to(events, as_of)
    last_response = (
        recent.filter(pl.col(EVENT).is_in(RESPONSES))
        .group_by(SUBSCRIBER_ID, OFFER_ID)
        .agg(pl.col(TS).max().alias("_responded"))
    )
    by_category = settings.fatigue_scope == "category"
    group = CATEGORY if by_category else OFFER_ID
    ignored = (
        recent.filter(pl.col(EVENT) == "impression")
        .join(last_response, on=[SUBSCRIBER_ID, OFFER_ID], how="left")
        .filter(pl.col("_responded").is_null() | (pl.col("_responded") < pl.col(TS)))
        .join(limits.lazy(), on=OFFER_ID, how="inner")
        .select(
            SUBSCRIBER_ID, group, _IGNORES, _WINDOW, _SUPPRESS, pl.col(TS).dt.date().alias(_DATE)
        )
    )
    if by_category:  # the settings' limits: one per category
        ignored = ignored.with_columns(
            pl.lit(settings.fatigue_ignores, dtype=pl.Int64).alias(_IGNORES),
            pl.lit(settings.fatigue_window_days, dtype=pl.Int64).alias(_WINDOW),
            pl.lit(settings.fatigue_suppress_days, dtype=pl.Int64).alias(_SUPPRESS),
        )
    # For each ignored impression, how many ignored impressions of the same pair fall within the
    # D days ending on its date; it triggers when they reach N.
    earlier = ignored.select(SUBSCRIBER_ID, group, pl.col(_DATE).alias("_earlier"))
    triggers = (
        ignored.with_row_index("_impression")
        .join(earlier, on=[SUBSCRIBER_ID, group], how="inner")
        .filter(
            (pl.col("_earlier") <= pl.col(_DATE))
            & ((pl.col(_DATE) - pl.col("_earlier")).dt.total_days() < pl.col(_WINDOW))
        )
        .group_by("_impression", SUBSCRIBER_ID, group, _DATE, _IGNORES, _SUPPRESS)
        .agg(pl.len().alias("_within"))
        .filter(pl.col("_within") >= pl.col(_IGNORES))
    )
    until = triggers.group_by(SUBSCRIBER_ID, group).agg(
        (pl.col(_DATE) + pl.duration(days=pl.col(_SUPPRESS))).max().alias(FATIGUED_UNTIL)
    )
    if not by_category:
        return until
    offers = catalog.lazy().select(OFFER_ID, CATEGORY)
    return until.join(offers, on=CATEGORY).select(SUBSCRIBER_ID, OFFER_ID, FATIGUED_UNTIL)


def weekly_contacts(events: pl.LazyFrame, as_of: dt.date) -> pl.LazyFrame:
    """[subscriber_id, _week_contacts]: impressions in the CAP_DAYS days up to as_of."""
    first = dt.datetime.combine(as_of - dt.timedelta(days=CAP_DAYS - 1), dt.time())
    return (
        _events_up_to(events, as_of)
        .filter((pl.col(EVENT) == "impression") & (pl.col(TS) >= first))
        .group_by(SUBSCRIBER_ID)
        .agg(pl.len().cast(pl.Int64).alias(WEEK_CONTACTS))
    )
