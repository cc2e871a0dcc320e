"""`mia evaluate-policy`: read logged impressions and a target policy from the data root, and
estimate the policy's value off-policy (the estimators are in `offers.ope`)."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import polars as pl

from mia.errors import InputError
from mia.ingest import raw_events, raw_state
from mia.lake import Lake
from mia.schema import DATE, OFFER_ID, RANK, SUBSCRIBER_ID, VALUE
from mia.settings import Settings
from offers.ope import (
    PolicyEvaluationError,
    champion_policy,
    evaluate_policy,
    impression_outcomes,
    logged_impressions,
    offer_acceptance_rates,
    popularity_policy,
    uniform_policy,
)

logger = logging.getLogger(__name__)

NAMED_POLICIES = ("champion", "popularity", "random")
# Popularity ranks offers by their acceptance rate over this many days before the evaluated ones.
POPULARITY_HISTORY_DAYS = 28


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def _champion(lake: Lake, days: list[dt.date]) -> pl.DataFrame:
    """Each day's rank-1 published offer of the night before, per subscriber."""
    parts = []
    for day in days:
        path = lake.offers(day - dt.timedelta(days=1)) / "offers.parquet"
        if path.exists():
            offers = pl.read_parquet(path, columns=[SUBSCRIBER_ID, OFFER_ID, RANK, VALUE])
            values = offers.select(OFFER_ID, VALUE).unique(OFFER_ID)
            night = champion_policy(offers).join(values, on=OFFER_ID, how="left")
            parts.append(night.with_columns(pl.lit(day).alias(DATE)))
    if not parts:
        nights = f"{days[0] - dt.timedelta(days=1)} .. {days[-1] - dt.timedelta(days=1)}"
        raise InputError(
            f"policy champion: no published offers for the nights {nights} in "
            f"{lake.root / 'offers'} (run `mia nightly` for them first)."
        )
    return pl.concat(parts)


def _eligible(
    lake: Lake, days: list[dt.date], settings: Settings, subscribers: pl.DataFrame
) -> pl.DataFrame:
    """[date, subscriber_id, offer_id]: the offers eligible on each day for its logged
    subscribers (eligibility as of the night before, `offers.eligibility`)."""
    from flows.steps import eligible_for_night

    parts = []
    for day in days:
        logged = subscribers.filter(pl.col(DATE) == day).select(SUBSCRIBER_ID).unique()
        if logged.is_empty():
            continue
        pairs = eligible_for_night(lake, day - dt.timedelta(days=1), settings)
        parts.append(pairs.join(logged, on=SUBSCRIBER_ID).with_columns(pl.lit(day).alias(DATE)))
    return pl.concat(parts).select(DATE, SUBSCRIBER_ID, OFFER_ID)


def _settings_file_policy(path: Path) -> None:
    """A settings file would re-rank the night's scores: refuse, naming what is missing."""
    if not path.is_file():
        raise InputError(
            f"--policy {str(path)!r}: not one of {', '.join(NAMED_POLICIES)} and no such "
            "settings file."
        )
    from mia.settings import load_settings

    load_settings(config_file=path)  # a broken file is refused for what it is first
    raise InputError(
        f"--policy {path}: re-ranking with other settings needs each night's scores of every "
        "eligible subscriber x offer pair, and a night keeps only its published offers "
        "(offers.parquet); no stored scores to re-rank."
    )


def policy_value(
    lake: Lake,
    first: dt.date,
    last: dt.date,
    policy: str,
    settings: Settings,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pl.DataFrame:
    """IPS/SNIPS/DR value of a named policy (or a settings file) on the impressions logged from
    `first` to `last`: see `offers.ope.evaluate_policy`."""
    if policy not in NAMED_POLICIES:
        _settings_file_policy(Path(policy))
    events = raw_events(lake, "offer_events", first, last)
    if events is None:
        raise PolicyEvaluationError(f"offer_events: never ingested in {lake.root / 'raw'}.")
    catalog = raw_state(lake, "catalog", last)
    logged = logged_impressions(events, catalog)
    days = _days(first, last)
    if policy == "champion":
        target = _champion(lake, days)
    else:
        candidates = _eligible(lake, days, settings, logged)
        if policy == "random":
            target = uniform_policy(candidates)
        else:
            start = first - dt.timedelta(days=POPULARITY_HISTORY_DAYS)
            history = raw_events(lake, "offer_events", start, first - dt.timedelta(days=1))
            rates = offer_acceptance_rates(impression_outcomes(history))
            if rates.is_empty():
                logger.warning("no impressions before %s: popularity cannot rank offers", first)
            target = popularity_policy(candidates, rates)
    if catalog is not None and VALUE not in target.columns:
        target = target.join(catalog.select(OFFER_ID, VALUE), on=OFFER_ID, how="left")
    return evaluate_policy(logged, target, n_boot=n_boot, seed=seed, level=level)
