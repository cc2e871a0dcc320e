"""Collaborative filtering: implicit-feedback ALS on the subscriber x offer interaction matrix.

Interactions come from offer events: an accept is strong evidence of interest, a click medium
evidence. The optional `consumption` table (what subscribers watch, listen to, play or buy on
their own) adds `consumption_weight` per consumed item: an item that is a catalog offer is that
offer's column, and any other item (content outside the catalog) is a column of its own, which
shapes the subscribers' factors but is never scored as an offer.

An impression without a response is *excluded* by default (weight 0): the logging policy chose
to show it, so it says little about the subscriber, and ALS already treats every unobserved cell
as a weak negative. A dismiss never counts as positive: its weight must be <= 0,
and a negative weight cancels evidence from the same pair. Pairs whose confidence is not
positive are dropped.

`ALSRecommender` wraps `implicit.cpu.als.AlternatingLeastSquares`. Every implicit call runs
under `threadpool_limits(1, "blas")`; with the seed fixed two fits give identical factors
(each ALS half-step solves users or items independently, so implicit's own `num_threads` does
not change results; one thread is the default all the same, to share the machine fairly).

Scores (factor dot products) are summed factor by factor in float64, not by a BLAS matrix
product: BLAS rounds a row's dot products differently depending on the shape of the matrix and
the row's position in it, so the same subscriber would score differently in another shard or
chunk. Each score depends only on its own two factor vectors.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from mia.errors import InputError
from mia.lake import end_of_day
from mia.schema import (
    CF_SCORE,
    CONFIDENCE,
    EVENT,
    ITEM_ID,
    OFFER_EVENTS,
    OFFER_ID,
    SUBSCRIBER_ID,
    TS,
)
from models.params import ConstructorParams
from models.ranking_metrics import ranking_metrics

logger = logging.getLogger(__name__)

# Confidence each event adds to its subscriber x offer pair (see the module docstring).
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "accept": 4.0,
    "click": 1.0,
    "impression": 0.0,
    "dismiss": 0.0,
}
# Confidence one consumption of an item adds (the weight of a click: a choice, not a purchase).
DEFAULT_CONSUMPTION_WEIGHT = 1.0
INTERACTION_COLUMNS = (SUBSCRIBER_ID, OFFER_ID, CONFIDENCE)
_POSITION = "_position"
_CONSUMED = "_consumed"
_CHUNK_ROWS = 1_000_000
_SCORE_BLOCK = 1024  # subscribers per block of `score`: the block's sums stay in cache


class InteractionError(InputError):
    """Offer events or interactions given to collaborative filtering break a rule."""


def _require_columns(columns: Sequence[str], required: Sequence[str], table: str) -> None:
    missing = [name for name in required if name not in columns]
    if missing:
        raise InteractionError(
            f"{table}: missing columns {missing}; has {list(columns)}, needs {list(required)}."
        )


def _event_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """Default event weights overridden by `weights`, validated."""
    merged = dict(DEFAULT_EVENT_WEIGHTS)
    for event, weight in (weights or {}).items():
        if event not in OFFER_EVENTS:
            raise InteractionError(
                f"weights: unknown event {event!r}, must be one of {list(OFFER_EVENTS)}."
            )
        merged[event] = float(weight)
    for event, weight in merged.items():
        if not np.isfinite(weight):
            raise InteractionError(f"weights[{event!r}] == {weight!r}, must be finite.")
        if event == "dismiss" and weight > 0:
            raise InteractionError(
                f"weights['dismiss'] == {weight!r}, must be <= 0: a dismiss is not a positive."
            )
        if event != "dismiss" and weight < 0:
            raise InteractionError(f"weights[{event!r}] == {weight!r}, must be >= 0.")
    return merged


def factor_dot(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Dot products of factor vectors along the last axis (shapes broadcast), as float32.

    Summed in float64 in factor order, so each result depends only on its own two vectors, never
    on the other rows computed with it (float32 products are exact in float64).
    """
    total = np.zeros(np.broadcast_shapes(left.shape[:-1], right.shape[:-1]), dtype=np.float64)
    for factor in range(left.shape[-1]):
        total += left[..., factor].astype(np.float64) * right[..., factor]
    return total.astype(np.float32)


