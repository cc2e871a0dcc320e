"""Model quality: Mia against simple baselines and the oracle, on simulated worlds.

    python -m benchmarks.quality --subscribers 20000 --days 120 --train-snapshots 8 --seed 11 \
        --threads 1 --workers 2

(`make bench-quality` runs exactly this: those are the defaults, every preset; `--workers` worlds
are evaluated at once, each in its own process; `--presets telco,content` picks worlds;
`--taste-factors 0` measures Mia without its taste model, `models.taste`.) One
world per simulator preset (`mia.simulate.PRESETS`), one table per world. Each world is simulated
(`mia.simulate.write_world`) in a temporary folder, every day is ingested, and the world is cut at
as_of = last day - horizon_days, so the horizon (as_of, last day] has been logged but no method
sees it. Every method is fitted on data up to the end of as_of only (no leakage: training labels
are those of the training snapshots, whose windows end on as_of; interactions and features stop
at as_of) and scores the same pairs, every subscriber of the as_of snapshot x every offer active
on as_of + 1:

- `mia`: the bundle that `models.training` fits (category propensity, ALS, blend), its p_accept;
- `popularity`: the offer's acceptance rate over the training window's impressions,
  (accepts + 30 x global rate) / (impressions + 30): a prior worth 30 impressions at the global
  acceptance rate, so an offer never shown gets the global rate;
- `als`: implicit ALS alone (`models.cf.ALSRecommender` with Mia's configured, untuned
  hyper-parameters) on the accepts of the 90 days up to as_of; its score ranks but is not a
  probability, so it has no ECE;
- `global_lgbm`: one LightGBM binary classifier over every labelled impression of Mia's training
  snapshots, reading the features Mia's propensity models read plus offer_id and category as
  categorical features, early-stopped on the last snapshot;
- `oracle`: the simulator's true P(accept | shown), the reference (capture 1 by definition);
- `behaviour_oracle`: the oracle's probability averaged over the latent tastes a subscriber might
  have: the best a model of log-visible behaviour alone can do;
- `taste_posterior`: the realistic ceiling of a model that learns tastes from responses: it knows
  the world (the true behaviour drivers, each offer's attractiveness, the taste prior: loadings,
  scale and noise) but not the subscriber's latent tastes, infers them from the subscriber's own
  impressions and same-day accepts up to as_of (the logs Mia reads; organic accepts left out) by
  a Bayesian logistic fit per subscriber (posterior mode, Laplace variances) and averages the
  acceptance over that posterior; `taste_posterior_90d` reads only the snapshot's longest window,
  as Mia's taste model does. Neither reads the tastes or anything after as_of;
- `random` (captures only): the expected value of a uniformly random pick;
- `consumed_popularity` (worlds with a `consumption` table): the number of subscribers who
  consumed the offer's item in the 90 days up to as_of (0 for offers nobody consumed). On such
  worlds `als` learns from the consumption as well as the accepts, as Mia's ALS does.

Columns of the tables (candidates: the pairs above whose product the subscriber does not hold,
as in `models.evaluate.evaluate_against_oracle`; ties broken by offer_id):

- `accepts@1`, `accepts@5`: expected acceptances (sum of the oracle's p) of the method's top 1 / 5
  offers per subscriber, divided by those of the oracle's own top 1 / 5;
- `value@1`, `value@5`: the same for expected value (oracle p x the offer's catalog value), the
  method ranking by score x value and the oracle by p x value;
- `spearman`: Spearman rank correlation of the method's score with the oracle's p within each
  subscriber, averaged over subscribers with at least 3 candidates (subscribers whose scores are
  all equal have none and are left out);
- `ECE`: expected calibration error, 10 equal-width probability bins, of the method's probability
  on the impressions of the horizon (label: accepted after being shown, `offer_labels`); the
  oracle's own is not 0 because the labels are draws;
- `P@5`: of the method's top 5 candidates per subscriber, the share the subscriber accepted in the
  horizon (any accept event, shown or not), over subscribers who accepted at least one candidate;
  divided by 5 even for a subscriber with fewer candidates (`models.ranking_metrics`). What was
  accepted depends on what the logging policy showed, so this favours methods that agree with it;
- `coverage@5`: distinct offers in any top 5 / distinct candidate offers;
- `top-1 share`: the share of subscribers whose top-1 offer is the single most common top-1 offer;
- `content P@5`, `items/list`, `max item share` (worlds with a `consumption` table): among the
  content offers (catalog offers that anyone consumed up to as_of), each subscriber's top 5 by
  the method's score; precision@5 against the items the subscriber consumed in the horizon (over
  subscribers who consumed at least one), distinct items in all lists per list, and the share of
  lists that hold the most common item. The oracle's row says how concentrated ideal lists are;
- `fit+score s`, `CPU s`: wall and CPU seconds of the method's fit and scoring (the training data
  that mia, popularity and global_lgbm share is read once, outside these times).

A second table per world says what the contact policy's rules cost (`offers.rank`): for each
method whose score is a probability, the expected value (oracle p x value) of the K offers per
subscriber that the policy publishes from that score as p_accept, over the value of the oracle's
own top K without rules; `no rules` ranks by expected value alone (min_probability still
applies), `no diversity` keeps at most `max_per_category` per category, `published` adds the
distinct categories in the first positions (`diversity_positions`), Mia's defaults.

The full results go to `--out` as JSON (default benchmarks/results/quality.json, git-ignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from benchmarks.common import RESULTS
from features.labels import label_window
from mia.ingest import ingest_day, raw_events
from mia.lake import Lake, end_of_day
from mia.schema import (
    CATEGORY,
    CF_SCORE,
    COVERED,
    EVENT,
    GROUP,
    ITEM_ID,
    LABEL,
    OFFER_ID,
    P_ACCEPT,
    PRODUCT_ID,
    RANK,
    SNAPSHOT_DATE,
    SUBSCRIBER_ID,
    TS,
    VALUE,
)
from mia.settings import Settings
from mia.simulate import PRESETS, SimulationConfig, oracle_p_accept, write_world
from mia.simulate.acceptance import (
    DRIVERS,
    acceptance_probability,
    behaviour_only_probability,
    category_factors,
    signals_from_drivers,
)
from mia.simulate.categories import CATEGORIES
from mia.simulate.config import TRUTH_DIR
from mia.simulate.content import affinity_sd, content_items, has_content
from mia.text import markdown_text
from models import metrics as mx
from models.cf import build_interactions
from models.evaluate import (
    ORACLE_P,
    HeldOutWorld,
    check_outcomes_after,
    held_out_world,
    score_world,
    subscriber_rank,
    top_k_metrics,
)
from models.propensity import NON_FEATURE_COLUMNS, FeatureEncoding
from models.ranking_metrics import ranking_metrics_from_lists
from models.scoring import active_offers
from models.taste import stable_sigmoid
from models.training import TrainingData, cf_model, fit_bundle, load_training_data
from offers.groups import TREATMENT
from offers.rank import scored_candidates, select_offers

logger = logging.getLogger(__name__)

SCORE = "score"
KS = (1, 5)
PRECISION_K = 5
MIN_SPEARMAN_CANDIDATES = 3
ECE_BINS = 10
POPULARITY_PRIOR_IMPRESSIONS = 30.0
# The global model's booster: the propensity models' settings, with the leaves a model over
# every offer at once needs.
GLOBAL_LGBM_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 63,
    "min_data_per_group": 20,
    "cat_smooth": 10.0,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}
GLOBAL_LGBM_ROUNDS = 400
TASTE_POSTERIOR_ITERATIONS = 50
TASTE_POSTERIOR_HALVINGS = 30
GLOBAL_LGBM_PATIENCE = 40
COLUMNS = (
    ("accepts@1", "top1_accepts_capture", "{:.3f}"),
    ("accepts@5", "top5_accepts_capture", "{:.3f}"),
    ("value@1", "top1_value_capture", "{:.3f}"),
    ("value@5", "top5_value_capture", "{:.3f}"),
    ("spearman", "spearman", "{:.3f}"),
    ("ECE", "ece", "{:.4f}"),
    ("P@5", "precision_at_5", "{:.3f}"),
    ("coverage@5", "coverage_at_5", "{:.2f}"),
    ("top-1 share", "top1_share", "{:.2f}"),
    ("fit+score s", "wall_seconds", "{:.1f}"),
    ("CPU s", "cpu_seconds", "{:.1f}"),
)
# Worlds with a consumption table: how each method's top 5 content offers fare (see the docstring).
CONTENT_COLUMNS = (
    ("content P@5", "content_precision_at_5", "{:.3f}"),
    ("items/list", "content_items_per_list", "{:.2f}"),
    ("max item share", "content_max_item_share", "{:.2f}"),
)


# Metrics: each takes the candidate pairs with a `score` column and returns plain floats.


def acceptance_capture(candidates: pl.DataFrame, score: str = SCORE) -> dict[str, float]:
    """Expected acceptances of the top 1 / 5 by `score` over those of the oracle's top 1 / 5."""
    result = top_k_metrics(candidates, KS, score=score, truth=ORACLE_P)
    return {f"top{k}_accepts_capture": result[f"top{k}.capture"] for k in KS}


