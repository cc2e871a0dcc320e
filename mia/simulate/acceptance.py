"""Planted acceptance: P(accept | shown) from log-visible drivers, tastes and offers."""

from __future__ import annotations

import numpy as np

from mia.simulate.categories import CATEGORIES
from mia.simulate.config import STREAM_STATIC, SimulationConfig, static_rng
from mia.simulate.presets import Preset

# Per-subscriber drivers as of the end of a day: window aggregates a feature pipeline computes.
DRIVERS = (
    "data_mb_30",
    "allowance_mb",
    "voice_out_min_30",
    "voice_in_min_30",
    "roaming_units_7",
    "roaming_screens_7",
    "charges_30",
    "payments_30",
    "promised_payments_30",
    "manual_topups_30",
    "app_screens_30",
    "entertainment_screens_30",
    "tariff_screens_30",
    "addon_screens_30",
    "market_screens_30",
    "loyalty_screens_30",
    "services_screens_30",
    "gifts_30",
    "market_trades_30",
    "tenure_days",
    "is_ios",
    "premium_device",
)

SIGNALS = (
    "data_pressure",
    "heavy_data",
    "voice",
    "voice_in",
    "roaming",
    "roaming_interest",
    "low_balance",
    "promised",
    "manual_topups",
    "spend",
    "engagement",
    "entertainment",
    "tariff_interest",
    "addon_interest",
    "market",
    "loyalty_interest",
    "services",
    "gifts",
    "tenure",
    "ios",
    "premium",
)

BASE_LOGIT = -4.8
ENGAGEMENT_WEIGHT = 0.9
ATTRACTIVENESS_SD = 0.35
CATEGORY_BASE = {"tariff": -5.1, "home_internet": -5.0, "promised_payment": -4.9}
# Planted weights: category -> signal -> weight on the logit.
CATEGORY_WEIGHTS: dict[str, dict[str, float]] = {
    "tariff": {"data_pressure": 1.4, "tariff_interest": 1.2, "voice": 0.5},
    "data_addon": {"data_pressure": 2.6, "addon_interest": 0.8},
    "minutes_addon": {"voice": 2.2, "addon_interest": 0.6},
    "roaming": {"roaming": 3.0, "roaming_interest": 1.5},
    "gb_sharing": {"gifts": 2.6},
    "gb_market": {"market": 2.6, "heavy_data": 0.6},
    "loyalty_partner": {"tenure": 2.0, "loyalty_interest": 1.0},
    "cashback": {"spend": 1.6, "manual_topups": 0.7},
    "gift": {"tenure": 1.2, "engagement": 0.8},
    "discount": {"low_balance": 1.6, "promised": 0.8},
    "mini_game": {"entertainment": 2.2},
    "video": {"entertainment": 2.2, "heavy_data": 0.8},
    "music": {"entertainment": 1.8, "heavy_data": 0.4},
    "books": {"entertainment": 1.5, "tenure": 0.5},
    "promised_payment": {"low_balance": 1.8, "promised": 2.0},
    "autopay": {"manual_topups": 2.0, "tenure": 0.5},
    "e_signature": {"services": 2.2},
    "extra_sim": {"gifts": 1.2, "voice_in": 1.0},
    "home_internet": {"heavy_data": 2.6},
    "insurance": {"premium": 1.6, "ios": 0.6},
    "esim": {"ios": 2.6, "premium": 0.6},
    "family_plan": {"gifts": 1.4, "voice_in": 1.2},
    "cloud_storage": {"ios": 1.2, "heavy_data": 1.2},
    "antispam": {"voice_in": 2.2},
}


def _weights() -> np.ndarray:
    """Planted weight matrix, signals x categories."""
    matrix = np.zeros((len(SIGNALS), len(CATEGORIES)))
    for c, category in enumerate(CATEGORIES):
        for signal, weight in CATEGORY_WEIGHTS[category].items():
            matrix[SIGNALS.index(signal), c] = weight
        matrix[SIGNALS.index("engagement"), c] += ENGAGEMENT_WEIGHT
    return matrix


