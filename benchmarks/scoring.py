"""Scoring benchmark: the nightly scoring of subscribers x offers, before and after pruning.

A bundle is trained once on a small simulated world (`mia.simulate` -> `mia.ingest` ->
`models.training.train_models`, not registered) and kept, with the last day's snapshot, catalog,
interactions and eligible pairs, under benchmarks/results/. The snapshot (and its eligible pairs
and interactions) is then replicated to N subscribers with new ids and scored two ways, each in a
fresh subprocess so that its peak memory (max RSS) is its own:

- before: the reference path (`reference_score_offers`), i.e. every subscriber x active offer
  through a blend-input frame, and SHAP reasons for every subscriber x category;
- after: `models.scoring.score_offers(..., eligible=pairs, with_reasons=False)`, the contact policy
  (`offers.rank.rank_offers`), then `models.scoring.add_reasons` for the published rows only.

Each part is timed (medians of the repeats) and extrapolated linearly to 1M subscribers. When
lleaves is installed, its compiled trees are timed against LightGBM's `Booster.predict` too.

    python -m benchmarks.scoring --subscribers 200000 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import pickle
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from benchmarks.common import READY, RESULTS, SEED, START, peak_mib, replicated, run_child
from mia.ingest import ingest_day, raw_events, raw_state
from mia.lake import Lake
from mia.schema import CATEGORY, OFFER_ID, P_ACCEPT, REASONS, SUBSCRIBER_ID
from mia.settings import Settings
from mia.simulate import SimulationConfig, write_world
from models.blend import candidate_inputs
from models.reasons import PRIOR_REASON, REASON_SEPARATOR, _cell_states, _phrase_table
from models.scoring import (
    SCORE_COLUMNS,
    ModelBundle,
    active_offers,
    add_reasons,
    score_offers,
)

logger = logging.getLogger(__name__)

VARIANTS = ("before", "after")


# ---------------------------------------------------------------------------- inputs


def prepare(subscribers: int, days: int, directory: Path) -> Path:
    """Simulate, ingest and train once; keep the bundle and the last day's inputs (pickle)."""
    from models.cf import build_interactions
    from models.training import read_or_build_snapshot, train_models
    from offers.eligibility import eligible_pairs

    cached = directory / "inputs.pickle"
    if (directory / READY).exists():
        return cached
    shutil.rmtree(directory, ignore_errors=True)
    root = directory / "data"
    started = time.perf_counter()
    write_world(root, SimulationConfig(subscribers=subscribers, days=days, start=START, seed=SEED))
    lake = Lake(root)
    for date in lake.dates("incoming"):
        ingest_day(lake, date)
    logger.info("world ready in %.1f s", time.perf_counter() - started)
    settings = Settings(
        data_dir=root,
        train_snapshots=4,
    )
    as_of = lake.dates("raw", "subscribers")[-1]
    started = time.perf_counter()
    bundle = train_models(lake, as_of - dt.timedelta(days=7), settings, register=False).bundle
    logger.info("bundle trained in %.1f s", time.perf_counter() - started)
    lookback = max(settings.windows)
    events = raw_events(lake, "offer_events", as_of - dt.timedelta(days=lookback - 1), as_of)
    events = events.collect()
    catalog = raw_state(lake, "catalog", as_of)
    eligible = eligible_pairs(
        raw_state(lake, "subscribers", as_of),
        catalog,
        raw_state(lake, "holdings", as_of),
        events,
        as_of,
    )
    inputs = {
        "bundle": bundle,
        "snapshot": read_or_build_snapshot(lake, as_of, settings),
        "catalog": catalog,
        "interactions": build_interactions(events, as_of, lookback_days=lookback),
        "eligible": eligible,
    }
    with open(cached, "wb") as handle:
        pickle.dump(inputs, handle)
    (directory / READY).write_text("")
    return cached