def value_capture(candidates: pl.DataFrame, score: str = SCORE) -> dict[str, float]:
    """Expected value (oracle p x value) of the top 1 / 5 by score x value over the oracle's."""
    weighted = candidates.with_columns(
        (pl.col(score) * pl.col(VALUE)).alias("_score_value"),
        (pl.col(ORACLE_P) * pl.col(VALUE)).alias("_oracle_value"),
    )
    result = top_k_metrics(weighted, KS, score="_score_value", truth="_oracle_value")
    return {f"top{k}_value_capture": result[f"top{k}.capture"] for k in KS}


def random_capture(candidates: pl.DataFrame) -> dict[str, float]:
    """Capture of acceptances and value by a uniformly random pick (its expectation)."""
    accepts = top_k_metrics(candidates, KS, score=ORACLE_P, truth=ORACLE_P)
    value = top_k_metrics(
        candidates.with_columns((pl.col(ORACLE_P) * pl.col(VALUE)).alias("_oracle_value")),
        KS,
        score="_oracle_value",
        truth="_oracle_value",
    )
    return {
        **{f"top{k}_accepts_capture": accepts[f"top{k}.random_capture"] for k in KS},
        **{f"top{k}_value_capture": value[f"top{k}.random_capture"] for k in KS},
    }


def within_subscriber_spearman(
    candidates: pl.DataFrame, score: str = SCORE, min_candidates: int = MIN_SPEARMAN_CANDIDATES
) -> float:
    """Mean over subscribers (>= `min_candidates` candidates) of Spearman(score, oracle p)."""
    per_subscriber = (
        candidates.group_by(SUBSCRIBER_ID)
        .agg(
            pl.corr(score, ORACLE_P, method="spearman").alias("rho"),
            pl.len().alias("candidates"),
        )
        .filter(pl.col("candidates") >= min_candidates)
    )
    # A subscriber whose scores (or true p) are all equal has no rank correlation.
    rho = per_subscriber["rho"].fill_nan(None).drop_nulls()
    return float(rho.mean()) if rho.len() else math.nan


def calibration_error(impressions: pl.DataFrame, score: str = SCORE) -> float:
    """ECE (10 equal-width bins) of `score` as P(accept | shown) on labelled impressions."""
    return mx.expected_calibration_error(impressions[LABEL], impressions[score], bins=ECE_BINS)


