"""The run id of a night: derived from the content of its inputs, its model and its settings."""

from __future__ import annotations

import json

import polars as pl
import pytest

from flows.steps import run_id
from mia.ingest import CONTENT_HASH, ingest_day, manifest_path
from mia.lake import Lake
from mia.settings import Settings
from tests.test_contracts import DAY, valid_day
from tests.test_ingest import deliver

SETTINGS = Settings()


@pytest.fixture
def champion(monkeypatch) -> dict:
    """The champion the run id sees (no MLflow store needed): change it to retrain."""
    from models import registry

    current = {"version": "3", "run_id": "mlflow-run-a"}
    monkeypatch.setattr(registry, "champion_info", lambda name, settings: dict(current))
    return current


@pytest.fixture
def lake(tmp_path) -> Lake:
    """One ingested day."""
    lake = Lake(tmp_path / "data")
    deliver(lake.incoming(DAY), valid_day())
    ingest_day(lake, DAY)
    return lake


def test_same_inputs_give_the_same_run_id(lake, champion):
    first = run_id(lake, DAY, SETTINGS)
    assert run_id(lake, DAY, SETTINGS) == first
    ingest_day(lake, DAY)  # the same delivery again
    assert run_id(lake, DAY, SETTINGS) == first
    # How the work is split or where it runs is not what it publishes.
    assert run_id(lake, DAY, SETTINGS.replace(n_shards=4, num_threads=8, score_workers=3)) == first


def test_another_catalog_with_as_many_rows_gives_another_run_id(lake, champion):
    first = run_id(lake, DAY, SETTINGS)
    frames = valid_day()
    repriced = frames["catalog"].with_columns(pl.col("value") * 2)
    deliver(lake.incoming(DAY), {**frames, "catalog": repriced})
    ingest_day(lake, DAY)
    assert run_id(lake, DAY, SETTINGS) != first


def test_another_model_or_policy_gives_another_run_id(lake, champion):
    first = run_id(lake, DAY, SETTINGS)
    champion["run_id"] = "mlflow-run-b"  # version 3 again, from a store made anew
    after_new_store = run_id(lake, DAY, SETTINGS)
    champion["version"] = "4"
    retrained = run_id(lake, DAY, SETTINGS)
    assert len({first, after_new_store, retrained}) == 3
    assert run_id(lake, DAY, SETTINGS.replace(top_k=2)) != retrained


def test_a_day_ingested_without_content_hashes_is_hashed_from_its_files(lake, champion):
    first = run_id(lake, DAY, SETTINGS)
    manifest = json.loads(manifest_path(lake, DAY).read_text())
    assert all(len(table[CONTENT_HASH]) == 64 for table in manifest["tables"].values())
    for table in manifest["tables"].values():
        del table[CONTENT_HASH]
    manifest_path(lake, DAY).write_text(json.dumps(manifest))
    assert run_id(lake, DAY, SETTINGS) == first
