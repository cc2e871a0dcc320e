"""An operator's world, not shaped like Mia's simulator, runs end to end with no change to Mia:
`mia doctor` accepts it, every day ingests, a night publishes offers and audiences that keep the
simulator's invariants, and its category names and offer ids come out as they went in."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from flows.cli import EXIT_OK, app, run_command
from mia.hashing import control_mask
from mia.ingest import ingest_day, raw_state
from mia.lake import Lake
from mia.settings import Settings
from offers.audience import read_summary
from offers.groups import CONTROL
from tests.conftest import assert_offers_follow_the_policy, night_overrides
from tests.operator_world import (
    CATEGORIES,
    CONSUMED_CATEGORIES,
    LAST_DAY,
    NEW_CATEGORY,
    OUTSIDE_ITEMS,
    write_operator_world,
)

AUDIENCE_SCHEMA = {"subscriber_id": pl.Int64, "offer_id": pl.String, "group": pl.String}


@dataclass(frozen=True)
class OperatorNight:
    """The operator's data root after every day is ingested and the last night is published."""

    data_dir: Path
    manifest: dict


def _mia(*arguments: str) -> int:
    return run_command(lambda: app(list(arguments), standalone_mode=True))


@pytest.fixture(scope="module")
def operator_root(tmp_path_factory) -> Path:
    """A data root whose incoming/ holds the operator's deliveries (read-only)."""
    root = tmp_path_factory.mktemp("operator") / "data"
    write_operator_world(root)
    return root


@pytest.fixture(scope="module")
def operator_night(tmp_path_factory, operator_root, prefect_harness) -> OperatorNight:
    """Every delivered day ingested, then the nightly flow for the last day (read-only)."""
    from flows.nightly import nightly

    base = tmp_path_factory.mktemp("operator-night")
    data = base / "data"
    shutil.copytree(operator_root, data)
    lake = Lake(data)
    for day in lake.dates("incoming"):
        ingest_day(lake, day)
    manifest = nightly(
        date=LAST_DAY.isoformat(), data_dir=str(data), overrides=night_overrides(base)
    )
    return OperatorNight(data, manifest)


def _offers(night: OperatorNight) -> pl.DataFrame:
    return pl.read_parquet(Lake(night.data_dir).offers(LAST_DAY) / "offers.parquet")


def _audience_rows(night: OperatorNight) -> pl.DataFrame:
    directory = Lake(night.data_dir).audiences(LAST_DAY)
    files = read_summary(directory)["file"].to_list()
    return pl.concat(
        [
            pl.read_csv(directory / name, schema_overrides=AUDIENCE_SCHEMA).select(
                list(AUDIENCE_SCHEMA)
            )
            for name in files
        ]
    )


def test_doctor_says_a_first_night_can_run_and_what_it_ignores(operator_root, capsys):
    code = _mia("doctor", "--data-dir", str(operator_root))
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    assert f"in 7 categories in the latest delivery: {', '.join(sorted(CATEGORIES))}" in out
    ignored = out.split("Mia will ignore:")[1].split("Mia will refuse:")[0]
    assert "offer_events: column(s) outside the contract, dropped: event_id" in ignored
    absent = (
        "end_date, product_id, regions, device_os, requires_product, excludes_product, capacity"
    )
    assert f"catalog: optional column(s) not delivered, read as empty: {absent}" in ignored
    for table in ("payments", "app_events", "transfers"):
        assert f"{table}: optional event table never delivered" in ignored
    assert "consumption: optional column(s) not delivered, read as empty: quantity" in ignored


def test_offers_keep_eligibility_caps_ranks_and_the_control_group(operator_night):
    from flows.steps import eligible_for_night

    lake, settings = Lake(operator_night.data_dir), Settings()
    offers = _offers(operator_night)
    assert offers.height > 0 and operator_night.manifest["status"] == "published"
    eligible = eligible_for_night(lake, LAST_DAY, settings)
    assert_offers_follow_the_policy(offers, eligible, settings)
    ids = offers["subscriber_id"].unique()
    assert not control_mask(ids, settings.group_salt, settings.control_share).any()
    # Subscribers who left for good are not in tonight's subscribers, so get nothing.
    subscribers = raw_state(lake, "subscribers", LAST_DAY)
    assert set(ids.to_list()) <= set(subscribers["subscriber_id"].to_list())


def test_audiences_hold_eligible_subscribers_with_the_control_group_flagged(operator_night):
    from flows.steps import eligible_for_night

    lake, settings = Lake(operator_night.data_dir), Settings()
    rows = _audience_rows(operator_night)
    assert rows.height > 0
    eligible = eligible_for_night(lake, LAST_DAY, settings)
    assert rows.join(eligible, on=["subscriber_id", "offer_id"], how="anti").is_empty()
    control = control_mask(rows["subscriber_id"], settings.group_salt, settings.control_share)
    assert (rows["group"] == CONTROL).to_list() == list(control)


def test_category_names_and_offer_ids_come_out_unchanged(operator_night):
    lake = Lake(operator_night.data_dir)
    catalog = raw_state(lake, "catalog", LAST_DAY)
    assert set(catalog["category"]) == set(CATEGORIES)
    offer_ids = set(catalog["offer_id"])
    assert any(offer_id.startswith("0") for offer_id in offer_ids)

    offers = _offers(operator_night)
    assert set(offers["category"]) <= set(CATEGORIES) and offers["category"].n_unique() > 1
    assert set(offers["offer_id"]) <= offer_ids

    summary = read_summary(lake.audiences(LAST_DAY))
    assert set(summary["category"]) == set(CATEGORIES)  # the last week's category included
    assert set(summary["offer_id"]) == offer_ids
    assert NEW_CATEGORY in set(summary["category"])

    report = (lake.reports(LAST_DAY) / "report.md").read_text()
    for category in offers["category"].unique():
        assert f"| {category} |" in report


def test_consumption_on_sparse_days_reaches_collaborative_filtering(operator_night):
    from mia.ingest import raw_events
    from models.scoring import load_bundle

    lake = Lake(operator_night.data_dir)
    first = lake.dates("raw", "usage")[0]
    consumed = raw_events(lake, "consumption", first, LAST_DAY).collect()
    assert consumed["date"].n_unique() == 10 and consumed["quantity"].null_count() == len(consumed)
    # ALS learnt from consumption: content outside the catalog is a column of its own, and the
    # consumed categories' offers are columns even for subscribers never shown them.
    cf = load_bundle(Settings(data_dir=operator_night.data_dir, train_snapshots=4)).cf
    items = set(cf.item_index_.to_list())
    assert set(OUTSIDE_ITEMS) <= items
    catalog = raw_state(lake, "catalog", LAST_DAY)
    consumed_offers = catalog.filter(pl.col("category").is_in(CONSUMED_CATEGORIES))["offer_id"]
    assert set(consumed_offers.to_list()) <= items
    # Only catalog offers are published.
    assert not set(_offers(operator_night)["offer_id"].to_list()) & set(OUTSIDE_ITEMS)
