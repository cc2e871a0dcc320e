"""Prefect flows: the nightly run, training, and backfills.

The flow bodies are short sequences of tasks; each task is a few lines around one step from
`flows.steps`. Tasks pass dates and paths, not frames: results live in the data root, which is also
what lets a re-run of the same date reuse the days and snapshots already built.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows import steps
from flows.publish import Staging, clear_stale_staging, publish
from mia.lake import Lake, parse_date, run_lock
from mia.memory import peak_rss_bytes
from mia.progress import report_progress
from mia.settings import Settings, load_settings

logger = logging.getLogger(__name__)

IO_RETRIES = 2
# The steps of a night, in order, as progress reports name them.
NIGHTLY_STEPS = (
    "ingest", "daily", "snapshot", "train", "score", "rank", "reasons", "audiences", "report",
    "publish",
)  # fmt: skip


def _settings(
    data_dir: str | None, overrides: dict[str, Any] | None, config: str | None
) -> Settings:
    return load_settings(
        config_file=Path(config) if config else None, data_dir=data_dir, **(overrides or {})
    )


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GiB (0 where the platform has none)."""
    return peak_rss_bytes() / 2**30


@contextmanager
def _timed(
    timings: dict[str, float], step: str, memory: dict[str, float], cpu: dict[str, float]
) -> Iterator[None]:
    """Report the step as under way; record its wall time, this process's CPU time (every
    thread's, user + system) and its peak memory so far once it ends."""
    report_progress("nightly", NIGHTLY_STEPS.index(step), len(NIGHTLY_STEPS), step)
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        timings[step] = round(time.perf_counter() - started, 3)
        cpu[step] = round(time.process_time() - cpu_started, 3)
        memory[step] = round(peak_rss_gb(), 3)


def default_as_of(settings: Settings, today: dt.date | None = None) -> dt.date:
    """The night's date when none is given: yesterday in the configured time zone."""
    if today is None:
        from zoneinfo import ZoneInfo

        today = dt.datetime.now(ZoneInfo(settings.timezone)).date()
    return today - dt.timedelta(days=1)


@task(name="ingest new days", cache_policy=NO_CACHE)
def ingest_task(lake: Lake, as_of: dt.date, settings: Settings) -> list[dt.date]:
    """Validate and store the delivered days up to `as_of`."""
    return steps.ingest_new_days(lake, as_of, settings)


@task(name="daily aggregates", cache_policy=NO_CACHE)
def daily_task(lake: Lake, as_of: dt.date, rebuild: list[dt.date]) -> list[dt.date]:
    """Fold new days into per-subscriber daily aggregates."""
    return steps.update_daily_aggregates(lake, as_of, rebuild=set(rebuild))


@task(name="snapshot shard", cache_policy=NO_CACHE)
def snapshot_shard_task(lake: Lake, as_of: dt.date, settings: Settings, shard: int) -> int:
    """Build the snapshot rows of one shard of subscribers."""
    return steps.snapshot_shard(lake, as_of, settings, shard)


def wait_all(futures: Any) -> list[Any]:
    """The results of mapped task futures, once all are done; raises if any task failed."""
    wait(futures)
    return [future.result() for future in futures]


def sharded_snapshot(lake: Lake, as_of: dt.date, settings: Settings) -> int:
    """The snapshot as one mapped task per shard, swapped in when every shard is built."""
    steps.begin_snapshot(lake, as_of)
    # Settings is a pydantic model, which Prefect would map over field by field: unmapped.
    shards = list(range(settings.n_shards))
    futures = snapshot_shard_task.map(lake, as_of, unmapped(settings), shards)
    rows = sum(wait_all(futures))
    steps.finish_snapshot(lake, as_of, settings)
    return rows


@task(name="train models", cache_policy=NO_CACHE)
def train_task(lake: Lake, as_of: dt.date, settings: Settings) -> dict[str, Any]:
    """Train, evaluate and register the models; promote through the quality gate."""
    return steps.train(lake, as_of, settings)


