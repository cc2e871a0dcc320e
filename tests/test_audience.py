"""Audiences: membership, capacity, uplift ranking, safe and byte-stable CSV files."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

from mia.settings import Settings
from offers import audience
from offers.audience import (
    AUDIENCE_COLUMNS,
    SUMMARY_COLUMNS,
    audience_summary,
    build_audiences,
    csv_safe,
    export_audience,
    read_summary,
    safe_file_name,
    write_audiences,
)
from offers.eligibility import OffersInputError

SETTINGS = Settings(min_probability=0.05, uplift_min_control=500)
GENERATED_AT = "2026-03-11T03:00:00"
UNSAFE_IDS = ("=cmd|' /C calc'!A0", "-2+3", "@sum(a1)", "../../etc/passwd", "\tTab", "Summary")


def catalog() -> pl.DataFrame:
    ids = ["gift_box", "plain", *UNSAFE_IDS]
    return pl.DataFrame(
        {
            "offer_id": ids,
            "category": ["gift", "video", "music", "music", "books", "books", "cashback", "gift"],
            "value": [10.0, 5.0, 1.0, 1.0, 2.0, 2.0, 3.0, 1.0],
            "capacity": [2, None, None, None, None, None, None, None],
        },
        schema_overrides={"capacity": pl.Int64},
    )


def groups() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "subscriber_id": [1, 2, 3, 4, 5, 6],
            "group": ["treatment"] * 4 + ["control"] * 2,
            "covered": [True, True, True, False, True, True],
        }
    )


def scores() -> pl.DataFrame:
    gift = {1: 0.5, 2: 0.3, 3: 0.4, 4: 0.9, 5: 0.45, 6: 0.1}
    rows = [(sid, "gift_box", p) for sid, p in gift.items()]
    rows += [(sid, "plain", 0.02 * sid) for sid in range(1, 7)]  # 1 and 2 below 0.05
    rows += [(sid, offer_id, 0.2) for offer_id in UNSAFE_IDS for sid in (1, 5)]
    frame = pl.DataFrame(
        rows,
        schema={"subscriber_id": pl.Int64, "offer_id": pl.String, "p_accept": pl.Float64},
        orient="row",
    )
    return frame.join(catalog().select("offer_id", "category"), on="offer_id").with_columns(
        pl.lit("=HYPERLINK(x)").alias("reasons"), pl.lit("v1").alias("model_version")
    )


def eligible() -> pl.DataFrame:
    # subscriber 2 is not eligible for "plain"
    return (
        scores()
        .select("subscriber_id", "offer_id")
        .filter(~((pl.col("subscriber_id") == 2) & (pl.col("offer_id") == "plain")))
    )


def build(
    settings: Settings = SETTINGS,
    uplift: pl.DataFrame | None = None,
    rankings: pl.DataFrame | None = None,
):
    return build_audiences(
        scores(),
        eligible(),
        catalog(),
        groups(),
        settings,
        GENERATED_AT,
        uplift=uplift,
        rankings=rankings,
    )


def rankings(gift_ranking: str) -> pl.DataFrame:
    ids = catalog()["offer_id"].to_list()
    return pl.DataFrame(
        {
            "offer_id": ids,
            "ranking": [gift_ranking if o == "gift_box" else "expected_value" for o in ids],
            "ranking_reason": ["" if o == "gift_box" else "too few control accepts" for o in ids],
        }
    )


def test_audience_rows_capacity_and_control():
    audiences = build()
    assert list(audiences) == sorted(["gift_box", "plain", *UNSAFE_IDS])
    gift = audiences["gift_box"]
    assert tuple(gift.columns) == AUDIENCE_COLUMNS
    # uncovered 4 is out; capacity 2 counts treatment rows; control 5 ranks between them
    assert gift.select("subscriber_id", "rank", "group").rows() == [
        (1, 1, "treatment"),
        (5, 2, "control"),
        (3, 3, "treatment"),
    ]
    assert gift["expected_value"].to_list() == [5.0, 4.5, 4.0]
    assert gift["generated_at"].unique().to_list() == [GENERATED_AT]
    # min_probability 0.05 cuts 1 and 2 (p 0.02, 0.04); 2 is not eligible anyway; 4 uncovered
    plain = audiences["plain"]
    assert plain.select("subscriber_id", "group").rows() == [
        (6, "control"),
        (5, "control"),
        (3, "treatment"),
    ]
    assert plain["p_accept"].to_list() == [0.12, 0.1, 0.06]


def test_ties_order_by_subscriber_whatever_the_input_order_and_checked_pairs_change_nothing():
    expected = build()
    for seed in range(3):
        shuffled = build_audiences(
            scores().sample(fraction=1.0, shuffle=True, seed=seed),
            eligible(),
            catalog(),
            groups(),
            SETTINGS,
            GENERATED_AT,
            pairs_checked=bool(seed % 2),
        )
        assert list(shuffled) == list(expected)
        for offer_id, frame in expected.items():
            assert shuffled[offer_id].equals(frame), offer_id
    # equal expected values (p 0.2 for subscribers 1 and 5): the lower id first
    assert expected[UNSAFE_IDS[0]]["subscriber_id"].to_list() == [1, 5]


def test_impact_arm_subscribers_are_never_in_an_audience():
    arms = groups().with_columns(
        pl.when(pl.col("subscriber_id") == 1)
        .then(pl.lit("random"))
        .when(pl.col("subscriber_id") == 3)
        .then(pl.lit("propensity_only"))
        .otherwise(pl.col("group"))
        .alias("group")
    )
    audiences = build_audiences(scores(), eligible(), catalog(), arms, SETTINGS, GENERATED_AT)
    rows = pl.concat(audiences.values())
    assert set(rows["group"]) == {"treatment", "control"}
    assert not rows.filter(pl.col("subscriber_id").is_in([1, 3])).height
    summary = audience_summary(audiences, catalog())
    gift = summary.filter(pl.col("offer_id") == "gift_box").row(0, named=True)
    shown = audiences["gift_box"]["group"].value_counts()
    counts = dict(zip(shown["group"], shown["count"], strict=True))
    assert (gift["audience_size"], gift["control_size"]) == (counts["treatment"], counts["control"])


def test_uplift_ranking_orders_by_incremental_value_and_says_so():
    # predicted uplift reverses the p_accept order of 1 and 3 and cuts 5 (no positive uplift)
    uplift = pl.DataFrame(
        {"subscriber_id": [1, 3, 5, 6], "offer_id": "gift_box", "uplift": [0.1, 0.3, 0.0, 0.2]}
    )
    audiences = build(uplift=uplift, rankings=rankings("uplift"))
    gift = audiences["gift_box"]
    assert gift.select("subscriber_id", "group", "uplift", "ranking").rows() == [
        (3, "treatment", 0.3, "uplift"),
        (6, "control", 0.2, "uplift"),
        (1, "treatment", 0.1, "uplift"),
    ]
    assert audiences["plain"]["ranking"].unique().to_list() == ["expected_value"]
    assert audiences["plain"]["uplift"].null_count() == audiences["plain"].height
    summary = audience_summary(audiences, catalog(), rankings("uplift")).filter(
        pl.col("offer_id").is_in(["gift_box", "plain"])
    )
    assert summary.select("offer_id", "ranking", "ranking_reason").rows() == [
        ("gift_box", "uplift", ""),
        ("plain", "expected_value", "too few control accepts"),
    ]
    # an offer that falls back to expected value ignores the predicted uplift
    fallback = build(uplift=uplift, rankings=rankings("expected_value"))["gift_box"]
    assert fallback.drop("ranking").equals(build()["gift_box"].drop("ranking"))


def test_summary_counts():
    audiences = build()
    summary = audience_summary(audiences, catalog())
    assert tuple(summary.columns) == SUMMARY_COLUMNS
    gift = summary.filter(pl.col("offer_id") == "gift_box").to_dicts()[0]
    assert gift == {
        "offer_id": "gift_box",
        "category": "gift",
        "audience_size": 2,
        "expected_accepts": pytest.approx(0.9),
        "expected_value": pytest.approx(9.0),
        "control_size": 1,
        "ranking": "expected_value",
        "ranking_reason": "",
        "qini": None,
    }
    assert summary["audience_size"].sum() + summary["control_size"].sum() == sum(
        frame.height for frame in audiences.values()
    )


def _write(directory: Path) -> Path:
    audiences = build()
    return write_audiences(audiences, audience_summary(audiences, catalog()), directory)


def _contents(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_files_are_byte_identical_on_rerun(tmp_path):
    first = _contents(_write(tmp_path / "a"))
    second = _contents(_write(tmp_path / "b"))
    assert first == second
    assert _contents(_write(tmp_path / "a")) == first
    assert len(first) == len(UNSAFE_IDS) + 3
    assert first["gift_box.csv"].decode() == (
        "subscriber_id,offer_id,rank,p_accept,expected_value,group,generated_at,uplift,ranking\n"
        "1,gift_box,1,0.500000,5.000000,treatment,2026-03-11T03:00:00,,expected_value\n"
        "5,gift_box,2,0.450000,4.500000,control,2026-03-11T03:00:00,,expected_value\n"
        "3,gift_box,3,0.400000,4.000000,treatment,2026-03-11T03:00:00,,expected_value\n"
    )


def test_csv_cells_are_spreadsheet_safe_and_totals_match(tmp_path):
    directory = _write(tmp_path / "audiences")
    summary = pd.read_csv(directory / "summary.csv", dtype={"offer_id": str, "file": str})
    assert list(summary.columns) == [*SUMMARY_COLUMNS, "file"]
    for path in directory.glob("*.csv"):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        for column in frame.columns:
            for cell in frame[column]:
                if cell and cell[0] in "=+-@\t\r":
                    pytest.fail(f"{path.name}:{column} holds an unescaped cell {cell!r}")
    for row in summary.itertuples():
        frame = pd.read_csv(directory / row.file, dtype={"offer_id": str})
        treatment = frame[frame["group"] == "treatment"]
        assert len(treatment) == row.audience_size
        assert (frame["group"] == "control").sum() == row.control_size
        assert treatment["p_accept"].sum() == pytest.approx(row.expected_accepts, abs=1e-6)
        assert treatment["expected_value"].sum() == pytest.approx(row.expected_value, abs=1e-6)
        assert set(frame["offer_id"]) <= {row.offer_id}
    formula = summary[summary["offer_id"].str.contains("cmd")]
    assert formula["offer_id"].tolist() == ["'=cmd|' /C calc'!A0"]


def test_csv_safe_prefixes_only_dangerous_cells():
    frame = pl.DataFrame(
        {"s": ["=1+1", "+1", "-1", "@x", "\tx", "\rx", "a=b", "", None], "n": range(9)}
    )
    assert csv_safe(frame)["s"].to_list() == [
        "'=1+1",
        "'+1",
        "'-1",
        "'@x",
        "'\tx",
        "'\rx",
        "a=b",
        "",
        None,
    ]
    assert csv_safe(frame)["n"].equals(frame["n"])


@pytest.mark.parametrize(
    "cell",
    [" =1+1", "\u3000+1", "\n-1", "\u202e=1+1", "\ufeff@x", "＝1+1", "＋1", "－1", "＠x", "﹦1"],
)
def test_csv_safe_prefixes_formulas_after_whitespace_and_in_full_width(cell):
    assert csv_safe(pl.DataFrame({"s": [cell]}))["s"].to_list() == ["'" + cell]


def test_safe_file_names_are_safe_and_distinct():
    ids = [
        *UNSAFE_IDS,
        "gift_box",
        "summary",
        "summary.csv",
        ".hidden",
        "..",
        "a/b",
        "a\\b",
        "a_b",
        "A_B",
        "con",
        "CON.txt",
        "",
        "ünïcode",
        "x--0123456789ab",
        "trailing.",
        "-leading",
        "x" * 300,
        "x" * 301,
    ]
    names = [safe_file_name(offer_id) for offer_id in ids]
    assert len({name.casefold() for name in names}) == len(ids)
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", name), name
        assert not name.startswith((".", "-"))
        assert name.split(".")[0].lower() not in {"summary", "con"}
        assert len(name) <= 100
    assert safe_file_name("gift_box") == "gift_box"
    assert safe_file_name("data_5gb.v2") == "data_5gb.v2"
    assert safe_file_name("../../etc/passwd") == safe_file_name("../../etc/passwd")
    assert "/" not in safe_file_name("../../etc/passwd")


def test_export_audience(tmp_path):
    directory = _write(tmp_path / "audiences")
    offer_id = UNSAFE_IDS[0]
    out = export_audience(directory, offer_id, tmp_path / "out" / "export.csv")
    assert out.read_bytes() == (directory / f"{safe_file_name(offer_id)}.csv").read_bytes()
    with pytest.raises(OffersInputError, match="no audience"):
        export_audience(directory, "ghost", tmp_path / "ghost.csv")
    assert read_summary(directory).height == len(UNSAFE_IDS) + 2


def test_export_into_a_folder_writes_one_file_and_keeps_the_rest(tmp_path):
    directory = _write(tmp_path / "audiences")
    folder = tmp_path / "marketing"
    folder.mkdir()
    (folder / "plan.xlsx").write_bytes(b"the user's own file")
    source = directory / "gift_box.csv"

    out = export_audience(directory, "gift_box", folder)
    assert out == folder / "gift_box.csv" and out.read_bytes() == source.read_bytes()
    assert (folder / "plan.xlsx").read_bytes() == b"the user's own file"
    out.write_text("edited by hand")
    with pytest.raises(OffersInputError, match="already exists.*--force"):
        export_audience(directory, "gift_box", folder)
    with pytest.raises(OffersInputError, match="already exists"):
        export_audience(directory, "gift_box", out)
    assert out.read_text() == "edited by hand"
    assert export_audience(directory, "gift_box", out, overwrite=True) == out
    assert out.read_bytes() == source.read_bytes()
    (folder / "gift_box.csv").unlink()
    (folder / "gift_box.csv").mkdir()  # a folder where the file would go is never replaced
    with pytest.raises(OffersInputError, match="is a folder"):
        export_audience(directory, "gift_box", folder, overwrite=True)
    assert sorted(path.name for path in folder.iterdir()) == ["gift_box.csv", "plan.xlsx"]


def test_a_file_never_replaces_a_folder(tmp_path):
    from mia.lake import write_json

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(IsADirectoryError, match="refusing"):
        write_json({"a": 1}, folder)
    assert (folder / "keep.txt").read_text() == "mine"
    assert [path.name for path in tmp_path.iterdir()] == ["notes"]


def test_audiences_never_replace_a_folder_holding_other_files(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OffersInputError, match=r"\['notes.txt'\].*not audience files"):
        _write(folder)
    assert [path.name for path in folder.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _contents(_write(empty)) == _contents(_write(empty))  # earlier audiences are replaced


def test_failed_write_leaves_previous_audiences(tmp_path, monkeypatch):
    directory = _write(tmp_path / "audiences")
    before = _contents(directory)
    calls = []

    def failing(frame, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        frame.write_csv(path)

    monkeypatch.setattr(audience, "_write_csv", failing)
    with pytest.raises(OSError, match="disk full"):
        _write(directory)
    assert _contents(directory) == before
    assert [path.name for path in tmp_path.iterdir()] == ["audiences"]


def test_bad_inputs():
    audiences = build()
    summary = audience_summary(audiences, catalog())
    with pytest.raises(OffersInputError, match="same offers"):
        write_audiences(audiences, summary.head(2), Path("/nonexistent/never"))
    with pytest.raises(OffersInputError, match="generated_at"):
        build_audiences(scores(), eligible(), catalog(), groups(), SETTINGS, "")
    with pytest.raises(OffersInputError, match="uplift"):
        build(uplift=pl.DataFrame({"offer_id": ["gift_box"]}))
    with pytest.raises(OffersInputError, match="rankings"):
        build(rankings=pl.DataFrame({"offer_id": ["gift_box"]}))


def test_zero_capacity_gives_an_empty_audience(tmp_path):
    zero = catalog().with_columns(
        pl.when(pl.col("offer_id") == "gift_box").then(0).otherwise("capacity").alias("capacity")
    )
    audiences = build_audiences(scores(), eligible(), zero, groups(), SETTINGS, GENERATED_AT)
    assert audiences["gift_box"].is_empty()
    assert tuple(audiences["gift_box"].columns) == AUDIENCE_COLUMNS
    summary = audience_summary(audiences, zero)
    directory = write_audiences(audiences, summary, tmp_path / "a")
    assert (directory / "gift_box.csv").read_text() == ",".join(AUDIENCE_COLUMNS) + "\n"


def test_a_summary_written_before_rankings_reads_as_expected_value(tmp_path):
    directory = _write(tmp_path / "audiences")
    path = directory / "summary.csv"
    older = pl.read_csv(path, infer_schema=False).drop("ranking", "ranking_reason", "qini")
    older.write_csv(path)
    summary = read_summary(directory)
    assert summary.columns == [*SUMMARY_COLUMNS, "file"]
    assert summary["ranking"].unique().to_list() == ["expected_value"]
    assert summary["ranking_reason"].unique().to_list() == [""]
    assert summary["qini"].null_count() == summary.height
