"""Binary-classification metrics with stable keys, ready for `mlflow.log_metrics`.

Every function takes plain arrays (labels in {0, 1}, probabilities in [0, 1]) and returns floats;
a metric that is undefined on its input (e.g. ROC AUC with one class) is NaN, never an exception.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, roc_auc_score

from mia.errors import InputError

EPSILON = 1e-7
METRIC_NAMES = ("rows", "positive_rate", "roc_auc", "pr_auc", "log_loss", "ece", "lift_at_10")


class MetricInputError(InputError):
    """Labels or probabilities given to a metric break its rules."""


def _arrays(
    labels: np.ndarray | pl.Series, probabilities: np.ndarray | pl.Series, unit: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise MetricInputError(
            f"labels has {y.size} values but probabilities has {p.size}; must be equal."
        )
    bad_labels = y[(y != 0) & (y != 1)]
    if bad_labels.size:
        raise MetricInputError(f"label values {np.unique(bad_labels)[:5]} are not 0 or 1.")
    bad_p = p[~((p >= 0) & (p <= 1))] if unit else p[~np.isfinite(p)]
    if bad_p.size:
        rule = "outside [0, 1]" if unit else "not finite"
        raise MetricInputError(f"probability values {bad_p[:5]} are {rule}.")
    return y, p


def _both_classes(y: np.ndarray) -> bool:
    return y.size > 0 and 0 < y.sum() < y.size


def roc_auc(labels, probabilities) -> float:
    """Area under the ROC curve (any scores); NaN when only one class is present."""
    y, p = _arrays(labels, probabilities, unit=False)
    return float(roc_auc_score(y, p)) if _both_classes(y) else math.nan


def pr_auc(labels, probabilities) -> float:
    """Area under the precision-recall curve (average precision, any scores); NaN if one class."""
    y, p = _arrays(labels, probabilities, unit=False)
    return float(average_precision_score(y, p)) if _both_classes(y) else math.nan


def log_loss(labels, probabilities) -> float:
    """Mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7]."""
    y, p = _arrays(labels, probabilities)
    if not y.size:
        return math.nan
    p = np.clip(p, EPSILON, 1 - EPSILON)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def calibration_table(labels, probabilities, bins: int = 10) -> pl.DataFrame:
    """Equal-width probability bins: rows, mean predicted and observed rate per non-empty bin."""
    y, p = _arrays(labels, probabilities)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    rows = np.bincount(index, minlength=bins)
    predicted = np.bincount(index, weights=p, minlength=bins)
    observed = np.bincount(index, weights=y, minlength=bins)
    keep = rows > 0
    return pl.DataFrame(
        {
            "bin": np.arange(bins)[keep],
            "rows": rows[keep],
            "mean_predicted": predicted[keep] / rows[keep],
            "observed_rate": observed[keep] / rows[keep],
        }
    )


def expected_calibration_error(labels, probabilities, bins: int = 10) -> float:
    """Row-weighted mean |mean predicted - observed rate| over equal-width bins."""
    table = calibration_table(labels, probabilities, bins)
    if table.is_empty():
        return math.nan
    gap = (table["mean_predicted"] - table["observed_rate"]).abs()
    return float((gap * table["rows"]).sum() / table["rows"].sum())


def _descending_order(p: np.ndarray) -> np.ndarray:
    # Stable sort on -p: ties keep input order, so results never depend on the sort algorithm.
    return np.argsort(-p, kind="stable")


def lift_at(labels, probabilities, fraction: float = 0.1) -> float:
    """Positive rate among the top `fraction` by score divided by the overall rate."""
    y, p = _arrays(labels, probabilities, unit=False)
    if not 0 < fraction <= 1:
        raise MetricInputError(f"fraction == {fraction!r}, must be in (0, 1].")
    if not y.size or y.sum() == 0:
        return math.nan
    top = max(1, int(math.ceil(fraction * y.size)))
    chosen = y[_descending_order(p)[:top]]
    return float(chosen.mean() / y.mean())


def lift_table(labels, probabilities, buckets: int = 10) -> pl.DataFrame:
    """Cumulative lift by population share: bucket, share, cumulative rate, lift, gain."""
    y, p = _arrays(labels, probabilities, unit=False)
    ordered = y[_descending_order(p)]
    total = max(ordered.sum(), 1.0)
    base = ordered.mean() if ordered.size else math.nan
    rows = []
    for bucket in range(1, buckets + 1):
        top = max(1, int(math.ceil(bucket / buckets * ordered.size)))
        rate = float(ordered[:top].mean()) if ordered.size else math.nan
        rows.append(
            {
                "bucket": bucket,
                "population_share": bucket / buckets,
                "cumulative_rate": rate,
                "lift": rate / base if base else math.nan,
                "gain": float(ordered[:top].sum() / total),
            }
        )
    return pl.DataFrame(rows)


def binary_metrics(labels, probabilities, prefix: str = "") -> dict[str, float]:
    """ROC AUC, PR AUC, log loss, ECE, lift at 10%, rows and positive rate, keyed `prefix.name`."""
    y, p = _arrays(labels, probabilities)
    values = {
        "rows": float(y.size),
        "positive_rate": float(y.mean()) if y.size else math.nan,
        "roc_auc": roc_auc(y, p),
        "pr_auc": pr_auc(y, p),
        "log_loss": log_loss(y, p),
        "ece": expected_calibration_error(y, p),
        "lift_at_10": lift_at(y, p, 0.1),
    }
    return {(f"{prefix}.{name}" if prefix else name): value for name, value in values.items()}


def grouped_metrics(
    frame: pl.DataFrame, group: str, label: str, probability: str, prefix: str = ""
) -> dict[str, float]:
    """`binary_metrics` per value of `group` (keys `prefix.<value>.<metric>`), groups sorted."""
    result: dict[str, float] = {}
    for (value,), part in frame.sort(group).group_by(group, maintain_order=True):
        key = f"{prefix}.{value}" if prefix else str(value)
        result.update(binary_metrics(part[label].to_numpy(), part[probability].to_numpy(), key))
    return result


def finite(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics whose values are finite numbers (what a tracking store accepts)."""
    return {key: value for key, value in metrics.items() if math.isfinite(value)}
