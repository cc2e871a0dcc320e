"""Lift of treatment vs control on a tiny world computed by hand."""

from __future__ import annotations

import datetime as dt
import math

import causaldata
import polars as pl
import pytest

from mia.settings import Settings
from offers.eligibility import OffersInputError
from offers.lift import (
    LIFT_COLUMNS,
    Z_VALUE,
    benjamini_hochberg,
    comparisons,
    measure_impact,
    measure_lift,
    organic_baseline,
)

START, END = dt.date(2026, 3, 1), dt.date(2026, 3, 7)
TS = dt.datetime


def subscribers() -> pl.DataFrame:
    ids = [1, 2, 3, 4, 5, 6, 7, 8]
    activation = [dt.date(2025, 1, 1)] * 8
    activation[6] = dt.date(2026, 3, 8)  # 7 joined after the window: not counted
    return pl.DataFrame({"subscriber_id": ids, "activation_date": activation})


def groups() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "subscriber_id": [1, 2, 3, 4, 5, 6, 7, 8],
            "group": ["treatment"] * 5 + ["control"] * 3,
            "covered": [True, True, True, True, False, True, True, False],
        }
    )


def catalog() -> pl.DataFrame:
    return pl.DataFrame({"offer_id": ["o1", "o2", "o3"], "category": ["gift", "gift", "music"]})


def events() -> pl.DataFrame:
    rows = [
        (1, "o1", TS(2026, 3, 2, 10), "accept"),
        (1, "o2", TS(2026, 3, 3, 10), "accept"),
        (3, "o1", TS(2026, 3, 7, 23, 59), "accept"),
        (6, "o1", TS(2026, 3, 5, 8), "accept"),  # organic accept in control
        (2, "o1", TS(2026, 3, 8, 0, 0), "accept"),  # after the window
        (4, "o1", TS(2026, 2, 28, 23), "accept"),  # before the window
        (5, "o1", TS(2026, 3, 2, 10), "accept"),  # treatment but not covered
        (7, "o1", TS(2026, 3, 2, 10), "accept"),  # activated after the window
        (2, "o1", TS(2026, 3, 2, 10), "impression"),
        (2, "o1", TS(2026, 3, 2, 11), "dismiss"),
        (1, "zz", TS(2026, 3, 2, 10), "accept"),  # not in the catalog
    ]
    return pl.DataFrame(
        rows,
        schema={
            "subscriber_id": pl.Int64,
            "offer_id": pl.String,
            "ts": pl.Datetime("us"),
            "event": pl.String,
        },
        orient="row",
    )


def _row(level, key, t_accepts, t_var, c_accepts, c_var):
    """Expected row: treatment n=4 (1-4), control n=2 (6, 8); variances of per-subscriber counts."""
    t_rate, c_rate = t_accepts / 4, c_accepts / 2
    margin = Z_VALUE * math.sqrt(t_var / 4 + c_var / 2)
    lift = t_rate - c_rate
    return {
        "level": level,
        "key": key,
        "treatment_n": 4,
        "treatment_accepts": t_accepts,
        "treatment_rate": t_rate,
        "control_n": 2,
        "control_accepts": c_accepts,
        "control_rate": c_rate,
        "lift": lift,
        "lift_low": pytest.approx(lift - margin),
        "lift_high": pytest.approx(lift + margin),
    }


def test_lift_exact_on_a_tiny_world():
    result = measure_lift(events(), catalog(), subscribers(), groups(), START, END)
    assert tuple(result.columns) == LIFT_COLUMNS
    assert result.to_dicts() == [
        # gift: treatment counts [2, 0, 1, 0] -> var (5 - 4 * 0.75^2) / 3; control [1, 0]
        _row("category", "gift", 3, (5 - 4 * 0.75**2) / 3, 1, 0.5),
        _row("category", "music", 0, 0.0, 0, 0.0),
        _row("offer", "o1", 2, 1 / 3, 1, 0.5),
        _row("offer", "o2", 1, 0.25, 0, 0.0),
        _row("offer", "o3", 0, 0.0, 0, 0.0),
    ]
    assert Z_VALUE == pytest.approx(1.959964, abs=1e-6)


