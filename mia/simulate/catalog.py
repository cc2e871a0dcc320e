"""The static side of the synthetic telco: regions, devices, tariffs and the offer catalog."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import numpy as np
import polars as pl

from mia.schema import (
    CATEGORY,
    DEVICE_OS,
    FATIGUE_COLUMNS,
    LIST_SEPARATOR,
    OFFER_ID,
    PRODUCT_ID,
    TABLES,
    VALUE,
)
from mia.simulate.acceptance import ATTRACTIVENESS_SD
from mia.simulate.categories import CATEGORIES
from mia.simulate.config import OPEN_ENDED, STREAM_STATIC, SimulationConfig, static_rng
from mia.simulate.content import CONTENT_KINDS, ITEM_COOLDOWN_DAYS, ITEM_DAYS, item_names

# --------------------------------------------------------------------------------------------
# Static world description
# --------------------------------------------------------------------------------------------

REGIONS = (
    ("moscow", 0.22),
    ("moscow_oblast", 0.12),
    ("spb", 0.14),
    ("kazan", 0.07),
    ("novosibirsk", 0.07),
    ("yekaterinburg", 0.08),
    ("nizhny_novgorod", 0.07),
    ("krasnodar", 0.09),
    ("samara", 0.07),
    ("rostov", 0.07),
)
# vendor, device_os, share
DEVICES = (
    ("samsung", "android", 0.28),
    ("huawei", "android", 0.17),
    ("apple", "ios", 0.14),
    ("xiaomi", "android", 0.16),
    ("honor", "android", 0.10),
    ("realme", "android", 0.06),
    ("tecno", "android", 0.06),
    ("nokia", "other", 0.03),
)
PREMIUM_VENDORS = ("apple", "samsung")


@dataclass(frozen=True)
class Tariff:
    """A tariff plan: monthly price and allowances."""

    tariff_id: str
    price: float
    data_gb: float
    voice_minutes: float
    share: float


TARIFFS = (
    Tariff("tariff_basic", 350.0, 5.0, 200.0, 0.20),
    Tariff("tariff_smart", 550.0, 15.0, 500.0, 0.30),
    Tariff("tariff_max", 850.0, 30.0, 800.0, 0.20),
    Tariff("tariff_unlim", 1200.0, 100.0, 1500.0, 0.08),
    Tariff("tariff_family", 950.0, 40.0, 1000.0, 0.10),
    Tariff("tariff_senior", 250.0, 2.0, 400.0, 0.12),
)


@dataclass(frozen=True)
class OfferSpec:
    """One catalog offer and how long the product it grants is held."""

    offer_id: str
    category: str
    title: str
    value: float
    product_id: str
    duration_days: int | None = None  # None: held until switched or cancelled
    regions: str | None = None
    device_os: str | None = None
    min_tenure_days: int = 0
    requires_product: str | None = None
    excludes_product: str | None = None
    cooldown_days: int = 7
    capacity: int | None = None
    start_offset: int = -365  # days from the simulation start
    end_offset: int | None = None


_BIG_CITIES = "moscow|spb|kazan|yekaterinburg|novosibirsk"

OFFERS = (
    OfferSpec("tariff_smart_upgrade", "tariff", "Smart tariff", 300.0, "tariff_smart"),
    OfferSpec("tariff_max_upgrade", "tariff", "Max tariff", 450.0, "tariff_max"),
    OfferSpec("tariff_unlim_upgrade", "tariff", "Unlimited tariff", 600.0, "tariff_unlim"),
    OfferSpec(
        "tariff_family_switch",
        "tariff",
        "Family tariff",
        500.0,
        "tariff_family",
        min_tenure_days=90,
    ),
    OfferSpec("tariff_basic_saver", "tariff", "Basic saver", 120.0, "tariff_basic"),
    OfferSpec("data_5gb", "data_addon", "+5 GB", 150.0, "data_5gb", 30),
    OfferSpec("data_10gb", "data_addon", "+10 GB", 250.0, "data_10gb", 30),
    OfferSpec("data_unlim_night", "data_addon", "Unlimited nights", 120.0, "data_unlim_night", 30),
    OfferSpec(
        "data_weekend_20gb",
        "data_addon",
        "Weekend 20 GB",
        180.0,
        "data_weekend_20gb",
        30,
        start_offset=20,
        end_offset=80,
    ),
    OfferSpec("minutes_300", "minutes_addon", "+300 minutes", 100.0, "minutes_300", 30),
    OfferSpec("minutes_1000", "minutes_addon", "+1000 minutes", 200.0, "minutes_1000", 30),
    OfferSpec(
        "minutes_intl_100",
        "minutes_addon",
        "100 international minutes",
        150.0,
        "minutes_intl_100",
        30,
    ),
    OfferSpec(
        "roaming_europe_week",
        "roaming",
        "Europe week",
        700.0,
        "roaming_europe_week",
        7,
        cooldown_days=14,
    ),
    OfferSpec(
        "roaming_world_week",
        "roaming",
        "World week",
        1100.0,
        "roaming_world_week",
        7,
        cooldown_days=14,
    ),
    OfferSpec("roaming_cis_day", "roaming", "CIS day pass", 150.0, "roaming_cis_day", 1),
    OfferSpec(
        "roaming_summer_promo",
        "roaming",
        "Summer roaming",
        500.0,
        "roaming_summer_promo",
        14,
        capacity=1000,
        start_offset=40,
    ),
    OfferSpec("gb_share_family", "gb_sharing", "Share gigabytes", 60.0, "gb_share_family", 30),
    OfferSpec("gb_gift_5gb", "gb_sharing", "Gift 5 GB", 80.0, "gb_gift_5gb", 30),
    OfferSpec(
        "gb_market_seller_pass",
        "gb_market",
        "Market seller pass",
        50.0,
        "gb_market_seller_pass",
        30,
    ),
    OfferSpec(
        "gb_market_buy_10gb", "gb_market", "Buy 10 GB on the market", 90.0, "gb_market_buy_10gb", 30
    ),
    OfferSpec("loyalty_coffee", "loyalty_partner", "Coffee partner", 40.0, "loyalty_coffee", 90),
    OfferSpec(
        "loyalty_cinema",
        "loyalty_partner",
        "Cinema partner",
        60.0,
        "loyalty_cinema",
        90,
        capacity=300,
    ),
    OfferSpec(
        "loyalty_taxi",
        "loyalty_partner",
        "Taxi partner",
        70.0,
        "loyalty_taxi",
        90,
        regions="moscow|spb",
    ),
    OfferSpec("loyalty_grocery", "loyalty_partner", "Grocery partner", 50.0, "loyalty_grocery", 90),
    OfferSpec("cashback_topup_5", "cashback", "5% top-up cashback", 50.0, "cashback_topup_5", 30),
    OfferSpec(
        "cashback_autopay_10",
        "cashback",
        "10% autopay cashback",
        80.0,
        "cashback_autopay_10",
        30,
        requires_product="autopay_service",
    ),
    OfferSpec("gift_birthday_gb", "gift", "Birthday gigabytes", 30.0, "gift_birthday_gb", 14),
    OfferSpec(
        "gift_tenure_minutes",
        "gift",
        "Thank-you minutes",
        30.0,
        "gift_tenure_minutes",
        14,
        min_tenure_days=365,
    ),
    OfferSpec(
        "gift_new_year",
        "gift",
        "New year gift",
        40.0,
        "gift_new_year",
        14,
        capacity=500,
        end_offset=14,
    ),
    OfferSpec(
        "discount_tariff_20", "discount", "20% off the tariff", 90.0, "discount_tariff_20", 30
    ),
    OfferSpec("discount_addon_50", "discount", "Half-price add-on", 60.0, "discount_addon_50", 30),
    OfferSpec(
        "discount_spring",
        "discount",
        "Spring discount",
        70.0,
        "discount_spring",
        30,
        start_offset=60,
    ),
    OfferSpec("game_puzzle_pass", "mini_game", "Puzzle pass", 40.0, "game_puzzle_pass", 30),
    OfferSpec("game_arena_pass", "mini_game", "Arena pass", 60.0, "game_arena_pass", 30),
    OfferSpec("game_quiz_daily", "mini_game", "Daily quiz", 20.0, "game_quiz_daily", 30),
    OfferSpec("video_plus_month", "video", "Video plus", 250.0, "video_plus"),
    OfferSpec(
        "video_plus_trial", "video", "Video plus trial", 120.0, "video_plus", cooldown_days=60
    ),
    OfferSpec(
        "video_sports",
        "video",
        "Sports channel",
        300.0,
        "video_sports",
        requires_product="video_plus",
    ),
    OfferSpec("video_kids", "video", "Kids video", 150.0, "video_kids"),
    OfferSpec("music_premium", "music", "Music premium", 170.0, "music_premium"),
    OfferSpec("music_trial", "music", "Music trial", 90.0, "music_premium", cooldown_days=60),
    OfferSpec(
        "music_family",
        "music",
        "Music family",
        260.0,
        "music_family",
        excludes_product="music_premium",
    ),
    OfferSpec("books_audio", "books", "Audiobooks", 200.0, "books_audio"),
    OfferSpec("books_ebooks", "books", "E-books", 150.0, "books_ebooks"),
    OfferSpec(
        "promised_payment_100",
        "promised_payment",
        "Promised payment 100",
        20.0,
        "promised_payment_100",
        3,
        cooldown_days=3,
    ),
    OfferSpec(
        "promised_payment_300",
        "promised_payment",
        "Promised payment 300",
        35.0,
        "promised_payment_300",
        3,
        min_tenure_days=60,
        cooldown_days=3,
    ),
    OfferSpec("autopay_setup", "autopay", "Set up autopay", 150.0, "autopay_service"),
    OfferSpec(
        "autopay_bonus",
        "autopay",
        "Autopay with bonus",
        200.0,
        "autopay_service",
        min_tenure_days=30,
    ),
    OfferSpec("e_signature_basic", "e_signature", "E-signature", 100.0, "e_signature_basic"),
    OfferSpec(
        "e_signature_pro",
        "e_signature",
        "E-signature pro",
        250.0,
        "e_signature_pro",
        requires_product="e_signature_basic",
    ),
    OfferSpec("extra_sim_kids", "extra_sim", "Kids SIM", 300.0, "extra_sim_kids"),
    OfferSpec(
        "extra_sim_watch",
        "extra_sim",
        "Smartwatch SIM",
        250.0,
        "extra_sim_watch",
        device_os="ios|android",
    ),
    OfferSpec(
        "home_internet_100",
        "home_internet",
        "Home internet 100",
        900.0,
        "home_internet_100",
        regions=_BIG_CITIES,
    ),
    OfferSpec(
        "home_internet_500",
        "home_internet",
        "Home internet 500",
        1300.0,
        "home_internet_500",
        regions=_BIG_CITIES,
        capacity=100,
    ),
    OfferSpec(
        "home_internet_tv_bundle",
        "home_internet",
        "Internet and TV",
        1500.0,
        "home_internet_tv_bundle",
    ),
    OfferSpec(
        "insurance_device",
        "insurance",
        "Device insurance",
        400.0,
        "insurance_device",
        device_os="android|ios",
    ),
    OfferSpec("insurance_travel", "insurance", "Travel insurance", 300.0, "insurance_travel"),
    OfferSpec("insurance_screen", "insurance", "Screen insurance", 200.0, "insurance_screen"),
    OfferSpec("esim_switch", "esim", "Switch to eSIM", 150.0, "esim_switch", device_os="ios"),
    OfferSpec(
        "esim_second_line",
        "esim",
        "Second line on eSIM",
        250.0,
        "esim_second_line",
        device_os="ios|android",
    ),
    OfferSpec("family_plan_2", "family_plan", "Family of two", 350.0, "family_plan_2"),
    OfferSpec(
        "family_plan_4",
        "family_plan",
        "Family of four",
        600.0,
        "family_plan_4",
        excludes_product="family_plan_2",
        min_tenure_days=180,
    ),
    OfferSpec("cloud_100gb", "cloud_storage", "Cloud 100 GB", 120.0, "cloud_100gb"),
    OfferSpec("cloud_1tb", "cloud_storage", "Cloud 1 TB", 350.0, "cloud_1tb"),
    OfferSpec("antispam_basic", "antispam", "Spam call filter", 60.0, "antispam_basic"),
    OfferSpec(
        "antispam_pro",
        "antispam",
        "Spam filter pro",
        120.0,
        "antispam_pro",
        excludes_product="antispam_basic",
    ),
)

# Products some subscribers already hold on the first day (share of subscribers).
INITIAL_HOLDINGS = {
    "autopay_service": 0.20,
    "antispam_basic": 0.10,
    "e_signature_basic": 0.10,
    "music_premium": 0.08,
    "video_plus": 0.06,
    "cloud_100gb": 0.05,
    "insurance_device": 0.04,
    "family_plan_2": 0.03,
    "data_5gb": 0.03,
    "minutes_300": 0.02,
}
SUBSCRIPTION_CHURN = 0.003  # daily chance that an open-ended subscription is cancelled

# --------------------------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------------------------


def _offset_date(start: dt.date, offset: int | None) -> dt.date | None:
    return None if offset is None else start + dt.timedelta(days=offset)


def offer_specs(config: SimulationConfig) -> tuple[OfferSpec, ...]:
    """The offers of a world: OFFERS, its content items, with the late launches it asks for.

    A content item's offer grants that item (its own product) for ITEM_DAYS, so an item can be
    offered again later. Every n-th open-ended offer that is live from the start (tariffs aside:
    subscribers always hold one) launches `late_launch_days` before the last day instead.
    """
    world = config.world
    offers = OFFERS + tuple(
        OfferSpec(
            item_id,
            CONTENT_KINDS[kind].category,
            title,
            CONTENT_KINDS[kind].value,
            item_id,
            ITEM_DAYS,
            cooldown_days=ITEM_COOLDOWN_DAYS,
        )
        for item_id, kind, in_catalog, title in item_names(world)
        if in_catalog
    )
    if not world.late_launch_every:
        return offers
    late_start = max(config.days - 1 - world.late_launch_days, 0)
    movable = [
        o.offer_id
        for o in offers
        if o.category != "tariff" and o.start_offset <= 0 and o.end_offset is None
    ]
    late = set(movable[world.late_launch_every - 1 :: world.late_launch_every])
    return tuple(
        dataclasses.replace(o, start_offset=late_start) if o.offer_id in late else o for o in offers
    )


def catalog_frame(config: SimulationConfig) -> pl.DataFrame:
    """The catalog table (contract schema); the same every day of a world."""
    offers = offer_specs(config)
    rows = {
        OFFER_ID: [o.offer_id for o in offers],
        CATEGORY: [o.category for o in offers],
        "title": [o.title for o in offers],
        VALUE: [o.value for o in offers],
        "start_date": [_offset_date(config.start, o.start_offset) for o in offers],
        "end_date": [_offset_date(config.start, o.end_offset) for o in offers],
        PRODUCT_ID: [o.product_id for o in offers],
        "regions": [o.regions for o in offers],
        "device_os": [o.device_os for o in offers],
        "min_tenure_days": [o.min_tenure_days for o in offers],
        "requires_product": [o.requires_product for o in offers],
        "excludes_product": [o.excludes_product for o in offers],
        "cooldown_days": [o.cooldown_days for o in offers],
        "capacity": [o.capacity for o in offers],
        # Contact fatigue follows the settings for every simulated offer.
        **{name: [None] * len(offers) for name in FATIGUE_COLUMNS},
    }
    return pl.DataFrame(rows, schema=TABLES["catalog"].polars_schema)


class OfferArrays:
    """Catalog as arrays: one entry per offer, products indexed."""

    def __init__(self, config: SimulationConfig) -> None:
        self.specs = offers = offer_specs(config)
        products: list[str] = [t.tariff_id for t in TARIFFS]
        for offer in offers:
            for name in (offer.product_id, offer.requires_product, offer.excludes_product):
                if name is not None and name not in products:
                    products.append(name)
        for name in INITIAL_HOLDINGS:
            if name not in products:
                products.append(name)
        self.products = tuple(products)
        index = {name: i for i, name in enumerate(products)}
        self.ids = tuple(o.offer_id for o in offers)
        self.category = np.array([CATEGORIES.index(o.category) for o in offers])
        self.product = np.array([index[o.product_id] for o in offers])
        self.requires = np.array([index.get(o.requires_product, -1) for o in offers])
        self.excludes = np.array([index.get(o.excludes_product, -1) for o in offers])
        self.min_tenure = np.array([o.min_tenure_days for o in offers])
        self.cooldown = np.array([o.cooldown_days for o in offers])
        self.capacity = np.array([-1 if o.capacity is None else o.capacity for o in offers])
        self.start_day = np.array([o.start_offset for o in offers])
        self.end_day = np.array(
            [OPEN_ENDED if o.end_offset is None else o.end_offset for o in offers]
        )
        self.duration = np.array(
            [-1 if o.duration_days is None else o.duration_days for o in offers]
        )
        regions = [name for name, _ in REGIONS]
        self.region_ok = np.array(
            [
                [o.regions is None or r in o.regions.split(LIST_SEPARATOR) for r in regions]
                for o in offers
            ]
        )
        self.os_ok = np.array(
            [
                [o.device_os is None or s in o.device_os.split(LIST_SEPARATOR) for s in DEVICE_OS]
                for o in offers
            ]
        )
        rng = static_rng(config.seed, STREAM_STATIC + 1)
        self.attractiveness = rng.normal(0.0, ATTRACTIVENESS_SD, len(offers))
        self.policy_prior = rng.lognormal(0.0, 0.5, len(offers))
        self.tariff_product = np.array([index[t.tariff_id] for t in TARIFFS])
        self.is_tariff = self.category == CATEGORIES.index("tariff")
        # product -> tariff index for tariff products, -1 otherwise
        self.product_tariff = np.full(len(products), -1)
        self.product_tariff[self.tariff_product] = np.arange(len(TARIFFS))
        self.onehot = np.zeros((len(offers), len(CATEGORIES)))
        self.onehot[np.arange(len(offers)), self.category] = 1.0

    def frame(self) -> pl.DataFrame:
        """Truth about offers: attractiveness and policy prior."""
        return pl.DataFrame(
            {
                OFFER_ID: list(self.ids),
                CATEGORY: [CATEGORIES[c] for c in self.category],
                PRODUCT_ID: [self.products[p] for p in self.product],
                "attractiveness": self.attractiveness,
                "policy_prior": self.policy_prior,
                "duration_days": [o.duration_days for o in self.specs],
            },
            schema_overrides={"duration_days": pl.Int64},
        )
