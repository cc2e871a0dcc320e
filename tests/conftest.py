"""Shared fixtures: one small simulated world per test session, ingested once."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Prefect keeps its profile and database here, never in the user's home.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="mia-prefect-home-")

# The tiny world every integration test shares: small enough for seconds, rich enough that
# every category gets impressions and accepts.
TINY_SUBSCRIBERS = 1500
TINY_DAYS = 70
TINY_START = dt.date(2026, 1, 1)
TINY_SEED = 11
TINY_LAST_DAY = TINY_START + dt.timedelta(days=TINY_DAYS - 1)


@pytest.fixture(scope="session")
def tiny_config():
    """Simulation settings of the shared tiny world."""
    from mia.simulate import SimulationConfig

    return SimulationConfig(
        subscribers=TINY_SUBSCRIBERS, days=TINY_DAYS, start=TINY_START, seed=TINY_SEED
    )


@pytest.fixture(scope="session")
def simulated_root(tmp_path_factory, tiny_config) -> Path:
    """A data root whose incoming/ holds the tiny world (read-only: copy before writing)."""
    from mia.simulate import write_world

    root = tmp_path_factory.mktemp("simulated") / "data"
    write_world(root, tiny_config)
    return root


@pytest.fixture(scope="session")
def ingested_root(tmp_path_factory, simulated_root) -> Path:
    """The tiny world with every day ingested into raw/ (read-only: copy before writing)."""
    from mia.ingest import ingest_day
    from mia.lake import Lake

    root = tmp_path_factory.mktemp("ingested") / "data"
    shutil.copytree(simulated_root, root)
    lake = Lake(root)
    for date in lake.dates("incoming"):
        ingest_day(lake, date)
    return root


@pytest.fixture
def fresh_root(tmp_path, ingested_root) -> Path:
    """A private, writable copy of the ingested tiny world."""
    root = tmp_path / "data"
    shutil.copytree(ingested_root, root)
    return root


@dataclass(frozen=True)
class NightRun:
    """A data root (with its MLflow store) after one nightly run of the tiny world."""

    root: Path
    manifest: dict

    @property
    def data_dir(self) -> Path:
        """The data root."""
        return self.root / "data"

    @property
    def overrides(self) -> dict[str, str]:
        """Settings overrides of the night (its models are in the data root's own store)."""
        return night_overrides(self.root)


def assert_offers_follow_the_policy(offers, eligible, settings) -> None:
    """Published offers are eligible pairs, ranked 1..n, within top_k and max_per_category."""
    import polars as pl

    assert offers.join(eligible, on=["subscriber_id", "offer_id"], how="anti").is_empty()
    per_subscriber = offers.group_by("subscriber_id").agg(
        pl.len().alias("n"), pl.col("rank").sort().alias("ranks")
    )
    assert per_subscriber["n"].max() <= settings.top_k
    assert all(
        ranks.to_list() == list(range(1, len(ranks) + 1)) for ranks in per_subscriber["ranks"]
    )
    per_category = offers.group_by("subscriber_id", "category").agg(pl.len().alias("n"))
    assert per_category["n"].max() <= settings.max_per_category


def night_overrides(root: Path) -> dict[str, int]:
    """Settings of a test night: a short training history (models in the data root's store)."""
    return {"train_snapshots": 4}


def incoming_table(root: Path, table: str):
    """Every delivered day of one incoming table of a data root, with a `date` column."""
    import polars as pl

    from mia.lake import Lake

    lake = Lake(root)
    return pl.concat(
        pl.read_parquet(lake.incoming(date) / f"{table}.parquet").with_columns(
            pl.lit(date).alias("date")
        )
        for date in lake.dates("incoming")
    )


def share_by_hand(interactions, catalog):
    """[subscriber_id, category, share]: each subscriber's share of their interaction confidence
    on catalog offers that is on the category (what the blend reads as
    interaction_category_share), summed with polars rather than as the blend sums it."""
    import polars as pl

    kinds = catalog.select("offer_id", pl.col("category").cast(pl.String)).unique("offer_id")
    return (
        interactions.join(kinds, on="offer_id")
        .group_by("subscriber_id", "category")
        .agg(pl.col("confidence").sum())
        .with_columns(
            (pl.col("confidence") / pl.col("confidence").sum().over("subscriber_id")).alias("share")
        )
        .select("subscriber_id", "category", "share")
    )


def training_world(base: Path, ingested_root: Path):
    """A private copy of the ingested tiny world under `base`, with settings to train on it
    (its own MLflow store, in the data root; one thread, a short history, the blend fitted on one
    week: tests that check the multi-week blend ask for more)."""
    from mia.lake import Lake
    from mia.settings import Settings

    root = base / "data"
    shutil.copytree(ingested_root, root)
    settings = Settings(
        data_dir=root,
        num_threads=1,
        train_snapshots=4,
        blend_windows=1,
    )
    return Lake(root), settings


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def night_run(tmp_path_factory, ingested_root, prefect_harness) -> NightRun:
    """The tiny world after `nightly` for its last day (read-only: copy before writing)."""
    from flows.nightly import nightly

    root = tmp_path_factory.mktemp("night")
    shutil.copytree(ingested_root, root / "data")
    manifest = nightly(
        date=TINY_LAST_DAY.isoformat(),
        data_dir=str(root / "data"),
        overrides=night_overrides(root),
    )
    return NightRun(root, manifest)
