"""Drift of features and scores between two nights: the population stability index (PSI)."""

from __future__ import annotations

import numpy as np
import polars as pl

# Conventional PSI reading: below 0.1 stable, 0.1-0.25 moderate shift, above 0.25 major shift.
PSI_NOTICE = 0.10
PSI_WARNING = 0.25
_EPSILON = 1e-4


def population_stability_index(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI of `current` against `reference`, on quantile bins of the reference."""
    reference = np.asarray(reference, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    reference = reference[np.isfinite(reference)]
    current = current[np.isfinite(current)]
    if reference.size == 0 or current.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)))
    if edges.size < 2:  # a constant reference: compare the share equal to it
        same_reference = 1.0
        same_current = float(np.mean(current == reference[0]))
        expected = np.array([same_reference, 1.0 - same_reference]) + _EPSILON
        actual = np.array([same_current, 1.0 - same_current]) + _EPSILON
    else:
        inner = edges[1:-1]
        expected = np.bincount(
            np.searchsorted(inner, reference, side="right"), minlength=inner.size + 1
        )
        actual = np.bincount(
            np.searchsorted(inner, current, side="right"), minlength=inner.size + 1
        )
        expected = expected / expected.sum() + _EPSILON
        actual = actual / actual.sum() + _EPSILON
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift_level(psi: float) -> str:
    """'stable', 'notice' or 'warning' for a PSI value."""
    if not np.isfinite(psi) or psi < PSI_NOTICE:
        return "stable"
    return "notice" if psi < PSI_WARNING else "warning"


def drift_table(
    reference: pl.DataFrame | pl.LazyFrame,
    current: pl.DataFrame | pl.LazyFrame,
    columns: list[str],
    bins: int = 10,
) -> pl.DataFrame:
    """PSI per numeric column present in both frames: [column, psi, level], worst first.

    Columns are read one at a time, so over LazyFrames only one column of each night is held.
    """
    reference, current = reference.lazy(), current.lazy()
    reference_schema = reference.collect_schema()
    current_columns = set(current.collect_schema().names())
    rows = []
    for column in columns:
        if column not in reference_schema or column not in current_columns:
            continue
        if not reference_schema[column].is_numeric():
            continue
        before, after = (
            frame.select(pl.col(column).cast(pl.Float64)).collect(engine="streaming")[column]
            for frame in (reference, current)
        )
        psi = population_stability_index(before.to_numpy(), after.to_numpy(), bins=bins)
        rows.append({"column": column, "psi": round(psi, 6), "level": drift_level(psi)})
    schema = {"column": pl.String, "psi": pl.Float64, "level": pl.String}
    return pl.DataFrame(rows, schema=schema).sort(
        ["psi", "column"], descending=[True, False], nulls_last=True
    )
