"""The feature catalog: every snapshot column declared once, with its meaning in plain words.

The snapshot (`features.snapshot`) produces exactly these columns, in this order, for the tables
present; `features/README.md` is generated from this module (`python -m features.catalog`).
Offer categories come from the data (`snapshot_categories`): the holdings and offer-history
families have one set of columns per category, named after it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

import polars as pl

from mia.schema import (
    APP_SCREENS,
    DEVICE_OS,
    PAYMENT_METHODS,
    SNAPSHOT_DATE,
    SUBSCRIBER_ID,
    TABLES,
    TRANSFER_KINDS,
)

DEFAULT_WINDOWS: tuple[int, ...] = (7, 30, 90)

# Families, in snapshot column order.
PROFILE = "profile"
USAGE = "usage"
SPEND = "spend"
TOPUPS = "topups"
BALANCE = "balance"
APP = "app"
TRANSFERS = "transfers"
HOLDINGS = "holdings"
OFFERS = "offers"
FAMILIES = (PROFILE, USAGE, SPEND, TOPUPS, BALANCE, APP, TRANSFERS, HOLDINGS, OFFERS)

COUNT = pl.Int32
AMOUNT = pl.Float64
FLAG = pl.Int8
DEVICE_OS_TYPE = pl.Enum(DEVICE_OS)
OFFER_COUNTS = ("impressions", "clicks", "accepts", "dismisses")

# Usage kind -> (unit of its quantity, the quantity, one event, an active day) in plain words
USAGE_WORDS: dict[str, tuple[str, str, str, str]] = {
    "voice_out": ("minutes", "minutes of outgoing calls", "outgoing calls", "outgoing calls"),
    "voice_in": ("minutes", "minutes of incoming calls", "incoming calls", "incoming calls"),
    "sms_out": ("messages", "text messages sent", "text messages sent", "text messages sent"),
    "data": ("megabytes", "megabytes of mobile data used", "data sessions", "mobile data use"),
    "roaming_voice": ("minutes", "minutes of roaming calls", "roaming calls", "roaming calls"),
    "roaming_data": (
        "megabytes",
        "megabytes of roaming data used",
        "roaming data sessions",
        "roaming data use",
    ),
}
TRANSFER_WORDS: dict[str, str] = {
    "gift_out": "gifted to others",
    "gift_in": "received as gifts",
    "market_sell": "sold on the gigabyte market",
    "market_buy": "bought on the gigabyte market",
}
PROFILE_WORDS: dict[str, str] = {
    "region": "home region",
    "device_os": "device operating system",
    "device_vendor": "device manufacturer",
    "tariff_id": "current tariff plan",
}


@dataclass(frozen=True)
class Feature:
    """One snapshot column: its name, family, window in days, meaning, source table and type."""

    name: str
    family: str
    window: int | None
    description: str
    source_table: str
    categorical: bool = False
    dtype: pl.DataType = AMOUNT


def usage_unit(kind: str) -> str:
    """Unit of a usage kind's quantity: minutes, messages or megabytes."""
    return USAGE_WORDS[kind][0]


def trend_windows(windows: Sequence[int]) -> tuple[int, int] | None:
    """(short, long) windows compared by trend features; None with a single window."""
    return (windows[0], windows[1]) if len(windows) > 1 else None


def offer_windows(windows: Sequence[int]) -> tuple[int, ...]:
    """Windows of offer-history features: the longer windows (all but the shortest)."""
    return tuple(windows[1:]) or tuple(windows)


def check_windows(windows: Iterable[int]) -> tuple[int, ...]:
    """Windows sorted and deduplicated; raises ValueError unless they are positive day counts."""
    result = tuple(sorted(set(windows)))
    if not result or any(not isinstance(w, int) or w < 1 for w in result):
        raise ValueError(f"windows == {tuple(windows)!r}, must be positive whole day counts.")
    return result


def _in_last(window: int) -> str:
    return "in the last day" if window == 1 else f"in the last {window} days"


def _profile() -> list[Feature]:
    features = [
        Feature(
            "tenure_days",
            PROFILE,
            None,
            "days since the line was activated",
            "subscribers",
            dtype=COUNT,
        )
    ]
    for column, words in PROFILE_WORDS.items():
        dtype = DEVICE_OS_TYPE if column == "device_os" else pl.Categorical
        features.append(Feature(column, PROFILE, None, words, "subscribers", True, dtype))
    return features


