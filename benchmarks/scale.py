"""Scale benchmark: the nightly increment of Mia at growing subscriber counts.

For each size, a data root is prepared once under benchmarks/results/ (git-ignored):

- the base world is simulated once (`mia.simulate`, `--base` subscribers x `--days` days), every
  day but the last ingested and aggregated; larger sizes are that world replicated with disjoint
  subscriber ids (replica r has id + r x ID_STRIDE), day by day, for raw/, daily/ and the last
  day's delivery, which is quicker than simulating millions of subscribers on a small machine;
- one model is trained once on the base world as of the day before the last (`train_snapshots`
  4), registered in an MLflow store that every size shares and compiled (as the nightly training
  does), so that the measured night finds a fresh champion and does not train;
- the snapshot of the day before the last is built, so that the night computes feature drift.

Then the nightly increment of the last day (ingest -> daily -> snapshot -> score -> rank ->
audiences -> report -> publish, the Prefect flow `flows.nightly.nightly`) runs `--repeats` times,
each in a fresh subprocess whose process tree is sampled for peak RSS; the night's outputs are
removed between repeats. Medians are printed as a Markdown table with per-step times (from the
manifest's durations_seconds), and the log-log slope of time against subscribers.

    python -m benchmarks.scale --subscribers 100000 300000 1000000 --days 90 --repeats 3

With `--train`, the weekly retrain is measured instead: `models.training.train_models` as of the
day before the last on `--train-snapshots` weekly snapshots (13 by default, the setting's
default), with the default settings (2 LightGBM threads, the blend on 3 weeks), registered in an
MLflow store of its own per size. The snapshots are built before the measured runs, as the
nights before a weekly retrain would have built them (their build time is reported beside). Each
run is a fresh subprocess whose process tree is sampled for peak RSS; the table gives wall and CPU
seconds per model family (`TrainingReport.seconds`). The world needs `--days` of at least
`--train-snapshots` x 7 + 15 (120 by default with `--train`).

    python -m benchmarks.scale --train --subscribers 100000 300000 1000000 --days 120 --repeats 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.common import READY, RESULTS, SEED, START, replicated
from features.offer_state import OFFER_STATE
from mia.ingest import MANIFEST_DIR, ingest_day
from mia.lake import PUBLISHED, Lake, atomic_path, remove_path, write_parquet
from mia.schema import SHARD_KEY
from mia.settings import Settings
from mia.simulate import SimulationConfig, generate_days

logger = logging.getLogger(__name__)

# Ranking's per-row cost grows above about 6M candidates a shard (200k subscribers: 11M).
SUBSCRIBERS_PER_SHARD = 100_000
TRAIN_SNAPSHOTS = 4
STEPS = ("ingest", "daily", "snapshot", "score", "rank", "reasons", "audiences", "report")
SAMPLE_SECONDS = 0.2
# What a night reads of the days before it: daily aggregates and the offer state, state tables
# (yesterday's snapshot needs holdings), the offer events of the last 90 days (interactions, lift)
# and the list of ingested days (their ingest manifests). Raw usage, payments, app events and
# transfers of past days are read only to build their daily aggregates, so they are not copied.
REPLICATED = (
    "daily",
    f"raw/{MANIFEST_DIR}",
    "raw/subscribers",
    "raw/offer_events",
    "raw/catalog",
    "raw/holdings",
)


# ---------------------------------------------------------------------------- the worlds


def world_dir(subscribers: int, days: int) -> Path:
    """Cache folder of one benchmark world."""
    return RESULTS / f"scale-{subscribers}x{days}"


def last_day(days: int) -> dt.date:
    """The day whose nightly increment is measured."""
    return START + dt.timedelta(days=days - 1)


def mlflow_overrides(days: int) -> dict[str, str]:
    """Settings of the shared MLflow store of the benchmark: one champion, trained on the base
    world, scores every size (each replicated world is its own data root, shared on purpose)."""
    store = RESULTS / f"scale-mlflow-{days}"
    return {
        "mlflow_uri": f"sqlite:///{store}/mlflow.db",
        "mlflow_artifacts": str(store / "artifacts"),
        "shared_registry": "true",
        "train_snapshots": str(TRAIN_SNAPSHOTS),
    }


def night_settings(root: Path, days: int, n_shards: int = 1) -> Settings:
    """Settings of the benchmark on one data root."""
    overrides = mlflow_overrides(days)
    return Settings(
        data_dir=root,
        mlflow_uri=overrides["mlflow_uri"],
        mlflow_artifacts=Path(overrides["mlflow_artifacts"]),
        shared_registry=True,
        train_snapshots=TRAIN_SNAPSHOTS,
        n_shards=n_shards,
    )


def generate_world(subscribers: int, days: int) -> Path:
    """Simulate the world once (incoming/ of every day) and ingest every day but the last."""
    directory = world_dir(subscribers, days)
    root = directory / "data"
    if (directory / READY).exists():
        return root
    lake = Lake(root)
    config = SimulationConfig(subscribers=subscribers, days=days, start=START, seed=SEED)
    begin = time.perf_counter()
    for number, (date, tables) in enumerate(generate_days(config), start=1):
        if not lake.incoming(date).exists():
            with atomic_path(lake.incoming(date)) as folder:
                folder.mkdir(parents=True)
                for name, frame in tables.items():
                    frame.write_parquet(folder / f"{name}.parquet", compression="zstd")
        if number < days:
            ingest_day(lake, date)
        logger.info("%s: day %d/%d after %.0f s", root, number, days, time.perf_counter() - begin)
    (directory / READY).write_text(f"{time.perf_counter() - begin:.1f}\n")
    return root


def _replicate_tree(
    source: Path,
    target: Path,
    copies: int,
    skip: str = "",
    by_shard: bool = True,
    manifests_only: Collection[str] = (),
) -> None:
    """Every Parquet file below `source`, replicated, at the same place below `target`; stored
    by shard key like the lake's own partitions (not for the drop zone). JSON files (the ingest
    and build manifests that say a day is complete) are copied as they are. Nothing below a
    folder named `skip` is copied, and only the JSON files of the folders in `manifests_only`
    (paths relative to `source`)."""
    for path in sorted([*source.rglob("*.parquet"), *source.rglob("*.json")]):
        parts = path.relative_to(source).parts
        if any(part.startswith(".") for part in parts) or (skip and skip in parts):
            continue
        if (
            path.suffix == ".parquet"
            and path.parent.relative_to(source).as_posix() in manifests_only
        ):
            continue
        out = target / path.relative_to(source)
        if out.exists():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            out.write_bytes(path.read_bytes())
            continue
        frame = pl.read_parquet(path).select(pl.exclude(SHARD_KEY))
        write_parquet(replicated(frame, copies), out, by_shard=by_shard)


def aggregated_base(base: int, days: int) -> Path:
    """The base world: simulated, ingested, its daily aggregates and offer state built up to the
    day before the last (the night then folds its one new day)."""
    from features.daily import build_daily_range
    from features.offer_state import update_offer_state

    root = generate_world(base, days)
    before = last_day(days) - dt.timedelta(days=1)
    build_daily_range(Lake(root), START, before)
    update_offer_state(Lake(root), before)
    return root


def replicate_days(
    base_root: Path, root: Path, copies: int, days: int, every_offer_state: bool = True
) -> None:
    """The base world's stored days (REPLICATED), `copies` times with disjoint ids, under `root`;
    the last day is left out (the measured night writes it). Without `every_offer_state` only
    the offer state of the day before the last is copied, with every day's build manifest (a
    night reads no older state, and the manifests say the older ones are current)."""
    skip = f"date={last_day(days).isoformat()}"
    before = last_day(days) - dt.timedelta(days=1)
    older = [START + dt.timedelta(days=day) for day in range((before - START).days)]
    # Partitions of the older offer states, relative to daily/.
    older_states = set() if every_offer_state else {
        f"{OFFER_STATE}/date={date.isoformat()}" for date in older
    }  # fmt: skip
    for part in REPLICATED:
        manifests_only = older_states if part == "daily" else set()
        _replicate_tree(base_root / part, root / part, copies, skip, manifests_only=manifests_only)


def prepare_base(base: int, days: int) -> Path:
    """The base world, aggregated (`aggregated_base`), with a registered champion trained as of
    the day before the last."""
    from flows.steps import MODEL_NAME, TRAINED_AS_OF_TAG
    from models.registry import champion_info
    from models.scoring import load_bundle
    from models.training import train_models

    root = aggregated_base(base, days)
    lake = Lake(root)
    before = last_day(days) - dt.timedelta(days=1)
    settings = night_settings(root, days)
    info = champion_info(MODEL_NAME, settings)
    if info is None or info.get("tags", {}).get(TRAINED_AS_OF_TAG) != before.isoformat():
        started = time.perf_counter()
        train_models(lake, before, settings)
        logger.info("champion trained as of %s in %.0f s", before, time.perf_counter() - started)
    # Compiled once per model version, as the nightly training does (a no-op when cached).
    started = time.perf_counter()
    load_bundle(settings)
    logger.info("champion compiled (or found compiled) in %.0f s", time.perf_counter() - started)
    return root


def prepare_size(subscribers: int, base: int, days: int) -> Path:
    """Data root of one size, ready for the nightly increment of the last day."""
    from flows import steps

    base_root = prepare_base(base, days)
    if subscribers % base:
        raise SystemExit(f"--subscribers {subscribers} must be a multiple of --base {base}.")
    copies = subscribers // base
    directory = world_dir(subscribers, days) if copies > 1 else world_dir(base, days)
    root = directory / "data"
    marker = directory / f"{READY}-night"
    if not marker.exists():
        started = time.perf_counter()
        if copies > 1:
            replicate_days(base_root, root, copies, days, every_offer_state=False)
            incoming = Lake(base_root).incoming(last_day(days))
            _replicate_tree(incoming, Lake(root).incoming(last_day(days)), copies, by_shard=False)
        settings = night_settings(root, days, n_shards_for(subscribers))
        steps.snapshot(Lake(root), last_day(days) - dt.timedelta(days=1), settings)
        marker.write_text(f"{time.perf_counter() - started:.1f}\n")
        logger.info("%d subscribers ready in %.0f s", subscribers, time.perf_counter() - started)
    return root


def n_shards_for(subscribers: int) -> int:
    """Default shard count: about SUBSCRIBERS_PER_SHARD subscribers per shard."""
    return max(1, round(subscribers / SUBSCRIBERS_PER_SHARD))


def clear_night(root: Path, date: dt.date) -> None:
    """Remove what the night of `date` wrote, so that the next repeat does the same work."""
    lake = Lake(root)
    for table in [path.name for path in (root / "raw").iterdir()]:
        remove_path(lake.raw(table, date))
    for table in [path.name for path in (root / "daily").iterdir()]:
        remove_path(lake.daily(table, date))
    links = [lake.link(product, date) for product in PUBLISHED]
    for path in (lake.snapshot(date), lake.night_versions(date), *links):
        remove_path(path)
    for leftover in root.glob("**/.*tmp-*"):
        remove_path(leftover)
    staging = root / "staging"
    if staging.exists():
        shutil.rmtree(staging)


# ---------------------------------------------------------------------------- measuring


def _tree_rss(process) -> int:
    import psutil

    total = 0
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for member in family:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def _sampled_child(arguments: list[str], env: dict[str, str]) -> dict[str, float]:
    """`python -m benchmarks.scale ARGUMENTS` in a fresh subprocess: its wall time and the peak
    RSS of its process tree, with the JSON object it printed last."""
    import psutil

    started = time.perf_counter()
    command = [sys.executable, "-m", "benchmarks.scale", *arguments]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    watched = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss(watched))
        time.sleep(SAMPLE_SECONDS)
    wall = time.perf_counter() - started
    output = process.stdout.read() if process.stdout else ""
    if process.returncode:
        raise RuntimeError(f"child {arguments[:2]} failed with exit {process.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    return {"process_seconds": wall, "peak_rss_gb": peak / 2**30, **result}


def _child_env() -> dict[str, str]:
    """Environment of a measured child: quiet Prefect and MLflow, one Prefect database."""
    home = RESULTS / "prefect-home"  # one Prefect database for every run: migrated once
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
    }


def run_child(root: Path, date: dt.date, n_shards: int, days: int) -> dict[str, float]:
    """One nightly increment in a fresh subprocess: wall time, peak tree RSS, step durations."""
    arguments = ["--child", str(root), "--date", date.isoformat(), "--days", str(days)]
    return _sampled_child([*arguments, "--n-shards", str(n_shards)], _child_env())


def child(root: Path, date: dt.date, n_shards: int, days: int) -> None:
    """Inside the subprocess: run the nightly flow and print its timings as one JSON line."""
    from flows.nightly import nightly, peak_rss_gb

    overrides = {**mlflow_overrides(days), "n_shards": str(n_shards)}
    started = time.perf_counter()
    manifest = nightly(date=date.isoformat(), data_dir=str(root), overrides=overrides)
    flow_seconds = time.perf_counter() - started
    if manifest["models"]["trained_tonight"]:
        raise RuntimeError("the benchmark night trained a model; the champion is not fresh")
    sys.stdout.write(
        json.dumps(
            {
                "flow_seconds": flow_seconds,
                "own_peak_rss_gb": peak_rss_gb(),
                "subscribers": manifest["rows"]["subscribers"],
                "offers": manifest["rows"]["offers"],
                "audience_rows": manifest["rows"]["audience_rows"],
                **{f"step_{name}": value for name, value in manifest["durations_seconds"].items()},
                **{f"rss_{name}": value for name, value in manifest["peak_rss_gb_after"].items()},
                **{f"cpu_{name}": value for name, value in manifest["cpu_seconds"].items()},
            }
        )
        + "\n"
    )


def measure(subscribers: int, base: int, days: int, repeats: int, n_shards: int | None) -> dict:
    """Medians over `repeats` nightly increments of one size."""
    root = prepare_size(subscribers, base, days)
    shards = n_shards or n_shards_for(subscribers)
    date = last_day(days)
    runs = []
    for repeat in range(repeats):
        clear_night(root, date)
        runs.append(run_child(root, date, shards, days))
        logger.info("%d subscribers, run %d: %s", subscribers, repeat + 1, runs[-1])
    for run in runs:
        run["steps_seconds"] = sum(run.get(f"step_{name}", 0.0) for name in STEPS)
        run["steps_cpu_seconds"] = sum(run.get(f"cpu_{name}", 0.0) for name in STEPS)
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return {"size": subscribers, "n_shards": shards, "repeats": repeats, **medians}


# ---------------------------------------------------------------------------- the weekly retrain

# Where a retrain spends its time (`TrainingReport.seconds`), in the order training runs them.
TRAIN_PARTS = (
    "snapshots", "labels", "responses", "als_tuning", "propensity", "als", "taste",
    "blend_inputs", "blend", "holdout_metrics", "registry",
)  # fmt: skip


def min_train_days(snapshots: int) -> int:
    """Days a world needs so that `snapshots` weekly snapshots have a week of history each."""
    return snapshots * 7 + 15


def train_settings(root: Path, snapshots: int) -> Settings:
    """Settings of the measured retrain: the defaults, with an MLflow store of the size's own."""
    store = root.parent / "train-mlflow"
    return Settings(
        data_dir=root,
        mlflow_uri=f"sqlite:///{store}/mlflow.db",
        mlflow_artifacts=store / "artifacts",
        train_snapshots=snapshots,
    )


