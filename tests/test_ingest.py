"""Ingest: all-or-nothing writes into raw/, round trips, idempotence, and reading raw back."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features.daily import DAILY_TABLES, aggregate_day
from mia.contracts import ContractError
from mia.errors import InputError
from mia.ingest import MANIFEST_DIR, ingest_day, ingested_dates, raw_events, raw_state
from mia.lake import DamagedFileError, Lake, partition_files, read_partition
from mia.schema import TABLES
from tests.test_contracts import DAY, valid_day, with_value


def deliver(folder: Path, frames: dict[str, pl.DataFrame], file_format: str = "parquet") -> Path:
    """Write a day's frames into a drop-zone folder as `<table>.<format>`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        if file_format == "csv":
            frame.write_csv(folder / f"{name}.csv")
        else:
            frame.write_parquet(folder / f"{name}.parquet")
    return folder


def raw_snapshot(lake: Lake) -> dict[str, bytes]:
    """Every file under raw/ by relative path, with its bytes."""
    base = lake.root / "raw"
    if not base.exists():
        return {}
    return {
        str(path.relative_to(base)): path.read_bytes() for path in base.rglob("*") if path.is_file()
    }


def read_raw_partition(lake: Lake, table: str, day: dt.date = DAY) -> pl.DataFrame:
    return read_partition(partition_files(lake.raw(table, day)))


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(tmp_path / "data")


@pytest.mark.parametrize("file_format", ["parquet", "csv"])
def test_good_delivery_round_trips(lake, file_format):
    frames = valid_day()
    deliver(lake.incoming(DAY), frames, file_format)
    counts = ingest_day(lake, DAY)
    assert counts == {name: frame.height for name, frame in frames.items()}
    for name, frame in frames.items():
        stored = read_raw_partition(lake, name)
        assert stored.schema == TABLES[name].polars_schema
        # Stored by shard key (mia.lake.keyed_by_shard): the same rows, in another order.
        assert_frame_equal(stored, frame, check_row_order=False)
    assert ingested_dates(lake) == [DAY]


def test_reingest_is_idempotent_and_byte_identical(lake):
    deliver(lake.incoming(DAY), valid_day())
    ingest_day(lake, DAY)
    first = raw_snapshot(lake)
    ingest_day(lake, DAY)
    assert raw_snapshot(lake) == first
    # CSV and Parquet deliveries of the same day give the same bytes in raw/.
    csv_folder = deliver(lake.root / "elsewhere", valid_day(), "csv")
    ingest_day(lake, DAY, source=csv_folder)
    second = raw_snapshot(lake)
    assert {path: data for path, data in second.items() if path.endswith(".parquet")} == {
        path: data for path, data in first.items() if path.endswith(".parquet")
    }


def test_reingest_replaces_the_day_exactly(lake):
    deliver(lake.incoming(DAY), valid_day())
    ingest_day(lake, DAY)
    smaller = valid_day()
    smaller["usage"] = smaller["usage"].head(1)
    del smaller["payments"]
    source = deliver(lake.root / "redelivery", smaller)
    counts = ingest_day(lake, DAY, source=source)
    assert "payments" not in counts
    assert read_raw_partition(lake, "usage").height == 1
    assert not lake.raw("payments", DAY).exists()
    assert lake.dates("raw", "payments") == []


def test_missing_optional_table_is_skipped(lake, caplog):
    frames = {name: frame for name, frame in valid_day().items() if TABLES[name].required}
    deliver(lake.incoming(DAY), frames)
    with caplog.at_level("INFO"):
        counts = ingest_day(lake, DAY)
    assert set(counts) == {"subscribers", "usage", "catalog", "offer_events"}
    assert not (lake.root / "raw" / "holdings").exists()
    assert "holdings: optional table not delivered" in caplog.text
    manifest = json.loads(
        (lake.root / "raw" / MANIFEST_DIR / f"date={DAY}" / "manifest.json").read_text()
    )
    assert manifest["skipped_tables"] == [
        "payments",
        "app_events",
        "transfers",
        "consumption",
        "holdings",
    ]


