"""Tastes from responses: planted low-rank tastes are recovered, per subscriber and exactly."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from mia.schema import SUBSCRIBER_ID
from models.taste import CategoryTaste, TasteInputError, history_columns

# Category names of some operator, not the simulator's.
CATEGORIES = ("films", "cashback-partner", "roam_eu", "kids_games", "gb_pack", "news", "music")
WINDOW = 90


def _planted(subscribers: int = 3000, seed: int = 0) -> tuple[pl.DataFrame, np.ndarray]:
    """A snapshot whose offer history follows planted 2-factor tastes; returns it and the tastes."""
    rng = np.random.default_rng(seed)
    users = rng.normal(0.0, 1.0, (subscribers, 2))
    items = rng.normal(0.0, 1.0, (len(CATEGORIES), 2))
    taste = users @ items.T
    logits = -2.5 + taste
    shown = rng.poisson(20.0, (subscribers, len(CATEGORIES)))
    accepted = rng.binomial(shown, 1.0 / (1.0 + np.exp(-logits)))
    columns = {SUBSCRIBER_ID: np.arange(1, subscribers + 1)}
    for c, category in enumerate(CATEGORIES):
        impressions, accepts = history_columns(category, WINDOW)
        columns[impressions] = shown[:, c]
        columns[accepts] = accepted[:, c]
    return pl.DataFrame(columns), taste


def _within_subscriber_correlation(estimate: np.ndarray, truth: np.ndarray) -> float:
    estimate = estimate - estimate.mean(axis=1, keepdims=True)
    truth = truth - truth.mean(axis=1, keepdims=True)
    numerator = (estimate * truth).sum(axis=1)
    denominator = np.sqrt((estimate**2).sum(axis=1) * (truth**2).sum(axis=1)) + 1e-12
    return float((numerator / denominator).mean())


@pytest.fixture(scope="module")
def planted():
    snapshot, taste = _planted()
    model = CategoryTaste(factors=2, window=WINDOW).fit(snapshot, CATEGORIES)
    return snapshot, taste, model


def test_planted_tastes_are_recovered(planted):
    snapshot, taste, model = planted
    estimate = model.predict_matrix(snapshot)
    assert estimate.shape == (snapshot.height, len(CATEGORIES))
    assert np.isfinite(estimate).all()
    # The ordering of categories within a subscriber follows the planted taste.
    assert _within_subscriber_correlation(estimate - model.category_bias_, taste) > 0.75
    # Category biases alone know nothing of the subscriber.
    assert (
        _within_subscriber_correlation(np.tile(model.category_bias_, (len(taste), 1)), taste) < 0.2
    )


def test_a_subscriber_is_scored_from_their_own_history_only(planted):
    snapshot, _, model = planted
    full = model.predict_matrix(snapshot)
    part = snapshot[[5, 17, 999, 2048]]
    assert np.array_equal(model.predict_matrix(part), full[[5, 17, 999, 2048]])
    shuffled = snapshot.sample(fraction=1.0, shuffle=True, seed=3)
    order = shuffled[SUBSCRIBER_ID].to_numpy() - 1
    assert np.array_equal(model.predict_matrix(shuffled), full[order])


def test_fitting_twice_gives_identical_models(planted):
    snapshot, _, model = planted
    again = CategoryTaste(factors=2, window=WINDOW).fit(snapshot, CATEGORIES)
    assert np.array_equal(again.category_factors_, model.category_factors_)
    assert np.array_equal(again.category_bias_, model.category_bias_)


def test_a_subscriber_without_responses_gets_the_category_bias(planted):
    snapshot, _, model = planted
    silent = snapshot.head(2).with_columns(
        pl.col(name).cast(pl.Int64) * 0 for name in snapshot.columns if name != SUBSCRIBER_ID
    )
    assert np.array_equal(model.predict_matrix(silent), np.tile(model.category_bias_, (2, 1)))


def test_expected_accepts_match_the_observed_ones_per_category(planted):
    snapshot, _, model = planted
    probability = 1.0 / (1.0 + np.exp(-model.predict_matrix(snapshot)))
    for c, category in enumerate(CATEGORIES):
        impressions, accepts = history_columns(category, WINDOW)
        expected = (snapshot[impressions].to_numpy() * probability[:, c]).sum()
        assert expected == pytest.approx(snapshot[accepts].sum(), rel=0.03), category


def test_extreme_histories_stay_finite():
    snapshot, _ = _planted(subscribers=400, seed=1)
    impressions, accepts = history_columns("films", WINDOW)
    # Everything accepted, accepts without impressions (browsing), nothing accepted.
    extreme = snapshot.with_columns(
        pl.when(pl.col(SUBSCRIBER_ID) <= 10)
        .then(pl.col(impressions) + 50)
        .otherwise(pl.col(impressions))
        .alias(impressions),
    ).with_columns(
        pl.when(pl.col(SUBSCRIBER_ID) <= 10)
        .then(pl.col(impressions))
        .when(pl.col(SUBSCRIBER_ID) <= 20)
        .then(3)
        .otherwise(pl.col(accepts))
        .alias(accepts),
        pl.when(pl.col(SUBSCRIBER_ID).is_between(11, 20))
        .then(0)
        .otherwise(pl.col(impressions))
        .alias(impressions),
    )
    model = CategoryTaste(factors=2, window=WINDOW).fit(extreme, CATEGORIES)
    estimate = model.predict_matrix(extreme)
    assert np.isfinite(estimate).all()
    films = CATEGORIES.index("films")
    # Subscribers who took everything they were shown like films more than the rest.
    assert estimate[:10, films].min() > np.median(estimate[20:, films])


def test_too_little_history_learns_nothing():
    snapshot, _ = _planted(subscribers=5)
    model = CategoryTaste(factors=2, window=WINDOW).fit(snapshot, CATEGORIES)
    assert not model.fitted_
    assert np.array_equal(model.predict_matrix(snapshot), np.zeros((5, len(CATEGORIES))))


def test_a_category_missing_from_the_snapshot_has_no_history(planted):
    snapshot, _, model = planted
    impressions, accepts = history_columns("films", WINDOW)
    retired = snapshot.drop(impressions, accepts)
    films = CATEGORIES.index("films")
    silent = snapshot.with_columns(pl.lit(0).alias(impressions), pl.lit(0).alias(accepts))
    assert np.array_equal(model.predict_matrix(retired), model.predict_matrix(silent))
    assert not np.array_equal(
        model.predict_matrix(retired)[:, films], model.predict_matrix(snapshot)[:, films]
    )


def test_an_unfitted_model_refuses_to_predict():
    snapshot, _ = _planted(subscribers=50)
    with pytest.raises(TasteInputError, match="not fitted"):
        CategoryTaste().predict_matrix(snapshot)
