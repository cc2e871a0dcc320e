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

import numpy as np
import polars as pl

from mia.lake import end_of_day
from mia.schema import CATEGORY, EVENT, GROUP, OFFER_ID, SUBSCRIBER_ID, TS, VALUE
from mia.settings import Settings
from offers.eligibility import Frame, OffersInputError, lazy, require_columns
from offers.groups import ARMS, CONTROL, TREATMENT, check_groups, targeted

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
    """subscriber_id and arm (control, or the group of a covered subscriber: treatment or an
    impact arm) of every subscriber counted in the test."""
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
            .then(pl.col(GROUP))
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


def _accept_rows(
    offer_events: Frame,
    catalog: pl.DataFrame,
    population: pl.DataFrame,
    start: dt.date,
    end: dt.date,
) -> pl.DataFrame:
    """Accept events in [start, end] of the counted subscribers, with their arm and the offer's
    catalog columns."""
    if start > end:
        raise OffersInputError(f"start == {start}, end == {end}; rule: start <= end.")
    require_columns(offer_events, "offer_events", (SUBSCRIBER_ID, OFFER_ID, TS, EVENT))
    return (
        lazy(offer_events)
        .filter(
            (pl.col(EVENT) == "accept")
            & (pl.col(TS) >= dt.datetime.combine(start, dt.time()))
            & (pl.col(TS) < end_of_day(end))
        )
        .join(population.lazy(), on=SUBSCRIBER_ID, how="inner")
        .join(catalog.lazy(), on=OFFER_ID, how="inner")
        .select(SUBSCRIBER_ID, _ARM, *catalog.columns)
        .collect(engine="streaming")
    )


def _arm_sizes(population: pl.DataFrame) -> dict[str, int]:
    return {arm: int(count) for arm, count in population.group_by(_ARM).agg(pl.len()).iter_rows()}


def measure_lift(
    offer_events: Frame,
    catalog: Frame,
    subscribers: Frame,
    groups: Frame,
    start: dt.date,
    end: dt.date,
) -> pl.DataFrame:
    """Accept rate of treatment vs control per offer and per category over [start, end]."""
    require_columns(catalog, "catalog", (OFFER_ID, CATEGORY))
    population = _population(subscribers, groups, end)
    sizes = _arm_sizes(population)
    offers = lazy(catalog).select(OFFER_ID, CATEGORY).unique().collect()
    accepts = _accept_rows(offer_events, offers, population, start, end)
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


# Impact arms: every arm against the control group and every plain arm against the champion.
_COUNT, _NUMBER, _TEXT = pl.Int64, pl.Float64, pl.String
COMPARISON_SCHEMA = {
    "comparison": _TEXT,  # "<arm> vs <baseline>"
    "arm": _TEXT,
    "baseline": _TEXT,
    "level": _TEXT,  # offer, category or overall
    "key": _TEXT,
    "metric": _TEXT,  # accepts or value (per subscriber)
    "arm_n": _COUNT,
    "arm_accepts": _COUNT,
    "arm_mean": _NUMBER,
    "baseline_n": _COUNT,
    "baseline_accepts": _COUNT,
    "baseline_mean": _NUMBER,
    "lift": _NUMBER,
    "lift_low": _NUMBER,
    "lift_high": _NUMBER,
    "relative_lift": _NUMBER,
    "relative_low": _NUMBER,
    "relative_high": _NUMBER,
    "few_events": pl.Boolean,
    "p_value": _NUMBER,
    "q_value": _NUMBER,
    "significant": pl.Boolean,
}
COMPARISON_COLUMNS = tuple(COMPARISON_SCHEMA)
METRICS = ("accepts", "value")  # per subscriber: accept events, and the catalog value of them
OVERALL = "all"  # the key of the overall level