def replicate(frame: pl.DataFrame, subscribers: int) -> pl.DataFrame:
    """Rows of the first `subscribers` ids of `frame` replicated with new ids (id + r * stride)."""
    ids = frame[SUBSCRIBER_ID].unique().sort()
    copies = -(-subscribers // ids.len())
    keep = replicated(ids.to_frame(), copies)[SUBSCRIBER_ID].head(subscribers)
    return replicated(frame, copies).filter(pl.col(SUBSCRIBER_ID).is_in(keep.implode()))


def load_inputs(path: Path, subscribers: int) -> dict[str, Any]:
    """The cached inputs with snapshot, eligible pairs and interactions replicated."""
    with open(path, "rb") as handle:
        inputs = pickle.load(handle)
    for name in ("snapshot", "eligible", "interactions"):
        inputs[name] = replicate(inputs[name], subscribers)
    inputs["snapshot"] = inputs["snapshot"].head(subscribers)
    return inputs


# ---------------------------------------------------------------------------- the reference path


def reference_reasons(bundle: ModelBundle, snapshot: pl.DataFrame, top_n: int = 3) -> pl.DataFrame:
    """[subscriber_id, category, reasons] the straightforward way: SHAP of every subscriber x
    category, a full stable argsort of the contributions, phrases joined in Python."""
    from features.catalog import describe_feature

    model = bundle.propensity
    x = model.encoding_.matrix(snapshot)
    phrases = _phrase_table(model, describe_feature)
    rows = np.arange(x.shape[0])[:, None]
    frames = []
    for category in model.categories_:
        booster = model.boosters_.get(category)
        if booster is None:
            reasons = [PRIOR_REASON] * x.shape[0]
        else:
            contributions = np.asarray(booster.predict(x, pred_contrib=True))[:, :-1]
            top = np.argsort(-contributions, axis=1, kind="stable")[:, :top_n]
            words = phrases[top, _cell_states(model, x[rows, top], top)]
            reasons = [REASON_SEPARATOR.join(row) for row in words]
        frames.append(
            pl.DataFrame(
                {SUBSCRIBER_ID: snapshot[SUBSCRIBER_ID], CATEGORY: category, REASONS: reasons}
            )
        )
    return pl.concat(frames).sort(SUBSCRIBER_ID, CATEGORY)


def reference_propensity(bundle: ModelBundle, snapshot: pl.DataFrame) -> np.ndarray:
    """Calibrated propensities with each booster reading the column-major snapshot matrix."""
    model = bundle.propensity
    x = model.encoding_.matrix(snapshot)
    result = np.empty((x.shape[0], len(model.categories_)), dtype=np.float64)
    for column, category in enumerate(model.categories_):
        booster = model.boosters_.get(category)
        if booster is None:
            result[:, column] = model.priors_[category]
        else:
            margin = booster.predict(x, raw_score=True, num_threads=model.num_threads)
            result[:, column] = model.calibrators_[category].transform(margin)
    return result


def reference_score_offers(
    bundle: ModelBundle,
    snapshot: pl.DataFrame,
    catalog: pl.DataFrame,
    interactions: pl.DataFrame | None,
    timings: dict[str, float] | None = None,
) -> pl.DataFrame:
    """Scores of every subscriber x active offer through a blend-input frame (the unpruned path);
    seconds per part are added to `timings` when given."""
    timings = {} if timings is None else timings
    clock = _Clock(timings)
    snapshot = snapshot.sort(SUBSCRIBER_ID)
    offers = active_offers(catalog, snapshot["snapshot_date"][0] + dt.timedelta(days=1))
    offers = offers.filter(pl.col(CATEGORY).is_in(bundle.propensity.categories_))
    with clock("propensity predict"):
        p_category = reference_propensity(bundle, snapshot)
    with clock("ALS"):
        cf_scores = bundle.cf.score(snapshot[SUBSCRIBER_ID], offers[OFFER_ID], interactions)
    with clock("blend inputs"):
        frame = blend_frame_from(bundle, snapshot, offers, p_category, cf_scores)
    with clock("blend predict"):
        p_accept = bundle.blend.predict(frame)
    with clock("reasons (SHAP)"):
        reasons = reference_reasons(bundle, snapshot)
    with clock("joins"):
        scored = (
            frame.select(SUBSCRIBER_ID, OFFER_ID, CATEGORY)
            .with_columns(pl.Series(P_ACCEPT, p_accept, dtype=pl.Float64))
            .join(reasons, on=[SUBSCRIBER_ID, CATEGORY], how="left")
            .with_columns(pl.lit(bundle.version, dtype=pl.String).alias("model_version"))
            .select(SCORE_COLUMNS)
            .sort(SUBSCRIBER_ID, OFFER_ID)
        )
    return scored


def blend_frame_from(
    bundle: ModelBundle,
    snapshot: pl.DataFrame,
    offers: pl.DataFrame,
    p_category: np.ndarray,
    cf_scores: np.ndarray,
) -> pl.DataFrame:
    """`models.scoring.blend_frame` from already computed propensities and ALS scores."""
    from models.blend import candidate_features

    return candidate_features(
        snapshot[SUBSCRIBER_ID],
        p_category,
        bundle.propensity.categories_,
        np.asarray(cf_scores, dtype=np.float64),
        offers,
        bundle.offer_stats,
    )


# ---------------------------------------------------------------------------- timing


class _Clock:
    """`with clock(part):` adds the block's wall seconds to timings[part]."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    def __call__(self, part: str) -> _Clock:
        self.part = part
        return self

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.part] = (
            self.timings.get(self.part, 0.0) + time.perf_counter() - self.started
        )


def run_before(inputs: dict[str, Any]) -> dict[str, float]:
    """One timed run of the reference path."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    reference_score_offers(
        inputs["bundle"], inputs["snapshot"], inputs["catalog"], inputs["interactions"], timings
    )
    timings["total"] = time.perf_counter() - started
    return timings


