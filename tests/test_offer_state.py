"""The offer state: the whole offer history per subscriber x offer, one new day per night."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import features.offer_state
from features.offer_state import (
    OFFER_STATE,
    fold_offer_events,
    offer_state_manifest_path,
    read_offer_state,
    update_offer_state,
)
from mia.ingest import ingest_day, raw_events
from mia.lake import Lake
from mia.schema import TABLES
from mia.settings import Settings
from tests.test_contracts import DAY, valid_day
from tests.test_ingest import deliver

LONG_COOLDOWN = 365


def events(*rows: tuple[int, str, dt.datetime, str]) -> pl.DataFrame:
    """Offer events (subscriber_id, offer_id, ts, event) in the contract schema."""
    columns = ("subscriber_id", "offer_id", "ts", "event")
    data = {name: [row[i] for row in rows] for i, name in enumerate(columns)}
    data["propensity"] = [None] * len(rows)
    return pl.DataFrame(data, schema=TABLES["offer_events"].polars_schema)


def at(day: dt.date, hour: int = 10) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour))


def deliver_day(lake: Lake, day: dt.date, offer_events: pl.DataFrame, cooldown: int = 7) -> None:
    """Ingest a valid delivery of `day` with these offer events and data_5gb's cooldown."""
    frames = valid_day(day)
    frames["offer_events"] = offer_events
    frames["catalog"] = frames["catalog"].with_columns(
        pl.when(pl.col("offer_id") == "data_5gb")
        .then(cooldown)
        .otherwise(pl.col("cooldown_days"))
        .cast(pl.Int32)
        .alias("cooldown_days")
    )
    deliver(lake.incoming(day), frames)
    ingest_day(lake, day)


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(tmp_path / "data")


@pytest.mark.parametrize("cooldown, held_back", [(LONG_COOLDOWN, True), (90, False)])
def test_a_cooldown_longer_than_the_feature_window_holds(lake, cooldown, held_back):
    from flows.steps import eligible_for_night, update_daily_aggregates

    night = DAY + dt.timedelta(days=100)
    deliver_day(lake, DAY, events((2, "data_5gb", at(DAY), "dismiss")), cooldown)
    deliver_day(lake, night, events((3, "music_plus", at(night), "impression")), cooldown)
    update_daily_aggregates(lake, night)

    pairs = set(eligible_for_night(lake, night, Settings()).iter_rows())
    assert ((2, "data_5gb") not in pairs) is held_back  # dismissed 100 days before the night
    assert (1, "roam_eu") not in pairs  # the other rules still apply


def from_scratch(lake: Lake, day: dt.date) -> pl.DataFrame:
    """The offer state of `day` folded at once from every raw offer event up to `day`."""
    return fold_offer_events(None, raw_events(lake, "offer_events", None, day), day)


def stored(lake: Lake, day: dt.date) -> pl.DataFrame:
    return pl.read_parquet(lake.daily(OFFER_STATE, day) / "part-0.parquet").drop("_shard_key")


FIRST, SECOND, FOURTH = DAY, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=3)


def three_days(lake: Lake) -> None:
    """Three delivered days with a gap (the third day is not delivered)."""
    deliver_day(
        lake,
        FIRST,
        events(
            (1, "data_5gb", at(FIRST), "impression"),
            (1, "data_5gb", at(FIRST, 11), "dismiss"),
            (2, "roam_eu", at(FIRST), "impression"),
        ),
    )
    deliver_day(
        lake,
        SECOND,
        events(
            (1, "data_5gb", at(SECOND), "impression"),
            (1, "data_5gb", at(SECOND, 12), "accept"),
            (3, "music_plus", at(SECOND), "click"),
        ),
    )
    deliver_day(lake, FOURTH, events((2, "roam_eu", at(FOURTH), "dismiss")))


def test_the_state_of_each_day_is_the_whole_history_up_to_that_day(lake):
    three_days(lake)
    assert update_offer_state(lake, FOURTH) == [FIRST, SECOND, FOURTH]

    for day in (FIRST, SECOND, FOURTH):
        assert_frame_equal(stored(lake, day), from_scratch(lake, day))
    subscriber_1 = stored(lake, SECOND).row(0, named=True)
    assert (subscriber_1["impressions"], subscriber_1["accepts"], subscriber_1["dismisses"]) == (
        2,
        1,
        1,
    )
    assert subscriber_1["last_dismiss_ts"] == at(FIRST, 11)  # point in time: nothing after
    assert stored(lake, FIRST)["accepts"].sum() == 0
    # A day without a delivery carries the state of the day before it.
    assert_frame_equal(read_offer_state(lake, FOURTH - dt.timedelta(days=1)), stored(lake, SECOND))
    assert update_offer_state(lake, FOURTH) == []  # built once


def test_a_day_ingested_again_rebuilds_the_states_from_that_day_on(lake):
    three_days(lake)
    update_offer_state(lake, FOURTH)
    first = offer_state_manifest_path(lake, FIRST).read_bytes()

    deliver_day(lake, SECOND, events((2, "roam_eu", at(SECOND), "accept")))  # a corrected day
    assert update_offer_state(lake, FOURTH) == [SECOND, FOURTH]

    assert offer_state_manifest_path(lake, FIRST).read_bytes() == first
    for day in (FIRST, SECOND, FOURTH):
        assert_frame_equal(stored(lake, day), from_scratch(lake, day))
    assert stored(lake, FOURTH)["accepts"].to_list() == [0, 1]  # the old accept is gone


def test_a_night_reads_only_its_new_day_of_offer_events(lake, monkeypatch):
    three_days(lake)
    update_offer_state(lake, SECOND)
    read = []

    def recording(lake, table, start, end, shard=None):
        read.append((table, start, end))
        return raw_events(lake, table, start, end, shard=shard)

    monkeypatch.setattr(features.offer_state, "raw_events", recording)
    assert update_offer_state(lake, FOURTH) == [FOURTH]
    assert read == [("offer_events", FOURTH, FOURTH)]
    read.clear()
    assert_frame_equal(read_offer_state(lake, FOURTH), stored(lake, FOURTH))
    assert read == []  # the stored state, no raw events


def test_a_state_not_built_yet_is_folded_from_the_raw_events(lake):
    three_days(lake)
    update_offer_state(lake, SECOND)
    deliver_day(lake, SECOND, events())  # ingested again, the daily step not run since

    assert_frame_equal(read_offer_state(lake, FOURTH), from_scratch(lake, FOURTH))
    assert_frame_equal(read_offer_state(lake, SECOND), from_scratch(lake, SECOND))
