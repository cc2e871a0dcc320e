"""Which offers each subscriber may receive on the night after `as_of`.

Every rule is data from the catalog. The rules live in one tuple, `RULES`; `eligible_pairs` keeps
the subscriber x offer pairs that pass all of them and `explain` reports which of them failed, both
from the same candidate frame, so the two can never disagree.

Dates: the offers are shown on the night `as_of + 1`, and every rule is judged for that night
with what is known at the end of `as_of`. An offer must be valid on the night; tenure is counted in
whole days from `activation_date` to the night; a product is "held" when the holdings state
delivered on `as_of` shows a holding covering the night (start_date <= as_of + 1 <= end_date, end
inclusive, empty end = open), so a product ending on `as_of` can be offered again and one starting
on the night is already held; the cooldown counts responses (dismiss, accept) up to the end of
`as_of`, over the whole history: `history` is the offer state as of `as_of`
(features.offer_state), or raw offer events, folded into one.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl

from features.offer_state import fold_offer_events, is_offer_state, last_column
from mia.contracts import with_absent_columns
from mia.errors import InputError
from mia.schema import (
    CATEGORY,
    EVENT,
    LIST_SEPARATOR,
    OFFER_ID,
    PRODUCT_ID,
    SUBSCRIBER_ID,
    TS,
)
from mia.settings import Settings
from offers.fatigue import FATIGUED_UNTIL, WEEK_CONTACTS, fatigued_pairs, weekly_contacts

logger = logging.getLogger(__name__)

Frame = pl.DataFrame | pl.LazyFrame

ELIGIBLE = "eligible"
FAILED_RULES = "failed_rules"
RESPONSE_EVENTS = ("dismiss", "accept")

SUBSCRIBER_COLUMNS = (SUBSCRIBER_ID, "region", "device_os", "activation_date")
CATALOG_COLUMNS = (
    OFFER_ID,
    CATEGORY,
    "start_date",
    "end_date",
    PRODUCT_ID,
    "regions",
    "device_os",
    "min_tenure_days",
    "requires_product",
    "excludes_product",
    "cooldown_days",
)
HOLDINGS_COLUMNS = (SUBSCRIBER_ID, PRODUCT_ID, "start_date", "end_date")
OFFER_EVENTS_COLUMNS = (SUBSCRIBER_ID, OFFER_ID, TS, EVENT)

# Internal columns of the candidate frame that the rules read.
_NIGHT = "_night"
_OFFER_OS = "_offer_device_os"
_HOLDS_PRODUCT = "_holds_product"
_HOLDS_REQUIRED = "_holds_required"
_HOLDS_EXCLUDED = "_holds_excluded"
_LAST_RESPONSE = "_last_response"
_CONTACT_CAP = "_contact_cap"  # weekly_contact_cap, null when off
_OFFER_INDEX = "_offer_index"  # position of offer_id in sorted order


class OffersInputError(InputError):
    """An input frame of the offers layer breaks a rule (missing column, bad value)."""


@dataclass(frozen=True)
class Rule:
    """One eligibility rule: a name, its meaning, and a test that is true when a pair passes."""

    name: str
    description: str
    passes: pl.Expr
    offer_level: bool = False  # reads catalog columns only: can be applied before pairing


def _parsed_list(cell: str) -> pl.Expr:
    """A list cell as a list of trimmed items; null when empty (computed once per offer)."""
    items = pl.col(cell).str.split(LIST_SEPARATOR).list.eval(pl.element().str.strip_chars())
    items = items.list.eval(pl.element().filter(pl.element() != ""))
    return pl.when(items.list.len() > 0).then(items).alias(cell)


def _listed(cell: str, value: str) -> pl.Expr:
    """True when the (parsed) list cell is empty, meaning any value, or contains the value."""
    return pl.col(cell).is_null() | pl.col(cell).list.contains(pl.col(value), nulls_equal=False)


def _days_since(column: str) -> pl.Expr:
    return (pl.col(_NIGHT) - pl.col(column)).dt.total_days()


RULES: tuple[Rule, ...] = (
    Rule(
        "active",
        "the offer is valid on the night (start_date <= as_of + 1 <= end_date; empty end = open)",
        (pl.col("start_date") <= pl.col(_NIGHT))
        & (pl.col("end_date").is_null() | (pl.col("end_date") >= pl.col(_NIGHT))),
        offer_level=True,
    ),
    Rule(
        "region",
        "the subscriber's region is listed in regions (empty = any region)",
        _listed("regions", "region"),
    ),
    Rule(
        "device_os",
        "the subscriber's device OS is listed in device_os (empty = any OS)",
        _listed(_OFFER_OS, "device_os"),
    ),
    Rule(
        "min_tenure",
        "days from activation_date to the night (as_of + 1) >= min_tenure_days",
        _days_since("activation_date") >= pl.col("min_tenure_days"),
    ),
    Rule(
        "requires_product",
        "the subscriber holds requires_product on the night (empty = no requirement)",
        pl.col("requires_product").is_null() | pl.col(_HOLDS_REQUIRED),
    ),
    Rule(
        "excludes_product",
        "the subscriber does not hold excludes_product on the night",
        pl.col("excludes_product").is_null() | ~pl.col(_HOLDS_EXCLUDED),
    ),
    Rule(
        "already_held",
        "the subscriber does not already hold the offer's product_id on the night",
        ~pl.col(_HOLDS_PRODUCT),
    ),
    Rule(
        "cooldown",
        "more than cooldown_days since the last dismiss or accept of this offer (up to as_of)",
        pl.col(_LAST_RESPONSE).is_null() | (_days_since(_LAST_RESPONSE) > pl.col("cooldown_days")),
    ),
    Rule(
        "fatigue",
        "not suppressed after fatigue_ignores ignored impressions within fatigue_window_days "
        "(suppressed for fatigue_suppress_days; see offers.fatigue)",
        pl.col(FATIGUED_UNTIL).is_null() | (pl.col(_NIGHT) > pl.col(FATIGUED_UNTIL)),
    ),
    Rule(
        "weekly_cap",
        "fewer than weekly_contact_cap impressions in the 7 days up to as_of (0 = no cap)",
        pl.col(_CONTACT_CAP).is_null() | (pl.col(WEEK_CONTACTS) < pl.col(_CONTACT_CAP)),
    ),
)
RULE_NAMES: tuple[str, ...] = tuple(rule.name for rule in RULES)


def lazy(frame: Frame) -> pl.LazyFrame:
    """The frame as a LazyFrame (DataFrames are wrapped, LazyFrames returned unchanged)."""
    return frame.lazy() if isinstance(frame, pl.DataFrame) else frame


def require_columns(frame: Frame, table: str, columns: Iterable[str]) -> None:
    """Raise OffersInputError naming the table and the columns it lacks."""
    present = set(lazy(frame).collect_schema().names())
    missing = [column for column in columns if column not in present]
    if missing:
        raise OffersInputError(
            f"{table}: missing column(s) {missing}; rule: required by the offers layer "
            f"(present: {sorted(present)})."
        )


def held_products(holdings: Frame | None, night: dt.date) -> pl.LazyFrame:
    """Distinct (subscriber_id, product_id) pairs with a holding covering `night`."""
    if holdings is None:
        return pl.LazyFrame(schema={SUBSCRIBER_ID: pl.Int64, PRODUCT_ID: pl.String})
    holdings = with_absent_columns(lazy(holdings), "holdings")  # no end_date: still held
    require_columns(holdings, "holdings", HOLDINGS_COLUMNS)
    return (
        lazy(holdings)
        .filter(
            (pl.col("start_date") <= night)
            & (pl.col("end_date").is_null() | (pl.col("end_date") >= night))
        )
        .select(SUBSCRIBER_ID, PRODUCT_ID)
        .unique()
    )


def last_responses(history: Frame | None, as_of: dt.date) -> pl.LazyFrame:
    """Date of the last dismiss or accept per (subscriber_id, offer_id), up to the end of as_of.

    `history` is the offer state as of `as_of` (features.offer_state, the whole history), or raw
    offer events, folded into one here.
    """
    schema = {SUBSCRIBER_ID: pl.Int64, OFFER_ID: pl.String, _LAST_RESPONSE: pl.Date}
    if history is None:
        return pl.LazyFrame(schema=schema)
    if not is_offer_state(history):
        require_columns(history, "offer_events", OFFER_EVENTS_COLUMNS)
        history = fold_offer_events(None, history, as_of)
    last = pl.max_horizontal(last_column(event) for event in RESPONSE_EVENTS)
    return (
        lazy(history)
        .select(SUBSCRIBER_ID, OFFER_ID, last.dt.date().alias(_LAST_RESPONSE))
        .filter(pl.col(_LAST_RESPONSE).is_not_null())
    )


def _pair_facts(
    offers: pl.LazyFrame, held: pl.LazyFrame, responses: pl.LazyFrame, fatigued: pl.LazyFrame
) -> pl.LazyFrame:
    """Per (subscriber_id, offer index), only where something is known: held flags, the last
    response and the end of a fatigue suppression. Built from the small holdings and events
    tables, then joined to the pairs once."""
    flags = (
        (PRODUCT_ID, _HOLDS_PRODUCT),
        ("requires_product", _HOLDS_REQUIRED),
        ("excludes_product", _HOLDS_EXCLUDED),
    )
    parts = [
        held.join(
            offers.select(_OFFER_INDEX, pl.col(column).alias(PRODUCT_ID)), on=PRODUCT_ID
        ).select(SUBSCRIBER_ID, _OFFER_INDEX, pl.lit(True).alias(flag))
        for column, flag in flags
    ]
    parts += [
        facts.join(offers.select(OFFER_ID, _OFFER_INDEX), on=OFFER_ID).select(
            SUBSCRIBER_ID, _OFFER_INDEX, column
        )
        for facts, column in ((responses, _LAST_RESPONSE), (fatigued, FATIGUED_UNTIL))
    ]
    return (
        pl.concat(parts, how="diagonal")
        .group_by(SUBSCRIBER_ID, _OFFER_INDEX)
        .agg(
            *(pl.col(flag).any() for _, flag in flags),
            pl.col(_LAST_RESPONSE).max(),
            pl.col(FATIGUED_UNTIL).max(),
        )
    )


def _contact_facts(
    recent_events: Frame | None, catalog: pl.DataFrame, settings: Settings, as_of: dt.date
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(fatigued pairs, weekly contacts per subscriber) from the recent offer events; empty
    without them, so the two rules pass."""
    if recent_events is None:
        return (
            pl.LazyFrame(
                schema={SUBSCRIBER_ID: pl.Int64, OFFER_ID: pl.String, FATIGUED_UNTIL: pl.Date}
            ),
            pl.LazyFrame(schema={SUBSCRIBER_ID: pl.Int64, WEEK_CONTACTS: pl.Int64}),
        )
    require_columns(recent_events, "offer_events", OFFER_EVENTS_COLUMNS)
    events = lazy(recent_events)
    return fatigued_pairs(events, catalog, settings, as_of), weekly_contacts(events, as_of)


