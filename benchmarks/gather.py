"""Gather benchmark: the night's offers of every shard into one file sorted by subscriber and rank.

Each shard's explained offers are a Parquet file sorted by subscriber_id (as `explain_shard`
writes them); the night publishes their union sorted by (subscriber_id, rank). Three ways of
doing it run side by side, each in a fresh subprocess so that its peak memory (max RSS) is its
own:

- mia: `mia.lake.merge_sorted_parquet`, the part-by-part merge the nightly flow uses;
- polars: one lazy scan of the files, sorted in memory (the streaming engine) and written;
- duckdb: `COPY (SELECT ... ORDER BY subscriber_id, rank) TO ... (FORMAT parquet)`.

The offers are generated (the columns and widths of real offers, 3 to 6 per subscriber, reasons
drawn from a vocabulary) once per size under benchmarks/results/ and reused. The outputs are
checked equal, and medians of the wall time and peak RSS are printed as a Markdown table, with the
log-log slope of each engine's peak memory against subscribers.

    python -m benchmarks.gather --subscribers 1000000 4000000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.common import READY, RESULTS, SEED, peak_mib, run_child
from benchmarks.scale import exponent, n_shards_for
from mia.hashing import shard_of
from mia.lake import PARQUET_COMPRESSION, merge_sorted_parquet, write_parquet
from mia.schema import SUBSCRIBER_ID

logger = logging.getLogger(__name__)

ENGINES = ("mia", "polars", "duckdb")
BY = [SUBSCRIBER_ID, "rank"]
OFFERS = 25
REASON_WORDS = 5_000  # distinct reason texts


def generate_offers(subscribers: int, directory: Path, seed: int = SEED) -> list[Path]:
    """Explained offers of `subscribers` subscribers, one sorted file per shard (cached)."""
    files = [directory / f"shard-{shard:04d}.parquet" for shard in range(n_shards_for(subscribers))]
    if (directory / READY).exists():
        return files
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(20 * subscribers, subscribers, replace=False)).astype(np.int64) + 1
    per_subscriber = rng.integers(3, 7, subscribers)
    rows = int(per_subscriber.sum())
    offer = rng.integers(0, OFFERS, rows)
    offer_ids = pl.Series([f"offer_{number:02d}" for number in range(OFFERS)])
    categories = pl.Series([f"category_{number % 8}" for number in range(OFFERS)])
    reasons = pl.Series(
        [
            f"data use up {word % 90}% in 30 days; {word % 13} roaming days; spend {word % 70} EUR"
            for word in range(REASON_WORDS)
        ]
    )
    p_accept = rng.random(rows)
    value = rng.integers(1, 30, rows).astype(np.float64)
    offers = pl.DataFrame(
        {
            SUBSCRIBER_ID: np.repeat(ids, per_subscriber),
            "offer_id": offer_ids.gather(offer),
            "category": categories.gather(offer),
            "p_accept": p_accept,
            "value": value,
            "expected_value": p_accept * value,
            "reasons": reasons.gather(rng.integers(0, REASON_WORDS, rows)),
            "model_version": "7",
            "run_id": "20260331-0123456789",
            "explore": rng.random(rows) < 0.05,
        }
    ).with_columns(pl.int_range(1, pl.len() + 1).over(SUBSCRIBER_ID).alias("rank"))
    offers = offers.select(SUBSCRIBER_ID, "rank", pl.exclude(SUBSCRIBER_ID, "rank"))
    shards = shard_of(offers[SUBSCRIBER_ID].to_numpy(), len(files))
    for shard, file in enumerate(files):
        write_parquet(offers.filter(shards == shard), file, sorted_by=SUBSCRIBER_ID)
    (directory / READY).write_text(f"{rows}\n")
    return files


def run_mia(files: list[Path], output: Path) -> None:
    """The nightly flow's gather."""
    merge_sorted_parquet(files, output, by=BY)


