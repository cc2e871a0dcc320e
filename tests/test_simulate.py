"""The synthetic telco: contract-valid, deterministic, prefix-stable, learnable, and honest."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from mia.errors import InputError
from mia.hashing import control_mask
from mia.lake import Lake
from mia.schema import (
    CATEGORY,
    EVENT,
    OFFER_ID,
    P_ACCEPT,
    PRODUCT_ID,
    SUBSCRIBER_ID,
    TABLES,
    TS,
)
from mia.simulate import (
    BASE_LOGIT,
    CATEGORIES,
    CATEGORY_WEIGHTS,
    OFFERS,
    SIGNALS,
    SimulationConfig,
    SimulationError,
    acceptance_probability,
    generate_days,
    oracle_p_accept,
    write_world,
)
from tests.conftest import incoming_table

START = dt.date(2026, 1, 1)
WORLD = SimulationConfig(subscribers=1000, days=30, start=START, seed=3)


@pytest.fixture(scope="module")
def world_root(tmp_path_factory) -> Path:
    """A 1000-subscriber, 30-day world written once for this module."""
    root = tmp_path_factory.mktemp("sim") / "data"
    write_world(root, WORLD)
    return root


def _file_bytes(root: Path, dates: list[dt.date] | None = None) -> dict[str, bytes]:
    files = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        if dates is not None and not any(f"date={d.isoformat()}" in str(path) for d in dates):
            continue
        files[str(path.relative_to(root))] = path.read_bytes()
    return files


# ---- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"subscribers": 0}, "subscribers == 0"),
        ({"days": 0}, "days == 0"),
        ({"seed": -1}, "seed == -1"),
        ({"control_share": 1.0}, "control_share == 1.0"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(InputError, match=re.escape(message)):
        SimulationConfig(**changes)


def test_write_world_rejects_unknown_format(tmp_path):
    with pytest.raises(SimulationError, match="file_format == 'json'"):
        write_world(tmp_path, SimulationConfig(subscribers=10, days=1), file_format="json")
    assert not (tmp_path / "incoming").exists()


def test_write_world_never_replaces_a_delivery(tmp_path):
    config = SimulationConfig(subscribers=10, days=2)
    delivery = Lake(tmp_path).incoming(config.start + dt.timedelta(days=1)) / "usage.csv"
    delivery.parent.mkdir(parents=True)
    delivery.write_text("the operator's file")
    with pytest.raises(SimulationError, match="not a simulated world"):
        write_world(tmp_path, config)
    assert delivery.read_text() == "the operator's file"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["incoming"]
    with pytest.raises(SimulationError, match="not a simulated world"):
        write_world(tmp_path, config, overwrite=True)  # not even when asked to
    assert delivery.read_text() == "the operator's file"
    simulated = tmp_path / "simulated"
    dates = write_world(simulated, config)
    assert write_world(simulated, config, overwrite=True) == dates  # a simulated world is


# ---- determinism -----------------------------------------------------------------------------


def test_simulate_refuses_to_overwrite_deliveries_unless_forced(tmp_path, capsys):
    from flows.cli import app, run_command

    def simulate(*extra: str) -> int:
        arguments = ["simulate", "--data-dir", str(tmp_path), "--subscribers", "20", "--days", "3"]
        return run_command(lambda: app([*arguments, *extra], standalone_mode=True))

    assert simulate() == 0
    marker = tmp_path / "incoming" / "date=2026-01-02" / "marker"
    marker.write_text("written after the simulation")
    assert simulate() == 2
    assert "already holds 3 of the 3 days to simulate (2026-01-01, 2026-01-02, 2026-01-03)" in (
        capsys.readouterr().err.replace("\n", " ")
    )
    assert marker.exists()
    assert simulate("--force") == 0
    assert not marker.exists()
    assert len(Lake(tmp_path).dates("incoming")) == 3


def test_same_config_gives_byte_identical_files(tmp_path):
    config = SimulationConfig(subscribers=300, days=6, seed=5)
    first = write_world(tmp_path / "a", config)
    write_world(tmp_path / "b", config)
    files_a, files_b = _file_bytes(tmp_path / "a"), _file_bytes(tmp_path / "b")
    assert first == [START + dt.timedelta(days=d) for d in range(6)]
    assert len(files_a) == 6 * (8 + 4) - 1 + 2  # tables + truth (no impressions on day 0) + meta
    assert files_a == files_b


def test_more_days_reproduce_the_earlier_days(tmp_path):
    short = SimulationConfig(subscribers=300, days=10, seed=5)
    long = SimulationConfig(subscribers=300, days=15, seed=5)
    write_world(tmp_path / "short", short)
    write_world(tmp_path / "long", long)
    first_days = [START + dt.timedelta(days=d) for d in range(10)]
    files_short = _file_bytes(tmp_path / "short", first_days)
    files_long = _file_bytes(tmp_path / "long", first_days)
    assert len(files_short) == 10 * 12 - 1
    assert files_short == files_long


def test_other_seed_gives_another_world():
    a = next(iter(generate_days(SimulationConfig(subscribers=50, days=1, seed=1))))[1]
    b = next(iter(generate_days(SimulationConfig(subscribers=50, days=1, seed=2))))[1]
    assert not a["usage"].equals(b["usage"])


def test_generate_days_matches_written_files(world_root):
    for date, tables in generate_days(SimulationConfig(**{**WORLD.__dict__, "days": 3})):
        for name, frame in tables.items():
            written = pl.read_parquet(Lake(world_root).incoming(date) / f"{name}.parquet")
            assert written.equals(frame), (date, name)


# ---- contract --------------------------------------------------------------------------------


def test_every_table_every_day_follows_the_contract():
    config = SimulationConfig(subscribers=400, days=8, seed=9)
    for date, tables in generate_days(config):
        # Consumption comes only with the content preset.
        assert list(tables) == [name for name in TABLES if name != "consumption"]
        for name, frame in tables.items():
            table = TABLES[name]
            assert frame.schema == pl.Schema(table.polars_schema), (date, name)
            for column in table.columns:
                values = frame.get_column(column.name)
                if not column.nullable:
                    assert values.null_count() == 0, (date, name, column.name)
                if column.allowed is not None:
                    assert set(values.drop_nulls().unique()) <= set(column.allowed)
                if column.non_negative:
                    assert (values.drop_nulls() >= 0).all(), (date, name, column.name)
            if table.key:
                assert frame.select(table.key).is_duplicated().sum() == 0, (date, name)
            if table.event_time:
                ts = frame.get_column(table.event_time)
                assert (ts.dt.date() == date).all(), (date, name)
        assert tables["subscribers"].height >= config.subscribers
        usage_per_subscriber = tables["usage"].height / tables["subscribers"].height
        assert 3.0 <= usage_per_subscriber <= 6.0


def test_subscriber_mix_is_operator_like(world_root):
    subscribers = pl.read_parquet(
        Lake(world_root).incoming(START + dt.timedelta(days=29)) / "subscribers.parquet"
    )
    android = (subscribers["device_os"] == "android").mean()
    assert 0.78 <= android <= 0.9
    apple = subscribers.filter(pl.col("device_vendor") == "apple")
    assert (apple["device_os"] == "ios").all()
    assert subscribers["region"].n_unique() == 10
    assert subscribers["tariff_id"].n_unique() == 6
    assert subscribers[SUBSCRIBER_ID].to_list()[:3] == [1, 2, 3]
    assert subscribers.height > WORLD.subscribers  # new activations during the period
    assert subscribers["activation_date"].min() < START - dt.timedelta(days=3 * 365)


def test_catalog_covers_every_category_with_eligibility_data(world_root):
    catalog = pl.read_parquet(Lake(world_root).incoming(START) / "catalog.parquet")
    assert catalog.height >= 60
    assert set(catalog[CATEGORY]) == set(CATEGORIES)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", offer) for offer in catalog[OFFER_ID])
    assert (catalog["value"] > 0).all()
    for column in ("regions", "device_os", "requires_product", "excludes_product", "capacity"):
        assert catalog[column].null_count() < catalog.height, column
    assert catalog.filter(pl.col("start_date") > START).height >= 2
    assert catalog.filter(pl.col("end_date").is_not_null()).height >= 2
    assert set(catalog["requires_product"].drop_nulls()) <= set(catalog[PRODUCT_ID])


def test_csv_world_has_the_same_content(tmp_path):
    config = SimulationConfig(subscribers=80, days=3, seed=4)
    write_world(tmp_path / "csv", config, file_format="csv")
    write_world(tmp_path / "parquet", config)
    for date in Lake(tmp_path / "csv").dates("incoming"):
        delivered = sorted(p.stem for p in Lake(tmp_path / "csv").incoming(date).iterdir())
        assert delivered == sorted(
            p.stem for p in Lake(tmp_path / "parquet").incoming(date).iterdir()
        )
        for name in delivered:
            from_csv = pl.read_csv(
                Lake(tmp_path / "csv").incoming(date) / f"{name}.csv",
                schema=TABLES[name].polars_schema,
            )
            from_parquet = pl.read_parquet(
                Lake(tmp_path / "parquet").incoming(date) / f"{name}.parquet"
            )
            assert from_csv.equals(from_parquet), (date, name)


def test_progress_is_reported_per_day(tmp_path):
    calls = []
    write_world(
        tmp_path, SimulationConfig(subscribers=20, days=3), progress=lambda *a: calls.append(a)
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]


# ---- offers and responses --------------------------------------------------------------------


def test_every_category_has_impressions_and_accepts(world_root):
    events = incoming_table(world_root, "offer_events").join(
        pl.read_parquet(Lake(world_root).incoming(START) / "catalog.parquet").select(
            OFFER_ID, CATEGORY
        ),
        on=OFFER_ID,
    )
    counts = events.group_by(CATEGORY, EVENT).len()
    for event in ("impression", "accept"):
        seen = set(counts.filter(pl.col(EVENT) == event)[CATEGORY])
        assert seen == set(CATEGORIES), (event, set(CATEGORIES) - seen)


def test_control_group_sees_no_impressions_but_accepts_organically(world_root):
    events = incoming_table(world_root, "offer_events")
    ids = events[SUBSCRIBER_ID].to_numpy()
    control = control_mask(ids, WORLD.group_salt, WORLD.control_share)
    control_events = events.filter(pl.Series(control))
    assert control_events.height > 0
    assert set(control_events[EVENT]) == {"accept"}
    subscribers = incoming_table(world_root, "subscribers").filter(
        pl.col("date") == pl.col("date").max()
    )
    share = control_mask(subscribers[SUBSCRIBER_ID], WORLD.group_salt, WORLD.control_share).mean()
    assert 0.07 <= share <= 0.13


def test_impression_volume_and_response_order(world_root):
    events = incoming_table(world_root, "offer_events")
    subscribers = incoming_table(world_root, "subscribers")
    treatment_days = subscribers.filter(
        ~pl.Series(control_mask(subscribers[SUBSCRIBER_ID], WORLD.group_salt, WORLD.control_share))
    ).height
    impressions = events.filter(pl.col(EVENT) == "impression")
    assert 0.2 <= impressions.height / treatment_days <= 0.4
    assert impressions.select(SUBSCRIBER_ID, OFFER_ID, "date").is_duplicated().sum() == 0
    shown = impressions.select(SUBSCRIBER_ID, OFFER_ID, "date", pl.col(TS).alias("shown_at"))
    responses = events.filter(pl.col(EVENT).is_in(["click", "dismiss"]))
    joined = responses.join(shown, on=[SUBSCRIBER_ID, OFFER_ID, "date"], how="left")
    assert joined["shown_at"].null_count() == 0
    assert (joined[TS] > joined["shown_at"]).all()
    accepts = events.filter(pl.col(EVENT) == "accept").join(
        shown, on=[SUBSCRIBER_ID, OFFER_ID, "date"], how="left"
    )
    after_impression = accepts.filter(pl.col("shown_at").is_not_null())
    assert (after_impression[TS] > after_impression["shown_at"]).all()
    organic_share = accepts["shown_at"].null_count() / accepts.height
    assert 0.02 <= organic_share <= 0.3


def test_accepted_products_become_holdings_and_respect_catalog_rules(world_root):
    events = incoming_table(world_root, "offer_events").filter(pl.col(EVENT) == "accept")
    catalog = pl.read_parquet(Lake(world_root).incoming(START) / "catalog.parquet")
    holdings = incoming_table(world_root, "holdings")
    accepted = events.join(catalog.select(OFFER_ID, PRODUCT_ID), on=OFFER_ID).select(
        SUBSCRIBER_ID, PRODUCT_ID, "date"
    )
    held = holdings.filter(pl.col("start_date") == pl.col("date")).select(
        SUBSCRIBER_ID, PRODUCT_ID, "date"
    )
    assert accepted.join(held, on=[SUBSCRIBER_ID, PRODUCT_ID, "date"], how="anti").height == 0
    # nobody is shown an offer whose product they hold, nor one outside its dates or regions
    impressions = incoming_table(world_root, "offer_events").filter(pl.col(EVENT) == "impression")
    shown = impressions.join(catalog, on=OFFER_ID).join(
        incoming_table(world_root, "subscribers").select(SUBSCRIBER_ID, "date", "region"),
        on=[SUBSCRIBER_ID, "date"],
    )
    assert (shown["date"] >= shown["start_date"]).all()
    assert shown.filter(
        pl.col("end_date").is_not_null() & (pl.col("date") > pl.col("end_date"))
    ).is_empty()
    regional = shown.filter(pl.col("regions").is_not_null())
    assert all(
        r in allowed.split("|") for r, allowed in regional.select("region", "regions").iter_rows()
    )
    previous = holdings.with_columns((pl.col("date") + pl.duration(days=1)).alias("date"))
    held_before = previous.filter(
        pl.col("end_date").is_null() | (pl.col("end_date") >= pl.col("date"))
    ).select(SUBSCRIBER_ID, PRODUCT_ID, "date")
    assert shown.join(held_before, on=[SUBSCRIBER_ID, PRODUCT_ID, "date"]).is_empty()


# ---- oracle ----------------------------------------------------------------------------------


def _impressions_with_oracle(root: Path) -> pl.DataFrame:
    """Every impression with its outcome and the oracle's P(accept) as of the day before."""
    events = incoming_table(root, "offer_events")
    impressions = events.filter(pl.col(EVENT) == "impression").select(
        SUBSCRIBER_ID, OFFER_ID, "date"
    )
    accepted = (
        events.filter(pl.col(EVENT) == "accept")
        .select(SUBSCRIBER_ID, OFFER_ID, "date")
        .with_columns(pl.lit(1).alias("accepted"))
    )
    frames = []
    for (date,), day in impressions.group_by("date", maintain_order=True):
        oracle = oracle_p_accept(
            root,
            date - dt.timedelta(days=1),
            subscriber_ids=day[SUBSCRIBER_ID].unique(),
            offer_ids=day[OFFER_ID].unique(),
        )
        frames.append(day.join(oracle, on=[SUBSCRIBER_ID, OFFER_ID], how="left"))
    return (
        pl.concat(frames)
        .join(accepted, on=[SUBSCRIBER_ID, OFFER_ID, "date"], how="left")
        .with_columns(pl.col("accepted").fill_null(0))
    )


