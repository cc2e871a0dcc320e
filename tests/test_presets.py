"""Simulator presets: other kinds of world with the same tables, each with an exact oracle."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mia.ingest import raw_events
from mia.lake import Lake
from mia.schema import (
    CATEGORY_PATTERN,
    ITEM_ID,
    KIND,
    OFFER_ID,
    P_ACCEPT,
    QUANTITY,
    SUBSCRIBER_ID,
    TABLES,
    TS,
)
from mia.simulate import (
    CATEGORIES,
    OFFERS,
    PRESETS,
    SIGNALS,
    SimulationConfig,
    SimulationError,
    acceptance_probability,
    oracle_consumption,
    oracle_p_accept,
    write_world,
)
from mia.simulate.acceptance import behaviour_only_probability
from mia.simulate.content import CONSUMPTION_KINDS, CONTENT_CATEGORIES, P_CHOICE
from tests.conftest import incoming_table

START = dt.date(2026, 1, 1)
DAYS = 40
AS_OF = START + dt.timedelta(days=DAYS - 2)


def _config(preset: str) -> SimulationConfig:
    return SimulationConfig(subscribers=600, days=DAYS, start=START, seed=11, preset=preset)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[str, Path]:
    """One small world per preset, written once for this module."""
    roots = {}
    for name in PRESETS:
        roots[name] = tmp_path_factory.mktemp(name) / "data"
        write_world(roots[name], _config(name))
    return roots


def _top1_capture(root: Path, as_of: dt.date) -> float:
    """Expected accepts of the behaviour-only oracle's top offer / the oracle's own top offer."""
    true = oracle_p_accept(root, as_of)
    behaviour = oracle_p_accept(root, as_of, behaviour_only=True)
    assert behaviour.select(SUBSCRIBER_ID, OFFER_ID).equals(true.select(SUBSCRIBER_ID, OFFER_ID))
    frame = true.with_columns(behaviour[P_ACCEPT].alias("behaviour")).sort(SUBSCRIBER_ID, OFFER_ID)
    picks = frame.group_by(SUBSCRIBER_ID).agg(
        pl.col(P_ACCEPT).sort_by("behaviour", descending=True).first().alias("picked"),
        pl.col(P_ACCEPT).max().alias("best"),
    )
    return picks["picked"].sum() / picks["best"].sum()


def test_unknown_preset_is_refused_with_the_known_names(tmp_path, capsys):
    from flows.cli import app, run_command

    with pytest.raises(SimulationError, match="preset == 'nope', must be one of telco, "):
        SimulationConfig(preset="nope")
    arguments = ["simulate", "--data-dir", str(tmp_path), "--subscribers", "20", "--days", "2"]
    code = run_command(lambda: app([*arguments, "--preset", "nope"], standalone_mode=True))
    assert code == 2
    assert "taste-heavy" in capsys.readouterr().err
    assert not (tmp_path / "incoming").exists()


def test_cli_writes_the_preset_into_the_truth(tmp_path):
    from flows.cli import app, run_command

    arguments = ["simulate", "--data-dir", str(tmp_path), "--subscribers", "20", "--days", "2"]
    code = run_command(lambda: app([*arguments, "--preset", "cold-start"], standalone_mode=True))
    assert code == 0
    meta = json.loads((tmp_path / "truth" / "meta.json").read_text())
    assert meta["preset"] == "cold-start"
    assert SimulationConfig.from_meta(meta) == SimulationConfig(
        subscribers=20, days=2, preset="cold-start"
    )


def test_truth_written_before_presets_reads_as_telco():
    meta = {"version": 1, "subscribers": 5, "days": 3, "start": "2026-01-01", "seed": 1}
    assert SimulationConfig.from_meta(meta).preset == "telco"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_oracle_is_exactly_the_probability_used_to_draw(worlds, preset):
    root = worlds[preset]
    truth = pl.read_parquet(
        root / "truth" / f"date={AS_OF + dt.timedelta(days=1)}" / "impressions.parquet"
    )
    assert truth.height > 50
    oracle = oracle_p_accept(root, AS_OF, truth[SUBSCRIBER_ID].unique(), truth[OFFER_ID].unique())
    joined = truth.join(oracle, on=[SUBSCRIBER_ID, OFFER_ID], how="left", suffix="_oracle")
    assert (joined[P_ACCEPT] == joined[f"{P_ACCEPT}_oracle"]).all()


def test_behaviour_only_probability_averages_the_taste_out():
    rng = np.random.default_rng(0)
    rows = 4
    signals = rng.uniform(0.0, 1.0, (rows, len(SIGNALS)))
    category = np.array([CATEGORIES.index(name) for name in ("video", "roaming", "esim", "tariff")])
    attractiveness = np.array([0.3, -0.2, 0.0, 0.1])
    held = np.array([False, False, False, True])
    spread = np.array([1.5, 0.4, 0.0, 1.0])
    expected = behaviour_only_probability(signals, category, attractiveness, spread, held, 0.7)
    draws = rng.normal(0.0, 1.0, 400_000)
    for row in range(rows):
        sampled = acceptance_probability(
            np.repeat(signals[[row]], len(draws), axis=0),
            np.full(len(draws), category[row]),
            np.full(len(draws), attractiveness[row]),
            spread[row] * draws,
            np.full(len(draws), held[row]),
            0.7,
        ).mean()
        assert expected[row] == pytest.approx(sampled, abs=2e-3)
    # Without spread there is nothing to average: exactly the planted probability with no taste.
    no_taste = acceptance_probability(signals, category, attractiveness, np.zeros(rows), held, 0.7)
    assert expected[2] == pytest.approx(no_taste[2], rel=1e-12)
    assert expected[3] == 0.0


def test_taste_heavy_world_hides_what_behaviour_alone_cannot_find(worlds):
    telco, taste_heavy = worlds["telco"], worlds["taste-heavy"]
    assert _top1_capture(telco, AS_OF) > 0.85
    assert _top1_capture(taste_heavy, AS_OF) < 0.65
    spread = {
        name: pl.read_parquet(worlds[name] / "truth" / f"date={START}" / "traits.parquet")
        .select(pl.col("taste_video").std())
        .item()
        for name in ("telco", "taste-heavy")
    }
    assert spread["taste-heavy"] > 2.5 * spread["telco"]


def test_cold_start_world_has_new_lines_and_offers_launched_late(worlds):
    root = worlds["cold-start"]
    catalog = pl.read_parquet(Lake(root).incoming(AS_OF) / "catalog.parquet")
    launch = START + dt.timedelta(days=DAYS - 1 - PRESETS["cold-start"].late_launch_days)
    late = catalog.filter(pl.col("start_date") == launch)[OFFER_ID].to_list()
    assert len(late) >= 5
    assert "tariff" not in catalog.filter(pl.col(OFFER_ID).is_in(late))["category"].to_list()
    shown = incoming_table(root, "offer_events").filter(pl.col(OFFER_ID).is_in(late))
    assert shown.height > 0
    assert shown[TS].dt.date().min() >= launch
    before = oracle_p_accept(root, launch - dt.timedelta(days=2))[OFFER_ID].unique()
    after = oracle_p_accept(root, launch)[OFFER_ID].unique()
    assert not set(late) & set(before.to_list())
    assert set(late) <= set(after.to_list())
    lines = {
        name: pl.read_parquet(Lake(worlds[name]).incoming(AS_OF) / "subscribers.parquet").height
        for name in ("telco", "cold-start")
    }
    assert lines["cold-start"] > 1.15 * lines["telco"]


# ---- content world ---------------------------------------------------------------------------

ITEM_OFFER = r"^(video|music|books|mini_game)_\d{4}$"


def _content_truth(root: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The content world's items and subscribers' content tastes, from its truth."""
    items = pl.read_parquet(root / "truth" / "content_items.parquet")
    traits = pl.concat(
        pl.read_parquet(path) for path in sorted((root / "truth").glob("date=*/traits.parquet"))
    )
    return items, traits