def test_missing_required_table_is_refused(lake):
    frames = valid_day()
    del frames["catalog"]
    deliver(lake.incoming(DAY), frames)
    with pytest.raises(ContractError) as caught:
        ingest_day(lake, DAY)
    assert [(v.table, v.rule) for v in caught.value.violations] == [("catalog", "required_table")]
    assert "catalog: rule 'required_table'" in str(caught.value)
    assert str(lake.incoming(DAY)) in str(caught.value)
    assert raw_snapshot(lake) == {}


def test_missing_delivery_folder_is_refused(lake):
    with pytest.raises(ContractError) as caught:
        ingest_day(lake, DAY)
    assert {v.table for v in caught.value.violations} == {
        "subscribers",
        "usage",
        "catalog",
        "offer_events",
    }
    assert isinstance(caught.value, InputError)


def test_unknown_files_are_ignored_and_extra_columns_dropped(lake, caplog):
    frames = valid_day()
    frames["usage"] = frames["usage"].with_columns(pl.lit("cell-7").alias("cell_id"))
    folder = deliver(lake.incoming(DAY), frames)
    (folder / "notes.txt").write_text("delivered by ops\n")
    (folder / "calls.csv").write_text("a,b\n1,2\n")
    (folder / ".DS_Store").write_text("")
    with caplog.at_level("WARNING"):
        counts = ingest_day(lake, DAY)
    assert counts["usage"] == 3
    assert read_raw_partition(lake, "usage").columns == TABLES["usage"].column_names
    assert "ignoring calls.csv" in caplog.text and "cell_id" in caplog.text
    manifest = json.loads(
        (lake.root / "raw" / MANIFEST_DIR / f"date={DAY}" / "manifest.json").read_text()
    )
    assert manifest["ignored_files"] == ["calls.csv", "notes.txt"]
    assert manifest["tables"]["usage"]["dropped_columns"] == ["cell_id"]
    assert manifest["tables"]["usage"]["file"] == "usage.parquet"


def test_table_as_a_folder_of_parquet_parts(lake):
    frames = valid_day()
    usage = frames.pop("usage")
    folder = deliver(lake.incoming(DAY), frames)
    (folder / "usage").mkdir()
    usage.head(2).write_parquet(folder / "usage" / "part-0.parquet")
    usage.tail(1).write_parquet(folder / "usage" / "part-1.parquet")
    assert ingest_day(lake, DAY)["usage"] == 3
    assert read_raw_partition(lake, "usage").equals(usage)


def test_table_delivered_twice_is_refused(lake):
    folder = deliver(lake.incoming(DAY), valid_day())
    valid_day()["usage"].write_csv(folder / "usage.csv")
    with pytest.raises(ContractError, match="usage: rule 'single_source'"):
        ingest_day(lake, DAY)
    assert raw_snapshot(lake) == {}