def _candidates(
    subscribers: Frame,
    catalog: Frame,
    holdings: Frame | None,
    history: Frame | None,
    as_of: dt.date,
    offer_filter: pl.Expr | None = None,
    recent_events: Frame | None = None,
    settings: Settings | None = None,
) -> pl.LazyFrame:
    """Subscriber x offer pairs with every column the rules read (shared by both paths)."""
    settings = settings or Settings()
    require_columns(subscribers, "subscribers", SUBSCRIBER_COLUMNS)
    # An optional column the catalog leaves out reads as empty: any region, no product, ...
    catalog = with_absent_columns(lazy(catalog), "catalog")
    require_columns(catalog, "catalog", CATALOG_COLUMNS)
    night = as_of + dt.timedelta(days=1)
    offers = (
        lazy(catalog)
        .select(CATALOG_COLUMNS)
        .rename({"device_os": _OFFER_OS})
        .with_columns(
            pl.lit(night, dtype=pl.Date).alias(_NIGHT),
            pl.col(OFFER_ID).rank("ordinal").cast(pl.UInt32).alias(_OFFER_INDEX),
            _parsed_list("regions"),
            _parsed_list(_OFFER_OS),
        )
    )
    if offer_filter is not None:
        offers = offers.filter(offer_filter)
    offers = offers.collect().lazy()  # small; reused by the cross join and the facts
    fatigued, contacts = _contact_facts(
        recent_events, with_absent_columns(lazy(catalog), "catalog").collect(), settings, as_of
    )
    cap = settings.weekly_contact_cap or None
    people = (
        lazy(subscribers)
        .select(SUBSCRIBER_COLUMNS)
        .join(contacts, on=SUBSCRIBER_ID, how="left")
        .with_columns(
            pl.col(WEEK_CONTACTS).fill_null(0),
            pl.lit(cap, dtype=pl.Int64).alias(_CONTACT_CAP),
        )
    )
    facts = _pair_facts(
        offers, held_products(holdings, night), last_responses(history, as_of), fatigued
    )
    return (
        people.join(offers, how="cross")
        .join(facts, on=[SUBSCRIBER_ID, _OFFER_INDEX], how="left")
        .with_columns(pl.col(_HOLDS_PRODUCT, _HOLDS_REQUIRED, _HOLDS_EXCLUDED).fill_null(False))
    )


