"""Audience quality against known true probabilities."""

from __future__ import annotations

import polars as pl
import pytest

from offers.evaluate import audience_capture, capture_summary


def _truth() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "subscriber_id": [1, 2, 3, 4, 1, 2],
            "offer_id": ["a", "a", "a", "a", "b", "b"],
            "p_accept": [0.1, 0.4, 0.3, 0.2, 0.5, 0.1],
        }
    )


def _eligible() -> pl.DataFrame:
    return _truth().select("subscriber_id", "offer_id")


def test_capture_compares_with_the_best_audience_of_the_same_size():
    audience = pl.DataFrame(
        {
            "subscriber_id": [3, 1, 4, 2],
            "offer_id": ["a", "a", "a", "b"],
            "rank": [1, 2, 3, 1],
            "group": ["treatment", "treatment", "control", "treatment"],
        }
    )
    per_offer = audience_capture(audience, _eligible(), _truth())
    assert per_offer.to_dicts() == [
        # offer a: treatment rows 3 and 1 (0.3 + 0.1) vs best two, 2 and 3 (0.4 + 0.3)
        {
            "offer_id": "a",
            "audience_size": 2,
            "expected_accepts": pytest.approx(0.4),
            "oracle_expected_accepts": pytest.approx(0.7),
            "capture": pytest.approx(0.4 / 0.7),
        },
        {
            "offer_id": "b",
            "audience_size": 1,
            "expected_accepts": pytest.approx(0.1),
            "oracle_expected_accepts": pytest.approx(0.5),
            "capture": pytest.approx(0.2),
        },
    ]
    summary = capture_summary(per_offer)
    assert summary["audience.capture"] == pytest.approx(0.5 / 1.2)
    assert summary["audience.rows"] == 3


def test_share_cuts_each_audience_to_its_best_ranked_rows():
    audience = pl.DataFrame(
        {
            "subscriber_id": [2, 3, 1, 4],
            "offer_id": ["a", "a", "a", "a"],
            "rank": [1, 2, 3, 4],
            "group": ["treatment"] * 4,
        }
    )
    # A quarter of a pool of 4 is one subscriber: the best ranked, who is also the oracle's best.
    per_offer = audience_capture(audience, _eligible(), _truth(), share=0.25)
    assert per_offer["audience_size"].to_list() == [1]
    assert per_offer["capture"].to_list() == [pytest.approx(1.0)]
