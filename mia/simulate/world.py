"""The synthetic telco advanced one day at a time, and the writer of its files."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import polars as pl

from mia.hashing import control_mask
from mia.lake import Lake, atomic_path, write_json, write_parquet
from mia.schema import (
    APP_SCREENS,
    DEVICE_OS,
    EVENT,
    ITEM_ID,
    KIND,
    OFFER_EVENTS,
    OFFER_ID,
    P_ACCEPT,
    PAYMENT_METHODS,
    PRODUCT_ID,
    PROPENSITY,
    QUANTITY,
    SUBSCRIBER_ID,
    TABLES,
    TRANSFER_KINDS,
    TS,
    USAGE_KINDS,
)
from mia.simulate.acceptance import (
    DRIVERS,
    SIGNALS,
    acceptance_probability,
    category_factors,
    draw_organic_demand,
    draw_tastes,
    organic_accept_chance,
    organic_browse_chance,
    signals_from_drivers,
)
from mia.simulate.catalog import (
    DEVICES,
    INITIAL_HOLDINGS,
    PREMIUM_VENDORS,
    REGIONS,
    SUBSCRIPTION_CHURN,
    TARIFFS,
    OfferArrays,
    catalog_frame,
)
from mia.simulate.categories import CATEGORIES
from mia.simulate.config import (
    EPOCH,
    FILE_FORMATS,
    MICROS_PER_SECOND,
    NEVER,
    OPEN_ENDED,
    SECONDS_PER_DAY,
    STREAM_APP,
    STREAM_CHURN,
    STREAM_CONSUMPTION,
    STREAM_CONTENT_NEW,
    STREAM_CONTENT_STATIC,
    STREAM_NEW,
    STREAM_ORGANIC,
    STREAM_ORGANIC_DEMAND,
    STREAM_PAYMENTS,
    STREAM_POLICY,
    STREAM_RESPONSES,
    STREAM_STATIC,
    STREAM_TRANSFERS,
    STREAM_TRIPS,
    STREAM_USAGE,
    TRUTH_DIR,
    TRUTH_VERSION,
    SimulationConfig,
    SimulationError,
    day_rng,
    static_rng,
)
from mia.simulate.content import (
    CONSUMPTION_KINDS,
    CONTENT_KINDS,
    RATE,
    TASTE_PREFIX,
    accept_affinity,
    choice_probabilities,
    content_items,
    draw_content_traits,
    has_content,
)
from mia.simulate.presets import Preset

logger = logging.getLogger(__name__)

# Daily aggregates kept in a 30-day ring to compute the window drivers.
_DAILY = (
    "data_mb",
    "voice_out_min",
    "voice_in_min",
    "roaming_units",
    "roaming_screens",
    "charges",
    "payments",
    "promised_payments",
    "manual_topups",
    "app_screens",
    "entertainment_screens",
    "tariff_screens",
    "addon_screens",
    "market_screens",
    "loyalty_screens",
    "services_screens",
    "gifts",
    "market_trades",
)
_WINDOW_7 = ("roaming_units", "roaming_screens")
_RING_DAYS = 30

# Logging policy and responses.
MAX_SLOTS = 3
EXPLORATION = 0.5  # share of the policy that spreads impressions evenly over categories
CLICK_BEFORE_ACCEPT = 0.7
CLICK_WITHOUT_ACCEPT = 0.12
DISMISS_AFTER_CLICK = 0.6
DISMISS_WITHOUT_CLICK = 0.35
# The `telco` world's organic accepts (other worlds: their Preset's organic_* fields).
ORGANIC_BROWSE = Preset.organic_browse  # daily chance a subscriber looks at one offer on their own
ORGANIC_FACTOR = Preset.organic_factor  # organic accept chance relative to P(accept | shown)

_SCREEN_ALPHA = np.array([3.0, 2.0, 0.8, 0.8, 0.3, 0.4, 0.6, 0.9, 0.5, 0.4])
_APP_RATE_MEDIAN = 0.5
_APP_RATE_SIGMA = 0.8
_APP_RATE_MEAN = _APP_RATE_MEDIAN * float(np.exp(_APP_RATE_SIGMA**2 / 2))
_TOPUP_AMOUNTS = np.array([200.0, 300.0, 500.0, 1000.0])
_GB_CHOICES = np.array([1.0, 2.0, 3.0, 5.0, 10.0])
_SCREEN = {name: i for i, name in enumerate(APP_SCREENS)}
# Average entertainment app activity: the mean app rate x the mean entertainment screen share.
_ENTERTAINMENT_MEAN = _APP_RATE_MEAN * _SCREEN_ALPHA[_SCREEN["entertainment"]] / _SCREEN_ALPHA.sum()
_CONTENT_MINUTES = np.array([kind.minutes for kind in CONTENT_KINDS])
_AGG = {name: i for i, name in enumerate(_DAILY)}
_DRIVER = {name: i for i, name in enumerate(DRIVERS)}
_KIND = {name: i for i, name in enumerate(USAGE_KINDS)}
_TARIFF_PRICE = np.array([t.price for t in TARIFFS])
_ALLOWANCE_MB = np.array([t.data_gb * 1024.0 for t in TARIFFS])
_VOICE_MINUTES = np.array([t.voice_minutes for t in TARIFFS])
# Mean call minutes a day of the heaviest caller: days stay below the contract's plausibility
# bound (USAGE_DAILY_LIMITS, 24 h), as a real operator's records do.
MAX_VOICE_RATE = 150.0
_VENDOR_OS = np.array([DEVICE_OS.index(os_name) for _, os_name, _ in DEVICES])
_PREMIUM = np.array([vendor in PREMIUM_VENDORS for vendor, _, _ in DEVICES])


def _choice(rng: np.random.Generator, shares: Iterable[float], size: int) -> np.ndarray:
    """Indices drawn with the given shares (normalised)."""
    p = np.asarray(list(shares), dtype=np.float64)
    return rng.choice(len(p), size=size, p=p / p.sum())


def _micros(day_number: int, seconds: np.ndarray) -> np.ndarray:
    """Microseconds since the epoch for seconds within a day."""
    return (np.int64(day_number) * SECONDS_PER_DAY + seconds.astype(np.int64)) * MICROS_PER_SECOND


def _strings(names: Iterable[str], index: np.ndarray) -> pl.Series:
    return pl.Series(list(names), dtype=pl.String).gather(pl.Series(index, dtype=pl.UInt32))


def _timestamps(micros: np.ndarray) -> pl.Series:
    return pl.Series(micros.astype(np.int64)).cast(pl.Datetime("us"))


def _dates(day_numbers: np.ndarray) -> pl.Series:
    return pl.Series(day_numbers.astype(np.int32)).cast(pl.Date)


def _event_frame(
    table: str,
    day_number: int,
    ids: np.ndarray,
    rows: np.ndarray,
    seconds: np.ndarray,
    columns: dict[str, np.ndarray | pl.Series | tuple[Iterable[str], np.ndarray]],
) -> pl.DataFrame:
    """A contract-typed event table of one day, sorted by time then subscriber.

    `rows` index subscribers, `seconds` are times within the day; a column given as
    (names, index) becomes a string column.
    """
    order = np.argsort((seconds.astype(np.int64) << 32) | rows.astype(np.int64), kind="stable")
    data: dict[str, pl.Series | np.ndarray] = {
        SUBSCRIBER_ID: ids[rows[order]],
        TS: _timestamps(_micros(day_number, seconds[order])),
    }
    for name, values in columns.items():
        if isinstance(values, tuple):
            data[name] = _strings(values[0], values[1][order])
        else:
            data[name] = values[order]
    schema = TABLES[table].polars_schema
    return pl.DataFrame({name: data[name] for name in schema}, schema=schema)


def _first_occurrence(keys: np.ndarray) -> np.ndarray:
    """Mask of the first row of every distinct key, in row order."""
    keep = np.zeros(len(keys), dtype=bool)
    _, first = np.unique(keys, return_index=True)
    keep[first] = True
    return keep


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """0-based position of every row among the earlier rows of its group."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    lengths = np.diff(np.r_[starts, len(groups)])
    ranks = np.empty(len(groups), dtype=np.int64)
    ranks[order] = np.arange(len(groups)) - np.repeat(starts, lengths)
    return ranks


