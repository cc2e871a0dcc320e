"""Labels: accepts after an impression inside (T, T + horizon], nothing else."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from features.daily import DailyInputError
from features.labels import LabelInputError, category_labels, label_window, offer_labels
from mia.schema import CATEGORY, LABEL, OFFER_ID, SNAPSHOT_DATE, SUBSCRIBER_ID

T = dt.date(2026, 2, 10)
HORIZON = 7
START = dt.datetime(2026, 2, 11)  # first instant after T
STOP = dt.datetime(2026, 2, 18)  # first instant after T + horizon
SECOND = dt.timedelta(seconds=1)

CATALOG = pl.DataFrame(
    {
        OFFER_ID: ["tariff_a", "tariff_b", "roam", "data"],
        CATEGORY: ["tariff", "tariff", "roaming", "data_addon"],
    }
)

# (subscriber, offer, ts, event): one story per subscriber.
EVENTS = [
    # 1: shown at T's last second (outside), accepted inside -> no row for that impression;
    #    shown exactly at the window start and accepted later -> positive.
    (1, "roam", START - SECOND, "impression"),
    (1, "roam", START + dt.timedelta(hours=1), "accept"),
    (1, "data", START, "impression"),
    (1, "data", START + dt.timedelta(days=2), "accept"),
    # 2: shown on the last second of T + h and accepted at the same instant -> positive;
    #    shown at the first instant after T + h -> outside.
    (2, "tariff_a", STOP - SECOND, "impression"),
    (2, "tariff_a", STOP - SECOND, "accept"),
    (2, "roam", STOP, "impression"),
    (2, "roam", STOP + SECOND, "accept"),
    # 3: shown inside, accepted after the window -> negative; organic accept -> no row.
    (3, "tariff_a", START + dt.timedelta(days=1), "impression"),
    (3, "tariff_a", STOP + dt.timedelta(hours=1), "accept"),
    (3, "data", START + dt.timedelta(days=1), "accept"),
    # 4: accepted before being shown in the window -> negative; another offer of the same
    #    category accepted after its own impression -> the category is positive.
    (4, "tariff_a", START + dt.timedelta(hours=1), "accept"),
    (4, "tariff_a", START + dt.timedelta(hours=2), "impression"),
    (4, "tariff_b", START + dt.timedelta(hours=3), "impression"),
    (4, "tariff_b", START + dt.timedelta(hours=4), "click"),
    (4, "tariff_b", START + dt.timedelta(hours=5), "accept"),
    # 5: shown then dismissed -> negative; events at or before T never count.
    (5, "roam", START + dt.timedelta(days=3), "impression"),
    (5, "roam", START + dt.timedelta(days=3, minutes=1), "dismiss"),
    (5, "data", dt.datetime(2026, 2, 10, 8), "impression"),
    (5, "data", dt.datetime(2026, 2, 10, 9), "accept"),
]


def _events() -> pl.DataFrame:
    return pl.DataFrame(
        EVENTS, schema=[SUBSCRIBER_ID, OFFER_ID, "ts", "event"], orient="row"
    ).with_columns(pl.col("ts").cast(pl.Datetime("us")))


def test_label_window_bounds():
    assert label_window(T, HORIZON) == (START, STOP)
    with pytest.raises(LabelInputError, match="horizon_days == 0"):
        label_window(T, 0)


def test_offer_labels_exact_rows():
    labels = offer_labels(_events().lazy(), CATALOG, T, HORIZON)
    assert labels.columns == [SUBSCRIBER_ID, SNAPSHOT_DATE, OFFER_ID, CATEGORY, LABEL]
    assert labels.schema[LABEL] == pl.Int8 and labels.schema[SNAPSHOT_DATE] == pl.Date
    assert labels[SNAPSHOT_DATE].unique().to_list() == [T]
    assert labels.select(SUBSCRIBER_ID, OFFER_ID, CATEGORY, LABEL).rows() == [
        (1, "data", "data_addon", 1),
        (2, "tariff_a", "tariff", 1),
        (3, "tariff_a", "tariff", 0),
        (4, "tariff_a", "tariff", 0),
        (4, "tariff_b", "tariff", 1),
        (5, "roam", "roaming", 0),
    ]


def test_category_labels_exact_rows():
    labels = category_labels(_events(), CATALOG, T, HORIZON)
    assert labels.columns == [SUBSCRIBER_ID, SNAPSHOT_DATE, CATEGORY, LABEL]
    assert labels.select(SUBSCRIBER_ID, CATEGORY, LABEL).rows() == [
        (1, "data_addon", 1),
        (2, "tariff", 1),
        (3, "tariff", 0),
        (4, "tariff", 1),
        (5, "roaming", 0),
    ]


def test_labels_look_only_at_the_horizon():
    shorter = category_labels(_events(), CATALOG, T, 1)
    # Only impressions on T + 1 remain: subscriber 1 (data, accepted two days later -> 0).
    assert shorter.select(SUBSCRIBER_ID, CATEGORY, LABEL).rows() == [
        (1, "data_addon", 0),
        (4, "tariff", 1),
    ]
    later_day = category_labels(_events(), CATALOG, T + dt.timedelta(days=HORIZON), HORIZON)
    assert later_day.select(SUBSCRIBER_ID, CATEGORY, LABEL).rows() == [(2, "roaming", 1)]


def test_labels_reject_bad_input():
    with pytest.raises(DailyInputError, match="roam"):
        offer_labels(_events(), CATALOG.filter(pl.col(OFFER_ID) != "roam"), T, HORIZON)
    with pytest.raises(LabelInputError, match=r"columns \['event'\] missing"):
        offer_labels(_events().drop("event"), CATALOG, T, HORIZON)


def test_training_frame_from_the_simulated_world(tmp_path, ingested_root):
    import shutil

    from features.daily import build_daily_range
    from features.labels import lake_category_labels, training_frame
    from features.snapshot import build_snapshot
    from mia.ingest import raw_events, raw_state
    from mia.lake import Lake

    root = tmp_path / "data"
    shutil.copytree(ingested_root, root)
    lake = Lake(root)
    days = lake.dates("raw", "subscribers")
    day = days[len(days) // 2]
    build_daily_range(lake, days[0], day)
    snapshot = build_snapshot(lake, day)
    frame = training_frame(lake, [day], HORIZON)
    labels = lake_category_labels(lake, day, HORIZON)
    assert frame.height == labels.height > 0
    assert frame.select(SUBSCRIBER_ID, CATEGORY, LABEL).equals(
        labels.select(SUBSCRIBER_ID, CATEGORY, LABEL)
    )
    assert set(snapshot.columns) <= set(frame.columns)
    assert 0 < frame[LABEL].mean() < 1
    # Same labels from the raw events of the whole history: the window does the cutting.
    everything = raw_events(lake, "offer_events", None, None)
    direct = category_labels(everything, raw_state(lake, "catalog", days[-1]), day, HORIZON)
    assert direct.equals(labels)