def run_polars(files: list[Path], output: Path) -> None:
    """Every shard's offers sorted at once in memory."""
    offers = pl.scan_parquet(files).sort(BY).collect(engine="streaming")
    offers.write_parquet(output, compression=PARQUET_COMPRESSION, statistics=True)


def run_duckdb(files: list[Path], output: Path) -> None:
    """DuckDB's sort, which spills to disk when it must."""
    import duckdb

    sources = ", ".join(f"'{file}'" for file in files)
    duckdb.connect().execute(
        f"COPY (SELECT * FROM read_parquet([{sources}]) ORDER BY {', '.join(BY)}) "
        f"TO '{output}' (FORMAT parquet, COMPRESSION zstd)"
    )


RUNNERS = {"mia": run_mia, "polars": run_polars, "duckdb": run_duckdb}


def _child(engine: str, directory: Path, output: Path) -> None:
    """Run one engine once in this (fresh) process; print its wall time and peak memory."""
    files = sorted(directory.glob("shard-*.parquet"))
    started = time.perf_counter()
    RUNNERS[engine](files, output)
    wall = time.perf_counter() - started
    sys.stdout.write(json.dumps({"wall_s": wall, "peak_mib": peak_mib()}) + "\n")


def measure(subscribers: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median wall time and peak RSS of every engine at one size; raises if outputs differ."""
    directory = RESULTS / f"gather-{subscribers}"
    files = generate_offers(subscribers, directory)
    runs: dict[str, list[dict[str, float]]] = {engine: [] for engine in ENGINES}
    with tempfile.TemporaryDirectory(dir=RESULTS) as scratch:
        outputs = {engine: Path(scratch) / f"{engine}.parquet" for engine in ENGINES}
        for repeat in range(repeats):
            for engine in ENGINES:
                arguments = ["--offers", str(directory), "--output", str(outputs[engine])]
                runs[engine].append(run_child("benchmarks.gather", engine, arguments))
                logger.info(
                    "%d subscribers, run %d, %s: %s",
                    subscribers,
                    repeat + 1,
                    engine,
                    runs[engine][-1],
                )
        reference = pl.read_parquet(outputs["mia"])
        for engine in ENGINES[1:]:
            if not pl.read_parquet(outputs[engine]).equals(reference):
                raise AssertionError(f"{engine}'s offers differ from mia's at {subscribers}")
    medians = {
        engine: {
            key: statistics.median(run[key] for run in engine_runs)
            for key in ("wall_s", "peak_mib")
        }
        for engine, engine_runs in runs.items()
    }
    return {"rows": reference.height, "shards": len(files), **medians}


def table(results: dict[int, dict]) -> str:
    """Markdown table of the medians, Mia's ratios to each engine, and memory slopes."""
    lines = [
        "| subscribers | offers | shards | engine | wall (s) | peak RSS (MiB) "
        "| Mia / engine: time | memory |",
        "|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for subscribers, result in results.items():
        mia = result["mia"]
        for engine in ENGINES:
            wall, peak = result[engine]["wall_s"], result[engine]["peak_mib"]
            lines.append(
                f"| {subscribers:,} | {result['rows']:,} | {result['shards']} | {engine} "
                f"| {wall:.2f} | {peak:.0f} | {mia['wall_s'] / wall:.2f} "
                f"| {mia['peak_mib'] / peak:.2f} |"
            )
    sizes = list(results)
    slopes = ", ".join(
        f"{engine} {exponent(sizes, [results[size][engine]['peak_mib'] for size in sizes]):.2f}"
        for engine in ENGINES
    )
    return (
        "\n".join([*lines, "", f"Log-log slope of peak RSS against subscribers: {slopes}."]) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gather", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--offers", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.offers, args.output)
        return 0
    if min(args.subscribers) < 1 or args.repeats < 1:
        parser.error("--subscribers >= 1 and --repeats >= 1 are required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = {size: measure(size, args.repeats) for size in sorted(args.subscribers)}
    (RESULTS / "gather.json").write_text(json.dumps(results, indent=2) + "\n")
    sys.stdout.write(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
