"""Contact fatigue and the weekly cap, on hand-made events where every answer is known."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from mia.contracts import check_tables
from mia.settings import Settings
from offers.eligibility import eligible_pairs, explain
from offers.fatigue import lookback_days
from tests.test_eligibility import CATALOG_SCHEMA, _catalog_row

AS_OF = dt.date(2026, 3, 20)  # the night of 2026-03-21
SETTINGS = Settings(fatigue_ignores=3, fatigue_window_days=10, fatigue_suppress_days=5)


def catalog(**columns) -> pl.DataFrame:
    rows = [
        _catalog_row("film", category="video"),
        _catalog_row("series", category="video"),
        _catalog_row("game", category="games"),
    ]
    frame = pl.DataFrame(rows, schema=CATALOG_SCHEMA)
    return frame.with_columns(
        pl.Series(name, values, dtype=pl.Int64) for name, values in columns.items()
    )


def people(ids=(1,)) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "subscriber_id": list(ids),
            "region": "moscow",
            "device_os": "android",
            "activation_date": dt.date(2025, 1, 1),
        }
    )


def events(*rows: tuple[int, str, dt.date, str]) -> pl.DataFrame:
    """(subscriber, offer, day, event) rows; each at noon, a response a minute later."""
    return pl.DataFrame(
        {
            "subscriber_id": [row[0] for row in rows],
            "offer_id": [row[1] for row in rows],
            "ts": [
                dt.datetime.combine(row[2], dt.time(12, 1 if row[3] != "impression" else 0))
                for row in rows
            ],
            "event": [row[3] for row in rows],
        },
        schema={"subscriber_id": pl.Int64, "offer_id": pl.String, "ts": pl.Datetime("us"),
                "event": pl.String},
    )  # fmt: skip


def shown(subscriber: int, offer: str, *days: int) -> list[tuple[int, str, dt.date, str]]:
    return [(subscriber, offer, dt.date(2026, 3, day), "impression") for day in days]


def offers_for(recent, settings=SETTINGS, frame=None, ids=(1,)) -> dict[int, list[str]]:
    pairs = eligible_pairs(
        people(ids), frame if frame is not None else catalog(), None, None, AS_OF,
        recent_events=recent, settings=settings,
    )  # fmt: skip
    return {i: pairs.filter(pl.col("subscriber_id") == i)["offer_id"].to_list() for i in ids}


def test_three_ignored_impressions_within_the_window_suppress_the_offer():
    # Ignored on the 14th, 17th and 20th: 3 within 10 days, triggered on the 20th, suppressed
    # through the 25th.
    assert offers_for(events(*shown(1, "film", 14, 17, 20)))[1] == ["game", "series"]
    # Two are not enough; nor are three spread over more than 10 days (the 10th to the 20th).
    assert offers_for(events(*shown(1, "film", 17, 20)))[1] == ["film", "game", "series"]
    assert offers_for(events(*shown(1, "film", 10, 14, 20)))[1] == ["film", "game", "series"]
    within = events(*shown(1, "film", 11, 14, 20))  # the 11th to the 20th: within 10 days
    assert offers_for(within)[1] == ["game", "series"]
    # Rules pass without recent events (callers that do not pass them).
    assert offers_for(None)[1] == ["film", "game", "series"]


def test_suppression_lasts_exactly_fatigue_suppress_days():
    # Triggered on the 16th: suppressed for the nights 17..21; the night of the 21st is the last.
    triggered = events(*shown(1, "film", 12, 14, 16))
    assert offers_for(triggered)[1] == ["game", "series"]
    # Triggered on the 15th: nights 16..20 suppressed, the night of the 21st is free again.
    earlier = events(*shown(1, "film", 11, 13, 15))
    assert offers_for(earlier)[1] == ["film", "game", "series"]


def test_a_response_after_an_impression_means_it_was_not_ignored():
    answered = events(*shown(1, "film", 14, 17, 20), (1, "film", dt.date(2026, 3, 17), "dismiss"))
    # The dismiss on the 17th answers the impressions of the 14th and 17th: one ignored left.
    assert offers_for(answered)[1] == ["film", "game", "series"]
    # A click is not an answer.
    clicked = events(*shown(1, "film", 14, 17, 20), (1, "film", dt.date(2026, 3, 20), "click"))
    assert offers_for(clicked)[1] == ["game", "series"]


def test_events_after_as_of_are_not_read():
    late = events(*shown(1, "film", 14, 17), (1, "film", dt.date(2026, 3, 21), "impression"))
    assert offers_for(late)[1] == ["film", "game", "series"]


def test_category_scope_counts_and_suppresses_the_whole_category():
    mixed = events(*shown(1, "film", 15, 18), *shown(1, "series", 20))
    assert offers_for(mixed)[1] == ["film", "game", "series"]
    by_category = SETTINGS.replace(fatigue_scope="category")
    assert offers_for(mixed, by_category)[1] == ["game"]


def test_catalog_columns_override_the_settings_per_offer():
    frame = catalog(
        fatigue_ignores=[2, None, 0],
        fatigue_window_days=[None, None, None],
        fatigue_suppress_days=[None, None, None],
    )
    recent = events(*shown(1, "film", 19, 20), *shown(1, "game", 15, 16, 17, 18, 19, 20))
    # film: 2 ignores are enough; game: 0 turns the rule off for it.
    assert offers_for(recent, frame=frame)[1] == ["game", "series"]
    # Without the optional columns (an operator's catalog), the settings hold for every offer.
    assert offers_for(recent)[1] == ["film", "series"]
    assert lookback_days(frame, SETTINGS) == 15
    assert lookback_days(catalog(fatigue_window_days=[40, None, None]), SETTINGS) == 45


def test_fatigue_off_and_subscribers_apart():
    recent = events(*shown(1, "film", 18, 19, 20), *shown(2, "game", 20))
    off = SETTINGS.replace(fatigue_ignores=0)
    assert offers_for(recent, off, ids=(1, 2)) == {
        1: ["film", "game", "series"],
        2: ["film", "game", "series"],
    }
    assert offers_for(recent, ids=(1, 2)) == {1: ["game", "series"], 2: ["film", "game", "series"]}


def test_weekly_cap_counts_impressions_of_the_last_seven_days():
    recent = events(*shown(1, "film", 13), *shown(1, "game", 14, 20), *shown(2, "game", 14, 20))
    capped = SETTINGS.replace(weekly_contact_cap=2, fatigue_ignores=0)
    # Subscriber 1: the 14th and 20th count (the 13th is 8 days back); 2 >= cap: nothing tonight.
    assert offers_for(recent, capped, ids=(1, 2)) == {1: [], 2: []}
    assert offers_for(recent, capped.replace(weekly_contact_cap=3), ids=(1, 2)) == {
        1: ["film", "game", "series"],
        2: ["film", "game", "series"],
    }


def test_explain_names_the_contact_rules():
    recent = events(*shown(1, "film", 18, 19, 20))
    table = explain(
        1, people(), catalog(), None, None, AS_OF, recent_events=recent,
        settings=SETTINGS.replace(weekly_contact_cap=3),
    )  # fmt: skip
    failed = dict(zip(table["offer_id"], table["failed_rules"].to_list(), strict=True))
    assert failed == {
        "film": ["fatigue", "weekly_cap"],
        "game": ["weekly_cap"],
        "series": ["weekly_cap"],
    }


def test_bad_fatigue_columns_and_settings_are_refused():
    frame = catalog(fatigue_ignores=[-1, None, None])
    _, violations = check_tables({"catalog": frame}, AS_OF)
    assert any(
        v.table == "catalog" and v.column == "fatigue_ignores" and "non_negative" in v.rule
        for v in violations
    ), violations
    with pytest.raises(Exception, match="fatigue_scope"):
        Settings(fatigue_scope="household")
    with pytest.raises(Exception, match="weekly_contact_cap == -1, must be >= 0"):
        Settings(weekly_contact_cap=-1)
