"""Scoring: P(accept | shown) with reasons for every subscriber x active offer.

`ModelBundle` holds what training learned (category propensity, ALS, blend, offer statistics) plus
the catalog and interactions of its training date, so that `predict_frame(snapshot)` works alone
(this is what the registry serves). `score_offers` takes tonight's catalog and interactions
explicitly; that is what the nightly run calls.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from mia.errors import InputError
from mia.schema import (
    CATEGORY,
    MODEL_VERSION,
    OFFER_ID,
    P_ACCEPT,
    REASONS,
    SNAPSHOT_DATE,
    SUBSCRIBER_ID,
    VALUE,
)
from mia.settings import Settings
from models.blend import OfferBlend, candidate_features, propensity_and_cf
from models.propensity import CategoryPropensity
from models.reasons import explain

logger = logging.getLogger(__name__)

MODEL_NAME = "mia-offers"
SCORE_COLUMNS = (SUBSCRIBER_ID, OFFER_ID, CATEGORY, P_ACCEPT, REASONS, MODEL_VERSION)


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

    @property
    def versions(self) -> dict[str, str]:
        """Registered model name -> version of the models inside (one bundle)."""
        return {MODEL_NAME: self.version}

    def predict_frame(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Scores for a snapshot frame, using the catalog and interactions stored at training."""
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


def blend_frame(
    bundle: ModelBundle,
    snapshot: pl.DataFrame,
    offers: pl.DataFrame,
    interactions: pl.DataFrame | None,
) -> pl.DataFrame:
    """Blend inputs for every snapshot subscriber x offer of `offers` (sorted offers)."""
    p_category, cf_scores = propensity_and_cf(
        bundle.propensity, bundle.cf, snapshot, offers, interactions
    )
    return candidate_features(
        snapshot[SUBSCRIBER_ID],
        p_category,
        bundle.propensity.categories_,
        cf_scores,
        offers,
        bundle.offer_stats,
    )


def score_offers(
    bundle: ModelBundle,
    snapshot: pl.DataFrame,
    catalog: pl.DataFrame,
    interactions: pl.DataFrame | None,
    with_reasons: bool = True,
) -> pl.DataFrame:
    """[subscriber_id, offer_id, category, p_accept, reasons, model_version] for all snapshot
    subscribers x offers active on the day after the snapshot, sorted by subscriber, offer."""
    as_of = snapshot_date_of(snapshot)
    snapshot = snapshot.sort(SUBSCRIBER_ID)
    if snapshot[SUBSCRIBER_ID].is_duplicated().any():
        duplicated = snapshot.filter(pl.col(SUBSCRIBER_ID).is_duplicated())[SUBSCRIBER_ID]
        raise ScoringInputError(
            f"snapshot: column {SUBSCRIBER_ID!r} must be unique, repeats "
            f"{duplicated.unique().sort().head(5).to_list()}."
        )
    offers = active_offers(catalog, as_of + dt.timedelta(days=1))
    unknown = offers.filter(~pl.col(CATEGORY).is_in(bundle.propensity.categories_))
    if unknown.height:
        logger.warning(
            "skipping %d offers of categories without a model: %s",
            unknown.height,
            unknown[OFFER_ID].head(5).to_list(),
        )
        offers = offers.filter(pl.col(CATEGORY).is_in(bundle.propensity.categories_))
    frame = blend_frame(bundle, snapshot, offers, interactions)
    scored = frame.select(SUBSCRIBER_ID, OFFER_ID, CATEGORY).with_columns(
        pl.Series(P_ACCEPT, bundle.blend.predict(frame), dtype=pl.Float64)
    )
    if with_reasons:
        reasons = explain(bundle.propensity, snapshot)
        scored = scored.join(reasons, on=[SUBSCRIBER_ID, CATEGORY], how="left")
    else:
        scored = scored.with_columns(pl.lit(None, dtype=pl.String).alias(REASONS))
    logger.info(
        "scored %d subscribers x %d offers as of %s",
        snapshot.height,
        offers.height,
        as_of,
    )
    return (
        scored.with_columns(pl.lit(bundle.version, dtype=pl.String).alias(MODEL_VERSION))
        .select(SCORE_COLUMNS)
        .sort(SUBSCRIBER_ID, OFFER_ID)
    )


def load_bundle(settings: Settings, name: str = MODEL_NAME) -> ModelBundle:
    """The champion bundle (`models:/<name>@champion`), its `version` set from the registry."""
    from models.registry import champion_info, load_champion

    bundle = load_champion(name, settings)
    info = champion_info(name, settings)
    if info is not None:
        bundle.version = str(info["version"])
    return bundle
