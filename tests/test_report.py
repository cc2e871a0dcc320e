"""The run report shows text from data as text, and says plainly when nothing was published."""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import polars as pl

from flows.report import ReportInputs, write_report
from flows.steps import no_offers_reason
from mia.ingest import ingest_day
from mia.lake import Lake

AS_OF = dt.date(2026, 3, 10)
# Mathtext in a plot label, a Markdown table breaker, HTML and emphasis.
ODD_IDS = ["promo_$5_$10", "a|b\nc", "<b>x</b>", "*bold*"]


def offers(ids: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "subscriber_id": list(range(len(ids))),
            "offer_id": ids,
            "category": ids,
            "rank": [1] * len(ids),
            "p_accept": [0.25] * len(ids),
        },
        schema_overrides={
            "subscriber_id": pl.Int64,
            "offer_id": pl.String,
            "category": pl.String,
            "rank": pl.Int32,
            "p_accept": pl.Float64,
        },
    )


def audience_summary(ids: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "offer_id": ids,
            "audience_size": [3] * len(ids),
            "expected_accepts": [0.5] * len(ids),
        },
        schema_overrides={
            "offer_id": pl.String,
            "audience_size": pl.Int64,
            "expected_accepts": pl.Float64,
        },
    )


def report_text(directory: Path, ids: list[str], **extra) -> str:
    inputs = ReportInputs(AS_OF, "run-1", offers(ids), audience_summary(ids), **extra)
    return write_report(inputs, directory).read_text()


def table_rows(text: str, heading: str) -> list[str]:
    section = text.split(f"## {heading}\n\n", 1)[1]
    return [line for line in section.split("\n\n", 1)[0].splitlines() if line.startswith("|")]


def unescaped_pipes(line: str) -> int:
    return line.replace("\\\\", "").replace("\\|", "").count("|")


def test_ids_with_dollars_pipes_and_markup_are_shown_as_text(tmp_path):
    text = report_text(tmp_path, ODD_IDS)
    for name in ("offers_per_category.png", "audience_sizes.png"):
        assert (tmp_path / name).stat().st_size > 0
    rows = table_rows(text, "Audiences")
    assert len(rows) == 2 + len(ODD_IDS)  # header, separator, one line per offer
    assert {unescaped_pipes(line) for line in rows} == {4}
    # Rendered: promo_$5_$10, a|b\x0ac (the newline shown as an escape), <b>x</b>.
    assert r"promo\_\$5\_\$10" in text and r"a\|b\\x0ac" in text and r"\<b\>x\</b\>" in text


def test_a_night_without_offers_says_nothing_was_published_and_why(tmp_path):
    reason = "none of the 3 offers of the catalog is valid on 2026-03-11"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = report_text(tmp_path, [], no_offers_reason=reason, model_versions={"mia-offers": ""})
    assert "**Nothing was published for the night after 2026-03-10: 0 offers, because" in text
    assert reason in text
    assert f"- ⚠ nothing was published: 0 offers ({reason})" in text
    assert "Warnings\n\n- none" not in text
    assert "- models: none scored tonight" in text and " v\n" not in text


def ingested_day(root: Path, catalog_end: dt.date | None) -> Lake:
    """A data root with one valid day ingested, its catalog's offers ending on `catalog_end`."""
    from tests.test_contracts import valid_day

    lake = Lake(root)
    delivery = lake.incoming(AS_OF)
    delivery.mkdir(parents=True)
    frames = valid_day(AS_OF)
    frames["catalog"] = frames["catalog"].with_columns(
        pl.lit(dt.date(2026, 1, 1)).alias("start_date"),
        pl.lit(catalog_end, dtype=pl.Date).alias("end_date"),
    )
    for table, frame in frames.items():
        frame.write_parquet(delivery / f"{table}.parquet")
    ingest_day(lake, AS_OF)
    return lake


def test_the_reason_for_no_offers_names_expired_offers(tmp_path):
    lake = ingested_day(tmp_path / "expired", dt.date(2026, 3, 1))
    assert no_offers_reason(lake, AS_OF) == (
        "none of the 3 offers of the catalog is valid on 2026-03-11: every one has expired or "
        "not started (the latest end_date is 2026-03-01)"
    )
    lake = ingested_day(tmp_path / "open", None)
    assert no_offers_reason(lake, AS_OF) == (
        "no covered subscriber was eligible for any of the 3 offers valid on 2026-03-11"
    )