def _usage(windows: Sequence[int]) -> list[Feature]:
    features = []
    for kind, (unit, quantity, events, active) in USAGE_WORDS.items():
        for w in windows:
            features.append(
                Feature(f"{kind}_{unit}_{w}d", USAGE, w, f"{quantity} {_in_last(w)}", "usage")
            )
        for w in windows:
            features.append(
                Feature(
                    f"{kind}_events_{w}d",
                    USAGE,
                    w,
                    f"number of {events} {_in_last(w)}",
                    "usage",
                    dtype=COUNT,
                )
            )
        for w in windows:
            features.append(
                Feature(
                    f"{kind}_active_days_{w}d",
                    USAGE,
                    w,
                    f"days with {active} {_in_last(w)}",
                    "usage",
                    dtype=COUNT,
                )
            )
        if (pair := trend_windows(windows)) is not None:
            short, long = pair
            features.append(
                Feature(
                    f"{kind}_trend_{short}d_vs_{long}d",
                    USAGE,
                    short,
                    f"average daily {quantity} {_in_last(short)} relative to the last {long} days "
                    "(1 = steady; empty when none in the longer window)",
                    "usage",
                )
            )
    for w in windows:
        features.append(
            Feature(
                f"usage_active_days_{w}d",
                USAGE,
                w,
                f"days with any network use {_in_last(w)}",
                "usage",
                dtype=COUNT,
            )
        )
    return features


def _spend(windows: Sequence[int]) -> list[Feature]:
    return [
        Feature(f"charges_{w}d", SPEND, w, f"amount charged for usage {_in_last(w)}", "usage")
        for w in windows
    ]


def _topups(windows: Sequence[int]) -> list[Feature]:
    longest = windows[-1]
    features = [
        Feature(f"topup_amount_{w}d", TOPUPS, w, f"amount topped up {_in_last(w)}", "payments")
        for w in windows
    ]
    features += [
        Feature(
            f"topups_{w}d", TOPUPS, w, f"number of top-ups {_in_last(w)}", "payments", dtype=COUNT
        )
        for w in windows
    ]
    features.append(
        Feature(
            "days_since_last_topup",
            TOPUPS,
            longest,
            f"days since the last top-up (empty when none in the last {longest} days)",
            "payments",
            dtype=COUNT,
        )
    )
    for method in PAYMENT_METHODS:
        words = method.replace("_", " ")
        features.append(
            Feature(
                f"{method}_topup_share_{longest}d",
                TOPUPS,
                longest,
                f"share of top-ups paid by {words} {_in_last(longest)}",
                "payments",
            )
        )
    features += [
        Feature(
            f"promised_payments_{w}d",
            TOPUPS,
            w,
            f"promised payments taken {_in_last(w)}",
            "payments",
            dtype=COUNT,
        )
        for w in windows
    ]
    features.append(
        Feature(
            "days_since_last_promised_payment",
            TOPUPS,
            longest,
            f"days since the last promised payment (empty when none in the last {longest} days)",
            "payments",
            dtype=COUNT,
        )
    )
    return features


def _balance(windows: Sequence[int]) -> list[Feature]:
    return [
        Feature(
            f"balance_proxy_{w}d",
            BALANCE,
            w,
            f"amount topped up minus amount charged {_in_last(w)}",
            "payments",
        )
        for w in windows
    ]


def _app(windows: Sequence[int]) -> list[Feature]:
    longest = windows[-1]
    features = [
        Feature(
            f"app_screen_views_{w}d",
            APP,
            w,
            f"app screens opened {_in_last(w)}",
            "app_events",
            dtype=COUNT,
        )
        for w in windows
    ]
    features += [
        Feature(
            f"app_active_days_{w}d",
            APP,
            w,
            f"days the app was opened {_in_last(w)}",
            "app_events",
            dtype=COUNT,
        )
        for w in windows
    ]
    features.append(
        Feature(
            "days_since_last_app_visit",
            APP,
            longest,
            f"days since the app was last opened (empty when not in the last {longest} days)",
            "app_events",
            dtype=COUNT,
        )
    )
    for screen in APP_SCREENS:
        features += [
            Feature(
                f"{screen}_screen_views_{w}d",
                APP,
                w,
                f"views of the {screen} screen of the app {_in_last(w)}",
                "app_events",
                dtype=COUNT,
            )
            for w in windows
        ]
    return features