@pytest.fixture(scope="module")
def scored(world_root) -> pl.DataFrame:
    return _impressions_with_oracle(world_root)


def test_oracle_is_exactly_the_probability_used_to_draw(world_root, scored):
    truth = pl.concat(
        pl.read_parquet(path)
        for path in sorted((world_root / "truth").glob("date=*/impressions.parquet"))
    ).with_columns(pl.col(TS).dt.date().alias("date"))
    joined = truth.join(scored, on=[SUBSCRIBER_ID, OFFER_ID, "date"], suffix="_oracle")
    assert joined.height == scored.height == truth.height
    assert (joined[P_ACCEPT] == joined[f"{P_ACCEPT}_oracle"]).all()
    assert (joined["accepted"] == joined["accepted_oracle"].cast(pl.Int32)).all()


def test_oracle_is_calibrated_against_observed_accepts(scored):
    p = scored[P_ACCEPT].to_numpy()
    y = scored["accepted"].to_numpy()
    assert 0.02 <= p.mean() <= 0.12
    assert abs(p.mean() - y.mean()) < 4 * np.sqrt((p * (1 - p)).sum()) / len(p)
    bins = np.quantile(p, np.linspace(0, 1, 6))
    which = np.clip(np.searchsorted(bins, p, side="right") - 1, 0, 4)
    for b in range(5):
        in_bin = which == b
        expected, observed = p[in_bin].mean(), y[in_bin].mean()
        tolerance = 4 * np.sqrt((p[in_bin] * (1 - p[in_bin])).sum()) / in_bin.sum()
        assert abs(expected - observed) < tolerance, (b, expected, observed)
    assert np.quantile(p, 0.99) > 0.3  # strong drivers lift acceptance well above the base
    assert roc_auc_score(y, p) > 0.75


