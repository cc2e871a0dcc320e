"""Lift of treatment vs control on a tiny world computed by hand."""

from __future__ import annotations

import datetime as dt
import math

import polars as pl
import pytest

from offers.eligibility import OffersInputError
from offers.lift import LIFT_COLUMNS, Z_VALUE, measure_lift, organic_baseline

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
