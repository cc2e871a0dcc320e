"""Progress of long steps, reported through logging so that any front end can show it.

Library code calls `report_progress` at the boundaries of the parts of a long step (one category
model, one snapshot, one shard); the `mia` command line shows the reports as progress bars on a
terminal and as plain lines when piped. A notebook sees them as INFO log records of PROGRESS_LOGGER.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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