def _passes(rule: Rule) -> pl.Expr:
    return rule.passes.fill_null(False)


def eligible_pairs(
    subscribers: Frame,
    catalog: Frame,
    holdings: Frame | None,
    history: Frame | None,
    as_of: dt.date,
    recent_events: Frame | None = None,
    settings: Settings | None = None,
    ordered: bool = True,
) -> pl.DataFrame:
    """(subscriber_id, offer_id) pairs passing every rule in RULES for the night after as_of.

    `recent_events` (raw offer events of the last `offers.fatigue.lookback_days` days up to
    as_of) feed the fatigue and weekly-cap rules, with the limits of `settings` (default
    settings when None); without them both rules pass. The pairs are sorted by subscriber and
    offer unless `ordered` is False (then in no set order: for callers that order them anyway).
    """
    offer_rules = [_passes(rule) for rule in RULES if rule.offer_level]
    pair_rules = [_passes(rule) for rule in RULES if not rule.offer_level]
    pairs = _candidates(
        subscribers,
        catalog,
        holdings,
        history,
        as_of,
        offer_filter=pl.all_horizontal(offer_rules),
        recent_events=recent_events,
        settings=settings,
    ).filter(pl.all_horizontal(pair_rules))
    if ordered:
        pairs = pairs.sort(SUBSCRIBER_ID, _OFFER_INDEX)
    pairs = pairs.select(SUBSCRIBER_ID, OFFER_ID).collect(engine="streaming")
    logger.info("eligibility as of %s: %d subscriber x offer pairs", as_of, pairs.height)
    return pairs


