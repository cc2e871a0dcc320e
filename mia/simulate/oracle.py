"""The oracle: true P(accept | shown), true contact uplift and true consumption choices."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl

from mia.lake import Lake, parse_date
from mia.schema import (
    CATEGORY,
    ITEM_ID,
    OFFER_ID,
    P_ACCEPT,
    PRODUCT_ID,
    SUBSCRIBER_ID,
)
from mia.simulate.acceptance import (
    DRIVERS,
    acceptance_probability,
    behaviour_only_probability,
    category_factors,
    organic_accept_chance,
    organic_browse_chance,
    signals_from_drivers,
    taste_sd,
)
from mia.simulate.catalog import offer_specs
from mia.simulate.categories import CATEGORIES
from mia.simulate.config import TRUTH_DIR, SimulationConfig, SimulationError
from mia.simulate.content import (
    P_CHOICE,
    TASTE_PREFIX,
    ContentItems,
    accept_affinity,
    affinity_sd,
    choice_probabilities,
    content_items,
    has_content,
)
from mia.simulate.presets import Preset

logger = logging.getLogger(__name__)


def _truth_day(root: Path, as_of: dt.date) -> Path:
    truth_root = Path(root) / TRUTH_DIR
    if not (truth_root / "meta.json").is_file():
        raise SimulationError(
            f"oracle: {truth_root} holds no simulation truth (meta.json missing)."
        )
    directory = truth_root / f"date={as_of.isoformat()}"
    if not (directory / "drivers.parquet").is_file():
        known = Lake(truth_root).dates()
        span = f"{known[0]}..{known[-1]}" if known else "no days"
        raise SimulationError(f"oracle: as_of == {as_of}, truth covers {span}.")
    return directory


def _config(truth_root: Path) -> SimulationConfig:
    return SimulationConfig.from_meta(json.loads((truth_root / "meta.json").read_text()))


def _active_subscribers(
    directory: Path,
    as_of: dt.date,
    subscriber_ids: Iterable[int] | pl.Series | np.ndarray | None,
) -> pl.DataFrame:
    """Drivers of the requested subscribers (default: all active at the end of `as_of`), sorted."""
    drivers = pl.read_parquet(directory / "drivers.parquet")
    if subscriber_ids is not None:
        if not isinstance(subscriber_ids, pl.Series | np.ndarray):
            subscriber_ids = list(subscriber_ids)
        wanted = pl.Series(SUBSCRIBER_ID, subscriber_ids, dtype=pl.Int64).unique()
        unknown = wanted.filter(~wanted.is_in(drivers.get_column(SUBSCRIBER_ID).implode()))
        if unknown.len():
            raise SimulationError(
                f"oracle: subscriber_id not active as of {as_of}: "
                f"{unknown.sort().head(5).to_list()} ({unknown.len()} unknown)."
            )
        drivers = drivers.filter(pl.col(SUBSCRIBER_ID).is_in(wanted.implode()))
    return drivers.sort(SUBSCRIBER_ID)


def oracle_p_accept(
    root: Path,
    as_of: dt.date | str,
    subscriber_ids: Iterable[int] | pl.Series | np.ndarray | None = None,
    offer_ids: Iterable[str] | None = None,
    behaviour_only: bool = False,
) -> pl.DataFrame:
    """True P(accept) of each subscriber x offer if shown the day after `as_of`.

    Uses only the truth written up to the end of `as_of`. Defaults: every subscriber active at
    the end of `as_of` and every offer active on the next day. Rows are sorted by subscriber_id
    then offer_id; a held product has probability 0. With `behaviour_only`, the probability
    averaged over the tastes a subscriber might have: the best a model of log-visible behaviour
    alone can do (the taste signal is what separates it from the oracle). In a content world an
    item offer's probability holds the subscriber's affinity to the item too, and `behaviour_only`
    averages over it as well: given behaviour, affinity and category taste are independent
    normals, so their sum is normal with the combined spread.
    """
    root = Path(root)
    as_of = parse_date(as_of)
    directory = _truth_day(root, as_of)
    truth_root = root / TRUTH_DIR
    drivers = _active_subscribers(directory, as_of, subscriber_ids)
    offers = pl.read_parquet(truth_root / "offers.parquet")
    config = _config(truth_root)
    if offer_ids is None:
        next_day = (as_of - config.start).days + 1
        active = [
            o.offer_id
            for o in offer_specs(config)
            if o.start_offset <= next_day and (o.end_offset is None or next_day <= o.end_offset)
        ]
        offers = offers.filter(pl.col(OFFER_ID).is_in(active))
    else:
        requested = sorted(set(offer_ids))
        unknown_offers = sorted(set(requested) - set(offers.get_column(OFFER_ID).to_list()))
        if unknown_offers:
            raise SimulationError(f"oracle: unknown offer_id {unknown_offers[:5]}.")
        offers = offers.filter(pl.col(OFFER_ID).is_in(requested))
    offers = offers.sort(OFFER_ID)

    ids = drivers.get_column(SUBSCRIBER_ID).to_numpy()
    world = config.world
    items = content_items(config) if has_content(world) else None
    item_index = {} if items is None else {item_id: i for i, item_id in enumerate(items.ids)}
    if behaviour_only:
        spread = taste_sd(category_factors(config), world)
        item_spread = None if items is None else affinity_sd(items, world)
    else:
        tastes = _read_traits(truth_root, as_of, ids, [f"taste_{c}" for c in CATEGORIES])
        if items is not None:
            content_tastes = _read_content_tastes(truth_root, as_of, ids, items)
    signals = signals_from_drivers(drivers.select(DRIVERS).to_numpy().astype(np.float32))
    held = pl.read_parquet(directory / "held.parquet")
    frames = []
    for offer_id, category, product, attractiveness in offers.select(
        OFFER_ID, CATEGORY, PRODUCT_ID, "attractiveness"
    ).iter_rows():
        c = CATEGORIES.index(category)
        holders = held.filter(pl.col(PRODUCT_ID) == product).get_column(SUBSCRIBER_ID)
        category_index = np.full(len(ids), c)
        held_now = np.isin(ids, holders.to_numpy())
        item = item_index.get(offer_id)
        if behaviour_only:
            sd = spread[c] if item is None else np.sqrt(spread[c] ** 2 + item_spread[item] ** 2)
            probability = behaviour_only_probability(
                signals, category_index, attractiveness, sd, held_now, world.behaviour_weight
            )
        else:
            affinity = None
            if item is not None:
                affinity = accept_affinity(content_tastes, items.vectors[item], world)
            probability = acceptance_probability(
                signals,
                category_index,
                np.full(len(ids), attractiveness),
                tastes[:, c],
                held_now,
                world.behaviour_weight,
                affinity,
            )
        frames.append(
            pl.DataFrame(
                {
                    SUBSCRIBER_ID: ids,
                    OFFER_ID: pl.repeat(offer_id, len(ids), eager=True),
                    P_ACCEPT: probability,
                },
                schema={SUBSCRIBER_ID: pl.Int64, OFFER_ID: pl.String, P_ACCEPT: pl.Float64},
            )
        )
    logger.debug("oracle as of %s: %d subscribers x %d offers", as_of, len(ids), len(frames))
    if not frames:
        return pl.DataFrame(
            schema={SUBSCRIBER_ID: pl.Int64, OFFER_ID: pl.String, P_ACCEPT: pl.Float64}
        )
    return pl.concat(frames).sort([SUBSCRIBER_ID, OFFER_ID])


def _read_daily(truth_root: Path, as_of: dt.date, name: str) -> pl.DataFrame:
    """One truth file of every day up to `as_of`, concatenated."""
    files = [
        truth_root / f"date={date.isoformat()}" / f"{name}.parquet"
        for date in Lake(truth_root).dates()
        if date <= as_of
    ]
    return pl.concat([pl.read_parquet(file) for file in files if file.is_file()])


def _read_traits(
    truth_root: Path, as_of: dt.date, ids: np.ndarray, columns: list[str]
) -> np.ndarray:
    """Latent traits (ids x columns) of subscribers activated up to `as_of`."""
    traits = _read_daily(truth_root, as_of, "traits")
    aligned = pl.DataFrame({SUBSCRIBER_ID: ids}, schema={SUBSCRIBER_ID: pl.Int64}).join(
        traits, on=SUBSCRIBER_ID, how="left", maintain_order="left"
    )
    return aligned.select(columns).to_numpy()


def _read_content_tastes(
    truth_root: Path, as_of: dt.date, ids: np.ndarray, items: ContentItems
) -> np.ndarray:
    """Content-taste vectors (ids x content factors)."""
    factors = items.vectors.shape[1]
    return _read_traits(truth_root, as_of, ids, [f"{TASTE_PREFIX}{k}" for k in range(factors)])


ORGANIC_P = "p_organic"
TRUE_UPLIFT = "true_uplift"


def _organic_terms(root: Path, as_of: dt.date, ids: np.ndarray) -> tuple[pl.DataFrame, Preset]:
    """[subscriber_id, category, browse, weight] of the subscribers `ids` as of `as_of`: their
    daily chance to browse an offer alone and the pick weight of each category's offers."""
    truth_root = Path(root) / TRUTH_DIR
    config = SimulationConfig.from_meta(json.loads((truth_root / "meta.json").read_text()))
    world = config.world
    drivers = (
        pl.DataFrame({SUBSCRIBER_ID: ids}, schema={SUBSCRIBER_ID: pl.Int64})
        .join(
            pl.read_parquet(_truth_day(root, as_of) / "drivers.parquet"),
            on=SUBSCRIBER_ID,
            how="left",
            maintain_order="left",
        )
        .select(DRIVERS)
        .to_numpy()
        .astype(np.float32)
    )
    browse = organic_browse_chance(signals_from_drivers(drivers), world)
    if world.organic_demand_sd > 0.0:
        weight = np.exp(_read_traits(truth_root, as_of, ids, [f"organic_{c}" for c in CATEGORIES]))
    else:
        weight = np.ones((len(ids), len(CATEGORIES)))
    terms = pl.DataFrame(
        {
            SUBSCRIBER_ID: np.repeat(ids, len(CATEGORIES)),
            CATEGORY: np.tile(np.array(CATEGORIES), len(ids)),
            "_browse": np.repeat(browse, len(CATEGORIES)),
            "_weight": weight.ravel(),
        },
        schema_overrides={SUBSCRIBER_ID: pl.Int64},
    )
    return terms, world