def test_content_world_delivers_consumption_by_the_contract(worlds):
    root = worlds["content"]
    contract = TABLES["consumption"]
    catalog = pl.read_parquet(Lake(root).incoming(AS_OF) / "catalog.parquet")
    items = catalog.filter(pl.col(OFFER_ID).str.contains(ITEM_OFFER))
    per_category = items.group_by("category").len()
    assert dict(per_category.iter_rows()) == {category: 50 for category in CONTENT_CATEGORIES}
    assert catalog.height == len(OFFERS) + 200
    outside = re.compile(r"^(film|track|book|game)_x\d{4}$")
    for date in Lake(root).dates("incoming"):
        frame = pl.read_parquet(Lake(root).incoming(date) / "consumption.parquet")
        assert frame.schema == pl.Schema(contract.polars_schema), date
        assert frame.null_count().sum_horizontal().item() == 0, date
        assert (frame[TS].dt.date() == date).all(), date
        assert set(frame[KIND]) <= set(CONSUMPTION_KINDS), date
        assert frame[KIND].str.contains(CATEGORY_PATTERN).all(), date
        assert (frame[QUANTITY] >= 0).all(), date
        in_catalog = frame[ITEM_ID].is_in(items[OFFER_ID].implode())
        assert frame.filter(~in_catalog)[ITEM_ID].str.contains(outside.pattern).all(), date
    everything = incoming_table(root, "consumption")
    share = everything[ITEM_ID].is_in(items[OFFER_ID].implode()).mean()
    assert 0.5 < share < 0.8  # a third or so of the consumption is of content outside the catalog
    subscribers = pl.read_parquet(Lake(root).incoming(AS_OF) / "subscribers.parquet").height
    assert 0.08 < everything.height / subscribers / DAYS < 0.4  # a few items a month on average
    for name in ("telco", "taste-heavy", "cold-start"):
        assert not (Lake(worlds[name]).incoming(AS_OF) / "consumption.parquet").exists()