class _World:
    """State of the synthetic telco, advanced one day at a time."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.offers = OfferArrays(config)
        self.catalog = catalog_frame(config)
        self.start_number = (config.start - EPOCH).days
        self.category_factors = category_factors(config)
        self.n = 0
        n_products = len(self.offers.products)
        self.columns: dict[str, np.ndarray] = {}
        self.taste = np.zeros((0, len(CATEGORIES)))
        self.organic_demand = np.zeros((0, len(CATEGORIES)))
        self.screen_pref = np.zeros((0, len(APP_SCREENS)))
        self.hold_start = np.zeros((0, n_products), dtype=np.int32)
        self.hold_end = np.zeros((0, n_products), dtype=np.int32)
        self.last_response = np.zeros((0, len(self.offers.specs)), dtype=np.int32)
        self.drivers = np.zeros((0, len(DRIVERS)), dtype=np.float32)
        self.signals = np.zeros((0, len(SIGNALS)))
        self.ring = np.zeros((_RING_DAYS, len(_DAILY), 0), dtype=np.float32)
        # Content worlds: items, each offer's item (-1: not an item offer), tastes, items seen.
        world = config.world
        self.content = content_items(config) if has_content(world) else None
        item_ids = () if self.content is None else self.content.ids
        item_index = {item_id: i for i, item_id in enumerate(item_ids)}
        self.offer_item = np.array([item_index.get(offer_id, -1) for offer_id in self.offers.ids])
        self.content_taste = np.zeros((0, world.content_factors))
        self.seen = np.zeros((0, len(item_ids)), dtype=bool)
        self.product_duration = np.full(n_products, -1)
        for offer_index in range(len(self.offers.specs) - 1, -1, -1):
            self.product_duration[self.offers.product[offer_index]] = self.offers.duration[
                offer_index
            ]

    # ---- subscribers -------------------------------------------------------------------------

    def _add_subscribers(
        self,
        rng: np.random.Generator,
        activation_day: np.ndarray,
        content_rng: np.random.Generator,
    ) -> None:
        """Draw traits of new subscribers and append them to every state array.

        Content traits come from `content_rng`, so that worlds without content draw as before.
        """
        n = len(activation_day)
        first_id = self.n + 1
        device = _choice(rng, (share for _, _, share in DEVICES), n)
        new = {
            "id": np.arange(first_id, first_id + n, dtype=np.int64),
            "activation_day": activation_day.astype(np.int64),
            "region": _choice(rng, (share for _, share in REGIONS), n),
            "device": device,
            "tariff": _choice(rng, (t.share for t in TARIFFS), n),
            "data_pref": rng.lognormal(np.log(0.55), 0.55, n),
            # Daily call minutes, capped so that no simulated day exceeds 24 hours of calls.
            "voice_out_rate": np.minimum(rng.lognormal(np.log(8.0), 0.8, n), MAX_VOICE_RATE),
            "voice_in_rate": np.minimum(rng.lognormal(np.log(7.0), 0.8, n), MAX_VOICE_RATE),
            "sms_rate": rng.lognormal(np.log(1.0), 0.8, n),
            "travel_rate": np.array([1 / 365, 1 / 90, 1 / 25])[_choice(rng, (0.7, 0.25, 0.05), n)],
            "app_rate": rng.lognormal(np.log(_APP_RATE_MEDIAN), _APP_RATE_SIGMA, n),
            "gift_rate": np.array([0.002, 0.03, 0.1])[_choice(rng, (0.75, 0.2, 0.05), n)],
            "market_rate": np.array([0.001, 0.03, 0.15])[_choice(rng, (0.85, 0.12, 0.03), n)],
            "topup_threshold": rng.uniform(30.0, 150.0, n),
            "topup_amount": _TOPUP_AMOUNTS[_choice(rng, (0.2, 0.35, 0.35, 0.1), n)],
            "pay_method": _choice(rng, (0.6, 0.15, 0.25), n),
            "balance": rng.uniform(50.0, 400.0, n),
            "trip_start": np.full(n, NEVER, dtype=np.int64),
            "trip_end": np.full(n, NEVER, dtype=np.int64),
        }
        new["control"] = control_mask(new["id"], self.config.group_salt, self.config.control_share)
        screen_pref = rng.dirichlet(_SCREEN_ALPHA, n)
        taste = draw_tastes(rng, n, self.category_factors, self.config.world)
        content_taste = np.zeros((n, self.content_taste.shape[1]))
        if self.content is not None:
            activity = new["app_rate"] * screen_pref[:, _SCREEN["entertainment"]]
            content_taste, new[RATE] = draw_content_traits(
                content_rng,
                n,
                self.config.world,
                np.clip(activity / _ENTERTAINMENT_MEAN, 0.05, 20.0),
            )
        hold_start = np.full((n, len(self.offers.products)), NEVER, dtype=np.int32)
        hold_end = np.full((n, len(self.offers.products)), NEVER, dtype=np.int32)
        rows = np.arange(n)
        tariff_product = self.offers.tariff_product[new["tariff"]]
        past = activation_day < 0
        tariff_since = np.where(
            past, np.maximum(activation_day, -rng.integers(1, 731, n)), activation_day
        )
        hold_start[rows, tariff_product] = tariff_since
        hold_end[rows, tariff_product] = OPEN_ENDED
        product_index = {name: i for i, name in enumerate(self.offers.products)}
        for name, share in INITIAL_HOLDINGS.items():
            p = product_index[name]
            holds = past & (rng.random(n) < share)
            duration = self.product_duration[p]
            if duration > 0:
                since = -rng.integers(1, duration, n) if duration > 1 else np.full(n, -1)
                until = since + duration - 1
            else:
                since = -rng.integers(1, 366, n)
                until = np.full(n, OPEN_ENDED)
            since = np.maximum(since, activation_day)
            hold_start[holds, p] = since[holds]
            hold_end[holds, p] = np.maximum(until, since)[holds]
        for name, values in new.items():
            self.columns[name] = np.concatenate([self.columns.get(name, values[:0]), values])
        self.taste = np.vstack([self.taste, taste])
        self.content_taste = np.vstack([self.content_taste, content_taste])
        self.seen = np.vstack([self.seen, np.zeros((n, self.seen.shape[1]), dtype=bool)])
        self.screen_pref = np.vstack([self.screen_pref, screen_pref])
        self.hold_start = np.vstack([self.hold_start, hold_start])
        self.hold_end = np.vstack([self.hold_end, hold_end])
        self.last_response = np.vstack(
            [self.last_response, np.full((n, len(self.offers.specs)), NEVER, dtype=np.int32)]
        )
        self.drivers = np.vstack([self.drivers, np.zeros((n, len(DRIVERS)), dtype=np.float32)])
        self.n += n
        if self.ring.shape[2] < self.n:
            capacity = self.n + self.n // 8 + 64
            ring = np.zeros((_RING_DAYS, len(_DAILY), capacity), dtype=np.float32)
            ring[:, :, : self.ring.shape[2]] = self.ring
            self.ring = ring

    def _activate(self, day: int) -> pl.DataFrame:
        """New lines of `day` (the whole base on day 0); returns their tastes (and organic demand,
        where the world has it) for the truth."""
        before = self.n
        if day == 0:
            rng = static_rng(self.config.seed, STREAM_STATIC + 2)
            content_rng = static_rng(self.config.seed, STREAM_CONTENT_STATIC + 1)
            tenure = 1 + np.minimum(np.floor(rng.exponential(900.0, self.config.subscribers)), 5399)
            self._add_subscribers(rng, -tenure.astype(np.int64), content_rng)
        else:
            rng = day_rng(self.config.seed, day, STREAM_NEW)
            content_rng = day_rng(self.config.seed, day, STREAM_CONTENT_NEW)
            rate = self.config.world.new_activation_rate
            count = int(rng.poisson(self.config.subscribers * rate))
            if count:
                self._add_subscribers(rng, np.full(count, day, dtype=np.int64), content_rng)
        # Its own stream: worlds without organic demand draw exactly what they drew before.
        rng = day_rng(self.config.seed, day, STREAM_ORGANIC_DEMAND)
        demand = draw_organic_demand(rng, self.n - before, self.config.world)
        self.organic_demand = np.vstack([self.organic_demand, demand])
        traits = {SUBSCRIBER_ID: self.columns["id"][before:]}
        for c, category in enumerate(CATEGORIES):
            traits[f"taste_{category}"] = self.taste[before:, c]
        if self.config.world.organic_demand_sd > 0.0:
            for c, category in enumerate(CATEGORIES):
                traits[f"organic_{category}"] = demand[:, c]
        if self.content is not None:
            for k in range(self.content_taste.shape[1]):
                traits[f"{TASTE_PREFIX}{k}"] = self.content_taste[before:, k]
            traits[RATE] = self.columns[RATE][before:]
        return pl.DataFrame(traits, schema_overrides={SUBSCRIBER_ID: pl.Int64})

    # ---- daily behaviour ---------------------------------------------------------------------

    def _trips(self, day: int) -> tuple[np.ndarray, np.ndarray]:
        """Plan and end trips abroad; returns (on_trip, planning_or_on_trip) masks."""
        rng = day_rng(self.config.seed, day, STREAM_TRIPS)
        start, end = self.columns["trip_start"], self.columns["trip_end"]
        finished = (start != NEVER) & (end < day)
        start[finished] = NEVER
        end[finished] = NEVER
        idle = start == NEVER
        plan = idle & (rng.random(self.n) < self.columns["travel_rate"])
        lead = rng.integers(1, 6, self.n)
        length = rng.integers(3, 15, self.n)
        start[plan] = day + lead[plan]
        end[plan] = day + lead[plan] + length[plan] - 1
        on_trip = (start != NEVER) & (start <= day) & (day <= end)
        soon = (start != NEVER) & (start > day) & (start - day <= 3)
        return on_trip, on_trip | soon

    def _usage(
        self, day: int, on_trip: np.ndarray, held: np.ndarray, agg: np.ndarray
    ) -> pl.DataFrame:
        rng = day_rng(self.config.seed, day, STREAM_USAGE)
        c = self.columns
        tariff = c["tariff"]
        allowance = _ALLOWANCE_MB[tariff]
        home = np.where(on_trip, 0.15, 1.0)
        trip = on_trip.astype(np.float64)
        # kind -> (daily mean, active probability, extra rows, gamma shape)
        plan = {
            "voice_out": (c["voice_out_rate"] * np.where(on_trip, 0.2, 1.0), 0.8, 0.6),
            "voice_in": (c["voice_in_rate"] * np.where(on_trip, 0.3, 1.0), 0.75, 0.4),
            "sms_out": (c["sms_rate"], 0.3, 0.2),
            "data": (allowance / 30.0 * c["data_pref"] * home, 0.95, 1.0),
            "roaming_voice": (c["voice_out_rate"] * 0.3, 0.6 * trip, 0.3),
            "roaming_data": (150.0 * c["data_pref"] + 20.0, 0.95 * trip, 1.0),
        }
        category_held = held.astype(np.int8) @ self._product_category()
        has = {name: category_held[:, CATEGORIES.index(name)] > 0 for name in CATEGORIES}
        over_data = (self.drivers[:, _DRIVER["data_mb_30"]] > allowance) & ~has["data_addon"]
        over_voice = (self.drivers[:, _DRIVER["voice_out_min_30"]] > _VOICE_MINUTES[tariff]) & ~has[
            "minutes_addon"
        ]
        price = _TARIFF_PRICE[tariff]
        rate = {
            "voice_out": price * 0.3 / _VOICE_MINUTES[tariff] * np.where(over_voice, 2.0, 1.0),
            "voice_in": np.zeros(self.n),
            "sms_out": np.full(self.n, 2.0),
            "data": price * 0.5 / allowance * np.where(over_data, 3.0, 1.0),
            "roaming_voice": np.where(has["roaming"], 5.0, 25.0),
            "roaming_data": np.where(has["roaming"], 0.3, 1.5),
        }
        parts = []
        for kind in USAGE_KINDS:
            mean, active_prob, extra = plan[kind]
            active = rng.random(self.n) < active_prob
            counts = np.where(active, 1 + rng.poisson(extra, self.n), 0)
            rows = np.repeat(np.arange(self.n), counts)
            per_row = mean / (np.maximum(active_prob, 1e-9) * (1.0 + extra))
            quantity = rng.gamma(2.0, per_row[rows] / 2.0)
            if kind == "sms_out":
                quantity = 1.0 + np.floor(quantity)
            else:
                quantity = np.round(quantity, 2)
            charge = np.round(quantity * rate[kind][rows], 2)
            seconds = rng.integers(0, SECONDS_PER_DAY, len(rows))
            parts.append((rows, np.full(len(rows), _KIND[kind]), quantity, charge, seconds))
        rows, kind_index, quantity, charge, seconds = (
            np.concatenate(x) for x in zip(*parts, strict=True)
        )
        for name, kinds in (
            ("data_mb", ("data",)),
            ("voice_out_min", ("voice_out",)),
            ("voice_in_min", ("voice_in",)),
            ("roaming_units", ("roaming_voice", "roaming_data")),
        ):
            mask = np.isin(kind_index, [_KIND[k] for k in kinds])
            agg[_AGG[name]] = np.bincount(rows[mask], quantity[mask], minlength=self.n)
        charges = np.bincount(rows, charge, minlength=self.n)
        agg[_AGG["charges"]] = charges
        c["balance"] = c["balance"] - charges
        return _event_frame(
            "usage",
            self.start_number + day,
            c["id"],
            rows,
            seconds,
            {KIND: (USAGE_KINDS, kind_index), "quantity": quantity, "charge": charge},
        )

    def _product_category(self) -> np.ndarray:
        """Products x categories indicator (a product counts for the categories granting it)."""
        matrix = np.zeros((len(self.offers.products), len(CATEGORIES)), dtype=np.int8)
        matrix[self.offers.product, self.offers.category] = 1
        return matrix

    def _payments(self, day: int, held: np.ndarray, agg: np.ndarray) -> pl.DataFrame:
        rng = day_rng(self.config.seed, day, STREAM_PAYMENTS)
        c = self.columns
        draws = rng.random((4, self.n))
        balance = c["balance"]
        need = balance < c["topup_threshold"]
        autopay_product = self.offers.products.index("autopay_service")
        autopay = held[:, autopay_product] & need & (draws[0] < 0.9)
        manual = ~autopay & need & (draws[1] < 0.3)
        extra = ~autopay & ~manual & (draws[2] < 0.01)
        promised = ~autopay & ~manual & ~extra & (balance < 0) & (draws[3] < 0.35)
        promised_amount = np.array([100.0, 200.0, 300.0])[rng.integers(0, 3, self.n)]
        paid = autopay | manual | extra | promised
        amount = np.where(promised, promised_amount, c["topup_amount"])
        method = np.where(autopay, 3, np.where(promised, 4, c["pay_method"]))
        seconds = rng.integers(0, SECONDS_PER_DAY, self.n)
        rows = np.flatnonzero(paid)
        c["balance"] = balance + np.where(paid, amount, 0.0)
        agg[_AGG["payments"]] = np.where(paid, amount, 0.0)
        agg[_AGG["promised_payments"]] = promised
        agg[_AGG["manual_topups"]] = manual | extra
        return _event_frame(
            "payments",
            self.start_number + day,
            c["id"],
            rows,
            seconds[rows],
            {"amount": amount[rows], "method": (PAYMENT_METHODS, method[rows])},
        )

    def _app(self, day: int, travel: np.ndarray, agg: np.ndarray) -> pl.DataFrame:
        rng = day_rng(self.config.seed, day, STREAM_APP)
        c = self.columns
        sessions = rng.poisson(c["app_rate"] * (1.0 + travel))
        counts = sessions + rng.poisson(1.2 * sessions)
        ratio = self.drivers[:, _DRIVER["data_mb_30"]] / _ALLOWANCE_MB[c["tariff"]]
        pressure = np.clip((ratio - 0.6) / 0.4, 0.0, 1.5)
        prefs = self.screen_pref.copy()
        prefs[:, _SCREEN["roaming"]] += 0.5 * travel
        prefs[:, _SCREEN["balance"]] += 0.3 * (c["balance"] < c["topup_threshold"])
        prefs[:, _SCREEN["tariffs"]] += 0.15 * pressure
        prefs[:, _SCREEN["addons"]] += 0.15 * pressure
        cumulative = np.cumsum(prefs / prefs.sum(axis=1, keepdims=True), axis=1)
        rows = np.repeat(np.arange(self.n), counts)
        draws = rng.random(len(rows))
        screen = np.minimum((cumulative[rows] < draws[:, None]).sum(axis=1), len(APP_SCREENS) - 1)
        seconds = rng.integers(6 * 3600, SECONDS_PER_DAY, len(rows))
        per_screen = np.bincount(
            rows * len(APP_SCREENS) + screen, minlength=self.n * len(APP_SCREENS)
        ).reshape(self.n, len(APP_SCREENS))
        agg[_AGG["app_screens"]] = counts
        for name, screen_name in (
            ("roaming_screens", "roaming"),
            ("entertainment_screens", "entertainment"),
            ("tariff_screens", "tariffs"),
            ("addon_screens", "addons"),
            ("market_screens", "market"),
            ("loyalty_screens", "loyalty"),
            ("services_screens", "services"),
        ):
            agg[_AGG[name]] = per_screen[:, _SCREEN[screen_name]]
        return _event_frame(
            "app_events",
            self.start_number + day,
            c["id"],
            rows,
            seconds,
            {"screen": (APP_SCREENS, screen)},
        )

    def _transfers(self, day: int, agg: np.ndarray) -> pl.DataFrame:
        rng = day_rng(self.config.seed, day, STREAM_TRANSFERS)
        c = self.columns
        counts = np.stack(
            [
                rng.poisson(c["gift_rate"]),
                rng.poisson(c["gift_rate"] * 0.8 + 0.003),
                rng.poisson(c["market_rate"] * 0.5),
                rng.poisson(c["market_rate"] * 0.6),
            ]
        )
        kind = np.repeat(np.arange(4), counts.sum(axis=1))
        rows = np.concatenate([np.repeat(np.arange(self.n), k) for k in counts])
        gb = _GB_CHOICES[_choice(rng, (0.3, 0.25, 0.2, 0.15, 0.1), len(rows))]
        price = np.round(gb * rng.uniform(12.0, 25.0, len(rows)), 2)
        amount = np.where(kind >= 2, price, 0.0)
        seconds = rng.integers(0, SECONDS_PER_DAY, len(rows))
        agg[_AGG["gifts"]] = counts[0] + counts[1]
        agg[_AGG["market_trades"]] = counts[2] + counts[3]
        return _event_frame(
            "transfers",
            self.start_number + day,
            c["id"],
            rows,
            seconds,
            {KIND: (TRANSFER_KINDS, kind), "gb": gb, "amount": amount},
        )

    def _consumption(self, day: int) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Items consumed on `day`, and the (subscriber, item) pairs consumed for the first time.

        Every consumption of the day is drawn from the choice probabilities as of the start of
        the day (`choice_probabilities`: what `oracle_consumption` reports).
        """
        items = self.content
        c = self.columns
        rng = day_rng(self.config.seed, day, STREAM_CONSUMPTION)
        rows = np.repeat(np.arange(self.n), rng.poisson(c[RATE]))
        probability = choice_probabilities(self.content_taste[rows], self.seen[rows], items)
        cumulative = np.cumsum(probability, axis=1)
        draw = rng.random(len(rows)) * cumulative[:, -1]
        chosen = np.minimum(np.argmax(cumulative > draw[:, None], axis=1), len(items.ids) - 1)
        kind = items.kind[chosen]
        minutes = np.round(rng.gamma(2.0, _CONTENT_MINUTES[kind] / 2.0), 1)
        seconds = rng.integers(0, SECONDS_PER_DAY, len(rows))
        first = ~self.seen[rows, chosen] & _first_occurrence(rows * len(items.ids) + chosen)
        self.seen[rows, chosen] = True
        events = _event_frame(
            "consumption",
            self.start_number + day,
            c["id"],
            rows,
            seconds,
            {ITEM_ID: (items.ids, chosen), KIND: (CONSUMPTION_KINDS, kind), QUANTITY: minutes},
        )
        consumed = pl.DataFrame(
            {SUBSCRIBER_ID: c["id"][rows[first]], ITEM_ID: _strings(items.ids, chosen[first])},
            schema={SUBSCRIBER_ID: pl.Int64, ITEM_ID: pl.String},
        )
        return events, consumed

    # ---- offers ------------------------------------------------------------------------------

    def _eligible(self, rows: np.ndarray, day: int, held: np.ndarray) -> np.ndarray:
        """Rows x offers mask of the catalog rules on `day` (held products are not offered)."""
        o = self.offers
        c = self.columns
        held_rows = held[rows]
        tenure = day - c["activation_day"][rows]
        last = self.last_response[rows]
        mask = ((o.start_day <= day) & (day <= o.end_day))[None, :]
        mask = mask & o.region_ok.T[c["region"][rows]]
        mask = mask & o.os_ok.T[_VENDOR_OS[c["device"][rows]]]
        mask = mask & (tenure[:, None] >= o.min_tenure[None, :])
        mask = mask & ~held_rows[:, o.product]
        mask = mask & np.where(o.requires >= 0, held_rows[:, np.maximum(o.requires, 0)], True)
        mask = mask & ~np.where(o.excludes >= 0, held_rows[:, np.maximum(o.excludes, 0)], False)
        cooled = (last == NEVER) | (day - last.astype(np.int64) > o.cooldown[None, :])
        return mask & cooled

    def _probability(self, rows: np.ndarray, offers: np.ndarray, held: np.ndarray) -> np.ndarray:
        """True P(accept | shown) of (subscriber row, offer) pairs from yesterday's drivers."""
        category = self.offers.category[offers]
        affinity = None
        if self.content is not None:
            item = self.offer_item[offers]
            affinity = accept_affinity(
                self.content_taste[rows],
                self.content.vectors[np.maximum(item, 0)],
                self.config.world,
            )
            affinity = np.where(item >= 0, affinity, 0.0)
        return acceptance_probability(
            self.signals[rows],
            category,
            self.offers.attractiveness[offers],
            self.taste[rows, category],
            held[rows, self.offers.product[offers]],
            self.config.world.behaviour_weight,
            affinity,
        )

    def _organic_weight(self, rows: np.ndarray) -> np.ndarray:
        """Rows x offers weight of an offer in an organic browse: exp(organic demand)."""
        return np.exp(self.organic_demand[rows][:, self.offers.category])

    def _offer_events(
        self, day: int, held: np.ndarray
    ) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray, np.ndarray]:
        """Impressions and responses of the logging policy plus organic accepts.

        Returns the events, the truth of the impressions, and the (row, offer) of every accept.
        """
        o = self.offers
        c = self.columns
        seed = self.config.seed
        allowed = c["activation_day"] < day  # existed at the end of yesterday
        # Logging policy: impression slots for treatment subscribers active in the app.
        rng = day_rng(seed, day, STREAM_POLICY)
        activity = np.clip(c["app_rate"] / _APP_RATE_MEAN, 0.1, 4.0)
        slots = np.minimum(rng.poisson(self.config.world.impression_rate * activity), MAX_SLOTS)
        slots = np.where(allowed & ~c["control"], slots, 0)
        rows = np.repeat(np.arange(self.n), slots)
        eligible = self._eligible(rows, day, held)
        per_category = eligible.astype(np.float64) @ o.onehot
        categories_open = (per_category > 0).sum(axis=1, keepdims=True)
        explore = eligible / np.maximum(per_category[:, o.category] * categories_open, 1.0)
        prior = eligible * o.policy_prior[None, :]
        exploit = prior / np.maximum(prior.sum(axis=1, keepdims=True), 1e-12)
        weights = EXPLORATION * explore + (1.0 - EXPLORATION) * exploit
        total = weights.sum(axis=1)
        cumulative = np.cumsum(weights, axis=1)
        draw = rng.random(len(rows)) * total
        chosen = np.argmax(cumulative > draw[:, None], axis=1)
        propensity = weights[np.arange(len(rows)), chosen] / np.maximum(total, 1e-12)
        keep = total > 0
        group = np.where(o.is_tariff[chosen], -1, o.product[chosen]) + 1
        keep &= _first_occurrence(
            np.where(keep, rows * (len(o.products) + 1) + group, -1 - np.arange(len(rows)))
        )
        keep &= _rank_within(np.where(keep, chosen, -1)) < np.where(
            o.capacity[chosen] >= 0, o.capacity[chosen], np.iinfo(np.int64).max
        )
        rows, chosen, propensity = rows[keep], chosen[keep], propensity[keep]
        p_shown = self._probability(rows, chosen, held)

        rng = day_rng(seed, day, STREAM_RESPONSES)
        draws = rng.random((3, len(rows)))
        shown_at = rng.integers(8 * 3600, 22 * 3600, len(rows))
        click_at = shown_at + rng.integers(3, 121, len(rows))
        accept = draws[0] < p_shown
        click = np.where(accept, draws[1] < CLICK_BEFORE_ACCEPT, draws[1] < CLICK_WITHOUT_ACCEPT)
        dismiss = ~accept & (draws[2] < np.where(click, DISMISS_AFTER_CLICK, DISMISS_WITHOUT_CLICK))
        respond_at = np.where(click, click_at, shown_at) + rng.integers(5, 601, len(rows))

        # Organic accepts: anyone (control included) without an impression today.
        world = self.config.world
        rng = day_rng(seed, day, STREAM_ORGANIC)
        browse = np.zeros(self.n)  # lines activated today have no signals yet (nor browse)
        browse[: len(self.signals)] = organic_browse_chance(self.signals, world)
        browsing = allowed & (slots == 0) & (rng.random(self.n) < browse)
        browsing[rows] = False
        browse_rows = np.flatnonzero(browsing)
        weights = self._eligible(browse_rows, day, held) * self._organic_weight(browse_rows)
        cumulative = np.cumsum(weights, axis=1)
        total = cumulative[:, -1] if len(browse_rows) else np.zeros(0)
        # Uniform weights (no organic demand) pick exactly as a uniform integer draw would.
        pick = rng.random(len(browse_rows)) * total
        organic_offer = np.argmax(cumulative > pick[:, None], axis=1)
        organic_draw = rng.random(len(browse_rows))
        organic_at = rng.integers(0, SECONDS_PER_DAY, len(browse_rows))
        has_offer = total > 0
        browse_rows, organic_offer = browse_rows[has_offer], organic_offer[has_offer]
        organic_p = organic_accept_chance(
            self._probability(browse_rows, organic_offer, held), world
        )
        organic = organic_draw[has_offer] < organic_p
        organic_rows, organic_offer = browse_rows[organic], organic_offer[organic]
        organic_at = organic_at[has_offer][organic]

        parts = [
            (rows, chosen, shown_at, 0),
            (rows[click], chosen[click], click_at[click], 1),
            (rows[accept], chosen[accept], respond_at[accept], 2),
            (rows[dismiss], chosen[dismiss], respond_at[dismiss], 3),
            (organic_rows, organic_offer, organic_at, 2),
        ]
        event_rows = np.concatenate([part[0] for part in parts])
        event_offers = np.concatenate([part[1] for part in parts])
        seconds = np.concatenate([part[2] for part in parts])
        event = np.concatenate([np.full(len(part[0]), part[3]) for part in parts])
        # Impressions carry the logging policy's probability of the shown offer; responses none.
        logged_propensity = np.full(len(event_rows), np.nan)
        logged_propensity[: len(rows)] = propensity
        day_number = self.start_number + day
        events = _event_frame(
            "offer_events",
            day_number,
            c["id"],
            event_rows,
            seconds,
            {
                OFFER_ID: (o.ids, event_offers),
                EVENT: (OFFER_EVENTS, event),
                PROPENSITY: pl.Series(logged_propensity, nan_to_null=True),
            },
        )
        truth = pl.DataFrame(
            {
                SUBSCRIBER_ID: c["id"][rows],
                OFFER_ID: _strings(o.ids, chosen),
                TS: _timestamps(_micros(day_number, shown_at)),
                P_ACCEPT: p_shown,
                PROPENSITY: propensity,
                "accepted": accept,
            }
        )
        responded = np.concatenate([rows[accept | dismiss], organic_rows])
        responded_offer = np.concatenate([chosen[accept | dismiss], organic_offer])
        self.last_response[responded, responded_offer] = day
        accepted_rows = np.concatenate([rows[accept], organic_rows])
        accepted_offers = np.concatenate([chosen[accept], organic_offer])
        return events, truth, accepted_rows, accepted_offers

    def _apply_accepts(self, day: int, rows: np.ndarray, offers: np.ndarray) -> None:
        """Accepted products become holdings; an accepted tariff replaces the current one."""
        o = self.offers
        product = o.product[offers]
        duration = o.duration[offers]
        tariff_rows = o.is_tariff[offers]
        old = o.tariff_product[self.columns["tariff"][rows[tariff_rows]]]
        self.hold_end[rows[tariff_rows], old] = day
        self.columns["tariff"][rows[tariff_rows]] = o.product_tariff[product[tariff_rows]]
        self.hold_start[rows, product] = day
        self.hold_end[rows, product] = np.where(duration > 0, day + duration - 1, OPEN_ENDED)

    def _churn(self, day: int) -> None:
        """Open-ended subscriptions (not tariffs) are sometimes cancelled."""
        rng = day_rng(self.config.seed, day, STREAM_CHURN)
        candidates = (self.hold_end == OPEN_ENDED) & (self.hold_start < day)
        candidates[:, self.offers.tariff_product] = False
        rows, products = np.nonzero(candidates)
        cancel = rng.random(len(rows)) < SUBSCRIPTION_CHURN
        self.hold_end[rows[cancel], products[cancel]] = day

    # ---- windows and tables ------------------------------------------------------------------

    def _update_drivers(self, day: int, agg: np.ndarray) -> pl.DataFrame:
        """Push today's aggregates into the ring and compute the drivers as of the end of day."""
        n = self.n
        self.ring[day % _RING_DAYS, :, :n] = agg
        window_30 = self.ring[:, :, :n].sum(axis=0, dtype=np.float64)
        last_7 = [(day - back) % _RING_DAYS for back in range(min(day, 6) + 1)]
        window_7 = self.ring[last_7][:, :, :n].sum(axis=0, dtype=np.float64)
        c = self.columns
        values = {
            "allowance_mb": _ALLOWANCE_MB[c["tariff"]],
            "tenure_days": (day - c["activation_day"]).astype(np.float64),
            "is_ios": (_VENDOR_OS[c["device"]] == DEVICE_OS.index("ios")).astype(np.float64),
            "premium_device": _PREMIUM[c["device"]].astype(np.float64),
        }
        for name in _DAILY:
            window = window_7 if name in _WINDOW_7 else window_30
            values[f"{name}_{7 if name in _WINDOW_7 else 30}"] = window[_AGG[name]]
        self.drivers = np.column_stack([values[name] for name in DRIVERS]).astype(np.float32)
        self.signals = signals_from_drivers(self.drivers)
        frame = {SUBSCRIBER_ID: c["id"]}
        frame.update({name: self.drivers[:, i] for i, name in enumerate(DRIVERS)})
        return pl.DataFrame(frame, schema_overrides={SUBSCRIBER_ID: pl.Int64})

    def _subscribers_frame(self) -> pl.DataFrame:
        c = self.columns
        return pl.DataFrame(
            {
                SUBSCRIBER_ID: c["id"],
                "region": _strings((name for name, _ in REGIONS), c["region"]),
                "device_os": _strings(DEVICE_OS, _VENDOR_OS[c["device"]]),
                "device_vendor": _strings((vendor for vendor, _, _ in DEVICES), c["device"]),
                "tariff_id": _strings((t.tariff_id for t in TARIFFS), c["tariff"]),
                "activation_date": _dates(self.start_number + c["activation_day"]),
            },
            schema=TABLES["subscribers"].polars_schema,
        )

    def _holdings_frame(self, day: int) -> pl.DataFrame:
        """Holdings active at some point of `day` or later (ended ones drop out)."""
        rows, products = np.nonzero((self.hold_start != NEVER) & (self.hold_end >= day))
        end = self.hold_end[rows, products]
        end_date = _dates(self.start_number + np.where(end == OPEN_ENDED, 0, end))
        return pl.DataFrame(
            {
                SUBSCRIBER_ID: self.columns["id"][rows],
                PRODUCT_ID: _strings(self.offers.products, products),
                "start_date": _dates(self.start_number + self.hold_start[rows, products]),
                "end_date": pl.select(
                    pl.when(pl.Series(end == OPEN_ENDED)).then(None).otherwise(end_date)
                ).to_series(),
            },
            schema=TABLES["holdings"].polars_schema,
        )

    def _held_frame(self, day: int) -> pl.DataFrame:
        """(subscriber, product) pairs held on `day`."""
        rows, products = np.nonzero((self.hold_start != NEVER) & (self.hold_end >= day))
        return pl.DataFrame(
            {
                SUBSCRIBER_ID: self.columns["id"][rows],
                PRODUCT_ID: _strings(self.offers.products, products),
            },
            schema={SUBSCRIBER_ID: pl.Int64, PRODUCT_ID: pl.String},
        )

    def step(self, day: int) -> tuple[dict[str, pl.DataFrame], dict[str, pl.DataFrame]]:
        """Advance one day: returns the day's input tables and the day's truth."""
        traits = self._activate(day)
        held = (self.hold_start != NEVER) & (self.hold_end >= day)
        on_trip, travel = self._trips(day)
        agg = np.zeros((len(_DAILY), self.n))
        usage = self._usage(day, on_trip, held, agg)
        payments = self._payments(day, held, agg)
        app_events = self._app(day, travel, agg)
        transfers = self._transfers(day, agg)
        if day == 0:
            offer_events = pl.DataFrame(schema=TABLES["offer_events"].polars_schema)
            impressions = None
        else:
            offer_events, impressions, rows, offers = self._offer_events(day, held)
            self._apply_accepts(day, rows, offers)
        self._churn(day)
        drivers = self._update_drivers(day, agg)
        tables = {
            "subscribers": self._subscribers_frame(),
            "usage": usage,
            "catalog": self.catalog,
            "offer_events": offer_events,
            "payments": payments,
            "app_events": app_events,
            "transfers": transfers,
            "holdings": self._holdings_frame(day),
        }
        truth = {"drivers": drivers, "held": self._held_frame(day + 1), "traits": traits}
        if impressions is not None:
            truth["impressions"] = impressions
        if self.content is not None:
            tables["consumption"], truth["consumed"] = self._consumption(day)
        return {name: tables[name] for name in TABLES if name in tables}, truth


