"""The data root: partition paths, reads, and atomic writes.

Every write goes to a hidden temporary sibling and is renamed into place only when complete, so a
failed or interrupted run leaves the previous outputs untouched and readable. The swaps here are
for paths Mia owns: a file never replaces a directory, and a path a user names is checked by its
caller before anything is written there.

A published night is one folder per version, `nights/date=D/<version>/{offers,audiences,reports}`,
and a pointer `nights/date=D/current` (a symlink) names the version readers see; `flows.publish`
writes them. `Lake.night` resolves the pointer once, so one reader reads one version.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mia.errors import RunError
from mia.hashing import shard_key, shard_key_range
from mia.schema import SHARD_KEY, SUBSCRIBER_ID

logger = logging.getLogger(__name__)

PARQUET_COMPRESSION = "zstd"
# Row groups of sorted files: small enough that a read of one key range skips most of a file.
ROW_GROUP_ROWS = 65_536
# Rows that merge_sorted_parquet sorts in memory at once: its memory bound, whatever the total.
MERGE_PART_ROWS = 1_000_000
LOCK_FILE = ".mia.lock"
LOCK_HOLDER_FILE = ".mia.lock.holder.json"
NIGHTS = "nights"
CURRENT = "current"  # the pointer of a night: a symlink to its published version
PUBLISHED = ("offers", "audiences", "reports")


class LockedError(RunError):
    """Another run holds the data root."""


class DamagedFileError(RunError):
    """A stored Parquet file of the data root that cannot be read; the message names it and
    says how to rebuild it."""


# What a damaged stored file is read as: polars' errors, or the OS's.
READ_FAILURES = (pl.exceptions.PolarsError, OSError)


class Lake:
    """Paths of one data root, laid out as in DESIGN.md."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def incoming(self, date: dt.date) -> Path:
        """Drop zone of one day's delivered files."""
        return self.root / "incoming" / f"date={date.isoformat()}"

    def raw(self, table: str, date: dt.date) -> Path:
        """Validated input partition of one table and day."""
        return self.root / "raw" / table / f"date={date.isoformat()}"

    def daily(self, table: str, date: dt.date) -> Path:
        """Per-subscriber daily aggregate partition."""
        return self.root / "daily" / table / f"date={date.isoformat()}"

    def snapshot(self, date: dt.date) -> Path:
        """Feature snapshot as of the end of `date`."""
        return self.root / "features" / f"snapshot={date.isoformat()}"

    def night_versions(self, date: dt.date) -> Path:
        """Folder of one night's published versions and its `current` pointer."""
        return self.root / NIGHTS / f"date={date.isoformat()}"

    def night(self, date: dt.date) -> Path | None:
        """The version of a night readers see now (its pointer read once), or None if unpublished.

        A pointer that is a real folder (a copy of the data root that followed links) is read as
        the version itself.
        """
        pointer = self.night_versions(date) / CURRENT
        try:
            return pointer.parent / os.readlink(pointer)
        except FileNotFoundError:
            return None
        except OSError:
            return pointer if pointer.is_dir() else None

    def link(self, product: str, date: dt.date) -> Path:
        """The documented path of a published product, `<product>/date=D` (a link to the night's
        pointer; a real folder in a night published before versions)."""
        return self.root / product / f"date={date.isoformat()}"

    def published(self, product: str, date: dt.date) -> Path:
        """Folder of one published product (offers, audiences, reports) of the current version."""
        version = self.night(date)
        return version / product if version is not None else self.link(product, date)

    def offers(self, date: dt.date) -> Path:
        """Published ranked offers of one night."""
        return self.published("offers", date)

    def audiences(self, date: dt.date) -> Path:
        """Published audience CSVs of one night."""
        return self.published("audiences", date)

    def reports(self, date: dt.date) -> Path:
        """Run report of one night."""
        return self.published("reports", date)

    def dates(self, *parts: str) -> list[dt.date]:
        """Sorted dates of the `date=`/`snapshot=` partitions below root/parts."""
        base = self.root.joinpath(*parts)
        if not base.is_dir():
            return []
        found = []
        for child in base.iterdir():
            if child.is_dir() and "=" in child.name and not child.name.startswith("."):
                with contextlib.suppress(ValueError):
                    found.append(dt.date.fromisoformat(child.name.split("=", 1)[1]))
        return sorted(found)