def test_content_offers_have_the_oracle_probability_with_affinity(worlds):
    root = worlds["content"]
    checked = 0
    for back in range(1, 8):
        as_of = AS_OF - dt.timedelta(days=back)
        truth = pl.read_parquet(
            root / "truth" / f"date={as_of + dt.timedelta(days=1)}" / "impressions.parquet"
        ).filter(pl.col(OFFER_ID).str.contains(ITEM_OFFER))
        oracle = oracle_p_accept(
            root, as_of, truth[SUBSCRIBER_ID].unique(), truth[OFFER_ID].unique()
        )
        joined = truth.join(oracle, on=[SUBSCRIBER_ID, OFFER_ID], how="left", suffix="_oracle")
        assert (joined[P_ACCEPT] == joined[f"{P_ACCEPT}_oracle"]).all()
        checked += joined.height
    assert checked > 50
    # Behaviour alone explains the subscription offers of the content categories, not the items:
    # their affinity is averaged out (the same mean), and it holds much of their variance.
    for offers, explained in (
        (["video_plus_month", "music_premium", "books_audio", "game_arena_pass"], (0.75, 1.0)),
        ([f"{kind}_{n:04d}" for kind in ("video", "music") for n in range(1, 11)], (0.2, 0.7)),
    ):
        true = oracle_p_accept(root, AS_OF, offer_ids=offers).filter(pl.col(P_ACCEPT) > 0)
        behaviour = oracle_p_accept(root, AS_OF, offer_ids=offers, behaviour_only=True)
        paired = true.join(behaviour, on=[SUBSCRIBER_ID, OFFER_ID], suffix="_behaviour")
        error = (paired[P_ACCEPT] - paired[f"{P_ACCEPT}_behaviour"]) ** 2
        share = 1.0 - error.mean() / paired[P_ACCEPT].var()
        assert explained[0] < share < explained[1], offers
        assert true[P_ACCEPT].mean() == pytest.approx(
            paired[f"{P_ACCEPT}_behaviour"].mean(), rel=0.1
        )


