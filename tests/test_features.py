"""Daily aggregates, point-in-time snapshots and the feature catalog."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features.catalog import (
    FEATURES,
    build_catalog,
    categorical_features,
    describe_feature,
    feature_names,
    features_for_tables,
    render_markdown,
)
from features.daily import (
    DAILY_TABLES,
    DailyInputError,
    aggregate_day,
    build_daily,
    build_daily_range,
    daily_schema,
)
from features.drift import drift_table
from features.snapshot import (
    SnapshotInputError,
    build_snapshot,
    compute_snapshot,
    read_snapshot,
)
from mia.ingest import raw_state
from mia.lake import Lake, partition_files, write_partition
from mia.schema import (
    APP_SCREENS,
    PAYMENT_METHODS,
    SNAPSHOT_DATE,
    SUBSCRIBER_ID,
    TRANSFER_KINDS,
    USAGE_KINDS,
)
from mia.settings import Settings

DAY = dt.date(2026, 3, 31)
REPO = Path(__file__).resolve().parents[1]


def _at(date: dt.date, hour: int = 12, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(date, dt.time(hour, minute))


def _days_before(days: int) -> dt.date:
    return DAY - dt.timedelta(days=days)


# ---------------------------------------------------------------------------- hand-made world


def _subscribers(ids: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            SUBSCRIBER_ID: ids,
            "region": [f"region_{i % 3}" for i in ids],
            "device_os": ["android", "ios", "other"] * (len(ids) // 3) + ["ios"] * (len(ids) % 3),
            "device_vendor": [f"vendor_{i % 2}" for i in ids],
            "tariff_id": [f"tariff_{i % 4}" for i in ids],
            "activation_date": [dt.date(2025, 1, 1) + dt.timedelta(days=i) for i in ids],
        }
    )


CATALOG = pl.DataFrame(
    {
        "offer_id": ["tariff_plus", "data_5gb", "roam_eu"],
        "category": ["tariff", "data_addon", "roaming"],
        "product_id": ["p_tariff_plus", "p_data_5gb", "p_roam_eu"],
    }
)
WORLD_CATEGORIES = ("data_addon", "roaming", "tariff")  # the catalog's, sorted


def _raw_day(date: dt.date, ids: np.ndarray, seed: int) -> dict[str, pl.DataFrame]:
    """One day of random events of every event table for `ids` (seeded by day)."""
    rng = np.random.default_rng([seed, date.toordinal()])

    def times(n: int) -> list[dt.datetime]:
        seconds = rng.integers(0, 86_400, n)
        return [_at(date, 0) + dt.timedelta(seconds=int(s)) for s in seconds]

    n = len(ids) * 4
    usage = pl.DataFrame(
        {
            SUBSCRIBER_ID: rng.choice(ids, n),
            "ts": times(n),
            "kind": rng.choice(USAGE_KINDS, n),
            "quantity": np.round(rng.gamma(2.0, 30.0, n), 3),
            "charge": np.round(rng.gamma(1.0, 0.5, n), 2),
        }
    )
    m = len(ids) // 2
    payments = pl.DataFrame(
        {
            SUBSCRIBER_ID: rng.choice(ids, m),
            "ts": times(m),
            "amount": np.round(rng.gamma(2.0, 5.0, m), 2),
            "method": rng.choice(PAYMENT_METHODS, m),
        }
    )
    app = pl.DataFrame(
        {SUBSCRIBER_ID: rng.choice(ids, n), "ts": times(n), "screen": rng.choice(APP_SCREENS, n)}
    )
    transfers = pl.DataFrame(
        {
            SUBSCRIBER_ID: rng.choice(ids, m),
            "ts": times(m),
            "kind": rng.choice(TRANSFER_KINDS, m),
            "gb": np.round(rng.uniform(0.5, 3, m), 3),
            "amount": np.round(rng.uniform(0, 5, m), 2),
        }
    )
    offers = pl.DataFrame(
        {
            SUBSCRIBER_ID: rng.choice(ids, n),
            "offer_id": rng.choice(CATALOG["offer_id"].to_list(), n),
            "ts": times(n),
            "event": rng.choice(["impression", "impression", "click", "accept", "dismiss"], n),
        }
    )
    return {
        "usage": usage,
        "payments": payments,
        "app_events": app,
        "transfers": transfers,
        "offer_events": offers,
    }


def _write_raw(lake: Lake, date: dt.date, ids: np.ndarray, seed: int, tables=None) -> None:
    for table, frame in _raw_day(date, ids, seed).items():
        if tables is None or table in tables:
            write_partition(frame, lake.raw(table, date))
    write_partition(_subscribers(ids.tolist()), lake.raw("subscribers", date))
    write_partition(CATALOG, lake.raw("catalog", date))
    if tables is None or "holdings" in tables:
        holdings = pl.DataFrame(
            {
                SUBSCRIBER_ID: ids[::2],
                "product_id": ["p_data_5gb"] * len(ids[::2]),
                "start_date": [date - dt.timedelta(days=3)] * len(ids[::2]),
                "end_date": [None] * len(ids[::2]),
            },
            schema_overrides={"end_date": pl.Date},
        )
        write_partition(holdings, lake.raw("holdings", date))


START = DAY - dt.timedelta(days=11)
IDS = np.arange(1, 31)


@pytest.fixture(scope="module")
def raw_world(tmp_path_factory) -> Path:
    """12 days (START..DAY) of raw partitions for 30 subscribers, every table delivered."""
    root = tmp_path_factory.mktemp("raw_world") / "data"
    lake = Lake(root)
    for offset in range(12):
        _write_raw(lake, START + dt.timedelta(days=offset), IDS, seed=5)
    return root


@pytest.fixture
def world(tmp_path, raw_world) -> Lake:
    root = tmp_path / "data"
    shutil.copytree(raw_world, root)
    return Lake(root)


# ---------------------------------------------------------------------------- catalog


def test_catalog_names_are_unique_full_words_and_typed():
    names = [feature.name for feature in FEATURES]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        words = [word for word in name.split("_") if not re.fullmatch(r"\d+d", word)]
        assert all(len(word) >= 2 or word == "e" for word in words), name  # e_signature
    assert "data_megabytes_30d" in names
    assert categorical_features() == ["region", "device_os", "device_vendor", "tariff_id"]
    assert all(feature.description for feature in FEATURES)


def test_readme_is_generated_from_the_catalog():
    readme = (REPO / "features" / "README.md").read_text()
    assert readme == render_markdown(), (
        "regenerate: python -m features.catalog > features/README.md"
    )


def test_describe_feature_in_plain_words():
    assert (
        describe_feature("data_megabytes_30d")
        == "megabytes of mobile data used in the last 30 days"
    )
    assert describe_feature("days_since_last_topup").startswith("days since the last top-up")
    assert describe_feature("tariff_accepts_60d") == "tariff offers accepted in the last 60 days"
    assert describe_feature("something_else") == "something else"


def test_features_for_tables_leave_out_missing_optional_tables():
    required = {"subscribers", "usage", "offer_events", "catalog"}
    names = feature_names(required, categories=("tariff",))
    assert "topups_30d" not in names and "balance_proxy_7d" not in names
    assert "home_screen_views_7d" not in names and "holds_tariff" not in names
    assert "tariff_impressions_30d" in names and "tenure_days" in names
    families = {feature.family for feature in features_for_tables(required, categories=["gift"])}
    assert families == {"profile", "usage", "spend", "offers"}
    assert len(feature_names()) == len(FEATURES)


def test_catalog_follows_configured_windows():
    names = [feature.name for feature in build_catalog((14, 60), ("tariff",))]
    assert "data_megabytes_14d" in names and "data_trend_14d_vs_60d" in names
    assert "tariff_impressions_60d" in names and "tariff_impressions_14d" not in names
    with pytest.raises(ValueError, match="windows"):
        build_catalog((0, 7))


# ---------------------------------------------------------------------------- daily aggregates


def test_aggregate_day_exact_values():
    usage = pl.DataFrame(
        {
            SUBSCRIBER_ID: [2, 1, 1, 1, 1],
            "ts": [
                _at(DAY),
                _at(DAY, 0),
                _at(DAY, 23, 59),
                _at(DAY, 9),
                _at(DAY + dt.timedelta(1), 0),
            ],
            "kind": ["data", "data", "data", "voice_out", "data"],
            "quantity": [10.0, 0.1, 0.2, 3.25, 500.0],
            "charge": [0.0, 0.1, 0.2, 1.5, 9.0],
        }
    )
    offers = pl.DataFrame(
        {
            SUBSCRIBER_ID: [1, 1, 1, 2],
            "offer_id": ["tariff_plus", "tariff_plus", "roam_eu", "data_5gb"],
            "ts": [_at(DAY, 8), _at(DAY, 9), _at(DAY, 10), _at(DAY, 11)],
            "event": ["impression", "accept", "impression", "dismiss"],
        }
    )
    result = aggregate_day({"usage": usage, "offer_events": offers, "catalog": CATALOG}, DAY)
    assert set(result) == {"usage", "offer_events"}
    daily_usage = result["usage"]
    assert daily_usage.schema == pl.Schema(daily_schema("usage"))
    row = daily_usage.row(0, named=True)
    assert row[SUBSCRIBER_ID] == 1 and row["date"] == DAY
    assert row["data_quantity_milli"] == 300  # exact: 0.1 + 0.2, the next day's event left out
    assert row["data_events"] == 2 and row["voice_out_quantity_milli"] == 3250
    assert row["charge_milli"] == 1800 and row["sms_out_events"] == 0
    assert daily_usage[SUBSCRIBER_ID].to_list() == [1, 2]
    daily_offers = result["offer_events"]
    assert daily_offers.select(SUBSCRIBER_ID, pl.col("category")).rows() == [
        (1, "roaming"),
        (1, "tariff"),
        (2, "data_addon"),
    ]
    assert daily_offers["impressions"].to_list() == [1, 1, 0]
    assert daily_offers["accepts"].to_list() == [0, 1, 0]
    assert daily_offers["dismisses"].to_list() == [0, 0, 1]


def test_aggregate_day_rejects_bad_input():
    offers = pl.DataFrame(
        {SUBSCRIBER_ID: [1], "offer_id": ["mystery"], "ts": [_at(DAY)], "event": ["impression"]}
    )
    with pytest.raises(DailyInputError, match=r"offer_events.*offer_id.*mystery"):
        aggregate_day({"offer_events": offers, "catalog": CATALOG}, DAY)
    with pytest.raises(DailyInputError, match="catalog"):
        aggregate_day({"offer_events": offers}, DAY)
    with pytest.raises(DailyInputError, match=r"usage: columns \['quantity'\]"):
        aggregate_day(
            {
                "usage": pl.DataFrame(
                    {SUBSCRIBER_ID: [1], "ts": [_at(DAY)], "kind": ["data"], "charge": [1.0]}
                )
            },
            DAY,
        )
    with pytest.raises(DailyInputError, match="subscribers"):
        aggregate_day({"subscribers": _subscribers([1])}, DAY)


def test_build_daily_skips_built_days_and_rebuild_replaces_exactly(world):
    assert build_daily(world, DAY) is True
    files = {table: partition_files(world.daily(table, DAY)) for table in DAILY_TABLES}
    assert all(len(found) == 1 for found in files.values())
    first = {table: found[0].read_bytes() for table, found in files.items()}
    assert build_daily(world, DAY) is False  # already built: nothing recomputed
    assert build_daily(world, DAY, force=True) is True
    again = {table: partition_files(world.daily(table, DAY))[0].read_bytes() for table in first}
    assert again == first
    # A re-delivered day without payments: a forced rebuild removes that aggregate.
    shutil.rmtree(world.raw("payments", DAY))
    build_daily(world, DAY, force=True)
    assert not world.daily("payments", DAY).exists()
    assert build_daily(world, DAY + dt.timedelta(days=1)) is False  # nothing ingested


# ---------------------------------------------------------------------------- snapshots


def _daily(table: str, rows: list[dict]) -> pl.LazyFrame:
    schema = daily_schema(table)
    filled = [{name: row.get(name, 0) for name in schema} for row in rows]
    return pl.DataFrame(filled, schema=schema, orient="row").lazy()


def test_compute_snapshot_windows_exact_values():
    usage = _daily(
        "usage",
        [
            {
                SUBSCRIBER_ID: 1,
                "date": DAY,
                "data_quantity_milli": 1_000,
                "data_events": 1,
                "charge_milli": 500,
            },
            {
                SUBSCRIBER_ID: 1,
                "date": _days_before(6),
                "data_quantity_milli": 2_000,
                "data_events": 2,
            },
            {
                SUBSCRIBER_ID: 1,
                "date": _days_before(7),
                "data_quantity_milli": 4_000,
                "data_events": 1,
                "charge_milli": 1_250,
            },
            {
                SUBSCRIBER_ID: 1,
                "date": _days_before(89),
                "voice_out_quantity_milli": 8_500,
                "voice_out_events": 3,
            },
            {
                SUBSCRIBER_ID: 1,
                "date": _days_before(90),
                "data_quantity_milli": 16_000,
                "data_events": 1,
            },
            {
                SUBSCRIBER_ID: 1,
                "date": DAY + dt.timedelta(days=1),
                "data_quantity_milli": 32_000,
                "data_events": 1,
            },
            {SUBSCRIBER_ID: 99, "date": DAY, "data_quantity_milli": 1, "data_events": 1},
        ],
    )
    payments = _daily(
        "payments",
        [
            {
                SUBSCRIBER_ID: 1,
                "date": _days_before(3),
                "topup_amount_milli": 10_000,
                "topups": 2,
                "card_topups": 1,
                "promised_payment_topups": 1,
            },
            {
                SUBSCRIBER_ID: 1,
                "date": _days_before(40),
                "topup_amount_milli": 5_000,
                "topups": 2,
                "card_topups": 2,
            },
        ],
    )
    offers = _daily(
        "offer_events",
        [
            {
                SUBSCRIBER_ID: 2,
                "date": _days_before(29),
                "category": "roaming",
                "impressions": 3,
                "accepts": 1,
            },
            {SUBSCRIBER_ID: 2, "date": _days_before(30), "category": "roaming", "impressions": 5},
        ],
    )
    # Offer features exist for the catalog's categories, whether or not they were shown.
    state = {"subscribers": _subscribers([3, 1, 2]), "catalog": CATALOG}
    snapshot = compute_snapshot(
        {"usage": usage, "payments": payments, "offer_events": offers}, state, DAY
    )
    assert snapshot[SUBSCRIBER_ID].to_list() == [1, 2, 3]  # subscribers of the day only, sorted
    assert snapshot.columns == [SUBSCRIBER_ID, SNAPSHOT_DATE] + feature_names(
        {"subscribers", "usage", "payments", "offer_events"}, categories=WORLD_CATEGORIES
    )
    one, two, three = snapshot.rows(named=True)
    assert one[SNAPSHOT_DATE] == DAY and one["tenure_days"] == (DAY - dt.date(2025, 1, 2)).days
    assert (one["data_megabytes_7d"], one["data_megabytes_30d"], one["data_megabytes_90d"]) == (
        3.0,
        7.0,
        7.0,
    )
    assert (one["data_events_7d"], one["data_active_days_7d"], one["data_active_days_30d"]) == (
        3,
        2,
        3,
    )
    assert one["voice_out_minutes_90d"] == 8.5 and one["voice_out_minutes_30d"] == 0.0
    assert one["usage_active_days_90d"] == 4
    assert one["data_trend_7d_vs_30d"] == pytest.approx((3.0 / 7) / (7.0 / 30))
    assert one["voice_out_trend_7d_vs_30d"] is None  # nothing in the longer window
    assert (one["charges_7d"], one["charges_30d"]) == (0.5, 1.75)
    assert (one["topup_amount_7d"], one["topup_amount_90d"], one["topups_90d"]) == (10.0, 15.0, 4)
    assert one["days_since_last_topup"] == 3 and one["days_since_last_promised_payment"] == 3
    assert one["card_topup_share_90d"] == 0.75 and one["cash_topup_share_90d"] == 0.0
    assert one["balance_proxy_7d"] == 9.5 and one["balance_proxy_30d"] == 8.25
    assert two["roaming_impressions_30d"] == 3 and two["roaming_impressions_90d"] == 8
    assert two["roaming_accepts_30d"] == 1 and two["roaming_days_since_last_accept"] == 29
    assert two["tariff_days_since_last_accept"] is None
    # Never seen: counts and sums 0, "days since" empty.
    assert three["data_megabytes_90d"] == 0.0 and three["topups_90d"] == 0
    assert three["days_since_last_topup"] is None and three["card_topup_share_90d"] == 0.0
    assert snapshot.schema["region"] == pl.Categorical
    assert snapshot.schema["device_os"] == pl.Enum(["android", "ios", "other"])
    assert snapshot.schema["tenure_days"] == pl.Int32


def test_compute_snapshot_app_transfers_and_holdings():
    app = _daily(
        "app_events",
        [
            {
                SUBSCRIBER_ID: 1,
                "date": _days_before(10),
                "screen_views": 4,
                "market_views": 3,
                "home_views": 1,
            }
        ],
    )
    transfers = _daily(
        "transfers",
        [
            {
                SUBSCRIBER_ID: 2,
                "date": DAY,
                "gift_out_gigabytes_milli": 1_500,
                "gift_out_transfers": 1,
                "market_sell_amount_milli": 2_250,
                "market_sell_transfers": 1,
            }
        ],
    )
    holdings = pl.DataFrame(
        {
            SUBSCRIBER_ID: [1, 1, 1, 2],
            "product_id": ["p_tariff_plus", "p_roam_eu", "p_data_5gb", "p_data_5gb"],
            "start_date": [dt.date(2025, 1, 1), dt.date(2025, 1, 1), DAY, DAY + dt.timedelta(1)],
            "end_date": [None, _days_before(1), None, None],
        },
        schema_overrides={"end_date": pl.Date},
    )
    state = {"subscribers": _subscribers([1, 2]), "holdings": holdings, "catalog": CATALOG}
    snapshot = compute_snapshot(
        {"usage": _daily("usage", []), "app_events": app, "transfers": transfers}, state, DAY
    )
    one, two = snapshot.rows(named=True)
    assert one["app_screen_views_30d"] == 4 and one["app_screen_views_7d"] == 0
    assert one["market_screen_views_30d"] == 3 and one["app_active_days_30d"] == 1
    assert one["days_since_last_app_visit"] == 10 and two["days_since_last_app_visit"] is None
    assert two["gift_out_gigabytes_7d"] == 1.5 and two["market_sell_amount_7d"] == 2.25
    assert (one["products_held"], one["holds_tariff"], one["holds_data_addon"]) == (2, 1, 1)
    assert one["holds_roaming"] == 0  # ended the day before
    assert (two["products_held"], two["holds_data_addon"]) == (0, 0)  # starts tomorrow
    assert "topups_7d" not in snapshot.columns and "tariff_impressions_30d" not in snapshot.columns


def test_compute_snapshot_rejects_bad_input():
    usage = _daily("usage", [])
    with pytest.raises(SnapshotInputError, match="subscribers"):
        compute_snapshot({"usage": usage}, {}, DAY)
    with pytest.raises(SnapshotInputError, match="windows"):
        compute_snapshot({"usage": usage}, {"subscribers": _subscribers([1])}, DAY, windows=(0,))
    with pytest.raises(SnapshotInputError, match="catalog"):
        compute_snapshot(
            {"usage": usage},
            {"subscribers": _subscribers([1]), "holdings": pl.DataFrame()},
            DAY,
        )
    with pytest.raises(SnapshotInputError, match="usage"):
        compute_snapshot(
            {"payments": _daily("payments", [])}, {"subscribers": _subscribers([1])}, DAY
        )


def test_incremental_daily_build_gives_the_same_snapshot(world, tmp_path, raw_world):
    # Day by day, as the nightly run does, with a snapshot every night.
    for offset in range(12):
        day = START + dt.timedelta(days=offset)
        build_daily(world, day)
        build_snapshot(world, day)
    nightly = partition_files(world.snapshot(DAY))[0].read_bytes()
    # All days at once into a fresh copy.
    other = Lake(tmp_path / "other")
    shutil.copytree(raw_world, other.root)
    assert build_daily_range(other, START, DAY) == [START + dt.timedelta(d) for d in range(12)]
    assert build_daily_range(other, START, DAY) == []
    snapshot = build_snapshot(other, DAY)
    assert partition_files(other.snapshot(DAY))[0].read_bytes() == nightly
    assert read_snapshot(other, DAY).equals(snapshot)
    assert snapshot.columns == [SUBSCRIBER_ID, SNAPSHOT_DATE] + feature_names(
        categories=WORLD_CATEGORIES
    )
    assert snapshot.height == len(IDS)
    assert snapshot["data_events_90d"].sum() > 0 and snapshot["topups_90d"].sum() > 0


def test_snapshot_never_reads_after_as_of(world):
    build_daily_range(world, START, DAY)
    before = build_snapshot(world, DAY - dt.timedelta(days=2), write=False)
    # Unreadable partitions after the snapshot day must not matter.
    for table in ("usage", "payments", "offer_events"):
        garbage = world.daily(table, DAY - dt.timedelta(days=1)) / "part-0.parquet"
        garbage.write_bytes(b"not parquet")
    (world.raw("subscribers", DAY) / "part-0.parquet").write_bytes(b"not parquet")
    after = build_snapshot(world, DAY - dt.timedelta(days=2), write=False)
    assert after.equals(before)


def test_build_snapshot_requires_daily_aggregates(world):
    with pytest.raises(SnapshotInputError, match="usage: no daily aggregates"):
        build_snapshot(world, DAY)
    build_daily_range(world, START, DAY - dt.timedelta(days=1))
    with pytest.raises(SnapshotInputError, match=r"have no daily aggregates.*build_daily_range"):
        build_snapshot(world, DAY)


def test_missing_optional_tables_leave_their_families_out(tmp_path):
    lake = Lake(tmp_path / "data")
    for offset in range(3):
        _write_raw(lake, DAY - dt.timedelta(days=offset), IDS, 3, tables={"usage", "offer_events"})
    build_daily_range(lake, DAY - dt.timedelta(days=2), DAY)
    snapshot = build_snapshot(lake, DAY, settings=Settings(windows=(2, 7)))
    tables = {"subscribers", "usage", "offer_events", "catalog"}
    assert snapshot.columns == [SUBSCRIBER_ID, SNAPSHOT_DATE] + feature_names(
        tables, (2, 7), WORLD_CATEGORIES
    )
    assert "data_trend_2d_vs_7d" in snapshot.columns and "topups_7d" not in snapshot.columns


# ---------------------------------------------------------------------------- simulated world


def _simulate():
    simulate = pytest.importorskip("mia.simulate")
    if not hasattr(simulate, "write_world"):
        pytest.skip("mia.simulate.write_world is not available")
    return simulate


def _ingest(root: Path, days: int | None = None) -> Lake:
    """Ingest the first `days` delivered days (default: all) that are not ingested yet."""
    from mia.ingest import ingest_day, ingested_dates

    lake = Lake(root)
    done = set(ingested_dates(lake))
    for date in lake.dates("incoming")[:days]:
        if date not in done:
            ingest_day(lake, date)
    return lake


def test_point_in_time_snapshot_ignores_later_days(tmp_path):
    simulate = _simulate()
    start = dt.date(2026, 1, 1)
    snapshot_day = start + dt.timedelta(days=39)
    root = tmp_path / "data"
    config = simulate.SimulationConfig(subscribers=800, days=55, start=start, seed=3)
    simulate.write_world(root, config)
    stored = []
    # The snapshot of day 39 once 40 days have arrived, then again once all 55 have, with every
    # daily aggregate rebuilt (this test's own) so that later days could reach the early ones.
    for days in (40, 55):
        lake = _ingest(root, days)
        last = lake.dates("raw", "subscribers")[-1]
        assert last == start + dt.timedelta(days=days - 1)
        shutil.rmtree(root / "daily", ignore_errors=True)
        build_daily_range(lake, start, last)
        build_snapshot(lake, snapshot_day)
        stored.append(partition_files(lake.snapshot(snapshot_day))[0].read_bytes())
    assert stored[0] == stored[1]


def test_snapshot_of_the_simulated_world(tmp_path, ingested_root):
    _simulate()
    root = tmp_path / "data"
    shutil.copytree(ingested_root, root)
    lake = Lake(root)
    days = lake.dates("raw", "subscribers")
    build_daily_range(lake, days[0], days[-1])
    snapshot = build_snapshot(lake, days[-1])
    present = {
        table
        for table in ("payments", "app_events", "transfers", "holdings")
        if lake.dates("raw", table)
    }
    tables = {"subscribers", "usage", "offer_events", "catalog", *present}
    categories = sorted(set(raw_state(lake, "catalog", days[-1])["category"]))
    assert snapshot.columns == [SUBSCRIBER_ID, SNAPSHOT_DATE] + feature_names(
        tables, categories=categories
    )
    assert snapshot[SUBSCRIBER_ID].is_sorted() and snapshot[SUBSCRIBER_ID].is_unique().all()
    offers = [f"{category}_impressions_90d" for category in categories]
    assert snapshot.select(pl.sum_horizontal(offers).sum()).item() > 0
    assert snapshot["data_megabytes_30d"].null_count() == 0


def test_benchmark_engines_agree_on_a_small_world(tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "benchmarks.features", "--subscribers", "300", "--days", "8"]
    command += ["--repeats", "1", "--world", str(tmp_path / "world")]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "duckdb equal, pandas equal" in completed.stdout
    assert all(f"\n| {engine} | " in completed.stdout for engine in ("mia", "duckdb", "pandas"))
    assert "**nightly**" in completed.stdout and "**rebuild**" in completed.stdout


def test_snapshot_bytes_do_not_depend_on_row_order_or_chunks(tmp_path):
    rng = np.random.default_rng(0)
    n = 20_000
    usage = pl.DataFrame(
        {
            SUBSCRIBER_ID: rng.integers(1, 2_000, n),
            "date": [DAY - dt.timedelta(days=int(d)) for d in rng.integers(0, 90, n)],
            "data_quantity_milli": rng.integers(0, 10_000_000, n),
            "data_events": rng.integers(1, 9, n).astype(np.int32),
            "charge_milli": rng.integers(0, 50_000, n),
        }
    )
    usage = usage.unique([SUBSCRIBER_ID, "date"]).select(
        pl.col(name).cast(dtype) if name in usage.columns else pl.lit(0, dtype).alias(name)
        for name, dtype in daily_schema("usage").items()
    )
    state = {"subscribers": _subscribers(list(range(1, 2_000)))}
    written = []
    for seed in (1, 2):
        shuffled = usage.sample(fraction=1.0, shuffle=True, seed=seed)
        pieces = pl.concat([shuffled[i::7] for i in range(7)], rechunk=False)
        snapshot = compute_snapshot({"usage": pieces.lazy()}, state, DAY)
        assert snapshot.n_chunks() == 1
        path = tmp_path / f"snapshot-{seed}.parquet"
        snapshot.write_parquet(path)
        written.append(path.read_bytes())
    assert written[0] == written[1]


def test_drift_flags_a_shifted_feature_and_skips_what_a_night_lacks():
    rng = np.random.default_rng(4)
    before = pl.DataFrame(
        {
            "steady": rng.normal(size=2000),
            "shifted": rng.normal(size=2000),
            "plan": ["prepaid"] * 2000,  # not numeric: no PSI
            "retired": rng.random(2000),  # gone tonight
        }
    )
    after = before.with_columns(pl.col("shifted") + 2.0).drop("retired")
    columns = ["steady", "shifted", "plan", "retired", "new"]
    table = drift_table(before.lazy(), after.lazy(), columns)  # read column by column
    assert table["column"].to_list() == ["shifted", "steady"]
    assert table.row(0, named=True)["level"] == "warning" and table["psi"][0] > 1.0
    assert table.row(1, named=True) == {"column": "steady", "psi": 0.0, "level": "stable"}
    assert table.equals(drift_table(before, after, columns))