def test_unreadable_file_is_refused(lake):
    folder = deliver(lake.incoming(DAY), valid_day())
    (folder / "payments.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ContractError) as caught:
        ingest_day(lake, DAY)
    assert [(v.table, v.rule) for v in caught.value.violations] == [("payments", "readable")]
    assert raw_snapshot(lake) == {}


def _cell(table: str, column: str, value: object, row: int = 0) -> Callable[[dict], None]:
    def mutate(frames: dict[str, pl.DataFrame]) -> None:
        frames[table] = with_value(frames[table], column, row, value)

    return mutate


def _duplicate_first_row(table: str) -> Callable[[dict], None]:
    def mutate(frames: dict[str, pl.DataFrame]) -> None:
        frames[table] = pl.concat([frames[table], frames[table].head(1)])

    return mutate


def _drop(table: str, column: str) -> Callable[[dict], None]:
    def mutate(frames: dict[str, pl.DataFrame]) -> None:
        frames[table] = frames[table].drop(column)

    return mutate


def _text(table: str, column: str, value: str) -> Callable[[dict], None]:
    def mutate(frames: dict[str, pl.DataFrame]) -> None:
        frame = frames[table].with_columns(pl.col(column).cast(pl.String))
        frames[table] = with_value(frame, column, 0, value)

    return mutate


LATE = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time(0, 0, 1))
BREAKAGES = [
    (_drop("usage", "kind"), "usage", "kind", "required_column"),
    (_text("usage", "quantity", "abc"), "usage", "quantity", "type"),
    (_text("payments", "ts", "yesterday"), "payments", "ts", "type"),
    (_cell("subscribers", "tariff_id", None), "subscribers", "tariff_id", "not_null"),
    (_cell("usage", "kind", "fax"), "usage", "kind", "allowed"),
    (_cell("offer_events", "event", "buy"), "offer_events", "event", "allowed"),
    (_cell("payments", "method", "gold"), "payments", "method", "allowed"),
    (_cell("app_events", "screen", "x"), "app_events", "screen", "allowed"),
    (_cell("subscribers", "device_os", "bada"), "subscribers", "device_os", "allowed"),
    (_cell("catalog", "category", "Cars"), "catalog", "category", "name_pattern"),
    (_cell("transfers", "gb", -1.0), "transfers", "gb", "non_negative"),
    (_cell("usage", "charge", float("inf")), "usage", "charge", "finite"),
    (_duplicate_first_row("catalog"), "catalog", "offer_id", "unique"),
    (_cell("app_events", "ts", LATE), "app_events", "ts", "not_after_date"),
    (_cell("catalog", "end_date", dt.date(2025, 1, 1)), "catalog", "end_date", "date_order"),
    (_cell("holdings", "end_date", dt.date(2025, 1, 1)), "holdings", "end_date", "date_order"),
    (_cell("catalog", "regions", "moscow|"), "catalog", "regions", "list_format"),
    (_cell("catalog", "device_os", "ios|tizen"), "catalog", "device_os", "allowed"),
    (_cell("catalog", "capacity", -3), "catalog", "capacity", "non_negative"),
    (_cell("catalog", "requires_product", "p_data5"), "catalog", "excludes_product", "distinct"),
    (_cell("offer_events", "offer_id", "nope"), "offer_events", "offer_id", "known_offer"),
]


@pytest.mark.parametrize(
    ("mutate", "table", "column", "rule"),
    BREAKAGES,
    ids=[f"{table}.{column}.{rule}" for _, table, column, rule in BREAKAGES],
)
def test_broken_rule_refuses_the_whole_day(lake, mutate, table, column, rule):
    frames = valid_day()
    mutate(frames)
    deliver(lake.incoming(DAY), frames)
    with pytest.raises(ContractError) as caught:
        ingest_day(lake, DAY)
    assert [(v.table, v.column, v.rule) for v in caught.value.violations] == [(table, column, rule)]
    count = caught.value.violations[0].count
    # A rule about rows says how many break it; a missing column is not counted in rows.
    says = "broken:" if rule == "required_column" else f"broken by {count} row(s)"
    assert f"{table}.{column}: rule '{rule}' {says}" in str(caught.value)
    assert not (lake.root / "raw").exists()


def test_bad_redelivery_leaves_the_previous_ingest_untouched(lake):
    deliver(lake.incoming(DAY), valid_day())
    ingest_day(lake, DAY)
    before = raw_snapshot(lake)
    frames = valid_day()
    frames["usage"] = with_value(frames["usage"], "kind", 0, "fax")
    source = deliver(lake.root / "redelivery", frames)
    with pytest.raises(ContractError):
        ingest_day(lake, DAY, source=source)
    assert raw_snapshot(lake) == before