def test_oracle_consumption_is_what_the_simulator_draws_from(worlds):
    root = worlds["content"]
    consumption = incoming_table(root, "consumption")
    first = START + dt.timedelta(days=20)
    expected: dict[str, float] = {}
    observed: dict[str, int] = {}
    events = catalog_events = 0
    log_likelihood = np.zeros(3)  # observed, expected, variance
    for date in (first + dt.timedelta(days=d) for d in range((AS_OF - first).days + 2)):
        day = consumption.filter(pl.col("date") == date).select(SUBSCRIBER_ID, ITEM_ID)
        oracle = oracle_consumption(root, date - dt.timedelta(days=1), day[SUBSCRIBER_ID])
        # Every consumption of a subscriber adds their whole choice distribution.
        per_event = day.select(SUBSCRIBER_ID).join(oracle, on=SUBSCRIBER_ID)
        for item_id, p in per_event.group_by(ITEM_ID).agg(pl.col(P_CHOICE).sum()).iter_rows():
            expected[item_id] = expected.get(item_id, 0.0) + p
        for item_id, count in day.group_by(ITEM_ID).len().iter_rows():
            observed[item_id] = observed.get(item_id, 0) + count
        events += day.height
        catalog_events += day[ITEM_ID].is_in(oracle[ITEM_ID].unique().implode()).sum()
        # Log-likelihood of the chosen catalog items under each subscriber's own distribution
        # (within the catalog) against its expectation: a subscriber-level check that a
        # popularity-only distribution fails.
        within = oracle.with_columns(
            (pl.col(P_CHOICE) / pl.col(P_CHOICE).sum().over(SUBSCRIBER_ID)).alias("q")
        )
        moments = within.group_by(SUBSCRIBER_ID).agg(
            (pl.col("q") * pl.col("q").log()).sum().alias("mean"),
            (pl.col("q") * pl.col("q").log() ** 2).sum().alias("square"),
        )
        chosen = day.join(within, on=[SUBSCRIBER_ID, ITEM_ID]).join(moments, on=SUBSCRIBER_ID)
        log_likelihood += [
            chosen["q"].log().sum(),
            chosen["mean"].sum(),
            (chosen["square"] - chosen["mean"] ** 2).sum(),
        ]
    catalog_share = sum(expected.values()) / events
    assert 0.5 < catalog_share < 0.8
    sd = np.sqrt(events * catalog_share * (1.0 - catalog_share))
    assert abs(catalog_events - catalog_share * events) < 4 * sd
    assert abs(log_likelihood[0] - log_likelihood[1]) < 3.5 * np.sqrt(log_likelihood[2])
    ids = sorted(expected)
    predicted = np.array([expected[i] for i in ids])
    counts = np.array([observed.get(i, 0) for i in ids])
    assert np.corrcoef(predicted, counts)[0, 1] > 0.85
    oracle = oracle_consumption(root, AS_OF)
    totals = oracle.group_by(SUBSCRIBER_ID).agg(pl.col(P_CHOICE).sum())[P_CHOICE]
    assert oracle.height == totals.len() * 200
    assert ((totals > 0.2) & (totals < 0.95)).all()
    assert totals.mean() == pytest.approx(catalog_share, abs=0.05)
    with pytest.raises(SimulationError, match="no content"):
        oracle_consumption(worlds["telco"], AS_OF)


