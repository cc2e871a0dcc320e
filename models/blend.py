"""The blend: one calibrated P(accept | shown) per subscriber x offer.

Inputs per subscriber x offer: the calibrated category propensity of the offer's category, the ALS
score (raw, centred on the subscriber's mean and as a rank among the candidate offers), the
subscriber's taste for the offer's category learned from accepted and unanswered offers
(`models.taste`; raw and centred), the subscriber's own responses to the offer and to its category
(`models.history`: impressions, accepts, dismisses, ignored, days since each), offer attributes
(value, category), the offer's smoothed historical acceptance rate and volume from labelled
windows, and how much of the subscriber's own activity (the interactions the ALS reads: accepts,
clicks, consumption) falls in the offer's category. A logistic regression on the propensity and
the ALS inputs, then a small LightGBM on every input correcting its margin (both monotone
increasing in the propensity, the ALS score, the taste and the offer's rate), are fitted on a
window LATER than the one their inputs were trained on, so they learn how far to trust each
input out of sample.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
from scipy import optimize

from mia.errors import InputError
from mia.hashing import text_hash, unit_interval
from mia.schema import (
    CATEGORY,
    CF_SCORE,
    CONFIDENCE,
    LABEL,
    OFFER_ID,
    SUBSCRIBER_ID,
    VALUE,
)
from models.arrays import Column, row_major
from models.compiled import PicklesWithoutCompiled, compiled_predict
from models.history import HISTORY_INPUTS, ResponseHistory, no_history
from models.params import ConstructorParams
from models.propensity import P_CATEGORY, CategoryPropensity, logit, sigmoid
from models.taste import TASTE_LOGIT

logger = logging.getLogger(__name__)

OFFER_ACCEPT_RATE = "offer_accept_rate"
CATEGORY_ACCEPT_RATE = "category_accept_rate"
# The subscriber's interaction confidence on the offer's category: its share of their activity
# over all categories, and its amount. ALS scores rank offers well within a category, but say
# little about how a subscriber's top 5 should be split across categories; these say it directly.
INTERACTION_INPUTS = ("interaction_category_share", "interaction_category_log_confidence")
# Columns the blend model reads, in matrix order (a fitted blend keeps its own list: `features_`).
BLEND_FEATURES = (
    "logit_p_category",
    "logit_p_category_centered",
    CF_SCORE,
    "cf_score_centered",
    "cf_rank",
    "cf_category_centered",
    "cf_category_rank",
    TASTE_LOGIT,
    "taste_centered",
    "offer_lift",
    "offer_log_accepts",
    "log_value",
    "category_code",
    *HISTORY_INPUTS,
    *INTERACTION_INPUTS,
)
# What blends fitted before tastes read: a stored champion keeps scoring until it is replaced
# (later blends keep their own list, `features_`).
_FEATURES_BEFORE_TASTE = (
    "logit_p_category",
    "logit_p_category_centered",
    CF_SCORE,
    "cf_score_centered",
    "cf_rank",
    "offer_lift",
    "offer_log_accepts",
    "log_value",
    "category_code",
)
# What the linear stage reads: the category propensity and which offers (of the catalog, and of
# the category's many items) the ALS score prefers. Trees of a few leaves fitted on one week of
# impressions split on the strongest input and used the steady but weaker ALS inputs little; the
# other inputs stay with the trees (a linear term on all of them cost 0.03 of top-1 capture on
# the telco world; `benchmarks.quality`).
LINEAR_INPUTS = (
    "logit_p_category",
    "cf_score_centered",
    "cf_category_centered",
    "cf_category_rank",
)
_MONOTONE = {"logit_p_category": 1, CF_SCORE: 1, TASTE_LOGIT: 1, "offer_lift": 1}


class BlendInputError(InputError):
    """A frame given to the blend breaks its rules."""


def offer_statistics(
    offer_labels: pl.DataFrame, offers: pl.DataFrame, prior_strength: float = 30.0
) -> pl.DataFrame:
    """Per offer of `offers`: shown, accepted, and the acceptance rate smoothed to its category.

    Rates are `(accepts + s * category_rate) / (shown + s)`; category rates are smoothed the same
    way towards the rate over all categories, so a new or rarely shown offer gets its category's.
    """
    for name, frame, columns in (
        ("offer_labels", offer_labels, (OFFER_ID, CATEGORY, LABEL)),
        ("offers", offers, (OFFER_ID, CATEGORY)),
    ):
        missing = [column for column in columns if column not in frame.columns]
        if missing:
            raise BlendInputError(f"{name}: columns {missing} missing.")
    shown = offer_labels.height
    overall = float(offer_labels[LABEL].sum()) / shown if shown else 0.0
    per_category = offer_labels.group_by(CATEGORY).agg(
        pl.len().alias("category_shown"), pl.col(LABEL).sum().alias("category_accepts")
    )
    per_offer = offer_labels.group_by(OFFER_ID).agg(
        pl.len().alias("shown"), pl.col(LABEL).sum().alias("accepts")
    )
    strength = float(prior_strength)
    return (
        offers.select(OFFER_ID, pl.col(CATEGORY).cast(pl.String))
        .unique(OFFER_ID, keep="first")
        .join(per_category.with_columns(pl.col(CATEGORY).cast(pl.String)), on=CATEGORY, how="left")
        .join(per_offer, on=OFFER_ID, how="left")
        .with_columns(pl.col("category_shown", "category_accepts", "shown", "accepts").fill_null(0))
        .with_columns(
            (
                (pl.col("category_accepts") + strength * overall)
                / (pl.col("category_shown") + strength)
            ).alias(CATEGORY_ACCEPT_RATE)
        )
        .with_columns(
            (
                (pl.col("accepts") + strength * pl.col(CATEGORY_ACCEPT_RATE))
                / (pl.col("shown") + strength)
            ).alias(OFFER_ACCEPT_RATE)
        )
        .select(OFFER_ID, CATEGORY, "shown", "accepts", OFFER_ACCEPT_RATE, CATEGORY_ACCEPT_RATE)
        .sort(OFFER_ID)
    )


def _row_rank(scores: np.ndarray) -> np.ndarray:
    """Rank of each cell in its row by descending score, scaled to [0, 1] (0 = best)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :], axis=1)
    return ranks / max(scores.shape[1] - 1, 1)


