"""Off-policy evaluation: exact on hand-computed logs, validated on real logged bandit data (the
Open Bandit Dataset) and against the simulator's true values; the `mia evaluate-policy` command."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from flows.cli import EXIT_BAD_INPUT, EXIT_OK
from mia.lake import Lake
from mia.schema import OFFER_ID, SUBSCRIBER_ID, VALUE
from mia.simulate import oracle_p_accept, write_world
from offers.ope import (
    ACCEPTED,
    ESTIMATORS,
    PREDICTED_ACCEPT,
    PROPENSITY,
    TARGET_PREDICTED_ACCEPT,
    TARGET_PROBABILITY,
    PolicyEvaluationError,
    champion_policy,
    estimate_policy_value,
    evaluate_policy,
    logged_impressions,
    popularity_policy,
    uniform_policy,
)
from tests.conftest import TINY_LAST_DAY
from tests.test_cli_text import mia

OBP_WHEEL = Path(__file__).parent.parent / ".cache" / "obp" / "obp-0.4.1-py3-none-any.whl"
# On-policy click rates of the Open Bandit Dataset sample ("all" campaign, 10,000 rows each).
OBD_RANDOM_CLICK_RATE = 0.0038
OBD_BTS_CLICK_RATE = 0.0042
ITEM, POSITION = "item_id", "position"

# Four impressions: ratios target / propensity = [2, 4, 1, 1], weighted accepts [2, 0, 1, 0].
TINY_LOG = pl.DataFrame(
    {
        PROPENSITY: [0.5, 0.25, 0.5, 1.0],
        ACCEPTED: [1, 0, 1, 0],
        "value": [10.0, 20.0, 2.0, 5.0],
    }
)
TINY_TARGET = [1.0, 1.0, 0.5, 1.0]


def _row(result: pl.DataFrame, estimator: str, metric: str = "accepts_per_impression") -> dict:
    return result.filter((pl.col("estimator") == estimator) & (pl.col("metric") == metric)).row(
        0, named=True
    )


def test_estimators_match_a_hand_computed_log():
    reward_model = pl.DataFrame(
        {
            PREDICTED_ACCEPT: [0.5] * 4,
            TARGET_PREDICTED_ACCEPT: [0.4] * 4,
            "predicted_value": [1.0] * 4,
            "target_predicted_value": [3.0] * 4,
        }
    )
    result = estimate_policy_value(TINY_LOG, TINY_TARGET, reward_model, n_boot=50, seed=1)
    assert _row(result, "ips")["value"] == pytest.approx(3 / 4)
    assert _row(result, "snips")["value"] == pytest.approx(3 / 8)
    # DR terms: 0.4 + w * (r - 0.5) = [1.4, -1.6, 0.9, -0.1].
    assert _row(result, "dr")["value"] == pytest.approx(0.6 / 4)
    assert _row(result, "ips", "value_per_impression")["value"] == pytest.approx(22 / 4)
    assert _row(result, "snips", "value_per_impression")["value"] == pytest.approx(22 / 8)
    # 3 + w * (r * value - 1) = [3 + 18, 3 - 4, 3 + 1, 3 - 1].
    assert _row(result, "dr", "value_per_impression")["value"] == pytest.approx(26 / 4)
    assert set(result["n"]) == {4}
    assert _row(result, "ips")["effective_sample_size"] == pytest.approx(64 / 22)
    for row in result.iter_rows(named=True):
        assert row["low"] <= row["high"]


def _random_log(n: int) -> pl.DataFrame:
    rng = np.random.default_rng(3)
    return pl.DataFrame({PROPENSITY: rng.uniform(0.05, 1.0, n), ACCEPTED: rng.random(n) < 0.3})


def test_on_policy_target_gives_the_logged_mean():
    n = 500
    logged = _random_log(n)
    # A reward model that predicts the same for every offer cancels out of DR on-policy.
    constant = pl.DataFrame({PREDICTED_ACCEPT: [0.2] * n, TARGET_PREDICTED_ACCEPT: [0.2] * n})
    result = estimate_policy_value(logged, logged[PROPENSITY], constant, n_boot=200, seed=0)
    mean = float(logged[ACCEPTED].mean())
    for estimator in ("ips", "snips", "dr"):
        row = _row(result, estimator)
        assert row["value"] == pytest.approx(mean)
        assert row["low"] < mean < row["high"]
        assert row["effective_sample_size"] == pytest.approx(n)
    assert result["metric"].unique().to_list() == ["accepts_per_impression"]


def test_bootstrap_is_reproducible_with_a_seed():
    logged = _random_log(300)
    target = np.linspace(0.0, 1.0, 300)
    first = estimate_policy_value(logged, target, n_boot=300, seed=7)
    assert first.equals(estimate_policy_value(logged, target, n_boot=300, seed=7))
    assert not first.equals(estimate_policy_value(logged, target, n_boot=300, seed=8))


@pytest.mark.parametrize(
    ("logged", "target", "message"),
    [
        (TINY_LOG.with_columns(pl.lit(0.0).alias(PROPENSITY)), TINY_TARGET, "in (0, 1]"),
        (TINY_LOG.with_columns(pl.lit(1.5).alias(PROPENSITY)), TINY_TARGET, "in (0, 1]"),
        (TINY_LOG.drop(PROPENSITY), TINY_TARGET, "column 'propensity' is missing"),
        (TINY_LOG.drop(ACCEPTED), TINY_TARGET, "column 'accepted' is missing"),
        (TINY_LOG.head(0), [], "no rows"),
        (TINY_LOG, [1.0, 1.0], "one_per_logged_row"),
        (TINY_LOG, [1.0, 2.0, 0.0, 0.0], "in [0, 1]"),
        (TINY_LOG.with_columns(pl.lit(2).alias(ACCEPTED)), TINY_TARGET, "0 or 1"),
    ],
)
def test_bad_input_is_refused_naming_table_column_and_rule(logged, target, message):
    with pytest.raises(
        PolicyEvaluationError, match=message.replace("(", r"\(").replace("[", r"\[")
    ):
        estimate_policy_value(logged, target, n_boot=10)


def test_logged_impressions_pair_each_impression_with_its_outcome():
    at = dt.datetime(2026, 3, 1, 10)
    minutes = dt.timedelta(minutes=1)
    events = pl.DataFrame(
        {
            "subscriber_id": [1, 1, 1, 2, 2, 3, 3],
            "offer_id": ["a", "a", "b", "a", "a", "a", "a"],
            "ts": [at, at + minutes, at, at, at - minutes, at, at + dt.timedelta(days=1)],
            "event": ["impression", "accept", "impression", "impression", "accept",
                      "impression", "accept"],
            "propensity": [0.5, None, 0.25, 1.0, None, None, None],
        }
    )  # fmt: skip
    catalog = pl.DataFrame({"offer_id": ["a", "b"], "value": [10.0, 3.0]})
    logged = logged_impressions(events, catalog)
    # An accept counts for the same offer, later the same day; no propensity: left out.
    assert logged.select("subscriber_id", "offer_id", PROPENSITY, ACCEPTED, "value").rows() == [
        (1, "a", 0.5, 1, 10.0),
        (1, "b", 0.25, 0, 3.0),
        (2, "a", 1.0, 0, 10.0),
    ]
    with pytest.raises(PolicyEvaluationError, match="rule 'logged_propensity'"):
        logged_impressions(events.drop("propensity"))


def test_target_policies_spread_their_probability():
    offers = pl.DataFrame(
        {"subscriber_id": [1, 1, 1, 2], "offer_id": ["a", "b", "c", "b"], "rank": [1, 2, 3, 1]}
    )
    assert champion_policy(offers).rows() == [(1, "a", 1.0), (2, "b", 1.0)]
    assert champion_policy(offers, top=2).rows() == [(1, "a", 0.5), (1, "b", 0.5), (2, "b", 1.0)]
    candidates = offers.select("subscriber_id", "offer_id")
    assert uniform_policy(candidates).filter(pl.col("subscriber_id") == 1)[
        TARGET_PROBABILITY
    ].to_list() == pytest.approx([1 / 3] * 3)
    rates = pl.DataFrame({"offer_id": ["a", "b", "c"], PREDICTED_ACCEPT: [0.2, 0.2, 0.1]})
    # The best rate wins; equal rates share it.
    assert popularity_policy(candidates, rates).rows() == [
        (1, "a", 0.5),
        (1, "b", 0.5),
        (2, "b", 1.0),
    ]


def test_simulated_impressions_carry_the_logging_propensity(simulated_root):
    day = TINY_LAST_DAY
    events = pl.read_parquet(Lake(simulated_root).incoming(day) / "offer_events.parquet")
    truth = pl.read_parquet(simulated_root / "truth" / f"date={day}" / "impressions.parquet")
    impressions = events.filter(pl.col("event") == "impression")
    assert impressions[PROPENSITY].null_count() == 0
    assert impressions[PROPENSITY].is_between(0, 1, closed="right").all()
    assert events.filter(pl.col("event") != "impression")[PROPENSITY].null_count() == (
        events.height - impressions.height
    )
    keys = ["subscriber_id", "offer_id", "ts"]
    assert (
        impressions.select(*keys, PROPENSITY)
        .sort(keys)
        .equals(truth.select(*keys, PROPENSITY).sort(keys))
    )


# ---- the Open Bandit Dataset (real logs of a uniform-random and a Bernoulli TS policy) ----------


def _obd(policy: str) -> pl.DataFrame:
    """One policy's logged sample of the OBD "all" campaign, read from the obp wheel."""
    if not OBP_WHEEL.is_file():
        pytest.skip(
            f"{OBP_WHEEL.name} not in {OBP_WHEEL.parent} and the package index was unreachable "
            "when `make test` tried to fetch it: the Open Bandit Dataset checks did not run"
        )
    with zipfile.ZipFile(OBP_WHEEL) as wheel:
        raw = wheel.read(f"obp/dataset/obd/{policy}/all/all.csv")
    return pl.read_csv(io.BytesIO(raw), columns=[ITEM, POSITION, "click", "propensity_score"])