def prepare_training(subscribers: int, base: int, days: int, snapshots: int) -> tuple[Path, float]:
    """Data root of one size ready for a retrain as of the day before the last, with every
    snapshot the retrain reads built; and the seconds building them took (when first built)."""
    from features.offer_state import update_offer_state
    from models.training import read_or_build_snapshot, snapshot_dates

    if subscribers % base:
        raise SystemExit(f"--subscribers {subscribers} must be a multiple of --base {base}.")
    before = last_day(days) - dt.timedelta(days=1)
    base_root = aggregated_base(base, days)
    copies = subscribers // base
    root = world_dir(subscribers, days) / "data" if copies > 1 else base_root
    marker = root.parent / f"{READY}-train-{snapshots}"
    if not marker.exists():
        if copies > 1:
            replicate_days(base_root, root, copies, days)
            update_offer_state(Lake(root), before)
        settings = train_settings(root, snapshots)
        started = time.perf_counter()
        for date in [*snapshot_dates(before, settings), before]:
            read_or_build_snapshot(Lake(root), date, settings)
        marker.write_text(f"{time.perf_counter() - started:.1f}\n")
        logger.info("%d subscribers: snapshots built in %s s", subscribers, marker.read_text())
    return root, float(marker.read_text())


def train_child(root: Path, date: dt.date, snapshots: int) -> None:
    """Inside the subprocess: one weekly retrain; its seconds per part as one JSON line."""
    from flows.nightly import peak_rss_gb
    from models.training import train_models

    wall, cpu = time.perf_counter(), time.process_time()
    report = train_models(Lake(root), date, train_settings(root, snapshots))
    result = {
        "train_seconds": time.perf_counter() - wall,
        "train_cpu_seconds": time.process_time() - cpu,
        "own_peak_rss_gb": peak_rss_gb(),
        "train_snapshots": len(report.snapshot_dates),
        **{f"wall_{part}": value for part, value in report.seconds.wall.items()},
        **{f"cpu_{part}": value for part, value in report.seconds.cpu.items()},
        **{
            f"peak_rise_gb_{part}": value / 2**30
            for part, value in report.seconds.peak_rise.items()
        },
    }
    sys.stdout.write(json.dumps(result) + "\n")