def _within_groups(scores: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each cell minus its row's mean over the columns of its group, and its rank among them
    (`_row_rank`); `groups` gives each column's group (e.g. the offer's category)."""
    centered = np.empty_like(scores)
    ranks = np.empty_like(scores)
    for group in np.unique(groups):
        columns = np.flatnonzero(groups == group)
        block = scores[:, columns]
        centered[:, columns] = block - block.mean(axis=1, keepdims=True)
        ranks[:, columns] = _row_rank(block)
    return centered, ranks


@dataclass(frozen=True)
class CategoryActivity:
    """Interaction confidence of a batch of subscribers (rows) per category (columns, in
    `categories` order): what `category_activity` sums from the ALS interactions."""

    categories: tuple[str, ...]
    confidence: np.ndarray  # rows x categories, float64

    def per_category(self) -> dict[str, np.ndarray]:
        """`INTERACTION_INPUTS` per row x category, with one more column of zeros at the end (a
        category without interactions): the share of the row's total confidence that is on the
        category (0 for a row without any) and log1p of that confidence."""
        # Summed category by category: a row's total never depends on the rows beside it.
        total = np.zeros((self.confidence.shape[0], 1))
        for column in range(self.confidence.shape[1]):
            total[:, 0] += self.confidence[:, column]
        share = np.divide(
            self.confidence, total, out=np.zeros_like(self.confidence), where=total > 0
        )
        zeros = np.zeros((self.confidence.shape[0], 1))
        return {
            INTERACTION_INPUTS[0]: np.hstack([share, zeros]),
            INTERACTION_INPUTS[1]: np.hstack([np.log1p(self.confidence), zeros]),
        }

    def columns(self, offer_categories: Sequence[str]) -> np.ndarray:
        """Each offer's column in `per_category` (the zero column for a category it lacks)."""
        column_of = {category: index for index, category in enumerate(self.categories)}
        return np.array(
            [column_of.get(category, len(self.categories)) for category in offer_categories],
            dtype=np.int64,
        )