def _as_logged(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.rename({"propensity_score": PROPENSITY, "click": ACCEPTED})


def _click_model(logged: pl.DataFrame) -> pl.DataFrame:
    """Reward model: the log's click rate of each (item, position), the overall rate if unseen."""
    seen = logged.group_by(ITEM, POSITION).agg(pl.col(ACCEPTED).mean().alias("click_rate"))
    every = logged.select(ITEM).unique().join(logged.select(POSITION).unique(), how="cross")
    overall = float(logged[ACCEPTED].mean())
    return every.join(seen, on=[ITEM, POSITION], how="left").with_columns(
        pl.col("click_rate").fill_null(overall)
    )


def _evaluate(logged: pl.DataFrame, target: pl.DataFrame) -> pl.DataFrame:
    """IPS/SNIPS/DR of a context-free target [item_id, position, pi] on a logged frame."""
    model = _click_model(logged)
    direct = (
        model.join(target, on=[ITEM, POSITION], how="left")
        .group_by(POSITION)
        .agg((pl.col("pi").fill_null(0.0) * pl.col("click_rate")).sum().alias("direct"))
    )
    rows = (
        logged.with_row_index("row")
        .join(target, on=[ITEM, POSITION], how="left")
        .join(model, on=[ITEM, POSITION], how="left")
        .join(direct, on=POSITION, how="left")
        .sort("row")
    )
    reward_model = rows.select(
        pl.col("click_rate").alias(PREDICTED_ACCEPT),
        pl.col("direct").alias(TARGET_PREDICTED_ACCEPT),
    )
    return estimate_policy_value(rows, rows["pi"].fill_null(0.0), reward_model, n_boot=1000, seed=0)


def test_obd_logging_propensities_are_what_the_estimates_assume():
    random, bts = _obd("random"), _obd("bts")
    # The random policy is uniform over the 80 items at every position.
    assert random["propensity_score"].unique().to_list() == [1 / 80]
    assert random.height == bts.height == 10_000
    assert random["click"].mean() == pytest.approx(OBD_RANDOM_CLICK_RATE)
    assert bts["click"].mean() == pytest.approx(OBD_BTS_CLICK_RATE)
    # BTS's probabilities move as it learns: not constant per (item, position).
    per_pair = bts.group_by(ITEM, POSITION).agg(pl.col("propensity_score").n_unique())
    assert per_pair["propensity_score"].max() > 100


def _bts_policy(bts: pl.DataFrame) -> pl.DataFrame:
    """BTS's probability of each item at each position, averaged over the logged week.

    BTS ignores the user, but its probabilities change as it learns. The share of a position's
    rounds that showed an item estimates the item's probability there averaged over the rounds;
    the mean logged propensity would over-weight the rounds when the item was likely (it is shown
    more often then).
    """
    per_position = bts.group_by(POSITION).agg(pl.len().alias("rounds"))
    return (
        bts.group_by(ITEM, POSITION)
        .agg(pl.len().alias("shown"))
        .join(per_position, on=POSITION)
        .select(ITEM, POSITION, (pl.col("shown") / pl.col("rounds")).alias("pi"))
    )


def test_obd_random_log_estimates_bts_value():
    bts = _obd("bts")
    result = _evaluate(_as_logged(_obd("random")), _bts_policy(bts))
    for estimator in ("ips", "snips", "dr"):
        row = _row(result, estimator)
        assert row["low"] <= OBD_BTS_CLICK_RATE <= row["high"], row


def test_obd_bts_log_estimates_random_value():
    bts = _obd("bts")
    items, positions = bts.select(ITEM).unique(), bts.select(POSITION).unique()
    uniform = items.join(positions, how="cross").with_columns(pl.lit(1 / 80).alias("pi"))
    result = _evaluate(_as_logged(bts), uniform)
    for estimator in ("ips", "snips", "dr"):
        row = _row(result, estimator)
        assert row["low"] <= OBD_RANDOM_CLICK_RATE <= row["high"], row


# ---- the simulated world: estimates against the oracle's true value ------------------------------


def test_simulated_champion_value_lies_within_the_intervals(night_run, tiny_config, tmp_path):
    # The night's offers are evaluated on the impressions of the two weeks after it: the same
    # world simulated 14 days longer (a longer world has the same first days).
    later = 14
    world = tmp_path / "world"
    write_world(world, dataclasses.replace(tiny_config, days=tiny_config.days + later))
    days = [TINY_LAST_DAY + dt.timedelta(days=i) for i in range(1, later + 1)]
    incoming = Lake(world).incoming
    events = pl.concat(pl.read_parquet(incoming(day) / "offer_events.parquet") for day in days)
    catalog = pl.read_parquet(incoming(days[-1]) / "catalog.parquet")
    logged = logged_impressions(events, catalog)
    # The champion: each subscriber's rank-1 offer of the night, shown with probability 1.
    offers = pl.read_parquet(Lake(night_run.data_dir).offers(TINY_LAST_DAY) / "offers.parquet")
    champion = champion_policy(offers)
    assert champion[TARGET_PROBABILITY].unique().to_list() == [1.0]
    result = evaluate_policy(logged, champion, n_boot=1000, seed=0)

    # True value: the oracle's P(accept) of the champion's offer at every logged impression.
    chosen = logged.select("date", SUBSCRIBER_ID).join(champion, on=SUBSCRIBER_ID)
    truth = pl.concat(
        oracle_p_accept(
            world,
            day - dt.timedelta(days=1),
            part[SUBSCRIBER_ID].unique(),
            part[OFFER_ID].unique().to_list(),
        ).with_columns(pl.lit(day).alias("date"))
        for (day,), part in chosen.group_by("date")
    )
    true_accepts = chosen.join(truth, on=["date", SUBSCRIBER_ID, OFFER_ID], how="left").join(
        catalog.select(OFFER_ID, VALUE), on=OFFER_ID
    )
    true_value = {
        "accepts_per_impression": float(true_accepts["p_accept"].mean()),
        "value_per_impression": float((true_accepts["p_accept"] * true_accepts[VALUE]).mean()),
    }
    assert set(result["n"]) == {chosen.height}
    assert true_accepts["p_accept"].null_count() == 0
    for estimator in ESTIMATORS:
        for metric, value in true_value.items():
            row = _row(result, estimator, metric)
            assert row["low"] <= value <= row["high"], (row, value)


# ---- the command line ----------------------------------------------------------------------------


def _without_propensities(root: Path, days: list[dt.date]) -> None:
    """Rewrite the ingested offer events of `days` as an operator delivers them: no propensity."""
    for day in days:
        for part in (root / "raw" / "offer_events" / f"date={day}").glob("*.parquet"):
            frame = pl.read_parquet(part)
            frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(PROPENSITY)).write_parquet(part)