def _transfers(windows: Sequence[int]) -> list[Feature]:
    features = []
    for kind in TRANSFER_KINDS:
        words = TRANSFER_WORDS[kind]
        features += [
            Feature(
                f"{kind}_gigabytes_{w}d",
                TRANSFERS,
                w,
                f"gigabytes {words} {_in_last(w)}",
                "transfers",
            )
            for w in windows
        ]
        features += [
            Feature(
                f"{kind}_transfers_{w}d",
                TRANSFERS,
                w,
                f"number of transfers of gigabytes {words} {_in_last(w)}",
                "transfers",
                dtype=COUNT,
            )
            for w in windows
        ]
    for kind in ("market_sell", "market_buy"):
        verb = "earned selling" if kind == "market_sell" else "spent buying"
        features += [
            Feature(
                f"{kind}_amount_{w}d",
                TRANSFERS,
                w,
                f"money {verb} gigabytes on the market {_in_last(w)}",
                "transfers",
            )
            for w in windows
        ]
    return features


def _holdings(categories: Sequence[str]) -> list[Feature]:
    features = [
        Feature(
            "products_held",
            HOLDINGS,
            None,
            "number of products and services held",
            "holdings",
            dtype=COUNT,
        )
    ]
    for category in categories:
        words = category.replace("_", " ")
        features.append(
            Feature(
                f"holds_{category}",
                HOLDINGS,
                None,
                f"holds a {words} product (1 = yes)",
                "holdings",
                dtype=FLAG,
            )
        )
    return features


def _offers(windows: Sequence[int], categories: Sequence[str]) -> list[Feature]:
    longest = windows[-1]
    features = []
    for category in categories:
        words = category.replace("_", " ")
        for count in OFFER_COUNTS:
            what = {
                "impressions": f"times {words} offers were shown",
                "clicks": f"clicks on {words} offers",
                "accepts": f"{words} offers accepted",
                "dismisses": f"{words} offers dismissed",
            }[count]
            features += [
                Feature(
                    f"{category}_{count}_{w}d",
                    OFFERS,
                    w,
                    f"{what} {_in_last(w)}",
                    "offer_events",
                    dtype=COUNT,
                )
                for w in offer_windows(windows)
            ]
        features.append(
            Feature(
                f"{category}_days_since_last_accept",
                OFFERS,
                longest,
                f"days since a {words} offer was last accepted "
                f"(empty when none in the last {longest} days)",
                "offer_events",
                dtype=COUNT,
            )
        )
    return features


@cache
def build_catalog(
    windows: tuple[int, ...] = DEFAULT_WINDOWS, categories: tuple[str, ...] = ()
) -> tuple[Feature, ...]:
    """Every snapshot feature for the given windows and offer categories, in column order."""
    windows = check_windows(windows)
    features = (
        _profile()
        + _usage(windows)
        + _spend(windows)
        + _topups(windows)
        + _balance(windows)
        + _app(windows)
        + _transfers(windows)
        + _holdings(categories)
        + _offers(windows, categories)
    )
    names = [feature.name for feature in features]
    assert len(names) == len(set(names)), "feature names must be unique"
    return tuple(features)


# The features that do not depend on the offer categories (default windows).
FEATURES: tuple[Feature, ...] = build_catalog(DEFAULT_WINDOWS)
# Stands for a category name where the catalog is documented rather than built for data.
CATEGORY_PLACEHOLDER = "<category>"


def snapshot_categories(*category_columns: pl.Series) -> tuple[str, ...]:
    """The offer categories a snapshot has features for: every name in the given columns (the
    catalog in force), sorted; there is no fixed list."""
    names: set[str] = set()
    for column in category_columns:
        names.update(column.cast(pl.String).drop_nulls().unique().to_list())
    return tuple(sorted(names))


def features_for_tables(
    available_tables: Iterable[str],
    windows: Sequence[int] = DEFAULT_WINDOWS,
    categories: Sequence[str] = (),
) -> tuple[Feature, ...]:
    """Features whose source table is among `available_tables`, in snapshot column order."""
    available = set(available_tables)
    catalog = build_catalog(tuple(windows), tuple(categories))
    return tuple(f for f in catalog if f.source_table in available)


def feature_names(
    available_tables: Iterable[str] | None = None,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    categories: Sequence[str] = (),
) -> list[str]:
    """Names of the features (all, or those computable from `available_tables`)."""
    tables = TABLES if available_tables is None else available_tables
    return [feature.name for feature in features_for_tables(tables, windows, categories)]


def categorical_features(
    available_tables: Iterable[str] | None = None, windows: Sequence[int] = DEFAULT_WINDOWS
) -> list[str]:
    """Names of the categorical features (typed pl.Categorical or pl.Enum in the snapshot)."""
    tables = TABLES if available_tables is None else available_tables
    return [f.name for f in features_for_tables(tables, windows) if f.categorical]