def category_activity(
    interactions: pl.DataFrame | None,
    subscriber_ids: np.ndarray | pl.Series,
    catalog: pl.DataFrame,
) -> CategoryActivity:
    """Each subscriber's summed interaction confidence per category of `catalog` (offer_id,
    category), from [subscriber_id, offer_id, confidence] interactions (`models.cf`); None: none.

    Items that are not catalog offers (content outside the catalog) have no category and are
    left out, of the total too. A row's sums read its own interactions only, added in offer
    order, so they are the same bits in any batch of subscribers.
    """
    kinds = (
        catalog.select(pl.col(OFFER_ID).cast(pl.String), pl.col(CATEGORY).cast(pl.String))
        .unique(OFFER_ID, keep="last")
        .drop_nulls()
    )
    categories = kinds[CATEGORY].unique().sort()
    ids = pl.Series(SUBSCRIBER_ID, np.asarray(subscriber_ids), dtype=pl.Int64)
    confidence = np.zeros((ids.len(), categories.len()), dtype=np.float64)
    if interactions is None or not interactions.height or not categories.len():
        return CategoryActivity(tuple(categories), confidence)
    missing = [c for c in (SUBSCRIBER_ID, OFFER_ID, CONFIDENCE) if c not in interactions.columns]
    if missing:
        raise BlendInputError(f"interactions: columns {missing} missing.")
    cells = (
        interactions.lazy()
        .select(
            pl.col(SUBSCRIBER_ID).cast(pl.Int64),
            pl.col(OFFER_ID).cast(pl.String),
            pl.col(CONFIDENCE).cast(pl.Float64),
        )
        .join(pl.LazyFrame({SUBSCRIBER_ID: ids, "_row": np.arange(ids.len())}), on=SUBSCRIBER_ID)
        .join(kinds.lazy(), on=OFFER_ID)
        .join(
            pl.LazyFrame({CATEGORY: categories, "_column": np.arange(categories.len())}),
            on=CATEGORY,
        )
        .sort("_row", OFFER_ID, CONFIDENCE)  # a repeated pair, too, sums in one order
        .collect()
    )
    # bincount adds each cell's values in the order above: no dependence on the batch.
    flat = cells["_row"].to_numpy() * categories.len() + cells["_column"].to_numpy()
    confidence = np.bincount(
        flat, weights=cells[CONFIDENCE].to_numpy(), minlength=confidence.size
    ).reshape(confidence.shape)
    return CategoryActivity(tuple(categories), confidence)


@dataclass(frozen=True)
class CandidateInputs:
    """Blend inputs of every subscriber x offer, kept as matrices rather than rows.

    `cells[name]` is (subscribers x offers) for inputs that vary per pair, `per_offer[name]` is
    (offers,) for inputs fixed per offer, `per_category[name]` is (subscribers x categories) for
    inputs fixed per subscriber x category, `offer_category` giving each offer's column in it;
    `history` the response history (None: none known). `matrix` gathers model rows for any cells.
    """

    cells: dict[str, np.ndarray]
    per_offer: dict[str, np.ndarray]
    history: ResponseHistory | None = None
    per_category: dict[str, np.ndarray] = field(default_factory=dict)
    offer_category: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def dense(self, name: str) -> np.ndarray:
        """(subscribers x offers) values of a per-pair or per-category input."""
        if name in self.cells:
            return self.cells[name]
        return self.per_category[name][:, self.offer_category]

    def matrix(
        self,
        subscriber_rows: np.ndarray,
        offer_columns: np.ndarray,
        features: Sequence[str] = BLEND_FEATURES,
    ) -> np.ndarray:
        """(cells x features) row-major float64 matrix of the given subscriber x offer
        positions."""
        n_offers = next(iter(self.per_offer.values())).size
        flat = subscriber_rows * n_offers + offer_columns
        return row_major(
            flat.size,
            [self._column(name, subscriber_rows, offer_columns, flat) for name in features],
        )

    def _column(
        self, name: str, subscriber_rows: np.ndarray, offer_columns: np.ndarray, flat: np.ndarray
    ) -> Column:
        """Input `name` at a slice of the cells (`row_major`'s column)."""
        if name in self.cells:
            values = self.cells[name].reshape(-1)
            return lambda part: values[flat[part]]
        if name in self.per_category:
            # Gathered per cell: the dense (subscribers x offers) matrix is never built.
            by_category = self.per_category[name]
            return lambda part: by_category[
                subscriber_rows[part], self.offer_category[offer_columns[part]]
            ]
        if name in HISTORY_INPUTS:
            history = self.history
            if history is None:
                return lambda part: no_history(name)
            return lambda part: history.cells(name, subscriber_rows[part], offer_columns[part])
        per_offer = self.per_offer[name]
        return lambda part: per_offer[offer_columns[part]]