@task(name="score shard", cache_policy=NO_CACHE)
def score_shard_task(
    lake: Lake, as_of: dt.date, settings: Settings, shard: int, directory: Path
) -> steps.ShardResult:
    """Eligibility and P(accept) for the subscribers of one shard."""
    return steps.score_shard(lake, as_of, settings, shard, directory)


@task(name="rank offers", cache_policy=NO_CACHE)
def rank_task(
    lake: Lake, as_of: dt.date, settings: Settings, staging: Staging, shards: list
) -> dict:
    """Contact policy and top-K offers per subscriber."""
    return steps.rank(lake, as_of, settings, staging, shards)


@task(name="explain shard", cache_policy=NO_CACHE)
def explain_shard_task(
    lake: Lake, as_of: dt.date, settings: Settings, staging: Staging, shard: int
) -> int:
    """Reasons in words for the ranked offers of one shard."""
    return steps.explain_shard(lake, as_of, settings, staging, shard)


@task(name="audiences", cache_policy=NO_CACHE)
def audiences_task(
    lake: Lake, as_of: dt.date, settings: Settings, staging: Staging, shards: list
) -> dict:
    """Audience CSVs per offer with control flags."""
    return steps.audiences(lake, as_of, settings, staging, shards)


@task(name="report", cache_policy=NO_CACHE)
def report_task(
    lake: Lake, as_of: dt.date, settings: Settings, staging: Staging, facts: dict
) -> str:
    """Write the run report; attach it to the flow run and to an MLflow run of the night."""
    path = steps.report(lake, as_of, settings, staging, facts)
    create_markdown_artifact(
        path.read_text(), key=f"mia-report-{as_of.isoformat()}", description="Mia nightly report"
    )
    return steps.track_night(settings, as_of, staging, facts, path.parent)


@task(name="publish", cache_policy=NO_CACHE, retries=IO_RETRIES)
def publish_task(staging: Staging, manifest: dict[str, Any], keep_versions: int) -> str:
    """Publish the night's outputs as one new version, atomically; a retry completes it."""
    return str(publish(staging, manifest, keep_versions))


def score_shards(
    lake: Lake, as_of: dt.date, settings: Settings, shards: list[int], directory: Path
) -> list[steps.ShardResult]:
    """One mapped scoring task per shard: `score_workers` at a time in a local run, on the
    flow's own task runner (e.g. Dask) otherwise."""
    parameters = {
        "lake": lake,
        "as_of": as_of,
        "settings": unmapped(settings),
        "shard": shards,
        "directory": directory,
    }
    if settings.dask_address or settings.score_workers == 1:
        return wait_all(score_shard_task.map(**parameters))
    with ThreadPoolTaskRunner(max_workers=settings.score_workers) as runner:
        return wait_all(runner.map(score_shard_task, parameters))