def test_input_warnings_are_listed(tmp_path):
    ids = ["o1", "o2"]
    line = "usage.quantity 'plausible_daily_total' on 2026-03-10, 4 row(s): voice_out: ..."
    text = report_text(tmp_path, ids, input_warnings=[line])
    assert f"- ⚠ input: {line}" in text


def test_categories_scored_by_a_prior_are_named(tmp_path):
    prior = {"late_launch": "never seen in training", "k9": "too few training accepts"}
    text = report_text(tmp_path, ["films", "late_launch"], prior_scored_categories=prior)
    assert (
        r"- categories scored by a prior, not a model: k9 (too few training accepts); "
        "late_launch (never seen in training)"
    ) in text


def test_impact_section_shows_arms_with_intervals_and_odd_keys_as_text(tmp_path):
    import datetime as dt

    from mia.settings import Settings
    from offers.lift import measure_impact

    ids = list(range(1, 61))
    group = ["control"] * 20 + ["treatment"] * 20 + ["random"] * 20
    accepted = [5, 21, 22, 23, 24, 25, 26, 41, 42]
    impact = measure_impact(
        pl.DataFrame(
            {
                "subscriber_id": accepted,
                "offer_id": ODD_IDS[0],
                "ts": dt.datetime(2026, 3, 2),
                "event": "accept",
            }
        ),
        pl.DataFrame({"offer_id": [ODD_IDS[0]], "category": ["a|b"], "value": [2.0]}),
        pl.DataFrame({"subscriber_id": ids, "activation_date": dt.date(2025, 1, 1)}),
        pl.DataFrame({"subscriber_id": ids, "group": group, "covered": True}),
        dt.date(2026, 3, 1),
        dt.date(2026, 3, 7),
        Settings(lift_min_accepts=3),
    )
    text = report_text(
        tmp_path,
        ODD_IDS,
        impact=impact,
        impact_window=(dt.date(2026, 3, 1), dt.date(2026, 3, 7)),
    )
    assert "## Impact (lift with 95% intervals)" in text

    def rows_under(heading: str) -> list[str]:
        section = text.split(f"### {heading}\n\n", 1)[1].split("\n\n", 1)[0]
        return [line for line in section.splitlines() if line.startswith("|")]

    comparisons = [line.split("|")[1].strip() for line in rows_under("Overall")[2:]]
    assert comparisons == [
        "random vs control", "random vs control", "random vs treatment", "random vs treatment",
        "treatment vs control", "treatment vs control",
    ]  # fmt: skip
    category_rows = rows_under("Per category")
    assert len(category_rows) == 2 + 6 and r"| a\|b |" in category_rows[2]
    assert {unescaped_pipes(line) for line in category_rows} == {19}


def test_uplift_section_shows_each_audience_ranking_and_qini(tmp_path):
    ids = ["a", "b", "c|d"]
    summary = audience_summary(ids).with_columns(
        pl.Series("ranking", ["uplift", "uplift", "expected_value"]),
        pl.Series("qini", [0.25, None, None], dtype=pl.Float64),
        pl.Series("ranking_reason", ["", "", "control group: 3 accepts of category c|d"]),
    )
    inputs = ReportInputs(AS_OF, "run-1", offers(ids), summary)
    text = write_report(inputs, tmp_path).read_text()
    assert "- ranked by uplift: 2 offers; by expected value: 1 offers" in text
    assert "- mean held-out Qini of the offers ranked by uplift: 0.250" in text
    section = text.split("## Uplift audiences (Qini)\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert rows[0] == "| offer_id | ranking | qini | ranking_reason |"
    assert rows[2:] == [
        "| a | uplift | 0.25 |  |",
        "| b | uplift |  |  |",
        r"| c\|d | expected_value |  | control group: 3 accepts of category c\|d |",
    ]
    assert "ranking" not in table_rows(text, "Audiences")[0]
