"""Progress of long steps, reported through logging so that any front end can show it.

Library code calls `report_progress` at the boundaries of the parts of a long step (one category
model, one snapshot, one shard); the `mia` command line shows the reports as progress bars on a
terminal and as plain lines when piped. A notebook sees them as INFO log records of PROGRESS_LOGGER.
`timed_part` and `collect_part_seconds` add up where a step spends its time and which part raised
its peak memory (training reports both per model family this way).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from mia.memory import peak_rss_bytes

PROGRESS_LOGGER = "mia.progress"

_logger = logging.getLogger(PROGRESS_LOGGER)


@dataclass(frozen=True)
class StepProgress:
    """`done` of `total` parts of `step` are finished; `item` names the part now under way."""

    step: str
    done: int
    total: int
    item: str = ""


def report_progress(step: str, done: int, total: int, item: str = "") -> None:
    """Report that `done` of `total` parts of `step` are finished and `item` is starting."""
    progress = StepProgress(step, done, total, item)
    if item and done < total:
        _logger.info("%s: %s (%d of %d)", step, item, done + 1, total, extra={"progress": progress})
    else:
        _logger.info("%s: %d of %d done", step, done, total, extra={"progress": progress})


@dataclass
class PartSeconds:
    """Wall and CPU seconds spent in each named part of a long step, summed over its repeats, and
    the bytes by which each part raised the process's peak resident memory (summed likewise: the
    part with the largest rise is the one that set the peak)."""

    wall: dict[str, float]
    cpu: dict[str, float]
    peak_rise: dict[str, int] = field(default_factory=dict)


_collecting: ContextVar[PartSeconds | None] = ContextVar("mia_part_seconds", default=None)


@contextmanager
def collect_part_seconds() -> Iterator[PartSeconds]:
    """Sum the time of every `timed_part` run inside the block, per part name."""
    seconds = PartSeconds(wall={}, cpu={})
    token = _collecting.set(seconds)
    try:
        yield seconds
    finally:
        _collecting.reset(token)


@contextmanager
def timed_part(name: str) -> Iterator[None]:
    """Add the block's wall and CPU seconds (every thread of the process) and its rise of the
    peak resident memory to part `name` of the collection under way, if any; parts are not to be
    nested, or their time counts twice."""
    seconds = _collecting.get()
    if seconds is None:
        yield
        return
    wall, cpu, peak = time.perf_counter(), time.process_time(), peak_rss_bytes()
    try:
        yield
    finally:
        seconds.wall[name] = seconds.wall.get(name, 0.0) + time.perf_counter() - wall
        seconds.cpu[name] = seconds.cpu.get(name, 0.0) + time.process_time() - cpu
        seconds.peak_rise[name] = seconds.peak_rise.get(name, 0) + peak_rss_bytes() - peak