def _top_lists(candidates: pl.DataFrame, score: str, k: int) -> pl.DataFrame:
    """[subscriber_id, top] with each subscriber's k best offers by `score`, best first."""
    return (
        candidates.sort(SUBSCRIBER_ID, OFFER_ID)
        .with_columns(subscriber_rank(score).alias("_rank"))
        .filter(pl.col("_rank") <= k)
        .sort(SUBSCRIBER_ID, "_rank")
        .group_by(SUBSCRIBER_ID, maintain_order=True)
        .agg(pl.col(OFFER_ID).alias("top"))
    )


def precision_at_k(
    candidates: pl.DataFrame, accepts: pl.DataFrame, score: str = SCORE, k: int = PRECISION_K
) -> float:
    """Share of each subscriber's top k that they accepted ([subscriber_id, offer_id] in
    `accepts`), averaged over subscribers with at least one accepted candidate."""
    accepted = accepts.select(SUBSCRIBER_ID, OFFER_ID).join(
        candidates.select(SUBSCRIBER_ID, OFFER_ID), on=[SUBSCRIBER_ID, OFFER_ID], how="semi"
    )
    relevant = accepted.group_by(SUBSCRIBER_ID).agg(pl.col(OFFER_ID).alias("accepted"))
    lists = _top_lists(candidates, score, k).join(relevant, on=SUBSCRIBER_ID, how="inner")
    if lists.is_empty():
        return math.nan
    metrics = ranking_metrics_from_lists(
        lists["top"].to_list(), [set(offers) for offers in lists["accepted"].to_list()], k, 1
    )
    return metrics[f"precision@{k}"]


def offer_coverage(
    candidates: pl.DataFrame, score: str = SCORE, k: int = PRECISION_K
) -> dict[str, Any]:
    """Distinct offers in any top k / candidate offers, and how concentrated the top 1 is."""
    lists = _top_lists(candidates, score, k)
    if lists.is_empty():
        return {f"coverage_at_{k}": math.nan, "top1_share": math.nan, "top1_offer": None}
    shown = lists["top"].explode().n_unique()
    firsts = lists["top"].list.first().value_counts(sort=True, name="n")
    # The most common first offer; among equally common ones the lowest offer_id.
    leader = firsts.sort(["n", "top"], descending=[True, False]).row(0, named=True)
    return {
        f"coverage_at_{k}": shown / candidates[OFFER_ID].n_unique(),
        "top1_share": leader["n"] / lists.height,
        "top1_offer": leader["top"],
    }


def content_offers(consumption: pl.DataFrame | None, as_of: dt.date) -> pl.Series:
    """Offer ids consumed by anyone up to the end of `as_of`: the content of the catalog."""
    if consumption is None:
        return pl.Series(OFFER_ID, [], dtype=pl.String)
    before = consumption.filter(pl.col(TS) < end_of_day(as_of))
    return before[ITEM_ID].unique().sort().rename(OFFER_ID)


def horizon_consumption(
    consumption: pl.DataFrame | None, as_of: dt.date, horizon_days: int
) -> pl.DataFrame:
    """[subscriber_id, offer_id] of items consumed in the horizon (as_of, as_of + horizon_days]."""
    if consumption is None:
        return pl.DataFrame(schema={SUBSCRIBER_ID: pl.Int64, OFFER_ID: pl.String})
    start, stop = label_window(as_of, horizon_days)
    return (
        consumption.filter(pl.col(TS) >= start, pl.col(TS) < stop)
        .select(SUBSCRIBER_ID, pl.col(ITEM_ID).alias(OFFER_ID))
        .unique()
    )


def content_metrics(
    candidates: pl.DataFrame, consumed: pl.DataFrame, score: str = SCORE, k: int = PRECISION_K
) -> dict[str, float]:
    """On content candidates: precision@k of the top k against the items consumed in the
    horizon, distinct items per top-k list, and the share of lists that hold the most common
    item (how personal the lists are)."""
    lists = _top_lists(candidates, score, k)
    if lists.is_empty():
        return {
            f"content_precision_at_{k}": math.nan,
            "content_items_per_list": math.nan,
            "content_max_item_share": math.nan,
        }
    items = lists["top"].explode()
    return {
        f"content_precision_at_{k}": precision_at_k(candidates, consumed, score, k),
        "content_items_per_list": items.n_unique() / lists.height,
        "content_max_item_share": int(items.value_counts()["count"].max()) / lists.height,
    }


# The contact policy's rules (offers.rank), from none to the published defaults.
POLICIES = {
    "no rules": {"max_per_category": None, "diversity_positions": 0},
    "no diversity": {"diversity_positions": 0},
    "published": {},
}


def policy_value(
    candidates: pl.DataFrame, catalog: pl.DataFrame, settings: Settings, score: str = SCORE
) -> dict[str, float]:
    """Expected value (oracle p x value) of the top K that the contact policy publishes from
    `score` as p_accept, over the value of the oracle's own top K without rules, per policy
    variant (`POLICIES`: at most M per category, distinct categories first, min_probability)."""
    if candidates.is_empty():
        return {f"policy_value.{name}": math.nan for name in POLICIES}
    scores = candidates.select(SUBSCRIBER_ID, OFFER_ID, pl.col(score).alias(P_ACCEPT))
    groups = (
        scores.select(SUBSCRIBER_ID)
        .unique()
        .with_columns(pl.lit(TREATMENT).alias(GROUP), pl.lit(True).alias(COVERED))
    )
    scored = scored_candidates(scores, None, catalog, groups, settings)
    truth = candidates.select(
        SUBSCRIBER_ID, OFFER_ID, (pl.col(ORACLE_P) * pl.col(VALUE)).alias("_truth")
    )
    best = (
        truth.sort(SUBSCRIBER_ID, OFFER_ID)
        .filter(subscriber_rank("_truth") <= settings.top_k)["_truth"]
        .sum()
    )
    result = {}
    for name, rules in POLICIES.items():
        max_per_category = rules.get("max_per_category", settings.max_per_category)
        published = select_offers(
            scored,
            settings.top_k,
            settings.top_k if max_per_category is None else max_per_category,
            rules.get("diversity_positions", settings.diversity_positions),
        )
        value = (
            published.select(SUBSCRIBER_ID, OFFER_ID, RANK)
            .join(truth, on=[SUBSCRIBER_ID, OFFER_ID], how="inner")["_truth"]
            .sum()
        )
        result[f"policy_value.{name}"] = float(value / best) if best else math.nan
    return result


