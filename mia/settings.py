"""Typed settings: defaults, then an optional `mia.toml`, then `MIA_*` env vars, then overrides.

Every setting has a type and a rule, checked whenever a `Settings` is built: directly, by
`load_settings` or by `.replace`. Types are strict (5.7 or true is not a whole number, nan is not a
share); text from environment variables and command-line flags is parsed into the type first, so
MIA_TOP_K=5 is 5 and MIA_TOP_K=5.7 is refused. Errors name the setting, the value, the rule and
where the value came from.

The model is a pydantic `BaseModel`, not a pydantic-settings `BaseSettings`: a `BaseSettings`
reads `os.environ` whenever it is built, so `Settings()` in a notebook or a test would depend on
the shell (a hidden input); its sources merge before validating, so an error cannot say whether a
bad value came from the file or from a variable; it ignores unknown `MIA_*` variables and a key
beside a `[mia]` table; and strict types refuse the text every variable is. The loader below is
the few lines pydantic-settings would otherwise be configured into.
"""

from __future__ import annotations

import difflib
import functools
import os
import tomllib
import zoneinfo
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from mia.errors import InputError

ENV_PREFIX = "MIA_"
CONFIG_FILE = "mia.toml"
CONFIG_VARIABLE = ENV_PREFIX + "CONFIG"
# MIA_* variables that are not settings (the settings file; progress bars when piped).
OTHER_VARIABLES = frozenset({CONFIG_VARIABLE, ENV_PREFIX + "PROGRESS"})
# Fixed rather than a multiple of this machine's cores, so that a settings file valid on a laptop
# is valid on the server; far above any machine Mia runs on, far below a typo such as 100000.
DEFAULT_DATA_DIR = Path("data")
MLFLOW_FOLDER = "mlruns"  # the MLflow store's folder inside a data root
MAX_THREADS = 1024
MAX_SHARDS = 65536
MAX_SEED = 2**31 - 1  # LightGBM's seed is a 32-bit signed int
MAX_ARMS_SHARE = 0.5  # the impact arms together; the champion keeps at least half
CRON_ALIASES = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# Cron fields: name, lowest and highest value, names allowed instead of numbers (first = lowest).
CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, WEEKDAYS),
)

AtLeastOne = Annotated[int, Field(ge=1)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]
ArmShare = Annotated[float, Field(ge=0.0, le=MAX_ARMS_SHARE)]
Text = Annotated[str, Field(min_length=1)]
# Paths arrive as text from every source: the one type that converts.
AnyPath = Annotated[Path, Field(strict=False)]


class SettingsError(InputError):
    """A setting has a value outside its rule, or a settings source cannot be read."""


def mlflow_store_defaults(data_dir: Path | str) -> dict[str, Any]:
    """The MLflow settings of a data root when none are set: a store inside the root."""
    store = Path(data_dir) / MLFLOW_FOLDER
    return {
        "mlflow_uri": f"sqlite:///{store / 'mlflow.db'}",
        "mlflow_artifacts": store / "artifacts",
    }


