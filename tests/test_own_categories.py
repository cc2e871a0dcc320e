"""An operator's own offer taxonomy: category names Mia has never seen, one that appears only in
the last days, run through ingest, training, scoring, ranking and audiences unchanged."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import polars as pl
import pytest

from mia.ingest import ingest_day, raw_events, raw_state
from mia.lake import Lake
from mia.schema import CATEGORY, OFFER_ID, SUBSCRIBER_ID
from mia.settings import Settings
from models.cf import build_interactions
from models.scoring import active_offers, prior_scored_categories, score_offers
from models.training import read_or_build_snapshot, train_models
from offers.audience import audience_summary, build_audiences
from offers.eligibility import eligible_pairs
from offers.groups import assign_groups
from offers.rank import rank_offers
from tests.conftest import TINY_LAST_DAY

# The simulator's categories folded into six names of another operator's taxonomy.
OWN_NAMES = ("films", "market-sell", "market-buy", "roam_abroad", "bundles-2026", "k9")
LATE = "late_launch"  # only in the catalogs of the last LATE_DAYS days
LATE_DAYS = 5
AS_OF = TINY_LAST_DAY - dt.timedelta(days=7)  # trained before the late category exists


def _rename(category: pl.Expr) -> pl.Expr:
    """A stable map of each simulated category onto one of OWN_NAMES."""
    index = category.hash(seed=1) % len(OWN_NAMES)
    return index.map_elements(lambda i: OWN_NAMES[i], return_dtype=pl.String)


@pytest.fixture(scope="module")
def own_world(tmp_path_factory, simulated_root) -> tuple[Lake, Settings]:
    """The tiny world delivered with its catalog in the operator's own categories, ingested."""
    base = tmp_path_factory.mktemp("own_categories")
    root = base / "data"
    shutil.copytree(simulated_root, root)
    lake = Lake(root)
    days = lake.dates("incoming")
    last = pl.read_parquet(root / "incoming" / f"date={days[-1].isoformat()}" / "catalog.parquet")
    late_offers = active_offers(last, days[-1] + dt.timedelta(days=1))[OFFER_ID].tail(3).to_list()
    for day in days:
        path = Path(root / "incoming" / f"date={day.isoformat()}" / "catalog.parquet")
        catalog = pl.read_parquet(path).with_columns(_rename(pl.col(CATEGORY)).alias(CATEGORY))
        if day > days[-1] - dt.timedelta(days=LATE_DAYS):
            late = pl.col(OFFER_ID).is_in(late_offers)
            catalog = catalog.with_columns(
                pl.when(late).then(pl.lit(LATE)).otherwise(pl.col(CATEGORY)).alias(CATEGORY)
            )
        catalog.write_parquet(path)
    for day in days:
        ingest_day(lake, day)
    settings = Settings(
        data_dir=root,
        mlflow_uri=f"sqlite:///{base}/mlflow.db",
        mlflow_artifacts=base / "artifacts",
        num_threads=1,
        train_snapshots=4,
    )
    return lake, settings


def test_own_categories_run_through_training_scoring_ranking_and_audiences(own_world):
    lake, settings = own_world
    night = TINY_LAST_DAY
    bundle = train_models(lake, AS_OF, settings, register=False).bundle
    trained = set(bundle.propensity.categories_)
    assert trained <= set(OWN_NAMES) and LATE not in trained

    catalog = raw_state(lake, "catalog", night)
    assert LATE in set(catalog[CATEGORY])
    events = raw_events(lake, "offer_events", night - dt.timedelta(days=89), night).collect()
    snapshot = read_or_build_snapshot(lake, night, settings)
    assert f"{LATE}_impressions_30d" in snapshot.columns  # features follow the data too
    eligible = eligible_pairs(
        raw_state(lake, "subscribers", night), catalog, raw_state(lake, "holdings", night),
        events, night,
    )  # fmt: skip
    scores = score_offers(
        bundle, snapshot, catalog, build_interactions(events, night, lookback_days=90),
        with_reasons=False, eligible=eligible,
    )  # fmt: skip
    late_scores = scores.filter(pl.col(CATEGORY) == LATE)
    assert late_scores.height > 0
    # Scored by the overall prior, as the manifest and report say.
    assert late_scores["p_accept"].is_finite().all()
    offers_tonight = active_offers(catalog, night + dt.timedelta(days=1))
    assert prior_scored_categories(bundle, offers_tonight)[LATE] == "never seen in training"

    groups = assign_groups(raw_state(lake, "subscribers", night)[SUBSCRIBER_ID], settings)
    ranked = rank_offers(scores, eligible, catalog, groups, settings, "own-1")
    assert ranked.height > 0
    assert set(ranked[CATEGORY]) <= {*OWN_NAMES, LATE}
    # The category names are published exactly as the catalog spells them.
    published = ranked.join(catalog.select(OFFER_ID, pl.col(CATEGORY).alias("c")), on=OFFER_ID)
    assert (published[CATEGORY] == published["c"]).all()
    audiences = build_audiences(scores, eligible, catalog, groups, settings, "2026-03-11T00:00")
    summary = audience_summary(audiences, catalog)
    assert set(summary[CATEGORY]) == set(active_offers(catalog, night)[CATEGORY]) & set(
        scores[CATEGORY]
    )
    assert LATE in set(summary[CATEGORY])
    treated = groups.filter((pl.col("group") == "treatment") & pl.col("covered"))
    assert ranked.join(treated, on=SUBSCRIBER_ID, how="anti").is_empty()
