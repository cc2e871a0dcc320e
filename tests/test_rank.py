"""Groups and ranking under the contact policy, on hand-made frames."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from mia.hashing import control_mask, pair_hash, text_hash
from mia.settings import Settings
from offers.eligibility import OffersInputError
from offers.groups import assign_groups, check_groups
from offers.rank import OFFERS_COLUMNS, rank_offers

SETTINGS = Settings(min_probability=0.0, control_share=0.0, exploration_share=0.0)


def make_catalog(offers: dict[str, tuple[str, float, int | None]]) -> pl.DataFrame:
    """offer_id -> (category, value, capacity)."""
    return pl.DataFrame(
        {
            "offer_id": list(offers),
            "category": [spec[0] for spec in offers.values()],
            "value": [spec[1] for spec in offers.values()],
            "capacity": [spec[2] for spec in offers.values()],
        },
        schema={
            "offer_id": pl.String,
            "category": pl.String,
            "value": pl.Float64,
            "capacity": pl.Int64,
        },
    )


def make_scores(rows: list[tuple[int, str, float]], catalog: pl.DataFrame) -> pl.DataFrame:
    frame = pl.DataFrame(
        rows,
        schema={"subscriber_id": pl.Int64, "offer_id": pl.String, "p_accept": pl.Float64},
        orient="row",
    )
    return frame.join(catalog.select("offer_id", "category"), on="offer_id").with_columns(
        pl.format("why {}", pl.col("offer_id")).alias("reasons"),
        pl.lit("v1").alias("model_version"),
    )


def treatment_groups(ids, control=(), uncovered=()) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "subscriber_id": list(ids),
            "group": ["control" if i in control else "treatment" for i in ids],
            "covered": [i not in uncovered for i in ids],
        },
        schema={"subscriber_id": pl.Int64, "group": pl.String, "covered": pl.Boolean},
    )


def rank(scores, catalog, groups=None, eligible=None, settings=SETTINGS, **kwargs):
    eligible = scores.select("subscriber_id", "offer_id") if eligible is None else eligible
    groups = treatment_groups(sorted(set(scores["subscriber_id"]))) if groups is None else groups
    return rank_offers(scores, eligible, catalog, groups, settings, "run-1", **kwargs)


# One subscriber, three categories: A has three offers, B two, C one; value 1 so EV = p.
DIVERSE = make_catalog(
    {
        "a1": ("data_addon", 1.0, None),
        "a2": ("data_addon", 1.0, None),
        "a3": ("data_addon", 1.0, None),
        "b1": ("roaming", 1.0, None),
        "b2": ("roaming", 1.0, None),
        "c1": ("music", 1.0, None),
    }
)
DIVERSE_SCORES = make_scores(
    [
        (1, "a1", 0.9),
        (1, "a2", 0.8),
        (1, "a3", 0.7),
        (1, "b1", 0.5),
        (1, "b2", 0.45),
        (1, "c1", 0.1),
    ],
    DIVERSE,
)


@pytest.mark.parametrize(
    ("top_k", "per_category", "diversity", "expected"),
    [
        (5, 2, 5, ["a1", "b1", "c1", "a2", "b2"]),  # leaders first, then by EV; a3 over M
        (5, 2, 0, ["a1", "a2", "b1", "b2", "c1"]),  # no diversity: EV order under M
        (3, 2, 2, ["a1", "b1", "a2"]),  # two diverse positions, then best remaining
        (6, 3, 6, ["a1", "b1", "c1", "a2", "a3", "b2"]),
        (2, 1, 5, ["a1", "b1"]),
    ],
)
def test_contact_policy_order(top_k, per_category, diversity, expected):
    settings = SETTINGS.replace(
        top_k=top_k, max_per_category=per_category, diversity_positions=diversity
    )
    ranked = rank(DIVERSE_SCORES, DIVERSE, settings=settings)
    assert ranked["offer_id"].to_list() == expected
    assert ranked["rank"].to_list() == list(range(1, len(expected) + 1))


def test_output_columns_and_values():
    catalog = make_catalog({"x": ("roaming", 20.0, None), "y": ("music", 5.0, None)})
    scores = make_scores([(7, "x", 0.1), (7, "y", 0.5)], catalog)
    settings = SETTINGS.replace(category_weights={"roaming": 2.0})
    ranked = rank(scores, catalog, settings=settings, model_versions={"mia-offers": "3"})
    assert tuple(ranked.columns) == OFFERS_COLUMNS
    assert ranked.to_dicts() == [
        {
            "subscriber_id": 7,
            "rank": 1,
            "offer_id": "x",
            "category": "roaming",
            "p_accept": 0.1,
            "value": 20.0,
            "expected_value": pytest.approx(4.0),
            "reasons": "why x",
            "model_version": "v1",
            "run_id": "run-1",
            "explore": False,
            "propensity": 1.0,
        },
        {
            "subscriber_id": 7,
            "rank": 2,
            "offer_id": "y",
            "category": "music",
            "p_accept": 0.5,
            "value": 5.0,
            "expected_value": pytest.approx(2.5),
            "reasons": "why y",
            "model_version": "v1",
            "run_id": "run-1",
            "explore": False,
            "propensity": 1.0,
        },
    ]


def test_model_versions_fill_missing_versions():
    catalog = make_catalog({"x": ("roaming", 1.0, None)})
    scores = make_scores([(1, "x", 0.5)], catalog).drop("model_version", "reasons")
    ranked = rank(scores, catalog, model_versions={"mia-offers": "3", "als": "2"})
    assert ranked["model_version"].to_list() == ["als:2,mia-offers:3"]
    assert ranked["reasons"].to_list() == [None]


def test_only_eligible_pairs_and_min_probability():
    catalog = make_catalog({"x": ("roaming", 1.0, None), "y": ("music", 1.0, None)})
    scores = make_scores([(1, "x", 0.9), (1, "y", 0.3), (2, "x", 0.005), (2, "y", 0.2)], catalog)
    eligible = pl.DataFrame({"subscriber_id": [1, 2, 2], "offer_id": ["y", "x", "y"]})
    ranked = rank(
        scores, catalog, eligible=eligible, settings=SETTINGS.replace(min_probability=0.01)
    )
    assert ranked.select("subscriber_id", "offer_id").rows() == [(1, "y"), (2, "y")]


def test_capacity_goes_to_highest_value_and_frees_positions():
    catalog = make_catalog(
        {"cap": ("roaming", 1.0, 1), "other": ("music", 1.0, None), "tie": ("gift", 1.0, 1)}
    )
    scores = make_scores(
        [
            (1, "cap", 0.5),
            (1, "other", 0.1),
            (2, "cap", 0.8),
            (2, "other", 0.1),
            (3, "cap", 0.6),
            (3, "other", 0.1),
            (4, "tie", 0.3),
            (5, "tie", 0.3),
        ],
        catalog,
    )
    ranked = rank(scores, catalog, settings=SETTINGS.replace(top_k=1))
    assert ranked.select("subscriber_id", "offer_id").rows() == [
        (1, "other"),
        (2, "cap"),
        (3, "other"),
        (5, "tie"),  # equal expected value: the stable (subscriber, offer) hash decides
    ]
    zero = catalog.with_columns(
        pl.when(pl.col("offer_id") == "cap").then(0).otherwise("capacity").alias("capacity")
    )
    assert "cap" not in rank(scores, zero)["offer_id"].to_list()


def test_control_and_uncovered_get_nothing():
    catalog = make_catalog({"x": ("roaming", 1.0, None)})
    scores = make_scores([(1, "x", 0.5), (2, "x", 0.5), (3, "x", 0.5)], catalog)
    groups = treatment_groups([1, 2, 3], control=(2,), uncovered=(3,))
    assert rank(scores, catalog, groups=groups)["subscriber_id"].to_list() == [1]


def test_deterministic_whatever_the_row_order():
    rng = np.random.default_rng(3)
    catalog, scores, eligible, groups = random_world(rng)
    first = rank_offers(scores, eligible, catalog, groups, Settings(), "r")
    shuffled = rank_offers(
        scores.sample(fraction=1.0, shuffle=True, seed=1),
        eligible.sample(fraction=1.0, shuffle=True, seed=2),
        catalog.reverse(),
        groups.reverse(),
        Settings(),
        "r",
    )
    assert first.equals(shuffled)


def random_world(rng: np.random.Generator, subscribers: int = 300, offers: int = 25):
    categories = ["tariff", "data_addon", "roaming", "music", "video", "gift"]
    catalog = pl.DataFrame(
        {
            "offer_id": [f"o{i:02d}" for i in range(offers)],
            "category": [categories[i % len(categories)] for i in range(offers)],
            "value": rng.uniform(1, 50, offers).round(2),
            "capacity": [int(c) if c < 40 else None for c in rng.integers(0, 80, offers)],
        },
        schema_overrides={"capacity": pl.Int64},
    )
    pairs = pl.DataFrame(
        {
            "subscriber_id": np.repeat(np.arange(1, subscribers + 1), offers),
            "offer_id": np.tile(catalog["offer_id"].to_numpy(), subscribers),
        }
    )
    scores = pairs.with_columns(
        pl.Series("p_accept", rng.beta(1, 12, pairs.height).round(3)),
    ).join(catalog.select("offer_id", "category"), on="offer_id")
    scores = scores.with_columns(pl.lit("r").alias("reasons"), pl.lit("v").alias("model_version"))
    eligible = pairs.filter(pl.Series(rng.random(pairs.height) < 0.7))
    groups = assign_groups(
        pairs["subscriber_id"].unique(), Settings(control_share=0.2, coverage=0.9)
    )
    return catalog, scores, eligible, groups


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("top_k", "per_category"), [(5, 2), (3, 1), (8, 3)])
def test_invariants_on_random_worlds(seed, top_k, per_category):
    rng = np.random.default_rng(seed)
    catalog, scores, eligible, groups = random_world(rng)
    settings = Settings(top_k=top_k, max_per_category=per_category, min_probability=0.02)
    ranked = rank_offers(scores, eligible, catalog, groups, settings, "r")
    assert ranked.height > 0
    assert ranked.equals(ranked.sort("subscriber_id", "rank"))
    # every row is an eligible, scored pair above the minimum probability
    assert ranked.join(eligible, on=["subscriber_id", "offer_id"], how="anti").is_empty()
    assert ranked["p_accept"].min() >= 0.02
    # only treatment, covered subscribers
    joined = ranked.join(groups, on="subscriber_id")
    assert joined.filter((pl.col("group") != "treatment") | ~pl.col("covered")).is_empty()
    # K, M, ranks 1..n
    per_subscriber = ranked.group_by("subscriber_id").agg(
        pl.len().alias("n"), pl.col("rank").sort().alias("ranks"), pl.col("category").alias("cats")
    )
    assert per_subscriber["n"].max() <= top_k
    for row in per_subscriber.iter_rows(named=True):
        assert row["ranks"] == list(range(1, row["n"] + 1))
    per_category_counts = ranked.group_by("subscriber_id", "category").agg(pl.len())
    assert per_category_counts["len"].max() <= per_category
    # capacity
    used = ranked.group_by("offer_id").agg(pl.len().alias("used")).join(catalog, on="offer_id")
    assert used.filter(
        pl.col("capacity").is_not_null() & (pl.col("used") > pl.col("capacity"))
    ).is_empty()
    # expected value = p x value (no weights configured)
    assert np.allclose(ranked["expected_value"], ranked["p_accept"] * ranked["value"])


def test_diversity_holds_without_capacity():
    rng = np.random.default_rng(5)
    catalog, scores, eligible, groups = random_world(rng)
    catalog = catalog.with_columns(pl.lit(None, dtype=pl.Int64).alias("capacity"))
    ranked = rank_offers(scores, eligible, catalog, groups, Settings(min_probability=0.0), "r")
    available = (
        scores.join(eligible, on=["subscriber_id", "offer_id"], how="semi")
        .group_by("subscriber_id")
        .agg(pl.col("category").n_unique().alias("available"))
    )
    head = ranked.join(available, on="subscriber_id").filter(
        pl.col("rank") <= pl.min_horizontal(pl.lit(5), "available")
    )
    assert head.group_by("subscriber_id", "category").agg(pl.len())["len"].max() == 1


def test_bad_scores_are_refused():
    catalog = make_catalog({"x": ("roaming", 1.0, None)})
    scores = make_scores([(1, "x", 0.5)], catalog)
    with pytest.raises(OffersInputError, match="p_accept.*1 row"):
        rank(scores.with_columns(pl.lit(1.5).alias("p_accept")), catalog)
    with pytest.raises(OffersInputError, match="one score per pair"):
        rank(pl.concat([scores, scores]), catalog)
    # Pairs are counted by an integer key while ids allow it, else as (id, offer) structs; rows
    # in strictly ascending (offer, subscriber) or (subscriber, offer) order need no count.
    two = make_catalog({"x": ("roaming", 1.0, None), "y": ("roaming", 1.0, None)})
    for ids in ([1, 1 << 20], [-1, 1 << 50]):
        # In neither order, so counted.
        distinct = make_scores([(ids[0], "y", 0.5), (ids[1], "x", 0.5), (ids[0], "x", 0.5)], two)
        for order in ([], ["offer_id", "subscriber_id"], ["subscriber_id", "offer_id"]):
            rows = distinct.sort(order) if order else distinct
            assert rank(rows, two, groups=treatment_groups(ids)).height == 3
            with pytest.raises(OffersInputError, match="1 pair"):
                rank(pl.concat([rows, rows.head(1)]), two, groups=treatment_groups(ids))
            with pytest.raises(OffersInputError, match="1 pair"):  # a repeat next to its pair
                rank(pl.concat([rows.head(1), rows]), two, groups=treatment_groups(ids))
    with pytest.raises(OffersInputError, match=r"not, e.g. \['ghost'\]"):
        rank(scores.with_columns(pl.lit("ghost").alias("offer_id")), catalog)
    with pytest.raises(OffersInputError, match="has a group"):
        rank(scores, catalog, groups=treatment_groups([2]))
    with pytest.raises(OffersInputError, match=r"missing column\(s\) \['p_accept'\]"):
        rank(scores.drop("p_accept"), catalog, eligible=scores.select("subscriber_id", "offer_id"))


def test_groups_follow_the_hash_and_are_stable_as_the_base_grows():
    settings = Settings(control_share=0.25, coverage=0.8)
    small = assign_groups(range(1, 2001), settings)
    large = assign_groups(np.arange(5000, 0, -1), settings)
    assert small.schema == {"subscriber_id": pl.Int64, "group": pl.String, "covered": pl.Boolean}
    assert large.filter(pl.col("subscriber_id") <= 2000).equals(small)
    expected_control = control_mask(small["subscriber_id"], settings.group_salt, 0.25)
    assert ((small["group"] == "control").to_numpy() == expected_control).all()
    share = (large["group"] == "control").mean()
    assert 0.22 < share < 0.28
    assert 0.77 < large["covered"].mean() < 0.83
    other_salt = assign_groups(range(1, 2001), settings.replace(group_salt="other"))
    assert not other_salt.equals(small)


def test_arms_are_drawn_among_the_non_control_subscribers_and_leave_control_alone():
    plain = Settings(control_share=0.2)
    arms = plain.replace(random_arm_share=0.1, propensity_only_arm_share=0.05)
    without = assign_groups(range(1, 20001), plain)
    with_arms = assign_groups(range(1, 20001), arms)
    control = without["group"] == "control"
    assert ((with_arms["group"] == "control") == control).all()
    shares = with_arms.filter(~control)["group"].value_counts(normalize=True)
    share = dict(zip(shares["group"], shares["proportion"], strict=True))
    assert set(share) == {"treatment", "random", "propensity_only"}
    assert 0.09 < share["random"] < 0.11 and 0.04 < share["propensity_only"] < 0.06
    assert assign_groups(range(1, 20001), arms).equals(with_arms)  # persistent
    assert with_arms["covered"].equals(without["covered"])


def test_groups_input_checks():
    with pytest.raises(OffersInputError, match="null"):
        assign_groups(pl.Series([1, None]), Settings())
    bad = treatment_groups([1]).with_columns(pl.lit("holdout").alias("group"))
    with pytest.raises(OffersInputError, match="holdout"):
        check_groups(bad)


def _explore_world(subscribers: int = 200):
    catalog = make_catalog(
        {
            "big1": ("home_internet", 100.0, None),
            "big2": ("tariff", 100.0, None),
            "small": ("gift", 1.0, None),
            "capped_small": ("books", 1.0, 5),
        }
    )
    rows = []
    for subscriber in range(1, subscribers + 1):
        rows += [(subscriber, "big1", 0.5), (subscriber, "big2", 0.4)]
        rows += [(subscriber, "small", 0.3), (subscriber, "capped_small", 0.3)]
    return catalog, make_scores(rows, catalog)


def test_exploration_shows_a_category_the_policy_never_picks():
    catalog, scores = _explore_world()
    settings = SETTINGS.replace(top_k=2, exploration_share=0.25)
    ranked = rank(scores, catalog, settings=settings)
    assert rank(scores, catalog, settings=settings.replace(exploration_share=0.0))[
        "category"
    ].unique().sort().to_list() == ["home_internet", "tariff"]
    explored = ranked.filter(pl.col("explore"))
    # About a quarter of 200 subscribers, each shown the uncapped small category in last place.
    assert 30 <= explored.height <= 70
    assert set(explored["offer_id"]) == {"small"}
    assert explored["rank"].unique().to_list() == [2]
    per_subscriber = ranked.group_by("subscriber_id").agg(pl.len().alias("n"), pl.col("rank"))
    assert per_subscriber["n"].max() == 2
    assert all(sorted(ranks) == [1, 2] for ranks in per_subscriber["rank"].to_list())
    assert ranked.filter(pl.col("offer_id") == "capped_small").is_empty()
    # Deterministic for a run; another run draws other explorers.
    assert rank(scores, catalog, settings=settings).equals(ranked)
    other = rank_offers(
        scores, scores.select("subscriber_id", "offer_id"), catalog,
        treatment_groups(range(1, 201)), settings, "run-2",
    )  # fmt: skip
    assert set(other.filter(pl.col("explore"))["subscriber_id"]) != set(explored["subscriber_id"])


def test_equal_scores_are_ordered_by_a_stable_hash_not_by_offer_id(tmp_path):
    offers = ["m1007", "m1119", "m132", "m2", "m88"]
    catalog = make_catalog({offer: ("films", 1.0, None) for offer in offers})
    ids = list(range(1, 201))
    scores = make_scores([(i, offer, 0.25) for i in ids for offer in offers], catalog)
    settings = SETTINGS.replace(top_k=5, max_per_category=5, diversity_positions=0)

    ranked = rank(scores, catalog, settings=settings)
    firsts = ranked.filter(pl.col("rank") == 1)["offer_id"]
    # Every offer leads for some subscribers, about a fifth each, whatever its spelling.
    assert set(firsts) == set(offers)
    assert firsts.value_counts()["count"].max() < 0.35 * len(ids)
    # The order of each subscriber's tie is that of the hash of (subscriber, offer), salted with
    # group_salt, not with the night: the policy's only draws are the logged ones.
    keys = text_hash(offers, "ties:mia-groups-v1")
    for subscriber in (1, 2, 3):
        by_hash = np.argsort(
            pair_hash(np.full(len(offers), subscriber), keys, "ties:mia-groups-v1")
        )
        mine = ranked.filter(pl.col("subscriber_id") == subscriber).sort("rank")["offer_id"]
        assert mine.to_list() == [offers[index] for index in by_hash]
    # A rerun writes the same bytes; another night orders the ties the same way.
    again = rank(scores.sample(fraction=1.0, shuffle=True, seed=4), catalog, settings=settings)
    ranked.write_parquet(tmp_path / "first.parquet")
    again.write_parquet(tmp_path / "again.parquet")
    assert (tmp_path / "first.parquet").read_bytes() == (tmp_path / "again.parquet").read_bytes()
    other_night = rank_offers(
        scores,
        scores.select("subscriber_id", "offer_id"),
        catalog,
        treatment_groups(ids),
        settings,
        "run-2",
    )
    assert other_night.drop("run_id").equals(ranked.drop("run_id"))


def _frequencies_match(runs: list[pl.DataFrame]) -> None:
    """Every (subscriber, rank, offer) is logged with one propensity, which matches how often the
    seeded policy published it over `runs` (within 4 standard errors)."""
    rows = pl.concat(runs).select("subscriber_id", "rank", "offer_id", "propensity")
    logged = rows.group_by("subscriber_id", "rank", "offer_id").agg(
        pl.col("propensity").n_unique().alias("values"),
        pl.col("propensity").first(),
        (pl.len() / len(runs)).alias("frequency"),
    )
    assert logged["values"].max() == 1
    p = logged["propensity"].to_numpy()
    tolerance = 4 * np.sqrt(p * (1 - p) / len(runs)) + 1e-12
    assert (np.abs(logged["frequency"].to_numpy() - p) <= tolerance).all(), logged
    # The slots a subscriber can hold: the outcomes of each slot sum to 1 where it is always
    # filled (ranks below the last are; the explored slot may be empty).
    assert (p > 0).all() and (p <= 1).all()


def test_logged_propensities_match_the_policys_frequencies():
    # Distinct expected values: exact ties are ordered by a per-run hash, which the logged
    # propensity does not model (offers/README.md).
    catalog = make_catalog(
        {
            "big1": ("home_internet", 100.0, None),
            "big2": ("tariff", 100.0, None),
            "small": ("gift", 1.0, None),
            "capped_small": ("books", 1.0, 5),
            "film": ("video", 2.0, None),
        }
    )
    rows = []
    for subscriber in range(1, 13):
        rows += [(subscriber, "big1", 0.5), (subscriber, "small", 0.3)]
        rows += [(subscriber, "capped_small", 0.29)]
        rows += [(subscriber, "big2", 0.4)] if subscriber != 12 else []
        rows += [(subscriber, "film", 0.2)] if subscriber % 2 else []
    scores = make_scores(rows, catalog)
    settings = SETTINGS.replace(top_k=2, exploration_share=0.3)
    groups = treatment_groups(range(1, 13))
    runs = [
        rank_offers(
            scores, scores.select("subscriber_id", "offer_id"), catalog, groups, settings, f"r{i}"
        )
        for i in range(600)
    ]
    _frequencies_match(runs)
    # The last place gives way to exploration with probability 0.3, except for subscriber 12,
    # whose only other category is the capped one: nothing to explore, so it is always shown.
    last = pl.concat(runs).filter(pl.col("rank") == 2, ~pl.col("explore"))
    assert last.filter(pl.col("subscriber_id") == 12)["propensity"].unique().to_list() == [1.0]
    assert last.filter(pl.col("subscriber_id") < 12)["propensity"].unique().to_list() == [
        pytest.approx(0.7)
    ]
    # Odd subscribers explore two categories (gift, video), even ones only gift.
    explored = pl.concat(runs).filter(pl.col("explore"))
    assert explored.filter(pl.col("subscriber_id") == 1)["propensity"].unique().to_list() == [
        pytest.approx(0.15)
    ]
    assert explored.filter(pl.col("subscriber_id") == 2)["propensity"].unique().to_list() == [
        pytest.approx(0.3)
    ]


def test_impact_arms_get_their_own_policies_with_exact_propensities():
    catalog = make_catalog(
        {
            "big": ("tariff", 100.0, None),
            "likely": ("gift", 1.0, None),
            "mid": ("music", 10.0, None),
            "capped": ("books", 50.0, 1),
        }
    )
    rows = []
    for subscriber in range(1, 7):
        rows += [(subscriber, "big", 0.1), (subscriber, "likely", 0.9)]
        rows += [(subscriber, "mid", 0.3), (subscriber, "capped", 0.4 + subscriber / 100)]
    scores = make_scores(rows, catalog)
    groups = treatment_groups(range(1, 7)).with_columns(
        pl.Series("group", ["treatment", "treatment", "propensity_only", "propensity_only"]
                  + ["random", "random"])
    )  # fmt: skip
    settings = SETTINGS.replace(top_k=2)
    runs = [
        rank_offers(
            scores, scores.select("subscriber_id", "offer_id"), catalog, groups, settings, f"r{i}"
        )
        for i in range(400)
    ]
    first = runs[0]
    by_subscriber = {
        key[0]: frame["offer_id"].to_list()
        for key, frame in first.partition_by("subscriber_id", as_dict=True).items()
    }
    # The champion ranks by expected value (capacity 1 goes to the higher score); the
    # propensity_only arm by p_accept alone and never takes a capped offer.
    assert by_subscriber[1] == ["big", "mid"] and by_subscriber[2] == ["capped", "big"]
    assert by_subscriber[3] == by_subscriber[4] == ["likely", "mid"]
    # The random arm: one uncapped offer, uniform over its three candidates.
    random_rows = pl.concat(runs).filter(pl.col("subscriber_id") >= 5)
    assert random_rows["rank"].unique().to_list() == [1]
    assert set(random_rows["offer_id"]) == {"big", "likely", "mid"}
    assert random_rows["propensity"].unique().to_list() == [pytest.approx(1 / 3)]
    _frequencies_match(runs)


def test_candidates_without_a_tie_salt_have_no_tie_break_and_are_otherwise_the_same():
    from offers.rank import TIE_BREAK, scored_candidates

    catalog = make_catalog({"x": ("roaming", 2.0, None), "y": ("games", 1.0, 5)})
    scores = make_scores([(1, "x", 0.5), (2, "x", 0.25), (1, "y", 0.75)], catalog)
    arguments = (scores, None, catalog, treatment_groups([1, 2]), SETTINGS)
    salted = scored_candidates(*arguments, "ties")
    plain = scored_candidates(*arguments, None)
    assert TIE_BREAK in salted.columns and TIE_BREAK not in plain.columns
    order = ["subscriber_id", "offer_id"]  # rows come in no particular order
    assert plain.sort(order).equals(salted.drop(TIE_BREAK).sort(order))
