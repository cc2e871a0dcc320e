"""Ingest one day's delivery into raw/: find the files, validate every table, write all or nothing.

Reads `incoming/date=D/<table>.csv|.parquet` (or `<table>/*.parquet`), checks the whole delivery
with `mia.contracts`, and only when every table passes writes `raw/<table>/date=D/part-0.parquet`
for each delivered table plus a manifest `raw/_ingest/date=D/manifest.json` (rows, source files,
dropped and absent columns, warnings, the delivery each state table comes from). A state table
the day does not deliver stays in force from its latest earlier delivery. Re-ingesting a day
replaces it exactly, removing partitions of tables the new delivery no longer has. Callers that
run alongside others hold `mia.lake.run_lock`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import polars as pl

from mia.contracts import (
    FILE_SUFFIXES,
    READ_ERRORS,
    CheckResult,
    ContractError,
    Violation,
    check_tables,
    read_raw,
    unreadable,
)
from mia.errors import InputError
from mia.hashing import file_digest
from mia.lake import (
    Lake,
    Shard,
    partition_files,
    read_partition,
    remove_path,
    remove_temporaries,
    scan_partitions,
    write_json,
    write_partition,
)
from mia.schema import DATE, EVENT_TABLES, OFFER_ID, STATE_TABLES, SUBSCRIBER_ID, TABLES
from mia.settings import Settings

logger = logging.getLogger(__name__)

MANIFEST_DIR = "_ingest"
# Manifest field of each table: SHA-256 of its raw partition files, hashed once, here.
CONTENT_HASH = "sha256"
MANIFEST_FILE = "manifest.json"
# Manifest field: state table -> the date of its delivery in force on the day.
STATE_FROM = "state_from"
# Columns of a state table that the cross-table rules read, when an earlier delivery is in force.
_CONTEXT_COLUMNS = {"subscribers": [SUBSCRIBER_ID], "catalog": [OFFER_ID]}


class IncompleteDayError(InputError):
    """A day whose ingest was interrupted and whose delivery is no longer in the drop zone."""


def ingest_day(
    lake: Lake, date: dt.date, source: Path | None = None, settings: Settings | None = None
) -> dict[str, int]:
    """Validate the delivery of `date` and store it in raw/; returns rows written per table.

    `settings` gives the oldest event accepted (`event_max_age_days`; default Settings()).
    """
    settings = settings or Settings()
    source = Path(source) if source is not None else lake.incoming(date)
    files, ignored, violations = find_delivery(source)
    if not source.is_dir():
        logger.warning("no delivery folder %s", source)
    # A state table left out of the day stays in force from its latest earlier delivery.
    earlier = {
        table: day
        for table in STATE_TABLES
        if table not in files
        and (day := state_delivery(lake, table, date - dt.timedelta(days=1))) is not None
    }
    for table, day in earlier.items():
        logger.info("%s: not delivered for %s; the delivery of %s stays in force", table, date, day)
    in_force = {
        table: raw_state(lake, table, day, columns=_CONTEXT_COLUMNS[table])
        for table, day in earlier.items()
        if table in _CONTEXT_COLUMNS
    }
    skipped = [
        name
        for name in TABLES
        if name not in files and name not in earlier and not TABLES[name].required
    ]
    for name in skipped:
        logger.info("%s: optional table not delivered for %s, skipped", name, date)
    results, violations = check_delivery(source, files, violations, date, settings, in_force)
    if violations:
        logger.error("%s: delivery %s refused, %d rule(s) broken", date, source, len(violations))
        raise ContractError(violations)

    # The manifest marks a complete day: withdrawn first, written again only at the end.
    day_manifest = manifest_path(lake, date)
    remove_path(day_manifest)
    _remove_leftovers(lake, date)
    for table, result in results.items():
        write_partition(result.frame, lake.raw(table, date), by_shard=True)
    for table in TABLES:
        stale = lake.raw(table, date)
        if table not in results and stale.exists():
            logger.info("removing %s: its table is not in the new delivery", stale)
            remove_path(stale)
    hashes = {table: file_digest(partition_files(lake.raw(table, date))) for table in results}
    state_from = {table: date for table in STATE_TABLES if table in results} | earlier
    write_json(_manifest(date, files, results, ignored, skipped, hashes, state_from), day_manifest)
    counts = {table: result.frame.height for table, result in results.items()}
    logger.info("%s: ingested %s", date, counts)
    return counts


def check_delivery(
    source: Path,
    files: dict[str, Path],
    violations: list[Violation],
    date: dt.date,
    settings: Settings,
    in_force: dict[str, pl.DataFrame],
) -> tuple[dict[str, CheckResult], list[Violation]]:
    """Read and check one day's delivered `files` against the contract, with the state tables
    `in_force` from earlier deliveries; the results and every violation, located in `source`.

    `violations` are those found before reading (`find_delivery`); what `mia ingest` refuses and
    what `mia doctor` reports are the same list.
    """
    violations = list(violations)
    frames: dict[str, pl.DataFrame] = {}
    for table, path in files.items():
        try:
            frames[table] = read_raw(path)
        except READ_ERRORS as error:
            violations.append(unreadable(table, path, error))
    # A required table that is unreadable or ambiguous is not reported missing as well.
    reported = {violation.table for violation in violations}
    in_force = {table: frame for table, frame in in_force.items() if table not in frames}
    results, checked = check_tables(frames, date, settings.event_max_age_days, in_force)
    violations += [
        found
        for found in checked
        if not (found.rule == "required_table" and found.table in reported)
    ]
    return results, _with_location(violations, source)


def find_delivery(source: Path) -> tuple[dict[str, Path], list[str], list[Violation]]:
    """Files of each table in a drop-zone folder, ignored file names, and ambiguity violations."""
    found: dict[str, list[Path]] = {}
    ignored: list[str] = []
    if not source.is_dir():
        return found, ignored, []
    for entry in sorted(source.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_dir() and entry.name in TABLES:
            found.setdefault(entry.name, []).append(entry)
        elif entry.is_file() and entry.suffix in FILE_SUFFIXES and entry.stem in TABLES:
            found.setdefault(entry.stem, []).append(entry)
        else:
            logger.warning("%s: ignoring %s (not a file of a contract table)", source, entry.name)
            ignored.append(entry.name)
    violations = [
        Violation(
            table,
            "",
            "single_source",
            len(paths),
            detail=f"delivered more than once: {[path.name for path in paths]}; keep one",
        )
        for table, paths in found.items()
        if len(paths) > 1
    ]
    single = {table: paths[0] for table, paths in found.items() if len(paths) == 1}
    return single, ignored, violations


def raw_events(
    lake: Lake, table: str, start: dt.date | None, end: dt.date | None, shard: Shard | None = None
) -> pl.LazyFrame | None:
    """Raw partitions of an event table with dates in [start, end], plus a `date` column.

    None when the table was never delivered; an empty frame when no partition is in range.
    With `shard` (shard, n_shards), only that shard's subscribers are read.
    """
    if table not in EVENT_TABLES:
        raise InputError(f"table == {table!r}, must be an event table: {list(EVENT_TABLES)}.")
    base = lake.root / "raw" / table
    if not lake.dates("raw", table):
        return None
    scan = scan_partitions(base, start, end, shard=shard)
    if scan is None:
        return pl.LazyFrame(schema={**TABLES[table].polars_schema, DATE: pl.Date})
    return scan


def raw_state(
    lake: Lake,
    table: str,
    date: dt.date,
    shard: Shard | None = None,
    columns: list[str] | None = None,
) -> pl.DataFrame | None:
    """A state table as delivered on `date`, or its latest delivery before; None if none.

    With `shard` (shard, n_shards), only that shard's subscribers are read; with `columns`,
    only those columns.
    """
    day = state_delivery(lake, table, date)
    if day is None:
        return None
    files = partition_files(lake.raw(table, day))
    if not files:
        empty = pl.DataFrame(schema=TABLES[table].polars_schema)
        return empty if columns is None else empty.select(columns)
    return read_partition(files, shard, columns)


def state_delivery(lake: Lake, table: str, date: dt.date) -> dt.date | None:
    """The day whose delivery of state `table` is in force on `date`: `date` itself when it
    delivered the table, else the latest day before that did; None when none did."""
    if table not in STATE_TABLES:
        raise InputError(f"table == {table!r}, must be a state table: {list(STATE_TABLES)}.")
    delivered = [day for day in lake.dates("raw", table) if day <= date]
    return delivered[-1] if delivered else None


def read_manifest(lake: Lake, date: dt.date) -> dict[str, Any] | None:
    """The ingest manifest of `date`, or None when the day is not (completely) ingested."""
    path = manifest_path(lake, date)
    return json.loads(path.read_text()) if path.exists() else None


def ingested_dates(lake: Lake) -> list[dt.date]:
    """Days whose delivery was ingested completely (their manifest exists)."""
    return [day for day in lake.dates("raw", MANIFEST_DIR) if manifest_path(lake, day).exists()]


def incomplete_dates(lake: Lake) -> list[dt.date]:
    """Days with raw partitions (or a manifest folder) but no manifest: an interrupted ingest."""
    found = {day for table in (*TABLES, MANIFEST_DIR) for day in lake.dates("raw", table)}
    return sorted(day for day in found if not manifest_path(lake, day).exists())


def refuse_lost_days(lake: Lake, days: list[dt.date]) -> None:
    """Raise IncompleteDayError naming the `days` without a delivery left to re-ingest them from."""
    if not days:
        return
    listed = ", ".join(day.isoformat() for day in days)
    raise IncompleteDayError(
        f"{listed}: the ingest was interrupted (partitions under {lake.root / 'raw'} but no "
        f"{MANIFEST_DIR}/date=D/{MANIFEST_FILE}) and {lake.root / 'incoming'} no longer holds "
        "the delivery; put the day's files back in incoming/date=D and run again."
    )


def manifest_path(lake: Lake, date: dt.date) -> Path:
    """Where the ingest manifest of `date` lives (it exists once the day is fully ingested)."""
    return lake.root / "raw" / MANIFEST_DIR / f"date={date.isoformat()}" / MANIFEST_FILE


def _remove_leftovers(lake: Lake, date: dt.date) -> None:
    """Temporary partitions and manifests of `date` that a killed ingest left behind."""
    partition = f"date={date.isoformat()}"
    for table in (*TABLES, MANIFEST_DIR):
        remove_temporaries(lake.raw(table, date).parent, partition)
    remove_temporaries(manifest_path(lake, date).parent, MANIFEST_FILE)


def _with_location(violations: list[Violation], source: Path) -> list[Violation]:
    """Name the drop-zone folder in table-level violations so the reader knows where to look."""
    located = []
    for violation in violations:
        if violation.rule == "required_table":
            detail = f"no {violation.table}.csv, {violation.table}.parquet or "
            detail += f"{violation.table}/*.parquet in {source}"
            violation = Violation(violation.table, "", violation.rule, 1, detail=detail)
        located.append(violation)
    return located


def _manifest(
    date: dt.date,
    files: dict[str, Path],
    results: dict[str, CheckResult],
    ignored: list[str],
    skipped: list[str],
    hashes: dict[str, str],
    state_from: dict[str, dt.date],
) -> dict[str, Any]:
    return {
        DATE: date.isoformat(),
        "tables": {
            table: {
                "rows": result.frame.height,
                "file": files[table].name,
                CONTENT_HASH: hashes[table],
                "dropped_columns": result.dropped_columns,
                "absent_columns": result.absent_columns,
                "warnings": [
                    {
                        "column": warning.column,
                        "rule": warning.rule,
                        "rows": warning.count,
                        "detail": warning.detail,
                        "message": warning.message(),
                    }
                    for warning in result.warnings
                ],
            }
            for table, result in results.items()
        },
        STATE_FROM: {table: day.isoformat() for table, day in sorted(state_from.items())},
        "skipped_tables": skipped,
        "ignored_files": ignored,
    }