def _row_centered(values: np.ndarray) -> np.ndarray:
    """Each row minus its mean; a night without offers has no columns and nothing to centre."""
    if values.shape[1] == 0:
        return values
    return values - values.mean(axis=1, keepdims=True)


def category_code(categories: Sequence[str]) -> np.ndarray:
    """A stable number in [0, 1) per category name: the blend's category input, the same
    whatever other categories the catalog holds."""
    return (text_hash(list(categories), "blend-category") >> np.uint64(11)).astype(
        np.float64
    ) / float(1 << 53)


def candidate_inputs(
    p_category: np.ndarray,
    categories: Sequence[str],
    cf_scores: np.ndarray,
    offers: pl.DataFrame,
    offer_stats: pl.DataFrame,
    unseen_prior: float | None = None,
    taste: np.ndarray | None = None,
    history: ResponseHistory | None = None,
    activity: CategoryActivity | None = None,
) -> CandidateInputs:
    """Blend inputs as matrices: `p_category` and `taste` are (subscribers x categories) in
    `categories` order, `cf_scores` is (subscribers x offers) in `offers` order (offer_id,
    category, value), `history` and `activity` of the same subscribers (`models.history`,
    `category_activity`).

    Offers of a category outside `categories` (never seen in training) take `unseen_prior` as
    their category propensity (without it they are refused) and a taste of 0; without `taste`
    every taste is 0, without `history` no pair has history, without `activity` no subscriber
    has interactions."""
    missing = [column for column in (OFFER_ID, CATEGORY, VALUE) if column not in offers.columns]
    if missing:
        raise BlendInputError(f"offers: columns {missing} missing.")
    offers = offers.with_columns(pl.col(CATEGORY).cast(pl.String))
    n_subscribers, n_offers = p_category.shape[0], offers.height
    if p_category.ndim != 2 or p_category.shape[1] != len(categories):
        raise BlendInputError(
            f"p_category has shape {p_category.shape}, must be {(n_subscribers, len(categories))}."
        )
    if taste is None:
        taste = np.zeros(p_category.shape)
    if taste.shape != p_category.shape:
        raise BlendInputError(f"taste has shape {taste.shape}, must be {p_category.shape}.")
    unknown = sorted(set(offers[CATEGORY]) - set(categories))
    if unknown:
        if unseen_prior is None:
            raise BlendInputError(f"offers: categories {unknown[:5]} have no propensity model.")
        categories = [*categories, *unknown]
        prior = np.full((n_subscribers, len(unknown)), unseen_prior, dtype=np.float64)
        p_category = np.hstack([p_category, prior])
        taste = np.hstack([taste, np.zeros((n_subscribers, len(unknown)))])
    if cf_scores.shape != (n_subscribers, n_offers):
        raise BlendInputError(
            f"cf_scores has shape {cf_scores.shape}, must be {(n_subscribers, n_offers)}."
        )
    stats = offers.select(OFFER_ID).join(
        offer_stats.select(OFFER_ID, "accepts", OFFER_ACCEPT_RATE, CATEGORY_ACCEPT_RATE),
        on=OFFER_ID,
        how="left",
        maintain_order="left",
    )
    column_of = {category: index for index, category in enumerate(categories)}
    offer_columns = np.array([column_of[category] for category in offers[CATEGORY]], dtype=np.int64)
    p = np.ascontiguousarray(p_category[:, offer_columns])
    logit_p = logit(p)
    offer_taste = np.ascontiguousarray(taste[:, offer_columns], dtype=np.float64)
    cf = cf_scores.astype(np.float64)
    # Within a category: which of its offers suits the subscriber (a catalog of many films).
    cf_category_centered, cf_category_rank = _within_groups(cf, offer_columns)
    # Offers never seen in a labelled window take their category's rate (lift 0).
    category_rate = stats[CATEGORY_ACCEPT_RATE].fill_null(strategy="mean").fill_null(0.05)
    offer_rate = stats[OFFER_ACCEPT_RATE].fill_null(category_rate)
    if activity is None:
        activity = CategoryActivity((), np.zeros((n_subscribers, 0)))
    if activity.confidence.shape[0] != n_subscribers:
        raise BlendInputError(
            f"activity has {activity.confidence.shape[0]} rows, must be {n_subscribers}."
        )
    cells = {
        P_CATEGORY: p,
        "logit_p_category": logit_p,
        "logit_p_category_centered": _row_centered(logit_p),
        CF_SCORE: cf,
        "cf_score_centered": _row_centered(cf),
        "cf_rank": _row_rank(cf) if n_offers else np.empty((n_subscribers, 0)),
        "cf_category_centered": cf_category_centered,
        "cf_category_rank": cf_category_rank,
        TASTE_LOGIT: offer_taste,
        "taste_centered": _row_centered(offer_taste),
    }
    per_offer = {
        "offer_lift": logit(offer_rate.to_numpy()) - logit(category_rate.to_numpy()),
        "offer_log_accepts": np.log1p(stats["accepts"].fill_null(0).to_numpy().astype(np.float64)),
        "log_value": np.log1p(offers[VALUE].cast(pl.Float64).to_numpy()),
        "category_code": category_code(offers[CATEGORY].to_list()),
    }
    return CandidateInputs(
        cells=cells,
        per_offer=per_offer,
        history=history,
        per_category=activity.per_category(),
        offer_category=activity.columns(offers[CATEGORY]),
    )