def snapshot_schema(
    available_tables: Iterable[str],
    windows: Sequence[int] = DEFAULT_WINDOWS,
    categories: Sequence[str] = (),
) -> dict[str, pl.DataType]:
    """Column -> dtype of a snapshot built from `available_tables` (keys first)."""
    schema: dict[str, pl.DataType] = {SUBSCRIBER_ID: pl.Int64, SNAPSHOT_DATE: pl.Date}
    features = features_for_tables(available_tables, windows, categories)
    schema.update({f.name: f.dtype for f in features})
    return schema


_WINDOW = re.compile(r"_(\d+)d(?:_|$)")
_COUNTS = "|".join(OFFER_COUNTS)
_CATEGORY_FEATURE = re.compile(
    rf"^holds_(.+)$|^(.+)_(?:{_COUNTS})_\d+d$|^(.+)_days_since_last_accept$"
)


def is_category_feature(name: str) -> bool:
    """True for a feature named after an offer category (holdings flags, offer history): such
    columns come and go with the categories of the data."""
    return _CATEGORY_FEATURE.match(name) is not None


def describe_feature(name: str) -> str:
    """A feature's meaning in plain words, e.g. 'text messages sent in the last 30 days'."""
    match = _CATEGORY_FEATURE.match(name)
    categories = tuple(group for group in match.groups() if group) if match else ()
    found = {f.name: f for f in build_catalog(DEFAULT_WINDOWS, categories)}.get(name)
    if found is None:
        windows = tuple(int(value) for value in _WINDOW.findall(name))
        if windows and all(w >= 1 for w in windows):
            # A catalog built with other windows: with one shorter and with one longer window.
            for extra in (min(windows) - 1, max(windows) + 1):
                if extra >= 1 and found is None:
                    catalog = build_catalog(check_windows((*windows, extra)), categories)
                    found = {feature.name: feature for feature in catalog}.get(name)
    if found is None:
        return name.replace("_", " ")
    return found.description


def _type_name(feature: Feature) -> str:
    if feature.categorical:
        return "category"
    return {COUNT: "count", FLAG: "flag", AMOUNT: "number"}.get(feature.dtype, str(feature.dtype))


def render_markdown(windows: Sequence[int] = DEFAULT_WINDOWS) -> str:
    """The feature catalog as the Markdown of features/README.md."""
    features = build_catalog(tuple(windows), (CATEGORY_PLACEHOLDER,))
    lines = [
        "# Features",
        "",
        "Generated by `python -m features.catalog > features/README.md`; do not edit by hand.",
        "",
        "One snapshot per day (`data/features/snapshot=YYYY-MM-DD/`) holds one row per subscriber",
        f"of that day's subscribers table, sorted by `{SUBSCRIBER_ID}`, with the columns",
        f"`{SUBSCRIBER_ID}`, `{SNAPSHOT_DATE}` and then the features below, in this order.",
        f"Windows (default {', '.join(str(w) for w in windows)} days) end with the snapshot day",
        "and include it; nothing after the end of the snapshot day is read.",
        "",
        "Counts and amounts are 0 when nothing happened; `days since` features are empty when",
        "the event did not happen in the longest window.",
        "",
        "Windows are summed from daily aggregates (`data/daily/<table>/date=YYYY-MM-DD/`, one",
        "row per subscriber and day, and per category for offer events), built once when a day",
        "is ingested. They keep amounts in fixed point (thousandths of the unit, columns ending",
        "in `_milli`), so sums are exact whatever the order of the rows.",
        "",
        "## Which features need which table",
        "",
        "A family is present when its source table is delivered (required tables always are);",
        "when an optional table is missing, its features are left out of the snapshot.",
        "",
        "| family | source table | required | features |",
        "|---|---|---|---|",
    ]
    for family in FAMILIES:
        members = [f for f in features if f.family == family]
        source = members[0].source_table
        required = "yes" if TABLES[source].required else "no"
        lines.append(f"| {family} | `{source}` | {required} | {len(members)} |")
    lines += [
        "",
        "Holdings flags also read the `catalog` (which product belongs to which category), and",
        "offer history maps offers to categories through it.",
        "",
        f"Features named with `{CATEGORY_PLACEHOLDER}` exist once per offer category, named after",
        "it. The categories come from the data, never from a fixed list: those of the catalog in",
        "force on the snapshot day, sorted by name.",
        "The holdings and offers counts above are for one category. A model trained on snapshots",
        "with other categories reads the features it lacks as missing.",
        "",
        "## Catalog",
        "",
        "| feature | family | window | type | source table | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for f in features:
        window = f"{f.window}d" if f.window is not None else ""
        lines.append(
            f"| `{f.name}` | {f.family} | {window} | {_type_name(f)} | `{f.source_table}` "
            f"| {f.description} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(render_markdown())