def measure_training(
    subscribers: int, base: int, days: int, repeats: int, snapshots: int
) -> dict[str, float]:
    """Medians over `repeats` weekly retrains of one size."""
    root, snapshot_seconds = prepare_training(subscribers, base, days, snapshots)
    date = last_day(days) - dt.timedelta(days=1)
    runs = []
    for repeat in range(repeats):
        arguments = ["--train-child", str(root), "--date", date.isoformat()]
        runs.append(_sampled_child([*arguments, "--train-snapshots", str(snapshots)], _child_env()))
        logger.info("%d subscribers, retrain %d: %s", subscribers, repeat + 1, runs[-1])
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return {
        "size": subscribers,
        "repeats": repeats,
        "snapshot_build_seconds": snapshot_seconds,
        **medians,
    }


def train_table(rows: list[dict]) -> str:
    """The Markdown tables of the measured retrains: wall (CPU) seconds per part, then by how much
    each part raised the training process's peak RSS (the largest rise is what set the peak)."""
    header = ["subscribers", "weeks", "retrain", *TRAIN_PARTS, "peak RSS (GiB)"]
    seconds = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    header = ["subscribers", "own peak RSS (GiB)", *TRAIN_PARTS]
    rises = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for row in rows:
        cells = [
            f"{row['size']:,}",
            f"{row['train_snapshots']:.0f}",
            _wall_cpu(row["train_seconds"], row["train_cpu_seconds"], "{:.0f}"),
            *[
                _wall_cpu(row.get(f"wall_{part}", 0.0), row.get(f"cpu_{part}", 0.0), "{:.0f}")
                for part in TRAIN_PARTS
            ],
            f"{row['peak_rss_gb']:.1f}",
        ]
        seconds.append("| " + " | ".join(cells) + " |")
        cells = [
            f"{row['size']:,}",
            f"{row['own_peak_rss_gb']:.1f}",
            *[_gigabytes(row.get(f"peak_rise_gb_{part}")) for part in TRAIN_PARTS],
        ]
        rises.append("| " + " | ".join(cells) + " |")
    return "\n".join(seconds) + "\n\nRise of peak RSS per part (GiB):\n\n" + "\n".join(rises)