def _ingest_days(lake: Lake, days: list[dt.date], optional: bool = True) -> None:
    for day in days:
        frames = valid_day(day)
        if not optional:
            frames = {name: frame for name, frame in frames.items() if TABLES[name].required}
        deliver(lake.incoming(day), frames)
        ingest_day(lake, day)


def test_raw_events_reads_a_date_range(lake):
    days = [DAY + dt.timedelta(days=offset) for offset in range(3)]
    _ingest_days(lake, days)
    scan = raw_events(lake, "usage", days[1], None)
    assert isinstance(scan, pl.LazyFrame)
    frame = scan.collect()
    assert frame.get_column("date").unique().sort().to_list() == days[1:]
    assert frame.height == 6
    assert frame.columns == [*TABLES["usage"].column_names, "date"]
    assert raw_events(lake, "usage", None, None).collect().height == 9
    empty = raw_events(lake, "usage", dt.date(2030, 1, 1), None).collect()
    assert empty.height == 0 and empty.columns == frame.columns


def test_raw_events_of_a_table_never_delivered(lake):
    _ingest_days(lake, [DAY], optional=False)
    assert raw_events(lake, "payments", None, None) is None
    with pytest.raises(InputError, match="event table"):
        raw_events(lake, "catalog", None, None)


def test_raw_state_is_the_latest_delivery_up_to_the_date(lake):
    first, second = DAY, DAY + dt.timedelta(days=2)
    _ingest_days(lake, [first])
    frames = valid_day(second)
    frames["subscribers"] = frames["subscribers"].head(2)
    deliver(lake.incoming(second), frames)
    ingest_day(lake, second)
    assert raw_state(lake, "subscribers", first - dt.timedelta(days=1)) is None
    assert raw_state(lake, "subscribers", first).height == 3
    assert raw_state(lake, "subscribers", first + dt.timedelta(days=1)).height == 3
    assert raw_state(lake, "subscribers", second).height == 2
    narrow = raw_state(lake, "subscribers", second, columns=["activation_date", "subscriber_id"])
    whole = raw_state(lake, "subscribers", second)
    assert narrow.equals(whole.select("activation_date", "subscriber_id"))
    state = raw_state(lake, "catalog", second + dt.timedelta(days=30))
    assert state.schema == TABLES["catalog"].polars_schema
    with pytest.raises(InputError, match="state table"):
        raw_state(lake, "usage", first)


def test_ingests_a_simulated_world_exactly(tmp_path):
    simulate = pytest.importorskip("mia.simulate")
    root = tmp_path / "data"
    config = simulate.SimulationConfig(subscribers=200, days=3, start=dt.date(2026, 1, 1), seed=3)
    dates = simulate.write_world(root, config, file_format="csv")
    lake = Lake(root)
    for day in dates:
        counts = ingest_day(lake, day)
        assert counts["subscribers"] == 200 and counts["catalog"] > 0 and counts["usage"] > 0
    assert ingested_dates(lake) == dates
    for day, frames in simulate.generate_days(config):
        for name, frame in frames.items():
            assert_frame_equal(read_raw_partition(lake, name, day), frame, check_row_order=False)


NEXT_DAY = DAY + dt.timedelta(days=1)


def crash_after(monkeypatch, module, writes: int) -> None:
    """Make `module.write_partition` die like a killed process after `writes` partitions:
    the next write leaves its hidden temporary folder behind and raises."""
    real = module.write_partition
    done = []

    def write_partition(frame, directory, *args, **kwargs):
        if len(done) == writes:
            directory = Path(directory)
            (directory.parent / f".{directory.name}.tmp-0123abcd").mkdir(parents=True)
            raise KeyboardInterrupt("killed")
        done.append(directory)
        return real(frame, directory, *args, **kwargs)

    monkeypatch.setattr(module, "write_partition", write_partition)


