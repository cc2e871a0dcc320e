"""Top-k ranking metrics with stable keys, ready for `mlflow.log_metrics` (after `@` is mapped).

Binary relevance. Every metric is averaged over the users that have at least one held-out
relevant item; when no user has one, the metric is undefined and NaN (never an exception).
Ties in scores go to the lower column index, so results never depend on sort stability.

Definitions, for a user with relevant set R and top-k list r_1..r_k:
  precision@k = |top-k ∩ R| / k
  recall@k    = |top-k ∩ R| / |R|
  map@k       = sum_i P@i * [r_i in R] / min(k, |R|)       (mean average precision)
  ndcg@k      = sum_i [r_i in R] / log2(i + 1), divided by its best possible value
  coverage@k  = distinct items in any user's top-k / catalog size (over all users)
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Sequence

import numpy as np

from mia.errors import InputError

RelevantInput = np.ndarray | Sequence[Collection[int]]


class RankingInputError(InputError):
    """Scores or relevant sets given to a ranking metric break its rules."""


def _check_k(k: int) -> int:
    if not isinstance(k, int | np.integer) or k < 1:
        raise RankingInputError(f"k == {k!r}, must be an integer >= 1.")
    return int(k)


def _check_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise RankingInputError(f"scores has shape {scores.shape}, must be 2-D (users x items).")
    if scores.dtype.kind not in "fiub":
        raise RankingInputError(f"scores has dtype {scores.dtype}, must be numeric.")
    bad = ~np.isfinite(scores)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise RankingInputError(
            f"scores has {int(bad.sum())} non-finite values, e.g. at (row, column) "
            f"{list(zip(rows[:3].tolist(), cols[:3].tolist(), strict=True))}."
        )
    return scores


def relevance_matrix(relevant: RelevantInput, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (users x items) matrix from a 0/1 matrix or per-user collections of item indices."""
    n_users, n_items = shape
    if isinstance(relevant, np.ndarray) and relevant.ndim == 2:
        if relevant.shape != shape:
            raise RankingInputError(
                f"relevant has shape {relevant.shape}, must equal scores shape {shape}."
            )
        return relevant.astype(bool)
    if len(relevant) != n_users:
        raise RankingInputError(
            f"relevant has {len(relevant)} users, must equal the {n_users} rows of scores."
        )
    matrix = np.zeros(shape, dtype=bool)
    for row, items in enumerate(relevant):
        columns = np.fromiter(items, dtype=np.int64, count=len(items))
        bad = columns[(columns < 0) | (columns >= n_items)]
        if bad.size:
            raise RankingInputError(
                f"relevant[{row}] holds item indices {bad[:5].tolist()}, "
                f"must lie in [0, {n_items})."
            )
        matrix[row, columns] = True
    return matrix


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores.astype(np.float64), axis=1, kind="stable")[:, :k]


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k highest scores per row, best first; ties go to the lower column."""
    return _top_k(_check_scores(scores), _check_k(k))


def _hits(
    scores: np.ndarray, relevant: RelevantInput, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relevance of each top-k position, relevant count per user, and the top-k indices."""
    scores = _check_scores(scores)
    k = _check_k(k)
    matrix = relevance_matrix(relevant, scores.shape)
    top = _top_k(scores, k)
    return np.take_along_axis(matrix, top, axis=1), matrix.sum(axis=1), top


def _coverage(top: np.ndarray, n_items: int) -> float:
    return float(np.unique(top).size / n_items) if n_items else math.nan


