"""Scoring: P(accept | shown) with reasons for every subscriber x active offer.

`ModelBundle` holds what training learned (category propensity, ALS, blend, offer statistics) plus
the catalog and interactions of its training date, so that `predict_frame(snapshot)` works alone
(this is what the registry serves). `score_offers` takes tonight's catalog and interactions
explicitly; that is what the nightly run calls. Given the night's eligible pairs it scores only
those (category propensities and ALS scores are still computed for every active offer, since the
blend centres and ranks them per subscriber), and reasons can be left for `add_reasons` to fill in
for the published rows only.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mia.errors import InputError
from mia.schema import (
    CATEGORY,
    MODEL_VERSION,
    OFFER_ID,
    P_ACCEPT,
    RANK,
    REASONS,
    SNAPSHOT_DATE,
    SUBSCRIBER_ID,
    VALUE,
)
from mia.settings import Settings
from models.blend import (
    INTERACTION_INPUTS,
    CandidateInputs,
    OfferBlend,
    candidate_inputs,
    category_activity,
    inputs_frame,
    propensity_and_cf,
)
from models.history import HISTORY_INPUTS, response_history
from models.propensity import CategoryPropensity
from models.reasons import explain

logger = logging.getLogger(__name__)

MODEL_NAME = "mia-offers"
SCORE_COLUMNS = (SUBSCRIBER_ID, OFFER_ID, CATEGORY, P_ACCEPT, REASONS, MODEL_VERSION)
_KEY = "_category_key"
# Cells whose blend inputs are gathered and predicted at once (about 20 MB of inputs).
BLEND_BLOCK_CELLS = 65_536


class ScoringInputError(InputError):
    """A snapshot or catalog given to scoring breaks its rules."""


@dataclass
class ModelBundle:
    """Everything needed to score offers; picklable, served through `predict_frame`."""

    propensity: CategoryPropensity
    cf: Any  # models.cf.ALSRecommender
    blend: OfferBlend
    offer_stats: pl.DataFrame
    catalog: pl.DataFrame
    interactions: pl.DataFrame
    trained_as_of: dt.date
    version: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    # Tastes from responses (models.taste.CategoryTaste); None in bundles trained without them.
    taste: Any = None

    @property
    def versions(self) -> dict[str, str]:
        """Registered model name -> version of the models inside (one bundle)."""
        return {MODEL_NAME: self.version}

    def use_compiled(self, cache_dir: Path | None) -> ModelBundle:
        """Score with compiled trees cached under `cache_dir` (same results, faster); None goes
        back to LightGBM's own predict."""
        self.propensity.use_compiled(cache_dir)
        self.blend.use_compiled(cache_dir)
        return self

    def predict_frame(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Scores for a snapshot frame, using the catalog and interactions stored at training and
        no response history (the night passes its offer state to `score_offers`)."""
        return score_offers(self, frame, self.catalog, self.interactions)


def snapshot_date_of(snapshot: pl.DataFrame) -> dt.date:
    """The single snapshot date of a snapshot frame."""
    if SNAPSHOT_DATE not in snapshot.columns:
        raise ScoringInputError(f"snapshot: column {SNAPSHOT_DATE!r} missing.")
    dates = snapshot.get_column(SNAPSHOT_DATE).cast(pl.Date).unique().drop_nulls()
    if len(dates) != 1:
        raise ScoringInputError(
            f"snapshot: column {SNAPSHOT_DATE!r} must hold exactly one date, "
            f"found {dates.sort().to_list()[:5]}."
        )
    return dates[0]


def active_offers(catalog: pl.DataFrame, day: dt.date) -> pl.DataFrame:
    """[offer_id, category, value] of offers whose start/end dates include `day`, sorted."""
    missing = [
        column
        for column in (OFFER_ID, CATEGORY, VALUE, "start_date", "end_date")
        if column not in catalog.columns
    ]
    if missing:
        raise ScoringInputError(f"catalog: columns {missing} missing.")
    return (
        catalog.filter(
            (pl.col("start_date") <= day)
            & (pl.col("end_date").is_null() | (pl.col("end_date") >= day))
        )
        .select(OFFER_ID, pl.col(CATEGORY).cast(pl.String), pl.col(VALUE).cast(pl.Float64))
        .unique(OFFER_ID, keep="first")
        .sort(OFFER_ID)
    )


def bundle_taste(bundle: ModelBundle, snapshot: pl.DataFrame) -> np.ndarray | None:
    """Taste logits (snapshot rows x the propensity's categories); None without a taste model."""
    return bundle.taste.predict_matrix(snapshot) if bundle.taste is not None else None


def bundle_inputs(
    bundle: ModelBundle,
    snapshot: pl.DataFrame,
    offers: pl.DataFrame,
    interactions: pl.DataFrame | None,
    offer_state: pl.DataFrame | None = None,
    catalog: pl.DataFrame | None = None,
) -> CandidateInputs:
    """The blend's inputs for every snapshot row x offer of `offers`, as matrices; the response
    history from `offer_state` as of the snapshot's date and each subscriber's activity per
    category from `interactions` (categories of their offers from `catalog`, default `offers`),
    None: no history known."""
    p_category, cf_scores = propensity_and_cf(
        bundle.propensity, bundle.cf, snapshot, offers, interactions
    )
    history = None
    if offer_state is not None and set(HISTORY_INPUTS) & set(bundle.blend.features):
        history = response_history(
            offer_state, snapshot[SUBSCRIBER_ID], offers, snapshot_date_of(snapshot), catalog
        )
    activity = None
    # Blends fitted before these inputs do not read them: no need to sum the interactions.
    if set(INTERACTION_INPUTS) & set(bundle.blend.features):
        activity = category_activity(
            interactions, snapshot[SUBSCRIBER_ID], catalog if catalog is not None else offers
        )
    return candidate_inputs(
        p_category,
        bundle.propensity.categories_,
        cf_scores,
        offers,
        bundle.offer_stats,
        unseen_prior=bundle.propensity.unseen_prior_,
        taste=bundle_taste(bundle, snapshot),
        history=history,
        activity=activity,
    )


def blend_frame(
    bundle: ModelBundle,
    snapshot: pl.DataFrame,
    offers: pl.DataFrame,
    interactions: pl.DataFrame | None,
    offer_state: pl.DataFrame | None = None,
    catalog: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Blend inputs for every snapshot subscriber x offer of `offers` (sorted offers); see
    `bundle_inputs` for `offer_state` and `catalog`."""
    inputs = bundle_inputs(bundle, snapshot, offers, interactions, offer_state, catalog)
    return inputs_frame(snapshot[SUBSCRIBER_ID], inputs, offers)


def _checked_snapshot(snapshot: pl.DataFrame) -> pl.DataFrame:
    """The snapshot sorted by subscriber; subscribers must be unique."""
    if SUBSCRIBER_ID not in snapshot.columns:
        raise ScoringInputError(f"snapshot: column {SUBSCRIBER_ID!r} missing.")
    snapshot = snapshot.sort(SUBSCRIBER_ID)
    if snapshot[SUBSCRIBER_ID].is_duplicated().any():
        duplicated = snapshot.filter(pl.col(SUBSCRIBER_ID).is_duplicated())[SUBSCRIBER_ID]
        raise ScoringInputError(
            f"snapshot: column {SUBSCRIBER_ID!r} must be unique, repeats "
            f"{duplicated.unique().sort().head(5).to_list()}."
        )
    return snapshot


def prior_scored_categories(bundle: ModelBundle, offers: pl.DataFrame) -> dict[str, str]:
    """Categories of `offers` scored by a prior rather than a model, each with why: never seen
    in training (the overall acceptance rate) or too little data (the category's own prior)."""
    propensity = bundle.propensity
    result = {}
    for category in sorted(set(offers[CATEGORY].cast(pl.String))):
        if category not in propensity.categories_:
            result[category] = "never seen in training"
        elif category in propensity.fallback_categories_:
            result[category] = "too few training accepts"
    return result


def _model_offers(bundle: ModelBundle, catalog: pl.DataFrame, as_of: dt.date) -> pl.DataFrame:
    """Offers active on the night after `as_of`; a category never seen in training is scored
    with the overall acceptance rate as its propensity (and explored like any other)."""
    offers = active_offers(catalog, as_of + dt.timedelta(days=1))
    unseen = sorted(set(offers[CATEGORY]) - set(bundle.propensity.categories_))
    if unseen:
        logger.info(
            "%d categories never seen in training are scored by the overall prior %.4f: %s",
            len(unseen),
            bundle.propensity.unseen_prior_,
            ", ".join(unseen[:10]),
        )
    return offers


def _cells(
    snapshot: pl.DataFrame, offers: pl.DataFrame, eligible: pl.DataFrame | None
) -> tuple[np.ndarray, np.ndarray]:
    """(snapshot row, offer position) of the pairs to score, in subscriber, offer order."""
    if eligible is None:
        rows = np.repeat(np.arange(snapshot.height, dtype=np.int64), offers.height)
        return rows, np.tile(np.arange(offers.height, dtype=np.int64), snapshot.height)
    missing = [column for column in (SUBSCRIBER_ID, OFFER_ID) if column not in eligible.columns]
    if missing:
        raise ScoringInputError(f"eligible: columns {missing} missing.")
    ids = snapshot[SUBSCRIBER_ID].to_numpy()
    wanted = eligible[SUBSCRIBER_ID].cast(pl.Int64).to_numpy()
    rows = np.searchsorted(ids, wanted).clip(0, max(ids.size - 1, 0))
    columns = (
        eligible[OFFER_ID]
        .cast(pl.String)
        .replace_strict(
            offers[OFFER_ID], np.arange(offers.height), default=-1, return_dtype=pl.Int64
        )
        .to_numpy()
    )
    if not ids.size:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    known = (columns >= 0) & (ids[rows] == wanted)
    # One key per pair: sorted by subscriber row then offer position, repeats dropped (a plain
    # sort: np.unique is several times slower on millions of keys).
    keys = np.sort(rows[known] * max(offers.height, 1) + columns[known])
    keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if keys.size else keys
    return keys // max(offers.height, 1), keys % max(offers.height, 1)


def _score_chunk(
    bundle: ModelBundle,
    snapshot: pl.DataFrame,
    offers: pl.DataFrame,
    interactions: pl.DataFrame | None,
    cells: tuple[np.ndarray, np.ndarray],
    offer_state: pl.DataFrame | None,
    catalog: pl.DataFrame,
) -> pl.DataFrame:
    """[subscriber_id, offer_id, category, p_accept] of the (row, offer position) `cells` of one
    chunk of a sorted snapshot."""
    rows, columns = cells
    inputs = bundle_inputs(bundle, snapshot, offers, interactions, offer_state, catalog)
    # The blend's matrix a block of cells at a time: the whole chunk's (millions of cells x
    # dozens of inputs) is never built, and the block's stays in memory that is reused.
    p_accept = np.empty(rows.size, dtype=np.float64)
    for start in range(0, rows.size, BLEND_BLOCK_CELLS):
        block = slice(start, start + BLEND_BLOCK_CELLS)
        x = inputs.matrix(rows[block], columns[block], bundle.blend.features)
        p_accept[block] = bundle.blend.predict_matrix(x)
    return pl.DataFrame(
        {
            SUBSCRIBER_ID: snapshot[SUBSCRIBER_ID].gather(rows),
            OFFER_ID: offers[OFFER_ID].gather(columns),
            CATEGORY: offers[CATEGORY].gather(columns),
            P_ACCEPT: pl.Series(P_ACCEPT, p_accept, dtype=pl.Float64),
        }
    )


def score_offers(
    bundle: ModelBundle,
    snapshot: pl.DataFrame,
    catalog: pl.DataFrame,
    interactions: pl.DataFrame | None,
    with_reasons: bool = True,
    eligible: pl.DataFrame | None = None,
    chunk_subscribers: int = 25_000,
    offer_state: pl.DataFrame | None = None,
    threads: int = 1,
) -> pl.DataFrame:
    """[subscriber_id, offer_id, category, p_accept, reasons, model_version] for all snapshot
    subscribers x offers active on the day after the snapshot, sorted by subscriber, offer.

    With `eligible` ([subscriber_id, offer_id]) only those pairs are scored and returned (the same
    values as scoring all of them). Without reasons the column is null (see `add_reasons`).
    Subscribers are scored `chunk_subscribers` at a time, which bounds memory, not results;
    `threads` chunks at a time (each chunk's work is mostly NumPy, polars and compiled trees,
    which release the GIL), with the same results as one.
    `offer_state` (`features.offer_state`, as of the snapshot's date) gives the blend each pair's
    response history; without it every pair is scored as never shown.
    """
    if chunk_subscribers < 1:
        raise ScoringInputError(f"chunk_subscribers == {chunk_subscribers}, must be >= 1.")
    if threads < 1:
        raise ScoringInputError(f"threads == {threads}, must be >= 1.")
    as_of = snapshot_date_of(snapshot)
    snapshot = _checked_snapshot(snapshot)
    offers = _model_offers(bundle, catalog, as_of)
    rows, columns = _cells(snapshot, offers, eligible)
    bounds = np.searchsorted(
        rows, np.arange(0, snapshot.height + chunk_subscribers, chunk_subscribers)
    )

    def score_chunk(index: int) -> pl.DataFrame:
        start = index * chunk_subscribers
        cells = slice(bounds[index], bounds[index + 1])
        return _score_chunk(
            bundle,
            snapshot.slice(start, chunk_subscribers),
            offers,
            interactions,
            (rows[cells] - start, columns[cells]),
            offer_state,
            catalog,
        )

    chunk_indices = range(-(-snapshot.height // chunk_subscribers))
    if threads == 1:  # in this thread: simpler to profile and debug
        chunks = [score_chunk(index) for index in chunk_indices]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            chunks = list(pool.map(score_chunk, chunk_indices))
    scored = pl.concat(chunks)  # the snapshot holds at least one row (it has a date)
    if with_reasons:
        scored = add_reasons(bundle, snapshot, scored)
    else:
        scored = scored.with_columns(pl.lit(None, dtype=pl.String).alias(REASONS))
    logger.info(
        "scored %d subscriber x offer pairs (%d subscribers x %d offers%s) as of %s",
        scored.height,
        snapshot.height,
        offers.height,
        ", eligible only" if eligible is not None else "",
        as_of,
    )
    return scored.with_columns(pl.lit(bundle.version, dtype=pl.String).alias(MODEL_VERSION)).select(
        SCORE_COLUMNS
    )


def add_reasons(
    bundle: ModelBundle,
    snapshot: pl.DataFrame,
    offers_frame: pl.DataFrame,
    max_rank: int = 0,
) -> pl.DataFrame:
    """`offers_frame` with `reasons` set for each row's subscriber x category (rows, order and
    other columns unchanged); SHAP is computed for those pairs only, e.g. the published top K.

    With `max_rank` > 0 only rows whose `rank` is at most that get reasons (the others null), and
    SHAP runs for their pairs only; a row's reasons are the same either way.
    """
    needed = (SUBSCRIBER_ID, CATEGORY, RANK) if max_rank else (SUBSCRIBER_ID, CATEGORY)
    missing = [column for column in needed if column not in offers_frame.columns]
    if missing:
        raise ScoringInputError(f"offers frame: columns {missing} missing.")
    explained = pl.col(RANK) <= max_rank if max_rank else pl.lit(True)
    keys = offers_frame.select(SUBSCRIBER_ID, pl.col(CATEGORY).cast(pl.String).alias(_KEY))
    pairs = (
        offers_frame.filter(explained)
        .select(SUBSCRIBER_ID, pl.col(CATEGORY).cast(pl.String))
        .unique()
    )
    try:
        reasons = explain(bundle.propensity, snapshot, pairs=pairs)
    except InputError as error:
        raise ScoringInputError(f"offers frame: {error}") from error
    found = keys.join(
        reasons.rename({CATEGORY: _KEY}),
        on=[SUBSCRIBER_ID, _KEY],
        how="left",
        maintain_order="left",
    )[REASONS]
    return offers_frame.with_columns(pl.when(explained).then(pl.lit(found)).alias(REASONS))


# The last champion loaded in this process, by store, version, MLflow run and compiled-code
# folder: a night asks for it once per shard in several steps.
_LOADED: dict[tuple[str, ...], ModelBundle] = {}
# Shards scored in threads (`score_workers`) ask at once: one loads (and compiles), the other waits.
_LOADING = threading.Lock()


def load_bundle(settings: Settings, name: str = MODEL_NAME) -> ModelBundle:
    """The champion bundle (`models:/<name>@champion`), its `version` set from the registry,
    scoring with compiled trees unless `compiled_trees` is off; loaded once per process and
    champion (treat it as read-only)."""
    from models.registry import champion_info, load_champion

    with _LOADING:
        info = champion_info(name, settings)
        if info is None:
            return load_champion(name, settings)  # raises: there is no champion
        cache_dir = compiled_cache_dir(settings)
        key = (settings.mlflow_uri, name, str(info["version"]), str(info["run_id"]), str(cache_dir))
        bundle = _LOADED.get(key)
        if bundle is None:
            bundle = load_champion(name, settings)
            bundle.version = str(info["version"])
            bundle.use_compiled(cache_dir)
            _LOADED.clear()
            _LOADED[key] = bundle
        return bundle


def compiled_cache_dir(settings: Settings) -> Path | None:
    """Where compiled trees are cached (beside the MLflow artifacts), or None when
    `compiled_trees` is off."""
    return Path(settings.mlflow_artifacts) / "compiled" if settings.compiled_trees else None