def _simulate(
    config: SimulationConfig,
) -> Iterator[tuple[dt.date, dict[str, pl.DataFrame], dict[str, pl.DataFrame]]]:
    world = _World(config)
    for day in range(config.days):
        tables, truth = world.step(day)
        yield config.start + dt.timedelta(days=day), tables, truth


def generate_days(config: SimulationConfig) -> Iterator[tuple[dt.date, dict[str, pl.DataFrame]]]:
    """Yield (date, tables) one day at a time; tables follow the contract schema exactly."""
    for date, tables, _ in _simulate(config):
        yield date, tables


def _write_table(frame: pl.DataFrame, path: Path, file_format: str) -> None:
    if file_format == "parquet":
        frame.write_parquet(path, compression="zstd", statistics=True)
    else:
        frame.write_csv(path)


def _refuse_delivered_days(lake: Lake, config: SimulationConfig, overwrite: bool) -> None:
    """Raise when incoming/ already holds a day of the simulation that may not be replaced.

    Days of an earlier simulated world (it has truth/meta.json) are replaced with `overwrite`;
    deliveries of a root that is not a simulated world never are: Mia did not write them.
    """
    days = [config.start + dt.timedelta(days=day) for day in range(config.days)]
    delivered = [day for day in days if lake.incoming(day).exists()]
    simulated = (lake.root / TRUTH_DIR / "meta.json").exists()
    if not delivered or (overwrite and simulated):
        return
    shown = ", ".join(str(day) for day in delivered[:3]) + (", ..." * (len(delivered) > 3))
    held = f"{lake.root / 'incoming'} already holds {len(delivered)} of the {config.days} days"
    if simulated:
        raise SimulationError(
            f"{held} to simulate ({shown}); simulate into another data root, or overwrite the "
            "earlier simulated world (`mia simulate --force`, write_world(..., overwrite=True))."
        )
    raise SimulationError(
        f"{held} to simulate ({shown}) and is not a simulated world; rule: deliveries are never "
        "replaced, not even with --force: simulate into another data root (--data-dir)."
    )


