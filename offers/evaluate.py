"""Audience quality: expected accepts of Mia's audience vs the best audience of equal size.

Used on simulated worlds, where the true P(accept | shown) of every subscriber x offer is known.
"""

from __future__ import annotations

import polars as pl

from mia.schema import GROUP, OFFER_ID, P_ACCEPT, RANK, SUBSCRIBER_ID
from offers.groups import TREATMENT

TRUE_P = "true_p_accept"


def audience_capture(
    audience_rows: pl.DataFrame,
    eligible: pl.DataFrame,
    truth: pl.DataFrame,
    share: float | None = None,
) -> pl.DataFrame:
    """Per offer: expected accepts of the audience vs the oracle's audience of the same size.

    `audience_rows`: [subscriber_id, offer_id, group] as published; only treatment rows count
    (control rows are never contacted). `eligible`: [subscriber_id, offer_id] the pool the oracle
    may choose from (eligible, covered treatment subscribers). `truth`: [subscriber_id, offer_id,
    p_accept] true probabilities. With `share`, each audience is first cut to its best `share`
    of the eligible pool (by its `rank` column), as a tighter capacity would. Returns [offer_id,
    audience_size, expected_accepts, oracle_expected_accepts, capture].
    """
    truth = truth.select(SUBSCRIBER_ID, OFFER_ID, pl.col(P_ACCEPT).alias(TRUE_P))
    treatment = audience_rows.filter(pl.col(GROUP) == TREATMENT)
    if share is not None:
        pool = eligible.group_by(OFFER_ID).agg(pl.len().alias("pool"))
        treatment = (
            treatment.join(pool, on=OFFER_ID, how="left")
            .with_columns(pl.col(RANK).rank(method="ordinal").over(OFFER_ID).alias("position"))
            .filter(pl.col("position") <= (pl.col("pool") * share).ceil())
        )
    chosen = (
        treatment.select(SUBSCRIBER_ID, OFFER_ID)
        .join(truth, on=[SUBSCRIBER_ID, OFFER_ID], how="left")
        .group_by(OFFER_ID)
        .agg(
            pl.len().alias("audience_size"),
            pl.col(TRUE_P).fill_null(0.0).sum().alias("expected_accepts"),
        )
    )
    best = (
        eligible.select(SUBSCRIBER_ID, OFFER_ID)
        .join(truth, on=[SUBSCRIBER_ID, OFFER_ID], how="left")
        .with_columns(pl.col(TRUE_P).fill_null(0.0))
        .join(chosen.select(OFFER_ID, "audience_size"), on=OFFER_ID, how="inner")
        .with_columns(
            pl.col(TRUE_P)
            .rank(method="ordinal", descending=True)
            .over(OFFER_ID)
            .alias("oracle_rank")
        )
        .filter(pl.col("oracle_rank") <= pl.col("audience_size"))
        .group_by(OFFER_ID)
        .agg(pl.col(TRUE_P).sum().alias("oracle_expected_accepts"))
    )
    return (
        chosen.join(best, on=OFFER_ID, how="left")
        .with_columns(pl.col("oracle_expected_accepts").fill_null(0.0))
        .with_columns(
            (pl.col("expected_accepts") / pl.col("oracle_expected_accepts")).alias("capture")
        )
        .sort(OFFER_ID)
    )


def capture_summary(per_offer: pl.DataFrame, prefix: str = "audience") -> dict[str, float]:
    """Totals over offers: expected accepts of Mia's and the oracle's audiences and their ratio."""
    mia = float(per_offer["expected_accepts"].sum())
    oracle = float(per_offer["oracle_expected_accepts"].sum())
    median = per_offer["capture"].median()
    return {
        f"{prefix}.offers": float(per_offer.height),
        f"{prefix}.rows": float(per_offer["audience_size"].sum()),
        f"{prefix}.expected_accepts": mia,
        f"{prefix}.oracle_expected_accepts": oracle,
        f"{prefix}.capture": mia / oracle if oracle > 0 else float("nan"),
        f"{prefix}.median_offer_capture": float("nan") if median is None else float(median),
    }
