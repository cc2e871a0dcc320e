"""Thompson sampling for offers with little evidence, with exact choice probabilities.

An offer shown fewer than `exploration_min_impressions` times (over all subscribers and the whole
history) is *exploring*. Its acceptance rate has a Beta posterior: the prior has the mean of its
category's acceptance rate (the overall rate for a category with no impressions yet, 0.5 with none
at all) and the weight of `exploration_prior_strength` impressions; the offer's own impressions and
accepts update it. A subscriber drawn to explore tonight whose exploration candidates include
exploring offers gets the one with the highest draw from these posteriors, one draw per
(subscriber, offer) from a hash of the run id: an offer whose posterior is high is shown more
often, one that keeps being ignored less and less, and once it has its evidence it stops being
explored and stands on its model score.

The probability that offer o wins among candidates C is
`P(o) = integral f_o(x) prod_{j != o} F_j(x) dx`, computed per distinct candidate set on a grid of
`GRID_CELLS` cells of [0, 1] from each posterior's exact mass per cell (so a posterior piled up near
0 is integrated as well as a broad one); the error is below 1e-3 for the posteriors of exploring
offers, and the probabilities of a set are normalised to sum to 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from mia.hashing import pair_hash, text_hash
from mia.schema import CATEGORY, OFFER_ID, SUBSCRIBER_ID
from mia.settings import Settings

IMPRESSIONS = "impressions"
ACCEPTS = "accepts"
ALPHA = "alpha"
BETA = "beta"
POSTERIOR_MEAN = "posterior_mean"
EXPLORING = "exploring"
EVIDENCE_COLUMNS = (OFFER_ID, IMPRESSIONS, ACCEPTS)
POSTERIOR_COLUMNS = (OFFER_ID, IMPRESSIONS, ACCEPTS, ALPHA, BETA, POSTERIOR_MEAN, EXPLORING)
WIN_PROBABILITY = "_win_probability"
GRID_CELLS = 4096
_EDGES = np.linspace(0.0, 1.0, GRID_CELLS + 1)
_MIDDLES = (_EDGES[:-1] + _EDGES[1:]) / 2
_NO_EVIDENCE_RATE = 0.5


def offer_evidence(offer_state: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Per offer: impressions and accepts (at most one per impression) summed over subscribers."""
    return (
        offer_state.lazy()
        .group_by(OFFER_ID)
        .agg(pl.col(IMPRESSIONS).sum(), pl.col(ACCEPTS).sum())
        .select(
            OFFER_ID,
            pl.col(IMPRESSIONS).cast(pl.Int64),
            pl.min_horizontal(ACCEPTS, IMPRESSIONS).cast(pl.Int64).alias(ACCEPTS),
        )
        .sort(OFFER_ID)
        .collect()
    )


def posteriors(
    evidence: pl.DataFrame | None, catalog: pl.DataFrame, settings: Settings
) -> pl.DataFrame:
    """Per catalog offer: its evidence, Beta posterior (alpha, beta, mean) and whether it is
    exploring (fewer than exploration_min_impressions impressions)."""
    if evidence is None:
        evidence = pl.DataFrame(
            schema={OFFER_ID: pl.String, IMPRESSIONS: pl.Int64, ACCEPTS: pl.Int64}
        )
    offers = (
        catalog.select(OFFER_ID, CATEGORY)
        .unique(OFFER_ID)
        .join(evidence.select(EVIDENCE_COLUMNS), on=OFFER_ID, how="left")
        .with_columns(pl.col(IMPRESSIONS, ACCEPTS).fill_null(0))
    )
    shown, accepted = offers[IMPRESSIONS].sum(), offers[ACCEPTS].sum()
    overall = accepted / shown if shown else _NO_EVIDENCE_RATE
    category_rate = pl.col(ACCEPTS).sum().over(CATEGORY) / pl.col(IMPRESSIONS).sum().over(CATEGORY)
    prior_mean = (
        pl.when(pl.col(IMPRESSIONS).sum().over(CATEGORY) > 0)
        .then(category_rate)
        .otherwise(overall)
        .clip(1e-3, 1 - 1e-3)
    )
    strength = settings.exploration_prior_strength
    return (
        offers.with_columns(
            (strength * prior_mean + pl.col(ACCEPTS)).alias(ALPHA),
            (strength * (1 - prior_mean) + pl.col(IMPRESSIONS) - pl.col(ACCEPTS)).alias(BETA),
        )
        .with_columns(
            (pl.col(ALPHA) / (pl.col(ALPHA) + pl.col(BETA))).alias(POSTERIOR_MEAN),
            (pl.col(IMPRESSIONS) < settings.exploration_min_impressions).alias(EXPLORING),
        )
        .select(POSTERIOR_COLUMNS)
        .sort(OFFER_ID)
    )


