"""Uplift of contacting a subscriber with an offer: a T-learner on treatment vs control outcomes,
and the metrics that judge an uplift ranking (Qini coefficient, uplift@k).

What is estimated (per subscriber x offer, features of the snapshot of day T):

    uplift = P(accept o in (T, T + H] | shown o) - P(accept o in (T, T + H] | never contacted)

- Treated arm: targeted subscribers (covered, not control) shown offer o in (T, T + H]; the
  outcome is an accept of o at or after that impression (the propensity label, per contact).
- Control arm: persistent control subscribers (never contacted) x every offer shown to anyone in
  the window; the outcome is an (organic) accept of o in the window.
- One LightGBM model per arm, pooled over offers (offer and category are categorical features), so
  a small offer borrows strength from its category and from the rest of the catalog.

Both arms are probabilities of one accept of one offer in the same window, so their difference is
in the units of P(accept | shown) and can be multiplied by an offer's value. For audiences the
night's P(accept | shown) stands in for the treated arm (`AudienceUplift.predict`). Where the
control arm of an offer's category has too few accepts (`uplift_min_control_accepts`) or the
control group too few subscribers (`uplift_min_control`), the offer's audience falls back to
expected value, with the reason.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import polars as pl

from features.labels import label_window, offer_labels
from mia.hashing import pair_hash, text_hash, unit_interval
from mia.schema import (
    CATEGORY,
    EVENT,
    LABEL,
    OFFER_ID,
    P_ACCEPT,
    SNAPSHOT_DATE,
    SUBSCRIBER_ID,
    TS,
)
from mia.settings import Settings
from offers.eligibility import Frame, OffersInputError, lazy, require_columns
from offers.groups import CONTROL, check_groups, targeted

logger = logging.getLogger(__name__)

UPLIFT = "uplift"
TREATED = "treated"
OUTCOME = "outcome"
RANKING = "ranking"
RANKING_REASON = "ranking_reason"
BY_UPLIFT = "uplift"
BY_EXPECTED_VALUE = "expected_value"
RANKING_COLUMNS = (OFFER_ID, RANKING, RANKING_REASON)
QINI = "qini"
# Subscribers held out of the fit to measure the model's Qini on observed outcomes.
HOLDOUT_SHARE = 0.2
HOLDOUT_SALT = "mia-uplift-holdout"

_OFFER_CODE = "_offer_code"
_CATEGORY_CODE = "_category_code"
WEIGHT = "weight"
_ID_COLUMNS = (SUBSCRIBER_ID, SNAPSHOT_DATE, OFFER_ID, CATEGORY, TREATED, OUTCOME, WEIGHT)
# Control rows are every control subscriber x offer, nearly all without an accept: their
# non-accepts are sampled down to this many per treated row (kept rows weigh 1 / share), so the
# training rows grow with the impressions, not with control subscribers x offers.
CONTROL_NEGATIVES_PER_TREATED = 1.0
_SAMPLE_SALT = "mia-uplift-control-sample"
# Treated rows (impressions) kept for training, over all snapshot days together: bounds the
# memory of the fit (each row holds every snapshot feature), whatever the size of the base.
MAX_TREATED_ROWS = 200_000
PREDICT_ROWS = 100_000


# ---- metrics ---------------------------------------------------------------------------------


def _as_array(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise OffersInputError(f"{name}: must be one-dimensional, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise OffersInputError(
            f"{name}: rule: finite numbers; {int((~np.isfinite(array)).sum())} are not."
        )
    return array


def _checked(
    score: Any, outcome: Any, treatment: Any | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    score_array = _as_array(score, "score")
    outcome_array = _as_array(outcome, "outcome")
    treatment_array = None if treatment is None else _as_array(treatment, "treatment")
    lengths = {len(score_array), len(outcome_array)}
    if treatment_array is not None:
        lengths.add(len(treatment_array))
        if not np.isin(treatment_array, (0.0, 1.0)).all():
            raise OffersInputError("treatment: rule: 0 or 1 (or booleans).")
    if len(lengths) != 1:
        raise OffersInputError(f"score, outcome, treatment: rule: the same length; got {lengths}.")
    return score_array, outcome_array, treatment_array


def _gain_points(
    score: np.ndarray, outcome: np.ndarray, treatment: np.ndarray | None, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(share targeted, cumulative gain) at the end of every block of tied scores, from (0, 0).

    Without treatment the gain is the sum of the true uplift of the rows targeted; with it, the
    Qini gain Y_t(k) - Y_c(k) x N_t(k) / N_c(k) (Y: accepts, N: rows of each arm in the top k).
    Tied scores form one block: the curve is a straight line across it, whatever the row order.
    A row counts `weight` times (sampled rows stand for the rows they were drawn from).
    """
    order = np.argsort(-score, kind="stable")
    sorted_score = score[order]
    ends = np.r_[np.flatnonzero(np.diff(sorted_score) != 0), len(score) - 1]
    weights = weight[order]
    if treatment is None:
        gain = np.cumsum(outcome[order] * weights)[ends]
    else:
        treated = treatment[order] * weights
        control = (1.0 - treatment[order]) * weights
        y_t = np.cumsum(outcome[order] * treated)[ends]
        y_c = np.cumsum(outcome[order] * control)[ends]
        n_t = np.cumsum(treated)[ends]
        n_c = np.cumsum(control)[ends]
        gain = y_t - np.divide(y_c * n_t, n_c, out=np.zeros_like(y_c), where=n_c > 0)
    share = np.cumsum(weights)[ends] / weights.sum()
    return np.r_[0.0, share], np.r_[0.0, gain]


