"""Typed settings: defaults, then an optional `mia.toml`, then `MIA_*` env vars, then CLI flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mia.errors import InputError

ENV_PREFIX = "MIA_"
CONFIG_FILE = "mia.toml"


class SettingsError(InputError):
    """A setting has a value outside its rule."""


@dataclass(frozen=True)
class Settings:
    """Every tunable value of the pipeline, passed down explicitly from the entry point."""

    data_dir: Path = Path("data")
    mlflow_uri: str = "sqlite:///mlruns/mlflow.db"
    mlflow_artifacts: Path = Path("mlruns/artifacts")
    experiment: str = "mia"
    seed: int = 7
    # Features and labels
    windows: tuple[int, ...] = (7, 30, 90)
    horizon_days: int = 7
    # Ingest refuses events more than this many days before their delivery day (rule max_age).
    event_max_age_days: int = 400
    train_snapshots: int = 13
    snapshot_step_days: int = 7
    # Models
    num_threads: int = 2
    min_positives: int = 30
    gate_tolerance: float = 0.01
    retrain_interval_days: int = 7
    als_factors: int = 32
    als_regularization: float = 0.05
    als_iterations: int = 15
    # Offers
    top_k: int = 5
    max_per_category: int = 2
    min_probability: float = 0.01
    control_share: float = 0.10
    coverage: float = 1.0
    group_salt: str = "mia-groups-v1"
    category_weights: dict[str, float] = field(default_factory=dict)
    diversity_positions: int = 5  # first positions that must show distinct categories
    exploration_share: float = 0.05  # subscribers whose last slot explores another category
    uplift_min_control: int = 500  # control subscribers needed to rank an audience by uplift
    # Scale
    n_shards: int = 1
    dask_address: str | None = None
    # With dask_address: categories with at least this many training rows train on the cluster.
    dask_train_rows: int = 1_000_000
    # Published versions kept per night, the current one included (older ones are removed).
    keep_night_versions: int = 3
    # Schedule
    schedule_cron: str = "0 3 * * *"
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        _check_range("horizon_days", self.horizon_days, low=1)
        _check_range("event_max_age_days", self.event_max_age_days, low=1)
        _check_range("top_k", self.top_k, low=1)
        _check_range("max_per_category", self.max_per_category, low=1)
        _check_range("num_threads", self.num_threads, low=1)
        _check_range("n_shards", self.n_shards, low=1, high=65536)
        _check_range("dask_train_rows", self.dask_train_rows, low=1)
        _check_range("train_snapshots", self.train_snapshots, low=3)
        _check_range("snapshot_step_days", self.snapshot_step_days, low=1)
        _check_range("control_share", self.control_share, low=0.0, high=0.9)
        _check_range("coverage", self.coverage, low=0.0, high=1.0)
        _check_range("min_probability", self.min_probability, low=0.0, high=1.0)
        _check_range("diversity_positions", self.diversity_positions, low=0)
        _check_range("exploration_share", self.exploration_share, low=0.0, high=1.0)
        _check_range("uplift_min_control", self.uplift_min_control, low=1)
        _check_range("keep_night_versions", self.keep_night_versions, low=1)
        if not self.windows or any(window < 1 for window in self.windows):
            raise SettingsError(f"windows == {self.windows!r}, must be positive day counts.")
        for category, weight in self.category_weights.items():
            if weight < 0:
                raise SettingsError(f"category_weights[{category!r}] == {weight!r}, must be >= 0.")

    def replace(self, **changes: Any) -> Settings:
        """A copy with some values changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def category_weight(self, category: str) -> float:
        """Weight of a category in expected value; 1 unless configured."""
        return float(self.category_weights.get(category, 1.0))


def _check_range(name: str, value: float, low: float | None = None, high: float | None = None):
    if low is not None and value < low:
        raise SettingsError(f"{name} == {value!r}, must be >= {low}.")
    if high is not None and value > high:
        raise SettingsError(f"{name} == {value!r}, must be <= {high}.")


def _coerce(name: str, raw: Any, default: Any) -> Any:
    """Turn a value from TOML or the environment into the type of the default."""
    if raw is None:
        return None
    try:
        if isinstance(default, bool):
            if isinstance(raw, str):
                return raw.strip().lower() in ("1", "true", "yes", "on")
            return bool(raw)
        if isinstance(default, Path):
            return Path(raw)
        if isinstance(default, tuple):
            items = raw.split(",") if isinstance(raw, str) else raw
            return tuple(int(item) for item in items)
        if isinstance(default, dict):
            if isinstance(raw, str):
                pairs = (item.split("=", 1) for item in raw.split(",") if item.strip())
                return {key.strip(): float(value) for key, value in pairs}
            return {str(key): float(value) for key, value in raw.items()}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as error:
        raise SettingsError(
            f"{name} == {raw!r} cannot be read as {type(default).__name__}."
        ) from error


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from defaults, `mia.toml` (or `config_file`), `MIA_*` variables and overrides."""
    environ = os.environ if environ is None else environ
    defaults = Settings()
    values: dict[str, Any] = {}
    known = {item.name: getattr(defaults, item.name) for item in fields(Settings)}

    path = config_file or Path(environ.get(ENV_PREFIX + "CONFIG", CONFIG_FILE))
    if path.exists():
        with path.open("rb") as handle:
            document = tomllib.load(handle)
        section = document.get("mia", document)
        for name, raw in section.items():
            if name not in known:
                raise SettingsError(f"{path}: unknown setting {name!r}.")
            values[name] = _coerce(name, raw, known[name])
    elif config_file is not None:
        raise SettingsError(f"config file {config_file} does not exist.")

    for name, default in known.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(ENV_PREFIX + name.upper(), raw, default)

    for name, raw in overrides.items():
        if name not in known:
            raise SettingsError(f"unknown setting {name!r}.")
        if raw is not None:
            values[name] = _coerce(name, raw, known[name])
    return Settings(**values)
