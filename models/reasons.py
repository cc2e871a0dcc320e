"""Reason codes: the features that pushed a subscriber's category propensity up, in plain words.

For every subscriber x category, the SHAP contributions of that category's booster (LightGBM's
`pred_contrib`, from per-tree tables where the trees are small: `models.tree_shap`) are ranked
and the top features are described with `features.catalog.describe_feature`, followed by the
subscriber's level of that feature relative to the training rows: "data used in the last 7 days
(high)". Categorical features show their value: "device operating system (ios)"; 0/1 flags show
"yes" or "no". A note in brackets at the end of a description is left out. A category scored by
its prior has one fixed reason.

SHAP is the costly part of scoring, so `explain` can be limited to given subscriber x category
pairs (e.g. the published offers); each pair's reasons are the same either way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl

from mia.errors import InputError
from mia.schema import CATEGORY, SUBSCRIBER_ID
from models.propensity import CategoryPropensity
from models.tree_shap import shap_contributions

logger = logging.getLogger(__name__)

REASONS = "reasons"
REASON_SEPARATOR = "; "
PRIOR_REASON = "overall popularity of this kind of offer"
NUMERIC_LEVELS = ("none", "low", "medium", "high")
_ROW = "_row"  # position of a pair's subscriber in the feature matrix


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


def _cell_states(model: CategoryPropensity, values: np.ndarray, features: np.ndarray) -> np.ndarray:
    """State index of cells (feature value, feature position): numeric level (NUMERIC_LEVELS) or
    categorical code."""
    encoding = model.encoding_
    low = model.feature_quantiles_[features, 0]
    high = model.feature_quantiles_[features, 1]
    with np.errstate(invalid="ignore"):
        numeric = np.where(values <= low, 1, np.where(values > high, 3, 2))
    numeric = np.where(model.binary_features_[features], np.where(values >= 0.5, 3, 1), numeric)
    numeric = np.where(np.isnan(values), 0, numeric)
    categorical = np.zeros(len(encoding.names), dtype=bool)
    unknown = np.zeros(len(encoding.names), dtype=np.int64)
    for index, name in enumerate(encoding.names):
        if name in encoding.levels:
            categorical[index], unknown[index] = True, len(encoding.levels[name])
    is_categorical = categorical[features]
    codes = np.where(np.isnan(values), unknown[features], np.where(is_categorical, values, 0.0))
    return np.where(is_categorical, codes.astype(np.int64), numeric)


def top_features(contributions: np.ndarray, count: int) -> np.ndarray:
    """Column positions of the `count` largest values per row, ties to the lower position.

    The same as `np.argsort(-contributions, axis=1, kind="stable")[:, :count]`, found by `count`
    argmax passes over the columns that can win: every column with a non-zero value plus the first
    `count` all-zero columns (a feature no tree splits on contributes exactly zero).
    """
    nonzero = (contributions != 0).any(axis=0)
    candidates = np.flatnonzero(nonzero | (np.cumsum(~nonzero) <= count))
    values = contributions[:, candidates]
    rows = np.arange(values.shape[0])
    top = np.empty((values.shape[0], count), dtype=np.int64)
    for position in range(count):
        best = np.argmax(values, axis=1)
        top[:, position] = candidates[best]
        values[rows, best] = -np.inf
    return top


def _pair_positions(
    snapshot: pl.DataFrame, pairs: pl.DataFrame, categories: list[str]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Snapshot rows that `pairs` need, and the pairs with their row in those (`_row`)."""
    missing = [column for column in (SUBSCRIBER_ID, CATEGORY) if column not in pairs.columns]
    if missing:
        raise InputError(f"pairs: columns {missing} missing.")
    wanted = (
        pairs.select(SUBSCRIBER_ID, pl.col(CATEGORY).cast(pl.String))
        .unique()
        .filter(pl.col(CATEGORY).is_in(categories))
    )
    subscribers = wanted.select(SUBSCRIBER_ID).unique().sort(SUBSCRIBER_ID)
    rows = subscribers.join(snapshot, on=SUBSCRIBER_ID, how="left", maintain_order="left")
    absent = subscribers.join(snapshot, on=SUBSCRIBER_ID, how="anti")
    if absent.height:
        raise InputError(
            f"pairs: column {SUBSCRIBER_ID!r} has {absent.height} subscribers missing from the "
            f"snapshot, e.g. {absent[SUBSCRIBER_ID].sort().head(5).to_list()}."
        )
    positions = subscribers.with_row_index(_ROW).with_columns(pl.col(_ROW).cast(pl.Int64))
    return rows, wanted.join(positions, on=SUBSCRIBER_ID).sort(SUBSCRIBER_ID, CATEGORY)


