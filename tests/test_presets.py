"""Simulator presets: other kinds of world with the same tables, each with an exact oracle."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mia.lake import Lake
from mia.schema import OFFER_ID, P_ACCEPT, SUBSCRIBER_ID, TS
from mia.simulate import (
    CATEGORIES,
    PRESETS,
    SIGNALS,
    SimulationConfig,
    SimulationError,
    acceptance_probability,
    oracle_p_accept,
    write_world,
)
from mia.simulate.acceptance import behaviour_only_probability
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