def method_metrics(
    candidates: pl.DataFrame,
    impressions: pl.DataFrame,
    accepts: pl.DataFrame,
    score: str = SCORE,
    probability: bool = True,
) -> dict[str, Any]:
    """Every metric of one method's `score` column on the candidates and the impressions (ECE
    only when the score is a probability)."""
    result: dict[str, Any] = {}
    result.update(acceptance_capture(candidates, score))
    result.update(value_capture(candidates, score))
    result["spearman"] = within_subscriber_spearman(candidates, score)
    result["ece"] = calibration_error(impressions, score) if probability else math.nan
    result[f"precision_at_{PRECISION_K}"] = precision_at_k(candidates, accepts, score)
    result.update(offer_coverage(candidates, score))
    return result


# Methods: each fits on data up to as_of and scores every pair of `WorldInputs.pairs`.


@dataclass(frozen=True)
class WorldInputs:
    """What every method may use: the training data and scoring inputs of one as_of."""

    root: Path
    settings: Settings
    data: TrainingData
    world: HeldOutWorld
    pairs: pl.DataFrame  # [subscriber_id, offer_id, category, value] to score


def mia_scores(inputs: WorldInputs) -> pl.Series:
    """Mia's p_accept: the bundle fitted as `mia train` fits it, scored as the night scores."""
    bundle, _ = fit_bundle(inputs.data, inputs.settings)
    return _aligned(inputs.pairs, score_world(bundle, inputs.world), P_ACCEPT)


def popularity_scores(inputs: WorldInputs) -> pl.Series:
    """The offer's acceptance rate on the training impressions, shrunk to the global rate."""
    labels = pl.concat([inputs.data.offer_labels[date] for date in inputs.data.snapshot_dates])
    global_rate = float(labels[LABEL].mean()) if labels.height else 0.0
    strength = POPULARITY_PRIOR_IMPRESSIONS
    rates = labels.group_by(OFFER_ID).agg(
        ((pl.col(LABEL).sum() + strength * global_rate) / (pl.len() + strength)).alias(SCORE)
    )
    scores = inputs.pairs.join(rates, on=OFFER_ID, how="left", maintain_order="left")
    return scores[SCORE].fill_null(global_rate)


def als_scores(inputs: WorldInputs) -> pl.Series:
    """Implicit ALS alone on the accepts (and consumption, when delivered) up to as_of, with
    Mia's configured hyper-parameters."""
    settings, world = inputs.settings, inputs.world
    accepts = build_interactions(
        world.events,
        world.as_of,
        max(settings.windows),
        weights={"click": 0.0},
        consumption=world.consumption,
        consumption_weight=settings.consumption_weight,
    )
    model = cf_model(settings).fit(accepts)
    pairs = inputs.pairs.select(SUBSCRIBER_ID, OFFER_ID)
    return model.predict_frame(pairs)[CF_SCORE].cast(pl.Float64).rename(SCORE)


def consumed_popularity_scores(inputs: WorldInputs) -> pl.Series:
    """Subscribers who consumed the offer's item in the lookback up to as_of (0 if none)."""
    world = inputs.world
    days = max(inputs.settings.windows)
    start, stop = label_window(world.as_of - dt.timedelta(days=days), days)
    counts = (
        world.consumption.filter(pl.col(TS) >= start, pl.col(TS) < stop)
        .group_by(pl.col(ITEM_ID).alias(OFFER_ID))
        .agg(pl.col(SUBSCRIBER_ID).n_unique().cast(pl.Float64).alias(SCORE))
    )
    scores = inputs.pairs.join(counts, on=OFFER_ID, how="left", maintain_order="left")
    return scores[SCORE].fill_null(0.0)


def _global_frame(data: TrainingData, dates: list[dt.date]) -> pl.DataFrame:
    """Labelled impressions of the snapshots `dates` joined to their snapshot's features."""
    keys = [SUBSCRIBER_ID, SNAPSHOT_DATE]
    return pl.concat(
        [
            data.offer_labels[date]
            .select(*keys, OFFER_ID, pl.col(CATEGORY).cast(pl.String), pl.col(LABEL))
            .join(data.snapshots[date], on=keys, how="inner")
            for date in dates
        ],
        how="diagonal_relaxed",
    )


