"""How fast a new offer is learnt: Thompson sampling against the fixed exploration slot.

On a simulated world, the oracle's true P(accept | shown) of every subscriber x offer on one day
stands for a perfect model of the established offers. One offer is made *new*: the model knows
nothing of it and scores it with its estimate so far (accepts / impressions with a prior at its
category's rate, as the model would learn it). Then, night after night, the same subscribers are
ranked by Mia's policy (`offers.rank.rank_offers`, top_k offers each, the exploration share of
the settings), the shown offers are accepted with their true probability, and the new offer's
evidence grows. Two policies, the same nights and seeds:

- `category slot`: today's exploration: a random other category's best offer in the last place;
- `thompson`: the same slot, but an exploring offer among the candidates is chosen by Thompson
  sampling on its Beta posterior (`offers.exploration`);
- `greedy` (no exploration) is the reference for the cost: expected accepts lost per night.

Two new offers are tried: the one whose prior undervalues it most (a winner the policy would
not show) and the one it overvalues most (a loser). Reported per policy, as medians over seeds:
the first night from which the new offer's estimate rests on at least 100 impressions and stays
within 20% of the true mean acceptance of the subscribers it was shown to, its impressions, the
final relative error, and expected accepts per night relative to greedy.

    python -m benchmarks.exploration --subscribers 3000 --nights 30 --seeds 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from mia.schema import CATEGORY, OFFER_ID, P_ACCEPT, SUBSCRIBER_ID, VALUE
from mia.settings import Settings
from mia.simulate import SimulationConfig, oracle_p_accept, write_world
from mia.simulate.catalog import catalog_frame
from offers.groups import assign_groups
from offers.rank import rank_offers

WITHIN = 0.2  # relative error of the new offer's estimate that counts as learnt
MIN_IMPRESSIONS = 100  # ... once the estimate rests on this many impressions, not on the prior


def _world(subscribers: int, days: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(true p_accept of every subscriber x offer on the last day, catalog)."""
    config = SimulationConfig(subscribers=subscribers, days=days, seed=11)
    with tempfile.TemporaryDirectory(prefix="mia-exploration-") as folder:
        root = Path(folder) / "data"
        write_world(root, config)
        truth = oracle_p_accept(root, config.start + dt.timedelta(days=days - 1))
    catalog = catalog_frame(config).select(OFFER_ID, CATEGORY, VALUE, "capacity")
    return truth.filter(pl.col(P_ACCEPT) > 0), catalog.with_columns(
        pl.lit(None).cast(pl.Int64).alias("capacity")
    )


