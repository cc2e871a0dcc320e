"""Training pipeline: snapshots and labels -> propensity, ALS, blend -> metrics -> registry + gate.

Time layout for `as_of` A, horizon h, step s and n snapshots: T_i = A - h - i*s (i = 0..n-1), so
every label window (T_i, T_i + h] ends on or before A.

- category propensity: trained on T_{n-1}..T_2, early-stopped and calibrated on T_1;
- offer statistics and ALS: from events up to T_0 (offer labels of T_{n-1}..T_1, interactions
  in the lookback before T_0);
- blend: fitted on the offer labels of the last w = `blend_windows` (a setting) snapshots
  T_{w-1}..T_0 for most subscribers, each window's rows with inputs from models trained as above
  but as of that window (propensity on T_{n-1}..T_{k+2} calibrated on T_{k+1}, ALS, offer
  statistics and tastes up to T_k: every input out of sample for the labels it is fitted on); a
  stable hashed share of subscribers is held out of every window: the gate and the reported
  metrics use their T_0 rows.

The bundle keeps the models as of T_0 (everything it learned is from data up to T_0, except the
blend, which saw the labels of non-holdout subscribers) plus the catalog and interactions of A.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import polars.selectors as cs

from mia.errors import InputError
from mia.hashing import unit_interval
from mia.lake import Lake, partition_files
from mia.progress import PartSeconds, collect_part_seconds, report_progress, timed_part
from mia.schema import CATEGORY, LABEL, OFFER_ID, P_ACCEPT, SUBSCRIBER_ID
from mia.settings import Settings
from models import metrics as mx
from models.blend import OfferBlend, offer_statistics
from models.propensity import P_CATEGORY, CategoryPropensity, training_frame
from models.sampling import label_rates, sample_by_label, sample_rows
from models.scoring import MODEL_NAME, ModelBundle, active_offers, blend_frame, score_offers
from models.taste import TASTE_LOGIT, CategoryTaste

logger = logging.getLogger(__name__)

HOLDOUT_SHARE = 0.3
HOLDOUT_SALT = "mia-blend-holdout"
GATE_METRIC = "blend.roc_auc"
ALS_K = 5  # ranking cut-off of the ALS validation metrics
BLEND_LEAVES = 7
BLEND_MIN_DATA_IN_LEAF = 200
# Propensity trains on the oldest snapshots, calibrates on the next, the blend fits on the last.
MIN_TRAIN_SNAPSHOTS = 3
TRAINED_AS_OF_TAG = "trained_as_of"
TRAINING_STAGES = (
    "snapshots and labels",
    "propensity, ALS and blend models",
    "holdout metrics",
    "MLflow registry and quality gate",
)


class TrainingInputError(InputError):
    """The data root cannot provide what training needs (history, labels, tables)."""


GIB = 2**30
# Snapshot bytes a retrain keeps in memory at most; the others are read from the lake each time
# they are used. A snapshot of 1M subscribers is about 1.7 GB and a retrain reads 13, so at that
# size only the newest two stay in memory; at 100k all 13 (2.3 GB) do.
SNAPSHOTS_IN_MEMORY_BYTES = 4 * GIB


# Subscribers whose blend inputs training computes at a time (about 7M candidate rows).
BLEND_CHUNK_SUBSCRIBERS = 100_000


class SnapshotStore(Mapping[dt.date, pl.DataFrame]):
    """Training snapshots by date: held in memory while they fit in `budget` bytes, the others
    read from the lake whenever one is used (they are stored there once built)."""

    def __init__(self, lake: Lake, budget: int | None = None) -> None:
        self._lake = lake
        self._budget = SNAPSHOTS_IN_MEMORY_BYTES if budget is None else budget
        self._held: dict[dt.date, pl.DataFrame] = {}
        self._dates: list[dt.date] = []

    def add(self, date: dt.date, snapshot: pl.DataFrame) -> None:
        """Add the (stored) snapshot of `date`: kept in memory if it fits the budget."""
        held = sum(frame.estimated_size() for frame in self._held.values())
        if held + snapshot.estimated_size() <= self._budget:
            self._held[date] = snapshot
        self._dates.append(date)

    def in_memory(self) -> list[dt.date]:
        """The dates whose snapshot is held in memory."""
        return sorted(self._held)

    def __getitem__(self, date: dt.date) -> pl.DataFrame:
        if date in self._held:
            return self._held[date]
        if date not in self._dates:
            raise KeyError(date)
        from features.snapshot import read_snapshot

        return read_snapshot(self._lake, date)

    def __iter__(self) -> Iterator[dt.date]:
        return iter(sorted(self._dates))

    def __len__(self) -> int:
        return len(self._dates)


class FramesOnDemand(Mapping[dt.date, pl.DataFrame]):
    """Frames by date, each read by `read` whenever it is used and never kept: for inputs used
    once or twice per retrain whose size grows with subscribers (an offer state of a million
    subscribers is 1.7 GB)."""

    def __init__(self, dates: Iterable[dt.date], read: Callable[[dt.date], pl.DataFrame]) -> None:
        self._dates = sorted(set(dates))
        self._read = read

    def __getitem__(self, date: dt.date) -> pl.DataFrame:
        if date not in self._dates:
            raise KeyError(date)
        return self._read(date)

    def __iter__(self) -> Iterator[dt.date]:
        return iter(self._dates)

    def __len__(self) -> int:
        return len(self._dates)


@dataclass(frozen=True)
class TrainingData:
    """Everything training reads from the data root, as plain frames."""

    as_of: dt.date
    snapshot_dates: tuple[dt.date, ...]  # oldest first; the last is T_0
    snapshots: Mapping[dt.date, pl.DataFrame]  # a SnapshotStore, or any mapping
    category_labels: dict[dt.date, pl.DataFrame]
    offer_labels: dict[dt.date, pl.DataFrame]
    catalog: pl.DataFrame  # every offer known on any snapshot date or as_of
    catalog_as_of: pl.DataFrame
    interactions_blend: pl.DataFrame  # up to T_0
    interactions_as_of: pl.DataFrame  # up to as_of
    input_example: pl.DataFrame  # a few rows of the as_of snapshot
    interactions_tune: pl.DataFrame | None = None  # up to the validation snapshot
    interactions_tune_valid: pl.DataFrame | None = None  # (validation snapshot, T_0]
    # Interactions up to each earlier snapshot the blend is fitted on (T_1, T_2, ...; see
    # `blend_windows`).
    interactions_windows: dict[dt.date, pl.DataFrame] = field(default_factory=dict)
    # Responses per subscriber x offer up to T_0 and up to each of those snapshots (a
    # FramesOnDemand: read when used).
    offer_states: Mapping[dt.date, pl.DataFrame] = field(default_factory=dict)

    def blend_window(self, window: int) -> tuple[dt.date, pl.DataFrame, pl.DataFrame | None]:
        """Snapshot date, ALS interactions and offer state of blend window T_`window` (0: T_0)."""
        date = self.snapshot_dates[-1 - window]
        interactions = self.interactions_windows[date] if window else self.interactions_blend
        return date, interactions, self.offer_states.get(date)


@dataclass
class TrainingReport:
    """What a training run produced and decided."""

    as_of: dt.date
    snapshot_dates: list[dt.date]
    metrics: dict[str, float]
    fallback_categories: list[str]
    bundle: ModelBundle
    run_id: str | None = None
    version: str | None = None
    promoted: bool | None = None
    reason: str = ""
    champion_version: str | None = None
    evaluate: Callable[[Any], dict[str, float]] | None = None  # the gate's holdout evaluation
    notes: dict[str, Any] = field(default_factory=dict)
    # Wall and CPU seconds per part (snapshots, labels, responses, als_tuning, propensity, als,
    # taste, blend_inputs, blend, holdout_metrics, registry), summed over the blend's windows.
    seconds: PartSeconds | None = None


def snapshot_dates(
    as_of: dt.date, settings: Settings, first_day: dt.date | None = None
) -> list[dt.date]:
    """Training snapshot dates T_{n-1}..T_0 (oldest first); labels of T_0 end on `as_of`.

    Up to `settings.train_snapshots` dates; with `first_day` (the first ingested day), only dates
    with at least `snapshot_step_days` of history behind them, so a young data root trains on
    what it has instead of failing.
    """
    dates = [
        as_of - dt.timedelta(days=settings.horizon_days + index * settings.snapshot_step_days)
        for index in reversed(range(settings.train_snapshots))
    ]
    if first_day is not None:
        earliest = first_day + dt.timedelta(days=settings.snapshot_step_days)
        dates = [date for date in dates if date >= earliest]
    return dates


def blend_windows(snapshots: int, wanted: int) -> int:
    """Labelled windows the blend is fitted on given `snapshots` training snapshots: up to
    `wanted` (the `blend_windows` setting), each leaving its own propensity at least one snapshot
    to train on and one to calibrate on."""
    return max(1, min(wanted, snapshots - MIN_TRAIN_SNAPSHOTS + 1))


def holdout_mask(subscriber_ids: pl.Series | np.ndarray, seed: int) -> np.ndarray:
    """True for subscribers held out of the blend fit (a stable HOLDOUT_SHARE of ids)."""
    return unit_interval(subscriber_ids, f"{HOLDOUT_SALT}-{seed}") < HOLDOUT_SHARE


def read_or_build_snapshot(lake: Lake, date: dt.date, settings: Settings) -> pl.DataFrame:
    """The stored snapshot of `date`, built (with any missing daily aggregates) when absent."""
    from features.daily import build_daily_range
    from features.snapshot import build_snapshot, read_snapshot
    from mia.ingest import ingested_dates

    if partition_files(lake.snapshot(date)):
        return read_snapshot(lake, date)  # all shards, in subscriber order
    ingested = [day for day in ingested_dates(lake) if day <= date]
    if ingested:
        build_daily_range(lake, ingested[0], date)
    return build_snapshot(lake, date, settings=settings, write=True)


def plain_types(frame: pl.DataFrame) -> pl.DataFrame:
    """Categorical and enum columns as plain strings (what a served model receives)."""
    return frame.with_columns(cs.categorical().cast(pl.String), cs.enum().cast(pl.String))


def load_training_data(lake: Lake, as_of: dt.date, settings: Settings) -> TrainingData:
    """Snapshots, labels, catalogs and interactions for training as of `as_of`."""
    from features.daily import build_daily_range
    from features.labels import category_labels, offer_labels
    from features.offer_state import read_offer_state
    from mia.ingest import ingested_dates, raw_events, raw_state
    from models.cf import build_interactions

    # Days count as ingested by their manifest: state tables are delivered only when they change.
    ingested = ingested_dates(lake)
    dates = snapshot_dates(as_of, settings, first_day=ingested[0] if ingested else None)
    if not ingested or len(dates) < MIN_TRAIN_SNAPSHOTS or ingested[-1] < as_of:
        span = f"{ingested[0]}..{ingested[-1]}" if ingested else "nothing"
        needed = snapshot_dates(as_of, settings.replace(train_snapshots=MIN_TRAIN_SNAPSHOTS))
        raise TrainingInputError(
            f"training as of {as_of} needs at least {MIN_TRAIN_SNAPSHOTS} snapshots every "
            f"{settings.snapshot_step_days} days with horizon {settings.horizon_days}, i.e. "
            f"ingested days from {needed[0] - dt.timedelta(days=settings.snapshot_step_days)} "
            f"to {as_of}; raw/ holds {span}."
        )
    logger.info("training on %d snapshots: %s .. %s", len(dates), dates[0], dates[-1])
    with timed_part("snapshots"):
        build_daily_range(lake, ingested[0], as_of)
    lookback = max(settings.windows)
    with timed_part("responses"):
        events = raw_events(lake, "offer_events", dates[0] - dt.timedelta(days=lookback), as_of)
        if events is None:
            raise TrainingInputError(
                "table offer_events was never delivered: nothing to learn from."
            )
        events = events.collect(engine="streaming").lazy()
        consumption = None
        if settings.consumption_weight > 0:  # read only when ALS is to learn from it
            consumption = raw_events(
                lake, "consumption", dates[0] - dt.timedelta(days=lookback), as_of
            )
        if consumption is not None:
            consumption = consumption.collect(engine="streaming").lazy()

    def interactions(until: dt.date, days: int) -> pl.DataFrame:
        with timed_part("responses"):
            return build_interactions(
                events, until, days, consumption=consumption,
                consumption_weight=settings.consumption_weight,
            )  # fmt: skip

    def offer_state(date: dt.date) -> pl.DataFrame:
        with timed_part("responses"):
            return read_offer_state(lake, date)

    catalogs = []
    for date in [*dates, as_of]:
        catalog = raw_state(lake, "catalog", date)
        if catalog is None:
            raise TrainingInputError(f"table catalog has no delivery on or before {date}.")
        catalogs.append(catalog)
    catalog = pl.concat(catalogs, how="vertical").unique(OFFER_ID, keep="last").sort(OFFER_ID)

    snapshots, categories, offers = SnapshotStore(lake), {}, {}
    # The newest first: they are read most (validation, tastes, blend rows), so they are the ones
    # kept in memory when not all fit.
    for done, date in enumerate([as_of, *reversed(dates)]):
        report_progress("training snapshots", done, len(dates) + 1, str(date))
        with timed_part("snapshots"):
            snapshot = read_or_build_snapshot(lake, date, settings)
            if date == as_of:
                input_example = plain_types(snapshot.sort(SUBSCRIBER_ID).head(5))
            else:
                snapshots.add(date, snapshot)
            del snapshot
    report_progress("training snapshots", len(dates) + 1, len(dates) + 1)
    logger.info("%d of %d snapshots held in memory", len(snapshots.in_memory()), len(snapshots))
    for date in dates:
        with timed_part("labels"):
            categories[date] = category_labels(events, catalog, date, settings.horizon_days)
            offers[date] = offer_labels(events, catalog, date, settings.horizon_days)
        logger.info(
            "labels %s: %d category rows (%d positive), %d offer rows",
            date,
            categories[date].height,
            int(categories[date][LABEL].sum()),
            offers[date].height,
        )
    windows = {
        dates[-1 - index]: interactions(dates[-1 - index], lookback)
        for index in range(1, blend_windows(len(dates), settings.blend_windows))
    }
    return TrainingData(
        as_of=as_of,
        snapshot_dates=tuple(dates),
        snapshots=snapshots,
        category_labels=categories,
        offer_labels=offers,
        catalog=catalog,
        catalog_as_of=catalogs[-1],
        interactions_blend=interactions(dates[-1], lookback),
        interactions_as_of=interactions(as_of, lookback),
        input_example=input_example,
        interactions_tune=(
            windows[dates[-2]] if dates[-2] in windows else interactions(dates[-2], lookback)
        ),
        interactions_tune_valid=interactions(dates[-1], (dates[-1] - dates[-2]).days),
        interactions_windows=windows,
        offer_states=FramesOnDemand([dates[-1], *windows], offer_state),
    )


def propensity_model(settings: Settings) -> CategoryPropensity:
    """The category propensity estimator configured by `settings`."""
    return CategoryPropensity(
        min_positives=settings.min_positives,
        num_threads=settings.num_threads,
        random_state=settings.seed,
        dask_address=settings.dask_address,
        dask_min_rows=settings.dask_train_rows,
    )


def cf_model(settings: Settings, **params: Any):
    """The ALS recommender configured by `settings` (and tuned `params`, which win)."""
    from models.cf import ALSRecommender

    configured = {
        "factors": settings.als_factors,
        "regularization": settings.als_regularization,
        "iterations": settings.als_iterations,
        "random_state": settings.seed,
        "num_threads": 1,
    }
    return ALSRecommender(**{**configured, **params})


def taste_model(settings: Settings) -> CategoryTaste | None:
    """The taste estimator configured by `settings`, or None when tastes are turned off."""
    if not settings.taste_factors:
        return None
    return CategoryTaste(
        factors=settings.taste_factors, window=max(settings.windows), random_state=settings.seed
    )


def als_grid(settings: Settings) -> dict[str, list]:
    """Factors and regularisation tried around the configured values."""
    factors = settings.als_factors
    regularization = settings.als_regularization
    return {
        "factors": sorted({max(2, factors // 2), factors, factors * 2}),
        "regularization": [regularization / 5, regularization, regularization * 5],
        "iterations": [settings.als_iterations],
        "num_threads": [1],
    }


def tuned_als_params(data: TrainingData, settings: Settings) -> tuple[dict, dict[str, float]]:
    """ALS parameters chosen on the validation window, with the chosen model's ranking metrics.

    Each candidate is fitted on interactions up to the validation snapshot and judged by what the
    blend needs from it: how well its score separates accepted from ignored offers among those
    shown in the validation window (ROC AUC). Ranking metrics (precision, MAP, NDCG, coverage at
    5) of the chosen parameters on that window are reported alongside. The configured parameters
    (and no metrics) when the window has nothing to judge by.
    """
    from models.cf import tune_als

    valid_date = data.snapshot_dates[-2]
    shown = data.offer_labels[valid_date]
    valid = data.interactions_tune_valid
    train = data.interactions_tune
    if train is None or valid is None or valid.is_empty() or shown[LABEL].n_unique() < 2:
        logger.info("ALS: nothing to judge by in the validation window, configured parameters kept")
        return {}, {}
    users = shown[SUBSCRIBER_ID].unique().sort()
    offers = shown[OFFER_ID].unique().sort()
    user_row = {user: row for row, user in enumerate(users.to_list())}
    offer_column = {offer: column for column, offer in enumerate(offers.to_list())}
    rows = np.array([user_row[user] for user in shown[SUBSCRIBER_ID].to_list()])
    columns = np.array([offer_column[offer] for offer in shown[OFFER_ID].to_list()])
    labels = shown[LABEL].to_numpy()
    grid = als_grid(settings)
    names = sorted(grid)
    best: tuple[float, dict] | None = None
    candidates = list(itertools.product(*(grid[name] for name in names)))
    for done, values in enumerate(candidates):
        params = dict(zip(names, values, strict=True))
        report_progress("ALS candidates", done, len(candidates), _describe(params))
        model = cf_model(settings, **params).fit(train)
        scores = model.score(users, offers, train)[rows, columns]
        auc = mx.roc_auc(labels, scores)
        logger.info("ALS %s: validation AUC %.4f", params, auc)
        if best is None or auc > best[0] + 1e-12:
            best = (auc, params)
    report_progress("ALS candidates", len(candidates), len(candidates))
    auc, params = best
    _, metrics = tune_als(
        train, valid, {name: [value] for name, value in params.items()}, k=ALS_K,
        random_state=settings.seed,
    )  # fmt: skip
    metrics = {**metrics, "validation_roc_auc": auc}
    logger.info("ALS tuned: %s (validation AUC %.4f)", params, auc)
    return params, metrics


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{name} {value}" for name, value in params.items() if name != "num_threads")


def blend_model(settings: Settings) -> OfferBlend:
    """The blend estimator configured by `settings`.

    Small leaves with many rows each: the blend stacks a few strong inputs and must not learn the
    noise of one labelled window.
    """
    return OfferBlend(
        num_threads=settings.num_threads,
        random_state=settings.seed,
        num_leaves=BLEND_LEAVES,
        min_data_in_leaf=BLEND_MIN_DATA_IN_LEAF,
    )


def _labelled_blend_rows(
    bundle: ModelBundle, data: TrainingData, window: int = 0
) -> tuple[pl.DataFrame, np.ndarray]:
    """Blend inputs of the shown subscriber x offer pairs of snapshot T_`window` with labels, and
    the holdout mask; `bundle` holds the models as of that snapshot."""
    date, interactions, offer_state = data.blend_window(window)
    offers = active_offers(data.catalog, date + dt.timedelta(days=1))
    offers = offers.filter(pl.col(CATEGORY).is_in(bundle.propensity.categories_))
    labels = data.offer_labels[date].select(SUBSCRIBER_ID, OFFER_ID, pl.col(LABEL).cast(pl.Int8))
    with timed_part("blend_inputs"):
        # Only labelled subscribers, a chunk at a time: a subscriber's inputs do not depend on
        # the others (`score_offers` chunks the same way), and all subscribers x offers of a
        # 1M-subscriber week would be 66M rows of inputs.
        snapshot = (
            data.snapshots[date]
            .join(labels.select(SUBSCRIBER_ID).unique(), on=SUBSCRIBER_ID, how="semi")
            .sort(SUBSCRIBER_ID)
        )
        parts = []
        for start in range(0, snapshot.height, BLEND_CHUNK_SUBSCRIBERS) or [0]:
            chunk = snapshot.slice(start, BLEND_CHUNK_SUBSCRIBERS)
            frame = blend_frame(bundle, chunk, offers, interactions, offer_state, data.catalog)
            parts.append(frame.join(labels, on=[SUBSCRIBER_ID, OFFER_ID], how="inner"))
        rows = pl.concat(parts).sort(SUBSCRIBER_ID, OFFER_ID)
    return rows, holdout_mask(rows[SUBSCRIBER_ID], bundle.propensity.random_state)


def _input_models(
    data: TrainingData, settings: Settings, window: int, als_params: dict[str, Any]
) -> ModelBundle:
    """Propensity, offer statistics, ALS and tastes as of snapshot T_`window` (0: T_0), trained
    on what was known then: the blend's inputs for that snapshot's labels, out of sample."""
    dates = data.snapshot_dates[: len(data.snapshot_dates) - window]
    train_dates, valid_date, date = dates[:-2], dates[-2], dates[-1]
    rows = sum(data.category_labels[d].height for d in train_dates)
    positives = sum(int(data.category_labels[d][LABEL].sum()) for d in train_dates)
    # The rows' assembly counts as the propensity's: at 1M subscribers it reads 11 snapshots.
    with timed_part("propensity"):
        rates = label_rates(rows, positives, settings.max_train_rows)
        train = pl.concat(
            [
                training_frame(
                    data.snapshots[d],
                    sample_by_label(data.category_labels[d], rates, settings.seed),
                )
                for d in train_dates
            ],
            how="diagonal_relaxed",
        )
        valid_labels = sample_rows(
            data.category_labels[valid_date], settings.max_train_rows // 4, settings.seed
        )
        valid = training_frame(data.snapshots[valid_date], valid_labels)
        logger.info(
            "propensity as of %s: train %s (%d rows of %d, positives kept at rate %.3f, negatives "
            "at %.3f), valid %s (%d rows of %d)",
            date,
            [str(d) for d in train_dates],
            train.height,
            rows,
            rates.positive,
            rates.negative,
            valid_date,
            valid.height,
            data.category_labels[valid_date].height,
        )
        propensity = propensity_model(settings).fit(train, valid)
        del train, valid  # 1M rows of 400 features: not to be held through ALS and tastes
    history = pl.concat([data.offer_labels[d] for d in dates[:-1]], how="vertical")
    _, interactions, _ = data.blend_window(window)
    logger.info("ALS on %d interactions up to %s", interactions.height, date)
    with timed_part("als"):
        cf = cf_model(settings, **als_params).fit(interactions)
    taste = taste_model(settings)
    if taste is not None:
        # The snapshot holds the responses up to its date: the blend's labels come after it.
        with timed_part("taste"):
            taste.fit(data.snapshots[date], propensity.categories_)
    return ModelBundle(
        propensity=propensity,
        cf=cf,
        blend=blend_model(settings),
        offer_stats=offer_statistics(history, data.catalog),
        catalog=data.catalog_as_of,
        interactions=data.interactions_as_of,
        trained_as_of=data.as_of,
        metadata={"snapshot_dates": ",".join(str(d) for d in data.snapshot_dates)},
        taste=taste,
    )


def fit_bundle(data: TrainingData, settings: Settings) -> tuple[ModelBundle, dict[str, Any]]:
    """Fit propensity, ALS and blend on `data`; the bundle and its holdout frames.

    The blend is fitted on the labels of the last `blend_windows` snapshots, each window's inputs
    from models trained as of that window (`_input_models`); the bundle keeps those of T_0.
    """
    with timed_part("als_tuning"):
        als_params, als_metrics = tuned_als_params(data, settings)
    windows = min(
        blend_windows(len(data.snapshot_dates), settings.blend_windows),
        1 + len(data.interactions_windows),
    )
    bundle = _input_models(data, settings, 0, als_params)
    rows, held = _labelled_blend_rows(bundle, data)
    fit_parts = [rows.filter(pl.Series(~held))]
    for window in range(1, windows):
        past_rows, past_held = _labelled_blend_rows(
            _input_models(data, settings, window, als_params), data, window
        )
        fit_parts.append(past_rows.filter(pl.Series(~past_held)))
    fit_rows = pl.concat(fit_parts, how="vertical")
    logger.info(
        "blend on %d windows up to %s: %d rows (%d of T_0 held out)",
        windows,
        data.snapshot_dates[-1],
        fit_rows.height,
        int(held.sum()),
    )
    with timed_part("blend"):
        bundle.blend.fit(fit_rows)
        holdout = rows.filter(pl.Series(held))
        holdout = holdout.with_columns(pl.Series(P_ACCEPT, bundle.blend.predict(holdout)))
    t0 = data.snapshot_dates[-1]
    t0_categories = training_frame(data.snapshots[t0], data.category_labels[t0])
    return bundle, {"holdout": holdout, "t0_categories": t0_categories, "als": als_metrics}


def compute_metrics(bundle: ModelBundle, frames: dict[str, Any]) -> dict[str, float]:
    """Propensity metrics per category on T_0 (out of time) and blend metrics on the holdout."""
    result: dict[str, float] = {}
    t0 = frames["t0_categories"]
    # Categories without a model (too few positives before T_0) are scored by a prior, not
    # measured here: the inner join keeps the categories the propensity model predicts.
    scored = t0.select(SUBSCRIBER_ID, CATEGORY, LABEL).join(
        bundle.propensity.predict(t0.unique(SUBSCRIBER_ID, keep="first").sort(SUBSCRIBER_ID)),
        on=[SUBSCRIBER_ID, CATEGORY],
        how="inner",
    )
    result.update(mx.grouped_metrics(scored, CATEGORY, LABEL, P_CATEGORY, "propensity"))
    result.update(mx.binary_metrics(scored[LABEL], scored[P_CATEGORY], "propensity.all"))
    holdout = frames["holdout"]
    y = holdout[LABEL].to_numpy()
    result.update(mx.binary_metrics(y, holdout[P_ACCEPT].to_numpy(), "blend"))
    result["inputs.p_category.roc_auc"] = mx.roc_auc(y, holdout[P_CATEGORY].to_numpy())
    result["inputs.p_category.log_loss"] = mx.log_loss(y, holdout[P_CATEGORY].to_numpy())
    result["inputs.cf_score.roc_auc"] = mx.roc_auc(y, holdout["cf_score"].to_numpy())
    if bundle.taste is not None:
        result["inputs.taste_logit.roc_auc"] = mx.roc_auc(y, holdout[TASTE_LOGIT].to_numpy())
    result["propensity.fallback_categories"] = float(len(bundle.propensity.fallback_categories_))
    result.update({f"als.{key}": value for key, value in frames.get("als", {}).items()})
    return result


def holdout_evaluator(
    data: TrainingData, holdout: pl.DataFrame
) -> Callable[[Any], dict[str, float]]:
    """`evaluate(scorer)` for the gate: blend metrics of any bundle on the same T_0 holdout."""
    t0 = data.snapshot_dates[-1]
    subscribers = holdout[SUBSCRIBER_ID].unique().sort()
    snapshot = data.snapshots[t0].filter(pl.col(SUBSCRIBER_ID).is_in(subscribers.implode()))
    offer_state = data.offer_states.get(t0)
    if offer_state is not None:  # the holdout's part only: it is kept for the gate
        offer_state = offer_state.filter(pl.col(SUBSCRIBER_ID).is_in(subscribers.implode()))
    labels = holdout.select(SUBSCRIBER_ID, OFFER_ID, LABEL)

    def evaluate(scorer: Any) -> dict[str, float]:
        scores = score_offers(
            scorer,
            snapshot,
            data.catalog,
            data.interactions_blend,
            with_reasons=False,
            offer_state=offer_state,
        )
        joined = labels.join(scores, on=[SUBSCRIBER_ID, OFFER_ID], how="inner")
        return mx.binary_metrics(joined[LABEL], joined[P_ACCEPT], "blend")

    return evaluate


def _figures(bundle: ModelBundle, frames: dict[str, Any]) -> dict[str, Any]:
    """Calibration, lift and feature-importance plots (matplotlib figures, no pyplot state)."""
    from matplotlib.figure import Figure

    holdout = frames["holdout"]
    y, p = holdout[LABEL].to_numpy(), holdout[P_ACCEPT].to_numpy()
    figures = {}

    figure = Figure(figsize=(5, 5))
    axis = figure.subplots()
    table = mx.calibration_table(y, p, bins=10)
    top = max(float(table["mean_predicted"].max() or 0), float(table["observed_rate"].max() or 0))
    axis.plot([0, top], [0, top], linestyle="--", color="grey", label="perfect")
    axis.plot(table["mean_predicted"], table["observed_rate"], marker="o", label="blend")
    axis.set(xlabel="predicted P(accept)", ylabel="observed accept rate", title="Calibration")
    axis.legend()
    figures["plots/calibration.png"] = figure

    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    lift = mx.lift_table(y, p, buckets=10)
    axis.bar(lift["population_share"] * 100, lift["lift"], width=8)
    axis.axhline(1.0, color="grey", linestyle="--")
    axis.set(xlabel="top % of holdout by P(accept)", ylabel="cumulative lift", title="Lift")
    figures["plots/lift.png"] = figure

    importance = (
        bundle.propensity.feature_importance()
        .group_by("feature")
        .agg(pl.col("importance").sum())
        .sort(["importance", "feature"], descending=[True, False])
        .head(20)
    )
    figure = Figure(figsize=(7, 6))
    axis = figure.subplots()
    axis.barh(importance["feature"].to_list()[::-1], importance["importance"].to_list()[::-1])
    axis.set(xlabel="total gain over category models", title="Feature importance (top 20)")
    figure.tight_layout()
    figures["plots/feature_importance.png"] = figure
    return figures


def _params(bundle: ModelBundle, data: TrainingData, settings: Settings) -> dict[str, Any]:
    params: dict[str, Any] = {
        "as_of": data.as_of,
        "snapshot_dates": ",".join(str(d) for d in data.snapshot_dates),
        "horizon_days": settings.horizon_days,
        "seed": settings.seed,
    }
    params.update({f"propensity.{k}": v for k, v in bundle.propensity.get_params().items()})
    params.update({f"als.{k}": v for k, v in bundle.cf.get_params().items()})
    params.update({f"blend.{k}": v for k, v in bundle.blend.get_params().items()})
    if bundle.taste is not None:
        params.update({f"taste.{k}": v for k, v in bundle.taste.get_params().items()})
    params["propensity.fallback"] = ",".join(bundle.propensity.fallback_categories_) or "none"
    return params


def train_models(
    lake: Lake, as_of: dt.date, settings: Settings, register: bool = True
) -> TrainingReport:
    """Train, evaluate, log and register the models as of `as_of`; promote through the gate."""
    stages = TRAINING_STAGES if register else TRAINING_STAGES[:-1]
    report_progress("training", 0, len(stages), stages[0])
    with collect_part_seconds() as seconds:
        return _train(lake, as_of, settings, register, seconds)


def _train(
    lake: Lake, as_of: dt.date, settings: Settings, register: bool, seconds: PartSeconds
) -> TrainingReport:
    stages = TRAINING_STAGES if register else TRAINING_STAGES[:-1]
    data = load_training_data(lake, as_of, settings)
    report_progress("training", 1, len(stages), stages[1])
    bundle, frames = fit_bundle(data, settings)
    report_progress("training", 2, len(stages), stages[2])
    with timed_part("holdout_metrics"):
        metrics = compute_metrics(bundle, frames)
    logger.info(
        "holdout: blend AUC %.4f (category propensity alone %.4f, ALS alone %.4f)",
        metrics["blend.roc_auc"],
        metrics["inputs.p_category.roc_auc"],
        metrics["inputs.cf_score.roc_auc"],
    )
    report = TrainingReport(
        as_of=as_of,
        snapshot_dates=list(data.snapshot_dates),
        metrics=metrics,
        fallback_categories=bundle.propensity.fallback_categories_,
        bundle=bundle,
        evaluate=holdout_evaluator(data, frames["holdout"]),
        notes={"propensity_summary": bundle.propensity.summary_},
        seconds=seconds,
    )
    if register:
        report_progress("training", 3, len(stages), stages[3])
        with timed_part("registry"):
            _register(report, data, frames, settings)
    logger.info(
        "training seconds (wall / CPU) and rise of peak memory: %s",
        ", ".join(
            f"{name} {t:.1f} / {seconds.cpu[name]:.1f} s, +{seconds.peak_rise[name] / GIB:.2f} GiB"
            for name, t in seconds.wall.items()
        ),
    )
    report_progress("training", len(stages), len(stages))
    return report


def _register(
    report: TrainingReport, data: TrainingData, frames: dict[str, Any], settings: Settings
) -> None:
    """Log the run, register the bundle, and pass it through the champion gate."""
    import mlflow

    from models import registry

    bundle = report.bundle
    tags = {TRAINED_AS_OF_TAG: str(report.as_of)}
    with registry.start_run(settings, f"train-{report.as_of}", tags) as run_id:
        registry.log_params(_params(bundle, data, settings))
        registry.log_metrics(mx.finite(report.metrics))
        if report.seconds is not None:  # where the time went, up to the registry's own part
            registry.log_metrics({f"seconds.{part}": t for part, t in report.seconds.wall.items()})
        for path, figure in _figures(bundle, frames).items():
            registry.log_figure(figure, path)
        version = registry.log_scorer(MODEL_NAME, bundle, data.input_example.to_pandas())
        decision = registry.promote(
            MODEL_NAME,
            version,
            report.evaluate,
            GATE_METRIC,
            higher_is_better=True,
            tolerance=settings.gate_tolerance,
        )
        registry.log_metrics({"gate.promoted": float(decision.promoted)})
        mlflow.MlflowClient().set_model_version_tag(
            MODEL_NAME, version, TRAINED_AS_OF_TAG, str(report.as_of)
        )
    bundle.version = version
    report.run_id, report.version = run_id, version
    report.promoted, report.reason = decision.promoted, decision.reason
    report.champion_version = decision.champion_version if not decision.promoted else version
    logger.info("%s v%s: %s", MODEL_NAME, version, decision.reason)