def _area_above_random(
    score: np.ndarray, outcome: np.ndarray, treatment: np.ndarray | None, weight: np.ndarray
) -> float:
    share, gain = _gain_points(score, outcome, treatment, weight)
    area = float(np.sum(np.diff(share) * (gain[1:] + gain[:-1]) / 2.0))
    return area - gain[-1] / 2.0


def qini_coefficient(
    score: Any, outcome: Any, treatment: Any | None = None, sample_weight: Any | None = None
) -> float:
    """Area between the ranking's gain curve and the random line, over that of a perfect ranking.

    Without `treatment`, `outcome` is each row's true uplift (e.g. the simulator's oracle): the
    perfect ranking sorts by it, so a perfect ranking gives 1, a random one about 0 and the
    reversed one -1. With `treatment` (0/1) and observed 0/1 outcomes, the Qini curve of the
    treated and control rows, and the perfect ranking puts treated accepts first and control
    accepts last. `sample_weight`: how many rows each row stands for (default 1). Returns 0.0
    when the perfect ranking is no better than random (no uplift).
    """
    score_array, outcome_array, treatment_array = _checked(score, outcome, treatment)
    if len(score_array) == 0:
        return 0.0
    weight = (
        np.ones(len(score_array)) if sample_weight is None else _as_array(sample_weight, "weight")
    )
    if len(weight) != len(score_array) or (weight <= 0).any():
        raise OffersInputError("sample_weight: rule: one positive weight per row.")
    if treatment_array is None:
        perfect = outcome_array
    else:
        perfect = outcome_array * (2.0 * treatment_array - 1.0)
    best = _area_above_random(perfect, outcome_array, treatment_array, weight)
    if best <= 0.0:
        return 0.0
    return _area_above_random(score_array, outcome_array, treatment_array, weight) / best


