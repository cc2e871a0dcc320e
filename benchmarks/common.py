"""What the benchmarks share: where results are cached, the simulated calendar and seed, and how
a simulated world is replicated with disjoint subscriber ids."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl

from mia.memory import peak_rss_bytes
from mia.schema import SUBSCRIBER_ID

RESULTS = Path(__file__).resolve().parent / "results"  # git-ignored
START = dt.date(2026, 1, 1)
SEED = 2026
READY = "READY"  # marker file of a cached world that is complete
ID_STRIDE = 10_000_000  # replica r of subscriber s gets id s + r * ID_STRIDE


def replicated(frame: pl.DataFrame, copies: int) -> pl.DataFrame:
    """`copies` copies of `frame`, copy r with subscriber ids shifted by r * ID_STRIDE."""
    if SUBSCRIBER_ID not in frame.columns or copies == 1:
        return frame
    return pl.concat(
        [frame.with_columns(pl.col(SUBSCRIBER_ID) + copy * ID_STRIDE) for copy in range(copies)]
    )


def run_child(module: str, child: str, arguments: list[str]) -> dict[str, Any]:
    """Run `python -m module --child child arguments` in a fresh process, so that its peak memory
    is its own; returns the JSON object it printed last."""
    command = [sys.executable, "-m", module, "--child", child, *arguments]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{child} run failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def peak_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return peak_rss_bytes() / 2**20