def test_consumed_items_follow_the_planted_affinity(worlds):
    root = worlds["content"]
    items, traits = _content_truth(root)
    factors = [name for name in items.columns if name.startswith("v_")]
    tastes = traits.select(SUBSCRIBER_ID, *(f"content_taste_{k}" for k in range(len(factors))))
    consumption = incoming_table(root, "consumption").select(SUBSCRIBER_ID, ITEM_ID)
    u = consumption.join(tastes, on=SUBSCRIBER_ID, maintain_order="left").drop(ITEM_ID)
    u = u.drop(SUBSCRIBER_ID).to_numpy()
    v = consumption.join(items, on=ITEM_ID, maintain_order="left")
    consumed = (u * v.select(factors).to_numpy()).sum(axis=1)
    # The same subscribers' affinity to items drawn at random: about 0 (sd about 1).
    rng = np.random.default_rng(0)
    vectors = items.select(factors).to_numpy()
    baseline = (u * vectors[rng.integers(0, len(vectors), len(consumed))]).sum(axis=1)
    assert abs(baseline.mean()) < 0.1
    for inside in (True, False):  # in the catalog and outside it alike
        chosen = consumed[v["in_catalog"].to_numpy() == inside]
        assert chosen.mean() - baseline.mean() > 0.8, inside


# Content of small worlds of the other presets, digested: the content world's additions (and any
# other change) leave them as they were. A deliberate change to those worlds updates these.
WORLD_DIGESTS = {
    "telco": "2db4909a13e58afc9fc4168be2089e7d8252df3d79a7103cf49cbf28494f0a39",
    "taste-heavy": "11e30a72057149cae5da28a35b9a95158b41dd9dd1683b72c7b5caa100480ba3",
    "cold-start": "d321778a39a4cddc9de18933530277468c0f25f8280c2f691e00b759f70016b9",
}


def _world_digest(root: Path) -> str:
    """Digest of every file of a world, Parquet files by their content (not writer metadata)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode())
            content = pl.read_parquet(path).write_csv() if path.suffix == ".parquet" else None
            digest.update(path.read_bytes() if content is None else content.encode())
    return digest.hexdigest()


@pytest.mark.parametrize("preset", sorted(WORLD_DIGESTS))
def test_worlds_without_content_are_unchanged(tmp_path, preset):
    write_world(tmp_path, SimulationConfig(subscribers=100, days=6, seed=5, preset=preset))
    assert _world_digest(tmp_path) == WORLD_DIGESTS[preset]


def test_cli_simulates_a_content_world_that_ingests_with_its_consumption(tmp_path):
    from flows.cli import app, run_command

    simulate = ["simulate", "--data-dir", str(tmp_path), "--subscribers", "40", "--days", "3"]
    assert run_command(lambda: app([*simulate, "--preset", "content"], standalone_mode=True)) == 0
    ingest = ["ingest", "--data-dir", str(tmp_path)]
    assert run_command(lambda: app(ingest, standalone_mode=True)) == 0
    lake = Lake(tmp_path)
    assert lake.dates("raw", "consumption") == lake.dates("incoming")
    raw = raw_events(lake, "consumption", None, None).collect()
    assert raw.height == incoming_table(tmp_path, "consumption").height > 0


def test_content_world_is_reproducible_and_prefix_stable(tmp_path):
    config = SimulationConfig(subscribers=100, days=6, seed=5, preset="content")
    for name, days in (("a", 6), ("b", 6), ("short", 4)):
        write_world(tmp_path / name, dataclasses.replace(config, days=days))
    files = {
        name: {
            str(path.relative_to(tmp_path / name)): path.read_bytes()
            for path in sorted((tmp_path / name).rglob("*.parquet"))
        }
        for name in ("a", "b", "short")
    }
    assert files["a"] == files["b"]
    assert any("consumption" in path for path in files["short"])
    assert {path: files["a"][path] for path in files["short"]} == files["short"]


def _organic_chances(
    world, day: int, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, offer, daily chance) of an organic accept on `day` of every eligible pair of `rows`,
    computed from the simulator's state at the start of `day` with the simulator's own pieces."""
    from mia.simulate.acceptance import organic_accept_chance, organic_browse_chance
    from mia.simulate.config import NEVER

    held = (world.hold_start != NEVER) & (world.hold_end >= day)
    eligible = world._eligible(rows, day, held)
    weights = eligible * world._organic_weight(rows)
    row, offer = np.nonzero(eligible)
    pick = weights[row, offer] / weights.sum(axis=1)[row]
    browse = organic_browse_chance(world.signals[rows], world.config.world)[row]
    accept = organic_accept_chance(world._probability(rows[row], offer, held), world.config.world)
    return rows[row], offer, browse * pick * accept


