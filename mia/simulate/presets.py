"""Named kinds of simulated world: how much tastes matter, how much is logged, how much is new."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """Knobs of one kind of world; `telco` is the simulator's original world."""

    name: str
    description: str
    # Latent tastes: taste = scale x (K factors of the subscriber . the category's) / sqrt(K)
    # + noise, one value per subscriber x category, added to the acceptance logit.
    taste_scale: float = 0.4
    taste_noise: float = 0.2
    taste_factors: int = 3
    # Multiplies every planted weight of log-visible behaviour on the acceptance logit.
    behaviour_weight: float = 1.0
    # Impression slots per treatment subscriber-day at average app activity.
    impression_rate: float = 0.32
    # New lines per day, as a share of the initial base.
    new_activation_rate: float = 0.0004
    # Every n-th offer of the catalog (0: none) launches `late_launch_days` before the last day.
    late_launch_every: int = 0
    late_launch_days: int = 21
    # Content (0: none): item offers per content category in the catalog, and items outside it
    # (consumed, never offered) per content category; mia/simulate/content.py.
    content_items: int = 0
    content_outside_items: int = 0
    # Factors of the content-taste space: affinity = subscriber vector . item vector.
    content_factors: int = 6
    # Weight of the affinity on the acceptance logit of an item offer.
    content_accept_weight: float = 1.5
    # Median consumptions per subscriber-day (at median entertainment activity).
    content_rate: float = 0.1
    # Organic accepts, without a contact: a subscriber with no impression that day browses one
    # offer with chance organic_browse + organic_browse_engagement x their app engagement signal,
    # picks it among the offers eligible to them with weight exp(their latent organic demand for
    # its category, normal with sd organic_demand_sd), and accepts it with chance
    # min(1, organic_factor x P(accept | shown)).
    organic_browse: float = 0.04
    organic_browse_engagement: float = 0.0
    organic_demand_sd: float = 0.0
    organic_factor: float = 0.5


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="telco",
            description="behaviour in the logs drives acceptance; tastes add a little",
        ),
        Preset(
            name="taste-heavy",
            description=(
                "latent tastes (4 factors) dominate acceptance and are seen only through "
                "responses to about 50 impressions per subscriber in 120 days"
            ),
            taste_scale=1.4,
            taste_noise=0.3,
            taste_factors=4,
            behaviour_weight=0.5,
            impression_rate=0.42,
        ),
        Preset(
            name="cold-start",
            description=(
                "many new lines (half a percent of the base a day) and every third offer "
                "launched three weeks before the last day"
            ),
            new_activation_rate=0.005,
            late_launch_every=3,
        ),
        Preset(
            name="content",
            description=(
                "a large catalog of content items (50 films, tracks, books and games each), "
                "consumption logs of items in and outside the catalog, sparse impressions"
            ),
            impression_rate=0.12,
            content_items=50,
            content_outside_items=100,
        ),
        Preset(
            name="organic",
            description=(
                "real organic demand: engaged app users browse and buy offers of the categories "
                "they want on their own, so many high-P(accept | shown) subscribers would accept "
                "without a contact (sure things) and others only when contacted (persuadables)"
            ),
            organic_browse=0.02,
            organic_browse_engagement=0.6,
            organic_demand_sd=0.5,
            organic_factor=10.0,
        ),
    )
}