def test_organic_baseline_is_the_control_side():
    baseline = organic_baseline(events(), catalog(), subscribers(), groups(), START, END)
    assert baseline.rows() == [("o1", 2, 1, 0.5), ("o2", 2, 0, 0.0), ("o3", 2, 0, 0.0)]


def test_lazy_events_and_empty_groups():
    lazy = measure_lift(events().lazy(), catalog(), subscribers(), groups(), START, END)
    assert lazy.equals(measure_lift(events(), catalog(), subscribers(), groups(), START, END))
    treatment_only = groups().with_columns(pl.lit("treatment").alias("group"))
    result = measure_lift(events(), catalog(), subscribers(), treatment_only, START, END)
    assert result["control_n"].unique().to_list() == [0]
    assert result["control_rate"].null_count() == result.height
    assert result["lift"].null_count() == result.height


def test_bad_window_and_columns():
    with pytest.raises(OffersInputError, match="start <= end"):
        measure_lift(events(), catalog(), subscribers(), groups(), END, START)
    with pytest.raises(OffersInputError, match="offer_events"):
        measure_lift(events().drop("event"), catalog(), subscribers(), groups(), START, END)


def _trial(outcome: list[int], arm: list[str]) -> tuple[pl.DataFrame, ...]:
    """A randomised trial as Mia's tables: one subscriber per unit, an accept of offer "o" for
    each positive outcome, the arm as the group."""
    ids = list(range(1, len(outcome) + 1))
    people = pl.DataFrame(
        {"subscriber_id": ids, "activation_date": [dt.date(2025, 1, 1)] * len(ids)}
    )
    assigned = pl.DataFrame({"subscriber_id": ids, "group": arm, "covered": [True] * len(ids)})
    accepted = [i for i, y in zip(ids, outcome, strict=True) if y]
    accepts = pl.DataFrame(
        {
            "subscriber_id": accepted,
            "offer_id": ["o"] * len(accepted),
            "ts": [TS(2026, 3, 2, 12)] * len(accepted),
            "event": ["accept"] * len(accepted),
        }
    )
    offers = pl.DataFrame({"offer_id": ["o"], "category": ["c"], "value": [1.0]})
    return accepts, offers, people, assigned


def _overall(impact: pl.DataFrame, comparison: str, metric: str = "accepts") -> dict:
    return impact.filter(
        pl.col("comparison") == comparison, pl.col("level") == "overall", pl.col("metric") == metric
    ).row(0, named=True)


def _welch(p_arm: float, n_arm: int, p_base: float, n_base: int) -> tuple[float, float, float]:
    """A plain two-proportion Welch interval (sample variances with n - 1)."""
    se = math.sqrt(p_arm * (1 - p_arm) / (n_arm - 1) + p_base * (1 - p_base) / (n_base - 1))
    lift = p_arm - p_base
    return lift, lift - Z_VALUE * se, lift + Z_VALUE * se


def test_impact_reproduces_the_thornton_hiv_trial():
    """Thornton (2008): cash incentives to learn one's HIV result; published shares who learnt
    it: 0.339 of 623 without an incentive, 0.789 of 2,211 with one."""
    data = pl.from_pandas(causaldata.thornton_hiv.load_pandas().data).drop_nulls(["got", "any"])
    arm = ["treatment" if treated else "control" for treated in data["any"]]
    impact = measure_impact(
        *_trial(data["got"].cast(pl.Int64).to_list(), arm), START, END, Settings()
    )
    row = _overall(impact, "treatment vs control")
    assert (row["arm_n"], row["baseline_n"]) == (2211, 623)
    assert round(row["arm_mean"], 3) == 0.789 and round(row["baseline_mean"], 3) == 0.339
    lift, low, high = _welch(row["arm_mean"], 2211, row["baseline_mean"], 623)
    assert row["lift"] == pytest.approx(lift, abs=1e-12)
    assert (row["lift_low"], row["lift_high"]) == pytest.approx((low, high), abs=1e-9)
    assert 0.40 < row["lift_low"] < 0.45 < row["lift_high"] < 0.50
    # Relative: 0.789 / 0.339 = 2.33, so +133%, its interval well above 0.
    assert row["relative_lift"] == pytest.approx(row["arm_mean"] / row["baseline_mean"] - 1)
    assert 1.0 < row["relative_low"] < row["relative_lift"] < row["relative_high"] < 1.7
    assert row["significant"] and not row["few_events"]