def explain(
    subscriber_id: int,
    subscribers: Frame,
    catalog: Frame,
    holdings: Frame | None,
    history: Frame | None,
    as_of: dt.date,
    recent_events: Frame | None = None,
    settings: Settings | None = None,
) -> pl.DataFrame:
    """Per catalog offer: whether `subscriber_id` is eligible and which rules removed it
    (`recent_events` and `settings` as for `eligible_pairs`)."""
    require_columns(subscribers, "subscribers", SUBSCRIBER_COLUMNS)
    person = lazy(subscribers).filter(pl.col(SUBSCRIBER_ID) == subscriber_id)
    if person.select(pl.len()).collect().item() == 0:
        raise OffersInputError(
            f"subscribers: subscriber_id {subscriber_id!r} not found; rule: explain needs a "
            "subscriber present in the subscribers table."
        )
    failed = [pl.when(~_passes(rule)).then(pl.lit(rule.name)) for rule in RULES]
    return (
        _candidates(
            person,
            catalog,
            holdings,
            history,
            as_of,
            recent_events=recent_events.filter(pl.col(SUBSCRIBER_ID) == subscriber_id)
            if isinstance(recent_events, pl.DataFrame | pl.LazyFrame)
            else None,
            settings=settings,
        )
        .select(
            OFFER_ID,
            CATEGORY,
            pl.concat_list(failed).list.drop_nulls().alias(FAILED_RULES),
        )
        .with_columns((pl.col(FAILED_RULES).list.len() == 0).alias(ELIGIBLE))
        .select(OFFER_ID, CATEGORY, ELIGIBLE, FAILED_RULES)
        .sort(OFFER_ID)
        .collect()
    )