def oracle_uplift(
    root: Path,
    as_of: dt.date | str,
    horizon_days: int,
    subscriber_ids: Iterable[int] | pl.Series | np.ndarray | None = None,
    offer_ids: Iterable[str] | None = None,
    eligible: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """True uplift of contacting each subscriber with an offer the day after `as_of`.

    `true_uplift = p_accept - p_organic`: the chance that the contact is accepted (the
    simulator's P(accept | shown)) minus the chance that the subscriber, not contacted, accepts the
    offer on their own within `horizon_days`. In the simulator a subscriber without an impression
    browses one offer a day with chance b (the world's `organic_browse`, plus
    `organic_browse_engagement` x their app engagement signal, at most 1), picks it among the
    offers eligible to them with weight w = exp(their organic demand for its category; 1 in worlds
    without organic demand) and accepts it with a = min(1, organic_factor x p_accept); so the daily
    organic chance is q = b x w / (sum of w over the eligible offers) x a and
    p_organic = 1 - (1 - q) ** horizon_days (p_accept and b held at their values as of `as_of`).
    The eligible offers are the subscriber's pairs in `eligible` ([subscriber_id, offer_id], e.g.
    from offers.eligibility.eligible_pairs); without it, the active offers whose product the
    subscriber does not hold (region, device, tenure and cooldown rules are then ignored).
    Columns: subscriber_id, offer_id, p_accept, p_organic, true_uplift, sorted like
    `oracle_p_accept`.
    """
    if not isinstance(horizon_days, int) or isinstance(horizon_days, bool) or horizon_days < 1:
        raise SimulationError(f"horizon_days == {horizon_days!r}, must be an integer >= 1.")
    root = Path(root)
    as_of = parse_date(as_of)
    probabilities = oracle_p_accept(root, as_of, subscriber_ids, offer_ids)
    if eligible is None:
        pool = probabilities.filter(pl.col(P_ACCEPT) > 0)
        if offer_ids is not None:  # every active offer is browsed, not only the requested ones
            pool = oracle_p_accept(root, as_of, subscriber_ids).filter(pl.col(P_ACCEPT) > 0)
    else:
        pool = eligible.select(SUBSCRIBER_ID, OFFER_ID).unique()
    ids = probabilities.get_column(SUBSCRIBER_ID).unique().sort().to_numpy()
    terms, world = _organic_terms(root, as_of, ids)
    categories = pl.read_parquet(root / TRUTH_DIR / "offers.parquet").select(OFFER_ID, CATEGORY)
    totals = (
        pool.select(SUBSCRIBER_ID, OFFER_ID)
        .join(categories, on=OFFER_ID)
        .join(terms, on=[SUBSCRIBER_ID, CATEGORY])
        .group_by(SUBSCRIBER_ID)
        .agg(pl.col("_weight").sum().alias("_total"))
    )
    frame = (
        probabilities.join(categories, on=OFFER_ID, how="left", maintain_order="left")
        .join(terms, on=[SUBSCRIBER_ID, CATEGORY], how="left", maintain_order="left")
        .join(totals, on=SUBSCRIBER_ID, how="left", maintain_order="left")
    )
    accept = organic_accept_chance(frame.get_column(P_ACCEPT).to_numpy(), world)
    daily = pl.col("_browse") * pl.col("_weight") / pl.col("_total") * pl.Series(accept)
    organic = (1.0 - (1.0 - daily) ** horizon_days).fill_null(0.0).fill_nan(0.0)
    return (
        frame.with_columns(organic.alias(ORGANIC_P))
        .with_columns((pl.col(P_ACCEPT) - pl.col(ORGANIC_P)).alias(TRUE_UPLIFT))
        .select(SUBSCRIBER_ID, OFFER_ID, P_ACCEPT, ORGANIC_P, TRUE_UPLIFT)
    )


# Rows of the subscribers x items grid computed at once (bounds the oracle's memory).
_CHOICE_CHUNK = 4096


def oracle_consumption(
    root: Path,
    as_of: dt.date | str,
    subscriber_ids: Iterable[int] | pl.Series | np.ndarray | None = None,
) -> pl.DataFrame:
    """True chance that a subscriber's next consumption is each catalog item (content worlds).

    The simulator draws every consumption of the day after `as_of` from one softmax over all
    content items (popularity + affinity, items consumed up to `as_of` damped by their kind's
    repeat factor); this is that softmax at the catalog's items. Per subscriber, `p_choice`
    sums to the chance that a consumption is of a catalog item (the rest is content outside
    the catalog). Columns: subscriber_id, item_id (an offer_id), p_choice; sorted by
    subscriber_id then item_id. Default subscribers: every one active at the end of `as_of`.
    """
    root = Path(root)
    as_of = parse_date(as_of)
    directory = _truth_day(root, as_of)
    truth_root = root / TRUTH_DIR
    config = _config(truth_root)
    if not has_content(config.world):
        raise SimulationError(
            f"oracle: the {config.preset!r} world has no content (consumption comes with "
            "preset 'content')."
        )
    ids = _active_subscribers(directory, as_of, subscriber_ids).get_column(SUBSCRIBER_ID)
    items = content_items(config)
    tastes = _read_content_tastes(truth_root, as_of, ids.to_numpy(), items)
    seen = np.zeros((len(ids), len(items.ids)), dtype=bool)
    consumed = _read_daily(truth_root, as_of, "consumed").join(
        pl.DataFrame({SUBSCRIBER_ID: ids, "_row": np.arange(len(ids))}),
        on=SUBSCRIBER_ID,
    )
    item_index = pl.DataFrame({ITEM_ID: items.ids, "_item": np.arange(len(items.ids))})
    pairs = consumed.join(item_index, on=ITEM_ID)
    seen[pairs["_row"].to_numpy(), pairs["_item"].to_numpy()] = True
    catalog = np.flatnonzero(items.in_catalog)
    windows = [slice(start, start + _CHOICE_CHUNK) for start in range(0, len(ids), _CHOICE_CHUNK)]
    probability = np.vstack(
        [choice_probabilities(tastes[w], seen[w], items)[:, catalog] for w in windows]
        or [np.zeros((0, len(catalog)))]
    )
    logger.debug("consumption oracle as of %s: %d subscribers", as_of, len(ids))
    return pl.DataFrame(
        {
            SUBSCRIBER_ID: np.repeat(ids.to_numpy(), len(catalog)),
            ITEM_ID: pl.Series([items.ids[i] for i in catalog], dtype=pl.String).gather(
                np.tile(np.arange(len(catalog)), len(ids))
            ),
            P_CHOICE: probability.ravel(),
        },
        schema={SUBSCRIBER_ID: pl.Int64, ITEM_ID: pl.String, P_CHOICE: pl.Float64},
    ).sort([SUBSCRIBER_ID, ITEM_ID])