def parse_date(value: str | dt.date) -> dt.date:
    """A date from an ISO string (YYYY-MM-DD) or a date."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError as error:
        raise ValueError(f"date == {value!r}, must be YYYY-MM-DD.") from error


def end_of_day(date: dt.date) -> dt.datetime:
    """The first instant after `date` (exclusive upper bound of its timestamps)."""
    return dt.datetime.combine(date + dt.timedelta(days=1), dt.time())


def temporary_sibling(path: Path) -> Path:
    """A free hidden name beside `path`, for what is written before it is renamed onto `path`."""
    return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"


_TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.tmp-[0-9a-f]{8}")


def remove_temporaries(directory: Path | str, name: str | None = None) -> list[Path]:
    """Remove the temporary siblings (of `name`, or of any entry) that a killed write left in
    `directory`; returns what was removed. Run it only while holding the data root."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in sorted(directory.iterdir()):
        match = _TEMPORARY_NAME.fullmatch(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        logger.warning("removing %s, left by an interrupted write", entry)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling to write; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        yield temporary
        replace_path(temporary, path)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()


def replace_path(source: Path, target: Path) -> None:
    """Move `source` onto `target`; a directory target is swapped, never half-replaced.

    Only a directory replaces a directory: a file written onto a folder is refused, whatever the
    folder holds.
    """
    if target.is_dir() and not target.is_symlink():
        if not source.is_dir():
            raise IsADirectoryError(f"{target} is a folder; refusing to replace it with a file.")
        retired = temporary_sibling(target)
        os.replace(target, retired)
        os.replace(source, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(source, target)


def fsync_path(path: Path | str) -> None:
    """Flush a file, or a folder's entries, to disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_tree(root: Path | str) -> None:
    """Flush every file below `root`, then every folder's entries, deepest first."""
    folders = []
    for folder, _, files in os.walk(root):
        folders.append(folder)
        for name in files:
            fsync_path(Path(folder) / name)
    for folder in reversed(folders):
        fsync_path(folder)


def remove_path(path: Path | str) -> None:
    """Remove a file, link or directory; a directory is renamed aside first, never seen
    half-removed."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        retired = temporary_sibling(path)
        os.replace(path, retired)
        shutil.rmtree(retired, ignore_errors=True)
    elif path.is_symlink() or path.exists():
        path.unlink()  # a link goes, never what it points to


# Up to this many distinct strings, a stable sort goes by their ranks (see `stably_sorted`).
RANKED_SORT_VALUES = 1 << 16


def stably_sorted(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """`frame.sort(column, maintain_order=True)`, faster for a string column of few distinct
    values: each row's value is replaced by its rank among them and the rows are ordered by a
    stable NumPy sort of those small integers (a radix sort), instead of comparing strings."""
    values = frame[column]
    if values.dtype != pl.String or values.null_count():
        return frame.sort(column, maintain_order=True)
    distinct = values.unique().sort()
    if distinct.len() > RANKED_SORT_VALUES:
        return frame.sort(column, maintain_order=True)
    ranks = values.cast(pl.Enum(distinct)).to_physical().to_numpy().astype(np.uint16)
    return frame[np.argsort(ranks, kind="stable")]


def write_parquet(
    frame: pl.DataFrame, path: Path | str, by_shard: bool = False, sorted_by: str | None = None
) -> Path:
    """Write a frame to a Parquet file atomically (zstd, statistics on).

    With `by_shard`, rows are stored sorted by their subscriber's shard key (`keyed_by_shard`);
    with `sorted_by`, sorted by that column. Either way in row groups of ROW_GROUP_ROWS, whose
    statistics let a filtered scan (one shard, some offers) skip the rest of the file.
    """
    path = Path(path)
    options: dict[str, Any] = {}
    if by_shard and SUBSCRIBER_ID in frame.columns:
        frame = keyed_by_shard(frame)
        options["row_group_size"] = ROW_GROUP_ROWS
    elif sorted_by is not None:
        frame = stably_sorted(frame, sorted_by)
        options["row_group_size"] = ROW_GROUP_ROWS
    with atomic_path(path) as temporary:
        frame.write_parquet(temporary, compression=PARQUET_COMPRESSION, statistics=True, **options)
    return path


def write_partition(
    frame: pl.DataFrame, directory: Path | str, name: str = "part-0", by_shard: bool = False
) -> Path:
    """Replace a whole partition directory with one Parquet file (`write_parquet`), atomically."""
    directory = Path(directory)
    with atomic_path(directory) as temporary:
        temporary.mkdir(parents=True)
        write_parquet(frame, temporary / f"{name}.parquet", by_shard=by_shard)
    return directory


def merge_sorted_parquet(
    files: list[Path], path: Path | str, by: list[str], part_rows: int = MERGE_PART_ROWS
) -> Path:
    """The rows of Parquet `files` as one file sorted by `by`, written atomically, part by part.

    The range of `by[0]` is cut at row-group maxima (Parquet statistics) into parts of about
    `part_rows` rows. Each part is read alone (the statistics skip the other row groups), sorted
    and staged; the staged parts then stream into `path` in order. The result is the union sorted
    by `by` whatever the files; memory stays at one part's size when each file is sorted by
    `by[0]` in row groups of ROW_GROUP_ROWS (`write_parquet(..., sorted_by=by[0])`).
    """
    path = Path(path)
    scan = pl.scan_parquet(files)
    bounds = [None, *_key_cuts(files, by[0], part_rows), None]
    with atomic_path(path) as temporary:
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.parts-", dir=path.parent) as folder:
            parts = []
            for number, (low, high) in enumerate(itertools.pairwise(bounds)):
                part = scan
                if low is not None:
                    part = part.filter(pl.col(by[0]) > low)
                if high is not None:  # nulls sort first, so they belong to the first part
                    part = part.filter((pl.col(by[0]) <= high) | pl.col(by[0]).is_null())
                parts.append(Path(folder) / f"part-{number:06d}.parquet")
                part.sort(by, maintain_order=True).collect().write_parquet(parts[-1])
            pl.scan_parquet(parts).sink_parquet(
                temporary,
                compression=PARQUET_COMPRESSION,
                statistics=True,
                row_group_size=ROW_GROUP_ROWS,
            )
    return path


def _key_cuts(files: list[Path], key: str, part_rows: int) -> list[Any]:
    """Values of `key` that cut the files' rows into ranges of about `part_rows` rows each.

    Taken from row-group maxima; none (one range) when a file has no statistics for `key`.
    """
    import pyarrow.parquet as pq

    maxima = []
    for file in files:
        metadata = pq.ParquetFile(file).metadata
        column = metadata.schema.names.index(key)
        for number in range(metadata.num_row_groups):
            group = metadata.row_group(number)
            statistics = group.column(column).statistics
            if statistics is None or not statistics.has_min_max:
                return []
            maxima.append((statistics.max, group.num_rows))
    cuts: list[Any] = []
    rows = 0
    for value, group_rows in sorted(maxima):
        rows += group_rows
        if rows >= part_rows and (not cuts or value > cuts[-1]):
            cuts.append(value)
            rows = 0
    return cuts


def keyed_by_shard(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with the SHARD_KEY of its subscribers, stably sorted by it."""
    keys = shard_key(frame[SUBSCRIBER_ID].fill_null(0))
    return frame.with_columns(pl.Series(SHARD_KEY, keys)).sort(SHARD_KEY, maintain_order=True)


Shard = tuple[int, int]  # (shard, n_shards)


def only_shard(scan: pl.LazyFrame, shard: Shard | None) -> pl.LazyFrame:
    """The rows of `scan` whose subscriber is in `shard`, without the SHARD_KEY column.

    On files stored `by_shard` the filter is a key range, which skips the row groups of other
    shards; on others the key is computed from subscriber_id.
    """
    names = scan.collect_schema().names()
    if shard is not None and shard[1] > 1 and SUBSCRIBER_ID in names:
        if SHARD_KEY not in names:
            scan = scan.with_columns(
                pl.col(SUBSCRIBER_ID)
                .map_batches(lambda ids: pl.Series(shard_key(ids)), return_dtype=pl.UInt16)
                .alias(SHARD_KEY)
            )
        low, high = shard_key_range(*shard)
        scan = scan.filter(pl.col(SHARD_KEY).is_between(low, high, closed="left"))
    return scan.select(pl.exclude(SHARD_KEY))


def read_partition(
    files: list[Path], shard: Shard | None = None, columns: list[str] | None = None
) -> pl.DataFrame:
    """The rows of the Parquet `files` of one partition (of one shard), without SHARD_KEY;
    only `columns` when given. A damaged file raises DamagedFileError naming it."""
    with naming_damage(files):
        scan = only_shard(pl.scan_parquet(files), shard)
        return (scan if columns is None else scan.select(columns)).collect()


@contextlib.contextmanager
def naming_damage(files: list[Path]) -> Iterator[None]:
    """Turn a read failure inside the block into DamagedFileError naming the damaged one of
    `files` (each is read again to find it; when all read fine, the failure stays as it was)."""
    try:
        yield
    except READ_FAILURES as failure:
        for file in files:
            try:
                pl.scan_parquet(file).collect()
            except READ_FAILURES as error:
                raise damaged_file_error(Path(file), error) from failure
        raise


def damaged_file_error(path: Path, error: Exception) -> DamagedFileError:
    """The error of a stored file that cannot be read: which file, why, how to rebuild it."""
    reason = " ".join(str(error).split())
    partition, table, layer = path.parent.name, path.parent.parent.name, path.parents[2].name
    day = partition.split("=", 1)[1] if partition.startswith("date=") else None
    if layer == "raw" and day:
        remedy = (
            f"re-ingest that day: `mia ingest --date {day}` (its delivery must be in "
            f"incoming/date={day})"
        )
    elif layer == "daily" and day:
        remedy = (
            f"rebuild the {table} aggregates of {day}: remove {path.parent} and run the night "
            "again, which builds the missing aggregate from raw/"
        )
    else:
        remedy = "remove it and run again the step that writes it"
    return DamagedFileError(f"{path} is damaged and cannot be read ({reason}); {remedy}.")


def write_json(payload: Any, path: Path | str) -> Path:
    """Write JSON atomically, keys sorted, so that equal payloads give equal bytes."""
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


def partition_files(directory: Path | str) -> list[Path]:
    """Parquet files of a partition directory, in a stable order."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.glob("*.parquet") if not path.name.startswith("."))


def scan_partitions(
    base: Path | str,
    start: dt.date | None = None,
    end: dt.date | None = None,
    shard: Shard | None = None,
) -> pl.LazyFrame | None:
    """Lazily scan `base/date=D/*.parquet` for D in [start, end], adding a `date` column.

    With `shard`, only that shard's subscribers (`only_shard`); SHARD_KEY is never returned.
    """
    frames = []
    for date, file in files_between(base, start, end):
        with naming_damage([file]):  # a damaged footer fails here, when the schema is read
            scan = only_shard(pl.scan_parquet(file), shard)
        frames.append(scan.with_columns(pl.lit(date).alias("date")))
    if not frames:
        return None
    return pl.concat(frames, how="diagonal_relaxed")


def files_between(
    base: Path | str, start: dt.date | None = None, end: dt.date | None = None
) -> list[tuple[dt.date, Path]]:
    """(date, file) of the Parquet files of `base/date=D/` for D in [start, end], in order."""
    found = []
    for date in Lake(Path(base)).dates():
        if (start is None or date >= start) and (end is None or date <= end):
            partition = Path(base) / f"date={date.isoformat()}"
            found += [(date, file) for file in partition_files(partition)]
    return found


@contextlib.contextmanager
def run_lock(root: Path | str, owner: str = "mia") -> Iterator[Path]:
    """Hold the data root for one run; a second run fails at once with a clear message.

    An exclusive `flock` on root/LOCK_FILE: the kernel releases it when the holder exits or dies,
    however it dies, so a killed run never leaves the root locked and two takers never both win.
    The lock file is never removed (a taker may be about to lock it). Who holds the root (owner,
    pid, start time) is kept in root/LOCK_HOLDER_FILE for the message a second taker sees. The
    descriptor is not inherited across exec, so a child process never keeps the root locked.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lock = root / LOCK_FILE
    handle = os.open(lock, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"data root {root} is in use by {_holder(root)}; wait for it to finish."
            ) from None
        holder = root / LOCK_HOLDER_FILE
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        write_json({"owner": owner, "pid": os.getpid(), "started": started}, holder)
        try:
            yield lock
        finally:
            holder.unlink(missing_ok=True)
    finally:
        os.close(handle)  # releases the lock


def _holder(root: Path) -> str:
    """Who holds the root, in words, from LOCK_HOLDER_FILE (written once the lock is taken)."""
    try:
        holder = json.loads((root / LOCK_HOLDER_FILE).read_text())
        return f"{holder['owner']} (pid {holder['pid']}, started {holder['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another run (starting or finishing)"
