"""Synthetic telco world: subscribers, usage, payments, app, transfers, holdings, offers, oracle.

The world is generated one day at a time from explicit seeds. Every random draw of day `d` comes
from `np.random.default_rng([seed, 1, d, stream])` and the state is only carried forward, so the
same seed with more days reproduces the earlier days byte for byte.

Acceptance of a shown offer is planted as a logistic function of behaviour that a feature
pipeline can see in the logs (30-day and 7-day windows of usage, payments, app screens and
transfers, tenure, device), plus latent per-subscriber category tastes and offer attractiveness.
The drivers of every day are kept under `root/truth/` so that `oracle_p_accept` returns exactly
the probability that was used to draw accepts, and `oracle_uplift` the true uplift of a contact
(that probability minus the chance of an organic accept within a horizon).

Presets (`SimulationConfig(preset=...)`, `mia simulate --preset`) give other kinds of world with
the same tables: `telco` (the original: behaviour drives acceptance), `taste-heavy` (latent
tastes dominate, seen only through responses), `cold-start` (many new lines, offers launched
late), `content` (content item offers beside the telco ones, and the optional `consumption`
table: item vectors and subscribers' content tastes in one taste space drive both what is
consumed, in and outside the catalog, and the acceptance of item offers) and `organic` (real
organic demand: engaged subscribers browse and buy on their own, so the true uplift of a contact
is far from P(accept | shown) for the "sure things").
`oracle_p_accept(..., behaviour_only=True)` gives the probability averaged over tastes: the best
a model of the logs' behaviour alone can reach. `oracle_consumption` gives, in a content world,
each subscriber's probability that their next consumption is each catalog item.

Truth layout (not part of the input contract):
    truth/meta.json                      the SimulationConfig and the truth version
    truth/offers.parquet                 offer attractiveness and logging-policy prior
    truth/content_items.parquet          content worlds: item category, catalog membership,
                                         popularity and taste vector
    truth/date=D/drivers.parquet         per-subscriber drivers as of the end of D (float32)
    truth/date=D/held.parquet            (subscriber_id, product_id) held on D + 1
    truth/date=D/traits.parquet          latent category tastes (taste_<category>) of the lines
                                         activated on D, their organic demand (organic_<category>)
                                         where the world has it, and in content worlds their
                                         content tastes and consumption rate
    truth/date=D/impressions.parquet     impressions of D with p_accept, policy propensity, outcome
    truth/date=D/consumed.parquet        content worlds: (subscriber_id, item_id) first consumed

Modules: `config` (settings, seeds), `categories` (this telco's offer categories), `catalog`
(regions, devices, tariffs, offers), `content` (content items, tastes and choices), `acceptance`
(the planted model), `world` (the daily simulation and writer), `oracle`.
"""

from mia.simulate.acceptance import (
    BASE_LOGIT,
    CATEGORY_WEIGHTS,
    DRIVERS,
    SIGNALS,
    acceptance_probability,
    signals_from_drivers,
)
from mia.simulate.catalog import OFFERS, TARIFFS, OfferSpec, Tariff, catalog_frame
from mia.simulate.categories import CATEGORIES
from mia.simulate.config import TRUTH_DIR, SimulationConfig, SimulationError
from mia.simulate.oracle import oracle_consumption, oracle_p_accept, oracle_uplift
from mia.simulate.presets import PRESETS, Preset
from mia.simulate.world import generate_days, write_world

__all__ = [
    "BASE_LOGIT",
    "CATEGORIES",
    "CATEGORY_WEIGHTS",
    "DRIVERS",
    "OFFERS",
    "PRESETS",
    "SIGNALS",
    "TARIFFS",
    "TRUTH_DIR",
    "OfferSpec",
    "Preset",
    "SimulationConfig",
    "SimulationError",
    "Tariff",
    "acceptance_probability",
    "catalog_frame",
    "generate_days",
    "oracle_consumption",
    "oracle_p_accept",
    "oracle_uplift",
    "signals_from_drivers",
    "write_world",
]
