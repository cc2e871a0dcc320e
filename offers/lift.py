"""Lift of the offers programme: acceptance of the treatment group vs the persistent control group.

Method (intention to treat):

- Treatment: subscribers in group "treatment" and covered; control: group "control" (never
  contacted, whatever their coverage: both masks are independent hashes, so the two groups are
  comparable). Subscribers count when they were activated by `end`.
- Per group and key (an offer, or a category), the rate is accept events in [start, end] (whole
  days, by event timestamp) per subscriber of the group; control accepts are organic.
- lift = treatment_rate - control_rate (absolute, accepts per subscriber), with a 95% confidence
  interval from the normal approximation of the difference of two means:
  lift +- z * sqrt(s_t^2 / n_t + s_c^2 / n_c), s^2 the sample variance (n - 1) of per-subscriber
  accept counts (zeros included). For 0/1 outcomes s^2 = n p (1 - p) / (n - 1). A group with
  fewer than 2 subscribers gives no interval (null).
"""

from __future__ import annotations

import datetime as dt
import logging
from statistics import NormalDist

import polars as pl

from mia.lake import end_of_day
from mia.schema import CATEGORY, EVENT, GROUP, OFFER_ID, SUBSCRIBER_ID, TS
from offers.eligibility import Frame, OffersInputError, lazy, require_columns
from offers.groups import CONTROL, TREATMENT, check_groups, targeted

logger = logging.getLogger(__name__)

LIFT_COLUMNS = (
    "level",
    "key",
    "treatment_n",
    "treatment_accepts",
    "treatment_rate",
    "control_n",
    "control_accepts",
    "control_rate",
    "lift",
    "lift_low",
    "lift_high",
)
LEVELS = ("offer", "category")
CONFIDENCE = 0.95
Z_VALUE = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)

_ARM = "_arm"


# What lift reads of the subscribers table.
POPULATION_COLUMNS = [SUBSCRIBER_ID, "activation_date"]


def _population(subscribers: Frame, groups: Frame, end: dt.date) -> pl.DataFrame:
    """subscriber_id and arm ("treatment"|"control") of every subscriber counted in the test."""
    require_columns(subscribers, "subscribers", POPULATION_COLUMNS)
    return (
        lazy(subscribers)
        .filter(pl.col("activation_date") <= end)
        .select(SUBSCRIBER_ID)
        .unique()
        .join(check_groups(groups).lazy(), on=SUBSCRIBER_ID, how="inner")
        .select(
            SUBSCRIBER_ID,
            pl.when(pl.col(GROUP) == CONTROL)
            .then(pl.lit(CONTROL))
            .when(targeted())
            .then(pl.lit(TREATMENT))
            .alias(_ARM),
        )
        .drop_nulls(_ARM)
        .collect()
    )


def _arm_columns(arm: str, n: int) -> list[pl.Expr]:
    """n, rate and variance of the rate of one arm from its accept totals (zeros included)."""
    accepts = pl.col(f"{arm}_accepts")
    squares = pl.col(f"_{arm}_squares")
    rate = pl.lit(None, dtype=pl.Float64) if n == 0 else accepts / n
    if n < 2:
        variance = pl.lit(None, dtype=pl.Float64)
    else:
        variance = ((squares - n * rate * rate) / (n - 1)).clip(lower_bound=0.0)
    return [
        pl.lit(n, dtype=pl.Int64).alias(f"{arm}_n"),
        rate.alias(f"{arm}_rate"),
        (variance / max(n, 1)).alias(f"_{arm}_rate_variance"),
    ]


def _accept_totals(accepts: pl.DataFrame, column: str) -> pl.DataFrame:
    """Per key and arm: accept events and the sum of squared per-subscriber accept counts."""
    return (
        accepts.group_by(column, _ARM, SUBSCRIBER_ID)
        .agg(pl.len().cast(pl.Int64).alias("_count"))
        .group_by(column, _ARM)
        .agg(
            pl.col("_count").sum().alias("_accepts"),
            (pl.col("_count") ** 2).sum().alias("_squares"),
        )
        .rename({column: "key"})
    )


