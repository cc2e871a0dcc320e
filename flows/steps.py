"""The steps of a night as plain functions on a data root: what the Prefect tasks wrap.

Each step reads what it needs from the data root, calls one library function and writes its result
into the data root or the run's staging folder. No Prefect here: a notebook or a test can run a
night step by step with the same functions.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from features.daily import build_daily, daily_needs_rebuild
from features.drift import drift_table
from features.offer_state import read_offer_state, update_offer_state
from features.snapshot import (
    clear_snapshot_shards,
    publish_snapshot_shards,
    read_snapshot_shard,
    scan_snapshot,
    write_snapshot_shard,
)
from mia.errors import InputError
from mia.ingest import (
    incomplete_dates,
    ingest_day,
    ingested_dates,
    manifest_path,
    raw_events,
    raw_state,
    read_manifest,
    refuse_lost_days,
    state_delivery,
)
from mia.lake import Lake, merge_sorted_parquet, partition_files, write_parquet
from mia.schema import CATEGORY, STATE_TABLES, SUBSCRIBER_ID, TS
from mia.settings import Settings
from models.scoring import MODEL_NAME
from models.training import TRAINED_AS_OF_TAG

logger = logging.getLogger(__name__)

OFFERS_FILE = "offers.parquet"


@dataclass(frozen=True)
class ShardResult:
    """Scored, eligible candidates of one shard."""

    shard: int
    path: Path
    rows: int
    subscribers: int


def ingest_new_days(lake: Lake, as_of: dt.date, settings: Settings | None = None) -> list[dt.date]:
    """Validate and store every delivered day up to `as_of` that is not ingested yet.

    A day counts as ingested only when its manifest exists: a day left half-written by an
    interrupted ingest is ingested again from the drop zone, or refused (IncompleteDayError)
    when its delivery is gone. The day `as_of` itself is always (re)ingested when its files are
    in the drop zone, so a corrected delivery replaces the earlier one. Raises InputError when
    `as_of` has no input.
    """
    ingested = set(ingested_dates(lake))
    delivered = [date for date in lake.dates("incoming") if date <= as_of]
    refuse_lost_days(
        lake, [date for date in incomplete_dates(lake) if date <= as_of and date not in delivered]
    )
    todo = [date for date in delivered if date not in ingested or date == as_of]
    for date in todo:
        ingest_day(lake, date, settings=settings)
    if as_of not in ingested and as_of not in todo:
        # A synthetic world would overwrite deliveries: suggested only where there are none.
        incoming = lake.root / "incoming"
        empty_root = not incoming.is_dir() or not any(incoming.iterdir())
        raise InputError(
            f"no input for {as_of}: {lake.incoming(as_of)} does not exist and the day was never "
            "ingested. Deliver the day's files there"
            + (" (or run `mia simulate` for a synthetic world)." if empty_root else ".")
        )
    return todo


def update_daily_aggregates(
    lake: Lake, as_of: dt.date, rebuild: set[dt.date] = frozenset()
) -> list[dt.date]:
    """Fold every ingested day up to `as_of` into daily aggregates once; returns the days built.

    Days in `rebuild`, and days whose aggregates are not those of their current ingest (an
    interrupted or outdated build, see `daily_needs_rebuild`), are built again. The offer state
    follows (`update_offer_state`): its new day, and every day from one ingested again on.
    """
    built = []
    for date in ingested_dates(lake):
        if date > as_of:
            break
        if build_daily(lake, date, force=date in rebuild or daily_needs_rebuild(lake, date)):
            built.append(date)
    update_offer_state(lake, as_of)
    return built


def begin_snapshot(lake: Lake, as_of: dt.date) -> None:
    """Forget shards of `as_of` left by an interrupted run, before the shards are built."""
    clear_snapshot_shards(lake, as_of)


def snapshot_shard(lake: Lake, as_of: dt.date, settings: Settings, shard: int) -> int:
    """Build one shard of the snapshot of `as_of` (not yet visible); returns its row count."""
    return write_snapshot_shard(lake, as_of, settings, shard)[1]


def finish_snapshot(lake: Lake, as_of: dt.date, settings: Settings) -> Path:
    """Swap tonight's snapshot shards in as the snapshot of `as_of`."""
    return publish_snapshot_shards(lake, as_of, settings.n_shards)


