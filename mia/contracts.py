"""The input contract: read delivered files, coerce them to the contract types, enforce every rule.

The tables, columns, types, allowed values, keys and per-column rules are declared in
`mia.schema`; this module enforces them. A check never stops at the first problem: every broken
rule becomes one `Violation` (table, column, rule, how many rows, up to five example rows), and
a `ContractError` carries all of them.

Behaviour worth knowing (documented for users in data/README.md):

- CSV files are read as text and every cell is cast strictly, so a bad cell ("abc" in a number
  column) is reported with its raw value, never silently turned into a null. Empty cells and
  empty strings are nulls.
- Columns outside the contract are dropped with a logged warning and listed in the check result.
- An optional column (`Column.optional`) may be left out: it is read as empty in every row and
  listed in `CheckResult.absent_columns`. A missing column is reported as a whole, never as
  "broken by N rows".
- A state table missing from a day's delivery is taken from its latest earlier delivery
  (`in_force` of `check_tables`); a required one is refused only when there is none.
- An event row whose subscriber is missing from the `subscribers` table in force on the day is a
  warning, not a violation: the row is kept (features are only built for known subscribers).
- An `offer_events.offer_id` missing from the catalog in force on the day is a violation.
- A subscriber's daily usage total above `USAGE_DAILY_LIMITS` is a warning (units look wrong).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from mia.errors import InputError
from mia.lake import end_of_day
from mia.schema import (
    DATE_RANGES,
    KIND,
    LIST_COLUMNS,
    LIST_SEPARATOR,
    NOT_AFTER_DELIVERY,
    OFFER_ID,
    PROBABILITY_COLUMNS,
    QUANTITY,
    REQUIRED_TABLES,
    STATE_TABLES,
    SUBSCRIBER_ID,
    TABLES,
    TS,
    USAGE_DAILY_LIMITS,
    Column,
    Table,
)
from mia.text import CONTROL_CHARACTERS, SHORT_TEXT, shorten

logger = logging.getLogger(__name__)

AnyFrame = TypeVar("AnyFrame", pl.DataFrame, pl.LazyFrame)

MAX_EXAMPLES = 5
ROW = "_row"  # 0-based row number added to example rows (CSV line = row + 2)
FILE_SUFFIXES = (".csv", ".parquet")


class CorruptFileError(ValueError):
    """A delivered file that parses but contradicts its own metadata (damaged bytes)."""


READ_ERRORS = (pl.exceptions.PolarsError, OSError, CorruptFileError)
# Per table, pairs of columns whose values must differ when both are present.
DISTINCT_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "catalog": (("requires_product", "excludes_product"),),
}
# Integers read from float text ("3.0") are exact only up to 2**53.
_MAX_EXACT_FLOAT_INT = float(2**53)
_BAD_TYPE = "__bad_type__"
# Rules about a column as a whole (its header), not about rows.
COLUMN_RULES = ("required_column", "unique_column")


@dataclass(frozen=True)
class Violation:
    """One broken rule of one table: where, which rule, how many rows and a few of them."""

    table: str
    column: str
    rule: str
    count: int
    examples: list[dict[str, Any]] = field(default_factory=list)
    detail: str = ""

    def message(self) -> str:
        """One line naming table, column, rule, count, the rule in words and example rows."""
        if not self.column:  # a rule about the table as a whole (missing, unreadable, ...)
            return f"{self.table}: rule '{self.rule}' broken: {self.detail}"
        if self.rule in COLUMN_RULES:
            return f"{self.table}.{self.column}: rule '{self.rule}' broken: {self.detail}"
        text = f"{self.table}.{self.column}: rule '{self.rule}' broken by {self.count} row(s)"
        if self.detail:
            text += f": {self.detail}"
        if self.examples:
            first = [ROW, *self.column.split(",")]
            text += "; e.g. " + "; ".join(_format_row(row, first) for row in self.examples)
        return text


class ContractError(InputError):
    """Input that breaks the contract; `.violations` lists every broken rule."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = list(violations)
        super().__init__("\n".join(violation.message() for violation in self.violations))


