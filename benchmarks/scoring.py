"""Scoring benchmark: the nightly scoring of subscribers x offers, before and after pruning.

A bundle is trained once on a small simulated world (`mia.simulate` -> `mia.ingest` ->
`models.training.train_models`, not registered) and kept, with the last day's snapshot, catalog,
interactions and eligible pairs, under benchmarks/results/. The snapshot (and its eligible pairs
and interactions) is then replicated to N subscribers with new ids and scored two ways, each in a
fresh subprocess so that its peak memory (max RSS) is its own:

- before: the reference path (`reference_score_offers`), i.e. every subscriber x active offer
  through a blend-input frame, and SHAP reasons for every subscriber x category;
- after: `models.scoring.score_offers(..., eligible=pairs, with_reasons=False)`, the contact policy
  (`offers.rank.rank_offers`), then `models.scoring.add_reasons` for every published row, all with
  LightGBM's `Booster.predict`;
- compiled: the same with the trees compiled to native code (`models.compiled`, compiled once
  into a fresh cache, timed apart) and reasons for published ranks 1..`reason_ranks` only (the
  nightly defaults); its p_accept is checked against LightGBM's on the first 20,000 subscribers.

Each part is timed (medians of the repeats) and extrapolated linearly to 1M subscribers.

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
from models.blend import CategoryActivity, candidate_inputs, category_activity
from models.history import ResponseHistory, response_history
from models.reasons import PRIOR_REASON, REASON_SEPARATOR, _cell_states, _phrase_table
from models.scoring import (
    SCORE_COLUMNS,
    ModelBundle,
    active_offers,
    add_reasons,
    bundle_taste,
    score_offers,
)

logger = logging.getLogger(__name__)

VARIANTS = ("before", "after", "compiled")
CHECKED_SUBSCRIBERS = 20_000  # compiled vs LightGBM p_accept compared on these


# ---------------------------------------------------------------------------- inputs


def prepare(subscribers: int, days: int, directory: Path) -> Path:
    """Simulate, ingest and train once; keep the bundle and the last day's inputs (pickle)."""
    from features.offer_state import read_offer_state
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
        "offer_state": read_offer_state(lake, as_of),
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
    """The cached inputs with snapshot, eligible pairs, interactions and offer state replicated."""
    with open(path, "rb") as handle:
        inputs = pickle.load(handle)
    for name in ("snapshot", "eligible", "interactions", "offer_state"):
        if inputs.get(name) is not None:  # inputs cached before the offer state have none
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
    offer_state: pl.DataFrame | None = None,
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
    with clock("taste"):
        taste = bundle_taste(bundle, snapshot)
    with clock("response history"):
        history = response_history(
            offer_state, snapshot[SUBSCRIBER_ID], offers, snapshot["snapshot_date"][0], catalog
        )
    with clock("interaction activity"):
        activity = category_activity(interactions, snapshot[SUBSCRIBER_ID], catalog)
    with clock("blend inputs"):
        frame = blend_frame_from(
            bundle, snapshot, offers, p_category, cf_scores, taste, history, activity
        )
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
    taste: np.ndarray | None,
    history: ResponseHistory | None = None,
    activity: CategoryActivity | None = None,
) -> pl.DataFrame:
    """`models.scoring.blend_frame` from already computed propensities, ALS scores, tastes,
    response history and activity per category."""
    from models.blend import candidate_features

    return candidate_features(
        snapshot[SUBSCRIBER_ID],
        p_category,
        bundle.propensity.categories_,
        np.asarray(cf_scores, dtype=np.float64),
        offers,
        bundle.offer_stats,
        taste=taste,
        history=history,
        activity=activity,
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
        inputs["bundle"],
        inputs["snapshot"],
        inputs["catalog"],
        inputs["interactions"],
        timings,
        inputs.get("offer_state"),
    )
    timings["total"] = time.perf_counter() - started
    return timings


