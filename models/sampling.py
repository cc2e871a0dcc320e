"""Training rows at scale: every positive kept, negatives sampled and weighted.

At a million subscribers a weekly retrain has about 20M labelled subscriber x category rows over
its snapshots, each with some 400 features: more than a 2-core, 24 GB machine can hold as a float
matrix. Accepts are rare (about one row in eleven), and it is the negatives that are plentiful, so
above `max_rows` a share `rate` of the negatives is kept and each kept negative weighs 1 / rate:
the weighted rows estimate the same loss as all rows (the booster's base rate and splits stay
unbiased), and every positive is still seen. Which negatives are kept is a hash of subscriber,
snapshot and category with the seed, so a retrain on the same data keeps the same rows, and a
subscriber's rows do not depend on which other subscribers are in the data.

Validation rows (early stopping, calibration) are sampled uniformly instead, without weights, so
that calibration still learns the true rate.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from mia.hashing import unit_interval
from mia.schema import CATEGORY, LABEL, SNAPSHOT_DATE, SUBSCRIBER_ID

WEIGHT = "weight"
_SALT = "mia-negatives-v1"


def negative_rate(rows: int, positives: int, max_rows: int) -> float:
    """The share of negatives to keep so that about `max_rows` rows remain (1.0 when all fit;
    never below what keeps one negative in a thousand)."""
    if rows <= max_rows:
        return 1.0
    negatives = rows - positives
    return min(1.0, max((max_rows - positives) / negatives, 1e-3))


def _draws(labels: pl.DataFrame, seed: int, kind: str) -> pl.Series:
    """A stable number in [0, 1) per row, from its subscriber, snapshot date and category."""
    keys = labels.select(
        SUBSCRIBER_ID, pl.col(SNAPSHOT_DATE).cast(pl.String), pl.col(CATEGORY).cast(pl.String)
    )
    draws = np.zeros(labels.height)
    indexed = keys.with_row_index("row")
    for (date, category), group in indexed.group_by(SNAPSHOT_DATE, CATEGORY, maintain_order=True):
        salt = f"{_SALT}-{kind}-{seed}-{date}-{category}"
        rows = group.get_column("row").to_numpy()
        draws[rows] = unit_interval(group.get_column(SUBSCRIBER_ID).to_numpy(), salt)
    return pl.Series("draw", draws)


def sample_negatives(labels: pl.DataFrame, rate: float, seed: int) -> pl.DataFrame:
    """Every positive and a `rate` share of the negatives, with WEIGHT 1 / rate on the kept
    negatives and 1 on positives; at rate 1.0 the labels as they are (no weights)."""
    if not 0 < rate <= 1:
        raise ValueError(f"rate == {rate!r}, must be in (0, 1].")
    negative = pl.col(LABEL) == 0
    if rate == 1.0:
        return labels
    kept = labels.filter(~negative | (_draws(labels, seed, "train") < rate))
    return kept.with_columns(pl.when(negative).then(1.0 / rate).otherwise(1.0).alias(WEIGHT))


def sample_rows(labels: pl.DataFrame, max_rows: int, seed: int) -> pl.DataFrame:
    """About `max_rows` of the rows, each kept with the same chance (all when they fit)."""
    if labels.height <= max_rows:
        return labels
    return labels.filter(_draws(labels, seed, "valid") < max_rows / labels.height)
