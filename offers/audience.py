"""Audiences: per offer, the eligible subscribers marketing should contact, with the control group
flagged, written as spreadsheet-safe, byte-stable CSV files.

Rules (see offers/README.md):

- Rows: eligible, scored, covered subscribers with p_accept >= min_probability, from BOTH groups;
  control rows carry group="control" and are held out by marketing to measure lift.
- Order: by expected incremental value, uplift x value x category weight, where the offer's
  ranking (offers.uplift.offer_rankings) is "uplift" and a predicted uplift is given; rows with no
  positive predicted uplift are cut. Otherwise by expected value (p_accept x value x category
  weight). Ties: subscriber_id ascending.
- Capacity: a row is kept while fewer than `capacity` treatment rows rank above it, so at most
  `capacity` treatment subscribers are contacted and the control rows cover the same score range.
- Numbers are rounded to 6 decimals (as written); CSV cells are never executed by a spreadsheet.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import polars as pl

from mia.errors import RunError
from mia.lake import atomic_path
from mia.schema import (
    CATEGORY,
    COVERED,
    EXPECTED_VALUE,
    GENERATED_AT,
    GROUP,
    OFFER_ID,
    P_ACCEPT,
    RANK,
    SUBSCRIBER_ID,
    VALUE,
)
from mia.settings import Settings
from offers.eligibility import Frame, OffersInputError, lazy, require_columns
from offers.groups import CONTROL, TREATMENT
from offers.rank import CAPACITY, category_weight_expr, scored_candidates
from offers.uplift import (
    BY_EXPECTED_VALUE,
    BY_UPLIFT,
    QINI,
    RANKING,
    RANKING_COLUMNS,
    RANKING_REASON,
    UPLIFT,
    offer_rankings,
)

logger = logging.getLogger(__name__)

AUDIENCE_COLUMNS = (
    SUBSCRIBER_ID,
    OFFER_ID,
    RANK,
    P_ACCEPT,
    EXPECTED_VALUE,
    GROUP,
    GENERATED_AT,
    UPLIFT,
    RANKING,
)
SUMMARY_COLUMNS = (
    OFFER_ID,
    CATEGORY,
    "audience_size",
    "expected_accepts",
    EXPECTED_VALUE,
    "control_size",
    RANKING,
    RANKING_REASON,
    QINI,
)
SUMMARY_FILE = "summary.csv"
FILE_COLUMN = "file"
DECIMALS = 6

_AUDIENCE_SCHEMA = {
    SUBSCRIBER_ID: pl.Int64,
    OFFER_ID: pl.String,
    RANK: pl.Int64,
    P_ACCEPT: pl.Float64,
    EXPECTED_VALUE: pl.Float64,
    GROUP: pl.String,
    GENERATED_AT: pl.String,
    UPLIFT: pl.Float64,
    RANKING: pl.String,
}
_SCORE = "_score"

# File names: kept as they are only when plainly safe; otherwise sanitised and suffixed with a
# hash of the original id. Kept names never end like a hashed one, so the two cannot collide.
_PLAIN_NAME = re.compile(r"[a-z0-9_][a-z0-9_.-]*")
_HASHED_NAME = re.compile(r".*--[0-9a-f]{12}")
_UNSAFE_CHARACTERS = re.compile(r"[^a-z0-9_-]+")
_MAX_NAME = 80
_RESERVED_NAMES = frozenset(
    {"summary", "con", "prn", "aux", "nul"}
    | {f"com{digit}" for digit in range(10)}
    | {f"lpt{digit}" for digit in range(10)}
)
# Leading characters that make a spreadsheet evaluate a cell (OWASP CSV injection list), also
# after leading whitespace, control or format characters (" =1+1", U+202E "=1+1"), and in their
# full-width and small forms ("＝1+1"), which spreadsheets may read as the ASCII ones.
_FORMULA_START = r"^[\t\r]|^[\s\p{Cc}\p{Cf}]*[=+\-@＝＋－＠﹦﹢﹣]"


def safe_file_name(offer_id: str) -> str:
    """A file stem for an offer id: [a-z0-9_.-] only, no leading dot, distinct for distinct ids."""
    kept = (
        _PLAIN_NAME.fullmatch(offer_id) is not None
        and len(offer_id) <= _MAX_NAME
        and not offer_id.endswith(".")
        and _HASHED_NAME.fullmatch(offer_id) is None
        and offer_id.split(".", 1)[0] not in _RESERVED_NAMES
    )
    if kept:
        return offer_id
    digest = hashlib.sha256(offer_id.encode("utf-8")).hexdigest()[:12]
    stem = _UNSAFE_CHARACTERS.sub("_", offer_id.lower()).strip("_-")[:_MAX_NAME] or "offer"
    return f"{stem}--{digest}"


def csv_safe(frame: pl.DataFrame) -> pl.DataFrame:
    """String cells that a spreadsheet could read as a formula get a leading single quote.

    That is cells starting with tab or carriage return, or with = + - @ (or their full-width
    forms) after any leading whitespace, control or format characters.
    """
    return frame.with_columns(
        pl.when(pl.col(name).str.contains(_FORMULA_START))
        .then(pl.lit("'") + pl.col(name))
        .otherwise(pl.col(name))
        .alias(name)
        for name, dtype in frame.schema.items()
        if dtype == pl.String
    )


def _write_csv(frame: pl.DataFrame, path: Path) -> None:
    csv_safe(frame).write_csv(
        path,
        float_precision=DECIMALS,
        float_scientific=False,
        null_value="",
        line_terminator="\n",
    )


def _rankings(rankings: Frame | None, catalog: Frame, settings: Settings) -> pl.DataFrame:
    """offer_id -> ranking (and reason); without `rankings`, expected value for every offer."""
    if rankings is None:
        return offer_rankings(catalog, settings, None, "no uplift given")
    require_columns(rankings, "rankings", RANKING_COLUMNS)
    return lazy(rankings).select(RANKING_COLUMNS).collect()


def build_audiences(
    scores: Frame,
    eligible: Frame | None,
    catalog: Frame,
    groups: Frame,
    settings: Settings,
    generated_at: str,
    uplift: Frame | None = None,
    rankings: Frame | None = None,
    pairs_checked: bool = False,
) -> dict[str, pl.DataFrame]:
    """Per scored offer (sorted by offer_id), its ranked audience with the control rows flagged.

    `eligible` None: every scored pair is eligible (see offers.rank.scored_candidates).

    `uplift` ([subscriber_id, offer_id, uplift], from offers.uplift.AudienceUplift.predict) and
    `rankings` ([offer_id, ranking, ranking_reason], from AudienceUplift.rankings) rank the
    offers whose ranking is "uplift" by expected incremental value; the others, and every offer
    without them, by expected value. `pairs_checked`: see `offers.rank.scored_candidates`.
    """
    if not isinstance(generated_at, str) or not generated_at:
        raise OffersInputError(f"generated_at == {generated_at!r}, must be a non-empty string.")
    # The impact arms are contacted by their own plain policies: never by a champion audience.
    # Audiences order ties by subscriber id: no tie-break hash.
    candidates = scored_candidates(
        scores, eligible, catalog, groups, settings, None, pairs_checked
    ).filter(pl.col(COVERED), pl.col(GROUP).is_in([TREATMENT, CONTROL]))
    rows = (
        candidates.lazy()
        .join(
            _rankings(rankings, catalog, settings).lazy().select(OFFER_ID, RANKING),
            on=OFFER_ID,
            how="left",
        )
        .with_columns(
            pl.when((pl.col(RANKING) == BY_UPLIFT) & (uplift is not None))
            .then(pl.lit(BY_UPLIFT))
            .otherwise(pl.lit(BY_EXPECTED_VALUE))
            .alias(RANKING)
        )
    )
    if uplift is None:
        rows = rows.with_columns(pl.lit(None, dtype=pl.Float64).alias(UPLIFT))
    else:
        require_columns(uplift, "uplift", (SUBSCRIBER_ID, OFFER_ID, UPLIFT))
        predicted = lazy(uplift).select(SUBSCRIBER_ID, OFFER_ID, pl.col(UPLIFT).cast(pl.Float64))
        rows = rows.join(predicted, on=[SUBSCRIBER_ID, OFFER_ID], how="left").with_columns(
            pl.when(pl.col(RANKING) == BY_UPLIFT).then(pl.col(UPLIFT)).alias(UPLIFT)
        )
    # Lazy, so that only the columns an audience keeps are carried to the per-offer sorts.
    rows = (
        rows.filter((pl.col(RANKING) != BY_UPLIFT) | (pl.col(UPLIFT) > 0))
        .with_columns(
            pl.when(pl.col(RANKING) == BY_UPLIFT)
            .then(pl.col(UPLIFT) * pl.col(VALUE) * category_weight_expr(settings))
            .otherwise(pl.col(EXPECTED_VALUE))
            .alias(_SCORE)
        )
        .select(
            SUBSCRIBER_ID,
            OFFER_ID,
            P_ACCEPT,
            EXPECTED_VALUE,
            GROUP,
            UPLIFT,
            RANKING,
            CAPACITY,
            _SCORE,
        )
        .collect(engine="in-memory")
    )
    parts = rows.partition_by(OFFER_ID, as_dict=True)
    offer_ids = sorted(lazy(scores).select(OFFER_ID).unique().collect()[OFFER_ID].to_list())
    audiences = {
        offer_id: (
            _ranked_audience(parts[(offer_id,)], generated_at)
            if (offer_id,) in parts
            else pl.DataFrame(schema=_AUDIENCE_SCHEMA)
        )
        for offer_id in offer_ids
    }
    logger.info(
        "audiences: %d offers, %d rows (%d rows ranked by uplift)",
        len(audiences),
        sum(audience.height for audience in audiences.values()),
        int((rows[RANKING] == BY_UPLIFT).sum()),
    )
    return audiences


def _ranked_audience(rows: pl.DataFrame, generated_at: str) -> pl.DataFrame:
    """One offer's rows by descending score, ties by subscriber id, cut after its capacity of
    treatment rows, with their rank.

    Two one-key sorts (the second stable) give the order of one sort by (score, subscriber) at
    half its cost on millions of rows.
    """
    ordered = rows.sort(SUBSCRIBER_ID).sort(_SCORE, descending=True, maintain_order=True)
    is_treatment = (pl.col(GROUP) == TREATMENT).cast(pl.Int64)
    treatment_above = is_treatment.cum_sum() - is_treatment
    return (
        ordered.filter(pl.col(CAPACITY).is_null() | (treatment_above < pl.col(CAPACITY)))
        .with_columns(
            pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(RANK),
            pl.col(P_ACCEPT, EXPECTED_VALUE, UPLIFT).cast(pl.Float64).round(DECIMALS),
            pl.lit(generated_at, dtype=pl.String).alias(GENERATED_AT),
        )
        .select(AUDIENCE_COLUMNS)
    )


def audience_summary(
    audiences: Mapping[str, pl.DataFrame], catalog: Frame, rankings: Frame | None = None
) -> pl.DataFrame:
    """Per offer: audience_size and control_size (rows), expected accepts and value (treatment),
    the ranking used and the reason for an expected-value fallback.

    Without `rankings`, an offer's ranking is read from its rows (expected_value when it has none).
    """
    require_columns(catalog, "catalog", (OFFER_ID, CATEGORY))
    offers = pl.DataFrame({OFFER_ID: sorted(audiences)}, schema={OFFER_ID: pl.String})
    frames = [
        frame.select(OFFER_ID, GROUP, P_ACCEPT, EXPECTED_VALUE, RANKING)
        for frame in audiences.values()
    ]
    rows = pl.concat(frames) if frames else pl.DataFrame(schema=_AUDIENCE_SCHEMA)
    treatment = pl.col(GROUP) == TREATMENT
    totals = rows.group_by(OFFER_ID).agg(
        treatment.sum().cast(pl.Int64).alias("audience_size"),
        pl.col(P_ACCEPT).filter(treatment).sum().alias("expected_accepts"),
        pl.col(EXPECTED_VALUE).filter(treatment).sum().alias(EXPECTED_VALUE),
        (~treatment).sum().cast(pl.Int64).alias("control_size"),
        pl.col(RANKING).max().alias(RANKING),
    )
    if rankings is None:
        used = totals.select(OFFER_ID, RANKING, pl.lit("").alias(RANKING_REASON))
    else:
        require_columns(rankings, "rankings", RANKING_COLUMNS)
        used = lazy(rankings).collect()
    if QINI not in used.columns:
        used = used.with_columns(pl.lit(None, dtype=pl.Float64).alias(QINI))
    used = used.select(*RANKING_COLUMNS, pl.col(QINI).cast(pl.Float64).round(DECIMALS))
    categories = lazy(catalog).select(OFFER_ID, CATEGORY).collect()
    return (
        offers.join(categories, on=OFFER_ID, how="left")
        .join(totals.drop(RANKING), on=OFFER_ID, how="left")
        .join(used, on=OFFER_ID, how="left")
        .with_columns(
            pl.col("audience_size", "control_size").fill_null(0),
            pl.col("expected_accepts", EXPECTED_VALUE).fill_null(0.0).round(DECIMALS),
            pl.col(RANKING).fill_null(BY_EXPECTED_VALUE),
            pl.col(RANKING_REASON).fill_null(""),
        )
        .select(SUMMARY_COLUMNS)
        .sort(OFFER_ID)
    )


def write_audiences(
    audiences: Mapping[str, pl.DataFrame], summary: pl.DataFrame, directory: Path | str
) -> Path:
    """Write <safe offer id>.csv per offer and summary.csv (with a `file` column), atomically."""
    require_columns(summary, "summary", SUMMARY_COLUMNS)
    if sorted(summary[OFFER_ID].to_list()) != sorted(audiences):
        raise OffersInputError(
            "summary: column offer_id, rule: the same offers as the audiences; "
            f"summary has {summary.height}, audiences have {len(audiences)}."
        )
    _check_replaceable(Path(directory))
    with atomic_path(Path(directory)) as temporary:
        temporary.mkdir(parents=True)
        names = _write_audience_files(audiences, temporary)
        _write_summary(summary, names, temporary)
    logger.info("wrote %d audience files to %s", len(names), directory)
    return Path(directory)


def write_audiences_in_parts(
    parts: Iterable[Mapping[str, pl.DataFrame]],
    catalog: Frame,
    directory: Path | str,
    rankings: Frame | None = None,
) -> pl.DataFrame:
    """Write audiences that arrive in parts of disjoint offers (e.g. `build_audiences` on groups
    of offers), one part in memory at a time; the same files as `write_audiences` on their union.

    Returns the summary of all parts.
    """
    names: dict[str, str] = {}
    summaries = []
    _check_replaceable(Path(directory))
    with atomic_path(Path(directory)) as temporary:
        temporary.mkdir(parents=True)
        for part in parts:
            repeated = sorted(set(part) & set(names))
            if repeated:
                raise OffersInputError(
                    f"audiences: column offer_id, rule: each offer in one part; {repeated[:5]} "
                    "appear twice."
                )
            names.update(_write_audience_files(part, temporary, taken=names))
            summaries.append(audience_summary(part, catalog, rankings))
        summary = (
            pl.concat(summaries).sort(OFFER_ID)
            if summaries
            else audience_summary({}, catalog, rankings)
        )
        _write_summary(summary, names, temporary)
    logger.info("wrote %d audience files to %s", len(names), directory)
    return summary


def _check_replaceable(directory: Path) -> None:
    """Refuse a folder that holds anything but the files of audiences written there before: a
    folder is replaced as a whole, and a user's files are never removed with it."""
    if not directory.is_dir():
        return
    entries = {entry.name for entry in directory.iterdir()}
    written = set()
    if SUMMARY_FILE in entries:
        written = {SUMMARY_FILE, *read_summary(directory)[FILE_COLUMN].to_list()}
    foreign = sorted(entries - written)
    if foreign:
        raise OffersInputError(
            f"audiences: {directory} holds {foreign[:5]}{' ...' if len(foreign) > 5 else ''}, "
            "which are not audience files; rule: audiences replace only an empty folder or "
            "earlier audiences."
        )


