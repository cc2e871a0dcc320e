"""Evaluation against the simulator's oracle: how close Mia's scores come to the true probabilities.

On a simulated world the oracle knows P(accept | shown) for every subscriber x offer. For the
impressions in the horizon after `as_of` (which no model has seen), per category:

- `oracle.<category>.mia_auc`: ROC AUC of the observed accepts against Mia's p_accept;
- `oracle.<category>.oracle_auc`: the same against the oracle's p (the best any model can do);
- `oracle.<category>.normalised_auc` = (mia_auc - 0.5) / (oracle_auc - 0.5), and its mean over
  categories with enough impressions, `oracle.mean_normalised_auc`.

For offer choice, over every subscriber of the snapshot and the offers they could be shown on
as_of + 1 (the eligible pairs when the caller passes them, else active offers whose product the
subscriber does not already hold; the oracle gives held products 0):
expected acceptances (sum of oracle p) of Mia's top-k offers vs the oracle's own top-k vs a random
pick (the mean oracle p), and `top<k>.capture` = Mia / oracle.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from mia.lake import Lake
from mia.schema import CATEGORY, LABEL, OFFER_ID, P_ACCEPT, PRODUCT_ID, SUBSCRIBER_ID
from mia.settings import Settings
from models import metrics as mx
from models.scoring import ModelBundle, load_bundle, score_offers
from models.training import TrainingInputError, read_or_build_snapshot

logger = logging.getLogger(__name__)

ORACLE_P = "oracle_p"
MIN_CLASS_ROWS = 5  # a category needs this many positives and negatives for an AUC


def normalised_auc(mia_auc: float, oracle_auc: float) -> float:
    """(AUC - 0.5) / (oracle AUC - 0.5); NaN when the oracle itself is no better than chance."""
    if math.isnan(mia_auc) or math.isnan(oracle_auc) or oracle_auc <= 0.5:
        return math.nan
    return (mia_auc - 0.5) / (oracle_auc - 0.5)


def category_auc_metrics(impressions: pl.DataFrame) -> dict[str, float]:
    """Per-category Mia vs oracle AUC on [category, label, p_accept, oracle_p] rows."""
    result: dict[str, float] = {}
    normalised = []
    for (category,), part in impressions.sort(CATEGORY).group_by(CATEGORY, maintain_order=True):
        y = part[LABEL].to_numpy()
        positives = int(y.sum())
        prefix = f"oracle.{category}"
        result[f"{prefix}.impressions"] = float(y.size)
        result[f"{prefix}.accepts"] = float(positives)
        if min(positives, y.size - positives) < MIN_CLASS_ROWS:
            continue
        mia_auc = mx.roc_auc(y, part[P_ACCEPT].to_numpy())
        oracle_auc = mx.roc_auc(y, part[ORACLE_P].to_numpy())
        result[f"{prefix}.mia_auc"] = mia_auc
        result[f"{prefix}.oracle_auc"] = oracle_auc
        result[f"{prefix}.normalised_auc"] = normalised_auc(mia_auc, oracle_auc)
        if not math.isnan(result[f"{prefix}.normalised_auc"]):
            normalised.append(result[f"{prefix}.normalised_auc"])
    result["oracle.categories_evaluated"] = float(len(normalised))
    result["oracle.mean_normalised_auc"] = float(np.mean(normalised)) if normalised else math.nan
    y = impressions[LABEL].to_numpy()
    result["oracle.all.mia_auc"] = mx.roc_auc(y, impressions[P_ACCEPT].to_numpy())
    result["oracle.all.oracle_auc"] = mx.roc_auc(y, impressions[ORACLE_P].to_numpy())
    result["oracle.all.mia_log_loss"] = mx.log_loss(y, impressions[P_ACCEPT].to_numpy())
    result["oracle.all.oracle_log_loss"] = mx.log_loss(y, impressions[ORACLE_P].to_numpy())
    return result


def subscriber_rank(column: str) -> pl.Expr:
    """Rank of each row's `column` within its subscriber, 1 = highest.

    On a frame sorted by subscriber_id then offer_id, ties go to the lower offer_id, so the rank
    never depends on the sort algorithm.
    """
    return pl.col(column).rank("ordinal", descending=True).over(SUBSCRIBER_ID)


def top_k_metrics(
    scores: pl.DataFrame,
    ks: tuple[int, ...] = (1, 5),
    score: str = P_ACCEPT,
    truth: str = ORACLE_P,
) -> dict[str, float]:
    """Expected acceptances of Mia's top-k vs the oracle's top-k vs random, per subscriber.

    `scores` holds [subscriber_id, offer_id, <score>, <truth>] for every candidate pair: the top-k
    by `score` (Mia's p_accept unless another column is named) and by `truth` (the oracle's p,
    or any expected gain such as p x value) are both valued by `truth`. Ties are broken by
    offer_id so the result is deterministic.
    """
    result: dict[str, float] = {}
    ranked = scores.sort(SUBSCRIBER_ID, OFFER_ID).with_columns(
        subscriber_rank(score).alias("_mia_rank"),
        subscriber_rank(truth).alias("_best_rank"),
        pl.col(truth).mean().over(SUBSCRIBER_ID).alias("_random"),
    )
    for k in ks:
        totals = ranked.select(
            pl.col(truth).filter(pl.col("_mia_rank") <= k).sum().alias("mia"),
            pl.col(truth).filter(pl.col("_best_rank") <= k).sum().alias("oracle"),
            (pl.col("_random").filter(pl.col("_best_rank") <= k).sum()).alias("random"),
        ).row(0, named=True)
        prefix = f"top{k}"
        result[f"{prefix}.mia_expected_accepts"] = float(totals["mia"])
        result[f"{prefix}.oracle_expected_accepts"] = float(totals["oracle"])
        result[f"{prefix}.random_expected_accepts"] = float(totals["random"])
        oracle = float(totals["oracle"])
        result[f"{prefix}.capture"] = float(totals["mia"]) / oracle if oracle else math.nan
        result[f"{prefix}.random_capture"] = (
            float(totals["random"]) / oracle if oracle else math.nan
        )
    result["subscribers"] = float(ranked[SUBSCRIBER_ID].n_unique())
    return result


def held_offers(
    holdings: pl.DataFrame | None, catalog: pl.DataFrame, as_of: dt.date
) -> pl.DataFrame:
    """[subscriber_id, offer_id] whose product the subscriber holds at the end of `as_of`."""
    if holdings is None:
        return pl.DataFrame(schema={SUBSCRIBER_ID: pl.Int64, OFFER_ID: pl.String})
    current = holdings.filter(
        (pl.col("start_date") <= as_of)
        & (pl.col("end_date").is_null() | (pl.col("end_date") >= as_of))
    )
    return (
        current.join(catalog.select(OFFER_ID, PRODUCT_ID), on=PRODUCT_ID, how="inner")
        .select(SUBSCRIBER_ID, OFFER_ID)
        .unique()
    )


def champion_trained_after(settings: Settings, as_of: dt.date) -> str | None:
    """Why the champion cannot be judged on the outcomes after `as_of`, or None when it can.

    A champion trained after `as_of` has seen those outcomes.
    """
    from models.registry import champion_info
    from models.scoring import MODEL_NAME
    from models.training import TRAINED_AS_OF_TAG

    info = champion_info(MODEL_NAME, settings) or {}
    trained = info.get("tags", {}).get(TRAINED_AS_OF_TAG)
    if trained and dt.date.fromisoformat(trained) > as_of:
        return (
            f"champion v{info['version']} of {MODEL_NAME} was trained as of {trained}, after "
            f"{as_of}: it has seen the offers evaluated after {as_of}"
        )
    return None


def check_champion_predates(settings: Settings, as_of: dt.date) -> None:
    """Refuse a champion trained after `as_of`: it has seen the outcomes it would be judged on."""
    reason = champion_trained_after(settings, as_of)
    if reason:
        raise TrainingInputError(
            f"{reason}. Evaluate models trained as of {as_of} (mia evaluate --date {as_of} "
            "trains them without registering them) or a date on or after the champion's."
        )


def check_outcomes_after(lake: Lake, as_of: dt.date, settings: Settings) -> None:
    """Refuse a date with no ingested offer events after it: there is nothing to evaluate."""
    days = lake.dates("raw", "offer_events")
    if not days or days[-1] <= as_of:
        last = days[-1] if days else "none"
        raise TrainingInputError(
            f"no offer events ingested after {as_of} (last ingested day: {last}): the evaluation "
            f"needs the {settings.horizon_days} days after the date; choose a date at least "
            f"{settings.horizon_days} days before the last ingested day."
        )


@dataclass(frozen=True)
class HeldOutWorld:
    """A data root cut at `as_of`: what a model may use that night, and what came after it."""

    as_of: dt.date
    snapshot: pl.DataFrame  # features as of the end of as_of
    catalog: pl.DataFrame  # the catalog in force on as_of
    interactions: pl.DataFrame  # ALS interactions in the lookback up to the end of as_of
    held: pl.DataFrame  # [subscriber_id, offer_id] whose product is held at the end of as_of
    events: pl.DataFrame  # offer events from the lookback before as_of to the horizon's end
    impressions: pl.DataFrame  # [subscriber_id, offer_id, label] shown in the horizon
    # The consumption table over the same days as `events`; None when it was never delivered.
    consumption: pl.DataFrame | None = None
    offer_state: pl.DataFrame | None = None  # responses per subscriber x offer up to as_of


def held_out_world(lake: Lake, as_of: dt.date, settings: Settings) -> HeldOutWorld:
    """Scoring inputs as of `as_of`, and the labelled impressions (and consumption) of the
    horizon after it."""
    from features.labels import offer_labels
    from features.offer_state import read_offer_state
    from mia.ingest import raw_events, raw_state
    from models.cf import build_interactions

    lookback = max(settings.windows)
    horizon_end = as_of + dt.timedelta(days=settings.horizon_days)
    events = raw_events(lake, "offer_events", as_of - dt.timedelta(days=lookback), horizon_end)
    catalog = raw_state(lake, "catalog", as_of)
    if events is None or catalog is None:
        raise TrainingInputError(f"offer_events or catalog not ingested up to {as_of}.")
    events = events.collect(engine="streaming")
    consumption = raw_events(lake, "consumption", as_of - dt.timedelta(days=lookback), horizon_end)
    if consumption is not None:
        consumption = consumption.collect(engine="streaming")
    # Offers that start within the horizon are labelled with the catalog that knows them.
    later = raw_state(lake, "catalog", horizon_end)
    impressions = offer_labels(
        events, later if later is not None else catalog, as_of, settings.horizon_days
    ).select(SUBSCRIBER_ID, OFFER_ID, LABEL)
    return HeldOutWorld(
        as_of=as_of,
        snapshot=read_or_build_snapshot(lake, as_of, settings),
        catalog=catalog,
        interactions=build_interactions(
            events,
            as_of,
            lookback,
            consumption=consumption,
            consumption_weight=settings.consumption_weight,
        ),
        held=held_offers(raw_state(lake, "holdings", as_of), catalog, as_of),
        events=events,
        impressions=impressions,
        consumption=consumption,
        offer_state=read_offer_state(lake, as_of),
    )


def score_world(bundle: ModelBundle, world: HeldOutWorld) -> pl.DataFrame:
    """The bundle's scores (without reasons) of every subscriber x offer of a held-out world, from
    what the night of its as_of would read."""
    return score_offers(
        bundle,
        world.snapshot,
        world.catalog,
        world.interactions,
        with_reasons=False,
        offer_state=world.offer_state,
    )


def evaluate_against_oracle(
    lake: Lake,
    as_of: dt.date,
    settings: Settings,
    bundle: ModelBundle | None = None,
    log: bool = True,
    eligible: pl.DataFrame | None = None,
) -> dict[str, float]:
    """Mia vs oracle on a simulated world as of `as_of` (champion bundle unless one is given).

    Offer choice compares picks among `eligible` [subscriber_id, offer_id] pairs when given (the
    offers layer's eligibility for the night), else among active offers not already held.
    """
    from mia.simulate import oracle_p_accept

    check_outcomes_after(lake, as_of, settings)
    if bundle is None:
        check_champion_predates(settings, as_of)
        bundle = load_bundle(settings)
    world = held_out_world(lake, as_of, settings)
    scores = score_world(bundle, world)
    oracle = oracle_p_accept(
        lake.root,
        as_of,
        subscriber_ids=scores[SUBSCRIBER_ID].unique().sort(),
        offer_ids=scores[OFFER_ID].unique().sort(),
    ).select(SUBSCRIBER_ID, OFFER_ID, pl.col(P_ACCEPT).alias(ORACLE_P))
    paired = scores.select(SUBSCRIBER_ID, OFFER_ID, CATEGORY, P_ACCEPT).join(
        oracle, on=[SUBSCRIBER_ID, OFFER_ID], how="inner"
    )
    if eligible is not None:
        choices = paired.join(
            eligible.select(SUBSCRIBER_ID, OFFER_ID), on=[SUBSCRIBER_ID, OFFER_ID], how="semi"
        )
    else:
        choices = paired.join(world.held, on=[SUBSCRIBER_ID, OFFER_ID], how="anti")
    impressions = world.impressions.join(paired, on=[SUBSCRIBER_ID, OFFER_ID], how="inner")
    result = category_auc_metrics(impressions)
    result.update(top_k_metrics(choices, tuple(sorted({1, settings.top_k}))))
    logger.info(
        "oracle evaluation %s: mean normalised AUC %.3f over %d categories, top-1 capture %.3f",
        as_of,
        result["oracle.mean_normalised_auc"],
        int(result["oracle.categories_evaluated"]),
        result["top1.capture"],
    )
    if log:
        from models import registry

        with registry.start_run(settings, f"evaluate-{as_of}", {"evaluated_as_of": str(as_of)}):
            registry.log_params({"as_of": as_of, "model_version": bundle.version})
            registry.log_metrics(mx.finite(result))
    return result


def oracle_table(result: dict[str, float]) -> list[dict[str, Any]]:
    """Rows for the CLI, all with the same columns: one per category (impressions, accepts,
    AUCs, normalised AUC), then all categories together (normalised AUC: the mean)."""
    categories = sorted(
        {key.split(".")[1] for key in result if key.startswith("oracle.")}
        - {"all", "mean_normalised_auc", "categories_evaluated"}
    )
    rows: list[dict[str, Any]] = []
    for category in categories:
        prefix = f"oracle.{category}"
        rows.append(
            {
                "row": category,
                "impressions": int(result.get(f"{prefix}.impressions", 0)),
                "accepts": int(result.get(f"{prefix}.accepts", 0)),
                "mia_auc": result.get(f"{prefix}.mia_auc", math.nan),
                "oracle_auc": result.get(f"{prefix}.oracle_auc", math.nan),
                "normalised_auc": result.get(f"{prefix}.normalised_auc", math.nan),
            }
        )
    rows.append(
        {
            "row": "all categories",
            "impressions": sum(row["impressions"] for row in rows),
            "accepts": sum(row["accepts"] for row in rows),
            "mia_auc": result.get("oracle.all.mia_auc", math.nan),
            "oracle_auc": result.get("oracle.all.oracle_auc", math.nan),
            "normalised_auc": result.get("oracle.mean_normalised_auc", math.nan),
        }
    )
    return rows


def capture_table(result: dict[str, float]) -> list[dict[str, Any]]:
    """Rows for the CLI, one per k: expected accepts of Mia's, the oracle's and a random top-k."""
    rows: list[dict[str, Any]] = []
    for key in sorted(k for k in result if k.startswith("top") and k.endswith(".capture")):
        prefix = key.rsplit(".", 1)[0]
        rows.append(
            {
                "row": f"{prefix} expected accepts",
                "mia": result[f"{prefix}.mia_expected_accepts"],
                "oracle": result[f"{prefix}.oracle_expected_accepts"],
                "random": result[f"{prefix}.random_expected_accepts"],
                "capture": result[key],
            }
        )
    return rows