def _per_user(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-user precision, recall, AP and nDCG of the users with at least one relevant item."""
    keep = n_relevant > 0
    hits = hits[keep].astype(np.float64)
    n_relevant = n_relevant[keep].astype(np.float64)
    depth = hits.shape[1]
    ranks = np.arange(1, depth + 1, dtype=np.float64)
    found = hits.sum(axis=1)
    precision_at_rank = np.cumsum(hits, axis=1) / ranks
    discounts = 1.0 / np.log2(ranks + 1.0)
    ideal_dcg = np.concatenate([[0.0], np.cumsum(discounts)])
    ideal_depth = np.minimum(n_relevant, depth).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "precision": found / k,
            "recall": found / n_relevant,
            "map": (precision_at_rank * hits).sum(axis=1) / np.minimum(n_relevant, k),
            "ndcg": (hits * discounts).sum(axis=1) / ideal_dcg[ideal_depth],
        }


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def precision_at_k(scores: np.ndarray, relevant: RelevantInput, k: int) -> float:
    """Mean share of the top-k items that are relevant."""
    hits, n_relevant, _ = _hits(scores, relevant, k)
    return _mean(_per_user(hits, n_relevant, k)["precision"])


def recall_at_k(scores: np.ndarray, relevant: RelevantInput, k: int) -> float:
    """Mean share of each user's relevant items found in the top k."""
    hits, n_relevant, _ = _hits(scores, relevant, k)
    return _mean(_per_user(hits, n_relevant, k)["recall"])


def map_at_k(scores: np.ndarray, relevant: RelevantInput, k: int) -> float:
    """Mean average precision at k (normalised by min(k, |relevant|))."""
    hits, n_relevant, _ = _hits(scores, relevant, k)
    return _mean(_per_user(hits, n_relevant, k)["map"])


def ndcg_at_k(scores: np.ndarray, relevant: RelevantInput, k: int) -> float:
    """Mean normalised discounted cumulative gain at k (binary relevance)."""
    hits, n_relevant, _ = _hits(scores, relevant, k)
    return _mean(_per_user(hits, n_relevant, k)["ndcg"])


def catalog_coverage(scores: np.ndarray, k: int) -> float:
    """Share of the items (columns) that appear in at least one user's top k."""
    scores = _check_scores(scores)
    return _coverage(_top_k(scores, _check_k(k)), scores.shape[1])


def _summary(hits: np.ndarray, n_relevant: np.ndarray, k: int, coverage: float):
    per_user = _per_user(hits, n_relevant, k)
    metrics = {f"{name}@{k}": _mean(values) for name, values in per_user.items()}
    metrics[f"coverage@{k}"] = coverage
    metrics[f"users@{k}"] = float(np.count_nonzero(n_relevant > 0))
    return metrics


def ranking_metrics(scores: np.ndarray, relevant: RelevantInput, k: int) -> dict[str, float]:
    """precision@k, recall@k, map@k, ndcg@k, coverage@k and users@k (users evaluated)."""
    hits, n_relevant, top = _hits(scores, relevant, k)
    return _summary(hits, n_relevant, int(k), _coverage(top, np.shape(scores)[1]))


def ranking_metrics_from_lists(
    recommended: Sequence[Sequence[Hashable]],
    relevant: Sequence[Collection[Hashable]],
    k: int,
    catalog_size: int,
) -> dict[str, float]:
    """The same metrics from ranked item lists (best first) and per-user relevant sets."""
    k = _check_k(k)
    if len(recommended) != len(relevant):
        raise RankingInputError(
            f"recommended has {len(recommended)} users but relevant has {len(relevant)}; "
            "must be equal."
        )
    if catalog_size < 1:
        raise RankingInputError(f"catalog_size == {catalog_size!r}, must be >= 1.")
    hits = np.zeros((len(recommended), k), dtype=bool)
    n_relevant = np.zeros(len(recommended), dtype=np.int64)
    shown: set[Hashable] = set()
    for row, (items, wanted) in enumerate(zip(recommended, relevant, strict=True)):
        top = list(items)[:k]
        if len(set(top)) != len(top):
            raise RankingInputError(f"recommended[{row}] == {top!r} repeats an item.")
        shown.update(top)
        wanted = set(wanted)
        n_relevant[row] = len(wanted)
        hits[row, : len(top)] = [item in wanted for item in top]
    return _summary(hits, n_relevant, k, len(shown) / catalog_size)