def hidden_entries(lake: Lake) -> list[Path]:
    return [path for path in lake.root.rglob(".*") if path.name != ".mia.lock"]


def test_next_night_reingests_a_day_left_half_written_by_a_killed_ingest(lake, monkeypatch):
    import mia.ingest
    from flows.steps import ingest_new_days

    deliver(lake.incoming(DAY), valid_day())
    crash_after(monkeypatch, mia.ingest, writes=6)
    with pytest.raises(KeyboardInterrupt):
        ingest_new_days(lake, DAY)
    monkeypatch.undo()
    assert len(lake.dates("raw", "subscribers")) == 1 and ingested_dates(lake) == []

    deliver(lake.incoming(NEXT_DAY), valid_day(NEXT_DAY))
    assert ingest_new_days(lake, NEXT_DAY) == [DAY, NEXT_DAY]
    assert ingested_dates(lake) == [DAY, NEXT_DAY]
    for name, frame in valid_day().items():
        assert_frame_equal(read_raw_partition(lake, name), frame, check_row_order=False)
    assert hidden_entries(lake) == []


def test_half_written_day_whose_delivery_is_gone_is_refused_by_name(lake, monkeypatch):
    import mia.ingest
    from flows.steps import ingest_new_days
    from mia.ingest import IncompleteDayError

    deliver(lake.incoming(DAY), valid_day())
    crash_after(monkeypatch, mia.ingest, writes=3)
    with pytest.raises(KeyboardInterrupt):
        ingest_new_days(lake, DAY)
    monkeypatch.undo()
    shutil.rmtree(lake.incoming(DAY))
    deliver(lake.incoming(NEXT_DAY), valid_day(NEXT_DAY))
    with pytest.raises(IncompleteDayError, match=f"{DAY}: the ingest was interrupted"):
        ingest_new_days(lake, NEXT_DAY)
    assert ingested_dates(lake) == []


def assert_daily_of(lake: Lake, frames: dict[str, pl.DataFrame]) -> None:
    """The daily aggregates of DAY in the lake are those of the delivery `frames`."""
    expected = aggregate_day({name: frames[name] for name in (*DAILY_TABLES, "catalog")}, DAY)
    for table in DAILY_TABLES:
        built = read_partition(partition_files(lake.daily(table, DAY)))
        assert_frame_equal(built, expected[table], check_row_order=False)


def test_interrupted_daily_rebuild_is_redone_in_full(lake, monkeypatch):
    import features.daily
    from flows.steps import update_daily_aggregates

    deliver(lake.incoming(DAY), valid_day())
    ingest_day(lake, DAY)
    assert update_daily_aggregates(lake, DAY) == [DAY]
    # A corrected delivery with the same row counts: only a value of the last tables changes.
    corrected = valid_day()
    corrected["transfers"] = with_value(corrected["transfers"], "gb", 0, 7.0)
    deliver(lake.incoming(DAY), corrected)
    ingest_day(lake, DAY)
    crash_after(monkeypatch, features.daily, writes=1)
    with pytest.raises(KeyboardInterrupt):
        update_daily_aggregates(lake, DAY, rebuild={DAY})
    monkeypatch.undo()

    assert update_daily_aggregates(lake, NEXT_DAY) == [DAY]
    assert_daily_of(lake, corrected)
    assert hidden_entries(lake) == []
    assert update_daily_aggregates(lake, NEXT_DAY) == []  # built once


def test_daily_aggregates_follow_a_day_ingested_again(lake):
    from flows.steps import update_daily_aggregates

    deliver(lake.incoming(DAY), valid_day())
    ingest_day(lake, DAY)
    update_daily_aggregates(lake, DAY)
    corrected = valid_day()
    corrected["payments"] = pl.concat([corrected["payments"], corrected["payments"]])
    deliver(lake.incoming(DAY), corrected)
    ingest_day(lake, DAY)  # `mia ingest --date DAY`, outside a night
    assert update_daily_aggregates(lake, NEXT_DAY) == [DAY]
    assert_daily_of(lake, corrected)