def test_impact_interval_covers_the_null_of_social_insure():
    """Cai, de Janvry and Sadoulet (2015): take-up of weather insurance after an "intensive"
    information session vs a simple one; in this sample the shares are equal (0.46 both)."""
    data = pl.from_pandas(causaldata.social_insure.load_pandas().data).drop_nulls(
        ["takeup_survey", "intensive"]
    )
    arm = ["treatment" if treated else "control" for treated in data["intensive"]]
    accepts = data["takeup_survey"].cast(pl.Int64).to_list()
    row = _overall(
        measure_impact(*_trial(accepts, arm), START, END, Settings()), "treatment vs control"
    )
    assert row["lift_low"] < 0 < row["lift_high"]
    assert row["relative_low"] < 0 < row["relative_high"]
    assert not row["significant"]


def test_impact_of_arms_vs_control_and_vs_the_champion_exact():
    # 10 control, 10 treatment, 10 random; offer a (value 10) and b (value 1).
    arm = ["control"] * 10 + ["treatment"] * 10 + ["random"] * 10
    accepts, _, people, assigned = _trial([0] * 30, arm)
    rows = [(i, "a") for i in (1, 11, 12, 13, 14, 21, 22)] + [(i, "b") for i in range(11, 21)]
    accepts = pl.DataFrame(
        {
            "subscriber_id": [r[0] for r in rows],
            "offer_id": [r[1] for r in rows],
            "ts": [TS(2026, 3, 3)] * len(rows),
            "event": ["accept"] * len(rows),
        }
    )
    offers = pl.DataFrame({"offer_id": ["a", "b"], "category": ["x", "y"], "value": [10.0, 1.0]})
    impact = measure_impact(
        accepts, offers, people, assigned, START, END, Settings(lift_min_accepts=3)
    )
    assert set(impact["comparison"]) == {
        "treatment vs control", "random vs control", "random vs treatment"
    }  # fmt: skip
    champion = _overall(impact, "treatment vs control")
    assert (champion["arm_accepts"], champion["baseline_accepts"]) == (14, 1)
    assert champion["arm_mean"] == pytest.approx(1.4) and champion[
        "baseline_mean"
    ] == pytest.approx(0.1)
    value = _overall(impact, "treatment vs control", "value")
    assert value["arm_mean"] == pytest.approx(5.0) and value["baseline_mean"] == pytest.approx(1.0)
    assert value["relative_lift"] == pytest.approx(4.0)
    random_vs_champion = _overall(impact, "random vs treatment")
    assert random_vs_champion["lift"] == pytest.approx(0.2 - 1.4)
    # Offer b: 10 accepts vs none in control or random; offer a in random vs control: 2 vs 1
    # events, under lift_min_accepts = 3 together: flagged, never significant.
    by_offer = impact.filter(pl.col("level") == "offer", pl.col("metric") == "accepts")
    few = by_offer.filter(pl.col("comparison") == "random vs control", pl.col("key") == "a")
    assert few["few_events"].to_list() == [True] and few["q_value"].to_list() == [None]
    assert not few["significant"].item()
    # Without arms or a champion there is nothing to compare.
    assert comparisons({"control"}) == [] and comparisons({"treatment"}) == []


def test_benjamini_hochberg_q_values_by_hand():
    q = benjamini_hochberg(pl.Series("p", [0.01, 0.04, None, 0.03, 0.2]))
    assert q.to_list()[2] is None
    assert [q[i] for i in (0, 1, 3, 4)] == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2])


def test_arm_subscribers_are_not_counted_as_treatment_in_lift():
    arm = ["control"] * 3 + ["treatment"] * 3 + ["propensity_only"] * 3
    accepts, offers, people, assigned = _trial([0, 0, 0, 1, 0, 0, 1, 1, 1], arm)
    lift = measure_lift(accepts, offers, people, assigned, START, END)
    row = lift.filter(pl.col("level") == "offer").row(0, named=True)
    assert (row["treatment_n"], row["treatment_accepts"], row["control_n"]) == (3, 1, 3)