def write_world(
    root: Path,
    config: SimulationConfig,
    file_format: str = "parquet",
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> list[dt.date]:
    """Write root/incoming/date=D/<table>.<format> for every day plus root/truth/; returns dates.

    Refuses, writing nothing, when incoming/ already holds one of the days, unless `overwrite` and
    those days are an earlier simulated world's (`_refuse_delivered_days`).
    """
    if file_format not in FILE_FORMATS:
        raise SimulationError(f"file_format == {file_format!r}, must be one of {FILE_FORMATS}.")
    root = Path(root)
    lake = Lake(root)
    _refuse_delivered_days(lake, config, overwrite)
    truth_root = root / TRUTH_DIR
    world = _World(config)
    meta = {"version": TRUTH_VERSION, **config.to_meta()}
    write_json(meta, truth_root / "meta.json")
    write_parquet(world.offers.frame(), truth_root / "offers.parquet")
    if world.content is not None:
        write_parquet(world.content.frame(), truth_root / "content_items.parquet")
    written: list[dt.date] = []
    for day in range(config.days):
        date = config.start + dt.timedelta(days=day)
        tables, truth = world.step(day)
        with atomic_path(lake.incoming(date)) as directory:
            directory.mkdir(parents=True)
            for name, frame in tables.items():
                _write_table(frame, directory / f"{name}.{file_format}", file_format)
        with atomic_path(truth_root / f"date={date.isoformat()}") as directory:
            directory.mkdir(parents=True)
            for name, frame in truth.items():
                _write_table(frame, directory / f"{name}.parquet", "parquet")
        written.append(date)
        logger.debug("simulated %s: %d usage rows", date, tables["usage"].height)
        if progress is not None:
            progress(day + 1, config.days)
    logger.info("wrote %d simulated days to %s", len(written), root)
    return written