def _level_frame(
    level: str, keys: pl.DataFrame, totals: pl.DataFrame, sizes: dict[str, int]
) -> pl.DataFrame:
    """One level's rows: counts, rates, lift and its confidence interval per key."""
    frame = keys
    for arm in (TREATMENT, CONTROL):
        part = totals.filter(pl.col(_ARM) == arm).select(
            "key",
            pl.col("_accepts").alias(f"{arm}_accepts"),
            pl.col("_squares").alias(f"_{arm}_squares"),
        )
        frame = frame.join(part, on="key", how="left").with_columns(
            pl.col(f"{arm}_accepts", f"_{arm}_squares").fill_null(0).cast(pl.Int64)
        )
        frame = frame.with_columns(_arm_columns(arm, sizes.get(arm, 0)))
    lift = pl.col("treatment_rate") - pl.col("control_rate")
    margin = (
        Z_VALUE
        * (pl.col(f"_{TREATMENT}_rate_variance") + pl.col(f"_{CONTROL}_rate_variance")).sqrt()
    )
    return frame.with_columns(
        pl.lit(level).alias("level"),
        lift.alias("lift"),
        (lift - margin).alias("lift_low"),
        (lift + margin).alias("lift_high"),
    ).select(LIFT_COLUMNS)


def measure_lift(
    offer_events: Frame,
    catalog: Frame,
    subscribers: Frame,
    groups: Frame,
    start: dt.date,
    end: dt.date,
) -> pl.DataFrame:
    """Accept rate of treatment vs control per offer and per category over [start, end]."""
    if start > end:
        raise OffersInputError(f"start == {start}, end == {end}; rule: start <= end.")
    require_columns(offer_events, "offer_events", (SUBSCRIBER_ID, OFFER_ID, TS, EVENT))
    require_columns(catalog, "catalog", (OFFER_ID, CATEGORY))
    population = _population(subscribers, groups, end)
    sizes = {arm: int(count) for arm, count in population.group_by(_ARM).agg(pl.len()).iter_rows()}
    offers = lazy(catalog).select(OFFER_ID, CATEGORY).unique().collect()
    accepts = (
        lazy(offer_events)
        .filter(
            (pl.col(EVENT) == "accept")
            & (pl.col(TS) >= dt.datetime.combine(start, dt.time()))
            & (pl.col(TS) < end_of_day(end))
        )
        .join(population.lazy(), on=SUBSCRIBER_ID, how="inner")
        .join(offers.lazy(), on=OFFER_ID, how="inner")
        .select(SUBSCRIBER_ID, _ARM, OFFER_ID, CATEGORY)
        .collect(engine="streaming")
    )
    keys = {
        OFFER_ID: offers.select(pl.col(OFFER_ID).alias("key")),
        CATEGORY: offers.select(pl.col(CATEGORY).alias("key")).unique(),
    }
    frames = [
        _level_frame(level, keys[column], _accept_totals(accepts, column), sizes)
        for level, column in (("offer", OFFER_ID), ("category", CATEGORY))
    ]
    logger.info(
        "lift over %s..%s: %d treatment, %d control subscribers",
        start,
        end,
        sizes.get(TREATMENT, 0),
        sizes.get(CONTROL, 0),
    )
    return pl.concat(frames).sort("level", "key")


def organic_baseline(
    offer_events: Frame,
    catalog: Frame,
    subscribers: Frame,
    groups: Frame,
    start: dt.date,
    end: dt.date,
) -> pl.DataFrame:
    """Per offer: control_n, control_accepts, control_rate (organic accepts) in [start, end]."""
    return (
        measure_lift(offer_events, catalog, subscribers, groups, start, end)
        .filter(pl.col("level") == "offer")
        .select(
            pl.col("key").alias(OFFER_ID),
            "control_n",
            "control_accepts",
            "control_rate",
        )
    )