def many_subscribers(rows: int = 2000) -> pl.DataFrame:
    """A valid subscribers table of `rows` subscribers (ids 1..rows)."""
    first = valid_day()["subscribers"]
    repeated = pl.concat([first] * (rows // first.height + 1)).head(rows)
    return repeated.with_columns(pl.int_range(1, rows + 1, dtype=pl.Int64).alias("subscriber_id"))


def damage_a_page(path: Path, column: int = 0) -> None:
    """Overwrite bytes in the middle of a column's pages, as a bad disk would."""
    import pyarrow.parquet as pq

    chunk = pq.ParquetFile(path).metadata.row_group(0).column(column)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    middle = start + chunk.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[middle : middle + 256] = b"\xff" * 256
    path.write_bytes(bytes(data))


def test_parquet_with_damaged_pages_is_unreadable(lake):
    frames = valid_day()
    frames["subscribers"] = many_subscribers()
    folder = deliver(lake.incoming(DAY), frames)
    path = folder / "subscribers.parquet"
    frames["subscribers"].write_parquet(path, compression="uncompressed")
    damage_a_page(path)
    with pytest.raises(ContractError) as caught:
        ingest_day(lake, DAY)
    assert [(v.table, v.rule) for v in caught.value.violations] == [("subscribers", "readable")]
    assert "subscriber_id" in str(caught.value) and "subscribers.parquet" in str(caught.value)
    assert raw_snapshot(lake) == {}


def test_undamaged_parquet_of_any_writer_is_read(lake):
    import pyarrow.parquet as pq

    frames = valid_day()
    folder = deliver(lake.incoming(DAY), frames)
    pq.write_table(frames["usage"].to_arrow(), folder / "usage.parquet", row_group_size=2)
    assert ingest_day(lake, DAY)["usage"] == frames["usage"].height


@pytest.mark.parametrize(
    "content", ["", "subscriber_id,region,device_os,device_vendor,tariff_id,activation_date\n"]
)
def test_required_state_table_without_rows_is_refused(lake, content, capsys):
    from flows.cli import app, run_command

    folder = deliver(lake.incoming(DAY), valid_day(), "csv")
    (folder / "subscribers.csv").write_text(content)
    arguments = ["ingest", "--data-dir", str(lake.root), "--date", DAY.isoformat()]
    assert run_command(lambda: app(arguments, standalone_mode=True)) == 2
    assert "subscribers: rule 'not_empty' broken" in capsys.readouterr().err
    assert raw_snapshot(lake) == {}


def test_damaged_raw_file_is_named_with_how_to_rebuild_it(lake):
    deliver(lake.incoming(DAY), valid_day())
    ingest_day(lake, DAY)
    for table in ("subscribers", "usage"):
        [file] = partition_files(lake.raw(table, DAY))
        file.write_bytes(file.read_bytes()[:-100])  # a copy cut short
    with pytest.raises(DamagedFileError, match="mia ingest --date 2026-03-10") as caught:
        raw_state(lake, "subscribers", DAY)
    assert str(lake.raw("subscribers", DAY) / "part-0.parquet") in str(caught.value)
    with pytest.raises(DamagedFileError, match=str(lake.raw("usage", DAY))):
        raw_events(lake, "usage", DAY, DAY)


def test_damaged_daily_aggregate_is_named_and_rebuilt_once_removed(lake):
    from features.snapshot import build_snapshot
    from flows.steps import update_daily_aggregates

    deliver(lake.incoming(DAY), valid_day())
    ingest_day(lake, DAY)
    update_daily_aggregates(lake, DAY)
    expected = build_snapshot(lake, DAY, write=False)
    [file] = partition_files(lake.daily("usage", DAY))
    file.write_bytes(b"\0" * 16 + file.read_bytes()[16:])  # its pages, not its footer
    with pytest.raises(DamagedFileError, match="rebuild the usage aggregates of 2026-03-10"):
        build_snapshot(lake, DAY, write=False)
    shutil.rmtree(lake.daily("usage", DAY))
    assert update_daily_aggregates(lake, DAY) == [DAY]
    assert_frame_equal(build_snapshot(lake, DAY, write=False), expected)


def test_ingest_refuses_events_older_than_the_setting(lake):
    from mia.settings import Settings, SettingsError

    frames = valid_day()
    frames["offer_events"] = with_value(frames["offer_events"], "ts", 2, dt.datetime(1900, 1, 1))
    deliver(lake.incoming(DAY), frames)
    with pytest.raises(ContractError, match=r"offer_events.ts: rule 'max_age' broken by 1 row"):
        ingest_day(lake, DAY)
    assert raw_snapshot(lake) == {}
    assert ingest_day(lake, DAY, settings=Settings(event_max_age_days=60_000))["offer_events"] == 3
    with pytest.raises(SettingsError, match="event_max_age_days == 0, must be >= 1"):
        Settings(event_max_age_days=0)


def read_day_manifest(lake: Lake, day: dt.date = DAY) -> dict:
    return json.loads(
        (lake.root / "raw" / MANIFEST_DIR / f"date={day}" / "manifest.json").read_text()
    )


def test_catalog_without_optional_columns_is_ingested_and_its_offers_are_for_everyone(lake):
    from offers.eligibility import eligible_pairs
    from tests.test_contracts import OPTIONAL_COLUMNS

    frames = valid_day()
    catalog = frames["catalog"].with_columns(pl.lit(0).alias("min_tenure_days"))
    frames["catalog"] = catalog.drop(OPTIONAL_COLUMNS["catalog"])
    frames["holdings"] = frames["holdings"].drop(OPTIONAL_COLUMNS["holdings"])
    deliver(lake.incoming(DAY), frames, "csv")
    ingest_day(lake, DAY)
    manifest = read_day_manifest(lake)
    assert manifest["tables"]["catalog"]["absent_columns"] == OPTIONAL_COLUMNS["catalog"]
    assert manifest["tables"]["holdings"]["absent_columns"] == ["end_date"]
    assert manifest["tables"]["usage"]["absent_columns"] == []
    stored = raw_state(lake, "catalog", DAY)
    assert stored.schema == TABLES["catalog"].polars_schema
    # No regions, OS, products or end dates: every subscriber may have every started offer.
    started = ["data_5gb", "roam_eu"]
    expected = pl.DataFrame({"subscriber_id": [1, 1, 2, 2, 3, 3], "offer_id": started * 3})
    subscribers, holdings = raw_state(lake, "subscribers", DAY), raw_state(lake, "holdings", DAY)
    assert_frame_equal(eligible_pairs(subscribers, stored, holdings, None, DAY), expected)
    # The same from frames that lack the columns (a notebook's own catalog).
    pairs = eligible_pairs(frames["subscribers"], frames["catalog"], frames["holdings"], None, DAY)
    assert_frame_equal(pairs, expected)


def test_later_days_without_state_tables_use_the_latest_earlier_delivery(lake, caplog):
    from features.daily import build_daily

    first, second = DAY, DAY + dt.timedelta(days=1)
    deliver(lake.incoming(first), valid_day(first))
    ingest_day(lake, first)
    events = {name: valid_day(second)[name] for name in ("usage", "offer_events")}
    deliver(lake.incoming(second), events)
    with caplog.at_level("INFO"):
        counts = ingest_day(lake, second)
    assert set(counts) == {"usage", "offer_events"}
    assert f"catalog: not delivered for {second}; the delivery of {first} stays in force" in (
        caplog.text
    )
    manifest = read_day_manifest(lake, second)
    in_force = {"catalog": str(first), "holdings": str(first), "subscribers": str(first)}
    assert manifest["state_from"] == in_force
    assert manifest["skipped_tables"] == ["payments", "app_events", "transfers", "consumption"]
    assert read_day_manifest(lake, first)["state_from"] == in_force
    assert raw_state(lake, "catalog", second).equals(raw_state(lake, "catalog", first))
    # The day's offer events name offers of the catalog in force and are aggregated with it.
    assert build_daily(lake, second)
    # An offer that no catalog in force has is still refused.
    ghost = with_value(events["offer_events"], "offer_id", 0, "ghost_offer")
    source = deliver(lake.root / "redelivery", {**events, "offer_events": ghost})
    with pytest.raises(ContractError, match="offer_events.offer_id: rule 'known_offer'"):
        ingest_day(lake, second, source=source)


def test_seconds_delivered_as_minutes_give_a_warning_in_the_manifest(lake):
    frames = valid_day()
    # Subscriber 1 talked 45 minutes, delivered as 2,700 "minutes".
    frames["usage"] = with_value(frames["usage"], "quantity", 1, 2700.0)
    deliver(lake.incoming(DAY), frames)
    ingest_day(lake, DAY)
    [warning] = read_day_manifest(lake)["tables"]["usage"]["warnings"]
    assert (warning["column"], warning["rule"], warning["rows"]) == (
        "quantity",
        "plausible_daily_total",
        1,
    )
    assert warning["detail"].startswith("voice_out: a subscriber's total of one day above 1,440")
    assert "usage.quantity: rule 'plausible_daily_total' broken by 1 row(s)" in warning["message"]


def test_the_nights_manifest_names_the_history_the_state_deliveries_and_warnings(lake, monkeypatch):
    from types import SimpleNamespace

    import models.registry
    from flows.steps import manifest
    from mia.settings import Settings

    days = [DAY + dt.timedelta(days=offset) for offset in range(3)]
    for day in days:
        frames = valid_day(day)
        if day != days[0]:  # state tables delivered on the first day only
            frames = {name: frames[name] for name in ("usage", "offer_events")}
        frames["usage"] = with_value(frames["usage"], "quantity", 1, 2700.0)
        deliver(lake.incoming(day), frames)
        ingest_day(lake, day)
    monkeypatch.setattr(models.registry, "champion_info", lambda *args, **kwargs: None)
    settings = Settings(data_dir=lake.root)
    night = manifest(lake, days[-1], settings, SimpleNamespace(run_id="r"), {}, [days[-1]])
    inputs = night["inputs"]
    # The history the night used, ingested before the night or during it.
    assert inputs["ingested_days"] == {
        "count": 3,
        "first": str(days[0]),
        "last": str(days[-1]),
        "tonight": [str(days[-1])],
    }
    assert inputs["state_tables"]["catalog"] == {"delivered": str(days[0]), "absent_columns": []}
    assert set(inputs["state_tables"]) == {"subscribers", "catalog", "holdings"}
    [line] = inputs["warnings"]
    assert line.startswith(f"usage.quantity 'plausible_daily_total' on {days[-1]}, 1 row(s)")


def test_daily_aggregate_log_says_what_it_counts(lake, caplog):
    from features.daily import build_daily

    frames = valid_day()
    # Subscriber 1 answers offers of two categories, subscriber 3 of one.
    frames["offer_events"] = with_value(frames["offer_events"], "offer_id", 1, "roam_eu")
    deliver(lake.incoming(DAY), frames)
    ingest_day(lake, DAY)
    with caplog.at_level("INFO", logger="features.daily"):
        build_daily(lake, DAY)
    assert (
        f"daily aggregate offer_events {DAY}: 3 rows (one per subscriber_id x category) "
        "for 2 subscribers" in caplog.text
    )
    assert f"daily aggregate usage {DAY}: 2 rows (one per subscriber_id) for 2 subscribers" in (
        caplog.text
    )
