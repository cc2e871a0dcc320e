"""The blend stage: offer statistics, candidate features and the fitted blend, on hand-made data."""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pytest

from mia.errors import InputError
from models import metrics
from models.blend import (
    BLEND_FEATURES,
    CategoryActivity,
    OfferBlend,
    candidate_features,
    candidate_inputs,
    category_activity,
    fit_linear_stage,
    offer_statistics,
)

OFFERS = pl.DataFrame(
    {
        "offer_id": ["data_small", "data_big", "esim_free", "gift_box"],
        "category": ["data_addon", "data_addon", "esim", "gift"],
        "value": [100.0, 300.0, 50.0, 0.0],
    }
)
CATEGORIES = ["data_addon", "esim", "gift"]


def test_offer_statistics_smooth_towards_category_rate():
    labels = pl.DataFrame(
        {
            "offer_id": ["data_small"] * 4 + ["data_big"] * 2 + ["esim_free"] * 4,
            "category": ["data_addon"] * 6 + ["esim"] * 4,
            "label": [1, 1, 0, 0, 0, 0, 1, 0, 0, 0],
        }
    )
    stats = offer_statistics(labels, OFFERS, prior_strength=2.0)
    rows = {row["offer_id"]: row for row in stats.iter_rows(named=True)}
    overall = 3 / 10
    data_rate = (2 + 2 * overall) / (6 + 2)
    assert rows["data_small"]["category_accept_rate"] == pytest.approx(data_rate)
    assert rows["data_small"]["offer_accept_rate"] == pytest.approx((2 + 2 * data_rate) / (4 + 2))
    assert rows["data_big"]["offer_accept_rate"] == pytest.approx((0 + 2 * data_rate) / (2 + 2))
    # Never shown, in a category never shown: the overall rate.
    assert rows["gift_box"]["shown"] == 0
    assert rows["gift_box"]["offer_accept_rate"] == pytest.approx(overall)
    assert stats["offer_id"].to_list() == sorted(OFFERS["offer_id"])


def test_candidate_features_layout_and_values():
    ids = np.array([10, 20])
    p_category = np.array([[0.2, 0.5, 0.1], [0.4, 0.1, 0.1]])
    cf = np.array([[1.0, 0.0, 3.0, 2.0], [0.5, 0.5, 0.1, 0.2]])
    stats = offer_statistics(
        pl.DataFrame(schema={"offer_id": pl.String, "category": pl.String, "label": pl.Int8}),
        OFFERS,
    )
    frame = candidate_features(ids, p_category, CATEGORIES, cf, OFFERS, stats)
    assert frame.height == 8
    assert set(BLEND_FEATURES) <= set(frame.columns)
    first = frame.filter(pl.col("subscriber_id") == 10)
    assert first["offer_id"].to_list() == OFFERS["offer_id"].to_list()
    assert first["p_category"].to_list() == [0.2, 0.2, 0.5, 0.1]
    # Rank 0 = best ALS score among the subscriber's candidates, scaled to [0, 1].
    assert first["cf_rank"].to_list() == pytest.approx([2 / 3, 1.0, 0.0, 1 / 3])
    assert first["cf_score_centered"].to_list() == pytest.approx([-0.5, -1.5, 1.5, 0.5])
    # Within the category: data_small beats data_big (centred on their mean 0.5); an offer
    # alone in its category is centred at 0 and ranked first.
    assert first["cf_category_centered"].to_list() == pytest.approx([0.5, -0.5, 0.0, 0.0])
    assert first["cf_category_rank"].to_list() == pytest.approx([0.0, 1.0, 0.0, 0.0])
    second = frame.filter(pl.col("subscriber_id") == 20)
    assert second["cf_category_centered"].to_list() == pytest.approx([0.0, 0.0, 0.0, 0.0])
    # No history anywhere: every offer's lift over its category is zero.
    assert frame["offer_lift"].abs().max() == pytest.approx(0.0)
    with pytest.raises(InputError, match="cf_scores"):
        candidate_features(ids, p_category, CATEGORIES, cf[:, :2], OFFERS, stats)
    with pytest.raises(InputError, match="gift"):
        candidate_features(ids, p_category[:, :2], CATEGORIES[:2], cf, OFFERS, stats)