def global_lgbm_scores(inputs: WorldInputs) -> pl.Series:
    """One LightGBM over all offers' impressions, offer_id and category as categoricals."""
    data, settings = inputs.data, inputs.settings
    train = _global_frame(data, list(data.snapshot_dates[:-1]))
    valid = _global_frame(data, list(data.snapshot_dates[-1:]))
    snapshot_features = [
        name for name in train.columns if name not in (*NON_FEATURE_COLUMNS, OFFER_ID)
    ]
    encoding = FeatureEncoding.fit(train, [*snapshot_features, OFFER_ID, CATEGORY])
    names, categorical = list(encoding.names), encoding.categorical_indices
    params = {**GLOBAL_LGBM_PARAMS, "seed": settings.seed, "num_threads": settings.num_threads}
    booster = lgb.train(
        params,
        lgb.Dataset(
            encoding.matrix(train),
            train[LABEL].to_numpy(),
            feature_name=names,
            categorical_feature=categorical,
        ),
        num_boost_round=GLOBAL_LGBM_ROUNDS,
        valid_sets=[
            lgb.Dataset(
                encoding.matrix(valid),
                valid[LABEL].to_numpy(),
                feature_name=names,
                categorical_feature=categorical,
            )
        ],
        callbacks=[lgb.early_stopping(GLOBAL_LGBM_PATIENCE, verbose=False)],
    )
    logger.info("global LightGBM: %d rows, %d trees", train.height, booster.best_iteration)
    # One offer at a time: every subscriber's features with that offer's id and category.
    snapshot = inputs.world.snapshot.sort(SUBSCRIBER_ID)
    offers = inputs.pairs.select(OFFER_ID, CATEGORY).unique().sort(OFFER_ID)
    frames = []
    for offer_id, category in offers.iter_rows():
        shown = snapshot.with_columns(
            pl.lit(offer_id).alias(OFFER_ID), pl.lit(category).alias(CATEGORY)
        )
        p = booster.predict(encoding.matrix(shown), num_iteration=booster.best_iteration)
        frames.append(
            pl.DataFrame({SUBSCRIBER_ID: shown[SUBSCRIBER_ID], OFFER_ID: shown[OFFER_ID], SCORE: p})
        )
    return _aligned(inputs.pairs, pl.concat(frames), SCORE)


def oracle_scores(inputs: WorldInputs, behaviour_only: bool = False) -> pl.Series:
    """The simulator's true P(accept | shown) of every pair (averaged over latent tastes with
    `behaviour_only`)."""
    truth = oracle_p_accept(
        inputs.root,
        inputs.world.as_of,
        subscriber_ids=inputs.pairs[SUBSCRIBER_ID].unique().sort(),
        offer_ids=inputs.pairs[OFFER_ID].unique().sort(),
        behaviour_only=behaviour_only,
    )
    return _aligned(inputs.pairs, truth, P_ACCEPT)


def behaviour_oracle_scores(inputs: WorldInputs) -> pl.Series:
    """The oracle without the subscriber's latent tastes: the best a model of behaviour alone
    can do."""
    return oracle_scores(inputs, behaviour_only=True)


# The taste ceiling: the world's structure known, each subscriber's latent tastes inferred from
# the same logs Mia reads.


def taste_prior(config: SimulationConfig) -> np.ndarray:
    """Covariance (categories x categories) of a subscriber's latent tastes in the world of
    `config`: scale^2 / K x loadings' loadings + noise^2 I (`acceptance.draw_tastes`)."""
    world = config.world
    loadings = category_factors(config)
    shared = world.taste_scale**2 * (loadings.T @ loadings) / world.taste_factors
    return shared + world.taste_noise**2 * np.eye(len(CATEGORIES))


def _truth_signals(truth_root: Path, date: dt.date, ids: np.ndarray) -> np.ndarray:
    """Signals (ids x SIGNALS) from the true drivers as of the end of `date`; ids not active
    then get NaN rows."""
    drivers = pl.read_parquet(truth_root / f"date={date.isoformat()}" / "drivers.parquet")
    aligned = pl.DataFrame({SUBSCRIBER_ID: ids}, schema={SUBSCRIBER_ID: pl.Int64}).join(
        drivers, on=SUBSCRIBER_ID, how="left", maintain_order="left"
    )
    values = aligned.select(DRIVERS).to_numpy().astype(np.float32)
    return signals_from_drivers(values)


def taste_observations(
    root: Path, as_of: dt.date, days: int | None = None
) -> tuple[pl.DataFrame, SimulationConfig]:
    """Logged impressions up to the end of `as_of` (the last `days` days only, or all) with
    [subscriber_id, offer_id, day, category_index, label, base_logit], and the world's settings:
    label 1 when the subscriber accepted the shown offer the same day; `base_logit` the true
    acceptance logit without the taste (category intercept, the offer's attractiveness, the
    drivers as of the end of the day before, as the simulator draws the response).

    Only the logs (impressions and accepts) and the world's behaviour truth are read, never the
    tastes or the truth of the impressions; organic accepts (without an impression) are left out.
    """
    truth_root = Path(root) / TRUTH_DIR
    config = SimulationConfig.from_meta(json.loads((truth_root / "meta.json").read_text()))
    start = None if days is None else as_of - dt.timedelta(days=days - 1)
    events = raw_events(Lake(root), "offer_events", start, as_of)
    if events is None:
        raise ValueError(f"offer_events not ingested in {root}.")
    events = events.filter(pl.col(TS) < end_of_day(as_of)).with_columns(
        pl.col(TS).dt.date().alias("day")
    )
    keys = [SUBSCRIBER_ID, OFFER_ID, "day"]
    accepted = (
        events.filter(pl.col(EVENT) == "accept").select(keys).unique().with_columns(_accepted=1)
    )
    offers = pl.read_parquet(truth_root / "offers.parquet").select(
        OFFER_ID, CATEGORY, "attractiveness"
    )
    shown = (
        events.filter(pl.col(EVENT) == "impression")
        .select(keys)
        .join(accepted, on=keys, how="left")
        .collect(engine="streaming")
        .join(offers, on=OFFER_ID, how="inner")
        .with_columns(
            pl.col("_accepted").fill_null(0).cast(pl.Float64).alias(LABEL),
            pl.col(CATEGORY)
            .replace_strict(CATEGORIES, list(range(len(CATEGORIES))), return_dtype=pl.Int64)
            .alias("category_index"),
        )
        .sort("day", SUBSCRIBER_ID, OFFER_ID)
    )
    frames = []
    for (day,), part in shown.group_by("day", maintain_order=True):
        ids = part[SUBSCRIBER_ID].to_numpy()
        signals = _truth_signals(truth_root, day - dt.timedelta(days=1), ids)
        category = part["category_index"].to_numpy()
        attractiveness = part["attractiveness"].to_numpy()
        probability = acceptance_probability(
            signals,
            category,
            attractiveness,
            np.zeros(len(ids)),
            np.zeros(len(ids), dtype=bool),
            config.world.behaviour_weight,
        )
        base = np.log(probability) - np.log1p(-probability)
        frames.append(
            part.select(*keys, "category_index", LABEL).with_columns(pl.Series("base_logit", base))
        )
    schema = {
        SUBSCRIBER_ID: pl.Int64,
        OFFER_ID: pl.String,
        "day": pl.Date,
        "category_index": pl.Int64,
        LABEL: pl.Float64,
        "base_logit": pl.Float64,
    }
    observed = pl.concat(frames) if frames else pl.DataFrame(schema=schema)
    return observed.filter(pl.col("base_logit").is_finite()), config