def candidate_features(
    subscriber_ids: np.ndarray | pl.Series,
    p_category: np.ndarray,
    categories: Sequence[str],
    cf_scores: np.ndarray,
    offers: pl.DataFrame,
    offer_stats: pl.DataFrame,
    unseen_prior: float | None = None,
    taste: np.ndarray | None = None,
    history: ResponseHistory | None = None,
    activity: CategoryActivity | None = None,
) -> pl.DataFrame:
    """Blend inputs for every subscriber x offer (subscriber-major, offers in `offers` order).

    `p_category` and `taste` are (subscribers x categories) in `categories` order, `cf_scores`
    is (subscribers x offers) in `offers` order; `offers` has offer_id, category, value (see
    `candidate_inputs` for `unseen_prior`, `history` and `activity`).
    """
    ids = np.asarray(subscriber_ids)
    if p_category.shape[0] != ids.size:
        raise BlendInputError(
            f"p_category has shape {p_category.shape}, must be {(ids.size, len(categories))}."
        )
    inputs = candidate_inputs(
        p_category,
        categories,
        cf_scores,
        offers,
        offer_stats,
        unseen_prior,
        taste,
        history,
        activity,
    )
    return inputs_frame(ids, inputs, offers)


def inputs_frame(
    subscriber_ids: np.ndarray | pl.Series, inputs: CandidateInputs, offers: pl.DataFrame
) -> pl.DataFrame:
    """`inputs` as rows: every subscriber x offer, subscriber-major, offers in `offers` order."""
    ids = np.asarray(subscriber_ids)
    n_subscribers, n_offers = ids.size, offers.height
    columns: dict[str, pl.Series | np.ndarray] = {
        SUBSCRIBER_ID: np.repeat(ids, n_offers),
        OFFER_ID: np.tile(offers[OFFER_ID].to_numpy(), n_subscribers),
        CATEGORY: np.tile(offers[CATEGORY].cast(pl.String).to_numpy(), n_subscribers),
    }
    for name in (*inputs.cells, *inputs.per_category):
        columns[name] = inputs.dense(name).ravel()
    for name, values in inputs.per_offer.items():
        columns[name] = np.tile(values, n_subscribers)
    for name in HISTORY_INPUTS:
        columns[name] = (
            inputs.history.dense(name).ravel()
            if inputs.history is not None
            else np.full(n_subscribers * n_offers, no_history(name), dtype=np.float32)
        )
    return pl.DataFrame(columns).with_columns(
        pl.col(SUBSCRIBER_ID).cast(pl.Int64), pl.col(OFFER_ID, CATEGORY).cast(pl.String)
    )


