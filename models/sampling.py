"""Training rows at scale: rows sampled by label and weighted, reproducibly.

At a million subscribers a weekly retrain has about 20M labelled subscriber x category rows over
its snapshots, each with some 400 features: more than a 2-core, 24 GB machine can hold as a float
matrix. Accepts are rare (about one row in eleven), and it is the negatives that are plentiful, so
above `max_rows` a share of the negatives is kept and each kept negative weighs 1 / its rate: the
weighted rows estimate the same loss as all rows (the booster's base rate and splits stay
unbiased). Positives are all kept while they fill at most half of `max_rows`; beyond that (1.8M
accepts over 11 weeks at a million subscribers) they are sampled and weighted the same way, so
that the rows stay about `max_rows` at any size. Which rows are kept is a hash of subscriber,
snapshot and category with the seed, so a retrain on the same data keeps the same rows, and a
subscriber's rows do not depend on which other subscribers are in the data.

Validation rows (early stopping, calibration) are sampled uniformly instead, without weights, so
that calibration still learns the true rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from mia.hashing import unit_interval
from mia.schema import CATEGORY, LABEL, SNAPSHOT_DATE, SUBSCRIBER_ID

WEIGHT = "weight"
_SALT = "mia-negatives-v1"


@dataclass(frozen=True)
class LabelRates:
    """The share of positive and of negative rows a training sample keeps."""

    positive: float = 1.0
    negative: float = 1.0


def label_rates(rows: int, positives: int, max_rows: int) -> LabelRates:
    """The shares to keep so that about `max_rows` rows remain: every row when all fit, else at
    most `max_rows` / 2 positives and negatives for the rest (never below one in a thousand)."""
    if rows <= max_rows:
        return LabelRates()
    positive = min(1.0, max_rows / 2 / positives) if positives else 1.0
    negatives = rows - positives
    negative = min(1.0, max((max_rows - positive * positives) / negatives, 1e-3))
    return LabelRates(positive, negative)


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


def sample_by_label(labels: pl.DataFrame, rates: LabelRates, seed: int) -> pl.DataFrame:
    """A `rates.positive` share of the positive rows and a `rates.negative` share of the
    negatives, each kept row with WEIGHT 1 / its rate; at rates of 1 the labels as they are (no
    weights)."""
    for name, rate in (("positive", rates.positive), ("negative", rates.negative)):
        if not 0 < rate <= 1:
            raise ValueError(f"{name} rate == {rate!r}, must be in (0, 1].")
    if rates == LabelRates():
        return labels
    rate = pl.when(pl.col(LABEL) == 0).then(rates.negative).otherwise(rates.positive)
    kept = labels.filter(pl.lit(_draws(labels, seed, "train")) < rate)
    return kept.with_columns((1.0 / rate).alias(WEIGHT))


def sample_rows(labels: pl.DataFrame, max_rows: int, seed: int) -> pl.DataFrame:
    """About `max_rows` of the rows, each kept with the same chance (all when they fit)."""
    if labels.height <= max_rows:
        return labels
    return labels.filter(_draws(labels, seed, "valid") < max_rows / labels.height)