def posterior_tastes(
    rows: np.ndarray,
    categories: np.ndarray,
    base_logit: np.ndarray,
    label: np.ndarray,
    n_rows: int,
    covariance: np.ndarray,
    iterations: int = TASTE_POSTERIOR_ITERATIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mode and marginal variances (both n_rows x categories) of each row's taste
    vector t under the prior N(0, `covariance`) and the Bernoulli observations
    logit P(label = 1) = base_logit + t[category], by Newton's method (a concave problem; the
    variances from the Hessian at the mode: the Laplace approximation)."""
    n_categories = covariance.shape[0]
    precision = np.linalg.inv(covariance)
    cell = rows * n_categories + categories

    def objective(taste: np.ndarray) -> np.ndarray:
        eta = base_logit + taste[rows, categories]
        fit = np.bincount(rows, label * eta - np.logaddexp(0.0, eta), minlength=n_rows)
        return fit - 0.5 * ((taste @ precision) * taste).sum(axis=1)

    taste = np.zeros((n_rows, n_categories))
    for _ in range(iterations):
        p = stable_sigmoid(base_logit + taste[rows, categories])
        gradient = np.bincount(cell, label - p, minlength=n_rows * n_categories)
        weight = np.bincount(cell, p * (1.0 - p), minlength=n_rows * n_categories)
        gradient = gradient.reshape(n_rows, n_categories) - taste @ precision
        hessian = precision[None, :, :] + _diagonal(weight.reshape(n_rows, n_categories))
        step = np.linalg.solve(hessian, gradient[:, :, None])[:, :, 0]
        # A full step overshoots where the quadratic model is poor (an accept at a near-zero
        # probability): halve it, row by row, until the objective does not fall.
        before = objective(taste)
        scale = np.ones(n_rows)
        for _ in range(TASTE_POSTERIOR_HALVINGS):
            worse = objective(taste + scale[:, None] * step) < before
            if not worse.any():
                break
            scale[worse] *= 0.5
        step = scale[:, None] * step
        taste = taste + step
        if np.abs(step).max() < 1e-6:
            break
    p = stable_sigmoid(base_logit + taste[rows, categories])
    weight = np.bincount(cell, p * (1.0 - p), minlength=n_rows * n_categories)
    hessian = precision[None, :, :] + _diagonal(weight.reshape(n_rows, n_categories))
    variance = np.diagonal(np.linalg.inv(hessian), axis1=1, axis2=2).copy()
    return taste, variance


def _diagonal(values: np.ndarray) -> np.ndarray:
    """Rows of `values` (n x d) as diagonal matrices (n x d x d)."""
    result = np.zeros((*values.shape, values.shape[1]))
    index = np.arange(values.shape[1])
    result[:, index, index] = values
    return result


def taste_posterior_scores(inputs: WorldInputs, days: int | None = None) -> pl.Series:
    """P(accept | shown) of a model that knows the world (behaviour, offers, the taste prior)
    but not the subscriber's tastes: it infers them from the subscriber's own impressions and
    accepts up to as_of (the last `days` days, or all) and averages the acceptance over the
    posterior (`posterior_tastes`)."""
    root, as_of = inputs.root, inputs.world.as_of
    observed, config = taste_observations(root, as_of, days)
    ids = inputs.pairs[SUBSCRIBER_ID].unique().sort().to_numpy()
    index = pl.DataFrame({SUBSCRIBER_ID: ids, "_row": np.arange(len(ids))})
    observed = observed.join(index, on=SUBSCRIBER_ID, how="inner")
    mean, variance = posterior_tastes(
        observed["_row"].to_numpy(),
        observed["category_index"].to_numpy(),
        observed["base_logit"].to_numpy(),
        observed[LABEL].to_numpy(),
        len(ids),
        taste_prior(config),
    )
    truth_root = Path(root) / TRUTH_DIR
    signals = _truth_signals(truth_root, as_of, ids)
    held = pl.read_parquet(truth_root / f"date={as_of.isoformat()}" / "held.parquet")
    offers = pl.read_parquet(truth_root / "offers.parquet").filter(
        pl.col(OFFER_ID).is_in(inputs.pairs[OFFER_ID].unique().implode())
    )
    world = config.world
    items = content_items(config) if has_content(world) else None
    item_index = {} if items is None else {item_id: i for i, item_id in enumerate(items.ids)}
    item_spread = None if items is None else affinity_sd(items, world)
    frames = []
    for offer_id, category, product, attractiveness in offers.select(
        OFFER_ID, CATEGORY, PRODUCT_ID, "attractiveness"
    ).iter_rows():
        c = CATEGORIES.index(category)
        holders = held.filter(pl.col(PRODUCT_ID) == product)[SUBSCRIBER_ID].to_numpy()
        spread = variance[:, c]
        if offer_id in item_index:  # an item's affinity stays unknown: its prior spread
            spread = spread + item_spread[item_index[offer_id]] ** 2
        probability = behaviour_only_probability(
            signals,
            np.full(len(ids), c),
            attractiveness + mean[:, c],
            np.sqrt(spread),
            np.isin(ids, holders),
            world.behaviour_weight,
        )
        frames.append(pl.DataFrame({SUBSCRIBER_ID: ids, OFFER_ID: offer_id, P_ACCEPT: probability}))
    return _aligned(inputs.pairs, pl.concat(frames), P_ACCEPT)


def taste_posterior_window_scores(inputs: WorldInputs) -> pl.Series:
    """The taste ceiling reading only the snapshot's longest window, as Mia's taste model does."""
    return taste_posterior_scores(inputs, days=max(inputs.settings.windows))


def _aligned(pairs: pl.DataFrame, scores: pl.DataFrame, column: str) -> pl.Series:
    """`scores[column]` in the row order of `pairs`; every pair must have a score."""
    joined = pairs.select(SUBSCRIBER_ID, OFFER_ID).join(
        scores.select(SUBSCRIBER_ID, OFFER_ID, column),
        on=[SUBSCRIBER_ID, OFFER_ID],
        how="left",
        maintain_order="left",
    )
    missing = joined[column].null_count()
    if missing:
        raise ValueError(f"{missing} of {pairs.height} pairs have no {column!r} score.")
    return joined[column].cast(pl.Float64).rename(SCORE)


Method = Callable[[WorldInputs], pl.Series]
METHODS: dict[str, Method] = {
    "mia": mia_scores,
    "popularity": popularity_scores,
    "als": als_scores,
    "global_lgbm": global_lgbm_scores,
    "oracle": oracle_scores,
    "behaviour_oracle": behaviour_oracle_scores,
    "taste_posterior": taste_posterior_scores,
    "taste_posterior_90d": taste_posterior_window_scores,
}
# Worlds with a consumption table add these (content worlds).
CONTENT_METHODS: dict[str, Method] = {"consumed_popularity": consumed_popularity_scores}
# Scores that rank but are not probabilities: no ECE.
RANKING_ONLY = frozenset({"als", "consumed_popularity"})


def _timed(call: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """The call's result and its wall and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return result, {
        "wall_seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
    }