class Settings(BaseModel):
    """Every tunable value of the pipeline, passed down explicitly from the entry point."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", allow_inf_nan=False)

    data_dir: AnyPath = DEFAULT_DATA_DIR
    # The MLflow store: by default inside the data root (mlflow_store_defaults), so that each
    # root keeps its own models; set both to share one store on purpose.
    mlflow_uri: Text
    mlflow_artifacts: AnyPath
    # Whether models registered from other data roots may score this one (a store shared on
    # purpose); otherwise another root's champion is refused (models.registry).
    shared_registry: bool = False
    experiment: Text = "mia"
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 7
    # Features and labels
    windows: Annotated[tuple[AtLeastOne, ...], Field(strict=False, min_length=1)] = (7, 30, 90)
    horizon_days: AtLeastOne = 7
    train_snapshots: Annotated[int, Field(ge=3)] = 13
    snapshot_step_days: AtLeastOne = 7
    # Events older than this many days before the delivery day are refused or warned.
    event_max_age_days: AtLeastOne = 400
    # Models
    num_threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] = 2
    min_positives: AtLeastOne = 30
    gate_tolerance: Share = 0.01
    # Scoring runs the trees as compiled native code (models.compiled), cached beside the MLflow
    # artifacts; false, or lleaves missing, scores with LightGBM's own predict (same results).
    compiled_trees: bool = True
    retrain_interval_days: AtLeastOne = 7
    als_factors: AtLeastOne = 32
    als_regularization: Annotated[float, Field(ge=0.0)] = 0.05
    als_iterations: AtLeastOne = 15
    # Confidence ALS gives one consumption of an item (optional table consumption); 0 ignores it.
    consumption_weight: Annotated[float, Field(ge=0.0, le=100.0)] = 1.0
    # Tastes learned from accepted and unanswered offers (models.taste); 0 leaves them out.
    taste_factors: Annotated[int, Field(ge=0, le=64)] = 4
    # Labelled weeks the blend is fitted on, each with the input models (propensity, ALS, tastes)
    # trained again as of that week, so training takes about this many times as long. One week of
    # sparse impressions holds a few labelled rows per offer of a large catalog: trees fitted on it
    # followed each offer's noisy past acceptance rate and put the same few items in most lists
    # (content world, 6,000 subscribers: 3 weeks raised top-1 capture 0.478 -> 0.493, content
    # precision@5 0.044 -> 0.059 and cut the most common item's share of lists 0.57 -> 0.31;
    # telco top-1 0.760 -> 0.767; `benchmarks.quality`).
    blend_windows: Annotated[int, Field(ge=1, le=8)] = 3
    # Labelled subscriber x category rows a propensity fit holds at most. Above it negatives
    # are sampled and weighted by the inverse rate, every positive kept; validation rows above a
    # quarter of it are sampled uniformly (`models.sampling`). A row of ~400 features takes
    # about 5 KB as frame and matrix; 100,000 subscribers x 13 weeks are about 2M rows (a 15 GB
    # peak before the cap), so the cap, not the subscribers, bounds a large retrain's memory.
    max_train_rows: Annotated[int, Field(ge=1000)] = 1_000_000
    # Offers
    top_k: AtLeastOne = 5
    # Published ranks 1..reason_ranks get reasons in words (SHAP, the costly part); 0 = every rank.
    reason_ranks: Annotated[int, Field(ge=0)] = 2
    max_per_category: AtLeastOne = 2
    min_probability: Share = 0.01
    control_share: Annotated[float, Field(ge=0.0, le=0.9)] = 0.10
    coverage: Share = 1.0
    group_salt: Text = "mia-groups-v1"
    category_weights: dict[str, Annotated[float, Field(ge=0.0)]] = Field(default_factory=dict)
    diversity_positions: Annotated[int, Field(ge=0)] = 5  # first positions with distinct categories
    exploration_share: Share = 0.05  # subscribers whose last slot explores another category
    # Offers shown fewer times than this are explored by Thompson sampling (offers.exploration),
    # from a Beta prior worth this many impressions at their category's acceptance rate.
    exploration_min_impressions: Annotated[int, Field(ge=0)] = 200
    exploration_prior_strength: Annotated[float, Field(gt=0.0)] = 20.0
    # Impact arms: persistent shares of the non-control subscribers contacted by a plain policy
    # (a random eligible offer; p_accept alone), so the champion's gain over them is measured.
    random_arm_share: ArmShare = 0.0
    propensity_only_arm_share: ArmShare = 0.0
    # Lift: comparisons with fewer accept events on either side are flagged, not tested.
    lift_min_accepts: AtLeastOne = 10
    lift_fdr: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05  # Benjamini-Hochberg level
    # Contact fatigue (offers.fatigue): N ignored impressions within D days suppress M days.
    fatigue_ignores: Annotated[int, Field(ge=0)] = 3  # 0 turns the rule off
    fatigue_window_days: AtLeastOne = 14
    fatigue_suppress_days: AtLeastOne = 14
    fatigue_scope: Literal["offer", "category"] = "offer"
    weekly_contact_cap: Annotated[int, Field(ge=0)] = 0  # impressions per 7 days; 0 = no cap
    uplift_min_control: AtLeastOne = 500  # control subscribers needed to rank an audience by uplift
    uplift_min_control_accepts: AtLeastOne = 10  # control accepts of the category, likewise
    # Scale
    n_shards: Annotated[int, Field(ge=1, le=MAX_SHARDS)] = 1
    # Shards scored at a time in a local run (threads): a shard's single-threaded parts leave a
    # core idle that another shard fills, at the memory of one more shard. Dask runs ignore it.
    score_workers: Annotated[int, Field(ge=1, le=MAX_THREADS)] = 2
    dask_address: str | None = None
    # With dask_address: categories with at least this many training rows train on the cluster.
    dask_train_rows: AtLeastOne = 1_000_000
    # Published versions kept per night, the current one included (older ones are removed).
    keep_night_versions: AtLeastOne = 3
    # Schedule
    schedule_cron: str = "0 3 * * *"
    timezone: str = "UTC"

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise SettingsError(_describe_errors(error)) from error

    @model_validator(mode="before")
    @classmethod
    def _store_in_data_root(cls, values: Any) -> Any:
        """Unset (or None) MLflow settings default to a store inside the data root."""
        if not isinstance(values, dict):
            return values
        data_dir = values.get("data_dir", DEFAULT_DATA_DIR)
        if not isinstance(data_dir, str | os.PathLike):
            data_dir = DEFAULT_DATA_DIR  # refused as data_dir; the store defaults regardless
        defaults = mlflow_store_defaults(data_dir)
        return {**values, **{k: v for k, v in defaults.items() if values.get(k) is None}}

    @field_validator("propensity_only_arm_share")
    @classmethod
    def _arms_leave_a_champion(cls, share: float, info: ValidationInfo) -> float:
        total = share + info.data.get("random_arm_share", 0.0)
        if total > MAX_ARMS_SHARE:
            raise ValueError(
                f"with random_arm_share, must sum to <= {MAX_ARMS_SHARE} (the arms would "
                f"take {total:g} of the contacted subscribers)"
            )
        return share

    @field_validator("windows")
    @classmethod
    def _distinct_windows(cls, windows: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(windows)) != len(windows):
            raise ValueError("must be distinct day counts (each window names feature columns)")
        return windows

    @field_validator("group_salt", "mlflow_uri", "experiment", "dask_address")
    @classmethod
    def _not_blank(cls, text: str | None) -> str | None:
        if text is not None and not text.strip():
            raise ValueError("must not be blank")
        return text

    @field_validator("category_weights")
    @classmethod
    def _named_categories(cls, weights: dict[str, float]) -> dict[str, float]:
        if any(not name.strip() for name in weights):
            raise ValueError("category names must not be blank")
        return weights

    @field_validator("schedule_cron")
    @classmethod
    def _valid_cron(cls, expression: str) -> str:
        problem = cron_problem(expression)
        if problem:
            raise ValueError(f"must be a cron schedule such as '0 3 * * *': {problem}")
        return expression

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, name: str) -> str:
        if name not in _timezones():
            close = difflib.get_close_matches(name, _timezones(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"must be an IANA time zone such as 'Europe/Berlin'{hint}")
        return name

    def replace(self, **changes: Any) -> Settings:
        """A copy with some values changed (validated again).

        A new `data_dir` takes along an MLflow store that was at the old root's default place.
        """
        values = {name: getattr(self, name) for name in FIELDS}
        if "data_dir" in changes:
            for name, default in mlflow_store_defaults(self.data_dir).items():
                if values[name] == default:
                    del values[name]
        return Settings(**{**values, **changes})

    def category_weight(self, category: str) -> float:
        """Weight of a category in expected value; 1 unless configured."""
        return float(self.category_weights.get(category, 1.0))

    def check_categories(self, categories: Iterable[str], where: str = "the catalog") -> None:
        """Refuse `category_weights` that name a category `categories` (the catalog's) lacks."""
        known = sorted({category for category in categories if category is not None})
        unknown = sorted(set(self.category_weights) - set(known))
        if unknown:
            hints = "".join(
                f" ({name!r}: did you mean {close[0]!r}?)"
                for name in unknown
                if (close := difflib.get_close_matches(name, known, n=1))
            )
            raise SettingsError(
                f"category_weights names categories that {where} does not have: {unknown}"
                f"{hints}; its categories: {known}."
            )


FIELDS: tuple[str, ...] = tuple(Settings.model_fields)


@functools.cache
def _timezones() -> frozenset[str]:
    # The same list Prefect checks a schedule's time zone against.
    return frozenset(zoneinfo.available_timezones())


def cron_problem(expression: str) -> str | None:
    """What is wrong with a five-field cron expression (or an @daily-style alias); None if valid.

    Minute, hour, day of month, month and day of week, each `*`, a number, a range `a-b`, a
    step `*/n` or `a-b/n`, or a comma list of them; months and days of week also by name.
    """
    if expression.strip().lower() in CRON_ALIASES:
        return None
    parts = expression.split()
    if len(parts) != len(CRON_FIELDS):
        return f"{len(parts)} fields, must be 5 (minute hour day-of-month month day-of-week)"
    for part, (what, low, high, names) in zip(parts, CRON_FIELDS, strict=True):
        for item in part.split(","):
            span, slash, step = item.partition("/")
            if slash and not (step.isdigit() and int(step) >= 1):
                return f"{what} {item!r}: the step after '/' must be a whole number >= 1"
            if span == "*":
                continue
            bounds = [_cron_value(bound, low, names) for bound in span.split("-")]
            out_of_range = any(value is None or not low <= value <= high for value in bounds)
            if len(bounds) > 2 or out_of_range:
                return f"{what} {item!r} is not a value or range within {low}-{high}"
            if len(bounds) == 2 and bounds[0] > bounds[1]:
                return f"{what} {item!r}: a range must go from low to high"
    return None


def _cron_value(text: str, low: int, names: tuple[str, ...]) -> int | None:
    if text.isdigit():
        return int(text)
    if text.lower() in names:
        return low + names.index(text.lower())
    return None


def _describe_errors(error: ValidationError, sources: Mapping[str, str] | None = None) -> str:
    """One line per refused setting: name, value, rule and, where known, the source."""
    lines: dict[str, str] = {}
    for detail in error.errors(include_url=False):
        name = str(detail["loc"][0]) if detail["loc"] else "settings"
        if name in lines:  # one line per setting: its first broken rule
            continue
        origin = (sources or {}).get(name)
        where = f" (from {origin})" if origin else ""
        if detail["type"] == "extra_forbidden":
            lines[name] = f"unknown setting {name!r}{where}{_closest(name, FIELDS)}"
            continue
        path = name + "".join(
            f"[{part!r}]" if isinstance(part, str) else f"[{part}]" for part in detail["loc"][1:]
        )
        rule = _rule(detail)
        lines[name] = f"{path} == {detail['input']!r}{where}, {rule}" + _stop(rule)
    return "\n".join(lines.values())


def _stop(sentence: str) -> str:
    return "" if sentence.endswith(("?", ".")) else "."


def _rule(detail: ErrorDetails) -> str:
    """The broken rule of a pydantic error, in the words of the rest of Mia's messages."""
    context = detail.get("ctx") or {}
    kind = detail["type"]
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "must be a whole number (not a fraction, not true/false)"
    if kind in ("float_type", "float_parsing"):
        return "must be a number (not true/false)"
    if kind == "finite_number":
        return "must be a finite number (not nan or inf)"
    bounds = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">"}
    if kind in bounds:
        return f"must be {bounds[kind]} {next(iter(context.values()))}"
    if kind == "string_type":
        return "must be text"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_short":
        return "must have at least one item"
    if kind == "value_error":
        return str(context.get("error", detail["msg"]))
    message = detail["msg"]
    return message[:1].lower() + message[1:]


