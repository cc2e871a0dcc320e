"""Response history per subscriber x offer and x category, read by the blend."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from features.offer_state import fold_offer_events
from mia.errors import InputError
from models.blend import BLEND_FEATURES, OfferBlend, candidate_inputs, offer_statistics
from models.history import HISTORY_INPUTS, response_history
from tests.test_offer_state import at, events

DAY = dt.date(2026, 3, 10)
# Tonight's offers, in column order; "old_video" has ended but is still in the catalog.
OFFERS = pl.DataFrame(
    {
        "offer_id": ["film_a", "film_b", "roam_eu"],
        "category": ["video", "video", "roaming"],
        "value": [3.0, 3.0, 5.0],
    }
)
CATALOG = pl.concat(
    [OFFERS, pl.DataFrame({"offer_id": ["old_video"], "category": ["video"], "value": [1.0]})]
)


def state_of(*rows: tuple[int, str, dt.datetime, str]) -> pl.DataFrame:
    """The offer state as of DAY of the given offer events."""
    return fold_offer_events(None, events(*rows), DAY)


STATE = state_of(
    (1, "film_a", at(DAY - dt.timedelta(days=9)), "impression"),
    (1, "film_a", at(DAY - dt.timedelta(days=6)), "impression"),
    (1, "film_a", at(DAY - dt.timedelta(days=6)), "dismiss"),
    (1, "film_a", at(DAY - dt.timedelta(days=2)), "impression"),
    (1, "film_a", at(DAY - dt.timedelta(days=2)), "impression"),
    (1, "old_video", at(DAY - dt.timedelta(days=30)), "impression"),
    (1, "old_video", at(DAY - dt.timedelta(days=30)), "accept"),
    (2, "roam_eu", at(DAY), "accept"),  # accepted while browsing: no impression
    (9, "film_b", at(DAY), "impression"),  # not scored tonight
)


def test_history_counts_and_days_since_per_offer_and_category():
    history = response_history(STATE, np.array([1, 2, 3]), OFFERS, DAY, CATALOG)

    def offer(name: str) -> list[float]:
        return history.dense(f"history_offer_{name}").ravel().tolist()

    def category(name: str) -> list[float]:
        return history.dense(f"history_category_{name}").ravel().tolist()

    nan = float("nan")
    # rows: subscribers 1, 2, 3; columns: film_a, film_b, roam_eu
    assert offer("impressions") == [4, 0, 0, 0, 0, 0, 0, 0, 0]
    assert offer("dismisses") == [1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert offer("ignored") == [3, 0, 0, 0, 0, 0, 0, 0, 0]
    assert offer("accepts") == [0, 0, 0, 0, 0, 1, 0, 0, 0]
    assert np.array_equal(
        offer("days_since_impression"), [2, nan, nan, nan, nan, nan, nan, nan, nan], equal_nan=True
    )
    assert np.array_equal(
        offer("days_since_dismiss"), [6, nan, nan, nan, nan, nan, nan, nan, nan], equal_nan=True
    )
    assert np.array_equal(
        offer("days_since_accept"), [nan, nan, nan, nan, nan, 0, nan, nan, nan], equal_nan=True
    )
    # Video sums film_a and the ended old_video, for both of its offers.
    assert category("impressions") == [5, 5, 0, 0, 0, 0, 0, 0, 0]
    assert category("accepts") == [1, 1, 0, 0, 0, 1, 0, 0, 0]
    assert category("ignored") == [3, 3, 0, 0, 0, 0, 0, 0, 0]
    assert np.array_equal(
        category("days_since_accept"), [30, 30, nan, nan, nan, 0, nan, nan, nan], equal_nan=True
    )
    # Without the catalog, the category holds tonight's offers only.
    tonight = response_history(STATE, np.array([1, 2, 3]), OFFERS, DAY)
    assert tonight.dense("history_category_impressions").ravel().tolist()[:2] == [4, 4]
    # Cells gather the same values as the dense matrices.
    rows, columns = np.array([0, 1, 0, 2]), np.array([1, 2, 0, 0])
    for name in HISTORY_INPUTS:
        assert np.array_equal(
            history.cells(name, rows, columns), history.dense(name)[rows, columns], equal_nan=True
        )


def test_a_subscriber_history_is_the_same_in_any_batch():
    together = response_history(STATE, np.array([1, 2, 3]), OFFERS, DAY, CATALOG)
    alone = response_history(STATE, np.array([2]), OFFERS, DAY, CATALOG)
    for name in HISTORY_INPUTS:
        assert np.array_equal(together.dense(name)[1], alone.dense(name)[0], equal_nan=True)


def test_no_state_means_no_history():
    history = response_history(None, np.array([1, 2]), OFFERS, DAY)
    assert (history.dense("history_offer_impressions") == 0).all()
    assert np.isnan(history.dense("history_category_days_since_accept")).all()


def test_a_state_later_than_the_snapshot_is_refused():
    later = fold_offer_events(
        None, events((1, "film_a", at(DAY + dt.timedelta(days=1)), "accept")), DAY
    )
    assert later.is_empty()  # folding never takes the future ...
    leaked = STATE.with_columns(pl.lit(at(DAY + dt.timedelta(days=1))).alias("last_click_ts"))
    with pytest.raises(InputError, match="offer_state: holds an event at .* after the end of"):
        response_history(leaked, np.array([1]), OFFERS, DAY)  # ... and a later state is refused
    with pytest.raises(InputError, match=r"offer_state: columns \['accepts'"):
        response_history(STATE.drop("accepts"), np.array([1]), OFFERS, DAY)


def test_the_blend_learns_that_an_ignored_offer_is_declined():
    """Pairs whose offer was ignored before accept far less: the blend must learn it from the
    history inputs alone (the other inputs are the same for every pair)."""
    rng = np.random.default_rng(3)
    n, offers = 4000, OFFERS
    ids = np.arange(1, n + 1)
    ignored = rng.integers(0, 4, n)  # times each subscriber ignored film_a
    rows = [
        (int(s), "film_a", at(DAY - dt.timedelta(days=3)), "impression")
        for s, times in zip(ids, ignored, strict=True)
        for _ in range(times)
    ]
    state = state_of(*rows)
    categories = ["roaming", "video"]
    no_labels = pl.DataFrame(
        schema={"offer_id": pl.String, "category": pl.String, "label": pl.Int8}
    )
    stats = offer_statistics(no_labels, offers)

    def inputs_with(history):
        p_category, cf = np.full((n, 2), 0.2), np.zeros((n, offers.height))
        inputs = candidate_inputs(p_category, categories, cf, offers, stats, history=history)
        return inputs.matrix(np.arange(n), np.zeros(n, dtype=np.int64))  # film_a for everyone

    matrix = inputs_with(response_history(state, ids, offers, DAY))
    labels = (rng.random(n) < np.where(ignored > 0, 0.05, 0.4)).astype(np.int8)
    frame = pl.DataFrame(matrix, schema=list(BLEND_FEATURES), orient="row").with_columns(
        pl.Series("subscriber_id", ids), pl.Series("label", labels)
    )
    blend = OfferBlend(num_boost_round=50, num_threads=1, min_data_in_leaf=50).fit(frame)
    p = blend.predict_matrix(matrix)
    assert p[ignored > 0].mean() < 0.1 < 0.3 < p[ignored == 0].mean()
    # Without history every pair looks never shown: one probability for all.
    assert np.unique(blend.predict_matrix(inputs_with(None))).size == 1
