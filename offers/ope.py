"""Off-policy evaluation: the value of a candidate offer policy estimated from logged impressions.

Every logged impression carries the probability with which the logging policy chose the shown
offer (`propensity`). A candidate (target) policy gives its own probability of that offer for the
same subscriber and day; the ratio of the two reweights the logged outcomes:

- IPS (inverse propensity scoring): `mean(w * r)` with `w = target / propensity`; unbiased when
  the logging policy could show every offer the target shows.
- SNIPS (self-normalised IPS): `sum(w * r) / sum(w)`; a little biased, much less variance.
- DR (doubly robust): `mean(direct + w * (r - predicted))`, where a reward model predicts the
  outcome of every offer (`predicted` for the logged one, `direct` its expectation under the
  target); unbiased if either the propensities or the reward model are right.

Values are per impression: accepts, and, where the log has a `value` column, value of the accepts.
Intervals are bootstrap percentile intervals over logged rows (resampled with a seeded generator,
so the same inputs give the same numbers).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import polars as pl

from mia.errors import InputError
from mia.schema import DATE, EVENT, OFFER_ID, PROPENSITY, RANK, SUBSCRIBER_ID, TS, VALUE

logger = logging.getLogger(__name__)

ACCEPTED = "accepted"
# Reward-model columns, aligned with the logged rows (see `estimate_policy_value`).
PREDICTED_ACCEPT = "predicted_accept"
TARGET_PREDICTED_ACCEPT = "target_predicted_accept"

ESTIMATORS = ("ips", "snips", "dr")
METRICS = ("accepts_per_impression", "value_per_impression")
RESULT_COLUMNS = ("estimator", "metric", "value", "low", "high", "n", "effective_sample_size")

# Bootstrap weights are drawn for at most this many replicate x row cells at a time.
_BOOTSTRAP_CELLS = 4_000_000


class PolicyEvaluationError(InputError):
    """A logged table or target policy that off-policy evaluation cannot use (exit code 2)."""


def _refuse(table: str, column: str, rule: str, bad: np.ndarray, values: np.ndarray) -> None:
    if bad.any():
        examples = [float(v) for v in values[bad][:3]]
        raise PolicyEvaluationError(
            f"{table}.{column}: {int(bad.sum())} row(s) break rule {rule!r}, e.g. {examples}."
        )


def _column(frame: pl.DataFrame, table: str, name: str) -> np.ndarray:
    """A numeric column as float64, refused when missing or holding nulls or non-finite values."""
    if name not in frame.columns:
        raise PolicyEvaluationError(
            f"{table}: column {name!r} is missing (columns: {', '.join(frame.columns)})."
        )
    series = frame.get_column(name)
    if series.null_count():
        raise PolicyEvaluationError(
            f"{table}.{name}: {series.null_count()} row(s) break rule 'not_null'."
        )
    try:
        values = series.cast(pl.Float64).to_numpy()
    except pl.exceptions.PolarsError as error:
        raise PolicyEvaluationError(f"{table}.{name}: rule 'numeric' broken ({error}).") from None
    _refuse(table, name, "finite", ~np.isfinite(values), values)
    return values


def _probabilities(values: Sequence[float] | np.ndarray | pl.Series, n: int) -> np.ndarray:
    """Target probabilities of the logged offers, checked to lie in [0, 1], one per logged row."""
    series = values if isinstance(values, pl.Series) else pl.Series(np.asarray(values))
    if series.len() != n:
        raise PolicyEvaluationError(
            f"target.target_probability: {series.len()} value(s) for {n} logged row(s) "
            "(rule 'one_per_logged_row')."
        )
    target = _column(series.alias("target_probability").to_frame(), "target", "target_probability")
    _refuse("target", "target_probability", "in [0, 1]", (target < 0) | (target > 1), target)
    return target


def _bootstrap_weights(rng: np.random.Generator, n: int, replicates: int) -> np.ndarray:
    """Row multiplicities of `replicates` resamples of n rows with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float64)