def _closest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"; did you mean {close[0]!r}?" if close else "; see the Settings section of README.md."


def _parse_text(name: str, text: str, source: str) -> Any:
    """The value of setting `name` from text (an environment variable or a command-line flag).

    Lists are comma-separated (`7,30,90`), mappings `name=value` pairs (`roaming=1.5,gift=0.5`).
    Only the type is parsed here; the rules are checked when the Settings is built.
    """
    annotation = Settings.model_fields[name].annotation
    origin = get_origin(annotation)
    try:
        if origin is tuple:
            item = get_args(annotation)[0]
            return tuple(_from_text(item, part) for part in _comma_items(text))
        if origin is dict:
            pairs = [part.partition("=") for part in _comma_items(text)]
            if any(not equals for _, equals, _ in pairs):
                raise SettingsError(
                    f"{name} == {text!r} (from {source}), must be name=value pairs "
                    "separated by commas, e.g. roaming=1.5,gift=0.5."
                )
            value_type = get_args(annotation)[1]
            return {key.strip(): _from_text(value_type, value) for key, _, value in pairs}
        return _from_text(annotation, text)
    except ValidationError as error:
        detail = error.errors(include_url=False)[0]
        raise SettingsError(f"{name} == {text!r} (from {source}), {_rule(detail)}.") from None


