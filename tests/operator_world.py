"""A second world, written the way an operator delivers data, not the way `mia simulate` does.

What makes it unlike the simulator: seven offer categories whose names Mia has never seen, one of
them (`NEW_CATEGORY`) appearing only in the last week; a catalog without the optional columns
(`end_date`, `product_id`, `regions`, `device_os`, `requires_product`, `excludes_product`,
`capacity`); state tables (`subscribers`, `catalog`, `holdings`) delivered only on the first day
and on one later change (`CHANGE_DAY`); offer ids that are strings of digits with leading zeros;
subscriber ids shaped like phone numbers; the operator's own `event_id` (digits) on every offer
event; no payments, app events or transfers; `consumption` (without its optional `quantity`) on
every fourth day only, of the `press` and `kids_zone` offers and of content outside the catalog;
usage as one aggregated row per subscriber, kind and day; subscribers who go quiet for two weeks
and come back (re-activated in the later delivery), some who leave for good and some who join at
the change. Acceptance depends on observable usage, so the models have something to learn.
Numpy-seeded: the same seed writes the same files.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl

from mia.lake import Lake

START = dt.date(2026, 3, 2)
DAYS = 40
LAST_DAY = START + dt.timedelta(days=DAYS - 1)
CHANGE_DAY = DAYS - 7  # state tables delivered again: the last week starts here
SUBSCRIBERS = 400
JOINERS = 30
OLD_CATEGORIES = ("market_sell", "market_buy", "press", "travel_pass", "kids_zone", "smart_home")
NEW_CATEGORY = "night_owl"
CATEGORIES = (*OLD_CATEGORIES, NEW_CATEGORY)
OFFERS_PER_CATEGORY = 3
AWAY_DAYS = range(10, 25)  # days on which the subscribers who leave and return are gone
USAGE_KINDS = ("voice_out", "voice_in", "sms_out", "data")
REGIONS = ("r01", "r02", "r03", "r04", "r05")
CONSUMED_CATEGORIES = ("press", "kids_zone")
OUTSIDE_ITEMS = tuple(f"ext-{number:04d}" for number in range(20))  # content not in the catalog
CONSUMPTION_EVERY = 4
CATALOG_COLUMNS = ("offer_id", "category", "title", "value", "start_date", "min_tenure_days",
                   "cooldown_days")  # fmt: skip


def write_operator_world(root: Path, seed: int = 5) -> list[dt.date]:
    """Write incoming/date=D/<table>.csv for each of the DAYS days; returns the dates."""
    rng = np.random.default_rng(seed)
    consumption_rng = np.random.default_rng([seed, 1])  # its own stream: other tables unchanged
    lake = Lake(root)
    n = SUBSCRIBERS + JOINERS
    ids = 79_000_000_000 + rng.choice(999_999_999, size=n, replace=False)
    behaviour = rng.normal(0.0, 1.0, (n, 3))  # data, voice, messaging habits: visible in usage
    affinity = rng.normal(0.0, 1.2, (3, len(CATEGORIES)))  # how habits drive each category
    bias = rng.normal(-1.6, 0.4, len(CATEGORIES))
    taste = behaviour @ affinity + bias + rng.normal(0.0, 0.3, (n, len(CATEGORIES)))
    joiner = np.arange(n) >= SUBSCRIBERS
    away = ~joiner & (rng.random(n) < 0.12)  # leave and return
    churned = ~joiner & ~away & (rng.random(n) < 0.05)  # leave for good at the change
    first_subscribers = _subscribers(rng, ids, START)
    catalog = _catalog(rng)
    dates = []
    for day in range(DAYS):
        date = START + dt.timedelta(days=day)
        active = np.where(joiner, day >= CHANGE_DAY, ~(churned & (day >= CHANGE_DAY - 5)))
        if day in AWAY_DAYS:
            active &= ~away
        offers = catalog.filter(pl.col("start_date") <= date)
        tables = {
            "usage": _usage(rng, ids[active], behaviour[active], date),
            "offer_events": _offer_events(rng, ids[active], taste[active], offers, date),
        }
        if day % CONSUMPTION_EVERY == 1:
            tables["consumption"] = _consumption(
                consumption_rng, ids[active], taste[active], catalog, date
            )
        if day == 0:
            tables["subscribers"] = first_subscribers.filter(~pl.Series(joiner))
            tables["catalog"] = catalog.filter(pl.col("start_date") <= date)
            tables["holdings"] = _holdings(rng, ids[~joiner], date)
        elif day == CHANGE_DAY:
            returned = first_subscribers.with_columns(
                activation_date=pl.when(pl.Series(away))
                .then(pl.lit(START + dt.timedelta(days=AWAY_DAYS.stop)))
                .when(pl.Series(joiner))
                .then(pl.lit(date))
                .otherwise("activation_date")
            )
            tables["subscribers"] = returned.filter(~pl.Series(churned))
            tables["catalog"] = offers
            tables["holdings"] = _holdings(rng, ids[~churned], date)
        directory = lake.incoming(date)
        directory.mkdir(parents=True)
        for name, frame in tables.items():
            frame.write_csv(directory / f"{name}.csv")
        dates.append(date)
    return dates


def _subscribers(rng: np.random.Generator, ids: np.ndarray, first_day: dt.date) -> pl.DataFrame:
    n = len(ids)
    tenure = rng.integers(1, 3 * 365, n)
    return pl.DataFrame(
        {
            "subscriber_id": ids,
            "region": rng.choice(REGIONS, n),
            "device_os": rng.choice(["android", "ios", "other"], n, p=[0.6, 0.35, 0.05]),
            "device_vendor": rng.choice(["acme", "zeta", "nova"], n),
            "tariff_id": rng.choice(["T-10", "T-20", "T-30"], n),
            "activation_date": [first_day - dt.timedelta(days=int(days)) for days in tenure],
        }
    )


def _catalog(rng: np.random.Generator) -> pl.DataFrame:
    """Every offer ever in the catalog: those of NEW_CATEGORY start on the change day."""
    count = len(CATEGORIES) * OFFERS_PER_CATEGORY
    numbers = rng.choice(np.arange(100, 9_999), size=count, replace=False)
    categories = np.repeat(CATEGORIES, OFFERS_PER_CATEGORY)
    change = START + dt.timedelta(days=CHANGE_DAY)
    return pl.DataFrame(
        {
            "offer_id": [f"{number:05d}" for number in numbers],  # "00417": digits, zeros kept
            "category": categories,
            "title": [
                f"{category} offer {i % OFFERS_PER_CATEGORY + 1}"
                for i, category in enumerate(categories)
            ],  # fmt: skip
            "value": np.round(rng.uniform(1.0, 20.0, count), 2),
            "start_date": [
                change if category == NEW_CATEGORY else START for category in categories
            ],
            "min_tenure_days": rng.choice([0, 0, 30], count),
            "cooldown_days": rng.integers(3, 15, count),
        }
    ).select(CATALOG_COLUMNS)


def _holdings(rng: np.random.Generator, ids: np.ndarray, date: dt.date) -> pl.DataFrame:
    holders = ids[rng.random(len(ids)) < 0.4]
    return pl.DataFrame(
        {
            "subscriber_id": holders,
            "product_id": rng.choice(["P-TV", "P-CLOUD", "P-HOME"], len(holders)),
            "start_date": [
                date - dt.timedelta(days=int(d)) for d in rng.integers(0, 400, len(holders))
            ],
        }
    )


def _consumption(
    rng: np.random.Generator,
    ids: np.ndarray,
    taste: np.ndarray,
    catalog: pl.DataFrame,
    date: dt.date,
) -> pl.DataFrame:
    """Subscribers who like a consumed category use its offers' content or content outside."""
    columns = [CATEGORIES.index(category) for category in CONSUMED_CATEGORIES]
    liking = 1.0 / (1.0 + np.exp(-taste[:, columns].max(axis=1)))
    consumers = ids[rng.random(len(ids)) < liking]
    offers = catalog.filter(pl.col("category").is_in(CONSUMED_CATEGORIES))["offer_id"].to_list()
    items = rng.choice([*offers, *OUTSIDE_ITEMS], len(consumers))
    return pl.DataFrame(
        {
            "subscriber_id": consumers,
            "item_id": items,
            "ts": _times(rng, date, len(consumers)),
            "kind": rng.choice(["read", "watch"], len(consumers)),
        }
    )