def run_after(inputs: dict[str, Any]) -> dict[str, float]:
    """One timed run of the pruned path: eligible pairs, ranking, reasons for published rows."""
    from mia.schema import SNAPSHOT_DATE
    from offers.groups import assign_groups
    from offers.rank import rank_offers

    bundle, snapshot, catalog = inputs["bundle"], inputs["snapshot"], inputs["catalog"]
    interactions, eligible = inputs["interactions"], inputs["eligible"]
    timings: dict[str, float] = {}
    clock = _Clock(timings)
    started = time.perf_counter()
    # The parts of score_offers, timed one by one (the same calls it makes).
    with clock("propensity predict"):
        x = bundle.propensity.feature_matrix(snapshot)
        p_category = bundle.propensity.predict_features(x)
    offers = active_offers(catalog, snapshot[SNAPSHOT_DATE][0] + dt.timedelta(days=1))
    offers = offers.filter(pl.col(CATEGORY).is_in(bundle.propensity.categories_))
    with clock("ALS"):
        cf_scores = bundle.cf.score(snapshot[SUBSCRIBER_ID], offers[OFFER_ID], interactions)
    with clock("blend inputs"):
        from models.scoring import _cells

        rows, columns = _cells(snapshot.sort(SUBSCRIBER_ID), offers, eligible)
        matrix = candidate_inputs(
            p_category,
            bundle.propensity.categories_,
            np.asarray(cf_scores, dtype=np.float64),
            offers,
            bundle.offer_stats,
        ).matrix(rows, columns)
    with clock("blend predict"):
        bundle.blend.predict_matrix(matrix)
    parts = time.perf_counter() - started
    del x, matrix, p_category, cf_scores
    started = time.perf_counter()
    scores = score_offers(bundle, snapshot, catalog, interactions, False, eligible)
    timings["score_offers (all of the above)"] = time.perf_counter() - started
    timings["joins"] = max(timings["score_offers (all of the above)"] - parts, 0.0)
    groups = assign_groups(snapshot[SUBSCRIBER_ID], Settings())
    with clock("rank (contact policy, not scoring)"):
        ranked = rank_offers(scores, eligible, catalog, groups, Settings(), run_id="benchmark")
    with clock("reasons (SHAP)"):
        add_reasons(bundle, snapshot, ranked)
    timings["total"] = timings["score_offers (all of the above)"] + timings["reasons (SHAP)"]
    timings["published rows"] = float(ranked.height)
    return timings


def time_lleaves(inputs: dict[str, Any], scratch: Path) -> dict[str, float]:
    """Compile and predict times of lleaves against LightGBM, and the largest difference."""
    import lleaves

    bundle, snapshot = inputs["bundle"], inputs["snapshot"]
    x = bundle.propensity.feature_matrix(snapshot)
    result = {"compile": 0.0, "lleaves": 0.0, "lightgbm": 0.0, "max_abs_diff": 0.0}
    boosters = dict(bundle.propensity.boosters_, blend=bundle.blend.booster_)
    rng = np.random.default_rng(SEED)
    blend_x = rng.normal(size=(x.shape[0] * 10, 9))
    blend_x[:, 8] = rng.integers(0, 24, blend_x.shape[0])
    for name, booster in boosters.items():
        data = blend_x if name == "blend" else x
        path = scratch / f"{name}.txt"
        booster.save_model(path)
        started = time.perf_counter()
        model = lleaves.Model(model_file=str(path))
        model.compile(raw_score=name != "blend")
        result["compile"] += time.perf_counter() - started
        started = time.perf_counter()
        compiled = model.predict(data, n_jobs=bundle.propensity.num_threads)
        result["lleaves"] += time.perf_counter() - started
        started = time.perf_counter()
        native = booster.predict(
            data, raw_score=name != "blend", num_threads=bundle.propensity.num_threads
        )
        result["lightgbm"] += time.perf_counter() - started
        result["max_abs_diff"] = max(result["max_abs_diff"], float(np.abs(compiled - native).max()))
    return result


RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, float]]] = {
    "before": run_before,
    "after": run_after,
}


def _child(variant: str, inputs_path: Path, subscribers: int, repeats: int) -> None:
    """Run one variant `repeats` times in this (fresh) process; print medians and peak RSS."""
    inputs = load_inputs(inputs_path, subscribers)
    loaded_mib = peak_mib()
    runs = [RUNNERS[variant](inputs) for _ in range(repeats)]
    medians = {part: statistics.median(run[part] for run in runs) for part in runs[0]}
    report: dict[str, Any] = {"parts": medians, "peak_mib": peak_mib(), "loaded_mib": loaded_mib}
    if variant == "after":
        try:
            with tempfile.TemporaryDirectory() as scratch:
                report["lleaves"] = time_lleaves(inputs, Path(scratch))
        except ImportError:
            report["lleaves"] = None
    sys.stdout.write(json.dumps(report) + "\n")


def run_benchmark(
    subscribers: int, before_subscribers: int, repeats: int, world: tuple[int, int]
) -> str:
    """Prepare (or reuse) the bundle, time both variants in fresh processes, tabulate."""
    inputs_path = prepare(*world, RESULTS / f"scoring-{world[0]}x{world[1]}")
    sizes = {"before": min(before_subscribers, subscribers), "after": subscribers}
    reports = {}
    for variant in VARIANTS:
        arguments = ["--inputs", str(inputs_path), "--subscribers", str(sizes[variant])]
        arguments += ["--repeats", str(repeats)]
        reports[variant] = run_child("benchmarks.scoring", variant, arguments)
        logger.info("%s: %s", variant, reports[variant])
    per_million = {variant: 1_000_000 / sizes[variant] for variant in VARIANTS}
    parts = [
        "propensity predict",
        "ALS",
        "blend inputs",
        "blend predict",
        "joins",
        "reasons (SHAP)",
        "total",
    ]
    lines = [
        f"Scoring benchmark: bundle trained on {world[0]:,} subscribers x {world[1]} days; "
        f"before on {sizes['before']:,}, after on {sizes['after']:,} replicated subscribers; "
        f"medians of {repeats} runs; seconds, and seconds per 1M subscribers (linear).",
        "",
        "| part | before (s) | after (s) | before per 1M | after per 1M |",
        "|---|---|---|---|---|",
    ]
    for part in parts:
        before = reports["before"]["parts"].get(part, 0.0)
        after = reports["after"]["parts"].get(part, 0.0)
        lines.append(
            f"| {part} | {before:.2f} | {after:.2f} | {before * per_million['before']:.0f} "
            f"| {after * per_million['after']:.0f} |"
        )
    after = reports["after"]
    lines += [
        "",
        f"Peak RSS: before {reports['before']['peak_mib']:.0f} MiB, after "
        f"{after['peak_mib']:.0f} MiB (inputs loaded: {after['loaded_mib']:.0f} MiB).",
        f"After: reasons for {after['parts']['published rows']:.0f} published rows; ranking "
        f"took {after['parts']['rank (contact policy, not scoring)']:.2f} s (not in the total).",
    ]
    compiled = after.get("lleaves")
    if compiled:
        lines.append(
            f"lleaves (all propensity boosters; blend on 10 rows per subscriber): compile "
            f"{compiled['compile']:.1f} s, predict {compiled['lleaves']:.2f} s vs LightGBM "
            f"{compiled['lightgbm']:.2f} s, max |difference| {compiled['max_abs_diff']:.1e}."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scoring", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--subscribers", type=int, default=200_000)
    parser.add_argument(
        "--before-subscribers",
        type=int,
        default=50_000,
        help="subscribers for the (slow) reference path; extrapolated to 1M",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--world-subscribers", type=int, default=3000)
    parser.add_argument("--world-days", type=int, default=70)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.inputs, args.subscribers, args.repeats)
        return 0
    if min(args.subscribers, args.before_subscribers, args.repeats) < 1:
        parser.error("--subscribers, --before-subscribers and --repeats must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    world = (args.world_subscribers, args.world_days)
    sys.stdout.write(run_benchmark(args.subscribers, args.before_subscribers, args.repeats, world))
    return 0


if __name__ == "__main__":
    sys.exit(main())
