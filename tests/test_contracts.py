"""The input contract: every rule breaks on a tiny hand-made frame with a message naming it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from mia.contracts import (
    ContractError,
    Violation,
    check_table,
    check_tables,
    read_table_file,
    validate_table,
    validate_tables,
)
from mia.errors import InputError
from mia.schema import TABLES

DAY = dt.date(2026, 3, 10)


def valid_day(day: dt.date = DAY) -> dict[str, pl.DataFrame]:
    """A minimal valid delivery of all 9 tables, in the exact contract schema."""
    at = dt.datetime.combine(day, dt.time(9, 30))
    frames = {
        "subscribers": {
            "subscriber_id": [1, 2, 3],
            "region": ["moscow", "spb", "kazan"],
            "device_os": ["android", "ios", "other"],
            "device_vendor": ["samsung", "apple", "nokia"],
            "tariff_id": ["t1", "t2", "t1"],
            "activation_date": [dt.date(2020, 1, 5), dt.date(2024, 6, 1), day],
        },
        "usage": {
            "subscriber_id": [1, 1, 2],
            "ts": [at, at + dt.timedelta(hours=1), dt.datetime.combine(day, dt.time(23, 59, 59))],
            "kind": ["data", "voice_out", "roaming_data"],
            "quantity": [120.5, 3.0, 0.0],
            "charge": [0.0, 1.5, 12.25],
        },
        "catalog": {
            "offer_id": ["data_5gb", "roam_eu", "music_plus"],
            "category": ["data_addon", "roaming", "music"],
            "title": ["5 GB", "Roaming EU", "Music+"],
            "value": [150.0, 300.0, 99.0],
            "start_date": [dt.date(2026, 1, 1), dt.date(2026, 2, 1), dt.date(2026, 4, 1)],
            "end_date": [None, dt.date(2026, 2, 1), dt.date(2026, 12, 31)],
            "product_id": ["p_data5", "p_roam", "p_music"],
            "regions": [None, "moscow|spb", "kazan"],
            "device_os": [None, "android|ios", "ios"],
            "min_tenure_days": [0, 30, 0],
            "requires_product": [None, None, "p_data5"],
            "excludes_product": ["p_data5", None, "p_music"],
            "cooldown_days": [7, 14, 0],
            "capacity": [None, 1000, 0],
            "fatigue_ignores": [None, 5, 0],
            "fatigue_window_days": [None, 30, None],
            "fatigue_suppress_days": [None, 7, None],
        },
        "offer_events": {
            "subscriber_id": [1, 1, 3],
            "offer_id": ["data_5gb", "data_5gb", "music_plus"],
            "ts": [at, at + dt.timedelta(minutes=2), at],
            "event": ["impression", "accept", "impression"],
            "propensity": [0.25, None, 1.0],
        },
        "payments": {
            "subscriber_id": [2],
            "ts": [at],
            "amount": [500.0],
            "method": ["promised_payment"],
        },
        "app_events": {
            "subscriber_id": [1, 3],
            "ts": [at, at],
            "screen": ["home", "market"],
        },
        "transfers": {
            "subscriber_id": [3],
            "ts": [at],
            "kind": ["gift_out"],
            "gb": [2.0],
            "amount": [0.0],
        },
        "consumption": {
            "subscriber_id": [1, 2, 3],
            "item_id": ["music_plus", "film_0042", "film_0042"],
            "ts": [at, at, at + dt.timedelta(hours=2)],
            "kind": ["listen", "watch", "watch"],
            "quantity": [35.0, None, 118.0],
        },
        "holdings": {
            "subscriber_id": [1, 1, 2],
            "product_id": ["p_data5", "p_data5", "p_roam"],
            "start_date": [dt.date(2026, 1, 1), dt.date(2026, 2, 1), dt.date(2025, 5, 1)],
            "end_date": [dt.date(2026, 1, 31), None, None],
        },
    }
    return {
        name: pl.DataFrame(data, schema=TABLES[name].polars_schema) for name, data in frames.items()
    }


def with_value(frame: pl.DataFrame, column: str, row: int, value: object) -> pl.DataFrame:
    """A copy of `frame` with one cell replaced (the column keeps its dtype)."""
    values = frame.get_column(column).to_list()
    values[row] = value
    return frame.with_columns(pl.Series(column, values, dtype=frame.schema[column]))


def broken(table: str, frame: pl.DataFrame) -> ContractError:
    """The ContractError raised when `table` of a valid day is replaced by `frame`."""
    frames = valid_day()
    frames[table] = frame
    with pytest.raises(ContractError) as caught:
        validate_tables(frames, DAY)
    return caught.value


def only(error: ContractError) -> Violation:
    assert len(error.violations) == 1, str(error)
    return error.violations[0]


def assert_names(error: ContractError, table: str, column: str, rule: str, count: int) -> None:
    """Exactly one violation, and its message names table, column, rule and count."""
    violation = only(error)
    assert (violation.table, violation.column, violation.rule, violation.count) == (
        table,
        column,
        rule,
        count,
    )
    text = str(error)
    assert f"{table}.{column}" in text
    assert f"'{rule}'" in text
    assert f"{count} row(s)" in text


def test_valid_day_passes_and_keeps_values():
    frames = valid_day()
    cleaned = validate_tables(frames, DAY)
    assert list(cleaned) == list(TABLES)
    for name, frame in cleaned.items():
        assert frame.equals(frames[name]), name
        assert frame.schema == TABLES[name].polars_schema


def test_empty_event_tables_are_fine():
    frames = valid_day()
    for name in ("usage", "offer_events", "payments", "app_events", "transfers"):
        frames[name] = frames[name].clear()
    cleaned = validate_tables(frames, DAY)
    assert cleaned["usage"].height == 0
    assert cleaned["usage"].schema == TABLES["usage"].polars_schema


def test_missing_required_column():
    error = broken("usage", valid_day()["usage"].drop("charge"))
    violation = only(error)
    assert (violation.table, violation.column, violation.rule) == (
        "usage",
        "charge",
        "required_column",
    )
    # A missing column is a fact about the header, never counted in rows.
    assert "usage.charge: rule 'required_column' broken: the column is missing" in str(error)
    assert "row(s)" not in str(error)
    assert "columns found" in str(error)


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("subscribers", "region", None),
        ("usage", "ts", None),
        ("catalog", "title", None),
        ("offer_events", "event", None),
        ("holdings", "product_id", None),
    ],
)
def test_null_in_non_nullable_column(table, column, value):
    frame = with_value(valid_day()[table], column, 0, value)
    assert_names(broken(table, frame), table, column, "not_null", 1)


def test_empty_string_counts_as_null():
    frame = with_value(valid_day()["catalog"], "title", 1, "")
    assert_names(broken("catalog", frame), "catalog", "title", "not_null", 1)


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("usage", "kind", "fax"),
        ("offer_events", "event", "purchase"),
        ("payments", "method", "bitcoin"),
        ("app_events", "screen", "settings"),
        ("transfers", "kind", "gift"),
        ("subscribers", "device_os", "symbian"),
    ],
)
def test_allowed_values(table, column, value):
    frame = with_value(valid_day()[table], column, 0, value)
    error = broken(table, frame)
    assert_names(error, table, column, "allowed", 1)
    assert repr(value) in str(error)


@pytest.mark.parametrize("name", ["jewellery", "market_sell", "market-buy", "k9", "x" * 64])
def test_categories_are_the_catalogs_own_names(name):
    frames = valid_day()
    frames["catalog"] = with_value(frames["catalog"], "category", 0, name)
    validate_tables(frames, DAY)


@pytest.mark.parametrize(
    "name", ["Jewellery", "gift cards", "-promo", "_promo", "книги", "a/b", "x" * 65]
)
def test_category_names_outside_the_pattern_are_refused(name):
    frame = with_value(valid_day()["catalog"], "category", 0, name)
    error = broken("catalog", frame)
    assert_names(error, "catalog", "category", "name_pattern", 1)
    assert "^[a-z0-9]" in str(error)


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("usage", "quantity", -1.0),
        ("usage", "charge", -0.01),
        ("catalog", "value", -5.0),
        ("catalog", "min_tenure_days", -1),
        ("catalog", "cooldown_days", -7),
        ("catalog", "capacity", -1),
        ("payments", "amount", -100.0),
        ("transfers", "gb", -2.0),
    ],
)
def test_non_negative(table, column, value):
    frame = with_value(valid_day()[table], column, 0, value)
    assert_names(broken(table, frame), table, column, "non_negative", 1)


def test_non_finite_numbers():
    frame = with_value(valid_day()["usage"], "quantity", 1, float("nan"))
    frame = with_value(frame, "quantity", 2, float("inf"))
    assert_names(broken("usage", frame), "usage", "quantity", "finite", 2)


def test_unique_keys_count_every_row_sharing_a_key():
    catalog = valid_day()["catalog"]
    frame = pl.concat([catalog, catalog.head(1)])
    assert_names(broken("catalog", frame), "catalog", "offer_id", "unique", 2)
    subscribers = with_value(valid_day()["subscribers"], "subscriber_id", 2, 1)
    assert_names(broken("subscribers", subscribers), "subscribers", "subscriber_id", "unique", 2)
    holdings = pl.concat([valid_day()["holdings"], valid_day()["holdings"].tail(1)])
    error = broken("holdings", holdings)
    assert_names(error, "holdings", "subscriber_id,product_id,start_date", "unique", 2)


def test_event_after_the_end_of_the_ingest_date():
    late = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time())
    frame = with_value(valid_day()["usage"], "ts", 0, late)
    error = broken("usage", frame)
    assert_names(error, "usage", "ts", "not_after_date", 1)
    assert "2026-03-11 00:00:00" in str(error)


def test_events_before_the_ingest_date_are_accepted():
    frame = with_value(valid_day()["app_events"], "ts", 0, dt.datetime(2026, 3, 1, 8))
    assert validate_table(frame, "app_events", DAY).height == 2


def test_event_older_than_the_age_bound_breaks_max_age():
    frames = valid_day()
    frames["usage"] = with_value(frames["usage"], "ts", 1, dt.datetime(1900, 1, 1))
    frames["payments"] = with_value(frames["payments"], "ts", 0, dt.datetime(2025, 3, 5))
    results, violations = check_tables(frames, DAY, event_max_age_days=400)
    [old] = violations  # the payment 400 days back is on the bound, so accepted
    assert (old.table, old.column, old.rule, old.count) == ("usage", "ts", "max_age", 1)
    assert "must be on or after 2025-02-03 (400 days before 2026-03-10" in old.message()
    assert check_tables(frames, DAY, event_max_age_days=50_000)[1] == []


def test_activation_after_the_delivery_date():
    frame = with_value(valid_day()["subscribers"], "activation_date", 0, DAY + dt.timedelta(1))
    assert_names(
        broken("subscribers", frame), "subscribers", "activation_date", "not_after_date", 1
    )


@pytest.mark.parametrize("table", ["catalog", "holdings"])
def test_end_date_before_start_date(table):
    frame = with_value(valid_day()[table], "end_date", 1, dt.date(2000, 1, 1))
    assert_names(broken(table, frame), table, "end_date", "date_order", 1)


@pytest.mark.parametrize("value", ["moscow||spb", "|moscow", "moscow|", "moscow| spb"])
def test_malformed_region_lists(value):
    frame = with_value(valid_day()["catalog"], "regions", 0, value)
    assert_names(broken("catalog", frame), "catalog", "regions", "list_format", 1)


def test_device_os_list_items_must_be_known():
    frame = with_value(valid_day()["catalog"], "device_os", 0, "android|windows")
    error = broken("catalog", frame)
    assert_names(error, "catalog", "device_os", "allowed", 1)
    assert "'android|windows'" in str(error)


def test_requires_and_excludes_the_same_product():
    frame = with_value(valid_day()["catalog"], "requires_product", 0, "p_data5")
    assert_names(broken("catalog", frame), "catalog", "excludes_product", "distinct", 1)


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5])
def test_logged_propensity_is_a_probability(value):
    frame = with_value(valid_day()["offer_events"], "propensity", 0, value)
    assert_names(broken("offer_events", frame), "offer_events", "propensity", "probability", 1)


def test_logged_propensity_may_be_left_out():
    frames = valid_day()
    frames["offer_events"] = frames["offer_events"].drop("propensity")
    cleaned = validate_tables(frames, DAY)
    assert cleaned["offer_events"]["propensity"].null_count() == 3


def test_offer_events_must_name_offers_of_the_same_days_catalog():
    frame = with_value(valid_day()["offer_events"], "offer_id", 2, "ghost_offer")
    error = broken("offer_events", frame)
    assert_names(error, "offer_events", "offer_id", "known_offer", 1)
    assert "'ghost_offer'" in str(error)


def test_unknown_subscriber_is_a_warning_and_rows_are_kept(caplog):
    frames = valid_day()
    frames["usage"] = with_value(frames["usage"], "subscriber_id", 0, 999)
    with caplog.at_level("WARNING"):
        cleaned = validate_tables(frames, DAY)
    assert cleaned["usage"].get_column("subscriber_id").to_list() == [999, 1, 2]
    assert "usage.subscriber_id: rule 'known_subscriber' broken by 1 row(s)" in caplog.text
    result = check_table(frames["usage"], "usage", DAY, {"subscribers": frames["subscribers"]})
    assert [warning.rule for warning in result.warnings] == ["known_subscriber"]
    assert result.violations == []


def test_extra_columns_are_dropped_with_a_warning(caplog):
    frame = valid_day()["payments"].with_columns(pl.lit("x").alias("comment"))
    with caplog.at_level("WARNING"):
        result = check_table(frame, "payments", DAY)
        cleaned = validate_table(frame, "payments", DAY)
    assert result.dropped_columns == ["comment"]
    assert cleaned.columns == TABLES["payments"].column_names
    assert "comment" in caplog.text


def test_columns_are_put_in_contract_order():
    frame = valid_day()["app_events"].select(["screen", "ts", "subscriber_id"])
    assert validate_table(frame, "app_events", DAY).columns == ["subscriber_id", "ts", "screen"]


def test_all_violations_are_collected_across_tables():
    frames = valid_day()
    frames["usage"] = with_value(frames["usage"], "kind", 0, "fax")
    frames["usage"] = with_value(frames["usage"], "charge", 1, -1.0)
    frames["catalog"] = with_value(frames["catalog"], "value", 2, -1.0)
    del frames["offer_events"]
    with pytest.raises(ContractError) as caught:
        validate_tables(frames, DAY)
    found = {(v.table, v.column, v.rule) for v in caught.value.violations}
    assert found == {
        ("usage", "kind", "allowed"),
        ("usage", "charge", "non_negative"),
        ("catalog", "value", "non_negative"),
        ("offer_events", "", "required_table"),
    }
    assert len(str(caught.value).splitlines()) == 4
    assert isinstance(caught.value, InputError)


def test_optional_tables_may_be_absent():
    frames = {name: frame for name, frame in valid_day().items() if TABLES[name].required}
    assert set(validate_tables(frames, DAY)) == set(frames)


def test_unknown_table_name():
    with pytest.raises(ContractError, match="known_table"):
        validate_table(valid_day()["usage"], "calls", DAY)


@pytest.mark.parametrize(
    ("table", "column", "row", "value"),
    [
        ("catalog", "offer_id", 1, "roam\u202eue"),  # bidi override: shows "roamue" reversed
        ("catalog", "offer_id", 1, "roam\x00eu"),
        ("catalog", "title", 0, "5 GB\nnow"),
        ("subscribers", "tariff_id", 0, "t\x1b[31m1"),
        ("holdings", "product_id", 2, "p_roam\u2066"),
    ],
)
def test_control_and_bidi_characters_in_text_are_refused(table, column, row, value):
    frame = with_value(valid_day()[table], column, row, value)
    assert_names(broken(table, frame), table, column, "no_control_characters", 1)


def test_long_cells_are_quoted_short_with_their_length():
    cell = "x" * 2_000_000
    frame = with_value(valid_day()["usage"], "kind", 0, cell)
    text = str(broken("usage", frame))
    assert len(text) < 500
    assert repr("x" * 80) + "... (2,000,000 characters)" in text


def test_examples_are_capped_at_five_rows_with_row_numbers():
    usage = pl.concat([valid_day()["usage"]] * 4).with_columns(pl.lit("fax").alias("kind"))
    violation = only(broken("usage", usage))
    assert violation.count == 12
    assert [row["_row"] for row in violation.examples] == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------- type coercion


def write_csv_text(path: Path, header: str, *lines: str) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


USAGE_HEADER = "subscriber_id,ts,kind,quantity,charge"


def test_csv_is_read_strictly_and_bad_cells_are_shown_raw(tmp_path):
    path = write_csv_text(
        tmp_path / "usage.csv",
        USAGE_HEADER,
        "1,2026-03-10 09:30:00,data,12.5,0",
        "abc,2026-03-10 09:31:00,data,1,0",
        "2,2026-03-10T25:00:00,data,1,0",
        "3,2026-03-10 09:32:00,data,lots,0",
    )
    with pytest.raises(ContractError) as caught:
        read_table_file(path, "usage")
    found = {(v.column, v.rule, v.count) for v in caught.value.violations}
    assert ("subscriber_id", "type", 1) in found
    assert ("ts", "type", 1) in found
    assert ("quantity", "type", 1) in found
    text = str(caught.value)
    assert "usage.subscriber_id: rule 'type' broken by 1 row(s)" in text
    assert "'abc'" in text and "'lots'" in text and "'2026-03-10T25:00:00'" in text


def test_ragged_csv_is_unreadable(tmp_path):
    path = write_csv_text(tmp_path / "usage.csv", USAGE_HEADER, "4,2026-03-10 09:33:00,data,1,1,5")
    with pytest.raises(ContractError) as caught:
        read_table_file(path, "usage")
    violation = only(caught.value)
    assert (violation.table, violation.rule) == ("usage", "readable")
    assert "usage.csv" in violation.detail


def test_csv_type_errors_are_not_reported_again_as_nulls(tmp_path):
    path = write_csv_text(tmp_path / "usage.csv", USAGE_HEADER, "x,2026-03-10 09:30:00,data,1,0")
    frame = pl.read_csv(path, infer_schema=False)
    frames = valid_day()
    frames["usage"] = frame
    with pytest.raises(ContractError) as caught:
        validate_tables(frames, DAY)
    assert [(v.column, v.rule) for v in caught.value.violations] == [("subscriber_id", "type")]


def test_csv_accepts_iso_timestamps_and_integral_floats(tmp_path):
    path = write_csv_text(
        tmp_path / "usage.csv",
        USAGE_HEADER,
        "1,2026-03-10T09:30:00,data,1,0",
        "2.0,2026-03-10 09:30:00.250,sms_out,1,0",
        "3,2026-03-10T12:00:00+03:00,voice_in,1,0",
        "4,2026-03-10T09:00:00Z,voice_out,1,0",
        "5,2026-03-10,data,1,0",
    )
    frame = read_table_file(path, "usage")
    assert frame.schema == TABLES["usage"].polars_schema
    assert frame.get_column("subscriber_id").to_list() == [1, 2, 3, 4, 5]
    assert frame.get_column("ts").to_list() == [
        dt.datetime(2026, 3, 10, 9, 30),
        dt.datetime(2026, 3, 10, 9, 30, 0, 250000),
        dt.datetime(2026, 3, 10, 9, 0),
        dt.datetime(2026, 3, 10, 9, 0),
        dt.datetime(2026, 3, 10, 0, 0),
    ]


def test_non_integral_float_in_an_integer_column(tmp_path):
    path = write_csv_text(tmp_path / "usage.csv", USAGE_HEADER, "1.5,2026-03-10 09:30:00,data,1,0")
    with pytest.raises(ContractError, match=r"usage.subscriber_id: rule 'type'.*'1.5'"):
        read_table_file(path, "usage")


def test_bad_date_cell(tmp_path):
    header = ",".join(TABLES["holdings"].column_names)
    path = write_csv_text(tmp_path / "holdings.csv", header, "1,p1,2026-02-30,", "1,p2,2026-01-01,")
    with pytest.raises(ContractError) as caught:
        read_table_file(path, "holdings")
    violation = only(caught.value)
    assert (violation.column, violation.rule, violation.count) == ("start_date", "type", 1)
    assert violation.examples[0]["start_date"] == "2026-02-30"


def test_parquet_types_are_coerced(tmp_path):
    frame = valid_day()["usage"].with_columns(
        pl.col("subscriber_id").cast(pl.Int32),
        pl.col("quantity").cast(pl.Float32),
        pl.col("ts").dt.replace_time_zone("UTC").dt.convert_time_zone("Europe/Moscow"),
        pl.col("kind").cast(pl.Categorical),
    )
    frame.write_parquet(tmp_path / "usage.parquet")
    read = read_table_file(tmp_path / "usage.parquet", "usage")
    assert read.equals(valid_day()["usage"])


def test_parquet_with_a_wrong_type_is_refused(tmp_path):
    frame = valid_day()["usage"].with_columns(pl.lit(True).alias("charge"))
    frame.write_parquet(tmp_path / "usage.parquet")
    with pytest.raises(ContractError) as caught:
        read_table_file(tmp_path / "usage.parquet", "usage")
    violation = only(caught.value)
    assert (violation.column, violation.rule, violation.count) == ("charge", "type", 3)
    assert "Boolean" in violation.detail


def test_duplicated_csv_header_is_refused(tmp_path):
    path = write_csv_text(
        tmp_path / "app_events.csv", "subscriber_id,ts,screen,screen", "1,2026-03-10,home,market"
    )
    frames = valid_day()
    frames["app_events"] = pl.read_csv(path, infer_schema=False)
    with pytest.raises(ContractError, match="app_events.screen: rule 'unique_column'"):
        validate_tables(frames, DAY)


OPTIONAL_COLUMNS = {
    "catalog": [
        "end_date",
        "product_id",
        "regions",
        "device_os",
        "requires_product",
        "excludes_product",
        "capacity",
        "fatigue_ignores",
        "fatigue_window_days",
        "fatigue_suppress_days",
    ],
    "offer_events": ["propensity"],
    "consumption": ["quantity"],
    "holdings": ["end_date"],
}


def test_optional_columns_may_be_absent_and_read_as_empty(caplog):
    assert OPTIONAL_COLUMNS == {
        name: [column.name for column in table.columns if column.optional]
        for name, table in TABLES.items()
        if any(column.optional for column in table.columns)
    }
    frames = valid_day()
    for table, columns in OPTIONAL_COLUMNS.items():
        frames[table] = frames[table].drop(columns)
    with caplog.at_level("INFO"):
        results, violations = check_tables(frames, DAY)
    assert violations == []
    for table, columns in OPTIONAL_COLUMNS.items():
        result = results[table]
        assert result.absent_columns == columns
        assert result.frame.schema == TABLES[table].polars_schema
        assert result.frame.select(columns).null_count().row(0) == (result.frame.height,) * len(
            columns
        )
    assert "catalog: optional column(s)" in caplog.text


def test_a_state_table_in_force_from_an_earlier_delivery_is_not_missing():
    frames = valid_day()
    earlier = {name: frames.pop(name) for name in ("subscribers", "catalog", "holdings")}
    # Without an earlier delivery, a required state table is missing.
    _, violations = check_tables(frames, DAY)
    assert {(v.table, v.rule) for v in violations} == {
        ("subscribers", "required_table"),
        ("catalog", "required_table"),
    }
    assert "no earlier delivery" in violations[0].message()
    # With one, the day passes and its events are checked against the tables in force.
    results, violations = check_tables(frames, DAY, in_force=earlier)
    assert violations == []
    assert set(results) == set(frames)
    ghost = with_value(frames["offer_events"], "offer_id", 2, "ghost_offer")
    _, violations = check_tables({**frames, "offer_events": ghost}, DAY, in_force=earlier)
    assert [(v.table, v.column, v.rule) for v in violations] == [
        ("offer_events", "offer_id", "known_offer")
    ]
    stranger = with_value(frames["usage"], "subscriber_id", 0, 999)
    results, _ = check_tables({**frames, "usage": stranger}, DAY, in_force=earlier)
    assert [warning.rule for warning in results["usage"].warnings] == ["known_subscriber"]


@pytest.mark.parametrize(
    ("kind", "quantities", "rows"),
    [
        ("voice_out", [900.0, 600.0], 2),  # 25 minutes of calls written in seconds
        ("voice_in", [700.0, 700.0], 0),  # 23 h 20 min: long, but possible
        ("sms_out", [12_000.0, 1.0], 2),
        ("data", [1.2e6, 0.0], 2),  # 1.2 TB in a day: bytes read as megabytes
    ],
)
def test_implausible_daily_usage_is_a_warning_per_kind(kind, quantities, rows):
    usage = (
        valid_day()["usage"]
        .head(2)
        .with_columns(pl.lit(kind).alias("kind"), pl.Series("quantity", quantities))
    )
    result = check_table(usage, "usage", DAY)
    assert result.violations == []
    assert result.frame.height == 2
    found = [(w.column, w.rule, w.count) for w in result.warnings]
    assert found == ([("quantity", "plausible_daily_total", rows)] if rows else [])
    if rows:
        assert result.warnings[0].detail.startswith(f"{kind}: a subscriber's total of one day")