def _times(rng: np.random.Generator, date: dt.date, count: int) -> list[dt.datetime]:
    midnight = dt.datetime.combine(date, dt.time())
    seconds = rng.integers(0, 86_400 - 600, count)
    return [midnight + dt.timedelta(seconds=int(second)) for second in seconds]


def _usage(
    rng: np.random.Generator, ids: np.ndarray, behaviour: np.ndarray, date: dt.date
) -> pl.DataFrame:
    """One aggregated row per subscriber and kind of the day (minutes, messages, megabytes)."""
    means = {
        "voice_out": np.exp(2.0 + 0.8 * behaviour[:, 1]),
        "voice_in": np.exp(1.8 + 0.6 * behaviour[:, 1]),
        "sms_out": np.exp(0.5 + 0.8 * behaviour[:, 2]),
        "data": np.exp(5.0 + 1.0 * behaviour[:, 0]),
    }
    frames = []
    for kind in USAGE_KINDS:
        quantity = np.round(rng.gamma(2.0, means[kind] / 2.0), 2)
        frames.append(
            pl.DataFrame(
                {
                    "subscriber_id": ids,
                    "ts": _times(rng, date, len(ids)),
                    "kind": kind,
                    "quantity": quantity,
                    "charge": np.round(quantity * 0.01, 2),
                }
            )
        )
    return pl.concat(frames)


def _offer_events(
    rng: np.random.Generator,
    ids: np.ndarray,
    taste: np.ndarray,
    offers: pl.DataFrame,
    date: dt.date,
) -> pl.DataFrame:
    """Impressions of offers in force, then an accept (more likely with taste) or a dismiss."""
    shown = rng.random(len(ids)) < 0.6
    subscribers, tastes = ids[shown], taste[shown]
    pick = rng.integers(0, offers.height, len(subscribers))
    category = np.array([CATEGORIES.index(c) for c in offers["category"].to_numpy()[pick]])
    p_accept = 1.0 / (1.0 + np.exp(-tastes[np.arange(len(subscribers)), category]))
    draw = rng.random(len(subscribers))
    response = np.where(draw < p_accept, "accept", np.where(draw > 0.7, "dismiss", ""))
    seen = _times(rng, date, len(subscribers))
    offer_ids = offers["offer_id"].to_numpy()[pick]
    impressions = pl.DataFrame(
        {"subscriber_id": subscribers, "offer_id": offer_ids, "ts": seen, "event": "impression"}
    )
    answered = response != ""
    answers = pl.DataFrame(
        {
            "subscriber_id": subscribers[answered],
            "offer_id": offer_ids[answered],
            "ts": [t + dt.timedelta(minutes=5) for t, a in zip(seen, answered, strict=True) if a],
            "event": response[answered],
        }
    )
    events = pl.concat([impressions, answers]).sort("ts", "subscriber_id")
    event_ids = rng.choice(10**11, size=events.height, replace=False) + 10**11
    return events.with_columns(event_id=pl.Series([str(i) for i in event_ids])).select(
        "event_id", "subscriber_id", "offer_id", "ts", "event"
    )
