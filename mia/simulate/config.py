"""Simulation settings, truth layout constants and the seeded random streams."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import numpy as np

from mia.errors import InputError
from mia.settings import Settings
from mia.simulate.presets import PRESETS, Preset

TRUTH_DIR = "truth"
TRUTH_VERSION = 1
FILE_FORMATS = ("parquet", "csv")


class SimulationError(InputError):
    """A simulation setting or an oracle request breaks its rule."""


@dataclass(frozen=True)
class SimulationConfig:
    """Size, period, seed, control group and kind (preset) of one synthetic world."""

    subscribers: int = 20000
    days: int = 120
    start: dt.date = dt.date(2026, 1, 1)
    seed: int = 7
    control_share: float = 0.10
    group_salt: str = Settings().group_salt
    preset: str = "telco"

    def __post_init__(self) -> None:
        if self.subscribers < 1:
            raise SimulationError(f"subscribers == {self.subscribers!r}, must be >= 1.")
        if self.days < 1:
            raise SimulationError(f"days == {self.days!r}, must be >= 1.")
        if self.seed < 0:
            raise SimulationError(f"seed == {self.seed!r}, must be >= 0.")
        if not 0.0 <= self.control_share < 1.0:
            raise SimulationError(f"control_share == {self.control_share!r}, must be in [0, 1).")
        if not isinstance(self.start, dt.date) or isinstance(self.start, dt.datetime):
            raise SimulationError(f"start == {self.start!r}, must be a date.")
        if self.preset not in PRESETS:
            raise SimulationError(
                f"preset == {self.preset!r}, must be one of {', '.join(PRESETS)}."
            )

    @property
    def world(self) -> Preset:
        """The knobs of this world's preset."""
        return PRESETS[self.preset]

    def to_meta(self) -> dict:
        """The config as JSON-ready values (the truth's meta.json)."""
        return {**dataclasses.asdict(self), "start": self.start.isoformat()}

    @classmethod
    def from_meta(cls, meta: dict) -> SimulationConfig:
        """The config a truth/meta.json records (worlds written before presets are `telco`)."""
        names = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in meta.items() if key in names}
        values["start"] = dt.date.fromisoformat(values["start"])
        return cls(**values)


NEVER = np.iinfo(np.int32).min
OPEN_ENDED = np.iinfo(np.int32).max
SECONDS_PER_DAY = 86_400
MICROS_PER_SECOND = 1_000_000
EPOCH = dt.date(1970, 1, 1)

# Random streams of one day.
(
    STREAM_NEW,
    STREAM_TRIPS,
    STREAM_USAGE,
    STREAM_PAYMENTS,
    STREAM_APP,
    STREAM_TRANSFERS,
    STREAM_POLICY,
    STREAM_RESPONSES,
    STREAM_ORGANIC,
    STREAM_CHURN,
    STREAM_ORGANIC_DEMAND,
) = range(11)
STREAM_STATIC = 100
# Streams of content worlds only, numbered apart so that no other world's draws move.
STREAM_CONTENT_NEW = 20  # content tastes of the lines activated that day
STREAM_CONSUMPTION = 21
STREAM_CONTENT_STATIC = STREAM_STATIC + 10  # items; +1: content tastes of the initial base


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def day_rng(seed: int, day: int, stream: int) -> np.random.Generator:
    """Generator of one random stream of one day: depends on (seed, day, stream) only."""
    return _rng(seed, 1, day, stream)


def static_rng(seed: int, stream: int) -> np.random.Generator:
    """Generator of one stream drawn once per world (base subscribers, offer traits)."""
    return _rng(seed, 0, stream)