_WEIGHTS = _weights()
_CATEGORY_INTERCEPT = np.array([CATEGORY_BASE.get(c, BASE_LOGIT) for c in CATEGORIES])


def signals_from_drivers(drivers: np.ndarray) -> np.ndarray:
    """Signals (rows x SIGNALS) in [0, 1.5] from float32 drivers (rows x DRIVERS)."""
    d = {name: drivers[:, i].astype(np.float64) for i, name in enumerate(DRIVERS)}
    columns = {
        "data_pressure": np.clip((d["data_mb_30"] / d["allowance_mb"] - 0.6) / 0.4, 0.0, 1.5),
        "heavy_data": np.clip(d["data_mb_30"] / 40_960.0, 0.0, 1.0),
        "voice": np.clip(d["voice_out_min_30"] / 600.0, 0.0, 1.5),
        "voice_in": np.clip(d["voice_in_min_30"] / 600.0, 0.0, 1.5),
        "roaming": np.clip(d["roaming_units_7"] / 300.0, 0.0, 1.0),
        "roaming_interest": np.clip(d["roaming_screens_7"] / 2.0, 0.0, 1.0),
        "low_balance": np.clip((d["charges_30"] - d["payments_30"]) / 300.0, 0.0, 1.0),
        "promised": np.clip(d["promised_payments_30"] / 2.0, 0.0, 1.0),
        "manual_topups": np.clip(d["manual_topups_30"] / 3.0, 0.0, 1.0),
        "spend": np.clip(d["payments_30"] / 1500.0, 0.0, 1.5),
        "engagement": np.clip(d["app_screens_30"] / 60.0, 0.0, 1.5),
        "entertainment": np.clip(d["entertainment_screens_30"] / 10.0, 0.0, 1.5),
        "tariff_interest": np.clip(d["tariff_screens_30"] / 8.0, 0.0, 1.0),
        "addon_interest": np.clip(d["addon_screens_30"] / 8.0, 0.0, 1.0),
        "market": np.clip((d["market_trades_30"] + d["market_screens_30"] / 2.0) / 3.0, 0.0, 1.0),
        "loyalty_interest": np.clip(d["loyalty_screens_30"] / 8.0, 0.0, 1.0),
        "services": np.clip(d["services_screens_30"] / 6.0, 0.0, 1.0),
        "gifts": np.clip(d["gifts_30"] / 2.0, 0.0, 1.0),
        "tenure": np.clip(d["tenure_days"] / 1825.0, 0.0, 1.0),
        "ios": d["is_ios"],
        "premium": d["premium_device"],
    }
    return np.column_stack([columns[name] for name in SIGNALS])


def _add_behaviour(
    logit: np.ndarray, signals: np.ndarray, category_index: np.ndarray, behaviour_weight: float
) -> np.ndarray:
    """`logit` plus the planted effect of every signal, added in a fixed order."""
    for k in range(len(SIGNALS)):
        logit = logit + signals[:, k] * (_WEIGHTS[k, category_index] * behaviour_weight)
    return logit


def acceptance_probability(
    signals: np.ndarray,
    category_index: np.ndarray,
    attractiveness: np.ndarray,
    taste: np.ndarray,
    held: np.ndarray,
    behaviour_weight: float = 1.0,
    affinity: np.ndarray | None = None,
) -> np.ndarray:
    """P(accept | shown) per row from signals, category, offer attractiveness and taste.

    `affinity` (content worlds): the weighted affinity of the subscriber to a content item
    offer, 0 for other offers. Every operation is elementwise in a fixed order, so a row gets the
    same bits whether it is computed alone or among millions: the simulator and the oracle agree
    exactly.
    """
    logit = _CATEGORY_INTERCEPT[category_index] + attractiveness + taste
    if affinity is not None:
        logit = logit + affinity
    logit = _add_behaviour(logit, signals, category_index, behaviour_weight)
    probability = 1.0 / (1.0 + np.exp(-logit))
    return np.where(held, 0.0, probability)


