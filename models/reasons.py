"""Reason codes: the features that pushed a subscriber's category propensity up, in plain words.

For every subscriber x category, LightGBM's own SHAP contributions (`pred_contrib=True`) of that
category's booster are ranked and the top features are described with
`features.catalog.describe_feature`, followed by the subscriber's level of that feature relative to
the training rows: "data used in the last 7 days (high)". Categorical features show their value:
"device operating system (ios)"; 0/1 flags show "yes" or "no". A note in brackets at the end of a
description is left out. A category scored by its prior has one fixed reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import polars as pl

from mia.errors import InputError
from mia.schema import CATEGORY, SUBSCRIBER_ID
from models.propensity import CategoryPropensity

logger = logging.getLogger(__name__)

REASONS = "reasons"
REASON_SEPARATOR = "; "
PRIOR_REASON = "overall popularity of this kind of offer"
NUMERIC_LEVELS = ("none", "low", "medium", "high")


def _default_describe() -> Callable[[str], str]:
    from features.catalog import describe_feature

    return describe_feature


def _words(description: str) -> str:
    """A feature description without its trailing note in brackets."""
    return description.split(" (", 1)[0].strip()


def _phrase_table(model: CategoryPropensity, describe: Callable[[str], str]) -> np.ndarray:
    """phrase[feature, state]: numeric states follow NUMERIC_LEVELS, categorical the level codes."""
    encoding = model.encoding_
    width = max([len(NUMERIC_LEVELS)] + [len(levels) + 1 for levels in encoding.levels.values()])
    table = np.empty((len(encoding.names), width), dtype=object)
    for index, name in enumerate(encoding.names):
        words = _words(describe(name))
        if model.binary_features_[index]:
            levels = ("none", "no", "no", "yes")
            table[index, : len(levels)] = [f"{words} ({level})" for level in levels]
        elif name in encoding.levels:
            levels = encoding.levels[name]
            table[index, : len(levels)] = [f"{words} ({level})" for level in levels]
            table[index, len(levels) :] = f"{words} (unknown)"
        else:
            table[index, : len(NUMERIC_LEVELS)] = [f"{words} ({level})" for level in NUMERIC_LEVELS]
    return table


def _states(model: CategoryPropensity, x: np.ndarray) -> np.ndarray:
    """State index per cell: numeric level (see NUMERIC_LEVELS) or categorical code."""
    encoding = model.encoding_
    low, high = model.feature_quantiles_[:, 0], model.feature_quantiles_[:, 1]
    with np.errstate(invalid="ignore"):
        numeric = np.where(x <= low, 1, np.where(x > high, 3, 2))
    numeric = np.where(model.binary_features_[None, :], np.where(x >= 0.5, 3, 1), numeric)
    numeric = np.where(np.isnan(x), 0, numeric)
    states = numeric
    for index, name in enumerate(encoding.names):
        if name in encoding.levels:
            column = x[:, index]
            unknown = len(encoding.levels[name])
            states[:, index] = np.where(np.isnan(column), unknown, np.nan_to_num(column)).astype(
                np.int64
            )
    return states


def explain(
    model: CategoryPropensity,
    snapshot: pl.DataFrame,
    top_n: int = 3,
    describe: Callable[[str], str] | None = None,
) -> pl.DataFrame:
    """[subscriber_id, category, reasons] per snapshot row x fitted category (top_n features)."""
    if top_n < 1:
        raise InputError(f"top_n == {top_n}, must be >= 1.")
    if SUBSCRIBER_ID not in snapshot.columns:
        raise InputError(f"snapshot: column {SUBSCRIBER_ID!r} missing.")
    describe = describe or _default_describe()
    x = model.encoding_.matrix(snapshot)
    phrases = _phrase_table(model, describe)
    states = _states(model, x)
    rows = np.arange(x.shape[0])[:, None]
    ids = snapshot.get_column(SUBSCRIBER_ID)
    frames = []
    for category in model.categories_:
        booster = model.boosters_.get(category)
        if booster is None:
            reasons = pl.repeat(PRIOR_REASON, x.shape[0], dtype=pl.String, eager=True)
        else:
            contributions = booster.predict(x, pred_contrib=True, num_threads=model.num_threads)
            contributions = np.asarray(contributions)[:, :-1]  # last column: expected value
            count = min(top_n, contributions.shape[1])
            # Stable order on -contribution: ties resolve by feature position, deterministically.
            top = np.argsort(-contributions, axis=1, kind="stable")[:, :count]
            words = phrases[top, states[rows, top]]
            reasons = pl.Series(REASONS, words[:, 0], dtype=pl.String)
            for position in range(1, count):
                reasons = (
                    reasons + REASON_SEPARATOR + pl.Series(words[:, position], dtype=pl.String)
                )
        frames.append(
            pl.DataFrame({SUBSCRIBER_ID: ids, CATEGORY: category, REASONS: reasons.alias(REASONS)})
        )
    return pl.concat(frames).sort(SUBSCRIBER_ID, CATEGORY)
