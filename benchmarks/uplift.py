"""Uplift audiences against expected-value audiences, judged by the simulator's true uplift.

On a simulated data root after `mia nightly --date D`: the audience uplift model is fitted as the
night fits it (`flows.steps.audience_uplift`), and every published audience row (all orders rank
the same rows) is ordered three ways per offer: `uplift` (what the night publishes: the night's
p_accept minus the control arm's organic accept chance), `t_learner` (both arms of the T-learner)
and `expected_value` (p_accept: value and category weight are constant within an offer). Each
order's Qini coefficient and uplift@10% against `mia.simulate.oracle_uplift` are averaged over the
offers with at least `--min-rows` rows; the pooled Qini ranks every published row together.

    python -m benchmarks.uplift --data-dir /tmp/demo --date 2026-04-30
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time

import polars as pl

from features.snapshot import scan_snapshot
from flows.steps import audience_uplift, groups_for
from mia.ingest import raw_state
from mia.lake import Lake
from mia.settings import load_settings
from mia.simulate import oracle_uplift
from offers.audience import read_summary
from offers.uplift import qini_coefficient, uplift_at_k

ORDERS = {"uplift": "uplift", "t_learner": "t_learner", "expected_value": "p_accept"}


def compare(frame: pl.DataFrame, min_rows: int) -> pl.DataFrame:
    """Per offer: rows, and the Qini and uplift@10% of each order against true_uplift."""
    rows = []
    for (offer_id,), part in sorted(frame.partition_by("offer_id", as_dict=True).items()):
        if part.height < min_rows:
            continue
        row = {"offer_id": offer_id, "rows": part.height}
        for name, column in ORDERS.items():
            row[f"qini_{name}"] = qini_coefficient(part[column], part["true_uplift"])
            row[f"uplift_at_10pct_{name}"] = uplift_at_k(
                part[column], part["true_uplift"], share=0.1
            )
        rows.append(row)
    return pl.DataFrame(rows)


def main() -> None:
    """Print the per-offer comparison and its means as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--date", required=True)
    parser.add_argument("--min-rows", type=int, default=100)
    arguments = parser.parse_args()
    as_of = dt.date.fromisoformat(arguments.date)
    settings = load_settings(data_dir=arguments.data_dir)
    lake = Lake(settings.data_dir)
    catalog = raw_state(lake, "catalog", as_of)
    started = time.perf_counter()
    model, reason = audience_uplift(
        lake, as_of, settings, catalog, groups_for(lake, as_of, settings)
    )
    if model is None:
        raise SystemExit(f"no uplift model: {reason}")
    fit_seconds = time.perf_counter() - started
    directory = lake.audiences(as_of)
    audiences = pl.concat(
        pl.read_csv(directory / name, schema_overrides={"subscriber_id": pl.Int64}).select(
            "subscriber_id", "offer_id", "p_accept"
        )
        for name in read_summary(directory)["file"]
    )
    snapshot = scan_snapshot(lake, as_of)
    predicted = model.predict(audiences, snapshot, catalog).join(
        model.predict(audiences, snapshot, catalog, use_scores=False).rename(
            {"uplift": "t_learner"}
        ),
        on=["subscriber_id", "offer_id"],
    )
    truth = oracle_uplift(
        lake.root, as_of, settings.horizon_days, offer_ids=audiences["offer_id"].unique()
    )
    frame = audiences.join(predicted, on=["subscriber_id", "offer_id"]).join(
        truth.select("subscriber_id", "offer_id", "true_uplift"), on=["subscriber_id", "offer_id"]
    )
    per_offer = compare(frame, arguments.min_rows)
    rankings = model.rankings(catalog)
    means = per_offer.drop("offer_id", "rows").mean().row(0, named=True)
    print(per_offer.sort("offer_id"))
    print(
        json.dumps(
            {
                "offers": per_offer.height,
                "rows": frame.height,
                "fit_seconds": round(fit_seconds, 1),
                "offers_ranked_by_uplift": int((rankings["ranking"] == "uplift").sum()),
                "mean_holdout_qini": rankings["qini"].mean(),
                **{
                    f"pooled_qini_{name}": qini_coefficient(frame[column], frame["true_uplift"])
                    for name, column in ORDERS.items()
                },
                **{f"mean_{key}": value for key, value in means.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