def propensity_and_cf(
    propensity: CategoryPropensity,
    cf_model,
    snapshot: pl.DataFrame,
    offers: pl.DataFrame,
    interactions: pl.DataFrame | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Category propensities (subscribers x categories) and ALS scores (subscribers x offers)."""
    ids = snapshot[SUBSCRIBER_ID]
    p_category = propensity.predict_matrix(snapshot)
    cf_scores = cf_model.score(ids, offers[OFFER_ID], interactions)
    return p_category, np.asarray(cf_scores, dtype=np.float64)


@dataclass(frozen=True)
class LinearStage:
    """A logistic regression on standardised blend inputs: the margin the trees start from."""

    columns: np.ndarray  # positions of the inputs it reads in the blend matrix
    mean: np.ndarray
    scale: np.ndarray
    coefficients: np.ndarray  # per standardised input
    intercept: float

    def margin(self, x: np.ndarray) -> np.ndarray:
        """Log-odds per row, summed input by input in a fixed order: a row gets the same bits in
        any batch (a BLAS product would round it differently by the batch's shape)."""
        total = np.full(x.shape[0], self.intercept)
        for column, mean, scale, weight in zip(
            self.columns, self.mean, self.scale, self.coefficients, strict=True
        ):
            total = total + (x[:, column] - mean) / scale * weight
        return total


def fit_linear_stage(
    x: np.ndarray, y: np.ndarray, columns: Sequence[int], signs: Sequence[int], l2: float
) -> LinearStage:
    """L2-penalised logistic regression of `y` on the standardised `columns` of `x`, with the
    coefficient of each column whose sign is +1 / -1 kept >= 0 / <= 0 (monotone inputs);
    L-BFGS-B from zero, so the same data gives the same coefficients."""
    columns = np.asarray(columns, dtype=np.int64)
    inputs = x[:, columns]
    mean = inputs.mean(axis=0)
    scale = inputs.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (inputs - mean) / scale
    n = y.size

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        margin = z @ theta[1:] + theta[0]
        # log(1 + e^m) - y m, stable for large |m|
        value = np.logaddexp(0.0, margin) - y * margin
        residual = sigmoid(margin) - y
        penalty = 0.5 * l2 * float(theta[1:] @ theta[1:])
        gradient = np.concatenate([[residual.sum()], z.T @ residual + l2 * theta[1:]])
        return (float(value.sum()) + penalty) / n, gradient / n

    bounds = [(None, None)] + [
        (0.0, None) if sign > 0 else (None, 0.0) if sign < 0 else (None, None) for sign in signs
    ]
    result = optimize.minimize(
        loss, np.zeros(columns.size + 1), jac=True, method="L-BFGS-B", bounds=bounds
    )
    return LinearStage(columns, mean, scale, result.x[1:].copy(), float(result.x[0]))


class OfferBlend(PicklesWithoutCompiled, ConstructorParams):
    """Turns blend inputs into calibrated P(accept | shown): a logistic regression on
    `LINEAR_INPUTS`, then small monotone LightGBM trees on every input that correct its margin.

    The linear stage keeps weak but steady inputs (the ALS score among a category's many items)
    in the ranking. `linear_stage=False` fits trees alone, as blends stored before it do.
    """

    def __init__(
        self,
        *,
        num_boost_round: int = 300,
        early_stopping_rounds: int = 30,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_data_in_leaf: int = 100,
        lambda_l2: float = 1.0,
        validation_share: float = 0.2,
        monotone: bool = True,
        linear_stage: bool = True,
        linear_l2: float = 1.0,
        num_threads: int = 2,
        random_state: int = 7,
    ) -> None:
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_data_in_leaf = min_data_in_leaf
        self.lambda_l2 = lambda_l2
        self.validation_share = validation_share
        self.monotone = monotone
        self.linear_stage = linear_stage
        self.linear_l2 = linear_l2
        self.num_threads = num_threads
        self.random_state = random_state

    def _params(self) -> dict[str, object]:
        seed = self.random_state
        params: dict[str, object] = {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "lambda_l2": self.lambda_l2,
            "max_bin": 127,
            "deterministic": True,
            "force_row_wise": True,
            "seed": seed,
            "data_random_seed": seed + 1,
            "num_threads": self.num_threads,
            "verbosity": -1,
        }
        if self.monotone:
            params["monotone_constraints"] = [_MONOTONE.get(name, 0) for name in self.features]
            params["monotone_constraints_method"] = "advanced"
        return params

    @property
    def features(self) -> tuple[str, ...]:
        """The columns this blend reads, in matrix order (before fitting: those it will read)."""
        if "features_" in self.__dict__:
            return tuple(self.features_)
        return _FEATURES_BEFORE_TASTE if "booster_" in self.__dict__ else BLEND_FEATURES

    def _matrix(self, frame: pl.DataFrame) -> np.ndarray:
        missing = [name for name in self.features if name not in frame.columns]
        if missing:
            raise BlendInputError(f"blend frame: columns {missing} missing.")
        return frame.select(pl.col(self.features).cast(pl.Float64)).to_numpy()

    def _dataset(self, x: np.ndarray, y: np.ndarray, margin: np.ndarray | None) -> lgb.Dataset:
        return lgb.Dataset(
            x,
            y,
            init_score=margin,
            feature_name=list(self.features),
            categorical_feature=[self.features.index("category_code")],
            free_raw_data=True,
        )

    @property
    def linear(self) -> LinearStage | None:
        """The fitted linear stage; None for trees alone (and blends stored before it)."""
        return self.__dict__.get("linear_")

    def fit(self, frame: pl.DataFrame) -> OfferBlend:
        """Fit on blend inputs with a `label` per shown subscriber x offer; returns self."""
        if LABEL not in frame.columns:
            raise BlendInputError(f"blend frame: column {LABEL!r} missing.")
        labels = frame[LABEL]
        if labels.null_count() or not labels.is_in([0, 1]).all():
            bad = labels.filter(~labels.is_in([0, 1])).unique().head(5).to_list()
            raise BlendInputError(f"blend frame: column {LABEL!r} must be 0 or 1, found {bad}.")
        y = labels.cast(pl.Float64).to_numpy()
        self.features_ = BLEND_FEATURES
        if not 0 < y.sum() < y.size:
            raise BlendInputError(
                f"blend frame: column {LABEL!r} needs both classes, has {int(y.sum())} "
                f"positives in {y.size} rows."
            )
        x = self._matrix(frame)
        self.linear_ = None
        margin = None
        if self.linear_stage:
            linear_inputs = [i for i, name in enumerate(self.features) if name in LINEAR_INPUTS]
            self.linear_ = fit_linear_stage(
                x,
                y,
                linear_inputs,
                [_MONOTONE.get(self.features[i], 0) if self.monotone else 0 for i in linear_inputs],
                self.linear_l2,
            )
            margin = self.linear_.margin(x)
        held = unit_interval(frame[SUBSCRIBER_ID], f"blend-{self.random_state}") < (
            self.validation_share
        )

        def part(rows: np.ndarray) -> lgb.Dataset:
            return self._dataset(x[rows], y[rows], None if margin is None else margin[rows])

        params = self._params()
        rounds = self.num_boost_round
        if held.any() and 0 < y[held].sum() < held.sum():
            probe = lgb.train(
                params,
                part(~held),
                num_boost_round=self.num_boost_round,
                valid_sets=[part(held)],
                callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
            )
            rounds = max(probe.best_iteration, 1)
        self.booster_ = lgb.train(params, self._dataset(x, y, margin), num_boost_round=rounds)
        self.rounds_ = rounds
        logger.info("blend fitted: %d rows, %d positives, %d trees", y.size, int(y.sum()), rounds)
        return self

    def predict(self, frame: pl.DataFrame) -> np.ndarray:
        """P(accept | shown) per row of a blend-input frame."""
        if not hasattr(self, "booster_"):
            raise BlendInputError("OfferBlend is not fitted: call fit(frame).")
        return self.predict_matrix(self._matrix(frame))

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        """P(accept | shown) per row of a (rows x features) float64 matrix."""
        if not hasattr(self, "booster_"):
            raise BlendInputError("OfferBlend is not fitted: call fit(frame).")
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise BlendInputError(
                f"blend matrix has shape {x.shape}, must be (rows, {len(self.features)})."
            )
        if not x.shape[0]:
            return np.empty(0)
        x = np.ascontiguousarray(x)  # a no-op for `CandidateInputs.matrix`
        linear = self.linear
        predict = self.__dict__.get("compiled_")
        if predict is None:
            predict = functools.partial(
                self.booster_.predict, raw_score=linear is not None, num_threads=self.num_threads
            )
        if linear is None:
            return predict(x)
        return sigmoid(linear.margin(x) + predict(x))

    def use_compiled(self, cache_dir: Path | None) -> OfferBlend:
        """Predict with the booster compiled to native code, cached under `cache_dir` (same
        results; `models.compiled`); None goes back to LightGBM's own predict."""
        if not hasattr(self, "booster_"):
            raise BlendInputError("OfferBlend is not fitted: call fit(frame).")
        self.compiled_ = (
            compiled_predict(
                self.booster_,
                cache_dir,
                raw_score=self.linear is not None,
                num_threads=self.num_threads,
            )
            if cache_dir is not None
            else None
        )
        return self

    def feature_importance(self) -> pl.DataFrame:
        """[feature, importance] (total gain) of the blend model."""
        gain = self.booster_.feature_importance("gain").astype(np.float64)
        return pl.DataFrame({"feature": list(self.features), "importance": gain})