def test_oracle_defaults_and_held_products(world_root):
    as_of = START + dt.timedelta(days=9)
    oracle = oracle_p_accept(world_root, as_of)
    subscribers = pl.read_parquet(Lake(world_root).incoming(as_of) / "subscribers.parquet")
    active = [o.offer_id for o in OFFERS if o.start_offset <= 10 and (o.end_offset or 99) >= 10]
    assert oracle.height == subscribers.height * len(active)
    assert oracle.columns == [SUBSCRIBER_ID, OFFER_ID, P_ACCEPT]
    assert oracle.select(pl.col(P_ACCEPT).is_between(0, 1).all()).item()
    holdings = pl.read_parquet(Lake(world_root).incoming(as_of) / "holdings.parquet")
    catalog = pl.read_parquet(Lake(world_root).incoming(as_of) / "catalog.parquet")
    held_next_day = holdings.filter(
        pl.col("end_date").is_null() | (pl.col("end_date") > as_of)
    ).join(catalog.select(OFFER_ID, PRODUCT_ID), on=PRODUCT_ID)
    joined = held_next_day.join(oracle, on=[SUBSCRIBER_ID, OFFER_ID])
    assert joined.height > 0
    assert (joined[P_ACCEPT] == 0).all()
    free = oracle.join(held_next_day, on=[SUBSCRIBER_ID, OFFER_ID], how="anti")
    assert (free[P_ACCEPT] > 0).all()