def comparisons(groups_present: set[str]) -> list[tuple[str, str]]:
    """(arm, baseline) pairs measured: each contacted group vs control, each plain arm vs the
    champion (treatment)."""
    contacted = [arm for arm in (TREATMENT, *ARMS) if arm in groups_present]
    pairs = [(arm, CONTROL) for arm in contacted if CONTROL in groups_present]
    if TREATMENT in groups_present:
        pairs += [(arm, TREATMENT) for arm in ARMS if arm in groups_present]
    return pairs


def _moments(accepts: pl.DataFrame, key: pl.Expr) -> pl.DataFrame:
    """Per key and arm: accept events, and sum and sum of squares of each metric over the
    subscribers with an accept (the others add zeros)."""
    per_subscriber = accepts.group_by(key.alias("key"), _ARM, SUBSCRIBER_ID).agg(
        pl.len().cast(pl.Float64).alias("accepts"),
        pl.col(VALUE).cast(pl.Float64).sum().alias("value"),
    )
    return per_subscriber.group_by("key", _ARM).agg(
        pl.col("accepts").sum().cast(pl.Int64).alias("_events"),
        *[pl.col(metric).sum().alias(f"_{metric}_sum") for metric in METRICS],
        *[(pl.col(metric) ** 2).sum().alias(f"_{metric}_squares") for metric in METRICS],
    )


def _side(moments: pl.DataFrame, arm: str, n: int, metric: str, side: str) -> pl.DataFrame:
    """One side of a comparison: n, accept events, mean and variance of the mean per key."""
    part = moments.filter(pl.col(_ARM) == arm)
    total, squares = pl.col(f"_{metric}_sum"), pl.col(f"_{metric}_squares")
    mean = total / n if n else pl.lit(None, dtype=pl.Float64)
    variance = (
        ((squares - n * mean * mean) / (n - 1)).clip(lower_bound=0.0) / n
        if n >= 2
        else pl.lit(None, dtype=pl.Float64)
    )
    return part.select(
        "key",
        pl.col("_events").alias(f"{side}_accepts"),
        mean.alias(f"{side}_mean"),
        variance.alias(f"_{side}_variance"),
    )


def compare_outcomes(
    arm: tuple[int, float, float, float], baseline: tuple[int, float, float, float]
) -> dict[str, float | None]:
    """Absolute and relative lift of one arm over a baseline from (n, accept events, mean,
    variance of the mean) of each: Welch normal interval for the difference, delta-method
    interval on the log ratio for the relative lift, and the two-sided p-value."""
    frame = pl.DataFrame(
        [[*arm, *baseline]],
        schema=[
            ("arm_n", pl.Int64),
            ("arm_accepts", pl.Int64),
            ("arm_mean", pl.Float64),
            ("_arm_variance", pl.Float64),
            ("baseline_n", pl.Int64),
            ("baseline_accepts", pl.Int64),
            ("baseline_mean", pl.Float64),
            ("_baseline_variance", pl.Float64),
        ],
        orient="row",
    )
    return frame.with_columns(_lift_columns()).row(0, named=True)


def _lift_columns() -> list[pl.Expr]:
    arm_mean, base_mean = pl.col("arm_mean"), pl.col("baseline_mean")
    arm_var, base_var = pl.col("_arm_variance"), pl.col("_baseline_variance")
    lift = arm_mean - base_mean
    se = (arm_var + base_var).sqrt()
    both = (arm_mean > 0) & (base_mean > 0)
    log_ratio = pl.when(both).then((arm_mean / base_mean).log())
    log_se = pl.when(both).then((arm_var / arm_mean**2 + base_var / base_mean**2).sqrt())
    z = pl.when(se > 0).then(lift.abs() / se)
    return [
        lift.alias("lift"),
        (lift - Z_VALUE * se).alias("lift_low"),
        (lift + Z_VALUE * se).alias("lift_high"),
        (log_ratio.exp() - 1).alias("relative_lift"),
        ((log_ratio - Z_VALUE * log_se).exp() - 1).alias("relative_low"),
        ((log_ratio + Z_VALUE * log_se).exp() - 1).alias("relative_high"),
        z.map_batches(_two_sided_p, return_dtype=pl.Float64).alias("p_value"),
    ]