def _is_text(annotation: Any) -> bool:
    """Whether a setting's type is text (optionally None): its text needs no parsing."""
    return annotation is str or set(get_args(annotation)) == {str, type(None)}


def _comma_items(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _from_text(annotation: Any, text: str) -> Any:
    if _is_text(annotation):
        return text
    return TypeAdapter(annotation).validate_strings(text, strict=True)


def _read_config_file(path: Path) -> dict[str, Any]:
    """The settings of a TOML file: its `[mia]` table, or its top-level keys when it has none."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"settings file {path} is not valid TOML: {error}.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"settings file {path} cannot be read: {error}.") from None
    section = document.get("mia")
    if not isinstance(section, dict):
        return document
    outside = sorted(key for key in document if key != "mia")
    if outside:
        raise SettingsError(
            f"settings file {path}: {outside} outside the [mia] table would be ignored; "
            "put every setting under [mia]."
        )
    return section


def _config_path(config_file: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The settings file to read: the one named, else MIA_CONFIG, else ./mia.toml if present."""
    if config_file is not None:
        named, source = Path(config_file), ""
    elif environ.get(CONFIG_VARIABLE):
        named, source = Path(environ[CONFIG_VARIABLE]), f"{CONFIG_VARIABLE}: "
    else:
        default = Path(CONFIG_FILE)
        return default if default.exists() else None
    if not named.is_file():
        raise SettingsError(f"{source}settings file {named} does not exist.")
    return named


def _environment_values(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Settings from `MIA_<NAME>` variables (empty ones count as unset), and their sources."""
    variables = {ENV_PREFIX + name.upper(): name for name in FIELDS}
    unknown = sorted(
        variable
        for variable in environ
        if variable.startswith(ENV_PREFIX)
        and variable not in variables
        and variable not in OTHER_VARIABLES
    )
    if unknown:
        known = [*variables, *OTHER_VARIABLES]
        raise SettingsError(
            "\n".join(
                f"unknown environment variable {variable}{_closest(variable, known)}"
                for variable in unknown
            )
        )
    values, sources = {}, {}
    for variable, name in variables.items():
        text = environ.get(variable)
        if text:
            values[name] = _parse_text(name, text, variable)
            sources[name] = variable
    return values, sources


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from defaults, `mia.toml` (or `config_file`), `MIA_*` variables and overrides.

    Overrides that are None are not set; text overrides (command-line flags) are parsed like
    environment variables. Raises SettingsError naming the setting, value, rule and source.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    path = _config_path(config_file, environ)
    if path is not None:
        from_file = _read_config_file(path)
        values.update(from_file)
        sources.update(dict.fromkeys(from_file, str(path)))

    from_environment, environment_sources = _environment_values(environ)
    values.update(from_environment)
    sources.update(environment_sources)

    for name, value in overrides.items():
        if value is None:
            continue
        source = f"argument {name}"
        if name not in FIELDS:
            raise SettingsError(f"unknown setting {name!r} (from {source}){_closest(name, FIELDS)}")
        annotation = Settings.model_fields[name].annotation
        is_flag_text = isinstance(value, str) and not _is_text(annotation)
        values[name] = _parse_text(name, value, source) if is_flag_text else value
        sources[name] = source
    try:
        return Settings(**values)
    except SettingsError as error:  # say where each refused value came from
        raise SettingsError(_describe_errors(error.__cause__, sources)) from None
