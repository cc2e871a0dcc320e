"""Tastes from responses: logistic matrix factorisation of who accepts which category.

What a subscriber accepted and left unanswered across categories says what else they will like:
someone who takes video offers and ignores roaming ones is likelier to take a music offer. ALS
learns from positive interactions only; this model also learns from the offers a subscriber was
shown and did not take.

Each subscriber x category cell of the snapshot's longest offer-history window is a binomial
observation: `trials` = max(impressions, accepts) (an accept without an impression, e.g. while
browsing, counts as shown and accepted) and `successes` = accepts. The model is

    logit P(accept) = category_bias[c] + subscriber_bias[s] + subscriber[s] . category[c]

with Gaussian priors (L2 penalties) on every parameter, fitted by alternating Newton steps: with
the category side fixed, each subscriber's parameters solve their own small penalised logistic
regression, and the other way round. Only cells with trials count; a subscriber without responses
keeps zeros and gets the category bias alone.

`fit` learns the category side on one snapshot; `predict_matrix` folds in each subscriber of any
snapshot with the category side fixed. A subscriber's result depends on their own cells only (sums
per subscriber in category order, one small solve each), so it is the same in any shard or chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import polars as pl

from mia.errors import InputError
from models.params import ConstructorParams

logger = logging.getLogger(__name__)

TASTE_LOGIT = "taste_logit"
MIN_OBSERVATIONS = 50  # cells with trials, and at least one accept, to learn anything
HALVINGS = 8  # step halvings before a Newton step gives up for an owner


class TasteInputError(InputError):
    """The taste model is used before it is fitted."""


def history_columns(category: str, window: int) -> tuple[str, str]:
    """Snapshot columns of a category's impressions and accepts over `window` days."""
    return f"{category}_impressions_{window}d", f"{category}_accepts_{window}d"


def stable_sigmoid(values: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) through tanh: no overflow for logits of any size (Newton steps may try
    large ones)."""
    return 0.5 * (1.0 + np.tanh(0.5 * values))


def _observations(
    snapshot: pl.DataFrame, categories: Sequence[str], window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row, category index, trials, successes) of the cells with trials, row-major.

    A category whose columns the snapshot lacks (no longer in the catalog it was built from) has
    no history: like the propensity models, taste reads its absent features as missing.
    """
    columns = [name for category in categories for name in history_columns(category, window)]
    absent = [name for name in columns if name not in snapshot.columns]
    if absent:
        logger.info(
            "taste: %d history columns absent, read as no history: %s", len(absent), absent[:4]
        )
    counts = (
        snapshot.select(
            pl.col(name).cast(pl.Float64) if name in snapshot.columns else pl.lit(0.0).alias(name)
            for name in columns
        )
        .fill_null(0.0)
        .fill_nan(0.0)
        .to_numpy()
        .reshape(snapshot.height, len(categories), 2)
    )
    successes = np.maximum(counts[:, :, 1], 0.0)
    trials = np.maximum(counts[:, :, 0], successes)
    rows, cols = np.nonzero(trials > 0)  # row-major: each subscriber's cells in category order
    return rows, cols, trials[rows, cols], successes[rows, cols]


def _eta(owner: np.ndarray, design: np.ndarray, offset: np.ndarray, params: np.ndarray):
    """Each cell's logit; a fixed order of products per cell, whatever the other cells."""
    eta = offset.copy()
    for j in range(design.shape[1]):
        eta += design[:, j] * params[:, j][owner]
    return eta


def _objective(owner, n_owners, eta, trials, successes, params, penalty) -> np.ndarray:
    """Penalised log-likelihood of each owner's cells (n_owners,)."""
    cell = successes * eta - trials * np.logaddexp(0.0, eta)
    return np.bincount(owner, cell, minlength=n_owners) - 0.5 * (penalty * params**2).sum(axis=1)


def _design(factors: np.ndarray) -> np.ndarray:
    """(cells x d + 1) design: each cell's factors and a column of ones for the intercept,
    column-major (the Newton step reads it a column at a time)."""
    design = np.empty((factors.shape[0], factors.shape[1] + 1), order="F")
    design[:, :-1] = factors
    design[:, -1] = 1.0
    return design


