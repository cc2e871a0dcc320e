"""Before a first night: what Mia will use, ignore and refuse in a data root, table by table.

`diagnose` reads a data root without writing to it. Days in `incoming/` that are not ingested yet
are checked with the rules `mia ingest` applies (`mia.ingest.find_delivery`,
`mia.contracts.check_tables`); days already ingested are summarised from their ingest manifests.
The result says, per contract table, whether Mia uses it, what it ignores (columns outside the
contract, optional columns or tables not delivered, files that are no table) and every rule that
would refuse a delivery, with the day it applies to.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from mia.contracts import CheckResult, Violation
from mia.errors import InputError
from mia.ingest import (
    check_delivery,
    find_delivery,
    incomplete_dates,
    ingested_dates,
    manifest_path,
    raw_state,
    refuse_lost_days,
    state_delivery,
)
from mia.lake import Lake
from mia.schema import CATEGORY, STATE_TABLES, SUBSCRIBER_ID, TABLES
from mia.settings import Settings

logger = logging.getLogger(__name__)

USE, REFUSE, NOT_DELIVERED = "use", "refuse", "not delivered"


@dataclass
class TableReport:
    """What Mia does with one contract table of a data root."""

    table: str
    required: bool
    state: bool  # a state table (full current state) rather than a day's events
    days: list[dt.date] = field(default_factory=list)  # days delivering it, checked or ingested
    rows: int = 0
    ignored_columns: list[str] = field(default_factory=list)  # outside the contract: dropped
    absent_columns: list[str] = field(default_factory=list)  # optional columns not delivered
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # rows kept
    refusals: list[str] = field(default_factory=list)  # broken rules: the day is refused

    @property
    def verdict(self) -> str:
        """`refuse` when a rule is broken, else `use` when delivered, else `not delivered`."""
        if self.refusals:
            return REFUSE
        return USE if self.days else NOT_DELIVERED

    @property
    def role(self) -> str:
        """The table's place in the contract, in words."""
        need = "required" if self.required else "optional"
        return f"{need} {'state' if self.state else 'event'} table"


@dataclass
class Diagnosis:
    """A data root as Mia would read it on its next night."""

    root: Path
    checked_days: list[dt.date]  # delivered in incoming/, not ingested yet: checked now
    ingested_days: list[dt.date]
    tables: list[TableReport]
    ignored_files: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # about the data root as a whole

    @property
    def problems(self) -> list[str]:
        """Every reason a night would be refused: the root's, then each table's."""
        return [*self.refusals, *(line for table in self.tables for line in table.refusals)]

    @property
    def can_run(self) -> bool:
        """Whether a first night can run: something delivered and nothing refused."""
        return not self.problems


def diagnose(root: Path | str, settings: Settings | None = None) -> Diagnosis:
    """Check a data root's deliveries and ingested days as the next night would; writes nothing.

    `settings` gives the rules that depend on them (`event_max_age_days`, `category_weights`).
    """
    settings = settings or Settings()
    lake = Lake(root)
    ingested = ingested_dates(lake)
    delivered = lake.dates("incoming")
    checked = [day for day in delivered if day not in set(ingested)]
    reports = {
        name: TableReport(name, table.required, name in STATE_TABLES)
        for name, table in TABLES.items()
    }
    diagnosis = Diagnosis(lake.root, checked, ingested, list(reports.values()))
    if not delivered and not ingested:
        diagnosis.refusals.append(
            f"nothing delivered: {lake.root / 'incoming'} has no date=YYYY-MM-DD folder and no "
            "day was ingested. Put each day's files in incoming/date=YYYY-MM-DD/."
        )
    lost = [day for day in incomplete_dates(lake) if day not in delivered]
    try:
        refuse_lost_days(lake, lost)
    except InputError as error:
        diagnosis.refusals.append(str(error))

    ignored_files: dict[str, list[dt.date]] = defaultdict(list)
    refused: dict[tuple[str, str, str], list[tuple[dt.date, Violation]]] = defaultdict(list)
    warned: dict[tuple[str, str, str], list[tuple[dt.date, Violation]]] = defaultdict(list)
    latest: dict[str, tuple[dt.date, pl.DataFrame]] = {}  # per table: its last checked day
    for day in ingested:
        _add_ingested_day(lake, day, reports, ignored_files)
    for day in checked:
        in_force = _in_force(lake, day, latest)
        results, ignored, violations = _check_day(lake, day, settings, in_force)
        for name in ignored:
            ignored_files[name].append(day)
        for violation in violations:
            refused[(violation.table, violation.column, violation.rule)].append((day, violation))
        for table, result in results.items():
            _add_checked_table(reports[table], day, result, warned)
            latest[table] = (day, result.frame)
    for (table, _, _), found in refused.items():
        report = reports.get(table)
        target = report.refusals if report is not None else diagnosis.refusals
        target.append(_summary(found))
    for (table, _, _), found in warned.items():
        reports[table].warnings.append(_summary(found))
    for name, days in sorted(ignored_files.items()):
        diagnosis.ignored_files.append(f"{name} on {_days(days)}: not a file of a contract table")
    _describe_state(lake, reports, latest, settings, diagnosis)
    return diagnosis


