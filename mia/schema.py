"""Names that cross modules: tables, columns, allowed values and the offer category rule.

Every table of the input contract is described once here; `mia.contracts` enforces it,
`mia.simulate` produces it, and the feature, model and offer layers read column names from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

# Column names shared across layers.
SUBSCRIBER_ID = "subscriber_id"
# Stored next to subscriber_id in raw and daily partitions, which are sorted by it (mia.lake).
SHARD_KEY = "_shard_key"
OFFER_ID = "offer_id"
PRODUCT_ID = "product_id"
CATEGORY = "category"
TS = "ts"
DATE = "date"
SNAPSHOT_DATE = "snapshot_date"
EVENT = "event"
KIND = "kind"
QUANTITY = "quantity"
P_ACCEPT = "p_accept"
VALUE = "value"
EXPECTED_VALUE = "expected_value"
LABEL = "label"
GROUP = "group"
CONFIDENCE = "confidence"  # implicit-feedback weight of a subscriber x offer interaction
CF_SCORE = "cf_score"  # collaborative-filtering score of a subscriber x offer pair
COVERED = "covered"
RANK = "rank"
REASONS = "reasons"
MODEL_VERSION = "model_version"
RUN_ID = "run_id"
GENERATED_AT = "generated_at"
PROPENSITY = "propensity"  # probability with which a policy chose the offer it shows
ITEM_ID = "item_id"  # a consumed item: an offer_id of the catalog, or content outside it

USAGE_KINDS = ("voice_out", "voice_in", "sms_out", "data", "roaming_voice", "roaming_data")
OFFER_EVENTS = ("impression", "click", "accept", "dismiss")
PAYMENT_METHODS = ("card", "cash", "bank_transfer", "autopay", "promised_payment")
TRANSFER_KINDS = ("gift_out", "gift_in", "market_sell", "market_buy")
APP_SCREENS = (
    "home",
    "balance",
    "tariffs",
    "addons",
    "roaming",
    "market",
    "loyalty",
    "entertainment",
    "services",
    "support",
)
DEVICE_OS = ("android", "ios", "other")

# Offer categories are whatever the catalog says; a name must match this pattern (lowercase
# letters, digits, "_" and "-", at most 64 characters), so it is safe as a file, column and
# feature name. There is no fixed list: models, ranking and reports read the set from the data.
CATEGORY_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,63}$"

# Optional catalog columns overriding the contact-fatigue settings per offer (offers.fatigue).
FATIGUE_COLUMNS = ("fatigue_ignores", "fatigue_window_days", "fatigue_suppress_days")

# Separator of list-valued catalog cells such as `regions` ("moscow|spb"); empty means "any".
LIST_SEPARATOR = "|"


@dataclass(frozen=True)
class Column:
    """One column of an input table: name, polars type, nullability and allowed values.

    `nullable`: a row may leave the cell empty. `optional`: a delivery may leave the column out
    altogether; it is then read as empty in every row (so an optional column is nullable).
    """

    name: str
    dtype: pl.DataType
    nullable: bool = False
    optional: bool = False
    allowed: tuple[str, ...] | None = None
    pattern: str | None = None  # a regular expression every value must match in full
    non_negative: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if self.optional and not self.nullable:
            raise ValueError(f"column {self.name!r}: an optional column must be nullable")


@dataclass(frozen=True)
class Table:
    """One input table of the contract."""

    name: str
    required: bool
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    event_time: str | None = None  # column that must not lie after the ingest date
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def column_names(self) -> list[str]:
        """Names of the contract columns, in contract order."""
        return [column.name for column in self.columns]

    @property
    def polars_schema(self) -> dict[str, pl.DataType]:
        """Column name -> polars dtype, in contract order."""
        return {column.name: column.dtype for column in self.columns}


_ID = pl.Int64
_TS = pl.Datetime("us")

TABLES: dict[str, Table] = {
    table.name: table
    for table in (
        Table(
            "subscribers",
            required=True,
            key=(SUBSCRIBER_ID,),
            description="One row per subscriber who uses the app, as of the delivery date.",
            columns=(
                Column(SUBSCRIBER_ID, _ID, description="Stable subscriber identifier."),
                Column("region", pl.String, description="Home region code."),
                Column("device_os", pl.String, allowed=DEVICE_OS, description="Device OS."),
                Column("device_vendor", pl.String, description="Device manufacturer."),
                Column("tariff_id", pl.String, description="Current tariff plan."),
                Column("activation_date", pl.Date, description="Date the line was activated."),
            ),
        ),
        Table(
            "usage",
            required=True,
            event_time=TS,
            description="Network usage events (CDR-like), one row per event.",
            columns=(
                Column(SUBSCRIBER_ID, _ID),
                Column(TS, _TS, description="Event time (UTC, naive)."),
                Column(KIND, pl.String, allowed=USAGE_KINDS, description="Kind of usage."),
                Column(
                    QUANTITY,
                    pl.Float64,
                    non_negative=True,
                    description="Minutes (voice), messages (sms) or megabytes (data).",
                ),
                Column("charge", pl.Float64, non_negative=True, description="Amount charged."),
            ),
        ),
        Table(
            "catalog",
            required=True,
            key=(OFFER_ID,),
            description="Offers that can be shown, with their eligibility rules as data.",
            columns=(
                Column(OFFER_ID, pl.String, description="Stable offer identifier."),
                Column(
                    CATEGORY,
                    pl.String,
                    pattern=CATEGORY_PATTERN,
                    description="Offer category: any name matching the category pattern.",
                ),
                Column("title", pl.String, description="Title shown to the subscriber."),
                Column(VALUE, pl.Float64, non_negative=True, description="Value of one accept."),
                Column("start_date", pl.Date, description="First day the offer is active."),
                Column(
                    "end_date",
                    pl.Date,
                    nullable=True,
                    optional=True,
                    description="Last active day; empty means open-ended.",
                ),
                Column(
                    PRODUCT_ID,
                    pl.String,
                    nullable=True,
                    optional=True,
                    description="Product granted by accepting; empty means none is tracked.",
                ),
                Column(
                    "regions",
                    pl.String,
                    nullable=True,
                    optional=True,
                    description="Allowed regions separated by '|'; empty means any.",
                ),
                Column(
                    "device_os",
                    pl.String,
                    nullable=True,
                    optional=True,
                    description="Allowed device OS separated by '|'; empty means any.",
                ),
                Column(
                    "min_tenure_days",
                    pl.Int64,
                    non_negative=True,
                    description="Minimum days since activation.",
                ),
                Column(
                    "requires_product",
                    pl.String,
                    nullable=True,
                    optional=True,
                    description="Product the subscriber must hold.",
                ),
                Column(
                    "excludes_product",
                    pl.String,
                    nullable=True,
                    optional=True,
                    description="Product the subscriber must not hold.",
                ),
                Column(
                    "cooldown_days",
                    pl.Int64,
                    non_negative=True,
                    description="Days after a dismiss or accept before showing again.",
                ),
                Column(
                    "capacity",
                    pl.Int64,
                    nullable=True,
                    optional=True,
                    non_negative=True,
                    description="Maximum audience size per night; empty means unlimited.",
                ),
                *(
                    Column(
                        name,
                        pl.Int64,
                        nullable=True,
                        optional=True,
                        non_negative=True,
                        description=f"Overrides the {name} setting for this offer; empty: the "
                        "setting.",
                    )
                    for name in FATIGUE_COLUMNS
                ),
            ),
        ),
        Table(
            "offer_events",
            required=True,
            event_time=TS,
            description="Offer impressions and responses in the app.",
            columns=(
                Column(SUBSCRIBER_ID, _ID),
                Column(OFFER_ID, pl.String),
                Column(TS, _TS),
                Column(EVENT, pl.String, allowed=OFFER_EVENTS),
                Column(
                    PROPENSITY,
                    pl.Float64,
                    nullable=True,
                    optional=True,
                    description="Impressions: the probability with which the channel chose the "
                    "shown offer (for off-policy evaluation); empty on other events.",
                ),
            ),
        ),
        Table(
            "payments",
            required=False,
            event_time=TS,
            description="Balance top-ups and payments.",
            columns=(
                Column(SUBSCRIBER_ID, _ID),
                Column(TS, _TS),
                Column("amount", pl.Float64, non_negative=True),
                Column("method", pl.String, allowed=PAYMENT_METHODS),
            ),
        ),
        Table(
            "app_events",
            required=False,
            event_time=TS,
            description="Screens opened in the app.",
            columns=(
                Column(SUBSCRIBER_ID, _ID),
                Column(TS, _TS),
                Column("screen", pl.String, allowed=APP_SCREENS),
            ),
        ),
        Table(
            "transfers",
            required=False,
            event_time=TS,
            description="Gigabyte gifts and gigabyte-market trades.",
            columns=(
                Column(SUBSCRIBER_ID, _ID),
                Column(TS, _TS),
                Column(KIND, pl.String, allowed=TRANSFER_KINDS),
                Column("gb", pl.Float64, non_negative=True),
                Column("amount", pl.Float64, non_negative=True),
            ),
        ),
        Table(
            "consumption",
            required=False,
            event_time=TS,
            description="What subscribers watch, listen to, read, play or buy on their own, "
            "without an offer: one row per consumption.",
            columns=(
                Column(SUBSCRIBER_ID, _ID),
                Column(
                    ITEM_ID,
                    pl.String,
                    description="An offer_id of the catalog (that offer), or any other item "
                    "identifier (content outside the catalog: it shapes tastes only).",
                ),
                Column(TS, _TS),
                Column(
                    KIND,
                    pl.String,
                    pattern=CATEGORY_PATTERN,
                    description="What the subscriber did (watch, listen, play, buy, ...): any "
                    "name matching the category pattern.",
                ),
                Column(
                    QUANTITY,
                    pl.Float64,
                    nullable=True,
                    optional=True,
                    non_negative=True,
                    description="How much (minutes, plays, pages, amount); empty means one.",
                ),
            ),
        ),
        Table(
            "holdings",
            required=False,
            key=(SUBSCRIBER_ID, PRODUCT_ID, "start_date"),
            description="Products and services each subscriber holds (full state each day).",
            columns=(
                Column(SUBSCRIBER_ID, _ID),
                Column(PRODUCT_ID, pl.String),
                Column("start_date", pl.Date),
                Column("end_date", pl.Date, nullable=True, optional=True),
            ),
        ),
    )
}

REQUIRED_TABLES = tuple(name for name, table in TABLES.items() if table.required)
OPTIONAL_TABLES = tuple(name for name, table in TABLES.items() if not table.required)
# Tables delivered as the full current state each day (the rest are that day's events).
STATE_TABLES = ("subscribers", "catalog", "holdings")
EVENT_TABLES = tuple(name for name in TABLES if name not in STATE_TABLES)

# Cells holding LIST_SEPARATOR-separated lists, per table, with the values an item may take
# (None: any non-empty value).
LIST_COLUMNS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "catalog": {"regions": None, "device_os": DEVICE_OS},
}
# (start, end) date columns per table: an end, when present, must not precede its start.
DATE_RANGES: dict[str, tuple[tuple[str, str], ...]] = {
    "catalog": (("start_date", "end_date"),),
    "holdings": (("start_date", "end_date"),),
}
# The most of each usage kind one subscriber can plausibly use in one day, in the contract's
# units, with the unit in words: a higher daily total is a warning (seconds delivered as minutes,
# bytes as megabytes), not a refusal.
USAGE_DAILY_LIMITS: dict[str, tuple[float, str]] = {
    "voice_out": (24 * 60, "minutes (24 h)"),
    "voice_in": (24 * 60, "minutes (24 h)"),
    "roaming_voice": (24 * 60, "minutes (24 h)"),
    "sms_out": (10_000, "messages"),
    "data": (1_000_000, "megabytes (1 TB)"),
    "roaming_data": (1_000_000, "megabytes (1 TB)"),
}
# Probability columns per table: a value, when present, must lie in (0, 1].
PROBABILITY_COLUMNS: dict[str, tuple[str, ...]] = {
    "offer_events": (PROPENSITY,),
}
# Date columns that must not lie after the delivery date.
NOT_AFTER_DELIVERY: dict[str, tuple[str, ...]] = {
    "subscribers": ("activation_date",),
}