def test_cli_refuses_a_log_without_propensities(fresh_root, capsys):
    days = [TINY_LAST_DAY - dt.timedelta(days=1), TINY_LAST_DAY]
    _without_propensities(fresh_root, days)
    code = mia(
        "evaluate-policy", "--data-dir", str(fresh_root), "--from", str(days[0]),
        "--to", str(days[-1]), "--policy", "random",
    )  # fmt: skip
    assert code == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert "offer_events.propensity" in error
    assert "rule 'logged_propensity'" in error


def test_cli_estimates_the_random_policy_and_writes_json(fresh_root, tmp_path, capsys):
    out = tmp_path / "random.json"
    arguments = (
        "evaluate-policy", "--data-dir", str(fresh_root), "--from", str(TINY_LAST_DAY),
        "--to", str(TINY_LAST_DAY), "--policy", "random", "--n-boot", "200", "--out", str(out),
    )  # fmt: skip
    assert mia(*arguments) == EXIT_OK
    printed = capsys.readouterr().out
    assert "snips" in printed and "effective_sample_size" in printed
    written = json.loads(out.read_text())
    assert {row["estimator"] for row in written["estimates"]} == set(ESTIMATORS)
    assert all(row["low"] <= row["high"] for row in written["estimates"])
    # The same run gives the same numbers; an existing file is replaced only with --force.
    assert mia(*arguments) == EXIT_BAD_INPUT
    assert "--force" in capsys.readouterr().err
    assert mia(*arguments, "--force") == EXIT_OK
    assert json.loads(out.read_text()) == written


def test_cli_says_what_a_policy_needs(fresh_root, tmp_path, capsys):
    day = str(TINY_LAST_DAY)
    base = ("evaluate-policy", "--data-dir", str(fresh_root), "--from", day, "--to", day)
    assert mia(*base, "--policy", "champion") == EXIT_BAD_INPUT
    assert "no published offers for the nights" in capsys.readouterr().err
    settings = tmp_path / "other.toml"
    settings.write_text("top_k = 3\n")
    assert mia(*base, "--policy", str(settings)) == EXIT_BAD_INPUT
    assert "no stored scores to re-rank" in capsys.readouterr().err
    assert mia(*base, "--policy", "greedy") == EXIT_BAD_INPUT
    assert "no such settings file" in capsys.readouterr().err
