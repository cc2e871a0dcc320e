"""Response history per subscriber x offer and x category: blend inputs from the offer state.

"This subscriber ignored this offer 4 times": the offer state (`features.offer_state`) holds, per
subscriber x offer, the count and the last time of every offer event over the whole history. For
each candidate pair the blend reads the pair's own counts (impressions, accepts, dismisses, and
impressions left unanswered) and the days since its last impression, accept and dismiss, and the
same summed over every offer of the offer's category (the catalog's category, so an ended offer's
history still counts for its category). A pair without history has counts 0 and days since
missing (NaN), as LightGBM reads a missing value.

The state must be as of the scoring snapshot's date: a later state would let the blend see the
responses it is asked to predict, so one holding later events is refused.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import polars as pl

from features.daily import OFFER_COUNT_COLUMNS
from features.offer_state import OFFER_STATE_SCHEMA, is_offer_state, last_column
from mia.errors import InputError
from mia.lake import end_of_day
from mia.schema import CATEGORY, OFFER_ID, SUBSCRIBER_ID

# What each level of history holds per pair: counts, then days since the last event.
_COUNTS = ("impressions", "accepts", "dismisses", "ignored")
_SINCE = ("impression", "accept", "dismiss")
OFFER_LEVEL, CATEGORY_LEVEL = "offer", "category"


def history_inputs(level: str) -> tuple[str, ...]:
    """Blend input names of one level of history ("offer" or "category"), in matrix order."""
    return (
        *(f"history_{level}_{count}" for count in _COUNTS),
        *(f"history_{level}_days_since_{event}" for event in _SINCE),
    )


HISTORY_INPUTS = (*history_inputs(OFFER_LEVEL), *history_inputs(CATEGORY_LEVEL))
_ROW = "_row"
_COLUMN = "_column"


def no_history(name: str) -> float:
    """The value of history input `name` for a pair without history: count 0, days missing."""
    return np.nan if "_days_since_" in name else 0.0


class HistoryInputError(InputError):
    """An offer state given as response history breaks its rules."""


@dataclass(frozen=True)
class ResponseHistory:
    """History inputs of a batch of subscribers (rows) x offers (columns).

    `per_offer[name]` is (rows x offers), `per_category[name]` is (rows x categories) with
    `offer_category` giving each offer column's category column; float32 (whole counts and days
    are exact in it).
    """

    per_offer: dict[str, np.ndarray]
    per_category: dict[str, np.ndarray]
    offer_category: np.ndarray

    def cells(self, name: str, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Values of input `name` at the (row, offer column) cells given."""
        if name in self.per_offer:
            values = self.per_offer[name]
            return values.reshape(-1)[rows * values.shape[1] + columns]
        return self.per_category[name][rows, self.offer_category[columns]]

    def dense(self, name: str) -> np.ndarray:
        """Values of input `name` for every (row, offer column), rows x offers."""
        if name in self.per_offer:
            return self.per_offer[name]
        return self.per_category[name][:, self.offer_category]


def _category_values(pairs: pl.LazyFrame) -> pl.LazyFrame:
    """Counts summed and days since the latest event over the pairs of each (row, column)."""
    return pairs.group_by(_ROW, _COLUMN).agg(
        *(pl.col(count).sum() for count in _COUNTS), *(pl.col(event).min() for event in _SINCE)
    )


def _scatter(
    frame: pl.DataFrame, names: tuple[str, ...], shape: tuple[int, int]
) -> dict[str, np.ndarray]:
    """(rows x columns) float32 matrices of `frame`'s value columns at its (_row, _column)."""
    flat = frame[_ROW].to_numpy() * shape[1] + frame[_COLUMN].to_numpy()
    result = {}
    for name, column in zip(names, (*_COUNTS, *_SINCE), strict=True):
        values = np.full(shape[0] * shape[1], no_history(name), dtype=np.float32)
        values[flat] = frame[column].cast(pl.Float32).fill_null(np.nan).to_numpy()
        result[name] = values.reshape(shape)
    return result


def response_history(
    state: pl.DataFrame | None,
    subscriber_ids: np.ndarray | pl.Series,
    offers: pl.DataFrame,
    as_of: dt.date,
    catalog: pl.DataFrame | None = None,
) -> ResponseHistory:
    """History inputs of `subscriber_ids` x `offers` (offer_id, category; in that order) from the
    offer `state` as of the end of `as_of`; None: no history known (counts 0, days missing).

    An offer's category history sums every offer of that category in `catalog` (default: in
    `offers`); offers of neither are left out of it.
    """
    ids = pl.Series(SUBSCRIBER_ID, np.asarray(subscriber_ids), dtype=pl.Int64)
    offer_ids = offers[OFFER_ID].cast(pl.String)
    categories = offers[CATEGORY].cast(pl.String)
    groups = categories.unique().sort()
    offer_category = (
        categories.replace_strict(groups, np.arange(groups.len()), return_dtype=pl.Int64)
        .to_numpy()
        .astype(np.int64)
    )
    offer_shape = (ids.len(), offer_ids.len())
    category_shape = (ids.len(), groups.len())
    if state is None:
        state = pl.DataFrame(schema=OFFER_STATE_SCHEMA)
    if not is_offer_state(state):
        missing = sorted(set(OFFER_STATE_SCHEMA) - set(state.columns))
        raise HistoryInputError(f"offer_state: columns {missing} missing.")
    latest = state.select(
        pl.max_horizontal(pl.col(last_column(event)).max() for event in OFFER_COUNT_COLUMNS)
    ).item()
    if latest is not None and latest >= end_of_day(as_of):
        raise HistoryInputError(
            f"offer_state: holds an event at {latest}, after the end of {as_of}: the history of "
            "a snapshot must stop at its date (a later state would leak the responses to predict)."
        )
    kinds = (catalog if catalog is not None else offers).select(
        pl.col(OFFER_ID).cast(pl.String), pl.col(CATEGORY).cast(pl.String)
    )
    day = pl.lit(as_of, dtype=pl.Date)
    # One row per pair with history: its counts and the days since each of its last events.
    pairs = (
        state.lazy()
        .join(
            pl.LazyFrame({SUBSCRIBER_ID: ids, _ROW: np.arange(ids.len(), dtype=np.int64)}),
            on=SUBSCRIBER_ID,
        )
        .select(
            _ROW,
            OFFER_ID,
            "impressions",
            "accepts",
            "dismisses",
            (pl.col("impressions") - pl.col("accepts") - pl.col("dismisses"))
            .clip(lower_bound=0)
            .alias("ignored"),
            *(
                (day - pl.col(last_column(event)).dt.date()).dt.total_days().alias(event)
                for event in _SINCE
            ),
        )
    )
    offer_level = pairs.join(
        pl.LazyFrame({OFFER_ID: offer_ids, _COLUMN: np.arange(offer_ids.len())}), on=OFFER_ID
    )
    category_level = (
        pairs.join(kinds.unique(OFFER_ID, keep="last").lazy(), on=OFFER_ID)
        .join(pl.LazyFrame({CATEGORY: groups, _COLUMN: np.arange(groups.len())}), on=CATEGORY)
        .pipe(_category_values)
    )
    offer_level, category_level = pl.collect_all([offer_level, category_level])
    return ResponseHistory(
        per_offer=_scatter(offer_level, history_inputs(OFFER_LEVEL), offer_shape),
        per_category=_scatter(category_level, history_inputs(CATEGORY_LEVEL), category_shape),
        offer_category=offer_category,
    )