def horizon_accepts(world: HeldOutWorld, horizon_days: int) -> pl.DataFrame:
    """[subscriber_id, offer_id] accepted in the horizon (as_of, as_of + horizon_days]."""
    start, stop = label_window(world.as_of, horizon_days)
    return (
        world.events.filter(pl.col(EVENT) == "accept", pl.col(TS) >= start, pl.col(TS) < stop)
        .select(SUBSCRIBER_ID, OFFER_ID)
        .unique()
    )


def evaluate_world(
    lake: Lake, as_of: dt.date, settings: Settings, methods: dict[str, Method] | None = None
) -> dict[str, Any]:
    """Every method fitted as of `as_of` on an ingested simulated world, and its metrics."""
    check_outcomes_after(lake, as_of, settings)
    (data, world), shared = _timed(
        lambda: (load_training_data(lake, as_of, settings), held_out_world(lake, as_of, settings))
    )
    if methods is None:
        methods = {**METHODS, **(CONTENT_METHODS if world.consumption is not None else {})}
    offers = active_offers(world.catalog, as_of + dt.timedelta(days=1))
    pairs = (
        world.snapshot.select(SUBSCRIBER_ID)
        .sort(SUBSCRIBER_ID)
        .join(offers, how="cross")
        .select(SUBSCRIBER_ID, OFFER_ID, CATEGORY, VALUE)
    )
    inputs = WorldInputs(lake.root, settings, data, world, pairs)
    scores, seconds = {}, {}
    for name, method in methods.items():
        logger.info("quality as of %s: %s", as_of, name)
        scores[name], seconds[name] = _timed(lambda method=method: method(inputs))
    truth = scores["oracle"] if "oracle" in methods else oracle_scores(inputs)
    scored = pairs.with_columns(
        truth.alias(ORACLE_P), *(score.alias(f"{SCORE}_{name}") for name, score in scores.items())
    )
    candidates = scored.join(world.held, on=[SUBSCRIBER_ID, OFFER_ID], how="anti")
    impressions = world.impressions.join(scored, on=[SUBSCRIBER_ID, OFFER_ID], how="inner")
    accepts = horizon_accepts(world, settings.horizon_days).join(
        candidates, on=[SUBSCRIBER_ID, OFFER_ID], how="semi"
    )
    content = candidates.filter(
        pl.col(OFFER_ID).is_in(content_offers(world.consumption, as_of).implode())
    )
    consumed = horizon_consumption(world.consumption, as_of, settings.horizon_days)
    results = {
        name: {
            **method_metrics(
                candidates, impressions, accepts, f"{SCORE}_{name}", name not in RANKING_ONLY
            ),
            **(content_metrics(content, consumed, f"{SCORE}_{name}") if content.height else {}),
            **(
                policy_value(candidates, world.catalog, settings, f"{SCORE}_{name}")
                if name not in RANKING_ONLY
                else {}
            ),
            **seconds[name],
        }
        for name in methods
    }
    return {
        "as_of": as_of.isoformat(),
        "training_snapshots": [date.isoformat() for date in data.snapshot_dates],
        "subscribers": pairs[SUBSCRIBER_ID].n_unique(),
        "offers": offers.height,
        "candidates": candidates.height,
        "horizon_impressions": impressions.height,
        "horizon_accepts": accepts.height,
        "content_offers": content[OFFER_ID].n_unique(),
        "horizon_consumption": consumed.height,
        "methods": results,
        "random": random_capture(candidates),
        "shared_data_seconds": shared,
    }


# The command: simulate, ingest, evaluate, print.


def simulate_world(root: Path, config: SimulationConfig) -> Lake:
    """A simulated world written under `root` with every day ingested."""
    write_world(root, config)
    lake = Lake(root)
    for date in lake.dates("incoming"):
        ingest_day(lake, date)
    return lake