def _write_audience_files(
    audiences: Mapping[str, pl.DataFrame],
    directory: Path,
    taken: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Write one CSV per offer; returns offer_id -> file stem. Raises when stems collide."""
    names = {offer_id: safe_file_name(offer_id) for offer_id in sorted(audiences)}
    every = [*(taken or {}).values(), *names.values()]
    if len({name.casefold() for name in every}) != len(every):
        raise RunError(f"audience file names collide: {sorted(every)}")
    for offer_id, name in names.items():
        _write_csv(audiences[offer_id].select(AUDIENCE_COLUMNS), directory / f"{name}.csv")
    return names


def _write_summary(summary: pl.DataFrame, names: Mapping[str, str], directory: Path) -> None:
    files = pl.Series(FILE_COLUMN, [f"{names[o]}.csv" for o in summary[OFFER_ID]], pl.String)
    _write_csv(
        summary.select(SUMMARY_COLUMNS).with_columns(files).sort(OFFER_ID),
        directory / SUMMARY_FILE,
    )


def read_summary(directory: Path | str) -> pl.DataFrame:
    """The summary.csv of an audience directory (cells as written, numbers typed).

    A summary written before audiences said their ranking reads as ranked by expected value.
    """
    path = Path(directory) / SUMMARY_FILE
    if not path.is_file():
        raise OffersInputError(f"audiences: {path} not found; rule: run the nightly flow first.")
    schema = {
        OFFER_ID: pl.String,
        CATEGORY: pl.String,
        "audience_size": pl.Int64,
        "expected_accepts": pl.Float64,
        EXPECTED_VALUE: pl.Float64,
        "control_size": pl.Int64,
        RANKING: pl.String,
        RANKING_REASON: pl.String,
        QINI: pl.Float64,
        FILE_COLUMN: pl.String,
    }
    summary = pl.read_csv(path, schema_overrides=schema, infer_schema=False)
    defaults = {RANKING: BY_EXPECTED_VALUE, RANKING_REASON: "", QINI: None}
    return (
        summary.with_columns(
            pl.lit(value, dtype=schema[name]).alias(name)
            for name, value in defaults.items()
            if name not in summary.columns
        )
        .select(list(schema))
        .with_columns(pl.col(RANKING_REASON).fill_null(""))
    )


def export_audience(
    directory: Path | str, offer_id: str, out_path: Path | str, overwrite: bool = False
) -> Path:
    """Copy one offer's audience CSV from an audience directory to `out_path`, atomically.

    An existing folder `out_path` receives `<safe offer id>.csv`; an existing file is replaced
    only with `overwrite`. Nothing but the written file is ever touched. Returns the file written.
    """
    name = f"{safe_file_name(offer_id)}.csv"
    source = Path(directory) / name
    if not source.is_file():
        known = read_summary(directory)[OFFER_ID].to_list() if Path(directory).is_dir() else []
        raise OffersInputError(
            f"audiences: offer_id {offer_id!r} has no audience in {directory}; "
            f"known offers: {known[:10]}{' ...' if len(known) > 10 else ''}."
        )
    out_path = Path(out_path)
    if out_path.is_dir():
        out_path = out_path / name
    if out_path.is_dir():
        raise OffersInputError(f"export: {out_path} is a folder; rule: never replaced by a file.")
    if (out_path.exists() or out_path.is_symlink()) and not overwrite:
        raise OffersInputError(
            f"export: {out_path} already exists; rule: an existing file is replaced only with "
            "--force (overwrite=True)."
        )
    with atomic_path(out_path) as temporary:
        shutil.copyfile(source, temporary)
    return out_path