# Gauss-Hermite nodes: E[f(t)] for t ~ N(0, sd^2) is sum(w_i f(sqrt(2) sd x_i)) / sqrt(pi),
# exact to ~1e-12 for the smooth logistic function at these taste scales.
_HERMITE_NODES, _HERMITE_WEIGHTS = np.polynomial.hermite.hermgauss(48)


def behaviour_only_probability(
    signals: np.ndarray,
    category_index: np.ndarray,
    attractiveness: np.ndarray,
    taste_sd: np.ndarray,
    held: np.ndarray,
    behaviour_weight: float = 1.0,
) -> np.ndarray:
    """P(accept | shown) averaged over the latent taste a subscriber might have.

    The best any model can do from log-visible behaviour alone: tastes are drawn independently of
    behaviour, normal with `taste_sd` (per row: its category's spread).
    """
    logit = _CATEGORY_INTERCEPT[category_index] + attractiveness
    logit = _add_behaviour(logit, signals, category_index, behaviour_weight)
    probability = np.zeros_like(logit)
    for node, weight in zip(_HERMITE_NODES, _HERMITE_WEIGHTS, strict=True):
        shifted = logit + np.sqrt(2.0) * taste_sd * node
        probability = probability + weight / (1.0 + np.exp(-shifted))
    return np.where(held, 0.0, probability / np.sqrt(np.pi))


def category_factors(config: SimulationConfig) -> np.ndarray:
    """The categories' taste loadings (factors x CATEGORIES), fixed by the world's seed."""
    rng = static_rng(config.seed, STREAM_STATIC)
    return rng.normal(0.0, 1.0, (config.world.taste_factors, len(CATEGORIES)))


def draw_tastes(rng: np.random.Generator, n: int, factors: np.ndarray, world: Preset) -> np.ndarray:
    """Latent tastes (n x CATEGORIES) of new subscribers: shared factors plus private noise."""
    user_factors = rng.normal(0.0, 1.0, (n, world.taste_factors))
    taste = np.zeros((n, len(CATEGORIES)))
    for k in range(world.taste_factors):
        taste = taste + user_factors[:, [k]] * factors[k]
    return world.taste_scale * taste / np.sqrt(world.taste_factors) + rng.normal(
        0.0, world.taste_noise, (n, len(CATEGORIES))
    )


def taste_sd(factors: np.ndarray, world: Preset) -> np.ndarray:
    """Standard deviation of the taste for each category across subscribers (CATEGORIES,)."""
    shared = world.taste_scale**2 * (factors**2).sum(axis=0) / world.taste_factors
    return np.sqrt(shared + world.taste_noise**2)


_ENGAGEMENT = SIGNALS.index("engagement")


def organic_browse_chance(signals: np.ndarray, world: Preset) -> np.ndarray:
    """Daily chance (rows,) that a subscriber without an impression browses one offer alone."""
    browse = world.organic_browse + world.organic_browse_engagement * signals[:, _ENGAGEMENT]
    return np.minimum(browse, 1.0)


def organic_accept_chance(p_accept: np.ndarray, world: Preset) -> np.ndarray:
    """Chance that a subscriber accepts an offer they browsed on their own."""
    return np.minimum(world.organic_factor * p_accept, 1.0)


def draw_organic_demand(rng: np.random.Generator, n: int, world: Preset) -> np.ndarray:
    """Latent organic demand (n x CATEGORIES) of new subscribers; zeros where the world has none."""
    if world.organic_demand_sd == 0.0:
        return np.zeros((n, len(CATEGORIES)))
    return rng.normal(0.0, world.organic_demand_sd, (n, len(CATEGORIES)))