def build_interactions(
    offer_events: pl.LazyFrame | pl.DataFrame,
    as_of: dt.date,
    lookback_days: int = 90,
    weights: dict[str, float] | None = None,
    consumption: pl.LazyFrame | pl.DataFrame | None = None,
    consumption_weight: float = DEFAULT_CONSUMPTION_WEIGHT,
) -> pl.DataFrame:
    """[subscriber_id, offer_id, confidence] from offer events (and consumption, when given) in
    (as_of - lookback, as_of]; a consumed item's id stands in the offer_id column."""
    if lookback_days < 1:
        raise InteractionError(f"lookback_days == {lookback_days!r}, must be >= 1.")
    if not (np.isfinite(consumption_weight) and consumption_weight >= 0):
        raise InteractionError(f"consumption_weight == {consumption_weight!r}, must be >= 0.")
    event_weights = _event_weights(weights)
    events = offer_events.lazy()
    _require_columns(
        events.collect_schema().names(), (SUBSCRIBER_ID, OFFER_ID, TS, EVENT), "offer_events"
    )
    start = end_of_day(as_of - dt.timedelta(days=lookback_days))
    in_window = (pl.col(TS) >= start) & (pl.col(TS) < end_of_day(as_of))
    window = events.filter(in_window)
    unknown_query = (
        window.filter(~pl.col(EVENT).is_in(OFFER_EVENTS))
        .select(pl.col(EVENT).unique().sort())
        .head(5)
    )
    weighted = [event for event in OFFER_EVENTS if event_weights[event] != 0.0]
    # Integer counts per event, then one fixed-order weighted sum: exact and order-independent.
    counts_query = (
        window.filter(pl.col(EVENT).is_in(weighted))
        .group_by(SUBSCRIBER_ID, OFFER_ID)
        .agg((pl.col(EVENT) == event).sum().alias(event) for event in weighted)
    )
    queries = [unknown_query, counts_query]
    if consumption is not None and consumption_weight > 0:
        consumed = consumption.lazy()
        _require_columns(
            consumed.collect_schema().names(), (SUBSCRIBER_ID, ITEM_ID, TS), "consumption"
        )
        queries.append(
            consumed.filter(in_window)
            .group_by(SUBSCRIBER_ID, pl.col(ITEM_ID).alias(OFFER_ID))
            .agg(pl.len().alias(_CONSUMED))
        )
    unknown, counts, *consumed_counts = pl.collect_all(queries, engine="streaming")
    if unknown.height:
        raise InteractionError(
            f"offer_events: column {EVENT!r} holds values {unknown[EVENT].to_list()} "
            f"outside {list(OFFER_EVENTS)}."
        )
    confidence = pl.lit(0.0, dtype=pl.Float64)
    for event in weighted:
        confidence = confidence + pl.col(event).cast(pl.Float64) * event_weights[event]
    if consumed_counts:
        counts = counts.join(
            consumed_counts[0], on=[SUBSCRIBER_ID, OFFER_ID], how="full", coalesce=True
        ).with_columns(pl.col(*weighted, _CONSUMED).fill_null(0))
        confidence = confidence + pl.col(_CONSUMED).cast(pl.Float64) * consumption_weight
    interactions = (
        counts.select(SUBSCRIBER_ID, OFFER_ID, confidence.alias(CONFIDENCE))
        .filter(pl.col(CONFIDENCE) > 0)
        .sort(SUBSCRIBER_ID, OFFER_ID)
    )
    logger.info(
        "interactions as of %s (%d days): %d pairs, %d subscribers",
        as_of,
        lookback_days,
        interactions.height,
        interactions[SUBSCRIBER_ID].n_unique(),
    )
    return interactions


def _check_interactions(interactions: pl.DataFrame, table: str = "interactions") -> pl.DataFrame:
    """The interactions frame, validated: columns, finite positive confidence, unique pairs."""
    _require_columns(interactions.columns, INTERACTION_COLUMNS, table)
    frame = interactions.select(INTERACTION_COLUMNS)
    bad = frame.filter(~(pl.col(CONFIDENCE).is_finite() & (pl.col(CONFIDENCE) > 0)))
    if bad.height:
        raise InteractionError(
            f"{table}: column {CONFIDENCE!r} must be finite and > 0; {bad.height} rows break it, "
            f"e.g. {bad.head(3).rows()}."
        )
    duplicated = frame.filter(pl.struct(SUBSCRIBER_ID, OFFER_ID).is_duplicated())
    if duplicated.height:
        raise InteractionError(
            f"{table}: ({SUBSCRIBER_ID}, {OFFER_ID}) must be unique; {duplicated.height} rows "
            f"repeat a pair, e.g. {duplicated.head(3).rows()}."
        )
    return frame