@pytest.mark.parametrize("preset", ["telco", "organic"])
def test_oracle_organic_chance_is_the_one_the_simulator_draws_from(worlds, preset):
    """The oracle's one-day p_organic, given the simulator's eligible pairs, equals the chance the
    simulator's state gives every pair on the next day; over the control group's days, the organic
    accepts drawn match the sum of those chances (a Poisson count within 4 standard deviations)."""
    from mia.simulate.oracle import oracle_uplift
    from mia.simulate.world import _World

    world = _World(_config(preset))
    c = world.columns
    expected = observed = 0.0
    last = (AS_OF - START).days + 1
    for day in range(last + 1):
        if day >= 10:
            rows = np.flatnonzero(c["control"] & (c["activation_day"] < day))
            expected += _organic_chances(world, day, rows)[2].sum()
        if day == last:
            break
        tables, _ = world.step(day)
        if day >= 10:
            events = tables["offer_events"].filter(pl.col("event") == "accept")
            observed += events[SUBSCRIBER_ID].is_in(c["id"][c["control"]].tolist()).sum()
    assert abs(observed - expected) < 4.0 * np.sqrt(expected) + 1.0
    if preset == "organic":
        assert expected > 200  # organic demand is real: hundreds of control accepts

    rows = np.flatnonzero(c["activation_day"] < last)[:300]
    row, offer, chance = _organic_chances(world, last, rows)
    pairs = pl.DataFrame(
        {
            SUBSCRIBER_ID: c["id"][row],
            OFFER_ID: [world.offers.ids[o] for o in offer],
            "chance": chance,
        }
    )
    truth = oracle_uplift(
        worlds[preset], AS_OF, 1, subscriber_ids=c["id"][rows], eligible=pairs
    ).join(pairs, on=[SUBSCRIBER_ID, OFFER_ID])
    assert truth.height == pairs.height > 1000
    # 1 - (1 - q) loses the last bits of q: equal to about 1e-9 relative.
    assert np.allclose(truth["p_organic"], truth["chance"], rtol=1e-9, atol=0.0)
    # Over a horizon the daily chance compounds (p_accept and browsing held as of AS_OF).
    week = oracle_uplift(worlds[preset], AS_OF, 7, subscriber_ids=c["id"][rows], eligible=pairs)
    week = week.join(pairs, on=[SUBSCRIBER_ID, OFFER_ID])
    assert np.allclose(week["p_organic"], 1.0 - (1.0 - week["chance"]) ** 7, rtol=1e-9)


def test_organic_world_has_sure_things_that_expected_value_ranks_first(worlds):
    """In `organic` many high-P(accept | shown) pairs would be accepted without a contact, so
    ranking by P(accept | shown) is far from ranking by true uplift; in `telco` it is the same."""
    from mia.simulate.oracle import oracle_uplift
    from offers.uplift import qini_coefficient

    measured = {}
    for name in ("telco", "organic"):
        truth = oracle_uplift(worlds[name], AS_OF, 7).filter(pl.col(P_ACCEPT) > 0)
        top = truth.filter(pl.col(P_ACCEPT) >= pl.col(P_ACCEPT).quantile(0.9))
        measured[name] = (
            top["p_organic"].sum() / top[P_ACCEPT].sum(),
            np.mean(
                [
                    qini_coefficient(part[P_ACCEPT], part["true_uplift"])
                    for _, part in truth.group_by(OFFER_ID)
                ]
            ),
        )
    assert measured["telco"][0] < 0.01 and measured["telco"][1] > 0.99
    assert measured["organic"][0] > 0.15 and measured["organic"][1] < 0.85