def _in_force(
    lake: Lake, day: dt.date, latest: dict[str, tuple[dt.date, pl.DataFrame]]
) -> dict[str, pl.DataFrame]:
    """Per state table, its latest delivery before `day`: checked here or already ingested."""
    found = {}
    for table in STATE_TABLES:
        ingested = state_delivery(lake, table, day - dt.timedelta(days=1))
        checked = latest.get(table)
        if checked is not None and (ingested is None or checked[0] > ingested):
            found[table] = checked[1]
        elif ingested is not None:
            found[table] = raw_state(lake, table, ingested)
    return found


def _check_day(
    lake: Lake, day: dt.date, settings: Settings, in_force: dict[str, pl.DataFrame]
) -> tuple[dict[str, CheckResult], list[str], list[Violation]]:
    """The checks `mia ingest` makes of one day's delivery: results, ignored files, violations."""
    source = lake.incoming(day)
    files, ignored, violations = find_delivery(source)
    results, violations = check_delivery(source, files, violations, day, settings, in_force)
    return results, ignored, violations


def _add_checked_table(
    report: TableReport,
    day: dt.date,
    result: CheckResult,
    warned: dict[tuple[str, str, str], list[tuple[dt.date, Violation]]],
) -> None:
    report.days.append(day)
    report.rows += result.frame.height
    _extend(report.ignored_columns, result.dropped_columns)
    _extend(report.absent_columns, result.absent_columns)
    for warning in result.warnings:
        warned[(warning.table, warning.column, warning.rule)].append((day, warning))


def _add_ingested_day(
    lake: Lake,
    day: dt.date,
    reports: dict[str, TableReport],
    ignored_files: dict[str, list[dt.date]],
) -> None:
    manifest = json.loads(manifest_path(lake, day).read_text())
    for name in manifest.get("ignored_files", []):
        ignored_files[name].append(day)
    for table, entry in manifest.get("tables", {}).items():
        report = reports.get(table)
        if report is None:
            continue
        report.days.append(day)
        report.rows += int(entry.get("rows", 0))
        _extend(report.ignored_columns, entry.get("dropped_columns", []))
        _extend(report.absent_columns, entry.get("absent_columns", []))
        if entry.get("warnings"):
            report.notes.append(
                f"ingested {day} with {len(entry['warnings'])} warning(s) "
                f"(see {manifest_path(lake, day)})"
            )


def _describe_state(
    lake: Lake,
    reports: dict[str, TableReport],
    latest: dict[str, pl.DataFrame],
    settings: Settings,
    diagnosis: Diagnosis,
) -> None:
    """Notes on the latest subscribers and catalog; refuse category weights the catalog lacks."""
    last_ingested = diagnosis.ingested_days[-1] if diagnosis.ingested_days else None
    for table in ("subscribers", "catalog"):
        frame = latest[table][1] if table in latest else None
        if frame is None and last_ingested is not None:
            frame = raw_state(lake, table, last_ingested)
        if frame is None:
            continue
        if table == "subscribers" and SUBSCRIBER_ID in frame.columns:
            count = frame[SUBSCRIBER_ID].n_unique()
            reports[table].notes.append(f"{count:,} subscribers in the latest delivery")
        if table == "catalog" and CATEGORY in frame.columns:
            categories = sorted(frame[CATEGORY].drop_nulls().unique().to_list())
            reports[table].notes.append(
                f"{frame.height:,} offers in {len(categories)} categories in the latest "
                f"delivery: {', '.join(categories)}"
            )
            try:
                settings.check_categories(categories, where="the latest catalog")
            except InputError as error:
                reports[table].refusals.append(f"settings: {error}")


def _summary(found: list[tuple[dt.date, Violation]]) -> str:
    """One line for one broken rule: its days, and the message of its first day."""
    days = [day for day, _ in found]
    first_day, first = found[0]
    where = f"{_days(days)}, e.g. {first_day}" if len(days) > 1 else str(first_day)
    return f"{where}: {first.message()}"


def _days(days: list[dt.date]) -> str:
    if len(days) == 1:
        return str(days[0])
    return f"{len(days)} days ({days[0]} .. {days[-1]})"


def _extend(names: list[str], more: list[str]) -> None:
    names.extend(name for name in more if name not in names)