def _run(
    truth: pl.DataFrame,
    catalog: pl.DataFrame,
    new_offer: str,
    policy: str,
    nights: int,
    seed: int,
    settings: Settings,
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    groups = assign_groups(truth[SUBSCRIBER_ID].unique(), settings.replace(control_share=0.0))
    eligible = truth.select(SUBSCRIBER_ID, OFFER_ID)
    state = pl.DataFrame(
        {OFFER_ID: catalog[OFFER_ID], "impressions": 0, "accepts": 0},
        schema={OFFER_ID: pl.String, "impressions": pl.Int64, "accepts": pl.Int64},
    )
    # Established offers start with plenty of evidence; the new one with none.
    state = state.with_columns(
        pl.when(pl.col(OFFER_ID) == new_offer).then(0).otherwise(10_000).alias("impressions")
    )
    prior = _prior(truth, catalog, new_offer)
    strength = settings.exploration_prior_strength
    learnt_at, accepts_per_night, estimate, expected = None, [], prior, 0.0
    for night in range(nights):
        scores = truth.with_columns(
            pl.when(pl.col(OFFER_ID) == new_offer)
            .then(pl.lit(estimate))
            .otherwise(pl.col(P_ACCEPT))
            .alias(P_ACCEPT)
        )
        ranked = rank_offers(
            scores.select(SUBSCRIBER_ID, OFFER_ID, P_ACCEPT),
            eligible,
            catalog,
            groups,
            settings.replace(exploration_share=0.0) if policy == "greedy" else settings,
            f"night-{seed}-{night}",
            evidence=state if policy == "thompson" else None,
        ).join(truth.rename({P_ACCEPT: "_true"}), on=[SUBSCRIBER_ID, OFFER_ID])
        accepted = rng.random(ranked.height) < ranked["_true"].to_numpy()
        accepts_per_night.append(float(ranked["_true"].sum()))
        shown = (ranked[OFFER_ID] == new_offer).to_numpy()
        expected += float(ranked["_true"].to_numpy()[shown].sum())
        state = state.with_columns(
            pl.when(pl.col(OFFER_ID) == new_offer)
            .then(pl.col("impressions") + int(shown.sum()))
            .otherwise(pl.col("impressions"))
            .alias("impressions"),
            pl.when(pl.col(OFFER_ID) == new_offer)
            .then(pl.col("accepts") + int((shown & accepted).sum()))
            .otherwise(pl.col("accepts"))
            .alias("accepts"),
        )
        row = state.filter(pl.col(OFFER_ID) == new_offer).row(0, named=True)
        # What a model retrained tonight would believe: the prior updated by the evidence.
        estimate = (strength * prior + row["accepts"]) / (strength + row["impressions"])
        # The truth it can learn: the mean true acceptance of the subscribers it was shown to.
        target = expected / row["impressions"] if row["impressions"] else prior
        close = row["impressions"] >= MIN_IMPRESSIONS and abs(estimate - target) <= WITHIN * target
        learnt_at = (learnt_at or night + 1) if close else None
    return {
        "learnt_night": float(learnt_at if learnt_at is not None else nights + 1),
        "impressions": float(row["impressions"]),
        "error": abs(estimate - target) / target,
        "accepts_per_night": statistics.fmean(accepts_per_night),
    }


def _prior(truth: pl.DataFrame, catalog: pl.DataFrame, offer: str) -> float:
    """What is believed of a new offer: the mean true acceptance of the rest of its category."""
    category = catalog.filter(pl.col(OFFER_ID) == offer)[CATEGORY].item()
    others = truth.join(catalog, on=OFFER_ID).filter(
        pl.col(CATEGORY) == category, pl.col(OFFER_ID) != offer
    )
    return float(others[P_ACCEPT].mean())


def _scenarios(truth: pl.DataFrame, catalog: pl.DataFrame) -> dict[str, str]:
    """The offer whose prior undervalues it most and the one it overvalues most, among offers
    open to at least a fifth of the subscribers and with other offers in their category."""
    subscribers = truth[SUBSCRIBER_ID].n_unique()
    reach = truth.group_by(OFFER_ID).agg(pl.len().alias("n"), pl.col(P_ACCEPT).mean())
    reach = reach.join(catalog.select(OFFER_ID, CATEGORY), on=OFFER_ID).filter(
        pl.col("n") >= subscribers / 5, pl.col(CATEGORY).is_duplicated()
    )
    ratios = sorted(
        (row[P_ACCEPT] / _prior(truth, catalog, row[OFFER_ID]), row[OFFER_ID])
        for row in reach.iter_rows(named=True)
    )
    return {"undervalued": ratios[-1][1], "overvalued": ratios[0][1]}


def main() -> None:
    """Run every policy on the same world and nights; print medians over seeds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=3000)
    parser.add_argument("--days", type=int, default=30, help="days of the simulated world")
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=5)
    arguments = parser.parse_args()
    started = time.perf_counter()
    truth, catalog = _world(arguments.subscribers, arguments.days)
    settings = Settings(top_k=3, min_probability=0.0)
    print(
        f"world: {truth[SUBSCRIBER_ID].n_unique():,} subscribers, {catalog.height} offers; "
        f"{arguments.nights} nights x {arguments.seeds} seeds; exploration_share "
        f"{settings.exploration_share}, top_k {settings.top_k}; learnt: the estimate stays "
        f"within {WITHIN:.0%} of the true mean acceptance of those shown it"
    )
    for scenario, offer in _scenarios(truth, catalog).items():
        true_mean = truth.filter(pl.col(OFFER_ID) == offer)[P_ACCEPT].mean()
        print(
            f"\n{scenario} new offer {offer!r}: true mean p {true_mean:.4f}, "
            f"prior {_prior(truth, catalog, offer):.4f}"
        )
        results = {
            policy: [
                _run(truth, catalog, offer, policy, arguments.nights, seed, settings)
                for seed in range(arguments.seeds)
            ]
            for policy in ("greedy", "category slot", "thompson")
        }
        greedy = statistics.median(r["accepts_per_night"] for r in results["greedy"])
        print(
            "| policy | nights to learn | impressions of the new offer | final error "
            "| expected accepts / night vs greedy |"
        )
        print("|---|---:|---:|---:|---:|")
        for policy, runs in results.items():
            nights = statistics.median(r["learnt_night"] for r in runs)
            learnt = f"{nights:g}" if nights <= arguments.nights else f"> {arguments.nights}"
            print(
                f"| {policy} | {learnt} | {statistics.median(r['impressions'] for r in runs):,.0f}"
                f" | {statistics.median(r['error'] for r in runs):.0%}"
                f" | {statistics.median(r['accepts_per_night'] for r in runs) / greedy:.4f} |"
            )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