def run_after(inputs: dict[str, Any], max_rank: int = 0) -> dict[str, float]:
    """One timed run of the pruned path: eligible pairs, ranking, reasons for published rows
    (of ranks 1..max_rank when it is not 0)."""
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
    with clock("taste"):
        taste = bundle_taste(bundle, snapshot.sort(SUBSCRIBER_ID))
    with clock("response history"):
        history = response_history(
            inputs.get("offer_state"),
            snapshot.sort(SUBSCRIBER_ID)[SUBSCRIBER_ID],
            offers,
            snapshot[SNAPSHOT_DATE][0],
            catalog,
        )
    with clock("interaction activity"):
        activity = category_activity(
            interactions, snapshot.sort(SUBSCRIBER_ID)[SUBSCRIBER_ID], catalog
        )
    with clock("blend inputs"):
        from models.scoring import _cells

        rows, columns = _cells(snapshot.sort(SUBSCRIBER_ID), offers, eligible)
        matrix = candidate_inputs(
            p_category,
            bundle.propensity.categories_,
            np.asarray(cf_scores, dtype=np.float64),
            offers,
            bundle.offer_stats,
            taste=taste,
            history=history,
            activity=activity,
        ).matrix(rows, columns, bundle.blend.features)
    with clock("blend predict"):
        bundle.blend.predict_matrix(matrix)
    parts = time.perf_counter() - started
    del x, matrix, p_category, cf_scores
    started = time.perf_counter()
    scores = score_offers(
        bundle, snapshot, catalog, interactions, False, eligible,
        offer_state=inputs.get("offer_state"),
    )  # fmt: skip
    timings["score_offers (all of the above)"] = time.perf_counter() - started
    timings["joins"] = max(timings["score_offers (all of the above)"] - parts, 0.0)
    groups = assign_groups(snapshot[SUBSCRIBER_ID], Settings())
    with clock("rank (contact policy, not scoring)"):
        ranked = rank_offers(scores, eligible, catalog, groups, Settings(), run_id="benchmark")
    with clock("reasons (SHAP)"):
        add_reasons(bundle, snapshot, ranked, max_rank=max_rank)
    timings["total"] = timings["score_offers (all of the above)"] + timings["reasons (SHAP)"]
    timings["published rows"] = float(ranked.height)
    timings["explained rows"] = float(
        ranked.height if not max_rank else (ranked["rank"] <= max_rank).sum()
    )
    return timings


def compile_and_check(inputs: dict[str, Any], cache: Path) -> dict[str, float]:
    """Compile every tree model of the bundle into an empty cache (timed), then the largest
    difference in p_accept between compiled and LightGBM scoring of the first subscribers."""
    bundle, snapshot = inputs["bundle"], inputs["snapshot"].head(CHECKED_SUBSCRIBERS)
    arguments = (snapshot, inputs["catalog"], inputs["interactions"], False, inputs["eligible"])
    state = inputs.get("offer_state")
    plain = score_offers(bundle.use_compiled(None), *arguments, offer_state=state)[P_ACCEPT]
    started = time.perf_counter()
    bundle.use_compiled(cache)
    seconds = time.perf_counter() - started
    fast = score_offers(bundle, *arguments, offer_state=state)[P_ACCEPT].to_numpy()
    return {"compile": seconds, "max_abs_diff": float(np.abs(fast - plain.to_numpy()).max())}


RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, float]]] = {
    "before": run_before,
    "after": run_after,
    "compiled": lambda inputs: run_after(inputs, max_rank=Settings().reason_ranks),
}


def _child(variant: str, inputs_path: Path, subscribers: int, repeats: int) -> None:
    """Run one variant `repeats` times in this (fresh) process; print medians and peak RSS."""
    inputs = load_inputs(inputs_path, subscribers)
    loaded_mib = peak_mib()
    with tempfile.TemporaryDirectory() as scratch:
        checked = compile_and_check(inputs, Path(scratch)) if variant == "compiled" else None
        runs = [RUNNERS[variant](inputs) for _ in range(repeats)]
    medians = {part: statistics.median(run[part] for run in runs) for part in runs[0]}
    report: dict[str, Any] = {"parts": medians, "peak_mib": peak_mib(), "loaded_mib": loaded_mib}
    report["compiled"] = checked
    sys.stdout.write(json.dumps(report) + "\n")


def run_benchmark(
    subscribers: int, before_subscribers: int, repeats: int, world: tuple[int, int]
) -> str:
    """Prepare (or reuse) the bundle, time both variants in fresh processes, tabulate."""
    inputs_path = prepare(*world, RESULTS / f"scoring-{world[0]}x{world[1]}")
    sizes = {
        "before": min(before_subscribers, subscribers),
        "after": subscribers,
        "compiled": subscribers,
    }
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
        "taste",
        "response history",
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
        "| part | before (s) | after (s) | compiled (s) | before per 1M | after per 1M "
        "| compiled per 1M |",
        "|---|---|---|---|---|---|---|",
    ]
    for part in parts:
        seconds = {variant: reports[variant]["parts"].get(part, 0.0) for variant in VARIANTS}
        lines.append(
            f"| {part} | "
            + " | ".join(f"{seconds[variant]:.2f}" for variant in VARIANTS)
            + " | "
            + " | ".join(f"{seconds[variant] * per_million[variant]:.0f}" for variant in VARIANTS)
            + " |"
        )
    peaks = ", ".join(f"{variant} {reports[variant]['peak_mib']:.0f} MiB" for variant in VARIANTS)
    lines += ["", f"Peak RSS: {peaks}."]
    for variant in ("after", "compiled"):
        parts_of = reports[variant]["parts"]
        lines.append(
            f"{variant}: reasons for {parts_of['explained rows']:.0f} of "
            f"{parts_of['published rows']:.0f} published rows; ranking "
            f"took {parts_of['rank (contact policy, not scoring)']:.2f} s (not in the total)."
        )
    checked = reports["compiled"]["compiled"]
    lines.append(
        f"Compiling every tree model (once per model version): {checked['compile']:.1f} s; "
        f"compiled vs LightGBM p_accept on {CHECKED_SUBSCRIBERS:,} subscribers: max |difference| "
        f"{checked['max_abs_diff']:.1e}."
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
