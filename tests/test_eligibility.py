"""Eligibility rules on a hand-made world where every answer is known."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from offers.eligibility import (
    RULE_NAMES,
    RULES,
    OffersInputError,
    eligible_pairs,
    explain,
)

AS_OF = dt.date(2026, 3, 10)  # offers are for the night of 2026-03-11
D = dt.date


def _catalog_row(offer_id: str, **rules) -> dict:
    row = {
        "offer_id": offer_id,
        "category": "data_addon",
        "title": offer_id.title(),
        "value": 10.0,
        "start_date": D(2026, 1, 1),
        "end_date": None,
        "product_id": f"p_{offer_id}",
        "regions": None,
        "device_os": None,
        "min_tenure_days": 0,
        "requires_product": None,
        "excludes_product": None,
        "cooldown_days": 0,
        "capacity": None,
    }
    row.update(rules)
    return row


CATALOG_SCHEMA = {
    "offer_id": pl.String,
    "category": pl.String,
    "title": pl.String,
    "value": pl.Float64,
    "start_date": pl.Date,
    "end_date": pl.Date,
    "product_id": pl.String,
    "regions": pl.String,
    "device_os": pl.String,
    "min_tenure_days": pl.Int64,
    "requires_product": pl.String,
    "excludes_product": pl.String,
    "cooldown_days": pl.Int64,
    "capacity": pl.Int64,
}


def catalog() -> pl.DataFrame:
    rows = [
        _catalog_row("o_any"),
        _catalog_row("o_region", regions="moscow|spb"),
        _catalog_row("o_ios", device_os="ios"),
        _catalog_row("o_tenure", min_tenure_days=30),
        _catalog_row("o_requires", requires_product="p_base"),
        _catalog_row("o_excludes", excludes_product="p_block"),
        _catalog_row("o_future", start_date=D(2026, 3, 12)),
        _catalog_row("o_ended", end_date=D(2026, 3, 10)),
        _catalog_row("o_ends_tonight", start_date=D(2026, 3, 11), end_date=D(2026, 3, 11)),
        _catalog_row("o_held", product_id="p_held"),
        _catalog_row("o_cool", cooldown_days=7),
        _catalog_row("o_multi", regions="kazan", device_os="ios|other", min_tenure_days=5000),
    ]
    return pl.DataFrame(rows, schema=CATALOG_SCHEMA)


def subscribers() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "subscriber_id": [1, 2, 3],
            "region": ["moscow", "kazan", "spb"],
            "device_os": ["android", "ios", "android"],
            "device_vendor": ["samsung", "apple", "xiaomi"],
            "tariff_id": ["t1", "t2", "t1"],
            # tenure on the night 2026-03-11: long, exactly 30 days, 29 days
            "activation_date": [D(2020, 1, 1), D(2026, 2, 9), D(2026, 2, 10)],
        }
    )


def holdings() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "subscriber_id": [1, 1, 1, 2, 2, 3],
            "product_id": ["p_base", "p_held", "p_block", "p_base", "p_block", "p_held"],
            # 1's p_block starts on the night: already held then
            # 2's p_base ends on as_of: no longer held on the night
            # 3's p_held starts the day after the night: not held yet
            "start_date": [
                D(2025, 1, 1),
                D(2025, 6, 1),
                D(2026, 3, 11),
                D(2025, 1, 1),
                D(2026, 3, 10),
                D(2026, 3, 12),
            ],
            "end_date": [None, None, None, D(2026, 3, 10), None, None],
        },
        schema_overrides={"end_date": pl.Date},
    )


def offer_events() -> pl.DataFrame:
    ts = dt.datetime
    return pl.DataFrame(
        {
            "subscriber_id": [1, 1, 2, 3, 3],
            "offer_id": ["o_cool", "o_cool", "o_cool", "o_cool", "o_cool"],
            "ts": [
                ts(2026, 3, 4, 9, 0),  # impression, then dismiss: 7 days before the night
                ts(2026, 3, 4, 9, 5),
                ts(2026, 3, 3, 23, 59),  # accept 8 days before the night
                ts(2026, 3, 10, 12, 0),  # impression only: no cooldown
                ts(2026, 3, 11, 0, 0),  # dismiss after as_of: not visible yet
            ],
            "event": ["impression", "dismiss", "accept", "impression", "dismiss"],
        }
    )


EXPECTED = {
    1: {"o_any", "o_region", "o_tenure", "o_requires", "o_ends_tonight"},
    2: {"o_any", "o_ios", "o_tenure", "o_ends_tonight", "o_held", "o_cool"},
    3: {"o_any", "o_region", "o_excludes", "o_ends_tonight", "o_held", "o_cool"},
}


def _as_sets(pairs: pl.DataFrame) -> dict[int, set[str]]:
    grouped = pairs.group_by("subscriber_id").agg("offer_id")
    return {row["subscriber_id"]: set(row["offer_id"]) for row in grouped.to_dicts()}


def test_exact_eligible_set():
    pairs = eligible_pairs(subscribers(), catalog(), holdings(), offer_events(), AS_OF)
    assert pairs.columns == ["subscriber_id", "offer_id"]
    assert _as_sets(pairs) == EXPECTED
    assert pairs.equals(pairs.sort("subscriber_id", "offer_id"))
    unordered = eligible_pairs(
        subscribers(), catalog(), holdings(), offer_events(), AS_OF, ordered=False
    )
    assert unordered.sort("subscriber_id", "offer_id").equals(pairs)


def test_lazy_inputs_give_the_same_pairs():
    eager = eligible_pairs(subscribers(), catalog(), holdings(), offer_events(), AS_OF)
    lazy = eligible_pairs(
        subscribers().lazy(), catalog().lazy(), holdings().lazy(), offer_events().lazy(), AS_OF
    )
    assert lazy.equals(eager)


def test_without_holdings_or_events():
    pairs = eligible_pairs(subscribers(), catalog(), None, None, AS_OF)
    sets = _as_sets(pairs)
    # nothing held, no cooldown: only requires_product still fails
    assert "o_held" in sets[1] and "o_cool" in sets[1] and "o_requires" not in sets[1]


@pytest.mark.parametrize(
    ("subscriber_id", "offer_id", "rules"),
    [
        (1, "o_ios", ["device_os"]),
        (1, "o_held", ["already_held"]),
        (1, "o_excludes", ["excludes_product"]),
        (1, "o_cool", ["cooldown"]),
        (1, "o_future", ["active"]),
        (1, "o_ended", ["active"]),
        (1, "o_multi", ["region", "device_os", "min_tenure"]),
        (2, "o_region", ["region"]),
        (2, "o_requires", ["requires_product"]),
        (2, "o_excludes", ["excludes_product"]),
        (3, "o_tenure", ["min_tenure"]),
        (3, "o_requires", ["requires_product"]),
        (3, "o_any", []),
    ],
)
def test_explain_names_the_rule(subscriber_id, offer_id, rules):
    table = explain(subscriber_id, subscribers(), catalog(), holdings(), offer_events(), AS_OF)
    row = table.filter(pl.col("offer_id") == offer_id).to_dicts()[0]
    assert row["failed_rules"] == rules
    assert row["eligible"] is (not rules)
    assert row["category"] == "data_addon"


def test_explain_agrees_with_eligible_pairs():
    pairs = _as_sets(eligible_pairs(subscribers(), catalog(), holdings(), offer_events(), AS_OF))
    for subscriber_id in (1, 2, 3):
        table = explain(subscriber_id, subscribers(), catalog(), holdings(), offer_events(), AS_OF)
        assert table.columns == ["offer_id", "category", "eligible", "failed_rules"]
        assert table.height == catalog().height
        assert set(table.filter("eligible")["offer_id"]) == pairs[subscriber_id]


def test_rules_are_listed_once():
    assert len(RULE_NAMES) == len(set(RULE_NAMES)) == len(RULES)
    assert set(RULE_NAMES) == {
        "active",
        "region",
        "device_os",
        "min_tenure",
        "requires_product",
        "excludes_product",
        "already_held",
        "cooldown",
        "fatigue",
        "weekly_cap",
    }


def test_empty_list_cell_means_any():
    frame = catalog().with_columns(
        pl.when(pl.col("offer_id") == "o_region")
        .then(pl.lit(""))
        .otherwise("regions")
        .alias("regions")
    )
    pairs = _as_sets(eligible_pairs(subscribers(), frame, holdings(), offer_events(), AS_OF))
    assert "o_region" in pairs[2]


def test_explain_unknown_subscriber():
    with pytest.raises(OffersInputError, match="subscriber_id 99"):
        explain(99, subscribers(), catalog(), holdings(), offer_events(), AS_OF)


def test_missing_column_is_named():
    with pytest.raises(OffersInputError, match=r"catalog: missing column\(s\) \['cooldown_days'\]"):
        eligible_pairs(subscribers(), catalog().drop("cooldown_days"), None, None, AS_OF)
    with pytest.raises(OffersInputError, match="holdings"):
        eligible_pairs(subscribers(), catalog(), holdings().drop("start_date"), None, AS_OF)


def test_simulated_impressions_are_eligible_and_control_sees_none():
    """The simulator shows offers by the same catalog rules: every impression on day D + 1
    passes eligibility as of D, and the control group of assign_groups never sees one."""
    simulate = pytest.importorskip("mia.simulate")
    from mia.settings import Settings
    from offers.groups import assign_groups

    config = simulate.SimulationConfig(subscribers=600, days=30, seed=5)
    days = list(simulate.generate_days(config))
    history = pl.concat([tables["offer_events"] for _, tables in days])
    checked = 0
    for (as_of, tables), (_, tomorrow) in zip(days[10:-1], days[11:], strict=True):
        pairs = eligible_pairs(
            tables["subscribers"], tables["catalog"], tables["holdings"], history, as_of
        )
        shown = (
            tomorrow["offer_events"]
            .filter(pl.col("event") == "impression")
            .select("subscriber_id", "offer_id")
            .unique()
        )
        assert shown.join(pairs, on=["subscriber_id", "offer_id"], how="anti").is_empty()
        checked += shown.height
    assert checked > 1000
    groups = assign_groups(days[-1][1]["subscribers"]["subscriber_id"], Settings())
    seen = history.filter(pl.col("event") == "impression").join(groups, on="subscriber_id")
    assert seen["group"].unique().to_list() == ["treatment"]
    assert groups.filter(pl.col("group") == "control").height > 30