def _two_sided_p(z: pl.Series) -> pl.Series:
    from scipy.stats import norm

    values = z.to_numpy(allow_copy=True).astype(float)
    return pl.Series(2 * norm.sf(values), dtype=pl.Float64).fill_nan(None)


def benjamini_hochberg(p_values: pl.Series) -> pl.Series:
    """Benjamini-Hochberg q-values of one family of tests (nulls stay null)."""
    from scipy.stats import false_discovery_control

    mask = p_values.is_not_null().to_numpy()
    q = np.full(len(p_values), np.nan)
    if mask.any():
        q[mask] = false_discovery_control(p_values.to_numpy()[mask], method="bh")
    return pl.Series(p_values.name, q, dtype=pl.Float64).fill_nan(None)


def measure_impact(
    offer_events: Frame,
    catalog: Frame,
    subscribers: Frame,
    groups: Frame,
    start: dt.date,
    end: dt.date,
    settings: Settings,
) -> pl.DataFrame:
    """Lift of each impact arm and of the champion over control, and of each arm over the
    champion, in accepts and value per subscriber, per offer, category and overall, with
    intervals and Benjamini-Hochberg q-values per family (comparison x level x metric)."""
    require_columns(catalog, "catalog", (OFFER_ID, CATEGORY, VALUE))
    population = _population(subscribers, groups, end)
    sizes = _arm_sizes(population)
    offers = lazy(catalog).select(OFFER_ID, CATEGORY, VALUE).unique(OFFER_ID).collect()
    accepts = _accept_rows(offer_events, offers, population, start, end)
    keys = {
        "offer": (offers.select(pl.col(OFFER_ID).alias("key")), pl.col(OFFER_ID)),
        "category": (offers.select(pl.col(CATEGORY).alias("key")).unique(), pl.col(CATEGORY)),
        "overall": (pl.DataFrame({"key": [OVERALL]}), pl.lit(OVERALL)),
    }
    frames = []
    for level, (level_keys, key) in keys.items():
        moments = _moments(accepts, key)
        for arm, baseline in comparisons(set(sizes)):
            for metric in METRICS:
                frame = level_keys
                for group, side in ((arm, "arm"), (baseline, "baseline")):
                    frame = frame.join(
                        _side(moments, group, sizes[group], metric, side), on="key", how="left"
                    ).with_columns(
                        pl.lit(sizes[group], dtype=pl.Int64).alias(f"{side}_n"),
                        pl.col(f"{side}_accepts").fill_null(0),
                        pl.col(f"{side}_mean").fill_null(0.0),
                        pl.col(f"_{side}_variance").fill_null(0.0 if sizes[group] >= 2 else None),
                    )
                few = (
                    pl.min_horizontal("arm_accepts", "baseline_accepts") < settings.lift_min_accepts
                )
                frame = frame.with_columns(_lift_columns()).with_columns(
                    pl.lit(f"{arm} vs {baseline}").alias("comparison"),
                    pl.lit(arm).alias("arm"),
                    pl.lit(baseline).alias("baseline"),
                    pl.lit(level).alias("level"),
                    pl.lit(metric).alias("metric"),
                    few.alias("few_events"),
                )
                tested = frame.select(pl.when(~pl.col("few_events")).then(pl.col("p_value")))
                frame = frame.with_columns(
                    benjamini_hochberg(tested.to_series()).alias("q_value")
                ).with_columns(
                    (pl.col("q_value") <= settings.lift_fdr).fill_null(False).alias("significant")
                )
                frames.append(frame.select(COMPARISON_COLUMNS))
    if not frames:
        return pl.DataFrame(schema=COMPARISON_SCHEMA)
    logger.info(
        "impact over %s..%s: %s",
        start,
        end,
        ", ".join(f"{group} {count}" for group, count in sorted(sizes.items())),
    )
    return pl.concat(frames).sort("comparison", "metric", "level", "key")
