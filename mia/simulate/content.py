"""Content of a content world: items in a taste space, subscribers' content tastes, consumption.

Every content item (an item offer of the catalog, or content outside the catalog: consumed,
never offered) has a vector v in a `content_factors`-dimensional taste space and a popularity
bias; every subscriber has a content-taste vector u ~ N(0, TASTE_SD^2 I). The affinity u . v
drives what a subscriber consumes (a softmax over popularity + CHOICE_WEIGHT x affinity) and,
times the preset's `content_accept_weight`, the acceptance of the item offers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from mia.schema import CATEGORY, ITEM_ID
from mia.simulate.config import STREAM_CONTENT_STATIC, SimulationConfig, static_rng
from mia.simulate.presets import Preset


@dataclass(frozen=True)
class ContentKind:
    """How the items of one content category are offered and consumed."""

    category: str
    title: str  # catalog title of its item offers: "Film 7"
    outside_prefix: str  # id prefix of its items outside the catalog: "film_x0007"
    kind: str  # consumption kind
    minutes: float  # mean minutes of one consumption
    value: float  # value of one item offer
    repeat: float  # choice weight of an item already consumed, relative to a new one


CONTENT_KINDS = (
    ContentKind("video", "Film", "film", "watch", 70.0, 30.0, 0.1),
    ContentKind("music", "Track", "track", "listen", 4.0, 10.0, 1.0),
    ContentKind("books", "Book", "book", "read", 30.0, 15.0, 0.3),
    ContentKind("mini_game", "Game", "game", "play", 12.0, 5.0, 1.0),
)
CONTENT_CATEGORIES = tuple(kind.category for kind in CONTENT_KINDS)
CONSUMPTION_KINDS = tuple(kind.kind for kind in CONTENT_KINDS)

TASTE_SD = 1.0  # spread of every factor of a subscriber's content taste
CATEGORY_SHARE = 0.3  # share of an item vector's variance that its category centre sets
POPULARITY_SD = 1.0  # log-normal popularity: the softmax bias is N(0, POPULARITY_SD^2)
CHOICE_WEIGHT = 1.5  # affinity's weight in the consumption softmax
OUTSIDE_SHARE = 1 / 3  # expected share of consumption outside the catalog
RATE_SIGMA = 1.2  # log-normal spread of the subscribers' consumption rates
# An item offer grants its item for ITEM_DAYS; it can be offered again after that.
ITEM_DAYS = 30
ITEM_COOLDOWN_DAYS = 14

TASTE_PREFIX = "content_taste_"
RATE = "content_rate"
P_CHOICE = "p_choice"


def has_content(world: Preset) -> bool:
    """Whether a world has content items (and so consumption)."""
    return world.content_items + world.content_outside_items > 0


def item_names(world: Preset) -> list[tuple[str, int, bool, str]]:
    """(item id, CONTENT_KINDS index, in catalog, title) of every item, catalog items first."""
    names = []
    for in_catalog, count in ((True, world.content_items), (False, world.content_outside_items)):
        for k, kind in enumerate(CONTENT_KINDS):
            for number in range(1, count + 1):
                item_id = (
                    f"{kind.category}_{number:04d}"
                    if in_catalog
                    else f"{kind.outside_prefix}_x{number:04d}"
                )
                names.append((item_id, k, in_catalog, f"{kind.title} {number}"))
    return names


@dataclass(frozen=True)
class ContentItems:
    """Every content item of a world, catalog items first: kinds, vectors, popularity."""

    ids: tuple[str, ...]
    kind: np.ndarray  # CONTENT_KINDS index
    in_catalog: np.ndarray
    vectors: np.ndarray  # items x content_factors
    popularity: np.ndarray  # log choice weight before the affinity
    repeat: np.ndarray

    def frame(self) -> pl.DataFrame:
        """Truth about items: category, catalog membership, popularity and vector."""
        return pl.DataFrame(
            {
                ITEM_ID: list(self.ids),
                CATEGORY: [CONTENT_CATEGORIES[k] for k in self.kind],
                "in_catalog": self.in_catalog,
                "popularity": self.popularity,
                **{f"v_{k}": self.vectors[:, k] for k in range(self.vectors.shape[1])},
            }
        )


def content_items(config: SimulationConfig) -> ContentItems:
    """The items of a world, fixed by its seed (a stream of their own)."""
    world = config.world
    names = item_names(world)
    kind = np.array([k for _, k, _, _ in names], dtype=np.int64)
    in_catalog = np.array([inside for _, _, inside, _ in names], dtype=bool)
    factors = world.content_factors
    rng = static_rng(config.seed, STREAM_CONTENT_STATIC)
    centres = rng.normal(0.0, 1.0, (len(CONTENT_KINDS), factors))
    # Unit expected length: the affinity has sd TASTE_SD whatever the number of factors.
    own = rng.normal(0.0, 1.0, (len(names), factors))
    vectors = (
        np.sqrt(CATEGORY_SHARE) * centres[kind] + np.sqrt(1.0 - CATEGORY_SHARE) * own
    ) / np.sqrt(factors)
    popularity = rng.normal(0.0, POPULARITY_SD, len(names))
    inside, outside = int(in_catalog.sum()), int((~in_catalog).sum())
    if inside and outside:
        # Items inside and outside share one distribution: this shift sets the outside share.
        shift = np.log(OUTSIDE_SHARE / (1.0 - OUTSIDE_SHARE) * inside / outside)
        popularity = np.where(in_catalog, popularity, popularity + shift)
    return ContentItems(
        ids=tuple(name for name, _, _, _ in names),
        kind=kind,
        in_catalog=in_catalog,
        vectors=vectors,
        popularity=popularity,
        repeat=np.array([CONTENT_KINDS[k].repeat for k in kind]),
    )


def draw_content_traits(
    rng: np.random.Generator, n: int, world: Preset, activity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Content tastes (n x factors) and daily consumption rates (n,) of new subscribers.

    Rates are log-normal (most consume a few items a month, some a lot) and grow with the
    square root of `activity`, the subscribers' entertainment app activity relative to average.
    """
    tastes = rng.normal(0.0, TASTE_SD, (n, world.content_factors))
    rates = world.content_rate * rng.lognormal(0.0, RATE_SIGMA, n) * np.sqrt(activity)
    return tastes, rates