def uplift_at_k(
    score: Any, outcome: Any, treatment: Any | None = None, share: float = 0.1
) -> float:
    """Uplift of the top `share` of rows by score (ties: the earlier row first).

    Without `treatment`: the mean true uplift of those rows; with it: their treated accept rate
    minus their control accept rate (nan when one arm has no row among them).
    """
    if not 0.0 < share <= 1.0:
        raise OffersInputError(f"share == {share!r}, must be in (0, 1].")
    score_array, outcome_array, treatment_array = _checked(score, outcome, treatment)
    if len(score_array) == 0:
        return math.nan
    top = np.argsort(-score_array, kind="stable")[: max(1, math.ceil(share * len(score_array)))]
    if treatment_array is None:
        return float(outcome_array[top].mean())
    treated = treatment_array[top] == 1.0
    if treated.all() or not treated.any():
        return math.nan
    return float(outcome_array[top][treated].mean() - outcome_array[top][~treated].mean())


def uplift_metrics(
    score: Any, outcome: Any, treatment: Any | None = None, prefix: str = ""
) -> dict[str, float]:
    """qini, uplift_at_10pct and uplift_at_30pct under stable keys (for mlflow.log_metrics)."""
    return {
        f"{prefix}qini": qini_coefficient(score, outcome, treatment),
        f"{prefix}uplift_at_10pct": uplift_at_k(score, outcome, treatment, 0.1),
        f"{prefix}uplift_at_30pct": uplift_at_k(score, outcome, treatment, 0.3),
    }


# ---- the learner -----------------------------------------------------------------------------