@dataclass(frozen=True)
class CheckResult:
    """Outcome of checking one table: the typed frame and what was found."""

    table: str
    frame: pl.DataFrame  # contract columns, contract types (rows that broke a rule included)
    violations: list[Violation]
    warnings: list[Violation]
    dropped_columns: list[str]
    absent_columns: list[str] = field(default_factory=list)  # optional columns not delivered


# --------------------------------------------------------------------------------------------
# Public API


def read_table_file(path: Path, table: str) -> pl.DataFrame:
    """Read a CSV or Parquet file (or a folder of Parquet parts) coerced to the contract types."""
    contract = _contract(table)
    try:
        raw = read_raw(path)
    except READ_ERRORS as error:
        raise ContractError([unreadable(table, Path(path), error)]) from error
    present = [name for name in contract.column_names if name in raw.columns]
    extras = [name for name in raw.columns if name not in contract.column_names]
    typed, violations = _read_types(raw, contract, present)
    if violations:
        raise ContractError(violations)
    return pl.concat([typed.select(present), raw.select(extras)], how="horizontal")


def validate_table(
    frame: pl.DataFrame,
    table: str,
    as_of: dt.date,
    context: Mapping[str, pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """The frame cleaned to the contract (columns, order, types) or a ContractError.

    `context` holds other tables of the same delivery by name; when it has `catalog`, offer ids
    of `offer_events` are checked against it, and when it has `subscribers`, subscriber ids of
    the other tables are (a warning only).
    """
    result = check_table(frame, table, as_of, context)
    if result.violations:
        raise ContractError(result.violations)
    return result.frame


def validate_tables(frames: Mapping[str, pl.DataFrame], as_of: dt.date) -> dict[str, pl.DataFrame]:
    """Validate one day's delivery (all required tables present), raising on ALL violations."""
    results, violations = check_tables(frames, as_of)
    if violations:
        raise ContractError(violations)
    return {name: result.frame for name, result in results.items()}


def check_tables(
    frames: Mapping[str, pl.DataFrame],
    as_of: dt.date,
    event_max_age_days: int | None = None,
    in_force: Mapping[str, pl.DataFrame] | None = None,
) -> tuple[dict[str, CheckResult], list[Violation]]:
    """Check a delivery table by table plus cross-table rules; returns results and violations.

    With `event_max_age_days`, events older than that many days before `as_of` break `max_age`.
    `in_force` holds the latest earlier delivery of state tables (only the key columns are
    needed): a state table the day does not deliver is taken from there, for the cross-table
    rules and for the `required_table` rule.
    """
    in_force = {name: frame for name, frame in (in_force or {}).items() if name not in frames}
    violations: list[Violation] = []
    for name in frames:
        if name not in TABLES:
            violations.append(
                Violation(
                    name, "", "known_table", 1, detail=f"unknown table, expected one of {_names()}"
                )
            )
    for name in REQUIRED_TABLES:
        if name not in frames and name not in in_force:
            detail = "required table is missing"
            if name in STATE_TABLES:
                detail += " and has no earlier delivery (a state table is needed on its first day)"
            violations.append(Violation(name, "", "required_table", 1, detail=detail))
    # State tables first: they are the context of the cross-table rules of the event tables.
    order = [name for name in STATE_TABLES if name in frames]
    order += [name for name in TABLES if name in frames and name not in STATE_TABLES]
    context: dict[str, pl.DataFrame] = dict(in_force)
    results: dict[str, CheckResult] = {}
    for name in order:
        result = check_table(frames[name], name, as_of, context, event_max_age_days)
        context[name] = result.frame
        results[name] = result
        violations.extend(result.violations)
    ordered = {name: results[name] for name in TABLES if name in results}
    return ordered, violations


def check_table(
    frame: pl.DataFrame,
    table: str,
    as_of: dt.date,
    context: Mapping[str, pl.DataFrame] | None = None,
    event_max_age_days: int | None = None,
) -> CheckResult:
    """Check one table against every rule without raising; see `validate_table` and
    `check_tables`."""
    contract = _contract(table)
    context = context or {}
    violations: list[Violation] = []
    duplicated = [name for name in frame.columns if _duplicate_of(name, contract)]
    for name in duplicated:
        violations.append(
            Violation(
                table,
                _duplicate_of(name, contract) or name,
                "unique_column",
                1,
                detail=f"the column appears more than once (also read as {name!r})",
            )
        )
    missing = [column for column in contract.columns if column.name not in frame.columns]
    absent = [column.name for column in missing if column.optional]
    for column in missing:
        if not column.optional:
            violations.append(
                Violation(
                    table,
                    column.name,
                    "required_column",
                    1,
                    detail=f"the column is missing; columns found: {frame.columns}",
                )
            )
    if absent:
        logger.info("%s: optional column(s) %s not delivered: read as empty", table, absent)
    if contract.required and table in STATE_TABLES and frame.height == 0:
        violations.append(
            Violation(
                table,
                "",
                "not_empty",
                1,
                detail="a required state table must have at least one row; the delivery has none",
            )
        )
    dropped = [name for name in frame.columns if name not in contract.column_names]
    if dropped:
        logger.warning("%s: dropping columns outside the contract: %s", table, dropped)

    present = [name for name in contract.column_names if name in frame.columns]
    typed, type_violations = _read_types(frame, contract, present)
    violations.extend(type_violations)
    rules = _row_rules(contract, present, as_of, context, event_max_age_days)
    warn_rules = _warning_rules(contract, present, context)
    all_rules = rules + warn_rules
    if all_rules and typed.height:
        counts = typed.select(
            [rule.mask.fill_null(False).sum().alias(str(i)) for i, rule in enumerate(all_rules)]
        ).row(0)
    else:
        counts = (0,) * len(all_rules)
    shown = typed.select([ROW, *present])
    warnings: list[Violation] = []
    for index, (rule, count) in enumerate(zip(all_rules, counts, strict=True)):
        if not count:
            continue
        mask = typed.select(rule.mask.fill_null(False)).to_series()
        examples = shown.filter(mask).head(MAX_EXAMPLES).to_dicts()
        found = Violation(table, rule.column, rule.rule, int(count), examples, rule.detail)
        if index >= len(rules):
            logger.warning("%s", found.message())
            warnings.append(found)
        else:
            violations.append(found)
    cleaned = typed.select(present).with_columns(
        pl.lit(None, dtype=contract.polars_schema[name]).alias(name) for name in absent
    )
    order = [name for name in contract.column_names if name in cleaned.columns]
    return CheckResult(table, cleaned.select(order), violations, warnings, dropped, absent)


def with_absent_columns(frame: AnyFrame, table: str) -> AnyFrame:
    """The frame with every optional column of `table` it lacks added as empty (null) cells."""
    contract = _contract(table)
    lazy = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
    names = set(lazy.collect_schema().names())
    absent = [
        pl.lit(None, dtype=column.dtype).alias(column.name)
        for column in contract.columns
        if column.optional and column.name not in names
    ]
    return frame.with_columns(absent) if absent else frame


def read_raw(path: Path) -> pl.DataFrame:
    """A delivered file as read, before coercion: CSV as text, Parquet as stored."""
    path = Path(path)
    if path.is_dir():
        parts = sorted(
            part for part in path.glob("*.parquet") if not part.name.startswith((".", "_"))
        )
        if not parts:
            return pl.DataFrame()
        return pl.concat([_read_parquet(part) for part in parts], how="diagonal_relaxed")
    if path.suffix == ".csv":
        if path.stat().st_size == 0:
            return pl.DataFrame()
        return pl.scan_csv(path, infer_schema=False).collect(engine="streaming")
    if path.suffix == ".parquet":
        return _read_parquet(path)
    raise InputError(f"{path}: unsupported file type, expected one of {FILE_SUFFIXES}.")


def _read_parquet(path: Path) -> pl.DataFrame:
    """A Parquet file as stored, refused (CorruptFileError) when its values contradict the
    statistics in its own footer: damaged pages can decode into garbage without an error."""
    import pyarrow.parquet as pq

    frame = pl.scan_parquet(path).collect(engine="streaming")
    metadata = pq.ParquetFile(path).metadata
    start = 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        rows = frame.slice(start, row_group.num_rows)
        start += row_group.num_rows
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            name = chunk.path_in_schema
            if chunk.statistics is not None and name in rows.columns:
                problem = _contradicts(rows.get_column(name), chunk.statistics)
                if problem:
                    raise CorruptFileError(
                        f"row group {group}, column {name!r}: {problem}; the file is damaged, "
                        "deliver it again"
                    )
    return frame


def _contradicts(values: pl.Series, statistics: Any) -> str:
    """What in `values` disagrees with their Parquet column statistics ('' when nothing)."""
    if statistics.has_null_count and statistics.null_count != values.null_count():
        return f"{values.null_count()} null(s), the footer records {statistics.null_count}"
    if not statistics.has_min_max or values.dtype == pl.Boolean or values.dtype.is_nested():
        return ""
    # Outside [min, max] only: writers may widen (truncate) the bounds of long strings.
    # NaN is left out of float statistics.
    value = pl.col(values.name)
    try:
        low, high = statistics.min, statistics.max
        bounds = [pl.lit(bound).cast(values.dtype) for bound in (low, high)]
        outside = ~value.is_between(*bounds)
        if values.dtype.is_float():
            outside = outside & value.is_not_nan()
        count = values.to_frame().select(outside.fill_null(False).sum()).item()
    except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError, NotImplementedError):
        return ""  # statistics of a type polars cannot compare with: nothing to check
    if count:
        return f"{count} value(s) outside the range [{low}, {high}] recorded in the file's footer"
    return ""


def unreadable(table: str, path: Path, error: Exception) -> Violation:
    """The violation of a delivered file that cannot be parsed at all."""
    reason = " ".join(str(error).split())
    return Violation(table, "", "readable", 1, detail=f"cannot read {path.name}: {reason}")


# --------------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class _Rule:
    column: str
    rule: str
    detail: str
    mask: pl.Expr  # True on rows that break the rule


def _row_rules(
    contract: Table,
    present: list[str],
    as_of: dt.date,
    context: Mapping[str, pl.DataFrame],
    event_max_age_days: int | None = None,
) -> list[_Rule]:
    rules: list[_Rule] = []
    for column in contract.columns:
        name = column.name
        if name not in present:
            continue
        value = pl.col(name)
        if not column.nullable:
            rules.append(
                _Rule(
                    name, "not_null", "a value is required", value.is_null() & ~_bad_type_flag(name)
                )
            )
        if column.allowed is not None and name not in LIST_COLUMNS.get(contract.name, {}):
            rules.append(
                _Rule(
                    name,
                    "allowed",
                    f"must be one of {list(column.allowed)}",
                    value.is_not_null() & ~value.is_in(column.allowed),
                )
            )
        if column.pattern is not None:
            rules.append(
                _Rule(
                    name,
                    "name_pattern",
                    f"must match {column.pattern}",
                    value.is_not_null() & ~value.str.contains(column.pattern),
                )
            )
        if column.dtype == pl.Float64:
            rules.append(_Rule(name, "finite", "must be a finite number", ~value.is_finite()))
        if column.non_negative:
            rules.append(_Rule(name, "non_negative", "must be >= 0", value < 0))
        if column.dtype == pl.String:
            rules.append(
                _Rule(
                    name,
                    "no_control_characters",
                    "no control characters (NUL, tab, newline, escape) or bidi controls",
                    value.str.contains(CONTROL_CHARACTERS),
                )
            )
    for name, allowed in LIST_COLUMNS.get(contract.name, {}).items():
        if name in present:
            rules.extend(_list_rules(name, allowed))
    for start, end in DATE_RANGES.get(contract.name, ()):
        if start in present and end in present:
            rules.append(
                _Rule(end, "date_order", f"must be >= {start}", pl.col(end) < pl.col(start))
            )
    for first, second in DISTINCT_PAIRS.get(contract.name, ()):
        if first in present and second in present:
            rules.append(
                _Rule(
                    second, "distinct", f"must differ from {first}", pl.col(first) == pl.col(second)
                )
            )
    for name in PROBABILITY_COLUMNS.get(contract.name, ()):
        if name in present:
            value = pl.col(name)
            rules.append(
                _Rule(name, "probability", "must be in (0, 1]", (value <= 0) | (value > 1))
            )
    for name in NOT_AFTER_DELIVERY.get(contract.name, ()):
        if name in present:
            rules.append(
                _Rule(name, "not_after_date", f"must be <= {as_of}", pl.col(name) > pl.lit(as_of))
            )
    if contract.event_time and contract.event_time in present:
        limit = end_of_day(as_of)
        rules.append(
            _Rule(
                contract.event_time,
                "not_after_date",
                f"must be before {limit.isoformat(sep=' ')} (the end of {as_of})",
                pl.col(contract.event_time) >= pl.lit(limit, dtype=pl.Datetime("us")),
            )
        )
        if event_max_age_days is not None:
            oldest = as_of - dt.timedelta(days=event_max_age_days)
            rules.append(
                _Rule(
                    contract.event_time,
                    "max_age",
                    f"must be on or after {oldest} ({event_max_age_days} days before {as_of}, "
                    "setting event_max_age_days)",
                    pl.col(contract.event_time) < pl.lit(oldest).cast(pl.Datetime("us")),
                )
            )
    if contract.key and all(name in present for name in contract.key):
        complete = pl.all_horizontal([pl.col(name).is_not_null() for name in contract.key])
        rules.append(
            _Rule(
                ",".join(contract.key),
                "unique",
                "key must be unique; counts every row that shares its key",
                complete & pl.struct(list(contract.key)).is_duplicated(),
            )
        )
    catalog = context.get("catalog")
    if contract.name == "offer_events" and OFFER_ID in present and _has(catalog, OFFER_ID):
        offers = catalog.get_column(OFFER_ID).drop_nulls().unique()
        rules.append(
            _Rule(
                OFFER_ID,
                "known_offer",
                "must exist in the catalog in force on the day (its own or the latest earlier)",
                pl.col(OFFER_ID).is_not_null() & ~pl.col(OFFER_ID).is_in(offers.implode()),
            )
        )
    return rules


def _warning_rules(
    contract: Table, present: list[str], context: Mapping[str, pl.DataFrame]
) -> list[_Rule]:
    rules = _plausibility_rules(contract, present)
    subscribers = context.get("subscribers")
    if contract.name == "subscribers" or SUBSCRIBER_ID not in present:
        return rules
    if not _has(subscribers, SUBSCRIBER_ID):  # absent, or refused for lacking the column
        return rules
    known = subscribers.get_column(SUBSCRIBER_ID).drop_nulls().unique()
    mask = pl.col(SUBSCRIBER_ID).is_not_null() & ~pl.col(SUBSCRIBER_ID).is_in(known.implode())
    detail = "not in the subscribers table in force on the day (warning: rows kept)"
    return [*rules, _Rule(SUBSCRIBER_ID, "known_subscriber", detail, mask)]


def _plausibility_rules(contract: Table, present: list[str]) -> list[_Rule]:
    """Usage whose daily total per subscriber and kind exceeds `USAGE_DAILY_LIMITS`: most
    likely a unit error (seconds as minutes, bytes as megabytes); every row of such a
    subscriber-day of that kind is counted."""
    if contract.name != "usage" or not {SUBSCRIBER_ID, TS, KIND, QUANTITY} <= set(present):
        return []
    daily = pl.col(QUANTITY).sum().over(SUBSCRIBER_ID, pl.col(TS).dt.date(), KIND)
    return [
        _Rule(
            QUANTITY,
            "plausible_daily_total",
            f"{kind}: a subscriber's total of one day above {limit:,g} {unit}; are the units "
            "right? (warning: rows kept)",
            (pl.col(KIND) == kind) & (daily > limit),
        )
        for kind, (limit, unit) in USAGE_DAILY_LIMITS.items()
    ]


def _list_rules(name: str, allowed: tuple[str, ...] | None) -> list[_Rule]:
    items = pl.col(name).str.split(LIST_SEPARATOR)
    item = pl.element()
    malformed = items.list.eval(
        (item.str.len_chars() == 0) | (item != item.str.strip_chars())
    ).list.any()
    rules = [
        _Rule(
            name,
            "list_format",
            f"items separated by '{LIST_SEPARATOR}', none empty or padded with spaces",
            malformed,
        )
    ]
    if allowed is not None:
        unknown = items.list.eval(~item.is_in(allowed)).list.any()
        rules.append(_Rule(name, "allowed", f"every item must be one of {list(allowed)}", unknown))
    return rules


def _bad_type_flag(name: str) -> pl.Expr:
    return pl.col(_BAD_TYPE + name)


# --------------------------------------------------------------------------------------------
# Coercion


def _read_types(
    frame: pl.DataFrame, contract: Table, present: list[str]
) -> tuple[pl.DataFrame, list[Violation]]:
    """The `present` contract columns cast to their types, with a row number and one flag
    column per column, and one `type` violation per column holding unreadable cells (the
    examples show the cells as delivered)."""
    raw = _empty_strings_to_null(frame.select(present)).with_row_index(ROW)
    typed, flags = _typed_with_flags(raw, contract, present)
    violations = []
    for name, flag in flags.items():
        mask = typed.get_column(flag)
        count = int(mask.sum())
        if count:
            examples = raw.filter(mask).head(MAX_EXAMPLES).to_dicts()
            source = raw.schema[name]
            detail = f"must be readable as {contract.polars_schema[name]} (read as {source})"
            violations.append(Violation(contract.name, name, "type", count, examples, detail))
    return typed, violations


def _typed_with_flags(
    raw: pl.DataFrame, contract: Table, present: list[str]
) -> tuple[pl.DataFrame, dict[str, str]]:
    """`raw` with contract columns cast, plus one flag column per column: True where a cell
    held a value that could not be read as the contract type."""
    columns = {column.name: column for column in contract.columns}
    replaced: list[pl.Series] = []
    flags: dict[str, str] = {}
    for name in present:
        values = raw.get_column(name)
        typed = _cast_series(values, columns[name])
        flags[name] = _BAD_TYPE + name
        replaced.append((values.is_not_null() & typed.is_null()).alias(flags[name]))
        replaced.append(typed)
    return raw.with_columns(replaced), flags


def _cast_series(values: pl.Series, column: Column) -> pl.Series:
    """Cast with each reader in turn; a later reader only sees the cells earlier ones left."""
    readers = _readers(pl.col(values.name), values.dtype, column)
    frame = values.to_frame()
    result = frame.with_columns(readers[0].alias(values.name)).to_series()
    for reader in readers[1:]:
        todo = (result.is_null() & values.is_not_null()).arg_true()
        if todo.len() == 0:
            break
        retried = frame[todo].with_columns(reader.alias(values.name)).to_series()
        result = result.scatter(todo, retried)
    return result.alias(values.name)


def _readers(value: pl.Expr, source: pl.DataType, column: Column) -> list[pl.Expr]:
    """Expressions that read a column as its contract type, most common form first; a cell
    that none can read becomes null (and is flagged)."""
    target = column.dtype
    if source == pl.Null:
        return [value.cast(target)]
    if source == pl.String:
        return _text_readers(value.str.strip_chars() if target != pl.String else value, target)
    if target == pl.String:
        if source.is_integer() or isinstance(source, pl.Categorical | pl.Enum):
            return [value.cast(pl.String)]
    elif target == pl.Int64:
        if source.is_integer():
            return [value.cast(pl.Int64, strict=False)]
        if source.is_float():
            return [_float_to_int(value.cast(pl.Float64))]
    elif target == pl.Float64:
        if source.is_numeric() and source != pl.Boolean:
            return [value.cast(pl.Float64)]
    elif target == pl.Date:
        if source == pl.Date:
            return [value]
        if isinstance(source, pl.Datetime):
            midnight = value.dt.time() == pl.lit(dt.time())
            return [pl.when(midnight).then(value.dt.date())]
    elif isinstance(target, pl.Datetime):
        if isinstance(source, pl.Datetime):
            if source.time_zone is not None:
                value = value.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            return [value.cast(target)]
        if source == pl.Date:
            return [value.cast(target)]
    # Any other source type cannot hold this column: every value is flagged.
    return [pl.lit(None, dtype=target)]


def _text_readers(text: pl.Expr, target: pl.DataType) -> list[pl.Expr]:
    if target == pl.String:
        return [text]
    if target == pl.Int64:
        return [
            text.cast(pl.Int64, strict=False),
            _float_to_int(text.cast(pl.Float64, strict=False)),
        ]
    if target == pl.Float64:
        return [text.cast(pl.Float64, strict=False)]
    if target == pl.Date:
        return [text.str.to_date("%Y-%m-%d", strict=False)]
    if isinstance(target, pl.Datetime):
        fast = [
            text.str.to_datetime(form, time_unit="us", strict=False)
            for form in ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f")
        ]
        return [*fast, _parse_timestamp(text)]
    raise TypeError(f"no text reader for {target}")


def _float_to_int(value: pl.Expr) -> pl.Expr:
    exact = value.is_finite() & (value == value.round(0)) & (value.abs() <= _MAX_EXACT_FLOAT_INT)
    return pl.when(exact).then(value.cast(pl.Int64, strict=False))


def _parse_timestamp(text: pl.Expr) -> pl.Expr:
    """ISO 8601 text -> naive UTC timestamp: 'T' or space, optional fraction, 'Z' or offset."""
    text = text.str.replace("T", " ", literal=True).str.replace(r"Z$", "+00:00")
    return pl.coalesce(
        text.str.to_datetime(
            "%Y-%m-%d %H:%M:%S%.f%#z", time_unit="us", time_zone="UTC", strict=False
        ).dt.replace_time_zone(None),
        text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us", strict=False),
        text.str.to_datetime("%Y-%m-%d %H:%M", time_unit="us", strict=False),
        text.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")),
    )


def _empty_strings_to_null(frame: pl.DataFrame) -> pl.DataFrame:
    text = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    if not text:
        return frame
    return frame.with_columns(
        [pl.when(pl.col(name) != "").then(pl.col(name)).alias(name) for name in text]
    )


# --------------------------------------------------------------------------------------------
# Helpers


def _contract(table: str) -> Table:
    try:
        return TABLES[table]
    except KeyError:
        raise ContractError(
            [Violation(table, "", "known_table", 1, detail=f"expected one of {_names()}")]
        ) from None


def _has(frame: pl.DataFrame | None, column: str) -> bool:
    """Whether a context table was delivered with `column` (cross-table rules need it)."""
    return frame is not None and column in frame.columns


def _names() -> list[str]:
    return list(TABLES)


def _duplicate_of(name: str, contract: Table) -> str | None:
    """The contract column a CSV reader renamed `name` from when the header repeated it."""
    base, marker, suffix = name.rpartition("_duplicated_")
    if marker and suffix.isdigit() and base in contract.column_names:
        return base
    return None


def _format_row(row: dict[str, Any], first: list[str]) -> str:
    """`{key=value, ...}` with the `first` keys leading (the columns the rule is about)."""
    keys = [key for key in first if key in row] + [key for key in row if key not in first]
    parts = []
    for key in keys:
        value = row[key]
        if isinstance(value, dt.datetime | dt.date):
            value = value.isoformat(sep=" ") if isinstance(value, dt.datetime) else str(value)
        parts.append(f"{key}={_example_value(value)}")
    return "{" + ", ".join(parts) + "}"


def _example_value(value: Any) -> str:
    """A cell as quoted in a message: its repr, cut to a short length (a cell may be megabytes)."""
    if isinstance(value, str) and len(value) > SHORT_TEXT:
        return f"{value[:SHORT_TEXT]!r}... ({len(value):,} characters)"
    return shorten(repr(value))