def _gigabytes(value: float | None) -> str:
    return "-" if value is None else f"+{value:.1f}"


def exponent(sizes: list[float], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) against log(sizes)."""
    if len(sizes) < 2:
        return float("nan")
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def table(rows: list[dict]) -> str:
    """The Markdown table of the measured sizes: wall (CPU) seconds per step, the CPU time of the
    flow process (every thread); runs measured before CPU was recorded show wall time alone."""
    header = ["subscribers", "shards", "flow (s)", "steps (s)", *STEPS, "peak RSS (GB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for row in rows:
        cells = [
            f"{row['size']:,}",
            str(row["n_shards"]),
            f"{row['flow_seconds']:.0f}",
            _wall_cpu(row.get("steps_seconds"), row.get("steps_cpu_seconds"), "{:.0f}"),
            *[_wall_cpu(row.get(f"step_{name}"), row.get(f"cpu_{name}")) for name in STEPS],
            f"{row['peak_rss_gb']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _wall_cpu(wall: float | None, cpu: float | None, form: str = "{:.1f}") -> str:
    """Seconds as "wall (CPU)"; the wall time alone where no CPU time was recorded."""
    if wall is None:
        return "-"
    return form.format(wall) if cpu is None else f"{form.format(wall)} ({form.format(cpu)})"


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--base", type=int, default=100_000, help="simulated subscribers")
    parser.add_argument("--days", type=int, default=None, help="default: 90, 120 with --train")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-shards", type=int, default=None, help="default: about 1 per 100k")
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--train", action="store_true", help="measure the weekly retrain")
    parser.add_argument("--train-snapshots", type=int, default=Settings().train_snapshots)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--train-child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--date", type=dt.date.fromisoformat, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.child is not None:
        child(args.child, args.date, args.n_shards, args.days)
        return
    if args.train_child is not None:
        train_child(args.train_child, args.date, args.train_snapshots)
        return
    if args.train:
        train(args)
        return
    args.days = args.days or 90
    for subscribers in sorted(args.subscribers):
        prepare_size(subscribers, args.base, args.days)
    if args.prepare_only:
        return
    rows = []
    for subscribers in sorted(args.subscribers):
        rows.append(measure(subscribers, args.base, args.days, args.repeats, args.n_shards))
        (RESULTS / "scale.json").write_text(json.dumps(rows, indent=2) + "\n")
    if rows:
        report(table(rows), rows, ("flow_seconds", "steps_seconds", "peak_rss_gb"))


def report(markdown: str, rows: list[dict], keys: tuple[str, ...]) -> None:
    """Print a measured table and the log-log slopes of `keys` against subscribers."""
    sizes = [row["size"] for row in rows]
    slopes = {key: exponent(sizes, [row[key] for row in rows]) for key in keys}
    sys.stdout.write(
        markdown
        + "\n\nlog-log slopes against subscribers: "
        + ", ".join(f"{key} {value:.2f}" for key, value in slopes.items())
        + "\n"
    )


def train(args: argparse.Namespace) -> None:
    """The weekly retrain at each size: prepare, measure, print the table and the slopes."""
    days = args.days or max(120, min_train_days(args.train_snapshots))
    if days < min_train_days(args.train_snapshots):
        raise SystemExit(
            f"--days {days}: {args.train_snapshots} weekly snapshots need a world of at least "
            f"{min_train_days(args.train_snapshots)} days."
        )
    for subscribers in sorted(args.subscribers):
        prepare_training(subscribers, args.base, days, args.train_snapshots)
    if args.prepare_only:
        return
    # Sizes measured before and not now keep their rows: a 1M retrain is measured on its own.
    path = RESULTS / "scale-train.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    for subscribers in sorted(args.subscribers):
        row = measure_training(subscribers, args.base, days, args.repeats, args.train_snapshots)
        rows = sorted(
            [*(r for r in rows if r["size"] != subscribers), row], key=lambda r: r["size"]
        )
        path.write_text(json.dumps(rows, indent=2) + "\n")
    if rows:
        report(train_table(rows), rows, ("train_seconds", "train_cpu_seconds", "peak_rss_gb"))


if __name__ == "__main__":
    main()