class TLearner:
    """Two LightGBM classifiers, one per arm; uplift = treated prediction - control prediction.

    Deterministic: `random_state` seeds LightGBM, `num_threads` is explicit, and training is
    row-wise and deterministic. An arm whose outcomes are all equal predicts that constant.
    """

    def __init__(
        self,
        n_estimators: int = 150,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 50,
        categorical_features: Sequence[int] = (),
        num_threads: int = 1,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.categorical_features = categorical_features
        self.num_threads = num_threads
        self.random_state = random_state

    def _fit_arm(self, features: np.ndarray, outcome: np.ndarray, weight: np.ndarray) -> Any:
        import lightgbm as lgb

        if len(outcome) == 0:
            raise OffersInputError("uplift: rule: both arms need rows; one arm has none.")
        if outcome.min() == outcome.max():
            return float(outcome[0])
        params = {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "num_threads": self.num_threads,
            "seed": self.random_state,
            "deterministic": True,
            "force_row_wise": True,
            "verbose": -1,
        }
        data = lgb.Dataset(
            features,
            label=outcome,
            weight=weight,
            categorical_feature=list(self.categorical_features) or "auto",
            free_raw_data=True,
        )
        return lgb.train(params, data, num_boost_round=self.n_estimators)

    def fit(
        self, features: Any, treatment: Any, outcome: Any, sample_weight: Any | None = None
    ) -> TLearner:
        """Fit one model on the treated rows and one on the control rows; returns self."""
        features = np.asarray(features, dtype=np.float32)
        treated = np.asarray(treatment).astype(bool)
        outcome = np.asarray(outcome, dtype=np.float64)
        weight = (
            np.ones(len(outcome))
            if sample_weight is None
            else np.asarray(sample_weight, dtype=np.float64)
        )
        if features.ndim != 2 or len(features) != len(treated) or len(treated) != len(outcome):
            raise OffersInputError(
                f"uplift: features {features.shape}, treatment {treated.shape}, outcome "
                f"{outcome.shape}; rule: one row each."
            )
        self.treated_model_ = self._fit_arm(features[treated], outcome[treated], weight[treated])
        self.control_model_ = self._fit_arm(features[~treated], outcome[~treated], weight[~treated])
        return self

    @staticmethod
    def _predict_arm(model: Any, features: np.ndarray) -> np.ndarray:
        if isinstance(model, float):
            return np.full(len(features), model)
        return model.predict(features, num_threads=1)

    def predict_arms(self, features: Any) -> tuple[np.ndarray, np.ndarray]:
        """Predicted P(outcome | treated) and P(outcome | control) per row."""
        features = np.asarray(features, dtype=np.float32)
        return (
            self._predict_arm(self.treated_model_, features),
            self._predict_arm(self.control_model_, features),
        )

    def predict_uplift(self, features: Any) -> np.ndarray:
        """Predicted P(outcome | treated) - P(outcome | control) per row."""
        treated, control = self.predict_arms(features)
        return treated - control


# ---- audience uplift from the data root's frames ---------------------------------------------


def uplift_rows(
    snapshot: Frame,
    offer_events: Frame,
    catalog: Frame,
    groups: Frame,
    snapshot_date: dt.date,
    horizon_days: int,
    max_treated_rows: int = MAX_TREATED_ROWS,
) -> pl.DataFrame:
    """Training rows of one snapshot day: the snapshot's features with offer_id, category,
    treated (bool), outcome (0/1) and weight per treated impression and per control subscriber
    x offer (see CONTROL_NEGATIVES_PER_TREATED; treated rows beyond `max_treated_rows` are
    sampled by subscriber, the kept ones weighted up).

    Only events in (T, T + H] are read, so the rows of T use nothing after T + H.
    """
    require_columns(offer_events, "offer_events", (SUBSCRIBER_ID, OFFER_ID, TS, EVENT))
    require_columns(catalog, "catalog", (OFFER_ID, CATEGORY))
    require_columns(snapshot, "snapshot", (SUBSCRIBER_ID,))
    members = check_groups(groups)
    present = lazy(snapshot).select(SUBSCRIBER_ID).collect()
    shown = offer_labels(offer_events, catalog, snapshot_date, horizon_days)
    treated = (
        shown.join(members.filter(targeted()).select(SUBSCRIBER_ID), on=SUBSCRIBER_ID, how="semi")
        .join(present, on=SUBSCRIBER_ID, how="semi")
        .select(
            SUBSCRIBER_ID,
            OFFER_ID,
            CATEGORY,
            pl.lit(True).alias(TREATED),
            pl.col(LABEL).cast(pl.Int8).alias(OUTCOME),
        )
    )
    treated = _sample_treated(treated, max_treated_rows, f"{_SAMPLE_SALT}-{snapshot_date}")
    start, stop = label_window(snapshot_date, horizon_days)
    accepted = (
        lazy(offer_events)
        .filter((pl.col(TS) >= start) & (pl.col(TS) < stop) & (pl.col(EVENT) == "accept"))
        .select(SUBSCRIBER_ID, OFFER_ID)
        .unique()
        .with_columns(pl.lit(1, dtype=pl.Int8).alias(OUTCOME))
    )
    control_ids = present.join(
        members.filter(pl.col("group") == CONTROL).select(SUBSCRIBER_ID), on=SUBSCRIBER_ID
    )
    offers = shown.select(OFFER_ID, CATEGORY).unique().sort(OFFER_ID)
    control = (
        control_ids.lazy()
        .join(offers.lazy(), how="cross")
        .join(accepted, on=[SUBSCRIBER_ID, OFFER_ID], how="left")
        .select(
            SUBSCRIBER_ID,
            OFFER_ID,
            CATEGORY,
            pl.lit(False).alias(TREATED),
            pl.col(OUTCOME).fill_null(0),
        )
        .collect()
    )
    rows = pl.concat(
        [treated, _sample_control(control, treated.height, f"{_SAMPLE_SALT}-{snapshot_date}")]
    ).with_columns(pl.lit(snapshot_date, dtype=pl.Date).alias(SNAPSHOT_DATE))
    # Only the features of the subscribers in the rows are read.
    features = (
        lazy(snapshot)
        .drop(SNAPSHOT_DATE, strict=False)
        .join(rows.lazy().select(SUBSCRIBER_ID).unique(), on=SUBSCRIBER_ID, how="semi")
        .collect()
    )
    return rows.join(features, on=SUBSCRIBER_ID, how="inner").sort(
        TREATED, SUBSCRIBER_ID, OFFER_ID, descending=[True, False, False]
    )


def _sample_treated(treated: pl.DataFrame, max_rows: int, salt: str) -> pl.DataFrame:
    """About `max_rows` rows at most: whole subscribers kept by a stable hash, weighted."""
    share = min(1.0, max_rows / max(treated.height, 1))
    kept = treated.filter(pl.Series(unit_interval(treated[SUBSCRIBER_ID], salt) < share))
    return kept.with_columns(pl.lit(1.0 / share).alias(WEIGHT))


def _sample_control(control: pl.DataFrame, treated_rows: int, salt: str) -> pl.DataFrame:
    """Every control accept, and a stable hash sample of control non-accepts, with weights."""
    negatives = int((control[OUTCOME] == 0).sum())
    share = min(1.0, CONTROL_NEGATIVES_PER_TREATED * max(treated_rows, 1) / max(negatives, 1))
    draws = pair_hash(control[SUBSCRIBER_ID], text_hash(control[OFFER_ID], salt), salt)
    unit = (draws >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    kept = (control[OUTCOME] == 1).to_numpy() | (unit < share)
    return control.filter(pl.Series(kept)).with_columns(
        pl.when(pl.col(OUTCOME) == 1).then(1.0).otherwise(1.0 / share).alias(WEIGHT)
    )


def _feature_names(rows: pl.DataFrame) -> list[str]:
    """Numeric and boolean snapshot columns, in name order (ids and outcomes excluded)."""
    return sorted(
        name
        for name, dtype in rows.schema.items()
        if name not in _ID_COLUMNS and (dtype.is_numeric() or dtype == pl.Boolean)
    )


class AudienceUplift:
    """A T-learner over offers with what is needed to score and to decide each offer's ranking."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _matrix(self, frame: pl.DataFrame) -> np.ndarray:
        codes = [
            pl.col(OFFER_ID).replace_strict(self.offers_, range(len(self.offers_)), default=-1),
            pl.col(CATEGORY).replace_strict(
                self.categories_, range(len(self.categories_)), default=-1
            ),
        ]
        present = [name for name in self.features_ if name in frame.columns]
        values = frame.select(
            *codes,
            *(pl.col(name).cast(pl.Float32) for name in present),
            *(pl.lit(None, dtype=pl.Float32).alias(n) for n in self.features_ if n not in present),
        ).select(pl.all().cast(pl.Float32))
        matrix = values.to_numpy()
        codes = matrix[:, :2]
        codes[codes < 0] = np.nan  # an offer or category unseen in training
        return matrix

    def fit(self, rows: pl.DataFrame, control_subscribers: int) -> AudienceUplift:
        """Fit on `uplift_rows` of one or more snapshot days; returns self.

        `control_subscribers`: the size of the control group the rows were drawn from.
        """
        require_columns(rows, "uplift rows", _ID_COLUMNS)
        self.features_ = _feature_names(rows)
        self.offers_ = sorted(rows[OFFER_ID].unique().to_list())
        self.categories_ = sorted(rows[CATEGORY].unique().to_list())
        control = rows.filter(~pl.col(TREATED))
        self.control_by_category_ = (
            control.group_by(CATEGORY)
            .agg(pl.col(OUTCOME).cast(pl.Int64).sum().alias("control_accepts"))
            .with_columns(pl.lit(control_subscribers, dtype=pl.Int64).alias("control_subscribers"))
            .sort(CATEGORY)
        )
        self.snapshot_dates_ = sorted(rows[SNAPSHOT_DATE].unique().to_list())
        held_out = pl.Series(
            unit_interval(rows[SUBSCRIBER_ID], f"{HOLDOUT_SALT}-{self.settings.seed}")
            < HOLDOUT_SHARE
        )
        fitted = rows.filter(~held_out)
        # One thread: the night's audiences must not depend on the machine's thread count.
        self.learner_ = TLearner(
            categorical_features=(0, 1), num_threads=1, random_state=self.settings.seed
        ).fit(
            self._matrix(fitted),
            fitted[TREATED].to_numpy(),
            fitted[OUTCOME].to_numpy(),
            fitted[WEIGHT].to_numpy(),
        )
        self.holdout_qini_ = self._holdout_qini(rows.filter(held_out))
        logger.info(
            "uplift model: %d treated and %d control rows over %d snapshots",
            rows.height - control.height,
            control.height,
            len(self.snapshot_dates_),
        )
        return self

    def _holdout_qini(self, rows: pl.DataFrame) -> pl.DataFrame:
        """[offer_id, qini] of the held-out subscribers' observed outcomes, per offer with rows
        in both arms and an accept (else null)."""
        scored = rows.select(OFFER_ID, TREATED, OUTCOME, WEIGHT).with_columns(
            pl.Series(
                UPLIFT, self.learner_.predict_uplift(self._matrix(rows)) if rows.height else []
            )
        )
        values = []
        for (offer_id,), part in scored.partition_by(OFFER_ID, as_dict=True).items():
            usable = part[TREATED].n_unique() == 2 and part[OUTCOME].sum() > 0
            values.append(
                (
                    offer_id,
                    qini_coefficient(part[UPLIFT], part[OUTCOME], part[TREATED], part[WEIGHT])
                    if usable
                    else None,
                )
            )
        return pl.DataFrame(
            values, schema={OFFER_ID: pl.String, QINI: pl.Float64}, orient="row"
        ).sort(OFFER_ID)

    def predict(
        self, pairs: pl.DataFrame, snapshot: Frame, catalog: Frame, use_scores: bool = True
    ) -> pl.DataFrame:
        """[subscriber_id, offer_id, uplift] for the pairs, from tonight's snapshot features.

        uplift = treated response - control response (the control arm's P(organic accept)).
        With `use_scores` and a `p_accept` column in `pairs` (the night's scores), that
        P(accept | shown) is the treated response: the propensity models learn the same outcome
        of the same treated contacts from all impressions and more history, and rank better than
        the T-learner's own treated arm (see offers/README.md); otherwise the treated arm's.

        The pairs' subscribers' features are read once, as 32-bit floats (what the model reads),
        and the pairs are scored PREDICT_ROWS at a time, so memory does not grow with the pairs.
        """
        categories = lazy(catalog).select(OFFER_ID, CATEGORY).unique(OFFER_ID).collect()
        wanted = [name for name in self.features_ if name in lazy(snapshot).collect_schema()]
        features = (
            lazy(snapshot)
            .select(SUBSCRIBER_ID, *(pl.col(name).cast(pl.Float32) for name in wanted))
            .join(pairs.lazy().select(SUBSCRIBER_ID).unique(), on=SUBSCRIBER_ID, how="semi")
            .collect()
        )
        scored = use_scores and P_ACCEPT in pairs.columns
        keys = pairs.select(
            SUBSCRIBER_ID, OFFER_ID, *([pl.col(P_ACCEPT).cast(pl.Float64)] if scored else [])
        ).join(categories, on=OFFER_ID, how="left")
        uplift = []
        for chunk in keys.iter_slices(PREDICT_ROWS):
            treated, control = self.learner_.predict_arms(
                self._matrix(
                    chunk.join(features, on=SUBSCRIBER_ID, how="left", maintain_order="left")
                )
            )
            uplift.append((chunk[P_ACCEPT].to_numpy() if scored else treated) - control)
        return keys.select(SUBSCRIBER_ID, OFFER_ID).with_columns(
            pl.Series(UPLIFT, np.concatenate(uplift) if uplift else [], dtype=pl.Float64)
        )

    def rankings(self, catalog: Frame) -> pl.DataFrame:
        """Per catalog offer: `ranking` (uplift | expected_value), the reason for a fallback and
        the held-out `qini` of the model for the offer (null where it could not be measured)."""
        return offer_rankings(catalog, self.settings, self.control_by_category_).join(
            self.holdout_qini_, on=OFFER_ID, how="left"
        )


def offer_rankings(
    catalog: Frame,
    settings: Settings,
    control_by_category: pl.DataFrame | None = None,
    reason: str = "",
) -> pl.DataFrame:
    """[offer_id, ranking, ranking_reason] per catalog offer.

    Without `control_by_category` (no uplift model) every offer falls back, for `reason`;
    otherwise an offer is ranked by uplift when its category's control arm has at least
    `uplift_min_control` subscribers and `uplift_min_control_accepts` accepts.
    """
    require_columns(catalog, "catalog", (OFFER_ID, CATEGORY))
    offers = lazy(catalog).select(OFFER_ID, CATEGORY).unique(OFFER_ID).collect().sort(OFFER_ID)
    if control_by_category is None:
        return offers.select(
            OFFER_ID,
            pl.lit(BY_EXPECTED_VALUE).alias(RANKING),
            pl.lit(reason or "no uplift model").alias(RANKING_REASON),
        )
    stats = offers.join(control_by_category, on=CATEGORY, how="left").with_columns(
        pl.col("control_subscribers", "control_accepts").fill_null(0)
    )
    few_subscribers = pl.col("control_subscribers") < settings.uplift_min_control
    few_accepts = pl.col("control_accepts") < settings.uplift_min_control_accepts
    detail = (
        pl.lit("control group: ")
        + pl.col("control_subscribers").cast(pl.String)
        + pl.lit(" subscribers, ")
        + pl.col("control_accepts").cast(pl.String)
        + pl.lit(" accepts of category ")
        + pl.col(CATEGORY)
        + pl.lit(" in the training windows; needed ")
        + pl.lit(f"{settings.uplift_min_control} and {settings.uplift_min_control_accepts}")
    )
    fallback = few_subscribers | few_accepts
    return stats.select(
        OFFER_ID,
        pl.when(fallback)
        .then(pl.lit(BY_EXPECTED_VALUE))
        .otherwise(pl.lit(BY_UPLIFT))
        .alias(RANKING),
        pl.when(fallback).then(detail).otherwise(pl.lit("")).alias(RANKING_REASON),
    )


def fit_audience_uplift(
    snapshots: Iterable[tuple[dt.date, Frame]],
    offer_events: Frame,
    catalog: Frame,
    groups: Frame,
    settings: Settings,
) -> tuple[AudienceUplift | None, str]:
    """An AudienceUplift fitted on the given (snapshot day, snapshot) pairs and their windows,
    or None and the reason when an arm has no rows (no impression, or no control subscriber)."""
    rows = []
    control_subscribers = 0
    members = check_groups(groups).filter(pl.col("group") == CONTROL).select(SUBSCRIBER_ID)
    snapshots = list(snapshots)
    per_day = MAX_TREATED_ROWS // max(len(snapshots), 1)
    for day, snapshot in snapshots:
        rows.append(
            uplift_rows(
                snapshot, offer_events, catalog, groups, day, settings.horizon_days, per_day
            )
        )
        control_subscribers = max(
            control_subscribers,
            lazy(snapshot).select(SUBSCRIBER_ID).collect().join(members, on=SUBSCRIBER_ID).height,
        )
    if not rows:
        raise OffersInputError("uplift: rule: at least one snapshot day; none given.")
    training = pl.concat(rows, how="diagonal_relaxed")
    arms = training[TREATED].value_counts()
    treated = int(arms.filter(pl.col(TREATED))["count"].sum())
    if treated == 0 or treated == training.height:
        arm = "treated" if treated == 0 else "control"
        return None, f"no {arm} rows in the training windows"
    return AudienceUplift(settings).fit(training, control_subscribers), ""
