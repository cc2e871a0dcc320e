"""Thompson sampling for offers with little evidence: posteriors, exact win chances, ranking."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from mia.settings import Settings
from offers.exploration import offer_evidence, posteriors, win_probabilities
from offers.rank import rank_offers
from tests.test_rank import _frequencies_match, make_catalog, make_scores, treatment_groups

SETTINGS = Settings(
    min_probability=0.0,
    control_share=0.0,
    exploration_share=0.4,
    exploration_min_impressions=100,
    exploration_prior_strength=10.0,
    top_k=2,
)


def test_win_probabilities_match_monte_carlo():
    alpha, beta = [2.0, 1.0, 30.0, 0.3], [8.0, 1.0, 70.0, 5.0]
    exact = win_probabilities(alpha, beta)
    rng = np.random.default_rng(0)
    draws = rng.beta(np.array(alpha)[:, None], np.array(beta)[:, None], (4, 400_000))
    simulated = np.bincount(draws.argmax(axis=0), minlength=4) / draws.shape[1]
    assert exact.sum() == pytest.approx(1.0)
    assert np.abs(exact - simulated).max() < 0.003
    assert win_probabilities([3.0, 3.0, 3.0], [5.0, 5.0, 5.0]) == pytest.approx([1 / 3] * 3)
    assert win_probabilities([4.0], [6.0]) == pytest.approx([1.0])


def test_posteriors_start_from_the_category_rate():
    catalog = make_catalog(
        {"old": ("video", 1.0, None), "new": ("video", 1.0, None), "solo": ("games", 1.0, None)}
    )
    state = pl.DataFrame(
        {
            "subscriber_id": [1, 2, 3],
            "offer_id": ["old", "old", "new"],
            "impressions": [150, 50, 10],
            "accepts": [20, 10, 30],  # organic accepts beyond impressions count once each
        }
    )
    evidence = offer_evidence(state)
    assert evidence.rows() == [("new", 10, 10), ("old", 200, 30)]
    table = posteriors(evidence, catalog, SETTINGS)
    rows = {row["offer_id"]: row for row in table.iter_rows(named=True)}
    video_rate = 40 / 210
    assert rows["new"]["alpha"] == pytest.approx(10 * video_rate + 10)
    assert rows["new"]["beta"] == pytest.approx(10 * (1 - video_rate) + 0)
    assert rows["new"]["exploring"] and not rows["old"]["exploring"]
    # A category never shown starts from the overall rate.
    assert rows["solo"]["alpha"] == pytest.approx(10 * video_rate)
    assert rows["solo"]["impressions"] == 0 and rows["solo"]["exploring"]
    # With no evidence at all the prior mean is 0.5.
    assert posteriors(None, catalog, SETTINGS)["posterior_mean"].to_list() == [0.5] * 3


def _world() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    catalog = make_catalog(
        {
            "tariff": ("tariff", 100.0, None),
            "internet": ("home_internet", 90.0, None),
            "film_new": ("video", 5.0, None),
            "film_hot": ("video", 5.0, None),
            "film_old": ("video", 6.0, None),
            "game_old": ("games", 4.0, None),
        }
    )
    rows = []
    for subscriber in range(1, 11):
        rows += [(subscriber, "tariff", 0.5), (subscriber, "internet", 0.4)]
        rows += [(subscriber, "film_old", 0.3), (subscriber, "game_old", 0.2)]
        rows += [(subscriber, "film_new", 0.1)]
        rows += [(subscriber, "film_hot", 0.11)] if subscriber % 2 else []
    evidence = pl.DataFrame(
        {
            "offer_id": ["tariff", "internet", "film_old", "game_old", "film_new", "film_hot"],
            "impressions": [5000, 5000, 3000, 3000, 20, 30],
            "accepts": [500, 400, 300, 200, 1, 12],
        }
    )
    return catalog, make_scores(rows, catalog), evidence


def test_thompson_propensities_match_the_policys_frequencies():
    catalog, scores, evidence = _world()
    eligible = scores.select("subscriber_id", "offer_id")
    groups = treatment_groups(range(1, 11))
    runs = [
        rank_offers(scores, eligible, catalog, groups, SETTINGS, f"r{i}", evidence=evidence)
        for i in range(500)
    ]
    _frequencies_match(runs)
    explored = pl.concat(runs).filter(pl.col("explore"))
    # Only the exploring offers are explored: the established ones wait for the model.
    assert set(explored["offer_id"]) == {"film_new", "film_hot"}
    # Even subscribers have one exploring candidate: it wins whenever they explore.
    even = explored.filter(pl.col("subscriber_id") % 2 == 0)
    assert even["propensity"].unique().to_list() == [pytest.approx(0.4)]
    # Odd ones choose between film_new (1 of 20) and film_hot (12 of 30): the winner is the
    # likely one far more often.
    odd = explored.filter(pl.col("subscriber_id") % 2 == 1)
    chance = dict(odd.group_by("offer_id").agg(pl.col("propensity").first()).iter_rows())
    assert chance["film_hot"] > 0.9 * 0.4 and chance["film_new"] < 0.1 * 0.4
    assert chance["film_hot"] + chance["film_new"] == pytest.approx(0.4)
    # The same run gives the same bytes.
    again = rank_offers(scores, eligible, catalog, groups, SETTINGS, "r0", evidence=evidence)
    assert again.equals(runs[0])


def test_without_exploring_offers_exploration_draws_a_category():
    catalog, scores, evidence = _world()
    seasoned = evidence.with_columns(pl.lit(10_000).alias("impressions"))
    eligible = scores.select("subscriber_id", "offer_id")
    groups = treatment_groups(range(1, 11))
    with_evidence = rank_offers(
        scores, eligible, catalog, groups, SETTINGS, "r1", evidence=seasoned
    )
    without = rank_offers(scores, eligible, catalog, groups, SETTINGS, "r1")
    assert with_evidence.equals(without)
    assert set(without.filter(pl.col("explore"))["offer_id"]) <= {"film_old", "game_old"}