def test_oracle_rejects_unknown_requests(world_root, tmp_path):
    with pytest.raises(SimulationError, match="as_of == 2027-01-01"):
        oracle_p_accept(world_root, dt.date(2027, 1, 1))
    with pytest.raises(SimulationError, match=r"subscriber_id not active .*\[999999\]"):
        oracle_p_accept(world_root, START, subscriber_ids=[1, 999999])
    with pytest.raises(SimulationError, match="unknown offer_id \\['no_such_offer'\\]"):
        oracle_p_accept(world_root, START, offer_ids=["data_5gb", "no_such_offer"])
    with pytest.raises(SimulationError, match="meta.json missing"):
        oracle_p_accept(tmp_path, START)


def test_acceptance_probability_is_the_planted_logistic():
    signals = np.zeros((3, len(SIGNALS)))
    signals[2, SIGNALS.index("ios")] = 1.0
    category = np.full(3, CATEGORIES.index("esim"))
    p = acceptance_probability(
        signals,
        category,
        np.array([0.0, 0.4, 0.0]),
        np.array([0.0, -0.4, 0.0]),
        np.array([False, True, False]),
    )
    assert p[0] == pytest.approx(1 / (1 + np.exp(-BASE_LOGIT)))
    assert p[1] == 0.0  # a held product is never accepted again
    ios_weight = CATEGORY_WEIGHTS["esim"]["ios"]
    assert p[2] == pytest.approx(1 / (1 + np.exp(-BASE_LOGIT - ios_weight)))
    assert p[2] > 5 * p[0]