def test_candidate_features_without_offers_are_empty_and_quiet():
    """A night whose offers have all expired: no candidates, and no numpy warnings."""
    no_offers = OFFERS.clear()
    stats = offer_statistics(
        pl.DataFrame(schema={"offer_id": pl.String, "category": pl.String, "label": pl.Int8}),
        no_offers,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = candidate_features(
            np.array([10, 20]), np.full((2, 3), 0.2), CATEGORIES, np.empty((2, 0)), no_offers, stats
        )
    assert frame.height == 0
    assert set(BLEND_FEATURES) <= set(frame.columns)


def _no_labels() -> pl.DataFrame:
    return pl.DataFrame(schema={"offer_id": pl.String, "category": pl.String, "label": pl.Int8})


def test_interaction_inputs_are_each_subscriber_activity_in_the_offer_category():
    # An ended offer still names its category; an item outside the catalog has none.
    catalog = pl.concat(
        [OFFERS, pl.DataFrame({"offer_id": ["data_old"], "category": ["data_addon"]})],
        how="diagonal",
    )
    interactions = pl.DataFrame(
        {
            "subscriber_id": [10, 10, 10, 10, 30],
            "offer_id": ["data_small", "data_old", "esim_free", "film_x0001", "data_big"],
            "confidence": [4.0, 1.0, 3.0, 6.0, 2.0],
        }
    )
    ids = np.array([10, 20])  # 20 has no interactions; 30 is not in the batch
    activity = category_activity(interactions, ids, catalog)
    assert activity.categories == ("data_addon", "esim", "gift")
    assert activity.confidence.tolist() == [[5.0, 3.0, 0.0], [0.0, 0.0, 0.0]]
    frame = candidate_features(
        ids,
        np.full((2, 3), 0.2),
        CATEGORIES,
        np.zeros((2, 4)),
        OFFERS,
        offer_statistics(_no_labels(), OFFERS),
        activity=activity,
    )
    first = frame.filter(pl.col("subscriber_id") == 10)
    # data_addon 5 and esim 3 of 8 (the film outside the catalog counts for neither); nobody
    # interacted with a gift.
    assert first["interaction_category_share"].to_list() == pytest.approx(
        [5 / 8, 5 / 8, 3 / 8, 0.0]
    )
    assert first["interaction_category_log_confidence"].to_list() == pytest.approx(
        [np.log1p(5.0), np.log1p(5.0), np.log1p(3.0), 0.0]
    )
    # The model matrix gathers the same values cell by cell, in any order of cells.
    inputs = candidate_inputs(
        np.full((2, 3), 0.2), CATEGORIES, np.zeros((2, 4)), OFFERS,
        offer_statistics(_no_labels(), OFFERS), activity=activity,
    )  # fmt: skip
    rows, columns = np.repeat([1, 0], 4), np.tile([3, 1, 2, 0], 2)
    expected = frame.select(BLEND_FEATURES).to_numpy()[rows * 4 + columns]
    assert np.array_equal(inputs.matrix(rows, columns), expected, equal_nan=True)
    second = frame.filter(pl.col("subscriber_id") == 20)
    assert second["interaction_category_share"].to_list() == [0.0] * 4
    assert second["interaction_category_log_confidence"].to_list() == [0.0] * 4
    # Without interactions (or without activity) every pair reads 0, never NaN.
    for empty in (None, interactions.clear()):
        nothing = category_activity(empty, ids, catalog)
        assert nothing.confidence.tolist() == [[0.0] * 3] * 2
    plain = candidate_features(
        ids, np.full((2, 3), 0.2), CATEGORIES, np.zeros((2, 4)), OFFERS,
        offer_statistics(_no_labels(), OFFERS),
    )  # fmt: skip
    assert (plain["interaction_category_share"] == 0).all()
    with pytest.raises(InputError, match="confidence"):
        category_activity(interactions.drop("confidence"), ids, catalog)
    with pytest.raises(InputError, match="activity"):
        candidate_inputs(
            np.full((2, 3), 0.2), CATEGORIES, np.zeros((2, 4)), OFFERS,
            offer_statistics(_no_labels(), OFFERS),
            activity=CategoryActivity(activity.categories, activity.confidence[:1]),
        )  # fmt: skip


def test_a_subscriber_activity_is_the_same_in_any_batch():
    rng = np.random.default_rng(3)
    # Many offers per category: a cell sums many terms, so a different order would round
    # differently.
    catalog = pl.DataFrame(
        {"offer_id": [f"o{i:02d}" for i in range(30)], "category": CATEGORIES * 10}
    )
    size = 20_000
    interactions = (
        pl.DataFrame(
            {
                "subscriber_id": rng.integers(1, 300, size),
                "offer_id": rng.choice(catalog["offer_id"].to_list() + ["outside"], size),
                "confidence": rng.choice([0.1, 0.3, 0.7, 4.0], size) * rng.random(size),
            }
        )
        .group_by("subscriber_id", "offer_id")
        .agg(pl.col("confidence").sum())
    )
    ids = np.arange(1, 300)
    everyone = category_activity(interactions.sort("subscriber_id", "offer_id"), ids, catalog)
    inputs = everyone.per_category()
    assert (everyone.confidence > 0).mean() > 0.9
    for batch in (ids[::-1], ids[5:40], ids[[17]]):
        shuffled = interactions.sample(fraction=1.0, shuffle=True, seed=int(batch[0]))
        alone = category_activity(shuffled, batch, catalog)
        rows = batch - 1
        assert np.array_equal(alone.confidence, everyone.confidence[rows])
        for name, values in alone.per_category().items():
            assert np.array_equal(values, inputs[name][rows])


def _synthetic(seed: int, subscribers: int = 3000):
    """Acceptance driven by both the category propensity and a taste that only ALS sees."""
    rng = np.random.default_rng(seed)
    ids = np.arange(subscribers, dtype=np.int64) + 1
    p_category = 1 / (1 + np.exp(-rng.normal(-2.5, 1.0, (subscribers, 3))))
    cf = rng.normal(0, 1, (subscribers, 4))
    stats = offer_statistics(
        pl.DataFrame(schema={"offer_id": pl.String, "category": pl.String, "label": pl.Int8}),
        OFFERS,
    )
    frame = candidate_features(ids, p_category, CATEGORIES, cf, OFFERS, stats)
    logit_true = frame["logit_p_category"].to_numpy() + 1.2 * frame["cf_score"].to_numpy()
    label = rng.random(frame.height) < 1 / (1 + np.exp(-logit_true))
    shown = rng.random(frame.height) < 0.5
    return frame.with_columns(pl.Series("label", label.astype(np.int8))).filter(pl.Series(shown))


def test_blend_beats_each_input_and_is_calibrated():
    train, test = _synthetic(1), _synthetic(2)
    blend = OfferBlend(num_boost_round=150, num_threads=1).fit(train)
    p = blend.predict(test)
    y = test["label"].to_numpy()
    blend_auc = metrics.roc_auc(y, p)
    assert blend_auc > metrics.roc_auc(y, test["p_category"].to_numpy()) + 0.03
    assert blend_auc > metrics.roc_auc(y, test["cf_score"].to_numpy()) + 0.03
    assert metrics.log_loss(y, p) < metrics.log_loss(y, test["p_category"].to_numpy())
    assert metrics.expected_calibration_error(y, p) < 0.03
    # Deterministic: the same data gives the same model.
    again = OfferBlend(num_boost_round=150, num_threads=1).fit(train).predict(test)
    assert np.array_equal(p, again)
    assert blend.feature_importance()["feature"].to_list() == list(BLEND_FEATURES)


def test_blend_refuses_bad_labels():
    frame = _synthetic(3, subscribers=50)
    with pytest.raises(InputError, match="label"):
        OfferBlend().fit(frame.drop("label"))
    with pytest.raises(InputError, match="both classes"):
        OfferBlend().fit(frame.with_columns(pl.lit(0, dtype=pl.Int8).alias("label")))
    with pytest.raises(InputError, match="not fitted"):
        OfferBlend().predict(frame)


def test_a_blend_fitted_before_tastes_keeps_scoring_with_its_own_inputs(monkeypatch):
    import models.blend as blend_module

    train, test = _synthetic(4, subscribers=600), _synthetic(5, subscribers=200)
    # Inputs added after the first stored blends.
    later = ("taste", "cf_category", "history", "interaction")
    before = tuple(name for name in BLEND_FEATURES if not name.startswith(later))
    with monkeypatch.context() as patch:
        patch.setattr(blend_module, "BLEND_FEATURES", before)
        stored = OfferBlend(num_boost_round=20, num_threads=1).fit(train)
    del stored.features_  # as a blend pickled before tastes existed comes back
    assert stored.features == before
    p = stored.predict(test)
    inputs = candidate_inputs(
        np.full((1, len(CATEGORIES)), 0.1),
        CATEGORIES,
        np.zeros((1, OFFERS.height)),
        OFFERS,
        offer_statistics(test.select("offer_id", "category", "label"), OFFERS),
    )
    rows = np.zeros(OFFERS.height, dtype=np.int64)
    matrix = inputs.matrix(rows, np.arange(OFFERS.height), stored.features)
    assert matrix.shape == (OFFERS.height, len(before))
    assert np.isfinite(stored.predict_matrix(matrix)).all()
    assert np.isfinite(p).all() and p.shape == (test.height,)


def test_linear_stage_is_a_penalised_logistic_regression_with_monotone_signs():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(8)
    x = rng.normal([1.0, -2.0, 0.0], [2.0, 0.5, 1.0], (4000, 3))
    y = (rng.random(4000) < 1 / (1 + np.exp(-(0.8 * x[:, 0] - 1.5 * x[:, 2] - 1.0)))).astype(float)
    free = fit_linear_stage(x, y, [0, 2], [0, 0], l2=1.0)
    z = (x[:, [0, 2]] - x[:, [0, 2]].mean(axis=0)) / x[:, [0, 2]].std(axis=0)
    reference = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(z, y)
    assert free.coefficients == pytest.approx(reference.coef_[0], abs=1e-4)
    assert free.intercept == pytest.approx(reference.intercept_[0], abs=1e-4)
    # Input 2 lowers acceptance; declared increasing (+1), its coefficient stays at 0.
    bounded = fit_linear_stage(x, y, [0, 2], [0, 1], l2=1.0)
    assert bounded.coefficients[1] == 0.0 and bounded.coefficients[0] > 0
    # The margin of a row does not depend on the rows scored with it.
    margins = free.margin(x)
    alone = np.concatenate([free.margin(x[i : i + 1]) for i in range(50)])
    assert np.array_equal(alone, margins[:50])
    assert np.array_equal(free.margin(x[::-1])[::-1], margins)


def test_trees_alone_score_as_blends_stored_before_the_linear_stage():
    train, test = _synthetic(6, subscribers=800), _synthetic(7, subscribers=200)
    trees = OfferBlend(num_boost_round=40, num_threads=1, linear_stage=False).fit(train)
    assert trees.linear is None
    p = trees.predict(test)
    del trees.linear_  # as a blend pickled before the linear stage comes back
    assert np.array_equal(trees.predict(test), p)
    matrix = test.select(pl.col(BLEND_FEATURES).cast(pl.Float64)).to_numpy()
    assert np.array_equal(p, trees.booster_.predict(matrix))
    staged = OfferBlend(num_boost_round=40, num_threads=1).fit(train)
    assert staged.linear is not None and staged.get_params()["linear_stage"] is True
    raw = staged.booster_.predict(matrix, raw_score=True)
    expected = 1 / (1 + np.exp(-(staged.linear.margin(matrix) + raw)))
    assert staged.predict(test) == pytest.approx(expected, abs=1e-12)