def explain(
    model: CategoryPropensity,
    snapshot: pl.DataFrame,
    top_n: int = 3,
    describe: Callable[[str], str] | None = None,
    pairs: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """[subscriber_id, category, reasons] per snapshot row x fitted category (top_n features),
    or only per subscriber x category of `pairs` (fitted categories) when given."""
    if top_n < 1:
        raise InputError(f"top_n == {top_n}, must be >= 1.")
    if SUBSCRIBER_ID not in snapshot.columns:
        raise InputError(f"snapshot: column {SUBSCRIBER_ID!r} missing.")
    categories = model.categories_
    if pairs is None:
        rows = snapshot
        wanted = pl.DataFrame(
            {
                SUBSCRIBER_ID: np.repeat(snapshot[SUBSCRIBER_ID].to_numpy(), len(categories)),
                CATEGORY: np.tile(np.array(categories, dtype=object), snapshot.height),
                _ROW: np.repeat(np.arange(snapshot.height, dtype=np.int64), len(categories)),
            },
            schema={
                SUBSCRIBER_ID: snapshot.schema[SUBSCRIBER_ID],
                CATEGORY: pl.String,
                _ROW: pl.Int64,
            },
        )
    else:
        rows, wanted = _pair_positions(snapshot, pairs, categories)
    describe = describe or _default_describe()
    x = model.feature_matrix(rows)
    table = _phrase_table(model, describe)
    phrases = pl.Series(REASONS, table.ravel(), dtype=pl.String)
    groups = wanted.partition_by(CATEGORY, as_dict=True)
    present = [category for category in categories if (category,) in groups]

    def reasons_of(category: str) -> pl.DataFrame:
        group = groups[(category,)]
        booster = model.boosters_.get(category)
        if booster is None:
            reasons = pl.repeat(PRIOR_REASON, group.height, dtype=pl.String, eager=True)
        else:
            cells = x[group[_ROW].to_numpy()]
            contributions = shap_contributions(booster, cells, model.num_threads)
            count = min(top_n, contributions.shape[1])
            top = top_features(contributions, count)
            values = np.take_along_axis(cells, top, axis=1)
            codes = top * table.shape[1] + _cell_states(model, values, top)
            reasons = pl.select(
                pl.concat_str(
                    [phrases.gather(codes[:, position]) for position in range(count)],
                    separator=REASON_SEPARATOR,
                )
            ).to_series()
        return group.select(SUBSCRIBER_ID, CATEGORY).with_columns(reasons.alias(REASONS))

    # categories in threads: their NumPy work releases the GIL; results keep category order
    workers = model.num_threads if model.num_threads > 0 else os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=min(workers, max(len(present), 1))) as pool:
        frames = list(pool.map(reasons_of, present))
    if not frames:
        return pl.DataFrame(
            schema={
                SUBSCRIBER_ID: snapshot.schema[SUBSCRIBER_ID],
                CATEGORY: pl.String,
                REASONS: pl.String,
            }
        )
    return pl.concat(frames).sort(SUBSCRIBER_ID, CATEGORY)