# ---- learnability ----------------------------------------------------------------------------


def _window_features(root: Path) -> pl.DataFrame:
    """Per subscriber and day: sums over the 30 (roaming: 7) days before that day, from the logs."""
    usage = (
        incoming_table(root, "usage")
        .group_by(SUBSCRIBER_ID, "date")
        .agg(
            *(
                pl.col("quantity").filter(pl.col("kind") == kind).sum().alias(kind)
                for kind in ("data", "voice_out", "voice_in")
            ),
            pl.col("quantity")
            .filter(pl.col("kind").str.starts_with("roaming"))
            .sum()
            .alias("roam"),
            pl.col("charge").sum().alias("charges"),
        )
    )
    payments = (
        incoming_table(root, "payments")
        .group_by(SUBSCRIBER_ID, "date")
        .agg(
            pl.col("amount").sum().alias("payments"),
            (pl.col("method") == "promised_payment").sum().alias("promised"),
            pl.col("method").is_in(["card", "cash", "bank_transfer"]).sum().alias("manual"),
        )
    )
    screens = (
        incoming_table(root, "app_events")
        .group_by(SUBSCRIBER_ID, "date")
        .agg(
            pl.len().alias("screens"),
            *(
                (pl.col("screen") == name).sum().alias(f"screen_{name}")
                for name in (
                    "entertainment",
                    "tariffs",
                    "addons",
                    "market",
                    "loyalty",
                    "services",
                    "roaming",
                )
            ),
        )
    )
    transfers = (
        incoming_table(root, "transfers")
        .group_by(SUBSCRIBER_ID, "date")
        .agg(
            pl.col("kind").str.starts_with("gift").sum().alias("gifts"),
            pl.col("kind").str.starts_with("market").sum().alias("trades"),
        )
    )
    subscribers = incoming_table(root, "subscribers")
    grid = subscribers.select(SUBSCRIBER_ID, "date")
    for frame in (usage, payments, screens, transfers):
        grid = grid.join(frame, on=[SUBSCRIBER_ID, "date"], how="left")
    grid = grid.fill_null(0).sort(SUBSCRIBER_ID, "date")
    values = [c for c in grid.columns if c not in (SUBSCRIBER_ID, "date")]
    # window over the days strictly before `date`
    windows = grid.with_columns(
        *(
            (
                pl.col(c).cum_sum().shift(1).fill_null(0)
                - pl.col(c)
                .cum_sum()
                .shift(8 if c in ("roam", "screen_roaming") else 31)
                .fill_null(0)
            )
            .over(SUBSCRIBER_ID)
            .alias(c)
            for c in values
        )
    )
    return windows.join(
        subscribers.select(
            SUBSCRIBER_ID,
            "date",
            "device_os",
            "device_vendor",
            "tariff_id",
            (pl.col("date") - pl.col("activation_date")).dt.total_days().alias("tenure"),
        ),
        on=[SUBSCRIBER_ID, "date"],
    )


