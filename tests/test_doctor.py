"""`mia doctor`: what Mia will use, ignore and refuse in a data root, before a first night."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl

from flows.cli import EXIT_BAD_INPUT, EXIT_OK, app, run_command
from mia.doctor import NOT_DELIVERED, REFUSE, USE, diagnose
from mia.lake import Lake
from mia.schema import TABLES
from tests.conftest import TINY_DAYS, TINY_LAST_DAY, TINY_START


def _mia(*arguments: str) -> int:
    return run_command(lambda: app(list(arguments), standalone_mode=True))


def _tree(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): path.stat().st_mtime_ns for path in root.rglob("*")}


def _one_day(simulated_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A data root holding only the first simulated day, in incoming/; and that day's folder."""
    root = tmp_path / "data"
    day = Lake(root).incoming(TINY_START)
    shutil.copytree(Lake(simulated_root).incoming(TINY_START), day)
    return root, day


def test_ingested_world_can_run_and_every_table_is_listed(ingested_root, capsys):
    before = _tree(ingested_root)
    code = _mia("doctor", "--data-dir", str(ingested_root))
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    for table in TABLES:
        assert f"{table}\t" in out
    assert f"(checked now), {TINY_DAYS} day(s) already ingested" in out
    assert "Mia will refuse:\n  nothing" in out
    assert "A first night can run" in out
    assert _tree(ingested_root) == before  # nothing written, not even a lock file

    diagnosis = diagnose(ingested_root)
    assert diagnosis.can_run
    # The telco world delivers every table but consumption (content worlds have it).
    assert {report.table: report.verdict for report in diagnosis.tables} == {
        **dict.fromkeys(TABLES, USE),
        "consumption": NOT_DELIVERED,
    }
    catalog = next(report for report in diagnosis.tables if report.table == "catalog")
    assert len(catalog.days) == TINY_DAYS and catalog.rows > 0
    assert any("categories in the latest delivery: " in note for note in catalog.notes)
    assert diagnosis.ingested_days[-1] == TINY_LAST_DAY


def test_extra_columns_unknown_files_and_absent_optional_tables_are_ignored(
    simulated_root, tmp_path
):
    root, day = _one_day(simulated_root, tmp_path)
    events = pl.read_parquet(day / "offer_events.parquet")
    events.with_columns(campaign=pl.lit("spring")).write_parquet(day / "offer_events.parquet")
    (day / "transfers.parquet").unlink()
    (day / "notes.txt").write_text("delivered by hand")

    diagnosis = diagnose(root)
    reports = {report.table: report for report in diagnosis.tables}
    assert diagnosis.can_run and diagnosis.checked_days == [TINY_START]
    assert reports["offer_events"].verdict == USE
    assert reports["offer_events"].ignored_columns == ["campaign"]
    assert reports["transfers"].verdict == NOT_DELIVERED
    assert diagnosis.ignored_files == [f"notes.txt on {TINY_START}: not a file of a contract table"]
    assert not (root / "raw").exists()


def test_broken_delivery_exits_2_naming_table_column_and_rule(simulated_root, tmp_path, capsys):
    root, day = _one_day(simulated_root, tmp_path)
    usage = pl.read_parquet(day / "usage.parquet")
    usage.with_columns(
        pl.when(pl.int_range(pl.len()) < 3).then(pl.lit("fax")).otherwise("kind").alias("kind")
    ).write_parquet(day / "usage.parquet")
    (day / "catalog.parquet").unlink()
    before = _tree(root)

    code = _mia("doctor", "--data-dir", str(root))
    captured = capsys.readouterr()
    assert code == EXIT_BAD_INPUT
    refused = captured.out.split("Mia will refuse:")[1]
    assert f"{TINY_START}: usage.kind: rule 'allowed' broken by 3 row(s)" in refused
    assert "catalog: rule 'required_table' broken: no catalog.csv" in refused
    assert "a night would be refused: 2 problem(s)" in captured.err
    assert _tree(root) == before

    reports = {report.table: report for report in diagnose(root).tables}
    assert reports["usage"].verdict == REFUSE and reports["catalog"].verdict == REFUSE
    assert reports["subscribers"].verdict == USE


def test_empty_data_root_is_refused(tmp_path, capsys):
    code = _mia("doctor", "--data-dir", str(tmp_path / "data"))
    assert code == EXIT_BAD_INPUT
    assert "nothing delivered" in capsys.readouterr().out
    assert not (tmp_path / "data").exists()