def snapshot(lake: Lake, as_of: dt.date, settings: Settings) -> int:
    """Build and store the feature snapshot of `as_of`, shard by shard; returns its row count."""
    begin_snapshot(lake, as_of)
    rows = sum(snapshot_shard(lake, as_of, settings, shard) for shard in range(settings.n_shards))
    finish_snapshot(lake, as_of, settings)
    return rows


def night_inputs(
    lake: Lake,
    as_of: dt.date,
    settings: Settings,
    shard: int | None = None,
    recent_events: bool = True,
) -> dict[str, pl.DataFrame | None]:
    """State tables, the offer state and recent offer events that eligibility and scoring need.

    `offer_state` (the whole history per subscriber x offer) serves eligibility; `offer_events`
    and `consumption` (the longest feature window, only with `recent_events`; consumption only when
    delivered and weighted) serve the interactions of scoring;
    `contact_events` (the days the fatigue and weekly-cap rules look back) serves eligibility.
    With `shard`, subscribers, holdings, the offer state and offer events hold only that shard's
    subscribers.
    """
    from offers.fatigue import lookback_days

    part = None if shard is None else (shard, settings.n_shards)
    subscribers = raw_state(lake, "subscribers", as_of, shard=part)
    catalog = raw_state(lake, "catalog", as_of)
    if subscribers is None or catalog is None:
        raise InputError(f"subscribers or catalog missing in {lake.root / 'raw'} for {as_of}.")
    settings.check_categories(catalog[CATEGORY].unique(), where=f"the catalog of {as_of}")
    holdings = raw_state(lake, "holdings", as_of, shard=part)
    contact_days = lookback_days(catalog, settings)
    days = max(max(settings.windows), contact_days) if recent_events else contact_days
    events = raw_events(
        lake, "offer_events", as_of - dt.timedelta(days=days - 1), as_of, shard=part
    )
    events = events.collect(engine="streaming") if events is not None else None
    since = dt.datetime.combine(as_of - dt.timedelta(days=contact_days - 1), dt.time())
    consumption = None
    if recent_events and settings.consumption_weight > 0:
        consumption = raw_events(
            lake, "consumption", as_of - dt.timedelta(days=days - 1), as_of, shard=part
        )
    return {
        "subscribers": subscribers,
        "catalog": catalog,
        "holdings": holdings,
        "offer_state": read_offer_state(lake, as_of, shard=part),
        "offer_events": events if recent_events else None,
        "contact_events": events.filter(pl.col(TS) >= since) if events is not None else None,
        "consumption": consumption.collect(engine="streaming") if consumption is not None else None,
    }


def feature_drift(lake: Lake, as_of: dt.date, columns: list[str]) -> pl.DataFrame | None:
    """PSI of key features between the latest earlier snapshot and tonight's."""
    earlier = [date for date in lake.dates("features") if date < as_of]
    if not earlier:
        return None
    # Features may come and go: drift_table skips the columns one night lacks.
    return drift_table(scan_snapshot(lake, earlier[-1]), scan_snapshot(lake, as_of), columns)


def check_model_root(settings: Settings) -> None:
    """Refuse, before anything is written, a store whose champion is another data root's
    (models.registry.ForeignChampionError) unless `settings.shared_registry`."""
    from models.registry import champion_info

    champion_info(MODEL_NAME, settings)


def training_due(settings: Settings, as_of: dt.date) -> tuple[bool, str]:
    """Whether tonight must train: no champion yet, or one trained too long before `as_of`."""
    from models.registry import champion_info

    info = champion_info(MODEL_NAME, settings)
    if info is None:
        return True, "no champion model registered yet"
    trained = info.get("tags", {}).get(TRAINED_AS_OF_TAG)
    if not trained:
        return True, f"champion v{info['version']} has no {TRAINED_AS_OF_TAG} tag"
    age = (as_of - dt.date.fromisoformat(trained)).days
    if age < 0:
        return False, f"champion v{info['version']} was trained as of {trained}, after {as_of}"
    if age >= settings.retrain_interval_days:
        return True, (
            f"champion v{info['version']} was trained as of {trained}, {age} days ago "
            f"(retrain interval {settings.retrain_interval_days} days)"
        )
    return False, f"champion v{info['version']} trained as of {trained} is fresh ({age} days)"