def _newton_step(
    owner: np.ndarray,
    n_owners: int,
    design: np.ndarray,
    offset: np.ndarray,
    trials: np.ndarray,
    successes: np.ndarray,
    params: np.ndarray,
    penalty: np.ndarray,
) -> np.ndarray:
    """One penalised Newton step for every owner's parameters (n_owners x d) at once.

    `design` (cells x d) holds each cell's inputs from the fixed side, `offset` its fixed logit.
    Sums run per owner with bincount in cell order, so an owner's step depends on their cells
    only. A full step can overshoot where the quadratic model is poor (accepts at a near-zero
    probability): an owner whose objective would fall takes half the step, up to HALVINGS times,
    else stays where it was.
    """
    dims = design.shape[1]
    eta = _eta(owner, design, offset, params)
    p = stable_sigmoid(eta)
    residual = successes - trials * p
    weight = trials * p * (1.0 - p)
    gradient = np.empty((n_owners, dims))
    hessian = np.empty((n_owners, dims, dims))
    # The design's columns, contiguous (views of a column-major `_design`), and weight x column
    # once per column: the same products, in the same order, as weight * d[:, j] * d[:, k].
    columns = [np.ascontiguousarray(design[:, j]) for j in range(dims)]
    for j in range(dims):
        gradient[:, j] = np.bincount(owner, residual * columns[j], minlength=n_owners)
        weighted = weight * columns[j]
        for k in range(j, dims):
            total = np.bincount(owner, weighted * columns[k], minlength=n_owners)
            hessian[:, j, k] = hessian[:, k, j] = total
    gradient -= penalty * params
    hessian[:, np.arange(dims), np.arange(dims)] += penalty
    step = np.linalg.solve(hessian, gradient[:, :, None])[:, :, 0]
    before = _objective(owner, n_owners, eta, trials, successes, params, penalty)
    floor = before - 1e-9 * (1.0 + np.abs(before))  # a fall within rounding is no fall
    result = params.copy()
    pending = np.ones(n_owners, dtype=bool)
    cells = slice(None)  # the cells of owners still pending: all of them at first, not copied
    for _ in range(HALVINGS):
        candidate = params + step
        mine = owner[cells]
        eta = _eta(mine, design[cells], offset[cells], candidate)
        after = _objective(mine, n_owners, eta, trials[cells], successes[cells], candidate, penalty)
        improved = pending & (after >= floor)
        result[improved] = candidate[improved]
        pending &= ~improved
        if not pending.any():
            break
        step = 0.5 * step
        cells = np.flatnonzero(pending[owner])
    return result


class CategoryTaste(ConstructorParams):
    """Subscriber x category taste logits learned from accepted and unanswered offers."""

    def __init__(
        self,
        *,
        factors: int = 4,
        window: int = 90,
        subscriber_penalty: float = 1.0,
        category_penalty: float = 1.0,
        iterations: int = 15,
        fold_in_steps: int = 4,
        random_state: int = 7,
    ) -> None:
        self.factors = factors
        self.window = window
        self.subscriber_penalty = subscriber_penalty
        self.category_penalty = category_penalty
        self.iterations = iterations
        self.fold_in_steps = fold_in_steps
        self.random_state = random_state

    def _subscriber_steps(self, rows, cols, trials, successes, params, steps: int) -> np.ndarray:
        """Subscriber parameters (rows of `params` x factors + 1) after `steps` Newton steps
        with the category side fixed (its design is built once for all the steps)."""
        design = _design(self.category_factors_[cols])
        offset = self.category_bias_[cols]
        penalty = np.full(self.factors + 1, self.subscriber_penalty)
        for _ in range(steps):
            params = _newton_step(
                rows, len(params), design, offset, trials, successes, params, penalty
            )
        return params

    def fit(self, snapshot: pl.DataFrame, categories: Sequence[str]) -> CategoryTaste:
        """Learn the category side from the snapshot's offer history; returns self."""
        self.categories_ = [str(category) for category in categories]
        n_categories = len(self.categories_)
        rows, cols, trials, successes = _observations(snapshot, self.categories_, self.window)
        self.category_factors_ = np.zeros((n_categories, self.factors))
        self.category_bias_ = np.zeros(n_categories)
        self.observations_ = int(rows.size)
        self.fitted_ = bool(rows.size >= MIN_OBSERVATIONS and successes.sum() > 0)
        if not self.fitted_:
            logger.info("taste: %d cells with responses, too few to learn from", rows.size)
            return self
        shown = np.bincount(cols, trials, minlength=n_categories)
        taken = np.bincount(cols, successes, minlength=n_categories)
        overall = taken.sum() / trials.sum()
        rate = (taken + overall) / (shown + 1.0)  # one pseudo-trial at the overall rate
        self.category_bias_ = np.log(rate / (1.0 - rate))
        rng = np.random.default_rng(self.random_state)
        self.category_factors_ = rng.normal(0.0, 0.1, (n_categories, self.factors))
        n_rows = snapshot.height
        params = np.zeros((n_rows, self.factors + 1))
        category_penalty = np.append(np.full(self.factors, self.category_penalty), 1e-3)
        for _ in range(self.iterations):
            params = self._subscriber_steps(rows, cols, trials, successes, params, steps=1)
            design = _design(params[rows, : self.factors])
            category_params = _newton_step(
                cols,
                n_categories,
                design,
                params[rows, self.factors],
                trials,
                successes,
                np.column_stack([self.category_factors_, self.category_bias_]),
                category_penalty,
            )
            self.category_factors_ = category_params[:, : self.factors]
            self.category_bias_ = category_params[:, self.factors]
        logger.info(
            "taste: %d factors from %d subscriber x category cells (%d accepts)",
            self.factors,
            rows.size,
            int(successes.sum()),
        )
        return self

    def predict_matrix(self, snapshot: pl.DataFrame) -> np.ndarray:
        """Taste logits (snapshot rows x categories_, float64) from each row's own history."""
        if not hasattr(self, "categories_"):
            raise TasteInputError("CategoryTaste is not fitted: call fit(snapshot, categories).")
        n_rows = snapshot.height
        if not self.fitted_:
            return np.zeros((n_rows, len(self.categories_)))
        rows, cols, trials, successes = _observations(snapshot, self.categories_, self.window)
        start = np.zeros((n_rows, self.factors + 1))
        params = self._subscriber_steps(rows, cols, trials, successes, start, self.fold_in_steps)
        # Summed factor by factor, not by a matrix product: BLAS rounding depends on the shape.
        logits = params[:, [self.factors]] + self.category_bias_[None, :]
        for factor in range(self.factors):
            logits = logits + params[:, [factor]] * self.category_factors_[None, :, factor]
        return logits