def test_planted_signal_is_learnable_from_log_windows(world_root, scored):
    catalog = pl.read_parquet(Lake(world_root).incoming(START) / "catalog.parquet")
    data = (
        scored.join(_window_features(world_root), on=[SUBSCRIBER_ID, "date"])
        .join(catalog.select(OFFER_ID, CATEGORY), on=OFFER_ID)
        .with_columns(
            pl.col(c).cast(pl.Categorical)
            for c in (CATEGORY, OFFER_ID, "device_os", "device_vendor", "tariff_id")
        )
        .sort("date", SUBSCRIBER_ID, OFFER_ID)
    )
    held_out = pl.col(SUBSCRIBER_ID) % 4 == 0  # a quarter of the subscribers, never trained on
    train, test = data.filter(~held_out), data.filter(held_out)
    features = [c for c in data.columns if c not in (SUBSCRIBER_ID, "date", "accepted", P_ACCEPT)]
    model = lgb.LGBMClassifier(
        n_estimators=300,
        learning_rate=0.03,
        num_leaves=7,
        min_child_samples=50,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.8,
        random_state=0,
        num_threads=2,
        verbose=-1,
    )
    model.fit(train.select(features).to_pandas(), train["accepted"].to_numpy())
    predicted = model.predict_proba(test.select(features).to_pandas())[:, 1]
    model_auc = roc_auc_score(test["accepted"].to_numpy(), predicted)
    oracle_auc = roc_auc_score(test["accepted"].to_numpy(), test[P_ACCEPT].to_numpy())
    assert model_auc > 0.65, (model_auc, oracle_auc)
    assert oracle_auc > model_auc - 0.02