def _estimates(counts: np.ndarray, terms: dict[str, np.ndarray], ratio: np.ndarray) -> dict:
    """Every estimator's value for each row of `counts` (replicate x row multiplicities)."""
    rows = counts.sum(axis=1)
    total_ratio = counts @ ratio
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "ips": (counts @ terms["ips"]) / rows,
            "snips": np.where(total_ratio > 0, (counts @ terms["ips"]) / total_ratio, np.nan),
            "dr": (counts @ terms["dr"]) / rows if "dr" in terms else None,
        }


def estimate_policy_value(
    logged: pl.DataFrame,
    target_probability: Sequence[float] | np.ndarray | pl.Series,
    reward_model: pl.DataFrame | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pl.DataFrame:
    """IPS, SNIPS and (with a reward model) DR value of a target policy, with bootstrap intervals.

    `logged`: one row per impression with `propensity` (the logging policy's probability of the
    shown offer, in (0, 1]), `accepted` (0/1 or boolean) and optionally `value` (value of one
    accept of the shown offer). `target_probability`: the target policy's probability of the
    shown offer, one per logged row. `reward_model`: rows aligned with `logged`, with
    `predicted_accept` (predicted P(accept) of the shown offer) and `target_predicted_accept`
    (the target's expected predicted accepts: sum over offers of target probability x
    prediction); with a value column, also `predicted_value` and `target_predicted_value`.
    Returns one row per estimator and metric: estimator, metric, value, low, high (the
    `level` percentile interval of `n_boot` resamples of the logged rows), n and the effective
    sample size of the importance weights, `sum(w)^2 / sum(w^2)`.
    """
    if not isinstance(logged, pl.DataFrame):
        logged = logged.collect()
    if n_boot < 1:
        raise PolicyEvaluationError(f"n_boot == {n_boot}, must be >= 1.")
    if not 0 < level < 1:
        raise PolicyEvaluationError(f"level == {level}, must be in (0, 1).")
    n = logged.height
    if n == 0:
        raise PolicyEvaluationError("logged: no rows (rule 'at_least_one_impression').")
    propensity = _column(logged, "logged", PROPENSITY)
    _refuse("logged", PROPENSITY, "in (0, 1]", (propensity <= 0) | (propensity > 1), propensity)
    accepted = _column(logged, "logged", ACCEPTED)
    _refuse("logged", ACCEPTED, "0 or 1", (accepted != 0) & (accepted != 1), accepted)
    target = _probabilities(target_probability, n)
    ratio = target / propensity

    rewards = {"accepts_per_impression": accepted}
    predictions = {"accepts_per_impression": (PREDICTED_ACCEPT, TARGET_PREDICTED_ACCEPT)}
    if VALUE in logged.columns:
        value = _column(logged, "logged", VALUE)
        _refuse("logged", VALUE, ">= 0", value < 0, value)
        rewards["value_per_impression"] = accepted * value
        predictions["value_per_impression"] = ("predicted_value", "target_predicted_value")

    terms: dict[str, dict[str, np.ndarray]] = {}
    for metric, reward in rewards.items():
        terms[metric] = {"ips": ratio * reward}
        if reward_model is not None:
            if reward_model.height != n:
                raise PolicyEvaluationError(
                    f"reward_model: {reward_model.height} row(s) for {n} logged row(s) "
                    "(rule 'one_per_logged_row')."
                )
            predicted, direct = (
                _column(reward_model, "reward_model", c) for c in predictions[metric]
            )
            terms[metric]["dr"] = direct + ratio * (reward - predicted)

    point = {m: _estimates(np.ones((1, n)), t, ratio) for m, t in terms.items()}
    replicates = {m: {e: [] for e in ESTIMATORS} for m in terms}
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    for start in range(0, n_boot, chunk):
        counts = _bootstrap_weights(rng, n, min(chunk, n_boot - start))
        for metric, metric_terms in terms.items():
            for estimator, values in _estimates(counts, metric_terms, ratio).items():
                if values is not None:
                    replicates[metric][estimator].append(values)

    effective = float(ratio.sum() ** 2 / np.square(ratio).sum()) if ratio.any() else 0.0
    tail = (1.0 - level) / 2.0
    rows = []
    for metric in terms:
        for estimator in ESTIMATORS:
            if point[metric][estimator] is None:
                continue
            draws = np.concatenate(replicates[metric][estimator])
            draws = draws[np.isfinite(draws)]
            low, high = (
                (float(np.quantile(draws, tail)), float(np.quantile(draws, 1.0 - tail)))
                if draws.size
                else (float("nan"), float("nan"))
            )
            rows.append(
                (estimator, metric, float(point[metric][estimator][0]), low, high, n, effective)
            )
    if not ratio.any():
        logger.warning("target policy never shows a logged offer: IPS is 0, SNIPS undefined")
    types = (pl.String, pl.String, pl.Float64, pl.Float64, pl.Float64, pl.Int64, pl.Float64)
    return pl.DataFrame(rows, schema=dict(zip(RESULT_COLUMNS, types, strict=True)), orient="row")


# ---- Mia's offer log: logged impressions and target policies as frames --------------------------

TARGET_PROBABILITY = "target_probability"


def impression_outcomes(offer_events: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """[date, subscriber_id, offer_id, propensity, accepted] of every impression.

    An impression is accepted when the subscriber accepted the same offer later that day;
    `propensity` is empty where the log has none.
    """
    events = offer_events.lazy().with_columns(pl.col(TS).dt.date().alias(DATE))
    if PROPENSITY not in events.collect_schema().names():
        events = events.with_columns(pl.lit(None, dtype=pl.Float64).alias(PROPENSITY))
    impressions = events.filter(pl.col(EVENT) == "impression").select(
        DATE, SUBSCRIBER_ID, OFFER_ID, TS, PROPENSITY
    )
    accepts = (
        events.filter(pl.col(EVENT) == "accept")
        .group_by(DATE, SUBSCRIBER_ID, OFFER_ID)
        .agg(pl.col(TS).max().alias("_last_accept"))
    )
    return (
        impressions.join(accepts, on=[DATE, SUBSCRIBER_ID, OFFER_ID], how="left")
        .with_columns(
            (pl.col("_last_accept") >= pl.col(TS)).fill_null(False).cast(pl.Int8).alias(ACCEPTED)
        )
        .sort(DATE, SUBSCRIBER_ID, TS, OFFER_ID)
        .select(DATE, SUBSCRIBER_ID, OFFER_ID, PROPENSITY, ACCEPTED)
        .collect()
    )


def logged_impressions(
    offer_events: pl.DataFrame | pl.LazyFrame, catalog: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Impressions that carry a logging propensity, with their outcome, ready for estimation.

    Returns [date, subscriber_id, offer_id, propensity, accepted] (+ `value` from `catalog`): an
    impression is accepted when the subscriber accepted the same offer later that day.
    Impressions without a propensity are left out (logged); none at all is refused.
    """
    events = offer_events.lazy() if isinstance(offer_events, pl.DataFrame) else offer_events
    names = events.collect_schema().names()
    missing = [c for c in (SUBSCRIBER_ID, OFFER_ID, TS, EVENT) if c not in names]
    if missing:
        raise PolicyEvaluationError(f"offer_events: columns {missing} missing (rule: contract).")
    if PROPENSITY not in names:
        raise PolicyEvaluationError(
            "offer_events.propensity: the column was never delivered, so no impression carries "
            "the probability with which it was chosen (rule 'logged_propensity'); off-policy "
            "evaluation needs it (data/README.md)."
        )
    logged = impression_outcomes(events)
    without = logged[PROPENSITY].null_count()
    if without == logged.height:
        raise PolicyEvaluationError(
            f"offer_events.propensity: none of {logged.height} impression(s) carries the "
            "probability with which it was chosen (rule 'logged_propensity'); off-policy "
            "evaluation needs it (data/README.md)."
        )
    if without:
        logger.warning("%d of %d impressions have no propensity: left out", without, logged.height)
        logged = logged.filter(pl.col(PROPENSITY).is_not_null())
    if catalog is not None:
        values = catalog.lazy().select(OFFER_ID, VALUE).unique(OFFER_ID, keep="last").collect()
        logged = logged.join(values, on=OFFER_ID, how="left")
    return logged


def offer_acceptance_rates(logged: pl.DataFrame, prior_impressions: float = 10.0) -> pl.DataFrame:
    """[offer_id, predicted_accept]: each offer's logged accept rate, shrunk to the overall rate.

    A context-free reward model for DR: `(accepts + prior x overall) / (impressions + prior)`.
    """
    overall = float(logged[ACCEPTED].mean() or 0.0)
    return (
        logged.group_by(OFFER_ID)
        .agg(pl.col(ACCEPTED).sum().alias("_accepts"), pl.len().alias("_shown"))
        .select(
            OFFER_ID,
            (
                (pl.col("_accepts") + prior_impressions * overall)
                / (pl.col("_shown") + prior_impressions)
            ).alias(PREDICTED_ACCEPT),
        )
        .sort(OFFER_ID)
    )


def evaluate_policy(
    logged: pl.DataFrame,
    target: pl.DataFrame,
    predictions: pl.DataFrame | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pl.DataFrame:
    """`estimate_policy_value` of a target policy given as rows of offers with probabilities.

    `logged`: from `logged_impressions`. `target`: [subscriber_id, offer_id, target_probability]
    (+ `date` for a policy that changes by day, + `value`), the target's distribution over offers
    for each subscriber (and day). Logged rows for which the target names no offer are left out.
    `predictions`: [offer_id, predicted_accept] (+ `subscriber_id`) for DR; default
    `offer_acceptance_rates(logged)`. A target offer without a prediction gets the overall rate.
    """
    keys = [c for c in (DATE, SUBSCRIBER_ID) if c in target.columns]
    missing = [c for c in (SUBSCRIBER_ID, OFFER_ID, TARGET_PROBABILITY) if c not in target.columns]
    if missing:
        raise PolicyEvaluationError(f"target: columns {missing} missing (rule: target policy).")
    repeated = target.select(*keys, OFFER_ID).is_duplicated()
    if repeated.any():
        raise PolicyEvaluationError(
            f"target: {int(repeated.sum())} row(s) repeat a {'/'.join([*keys, OFFER_ID])} "
            "(rule 'unique')."
        )
    probability = target[TARGET_PROBABILITY].cast(pl.Float64)
    total = target.group_by(keys).agg(pl.col(TARGET_PROBABILITY).sum())[TARGET_PROBABILITY]
    if probability.is_null().any() or (probability < 0).any() or (total > 1 + 1e-9).any():
        raise PolicyEvaluationError(
            "target.target_probability: every probability must be in [0, 1] and sum to at most 1 "
            "per subscriber (and day) (rule 'distribution')."
        )
    if predictions is None:
        predictions = offer_acceptance_rates(logged)
    on = [c for c in (SUBSCRIBER_ID, OFFER_ID) if c in predictions.columns]
    overall = float(logged[ACCEPTED].mean()) if logged.height else 0.0
    has_value = VALUE in logged.columns
    if has_value and VALUE not in target.columns:
        values = logged.select(OFFER_ID, VALUE).unique(OFFER_ID, keep="first")
        target = target.join(values, on=OFFER_ID, how="left")
    if has_value and target[VALUE].null_count():
        unknown = target.filter(pl.col(VALUE).is_null())[OFFER_ID].unique().sort().head(3)
        raise PolicyEvaluationError(
            f"target.value: no value known for offer(s) {unknown.to_list()} (rule 'not_null')."
        )
    scored = target.join(predictions.select(*on, PREDICTED_ACCEPT), on=on, how="left").with_columns(
        pl.col(PREDICTED_ACCEPT).fill_null(overall)
    )
    direct = scored.group_by(keys).agg(
        (pl.col(TARGET_PROBABILITY) * pl.col(PREDICTED_ACCEPT))
        .sum()
        .alias(TARGET_PREDICTED_ACCEPT),
        *(
            [
                (pl.col(TARGET_PROBABILITY) * pl.col(PREDICTED_ACCEPT) * pl.col(VALUE))
                .sum()
                .alias("target_predicted_value")
            ]
            if has_value
            else []
        ),
    )
    rows = (
        logged.join(direct, on=keys, how="inner", maintain_order="left")
        .join(
            target.select(*keys, OFFER_ID, TARGET_PROBABILITY),
            on=[*keys, OFFER_ID],
            how="left",
            maintain_order="left",
        )
        .join(predictions.select(*on, PREDICTED_ACCEPT), on=on, how="left", maintain_order="left")
        .with_columns(
            pl.col(TARGET_PROBABILITY).fill_null(0.0), pl.col(PREDICTED_ACCEPT).fill_null(overall)
        )
    )
    if rows.is_empty():
        raise PolicyEvaluationError(
            f"logged: none of {logged.height} logged impression(s) is of a subscriber (and day) "
            "the target policy gives offers to (rule 'at_least_one_impression')."
        )
    if has_value:
        rows = rows.with_columns(
            (pl.col(PREDICTED_ACCEPT) * pl.col(VALUE)).alias("predicted_value")
        )
    reward_model = rows.select(
        PREDICTED_ACCEPT,
        TARGET_PREDICTED_ACCEPT,
        *(["predicted_value", "target_predicted_value"] if has_value else []),
    )
    return estimate_policy_value(
        rows, rows[TARGET_PROBABILITY], reward_model, n_boot=n_boot, seed=seed, level=level
    )


# ---- target policies -----------------------------------------------------------------------------


def champion_policy(offers: pl.DataFrame, top: int = 1) -> pl.DataFrame:
    """[subscriber_id, offer_id, target_probability]: published offers ranked 1..`top`, uniform.

    `top = 1` is the policy that shows each subscriber the night's first offer.
    """
    chosen = offers.filter(pl.col(RANK) <= top)
    return chosen.select(
        SUBSCRIBER_ID,
        OFFER_ID,
        (1.0 / pl.len().over(SUBSCRIBER_ID)).alias(TARGET_PROBABILITY),
    ).sort(SUBSCRIBER_ID, OFFER_ID)


def uniform_policy(candidates: pl.DataFrame) -> pl.DataFrame:
    """Each (day and) subscriber's candidate offers, with equal probability."""
    keys = [c for c in (DATE, SUBSCRIBER_ID) if c in candidates.columns]
    return candidates.select(
        *keys, OFFER_ID, (1.0 / pl.len().over(keys)).alias(TARGET_PROBABILITY)
    ).sort(*keys, OFFER_ID)


def popularity_policy(candidates: pl.DataFrame, rates: pl.DataFrame) -> pl.DataFrame:
    """Each (day and) subscriber's candidate offer of highest acceptance rate (`rates`:
    [offer_id, predicted_accept]; an offer without a rate counts as 0); ties share equally."""
    keys = [c for c in (DATE, SUBSCRIBER_ID) if c in candidates.columns]
    rated = candidates.join(rates.select(OFFER_ID, PREDICTED_ACCEPT), on=OFFER_ID, how="left")
    best = rated.with_columns(pl.col(PREDICTED_ACCEPT).fill_null(0.0)).filter(
        pl.col(PREDICTED_ACCEPT) == pl.col(PREDICTED_ACCEPT).max().over(keys)
    )
    return uniform_policy(best.select(*keys, OFFER_ID))