def run_world(
    config: SimulationConfig,
    train_snapshots: int,
    threads: int,
    methods: dict[str, Method] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Simulate and ingest one world in a temporary folder and evaluate `methods` (default:
    every method) on it (`overrides`: other Mia settings, e.g. taste_factors=0)."""
    with tempfile.TemporaryDirectory(prefix="mia-quality-") as folder:
        root = Path(folder) / "data"
        lake, simulated = _timed(lambda: simulate_world(root, config))
        settings = Settings(
            data_dir=root, num_threads=threads, train_snapshots=train_snapshots, **overrides
        )
        last_day = config.start + dt.timedelta(days=config.days - 1)
        as_of = last_day - dt.timedelta(days=settings.horizon_days)
        result = evaluate_world(lake, as_of, settings, methods)
    return {**result, "simulate_and_ingest_seconds": simulated}


def world_results(
    configs: list[SimulationConfig],
    train_snapshots: int,
    threads: int,
    workers: int,
    overrides: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    """`run_world` for each config, in order; with `workers` > 1 that many worlds at a time,
    each in a fresh process (spawned: LightGBM's OpenMP can hang in a forked child)."""
    if workers < 1:
        raise ValueError(f"workers == {workers}, must be at least 1.")
    if workers == 1 or len(configs) == 1:
        for config in configs:
            yield run_world(config, train_snapshots, threads, **overrides)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(configs)), mp_context=context) as pool:
        futures = [
            pool.submit(run_world, config, train_snapshots, threads, **overrides)
            for config in configs
        ]
        for future in futures:
            yield future.result()


def _cell(value: Any, template: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return template.format(value)


def markdown_table(result: dict[str, Any]) -> str:
    """One world's results as a Markdown table: a row per method, then the random pick."""
    columns = (*COLUMNS, *(CONTENT_COLUMNS if result.get("content_offers") else ()))
    header = ["method", *(title for title, _, _ in columns)]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * len(columns) + "|"]
    rows = [*result["methods"].items(), ("random", result["random"])]
    for name, metrics in rows:
        cells = [_cell(metrics.get(key), template) for _, key, template in columns]
        lines.append("| " + " | ".join([markdown_text(name), *cells]) + " |")
    return "\n".join(lines)


def policy_table(result: dict[str, Any]) -> str:
    """What the contact policy's rules cost: value@K of the published lists per method."""
    header = ["method", *(f"value@K {name}" for name in POLICIES)]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * len(POLICIES) + "|"]
    for name, metrics in result["methods"].items():
        if f"policy_value.{next(iter(POLICIES))}" not in metrics:
            continue
        cells = [_cell(metrics[f"policy_value.{policy}"], "{:.3f}") for policy in POLICIES]
        lines.append("| " + " | ".join([markdown_text(name), *cells]) + " |")
    return "\n".join(lines)


def _summary(config: SimulationConfig, result: dict[str, Any]) -> str:
    """One line on the world behind a table."""
    leader = result["methods"].get("mia", {}).get("top1_offer")
    return (
        f"world {config.preset} ({config.world.description}): {config.subscribers:,} "
        f"subscribers x {config.days} days, seed {config.seed}; as_of {result['as_of']}, trained "
        f"on {len(result['training_snapshots'])} snapshots; {result['candidates']:,} candidate "
        f"pairs over {result['offers']} offers; {result['horizon_impressions']:,} impressions "
        f"and {result['horizon_accepts']:,} accepts held out"
        + (
            f"; {result['content_offers']} content offers, {result['horizon_consumption']:,} "
            "subscriber x item consumptions held out"
            if result.get("content_offers")
            else ""
        )
        + (f"; Mia's most common top-1 offer: {markdown_text(str(leader))}" if leader else "")
    )


def _presets(text: str) -> list[str]:
    """Comma-separated preset names, each one the simulator knows."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PRESETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"presets == {text!r}, must be a comma-separated list of {', '.join(PRESETS)}."
        )
    return names


def main(argv: list[str] | None = None) -> None:
    """Run every method on each world; print a Markdown table per world, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--presets",
        type=_presets,
        default=list(PRESETS),
        help=f"comma-separated simulator presets (default: all, {','.join(PRESETS)})",
    )
    parser.add_argument("--subscribers", type=int, default=20000)
    parser.add_argument("--days", type=int, default=120, help="days of each simulated world")
    parser.add_argument("--seed", type=int, default=11, help="simulation seed")
    parser.add_argument("--train-snapshots", type=int, default=8)
    # One thread by default: on a small machine shared with other work, LightGBM's threads wait
    # on each other at every step whenever one of them is descheduled (a 2-thread fit on 2 busy
    # cores took 50 times as long as a 1-thread fit).
    parser.add_argument("--threads", type=int, default=1, help="LightGBM threads")
    parser.add_argument(
        "--taste-factors",
        type=int,
        default=Settings().taste_factors,
        help="Mia's taste_factors setting (0: Mia without the taste model)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worlds evaluated at once, each in its own process (1: one after another here)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    arguments = parser.parse_args(argv)
    started = time.perf_counter()
    output: dict[str, Any] = {"arguments": {**vars(arguments), "out": str(arguments.out)}}
    output["worlds"] = {}
    configs = [
        SimulationConfig(
            subscribers=arguments.subscribers,
            days=arguments.days,
            seed=arguments.seed,
            preset=preset,
        )
        for preset in arguments.presets
    ]
    overrides = {"taste_factors": arguments.taste_factors}
    results = world_results(
        configs, arguments.train_snapshots, arguments.threads, arguments.workers, overrides
    )
    for config, result in zip(configs, results, strict=True):
        output["worlds"][config.preset] = result
        print(f"\n{_summary(config, result)}\n")
        print(markdown_table(result))
        print(f"\n{policy_table(result)}", flush=True)
    output["wall_seconds"] = time.perf_counter() - started
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(output, indent=2, default=str))
    print(f"\n({output['wall_seconds']:.0f} s; results in {arguments.out})")


if __name__ == "__main__":
    main()