def win_probabilities(alpha: Sequence[float], beta: Sequence[float]) -> np.ndarray:
    """P(each draw is the largest) for independent Beta(alpha_i, beta_i) draws (sums to 1)."""
    from scipy.stats import beta as beta_distribution

    a = np.asarray(alpha, dtype=np.float64)[:, None]
    b = np.asarray(beta, dtype=np.float64)[:, None]
    mass = np.diff(beta_distribution.cdf(_EDGES[None, :], a, b), axis=1)
    below = beta_distribution.cdf(_MIDDLES[None, :], a, b)
    # prod over j != i of F_j: the product over all divided by F_i, computed in logs for safety.
    log_below = np.log(np.clip(below, 1e-300, None))
    others = np.exp(log_below.sum(axis=0, keepdims=True) - log_below)
    wins = (mass * others).sum(axis=1)
    return wins / wins.sum()


def thompson_picks(candidates: pl.DataFrame, posterior: pl.DataFrame, salt: str) -> pl.DataFrame:
    """Per subscriber of `candidates` ([subscriber_id, offer_id, ...], exploring offers only):
    the row of the offer with the highest posterior draw, with `_win_probability`, the exact
    chance that it wins among the subscriber's candidates."""
    rows = candidates.join(posterior.select(OFFER_ID, ALPHA, BETA), on=OFFER_ID, how="inner").sort(
        SUBSCRIBER_ID, OFFER_ID
    )
    if rows.is_empty():
        return rows.with_columns(pl.lit(None, dtype=pl.Float64).alias(WIN_PROBABILITY)).drop(
            ALPHA, BETA
        )
    from scipy.stats import beta as beta_distribution

    uniform = (
        pair_hash(rows[SUBSCRIBER_ID], text_hash(rows[OFFER_ID], salt), salt) >> np.uint64(11)
    ).astype(np.float64) / float(1 << 53)
    draws = beta_distribution.ppf(uniform, rows[ALPHA].to_numpy(), rows[BETA].to_numpy())
    rows = rows.with_columns(pl.Series("_draw", draws))
    chances = _set_probabilities(rows)
    return (
        rows.join(chances, on=[SUBSCRIBER_ID, OFFER_ID], how="left")
        .sort([SUBSCRIBER_ID, "_draw", OFFER_ID], descending=[False, True, False])
        .unique(SUBSCRIBER_ID, keep="first", maintain_order=True)
        .drop("_draw", ALPHA, BETA)
    )


def _set_probabilities(rows: pl.DataFrame) -> pl.DataFrame:
    """[subscriber_id, offer_id, _win_probability], computed once per distinct candidate set."""
    sets = rows.group_by(SUBSCRIBER_ID, maintain_order=True).agg(
        pl.col(OFFER_ID), pl.col(ALPHA), pl.col(BETA)
    )
    known: dict[tuple[str, ...], np.ndarray] = {}
    offers, chances = [], []
    for ids, alpha, beta in zip(sets[OFFER_ID], sets[ALPHA], sets[BETA], strict=True):
        key = tuple(ids)
        if key not in known:
            known[key] = win_probabilities(alpha.to_list(), beta.to_list())
        offers.append(ids)
        chances.append(known[key])
    return pl.DataFrame(
        {
            SUBSCRIBER_ID: sets[SUBSCRIBER_ID],
            OFFER_ID: offers,
            WIN_PROBABILITY: [list(chance) for chance in chances],
        },
        schema={
            SUBSCRIBER_ID: pl.Int64,
            OFFER_ID: pl.List(pl.String),
            WIN_PROBABILITY: pl.List(pl.Float64),
        },
    ).explode(OFFER_ID, WIN_PROBABILITY)
