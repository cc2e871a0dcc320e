"""Implicit ALS collaborative filtering and top-k ranking metrics."""

from __future__ import annotations

import datetime as dt
import math
import pickle

import numpy as np
import polars as pl
import pytest

from mia.errors import InputError
from mia.schema import CF_SCORE, CONFIDENCE, EVENT, ITEM_ID, KIND, OFFER_ID, SUBSCRIBER_ID, TS
from models.cf import ALSRecommender, build_interactions, tune_als
from models.ranking_metrics import (
    catalog_coverage,
    map_at_k,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    ranking_metrics_from_lists,
    recall_at_k,
    relevance_matrix,
    top_k_indices,
)

AS_OF = dt.date(2026, 3, 10)
GROUP_A = [f"a{j}" for j in range(5)]
GROUP_B = [f"b{j}" for j in range(5)]
SMALL = {"factors": 2, "iterations": 10, "regularization": 0.05}


def _interactions(rows: list[tuple[int, str, float]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={SUBSCRIBER_ID: pl.Int64, OFFER_ID: pl.String, CONFIDENCE: pl.Float64},
        orient="row",
    )


def _events(rows: list[tuple[int, str, dt.datetime, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            SUBSCRIBER_ID: pl.Int64,
            OFFER_ID: pl.String,
            TS: pl.Datetime("us"),
            EVENT: pl.String,
        },
        orient="row",
    )


def _planted(seed: int = 3, users_per_group: int = 20, keep: float = 0.7) -> pl.DataFrame:
    """Even subscribers like offers a0..a4, odd ones b0..b4; each pair observed with p=keep."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(2 * users_per_group):
        offers = GROUP_A if user % 2 == 0 else GROUP_B
        for offer in offers:
            if rng.random() < keep:
                rows.append((user, offer, float(rng.integers(1, 4))))
    return _interactions(rows)


@pytest.fixture(scope="module")
def planted() -> pl.DataFrame:
    return _planted()


@pytest.fixture(scope="module")
def fitted(planted) -> ALSRecommender:
    return ALSRecommender(**SMALL).fit(planted)


# --- build_interactions -------------------------------------------------------------------


def test_build_interactions_window_weights_and_order():
    day = dt.datetime(2026, 3, 10, 12)
    events = _events(
        [
            (2, "o1", day, "impression"),
            (2, "o1", day, "accept"),
            (2, "o1", day, "click"),
            (1, "o2", day, "click"),
            (1, "o2", day - dt.timedelta(days=1), "click"),
            (1, "o1", day, "accept"),
            (3, "o3", day, "impression"),  # impression alone: excluded
            (4, "o4", day, "dismiss"),  # dismiss alone: never positive
            (4, "o4", day, "impression"),
            # Window is (as_of - 7 days, as_of]: 2026-03-03 is out, 2026-03-04 00:00 is in.
            (5, "o5", dt.datetime(2026, 3, 3, 23, 59, 59), "accept"),
            (5, "o6", dt.datetime(2026, 3, 4), "accept"),
            (6, "o6", dt.datetime(2026, 3, 11), "accept"),  # after as_of
        ]
    )
    got = build_interactions(events, AS_OF, lookback_days=7)
    assert got.columns == [SUBSCRIBER_ID, OFFER_ID, CONFIDENCE]
    assert got.rows() == [(1, "o1", 4.0), (1, "o2", 2.0), (2, "o1", 5.0), (5, "o6", 4.0)]
    assert build_interactions(events.lazy(), AS_OF, lookback_days=7).equals(got)


def test_build_interactions_custom_weights_and_negative_dismiss():
    day = dt.datetime(2026, 3, 10, 8)
    events = _events(
        [
            (1, "o1", day, "impression"),
            (1, "o1", day, "impression"),
            (1, "o2", day, "click"),
            (1, "o2", day, "dismiss"),
            (2, "o1", day, "accept"),
            (2, "o1", day, "dismiss"),
        ]
    )
    got = build_interactions(
        events, AS_OF, weights={"impression": 0.25, "click": 1.0, "dismiss": -1.0}
    )
    # (1, o2): click 1 - dismiss 1 = 0 -> dropped; (2, o1): accept 4 - dismiss 1 = 3.
    assert got.rows() == [(1, "o1", 0.5), (2, "o1", 3.0)]


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"dismiss": 1.0}, "a dismiss is not a positive"),
        ({"click": -1.0}, r"weights\['click'\] == -1.0, must be >= 0"),
        ({"purchase": 1.0}, "unknown event 'purchase'"),
        ({"accept": math.inf}, "must be finite"),
    ],
)
def test_build_interactions_rejects_bad_weights(weights, message):
    events = _events([(1, "o1", dt.datetime(2026, 3, 10), "accept")])
    with pytest.raises(InputError, match=message):
        build_interactions(events, AS_OF, weights=weights)


def test_build_interactions_rejects_bad_events_and_columns():
    events = _events([(1, "o1", dt.datetime(2026, 3, 10), "purchase")])
    with pytest.raises(
        InputError, match=r"offer_events: column 'event' holds values \['purchase'\]"
    ):
        build_interactions(events, AS_OF)
    with pytest.raises(InputError, match=r"offer_events: missing columns \['ts'\]"):
        build_interactions(events.drop(TS), AS_OF)
    with pytest.raises(InputError, match="lookback_days == 0"):
        build_interactions(events, AS_OF, lookback_days=0)


def _consumption(rows: list[tuple[int, str, dt.datetime]]) -> pl.DataFrame:
    return pl.DataFrame(
        [(*row, "watch") for row in rows],
        schema={
            SUBSCRIBER_ID: pl.Int64,
            ITEM_ID: pl.String,
            TS: pl.Datetime("us"),
            KIND: pl.String,
        },
        orient="row",
    )


def test_build_interactions_adds_consumption_by_item():
    day = dt.datetime(2026, 3, 10, 20)
    events = _events([(1, "o1", day, "accept"), (2, "o1", day, "click")])
    consumption = _consumption(
        [
            (1, "o1", day),  # a catalog offer consumed: adds to the accept's pair
            (1, "film_7", day),  # content outside the catalog: a column of its own
            (1, "film_7", day - dt.timedelta(days=2)),
            (3, "film_7", day),  # a subscriber with consumption only
            (3, "o2", dt.datetime(2026, 3, 3, 23, 59)),  # before the 7-day window
            (3, "o2", dt.datetime(2026, 3, 11)),  # after as_of
        ]
    )
    got = build_interactions(events, AS_OF, lookback_days=7, consumption=consumption)
    assert got.rows() == [
        (1, "film_7", 2.0),
        (1, "o1", 5.0),
        (2, "o1", 1.0),
        (3, "film_7", 1.0),
    ]
    weighted = build_interactions(
        events, AS_OF, lookback_days=7, consumption=consumption.lazy(), consumption_weight=0.5
    )
    assert weighted.rows() == [
        (1, "film_7", 1.0),
        (1, "o1", 4.5),
        (2, "o1", 1.0),
        (3, "film_7", 0.5),
    ]
    without = build_interactions(events, AS_OF, lookback_days=7)
    assert build_interactions(
        events, AS_OF, lookback_days=7, consumption=consumption, consumption_weight=0.0
    ).equals(without)
    # Offers and consumed items share one matrix: tastes from consumption reach the offers.
    assert ALSRecommender(**SMALL).fit(got).item_index_.to_list() == ["film_7", "o1"]


def test_build_interactions_rejects_bad_consumption():
    events = _events([(1, "o1", dt.datetime(2026, 3, 10), "accept")])
    consumption = _consumption([(1, "film_7", dt.datetime(2026, 3, 10))])
    with pytest.raises(InputError, match=r"consumption: missing columns \['item_id'\]"):
        build_interactions(events, AS_OF, consumption=consumption.drop(ITEM_ID))
    for weight in (-1.0, math.nan, math.inf):
        with pytest.raises(InputError, match="consumption_weight == .*, must be >= 0"):
            build_interactions(events, AS_OF, consumption=consumption, consumption_weight=weight)


# --- ALSRecommender -----------------------------------------------------------------------


def test_constructor_stores_arguments_unchanged():
    model = ALSRecommender(factors=3, regularization=0.2, iterations=2, alpha=1.5, random_state=1)
    assert model.get_params() == {
        "factors": 3,
        "regularization": 0.2,
        "iterations": 2,
        "alpha": 1.5,
        "random_state": 1,
        "num_threads": 1,
    }
    assert not hasattr(model, "model_")


def test_fit_is_deterministic_for_a_seed(planted, fitted):
    again = ALSRecommender(**SMALL).fit(planted)
    threaded = ALSRecommender(**SMALL, num_threads=2).fit(planted)
    for other in (again, threaded):
        assert np.array_equal(other.model_.user_factors, fitted.model_.user_factors)
        assert np.array_equal(other.model_.item_factors, fitted.model_.item_factors)
    reseeded = ALSRecommender(**SMALL, random_state=8).fit(planted)
    assert not np.array_equal(reseeded.model_.item_factors, fitted.model_.item_factors)
    users, offers = [0, 1, 2], GROUP_A + GROUP_B
    assert again.score(users, offers).tobytes() == fitted.score(users, offers).tobytes()


def test_known_users_rank_their_own_group_first(planted, fitted):
    offers = GROUP_A + GROUP_B
    users = planted[SUBSCRIBER_ID].unique().sort().to_list()
    scores = fitted.score(users, offers)
    assert scores.shape == (len(users), 10) and scores.dtype == np.float32
    for row, user in enumerate(users):
        own, other = (slice(0, 5), slice(5, 10)) if user % 2 == 0 else (slice(5, 10), slice(0, 5))
        assert scores[row, own].min() > scores[row, other].max(), user
        top = [offer for offer, _ in fitted.recommend(user, n=3)]
        assert all(offer[0] == ("a" if user % 2 == 0 else "b") for offer in top)


def test_unseen_user_is_folded_in_without_retraining(fitted):
    user_factors = fitted.model_.user_factors.copy()
    item_factors = fitted.model_.item_factors.copy()
    history = _interactions([(900, "b1", 3.0), (900, "b2", 2.0), (901, "zz", 1.0)])
    scores = fitted.score([900, 901, 900], GROUP_A + GROUP_B, interactions=history)
    assert scores[0, 5:].min() > scores[0, :5].max()
    assert np.array_equal(scores[0], scores[2])
    # 901 only touched an offer unknown to the model: no usable history -> popularity.
    assert np.array_equal(scores[1], fitted.popularity_[:10])
    assert np.array_equal(fitted.model_.user_factors, user_factors)
    assert np.array_equal(fitted.model_.item_factors, item_factors)
    assert 900 not in fitted.user_index_.to_list()
    ranked = fitted.recommend(900, n=3, interactions=history)
    assert all(offer.startswith("b") for offer, _ in ranked)


def test_popularity_fallback_for_users_without_history(planted, fitted):
    expected = (
        planted.group_by(OFFER_ID).agg(pl.len().alias("n")).sort(OFFER_ID)["n"].to_numpy() / 40
    ).astype(np.float32)
    assert fitted.item_index_.to_list() == GROUP_A + GROUP_B
    assert np.array_equal(fitted.popularity_, expected)
    scores = fitted.score([12345], ["b0", "never_seen", "a3"])
    assert scores.tolist() == [[expected[5], 0.0, expected[3]]]
    # An unseen offer scores 0 for a known user too.
    assert fitted.score([0], ["never_seen"]).tolist() == [[0.0]]


def test_recommend_keeps_repeatable_offers_by_default(planted, fitted):
    liked = set(planted.filter(pl.col(SUBSCRIBER_ID) == 0)[OFFER_ID].to_list())
    everything = [offer for offer, _ in fitted.recommend(0, n=10)]
    assert sorted(everything) == GROUP_A + GROUP_B
    assert liked <= set(everything[: len(liked) + 1])
    filtered = [offer for offer, _ in fitted.recommend(0, n=10, filter_already_liked=True)]
    assert not liked & set(filtered)
    assert len(filtered) == 10 - len(liked)


def test_similar_offers_stay_in_group(fitted):
    similar = fitted.similar_offers("a0", n=4)
    assert [offer for offer, _ in similar] and all(o.startswith("a") for o, _ in similar)
    assert "a0" not in [offer for offer, _ in similar]
    assert similar == sorted(similar, key=lambda pair: -pair[1])
    assert fitted.similar_offers("never_seen") == []


def test_predict_frame_matches_score_and_pickles(fitted):
    pairs = pl.DataFrame({SUBSCRIBER_ID: [0, 1, 777, 0], OFFER_ID: ["a1", "a1", "b2", "zz"]})
    got = pickle.loads(pickle.dumps(fitted)).predict_frame(pairs)
    assert got.columns == [SUBSCRIBER_ID, OFFER_ID, CF_SCORE]
    dense = fitted.score([0, 1], ["a1"])
    expected = [dense[0, 0], dense[1, 0], fitted.popularity_[7], 0.0]
    assert np.allclose(got[CF_SCORE].to_numpy(), expected, rtol=1e-6)


def test_a_score_does_not_depend_on_the_subscribers_scored_with_it():
    # Shards and chunks score different sets of subscribers: each one's scores must be the same
    # bytes in any set, in any position, and in predict_frame.
    interactions = _planted(seed=5, users_per_group=150)
    model = ALSRecommender(factors=32, iterations=3, regularization=0.05).fit(interactions)
    users = interactions[SUBSCRIBER_ID].unique().sort().to_list()
    offers = GROUP_B + GROUP_A
    together = model.score(users, offers)
    for subset in (users[::-1], users[1::3], users[7:20], [users[-1]]):
        rows = [users.index(user) for user in subset]
        assert model.score(subset, offers).tobytes() == together[rows].tobytes()
    pairs = pl.DataFrame({SUBSCRIBER_ID: np.repeat(users, 10), OFFER_ID: offers * len(users)})
    assert model.predict_frame(pairs)[CF_SCORE].to_numpy().tobytes() == together.tobytes()


def test_fit_and_score_reject_bad_input(planted):
    model = ALSRecommender(**SMALL)
    with pytest.raises(InputError, match="not fitted"):
        model.score([0], ["a0"])
    with pytest.raises(InputError, match=r"must be unique; 2 rows repeat a pair"):
        model.fit(pl.concat([planted.head(1), planted.head(1)]))
    with pytest.raises(InputError, match="must be finite and > 0"):
        model.fit(planted.with_columns(pl.lit(0.0).alias(CONFIDENCE)))
    with pytest.raises(InputError, match="factors == 0"):
        ALSRecommender(factors=0).fit(planted)
    with pytest.raises(InputError, match=r"missing columns \['confidence'\]"):
        model.fit(planted.drop(CONFIDENCE))


def test_tune_als_beats_popularity_on_a_later_window():
    # Same tastes, two independent windows: offers are repeatable, so nothing is filtered.
    train = _planted(seed=5, users_per_group=30, keep=0.8)
    valid = _planted(seed=6, users_per_group=30, keep=0.5)
    grid = {"factors": [2, 4], "regularization": [0.01, 0.1], "iterations": [8]}
    best, metrics = tune_als(train, valid, grid, k=3)
    assert best["factors"] in (2, 4) and best["regularization"] in (0.01, 0.1)
    assert best["random_state"] == 7 and best["iterations"] == 8
    assert set(metrics) == {
        "precision@3",
        "recall@3",
        "map@3",
        "ndcg@3",
        "coverage@3",
        "users@3",
    }
    users = valid[SUBSCRIBER_ID].unique().sort().to_list()
    offers = GROUP_A + GROUP_B
    relevant = [
        [offers.index(o) for o in valid.filter(pl.col(SUBSCRIBER_ID) == u)[OFFER_ID]] for u in users
    ]
    # Subscribers unknown to the model get the popularity fallback: the baseline to beat.
    popularity = ALSRecommender(**SMALL).fit(train).score([-1] * len(users), offers)
    assert metrics["map@3"] > map_at_k(popularity, relevant, 3) + 0.15
    again = tune_als(train, valid, grid, k=3)
    assert again == (best, metrics)
    with pytest.raises(InputError, match=r"unknown parameters \['depth'\]"):
        tune_als(train, valid, {"depth": [3]})


# --- ranking metrics ----------------------------------------------------------------------


SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.1],  # top-2: items 0, 1; relevant {1, 3}
        [0.2, 0.2, 0.9, 0.5],  # top-2: items 2, 3; relevant {2}
        [0.5, 0.4, 0.3, 0.2],  # no relevant items: not evaluated
    ]
)
RELEVANT = [{1, 3}, {2}, set()]


def test_ranking_metrics_hand_computed():
    got = ranking_metrics(SCORES, RELEVANT, 2)
    # user 0: hits [0, 1]; user 1: hits [1, 0].
    assert got["precision@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert got["recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert got["map@2"] == pytest.approx((0.5 / 2 + 1.0) / 2)
    ndcg_user0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert got["ndcg@2"] == pytest.approx((ndcg_user0 + 1.0) / 2)
    assert got["coverage@2"] == 1.0  # top-2 lists {0, 1}, {2, 3}, {0, 1}
    assert catalog_coverage(SCORES, 1) == 0.5  # top-1 lists {0}, {2}, {0}
    assert got["users@2"] == 2.0
    assert precision_at_k(SCORES, RELEVANT, 2) == got["precision@2"]
    assert recall_at_k(SCORES, RELEVANT, 2) == got["recall@2"]
    assert map_at_k(SCORES, RELEVANT, 2) == got["map@2"]
    assert ndcg_at_k(SCORES, RELEVANT, 2) == got["ndcg@2"]
    assert catalog_coverage(SCORES, 2) == got["coverage@2"]


def test_map_and_ndcg_at_deeper_k():
    # user 0 at k=4: ranking 0,1,2,3 with relevant {1, 3}: AP = (1/2 + 2/4) / 2.
    assert map_at_k(SCORES[:1], RELEVANT[:1], 4) == pytest.approx(0.5)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3)
    assert ndcg_at_k(SCORES[:1], RELEVANT[:1], 4) == pytest.approx(dcg / ideal)
    # k beyond the catalog: precision still divides by k.
    assert precision_at_k(SCORES[:1], RELEVANT[:1], 8) == pytest.approx(2 / 8)


def test_ties_break_to_lower_column_and_matrix_input_agrees():
    assert top_k_indices(np.array([[0.2, 0.5, 0.5, 0.5]]), 2).tolist() == [[1, 2]]
    matrix = relevance_matrix(RELEVANT, SCORES.shape)
    assert matrix.sum() == 3 and matrix[0, 3] and not matrix[2].any()
    assert ranking_metrics(SCORES, matrix, 2) == ranking_metrics(SCORES, RELEVANT, 2)


def test_metrics_from_lists_match_dense():
    lists = [top_k_indices(SCORES, 2)[row].tolist() for row in range(3)]
    assert ranking_metrics_from_lists(lists, RELEVANT, 2, catalog_size=4) == ranking_metrics(
        SCORES, RELEVANT, 2
    )
    named = ranking_metrics_from_lists([["x", "y"]], [{"y", "z"}], 2, catalog_size=10)
    assert named["map@2"] == pytest.approx(0.25) and named["coverage@2"] == pytest.approx(0.2)


def test_metrics_undefined_without_relevant_items_and_reject_bad_input():
    got = ranking_metrics(SCORES, [set(), set(), set()], 2)
    assert math.isnan(got["map@2"]) and got["users@2"] == 0.0
    with pytest.raises(InputError, match=r"relevant\[0\] holds item indices \[4\]"):
        ranking_metrics(SCORES, [{4}, set(), set()], 2)
    with pytest.raises(InputError, match="k == 0"):
        ranking_metrics(SCORES, RELEVANT, 0)
    with pytest.raises(InputError, match="non-finite"):
        ranking_metrics(np.array([[np.nan, 1.0]]), [{0}], 1)
    with pytest.raises(InputError, match="relevant has 1 users"):
        ranking_metrics(SCORES, [{0}], 1)


# --- the shared tiny world ----------------------------------------------------------------


def test_tiny_world_interactions_and_model(ingested_root):
    from mia.lake import scan_partitions

    events = scan_partitions(ingested_root / "raw" / "offer_events")
    as_of = events.select(pl.col(TS).max()).collect().item().date()
    interactions = build_interactions(events, as_of, lookback_days=28)
    assert interactions.height > 0
    assert interactions.equals(interactions.sort(SUBSCRIBER_ID, OFFER_ID))
    # Every pair holds a click or an accept in the window; dismiss-only pairs are absent.
    window = events.filter(
        pl.col(TS) >= dt.datetime.combine(as_of - dt.timedelta(days=27), dt.time())
    )
    positive = (
        window.filter(pl.col(EVENT).is_in(["click", "accept"]))
        .select(SUBSCRIBER_ID, OFFER_ID)
        .unique()
        .sort(SUBSCRIBER_ID, OFFER_ID)
        .collect()
    )
    assert interactions.select(SUBSCRIBER_ID, OFFER_ID).equals(positive)
    model = ALSRecommender(factors=8, iterations=5).fit(interactions)
    again = ALSRecommender(factors=8, iterations=5).fit(interactions)
    users = interactions[SUBSCRIBER_ID].unique().sort().head(50)
    scores = model.score(users, model.item_index_)
    assert scores.tobytes() == again.score(users, model.item_index_).tobytes()
    assert np.isfinite(scores).all() and scores.shape == (50, model.item_index_.len())