def affinity(tastes: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """u . v over the last axis (broadcast), factors added in a fixed order.

    Elementwise, so a pair gets the same bits alone, in a batch, or in a subscribers x items grid.
    """
    total = tastes[..., 0] * vectors[..., 0]
    for k in range(1, tastes.shape[-1]):
        total = total + tastes[..., k] * vectors[..., k]
    return total


def affinity_sd(items: ContentItems, world: Preset) -> np.ndarray:
    """Spread of the acceptance term weight x u . v across subscribers, per item."""
    length = np.sqrt((items.vectors**2).sum(axis=1))
    return world.content_accept_weight * TASTE_SD * length


def choice_probabilities(tastes: np.ndarray, seen: np.ndarray, items: ContentItems) -> np.ndarray:
    """P(a consumption is of each item) (rows x items) given tastes and items consumed before.

    A softmax of popularity + CHOICE_WEIGHT x affinity, an item consumed before weighted by its
    kind's repeat factor (tracks are played again, films seldom watched twice).
    """
    logit = items.popularity + CHOICE_WEIGHT * affinity(tastes[:, None, :], items.vectors[None])
    weight = np.exp(logit - logit.max(axis=1, keepdims=True))
    weight = np.where(seen, weight * items.repeat, weight)
    return weight / weight.sum(axis=1, keepdims=True)


def accept_affinity(tastes: np.ndarray, vectors: np.ndarray, world: Preset) -> np.ndarray:
    """The affinity term of an item offer's acceptance logit: weight x u . v (elementwise)."""
    return world.content_accept_weight * affinity(tastes, vectors)