# Shards run one after another in a local run (scoring excepted, see `score_workers`): each
# already uses every core (polars, LightGBM), and one shard at a time is what keeps peak memory
# at the size of a shard.
@flow(name="mia-nightly", log_prints=False, task_runner=ThreadPoolTaskRunner(max_workers=1))
def nightly(
    date: str | None = None,
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    force_train: bool = False,
    config: str | None = None,
) -> dict[str, Any]:
    """One night: ingest -> daily aggregates -> snapshot (per shard) -> train if due -> score
    (per shard) -> rank -> reasons (per shard) -> audiences -> report -> publish."""
    settings = _settings(data_dir, overrides, config)
    lake = Lake(settings.data_dir)
    as_of = parse_date(date) if date else default_as_of(settings)
    log = get_run_logger()
    with run_lock(lake.root, owner=f"nightly {as_of}"):
        steps.check_model_root(settings)
        clear_stale_staging(lake)
        timings: dict[str, float] = {}
        memory: dict[str, float] = {}  # peak RSS of the flow process after each step
        cpu: dict[str, float] = {}  # CPU seconds of the flow process (not of Dask workers)
        with _timed(timings, "ingest", memory, cpu):
            ingested = ingest_task(lake, as_of, settings)
        with _timed(timings, "daily", memory, cpu):
            daily_task(lake, as_of, ingested)
        with _timed(timings, "snapshot", memory, cpu):
            subscribers = sharded_snapshot(lake, as_of, settings)
        due, why = steps.training_due(settings, as_of)
        training: dict[str, Any] = {"trained": False, "note": why}
        if due or force_train:
            log.info("training: %s", why if due else "forced")
            with _timed(timings, "train", memory, cpu):
                training = train_task(lake, as_of, settings)
        staging = Staging(lake, as_of, steps.run_id(lake, as_of, settings), timings, memory, cpu)
        shard_numbers = list(range(settings.n_shards))
        with _timed(timings, "score", memory, cpu):
            shards = score_shards(lake, as_of, settings, shard_numbers, staging.work("candidates"))
        with _timed(timings, "rank", memory, cpu):
            ranked = rank_task(lake, as_of, settings, staging, shards)
        with _timed(timings, "reasons", memory, cpu):
            wait_all(
                explain_shard_task.map(lake, as_of, unmapped(settings), staging, shard_numbers)
            )
            steps.gather_offers(settings, staging)
        with _timed(timings, "audiences", memory, cpu):
            audience = audiences_task(lake, as_of, settings, staging, shards)
        facts = {"subscribers": subscribers, "training": training, **ranked, **audience}
        facts["ingested_tonight"] = ingested
        with _timed(timings, "report", memory, cpu):
            facts["mlflow_nightly_run_id"] = report_task(lake, as_of, settings, staging, facts)
        manifest = steps.manifest(lake, as_of, settings, staging, facts, ingested)
        with _timed(timings, "publish", memory, cpu):
            path = publish_task(staging, manifest, settings.keep_night_versions)
        report_progress("nightly", len(NIGHTLY_STEPS), len(NIGHTLY_STEPS))
    log.info("published %s: %s", as_of, path)
    return json.loads(Path(path).read_text())


def nightly_for(settings: Settings):
    """The nightly flow, on a Dask cluster when `settings.dask_address` is set.

    Only the mapped per-shard tasks go to the task runner; the other steps run in the flow's own
    process, so a Dask cluster parallelises exactly the work that grows with subscribers.
    """
    if not settings.dask_address:
        return nightly
    from prefect_dask import DaskTaskRunner

    return nightly.with_options(task_runner=DaskTaskRunner(address=settings.dask_address))


@flow(name="mia-train")
def train(
    date: str,
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    config: str | None = None,
) -> dict:
    """Train and register models as of a date (ingesting and aggregating what is needed)."""
    settings = _settings(data_dir, overrides, config)
    lake = Lake(settings.data_dir)
    as_of = parse_date(date)
    with run_lock(lake.root, owner=f"train {as_of}"):
        steps.check_model_root(settings)
        ingested = ingest_task(lake, as_of, settings)
        daily_task(lake, as_of, ingested)
        sharded_snapshot(lake, as_of, settings)
        return train_task(lake, as_of, settings)


@flow(name="mia-backfill")
def backfill(
    start: str,
    end: str,
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    snapshots: bool = False,
    config: str | None = None,
) -> list[str]:
    """Ingest and aggregate every day in [start, end]; optionally build each day's snapshot."""
    settings = _settings(data_dir, overrides, config)
    lake = Lake(settings.data_dir)
    first, last = parse_date(start), parse_date(end)
    if last < first:
        from mia.errors import InputError

        raise InputError(f"backfill end {last} is before its start {first}.")
    done = []
    with run_lock(lake.root, owner=f"backfill {first}..{last}"):
        day = first
        while day <= last:
            ingested = ingest_task(lake, day, settings)
            daily_task(lake, day, ingested)
            if snapshots:
                sharded_snapshot(lake, day, settings)
            done.append(day.isoformat())
            day += dt.timedelta(days=1)
    return done