def train(lake: Lake, as_of: dt.date, settings: Settings) -> dict[str, Any]:
    """Train, register and gate the models; returns what the manifest and report need."""
    from models.scoring import compiled_cache_dir
    from models.training import train_models

    report = train_models(lake, as_of, settings)
    if report.promoted:
        # Compiled once per model version, here, so that no night waits for the compiler.
        report.bundle.use_compiled(compiled_cache_dir(settings))
    note = f"trained v{report.version} as of {as_of}: {report.reason}" + (
        f"; prior fallback for {', '.join(report.fallback_categories)}"
        if report.fallback_categories
        else ""
    )
    return {
        "trained": True,
        "note": note,
        "version": report.version,
        "promoted": bool(report.promoted),
        "mlflow_run_id": report.run_id,
        "metrics": {key: float(value) for key, value in report.metrics.items()},
    }


# Settings that say where and how a night runs, not what it publishes: not in the run id.
# (Compiled trees give LightGBM's predictions to within rounding: the same offers.)
RUN_ID_IGNORES = frozenset(
    {
        "compiled_trees",
        "data_dir",
        "mlflow_uri",
        "mlflow_artifacts",
        "shared_registry",
        "experiment",
        "num_threads",
        "n_shards",
        "score_workers",
        "dask_address",
        "dask_train_rows",
        "keep_night_versions",
        "schedule_cron",
        "timezone",
    }
)


def run_id(lake: Lake, as_of: dt.date, settings: Settings) -> str:
    """Deterministic id of tonight's run, from what decides its outputs: the content of the
    ingested days up to `as_of`, the champion (version and MLflow run) and the settings."""
    from flows.publish import run_id_for
    from models.registry import champion_info

    champion = champion_info(MODEL_NAME, settings) or {}
    return run_id_for(
        as_of,
        {
            "inputs": input_hashes(lake, as_of),
            # The MLflow run as well: a store made anew numbers its versions from 1 again.
            "model": [champion.get("version"), champion.get("run_id")],
            "settings": settings.model_dump(mode="json", exclude=set(RUN_ID_IGNORES)),
        },
    )


def input_hashes(lake: Lake, as_of: dt.date) -> dict[str, dict[str, str]]:
    """Content hash of every raw partition up to `as_of`, by day and table.

    The hashes come from the ingest manifests, which record them once at ingest, so this reads
    no data; a partition whose manifest has no hash (ingested before manifests had one) is
    hashed here.
    """
    import json

    from mia.hashing import file_digest
    from mia.ingest import CONTENT_HASH
    from mia.schema import TABLES

    days = sorted({day for table in TABLES for day in lake.dates("raw", table) if day <= as_of})
    hashes = {}
    for day in days:
        manifest = manifest_path(lake, day)
        tables = json.loads(manifest.read_text()).get("tables", {}) if manifest.exists() else {}
        hashes[day.isoformat()] = {
            table: tables.get(table, {}).get(CONTENT_HASH)
            or file_digest(partition_files(lake.raw(table, day)))
            for table in TABLES
            if lake.raw(table, day).is_dir()
        }
    return hashes


def score_shard(
    lake: Lake, as_of: dt.date, settings: Settings, shard: int, directory: Path
) -> ShardResult:
    """Eligible pairs and their P(accept) for one shard of subscribers, stored as Parquet."""
    from models.cf import build_interactions
    from models.scoring import load_bundle, score_offers

    inputs = night_inputs(lake, as_of, settings, shard=shard)
    snapshot_frame = read_snapshot_shard(lake, as_of, shard, settings.n_shards)
    # unordered: scoring sorts the pairs it is given
    eligible = night_eligible_pairs(inputs, as_of, settings, ordered=False)
    bundle = load_bundle(settings)
    interactions = (
        build_interactions(
            inputs["offer_events"],
            as_of,
            lookback_days=max(settings.windows),
            consumption=inputs["consumption"],
            consumption_weight=settings.consumption_weight,
        )
        if inputs["offer_events"] is not None
        else None
    )
    # Reasons are added after ranking, for the published rows only: SHAP is the costly part.
    # Given the eligible pairs, scoring returns exactly those of the snapshot's subscribers.
    candidates = score_offers(
        bundle, snapshot_frame, inputs["catalog"], interactions, with_reasons=False,
        eligible=eligible, offer_state=inputs["offer_state"], threads=settings.num_threads,
    )  # fmt: skip
    # Sorted by offer: audiences read one group of offers from every shard's file.
    path = write_parquet(candidates, shard_file(directory, shard), sorted_by="offer_id")
    return ShardResult(shard, path, candidates.height, snapshot_frame.height)