def _as_ids(index: pl.Series, values: Any, what: str) -> pl.Series:
    """`values` as a Series of the id type of `index`."""
    try:
        return pl.Series("id", values).cast(index.dtype, strict=True)
    except (pl.exceptions.PolarsError, TypeError) as error:
        raise InteractionError(
            f"{what}: cannot read the given ids as {index.dtype}: {error}"
        ) from error


def _positions(index: pl.Series, values: Any, what: str) -> np.ndarray:
    """Position of each value in the sorted id `index`; -1 where the id is unknown."""
    series = _as_ids(index, values, what)
    lookup = pl.DataFrame({"id": index, _POSITION: np.arange(index.len(), dtype=np.int64)})
    found = series.to_frame().join(lookup, on="id", how="left", maintain_order="left")
    return found[_POSITION].fill_null(-1).to_numpy()


def _check_positive_int(name: str, value: Any, low: int = 1) -> None:
    if not isinstance(value, int | np.integer) or value < low:
        raise InputError(f"{name} == {value!r}, must be an integer >= {low}.")


class ALSRecommender(ConstructorParams):
    """Implicit-feedback ALS over subscribers x offers with fold-in and a popularity fallback.

    Scores: a subscriber seen at fit time gets the dot product of the fitted factors (extra
    `interactions` are not used for them); an unseen subscriber with rows in `interactions` is
    folded in with implicit's `recalculate_user` (the model is not changed); anyone else gets
    the offer's popularity, the share of fitted subscribers who interacted with it. An offer
    unseen at fit time scores 0. Offers are repeatable, so nothing is filtered by default.
    """

    def __init__(
        self,
        factors: int = 32,
        regularization: float = 0.05,
        iterations: int = 15,
        alpha: float = 10.0,
        random_state: int = 7,
        num_threads: int = 1,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.iterations = iterations
        self.alpha = alpha
        self.random_state = random_state
        self.num_threads = num_threads

    def _check_params(self) -> None:
        _check_positive_int("factors", self.factors)
        _check_positive_int("iterations", self.iterations)
        _check_positive_int("num_threads", self.num_threads, low=0)
        if not self.regularization >= 0:
            raise InputError(f"regularization == {self.regularization!r}, must be >= 0.")
        if not self.alpha > 0:
            raise InputError(f"alpha == {self.alpha!r}, must be > 0.")

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise InputError("ALSRecommender is not fitted yet: call fit(interactions) first.")

    def fit(self, interactions: pl.DataFrame) -> ALSRecommender:
        """Learn factors from [subscriber_id, offer_id, confidence]; returns self."""
        self._check_params()
        frame = _check_interactions(interactions)
        if frame.height == 0:
            raise InteractionError("interactions: no rows to fit on.")
        self.user_index_ = frame[SUBSCRIBER_ID].unique().sort()
        self.item_index_ = frame[OFFER_ID].unique().sort()
        self.user_items_ = self._matrix(frame, self.user_index_)
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                num_threads=self.num_threads,
                random_state=self.random_state,
            )
            model.fit(self.user_items_, show_progress=False)
        self.model_ = model
        users_per_item = np.diff(self.user_items_.tocsc().indptr)
        self.popularity_ = (users_per_item / self.user_index_.len()).astype(np.float32)
        logger.info(
            "ALS fitted: %d subscribers x %d offers, %d interactions, %d factors",
            self.user_index_.len(),
            self.item_index_.len(),
            frame.height,
            self.factors,
        )
        return self

    def _matrix(self, frame: pl.DataFrame, users: pl.Series) -> sp.csr_matrix:
        """CSR (len(users) x offers) of confidences; offers unknown to the model are dropped."""
        rows = _positions(users, frame[SUBSCRIBER_ID], "interactions")
        cols = _positions(self.item_index_, frame[OFFER_ID], "interactions")
        keep = (rows >= 0) & (cols >= 0)
        data = frame[CONFIDENCE].to_numpy().astype(np.float32)[keep]
        matrix = sp.csr_matrix(
            (data, (rows[keep], cols[keep])), shape=(users.len(), self.item_index_.len())
        )
        matrix.sort_indices()
        return matrix

    def _user_factors(
        self, subscriber_ids: Any, interactions: pl.DataFrame | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Factors per subscriber and a mask of those that have them (fitted or folded in)."""
        ids = _as_ids(self.user_index_, subscriber_ids, "subscriber_ids")
        positions = _positions(self.user_index_, ids, "subscriber_ids")
        factors = np.zeros((positions.size, self.model_.factors), dtype=np.float32)
        known = positions >= 0
        factors[known] = self.model_.user_factors[positions[known]]
        if interactions is not None and not known.all():
            history = _check_interactions(interactions)
            unseen = np.flatnonzero(~known)
            new_users = ids.gather(unseen)
            history = history.filter(pl.col(SUBSCRIBER_ID).is_in(new_users.implode()))
            distinct = new_users.unique().sort()
            matrix = self._matrix(history, distinct)
            has_history = np.diff(matrix.indptr) > 0
            if has_history.any():
                with threadpool_limits(1, "blas"):
                    folded = self.model_.recalculate_user(
                        np.flatnonzero(has_history), matrix[has_history]
                    )
                table = np.zeros((distinct.len(), self.model_.factors), dtype=np.float32)
                table[has_history] = folded
                where = _positions(distinct, new_users, "subscriber_ids")
                factors[unseen] = table[where]
                known[unseen] = has_history[where]
                logger.debug("folded in %d unseen subscribers", int(has_history.sum()))
        return factors, known

    def score(
        self,
        subscriber_ids: Any,
        offer_ids: Any,
        interactions: pl.DataFrame | None = None,
    ) -> np.ndarray:
        """Dense float32 (subscribers x offers) scores; fold-in, then popularity, as fallbacks."""
        self._check_fitted()
        items = _positions(self.item_index_, offer_ids, "offer_ids")
        factors, has_factors = self._user_factors(subscriber_ids, interactions)
        scores = np.zeros((factors.shape[0], items.size), dtype=np.float32)
        known_items = np.flatnonzero(items >= 0)
        item_factors = self.model_.item_factors[items[known_items]][None, :, :]
        with_factors = np.flatnonzero(has_factors)
        for start in range(0, with_factors.size, _SCORE_BLOCK):
            block = with_factors[start : start + _SCORE_BLOCK]
            scores[np.ix_(block, known_items)] = factor_dot(factors[block, None, :], item_factors)
        scores[np.ix_(np.flatnonzero(~has_factors), known_items)] = self.popularity_[
            items[known_items]
        ]
        return scores

    def predict_frame(self, pairs: pl.DataFrame) -> pl.DataFrame:
        """`pairs` with a `cf_score` column: factor dot product, popularity for unseen users."""
        self._check_fitted()
        _require_columns(pairs.columns, (SUBSCRIBER_ID, OFFER_ID), "pairs")
        users = _positions(self.user_index_, pairs[SUBSCRIBER_ID], "pairs")
        items = _positions(self.item_index_, pairs[OFFER_ID], "pairs")
        scores = np.zeros(pairs.height, dtype=np.float32)
        both = np.flatnonzero((users >= 0) & (items >= 0))
        for start in range(0, both.size, _CHUNK_ROWS):
            rows = both[start : start + _CHUNK_ROWS]
            scores[rows] = factor_dot(
                self.model_.user_factors[users[rows]], self.model_.item_factors[items[rows]]
            )
        popular = np.flatnonzero((users < 0) & (items >= 0))
        scores[popular] = self.popularity_[items[popular]]
        return pairs.with_columns(pl.Series(CF_SCORE, scores, dtype=pl.Float32))

    def _history(self, subscriber_id: Any, interactions: pl.DataFrame | None) -> np.ndarray:
        """Offer positions the subscriber interacted with, at fit time or in `interactions`."""
        liked: list[np.ndarray] = []
        position = _positions(self.user_index_, [subscriber_id], "subscriber_id")[0]
        if position >= 0:
            row = self.user_items_[position]
            liked.append(row.indices)
        if interactions is not None:
            history = _check_interactions(interactions).filter(
                pl.col(SUBSCRIBER_ID) == subscriber_id
            )
            liked.append(_positions(self.item_index_, history[OFFER_ID], "interactions"))
        liked_items = np.unique(np.concatenate(liked)) if liked else np.empty(0, dtype=np.int64)
        return liked_items[liked_items >= 0]

    def recommend(
        self,
        subscriber_id: Any,
        n: int = 10,
        interactions: pl.DataFrame | None = None,
        filter_already_liked: bool = False,
    ) -> list[tuple[str, float]]:
        """Top-n (offer_id, score), best first; offers are repeatable, so none is filtered."""
        self._check_fitted()
        _check_positive_int("n", n)
        scores = self.score([subscriber_id], self.item_index_, interactions)[0]
        order = np.argsort(-scores, kind="stable")
        if filter_already_liked:
            order = order[~np.isin(order, self._history(subscriber_id, interactions))]
        offers = self.item_index_.to_list()
        return [(offers[item], float(scores[item])) for item in order[:n]]

    def similar_offers(self, offer_id: str, n: int = 5) -> list[tuple[str, float]]:
        """Top-n offers by cosine similarity of item factors; [] for an offer unseen at fit."""
        self._check_fitted()
        _check_positive_int("n", n)
        position = _positions(self.item_index_, [offer_id], "offer_id")[0]
        if position < 0:
            logger.debug("similar_offers: %r was not seen at fit time", offer_id)
            return []
        factors = self.model_.item_factors.astype(np.float64)
        norms = np.linalg.norm(factors, axis=1)
        norms[norms == 0] = 1e-10
        similarity = factors @ factors[position] / (norms * norms[position])
        order = np.argsort(-similarity, kind="stable")
        order = order[order != position][:n]
        offers = self.item_index_.to_list()
        return [(offers[item], float(similarity[item])) for item in order]


def _relevant_sets(valid: pl.DataFrame, users: pl.Series, offers: pl.Series) -> list[np.ndarray]:
    """Per user (in `users` order) the column positions in `offers` of their validation offers."""
    rows = _positions(users, valid[SUBSCRIBER_ID], "valid")
    cols = _positions(offers, valid[OFFER_ID], "valid")
    order = np.argsort(rows, kind="stable")
    rows, cols = rows[order], cols[order]
    bounds = np.searchsorted(rows, np.arange(users.len() + 1))
    return [cols[bounds[i] : bounds[i + 1]] for i in range(users.len())]


def _better(value: float, incumbent: float) -> bool:
    """True when `value` beats `incumbent`; NaN never beats anything and loses to any number."""
    return not np.isnan(value) and (np.isnan(incumbent) or value > incumbent)


def tune_als(
    train: pl.DataFrame,
    valid: pl.DataFrame,
    grid: dict,
    k: int = 5,
    random_state: int = 7,
) -> tuple[dict, dict[str, float]]:
    """Grid search of ALSRecommender parameters on a validation window, chosen by MAP@k."""
    known = set(ALSRecommender().get_params()) - {"random_state"}
    unknown = sorted(set(grid) - known)
    if unknown:
        raise InputError(f"grid: unknown parameters {unknown}, must be among {sorted(known)}.")
    empty = sorted(name for name, values in grid.items() if len(values) == 0)
    if empty:
        raise InputError(f"grid: parameters {empty} have no values to try.")
    train = _check_interactions(train, "train")
    valid = _check_interactions(valid, "valid")
    if valid.height == 0:
        raise InteractionError("valid: no rows to evaluate on.")
    users = valid[SUBSCRIBER_ID].unique().sort()
    offers = pl.concat([train[OFFER_ID], valid[OFFER_ID]]).unique().sort()
    relevant = _relevant_sets(valid, users, offers)
    names = sorted(grid)
    best: tuple[dict, dict[str, float]] | None = None
    key = f"map@{k}"
    for values in itertools.product(*(grid[name] for name in names)):
        params = {**dict(zip(names, values, strict=True)), "random_state": random_state}
        model = ALSRecommender(**params).fit(train)
        metrics = ranking_metrics(model.score(users, offers), relevant, k)
        logger.info("tune_als %s -> %s=%.4f", params, key, metrics[key])
        if best is None or _better(metrics[key], best[1][key]):
            best = (model.get_params(), metrics)
    assert best is not None
    return best