def scan_candidates(shards: list[ShardResult]) -> pl.LazyFrame:
    """All shards' candidates, lazily (in no particular order)."""
    return pl.scan_parquet([shard.path for shard in sorted(shards, key=lambda s: s.shard)])


def offer_groups(offer_ids: list[str], n_groups: int) -> list[list[str]]:
    """Sorted offer ids cut into at most `n_groups` contiguous groups of near-equal size."""
    ordered = sorted(offer_ids)
    n_groups = max(1, min(n_groups, len(ordered)))
    size = -(-len(ordered) // n_groups) if ordered else 0
    return [ordered[start : start + size] for start in range(0, len(ordered), size or 1)]


def groups_for(lake: Lake, as_of: dt.date, settings: Settings) -> pl.DataFrame:
    """Treatment/control and coverage of every subscriber of the night."""
    from offers.groups import assign_groups

    subscribers = raw_state(lake, "subscribers", as_of, columns=[SUBSCRIBER_ID])
    return assign_groups(subscribers[SUBSCRIBER_ID], settings)


def shard_file(directory: Path, shard: int) -> Path:
    """File of one shard's rows in a staging work folder."""
    return directory / f"shard-{shard:04d}.parquet"


def rank(
    lake: Lake, as_of: dt.date, settings: Settings, staging: Any, shards: list[ShardResult]
) -> dict[str, Any]:
    """Ranked offers under the contact policy, stored per shard in the `ranked` work folder.

    The policy runs shard by shard; capacity and exploration are settled across all shards.
    Reasons follow per shard (`explain_shard`), in parallel where the task runner allows.
    """
    from models.scoring import active_offers, load_bundle, prior_scored_categories
    from offers.rank import rank_offers_by_shard

    ordered = sorted(shards, key=lambda result: result.shard)
    # Read lazily: ranking reads a shard again for the subscribers who lose a capped offer.
    frames = [(pl.scan_parquet(shard.path), None) for shard in ordered]  # eligible pairs only
    catalog = raw_state(lake, "catalog", as_of)
    groups = groups_for(lake, as_of, settings)
    ranked = rank_offers_by_shard(
        frames,
        catalog,
        groups,
        settings,
        run_id=staging.run_id,
        evidence=offer_evidence_as_of(lake, as_of, settings),
    )
    directory = staging.work("ranked")
    rows = subscribers = 0
    for shard, offers in zip(ordered, ranked, strict=True):
        write_parquet(offers, shard_file(directory, shard.shard))
        rows, subscribers = rows + offers.height, subscribers + offers[SUBSCRIBER_ID].n_unique()
    versions = scan_candidates(shards).select(pl.col("model_version").unique().drop_nulls())
    return {
        "offers_rows": rows,
        "subscribers_with_offers": subscribers,
        "control_subscribers": int((groups["group"] == "control").sum()),
        "model_versions": sorted(versions.collect()["model_version"].to_list()),
        "prior_scored_categories": prior_scored_categories(
            load_bundle(settings), active_offers(catalog, as_of + dt.timedelta(days=1))
        ),
    }


def offer_evidence_as_of(lake: Lake, as_of: dt.date, settings: Settings) -> pl.DataFrame:
    """Impressions and accepts per offer over the whole history up to as_of (the offer state,
    summed one shard at a time so memory stays at a shard's)."""
    from offers.exploration import offer_evidence

    parts = [
        offer_evidence(read_offer_state(lake, as_of, shard=(shard, settings.n_shards)))
        for shard in range(settings.n_shards)
    ]
    return offer_evidence(pl.concat(parts))


def explain_shard(lake: Lake, as_of: dt.date, settings: Settings, staging: Any, shard: int) -> int:
    """One shard's ranked offers with their reasons in words, in the `explained` work folder.

    SHAP, the costly part of scoring, runs here for the published rows of ranks 1..reason_ranks
    only (every rank when 0). Returns the rows.
    """
    from models.scoring import add_reasons, load_bundle

    offers = pl.read_parquet(shard_file(staging.work("ranked"), shard))
    if offers.height:
        snapshot_frame = read_snapshot_shard(lake, as_of, shard, settings.n_shards)
        offers = add_reasons(
            load_bundle(settings), snapshot_frame, offers, max_rank=settings.reason_ranks
        )
    # Sorted in row groups, so that gathering the shards holds a part of them at a time.
    write_parquet(offers, shard_file(staging.work("explained"), shard), sorted_by=SUBSCRIBER_ID)
    return offers.height


def gather_offers(settings: Settings, staging: Any) -> Path:
    """Every shard's explained offers as the night's offers file, by subscriber_id and rank.

    Merged part by part (`merge_sorted_parquet`): memory does not grow with the subscribers.
    """
    directory = staging.work("explained")
    files = [shard_file(directory, shard) for shard in range(settings.n_shards)]
    path = staging.product("offers") / OFFERS_FILE
    return merge_sorted_parquet(files, path, by=[SUBSCRIBER_ID, "rank"])


def audience_uplift(
    lake: Lake, as_of: dt.date, settings: Settings, catalog: pl.DataFrame, groups: pl.DataFrame
) -> tuple[Any, str]:
    """The audience uplift model fitted on the stored training snapshots whose outcome windows
    end by `as_of` (point in time), or the reason there is none."""
    from models.training import snapshot_dates
    from offers.uplift import fit_audience_uplift

    days = [day for day in snapshot_dates(as_of, settings) if partition_files(lake.snapshot(day))]
    events = raw_events(lake, "offer_events", days[0], as_of) if days else None
    if events is None:
        return None, "no stored training snapshot with outcomes up to the night"
    snapshots = [(day, scan_snapshot(lake, day)) for day in days]
    return fit_audience_uplift(snapshots, events, catalog, groups, settings)


def audiences(
    lake: Lake, as_of: dt.date, settings: Settings, staging: Any, shards: list[ShardResult]
) -> dict[str, Any]:
    """Audience CSVs per offer with control flags, written to the staged audiences folder.

    Audiences are per offer, so they are built for one group of offers at a time (as many groups
    as shards), each from every shard's candidates of those offers.
    """
    from offers.audience import build_audiences, write_audiences_in_parts
    from offers.uplift import offer_rankings

    catalog = raw_state(lake, "catalog", as_of)
    if catalog is None:
        raise InputError(f"catalog missing in {lake.root / 'raw'} for {as_of}.")
    groups = groups_for(lake, as_of, settings)
    model, reason = audience_uplift(lake, as_of, settings, catalog, groups)
    rankings = model.rankings(catalog) if model else offer_rankings(catalog, settings, None, reason)
    # Reasons are not part of audiences: never read them.
    scores = scan_candidates(shards).select(SUBSCRIBER_ID, "offer_id", "p_accept", "model_version")
    offer_ids = scores.select(pl.col("offer_id").unique()).collect()["offer_id"].to_list()

    def parts():
        for offers in offer_groups(offer_ids, settings.n_shards):
            part = scores.filter(pl.col("offer_id").is_in(offers)).collect()
            uplift = None
            if model is not None:
                uplift = model.predict(part, scan_snapshot(lake, as_of), catalog)
            yield build_audiences(
                part,
                None,  # score_shard scored eligible pairs only
                catalog,
                groups,
                settings,
                generated_at=as_of.isoformat(),
                uplift=uplift,
                rankings=rankings,
                # ranking checked that each shard's pairs are distinct; shards share none
                pairs_checked=True,
            )

    summary = write_audiences_in_parts(parts(), catalog, staging.product("audiences"), rankings)
    return {
        "audience_offers": summary.height,
        "audience_rows": int(summary["audience_size"].sum()) if summary.height else 0,
    }


KEY_DRIFT_FEATURES = 12
# Audience cuts evaluated against the oracle besides the published audiences themselves.
AUDIENCE_SHARES = (0.05, 0.10, 0.25)


def report(
    lake: Lake, as_of: dt.date, settings: Settings, staging: Any, facts: dict[str, Any]
) -> Path:
    """The run report (markdown + PNG plots) in the staged reports folder."""
    from flows.publish import published_dates
    from flows.report import ReportInputs, first_offer_scores, write_report
    from offers.audience import read_summary

    # Only what the report shows: it must not hold a night's whole offers or snapshot.
    offers = pl.scan_parquet(staging.product("offers") / OFFERS_FILE)
    previous_scores = None
    earlier = [date for date in published_dates(lake) if date < as_of]
    if earlier:
        previous_scores = first_offer_scores(
            pl.scan_parquet(lake.offers(earlier[-1]) / OFFERS_FILE)
        )
    snapshot = scan_snapshot(lake, as_of)
    numeric = [
        name
        for name, dtype in snapshot.collect_schema().items()
        if dtype.is_numeric() and name != SUBSCRIBER_ID
    ]
    spreads = snapshot.select(pl.col(numeric).cast(pl.Float64).std().fill_null(0.0))
    spread = spreads.collect(engine="streaming").row(0, named=True)
    # The most variable features are the ones whose drift says most about the population.
    key_features = sorted(numeric, key=lambda name: (-spread[name], name))[:KEY_DRIFT_FEATURES]
    training = facts.get("training", {})
    inputs = ReportInputs(
        as_of=as_of,
        run_id=staging.run_id,
        offers=offers,
        audience_summary=read_summary(staging.product("audiences")),
        model_metrics=training.get("metrics", {}),
        model_versions={MODEL_NAME: ",".join(facts.get("model_versions", []))},
        training_note=training.get("note", ""),
        feature_drift=feature_drift(lake, as_of, sorted(key_features)),
        previous_scores=previous_scores,
        subscribers=int(facts.get("subscribers", 0)),
        control_subscribers=int(facts.get("control_subscribers", 0)),
        no_offers_reason="" if facts.get("offers_rows") else no_offers_reason(lake, as_of),
        input_warnings=input_warnings(lake, warned_days(as_of, facts.get("ingested_tonight", []))),
        prior_scored_categories=facts.get("prior_scored_categories", {}),
        impact=impact(lake, as_of, settings),
        impact_window=impact_window(as_of, settings),
        lift_fdr=settings.lift_fdr,
    )
    return write_report(inputs, staging.product("reports"))


def impact_window(as_of: dt.date, settings: Settings) -> tuple[dt.date, dt.date]:
    """The days over which the report measures lift: the longest feature window up to as_of."""
    return as_of - dt.timedelta(days=max(settings.windows) - 1), as_of


def impact(lake: Lake, as_of: dt.date, settings: Settings) -> pl.DataFrame | None:
    """Lift of the champion and the impact arms over control and of the arms over the champion
    (offers.lift.measure_impact); None without offer events in the window."""
    from offers.lift import POPULATION_COLUMNS, measure_impact

    start, end = impact_window(as_of, settings)
    events = raw_events(lake, "offer_events", start, end)
    catalog = raw_state(lake, "catalog", as_of)
    subscribers = raw_state(lake, "subscribers", as_of, columns=POPULATION_COLUMNS)
    if events is None or catalog is None or subscribers is None:
        return None
    groups = groups_for(lake, as_of, settings)
    return measure_impact(events, catalog, subscribers, groups, start, end, settings)


def warned_days(as_of: dt.date, ingested_tonight: list[dt.date]) -> list[dt.date]:
    """Days whose input warnings a night reports: those ingested tonight, and `as_of`."""
    return sorted({as_of, *ingested_tonight})


def input_warnings(lake: Lake, days: list[dt.date]) -> list[str]:
    """The warnings of the ingest of `days`, one short line per table, column, rule and detail
    (days and rows summed; the ingest manifests hold the example rows)."""
    found: dict[tuple[str, str, str, str], list[tuple[dt.date, int]]] = {}
    for day in days:
        tables = (read_manifest(lake, day) or {}).get("tables", {})
        for table, facts in tables.items():
            for warning in facts.get("warnings", []):
                if not isinstance(warning, dict):  # ingested before warnings had fields
                    warning = {"column": "", "rule": "", "rows": 0, "detail": str(warning)}
                key = (table, warning["column"], warning["rule"], warning["detail"])
                found.setdefault(key, []).append((day, int(warning["rows"])))
    lines = []
    for (table, column, rule, detail), seen in sorted(found.items()):
        dates = f"{seen[0][0]}" + (f" .. {seen[-1][0]} ({len(seen)} days)" if len(seen) > 1 else "")
        rows = sum(count for _, count in seen)
        lines.append(f"{table}.{column} '{rule}' on {dates}, {rows:,} row(s): {detail}")
    return lines


def state_tables_in_force(lake: Lake, as_of: dt.date) -> dict[str, dict[str, Any]]:
    """Per state table: the day of the delivery in force on `as_of` and the optional columns
    that delivery left out."""
    found = {}
    for table in STATE_TABLES:
        day = state_delivery(lake, table, as_of)
        if day is None:
            continue
        tables = (read_manifest(lake, day) or {}).get("tables", {})
        absent = tables.get(table, {}).get("absent_columns", [])
        found[table] = {"delivered": day.isoformat(), "absent_columns": absent}
    return found


def no_offers_reason(lake: Lake, as_of: dt.date) -> str:
    """Why the night after `as_of` has no offers, in words for the report."""
    from models.scoring import active_offers

    night = as_of + dt.timedelta(days=1)
    catalog = raw_state(lake, "catalog", as_of)
    if catalog is None or catalog.is_empty():
        return f"the catalog of {as_of} has no offers"
    valid = active_offers(catalog, night).height
    if not valid:
        return (
            f"none of the {catalog.height} offers of the catalog is valid on {night}: every one "
            f"has expired or not started (the latest end_date is {catalog['end_date'].max()})"
        )
    return f"no covered subscriber was eligible for any of the {valid} offers valid on {night}"


def track_night(
    settings: Settings, as_of: dt.date, staging: Any, facts: dict[str, Any], report_dir: Path
) -> str:
    """Log the night's report, plots and counts to an MLflow run; returns its id."""
    import mlflow

    from models.registry import log_metrics, start_run

    tags = {"mia.kind": "nightly", "mia.as_of": as_of.isoformat(), "mia.run_id": staging.run_id}
    with start_run(settings, f"nightly-{as_of.isoformat()}", tags) as mlflow_run_id:
        log_metrics(
            {
                "subscribers": float(facts.get("subscribers", 0)),
                "offers": float(facts.get("offers_rows", 0)),
                "subscribers_with_offers": float(facts.get("subscribers_with_offers", 0)),
                "audience_offers": float(facts.get("audience_offers", 0)),
                "audience_rows": float(facts.get("audience_rows", 0)),
            }
        )
        mlflow.log_artifacts(str(report_dir), artifact_path="report")
    return mlflow_run_id


def manifest(
    lake: Lake,
    as_of: dt.date,
    settings: Settings,
    staging: Any,
    facts: dict[str, Any],
    ingested: list[dt.date],
) -> dict[str, Any]:
    """What tonight used and produced: inputs, row counts, models, MLflow run, settings.

    `ingested` are the days ingested tonight; the history the night used is every day ingested
    up to `as_of`, whenever that was.
    """
    from models.registry import ROOT_ID_TAG, ROOT_PATH_TAG, champion_info

    tables = (read_manifest(lake, as_of) or {}).get("tables", {})
    raw_rows = {table: facts_["rows"] for table, facts_ in sorted(tables.items())}
    history = [day for day in ingested_dates(lake) if day <= as_of]
    champion = champion_info(MODEL_NAME, settings) or {}
    training = facts.get("training", {})
    return {
        "as_of": as_of.isoformat(),
        "run_id": staging.run_id,
        "inputs": {
            "data_dir": str(lake.root),
            "ingested_days": {
                "count": len(history),
                "first": history[0].isoformat() if history else None,
                "last": history[-1].isoformat() if history else None,
                "tonight": [day.isoformat() for day in sorted(ingested)],
            },
            "state_tables": state_tables_in_force(lake, as_of),
            "warnings": input_warnings(lake, warned_days(as_of, ingested)),
            "raw_rows": raw_rows,
            "snapshot": str(lake.snapshot(as_of)),
        },
        "rows": {
            "subscribers": facts.get("subscribers"),
            "offers": facts.get("offers_rows"),
            "subscribers_with_offers": facts.get("subscribers_with_offers"),
            "control_subscribers": facts.get("control_subscribers"),
            "audiences": facts.get("audience_offers"),
            "audience_rows": facts.get("audience_rows"),
        },
        "models": {
            "name": MODEL_NAME,
            "champion_version": champion.get("version"),
            "champion_run_id": champion.get("run_id"),
            # The data root the champion was trained from: this one unless shared_registry.
            "champion_data_root": champion.get("tags", {}).get(ROOT_PATH_TAG),
            "champion_data_root_id": champion.get("tags", {}).get(ROOT_ID_TAG),
            "shared_registry": settings.shared_registry,
            "mlflow_uri": settings.mlflow_uri,
            "trained_tonight": bool(training.get("trained")),
            "training_note": training.get("note", ""),
            "mlflow_run_id": training.get("mlflow_run_id"),
            "mlflow_nightly_run_id": facts.get("mlflow_nightly_run_id"),
            # Category -> why it was scored by a prior (never seen in training, too few accepts).
            "prior_scored_categories": facts.get("prior_scored_categories", {}),
        },
        "settings": {
            "top_k": settings.top_k,
            "max_per_category": settings.max_per_category,
            "control_share": settings.control_share,
            "coverage": settings.coverage,
            "n_shards": settings.n_shards,
        },
    }


def eligible_for_night(lake: Lake, as_of: dt.date, settings: Settings) -> pl.DataFrame:
    """[subscriber_id, offer_id] pairs eligible for the night after `as_of`."""
    return night_eligible_pairs(
        night_inputs(lake, as_of, settings, recent_events=False), as_of, settings
    )


def night_eligible_pairs(
    inputs: dict[str, Any], as_of: dt.date, settings: Settings, ordered: bool = True
) -> pl.DataFrame:
    """Eligible pairs from `night_inputs`, the contact rules included (sorted unless not
    `ordered`)."""
    from offers.eligibility import eligible_pairs

    return eligible_pairs(
        inputs["subscribers"],
        inputs["catalog"],
        inputs["holdings"],
        inputs["offer_state"],
        as_of,
        recent_events=inputs["contact_events"],
        settings=settings,
        ordered=ordered,
    )


def evaluate_audiences(lake: Lake, as_of: dt.date, settings: Settings) -> dict[str, float]:
    """On a simulated world: the published audiences' expected accepts vs the oracle's."""
    from mia.simulate import oracle_p_accept
    from offers.audience import read_summary
    from offers.evaluate import audience_capture, capture_summary
    from offers.groups import TREATMENT

    directory = lake.audiences(as_of)
    summary = read_summary(directory)
    rows = pl.concat(
        [
            pl.read_csv(directory / file, schema_overrides={SUBSCRIBER_ID: pl.Int64}).select(
                SUBSCRIBER_ID, "offer_id", "rank", "group"
            )
            for file in summary["file"].to_list()
        ]
    )
    groups = groups_for(lake, as_of, settings).filter(
        (pl.col("group") == TREATMENT) & pl.col("covered")
    )
    eligible = eligible_for_night(lake, as_of, settings).join(
        groups.select(SUBSCRIBER_ID), on=SUBSCRIBER_ID, how="semi"
    )
    truth = oracle_p_accept(lake.root, as_of, offer_ids=rows["offer_id"].unique().to_list())
    result = capture_summary(audience_capture(rows, eligible, truth))
    for share in AUDIENCE_SHARES:
        cut = audience_capture(rows, eligible, truth, share=share)
        result.update(capture_summary(cut, prefix=f"audience_top{round(share * 100)}pct"))
    return result
