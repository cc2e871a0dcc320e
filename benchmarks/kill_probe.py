"""Kill probe: a `mia nightly` killed anywhere never damages the last good night, and leaves
nothing running.

A small world is simulated and one good night (the day before the last) is published, once, under
benchmarks/results/kill_probe/ (git-ignored). Then, for each kill point, a fresh copy of that data
root runs `mia nightly` for the last day through the command line in a subprocess, which is
SIGKILLed when the point is reached. Points are chosen deterministically from what the run shows:
its progress lines on stderr (`nightly: <step> (n of 10)`) and, inside ingest and publish, the
first new files of the night under the data root. After each kill the probe checks

- that the previous night still reads whole through the readers (`read_manifest`, `Lake.offers`,
  `Lake.audiences`, `Lake.reports`), identical to before the kill;
- that the killed night is either not published or published whole;
- that no process the command started is still running;
- that the next run publishes the night whole and exits 0.

It prints a summary table. Run by hand (minutes; it is not part of `make test`):

    python -m benchmarks.kill_probe [--subscribers 1500] [--days 70] [--points ingest-files ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import psutil

from benchmarks.common import READY, RESULTS, START
from flows.publish import read_manifest
from mia.lake import Lake
from mia.simulate import SimulationConfig, write_world
from offers.audience import read_summary

WORK = RESULTS / "kill_probe"
SEED = 11
RUN_SECONDS = 900  # longest a killed or a next run may take
LEFTOVER_SECONDS = 15  # how long the command's processes get to die after it is killed


@dataclass(frozen=True)
class KillPoint:
    """Where to kill a run: when `reached(stderr so far, data root, night)` first holds."""

    name: str
    reached: Callable[[str, Path, dt.date], bool]


def _step_started(step: str) -> Callable[[str, Path, dt.date], bool]:
    return lambda stderr, root, night: f"nightly: {step} (" in stderr


def _new_files(*parts: str) -> Callable[[str, Path, dt.date], bool]:
    """The night has a file under any of root/part (any layout that names the night's date)."""

    def reached(stderr: str, root: Path, night: dt.date) -> bool:
        for part in parts:
            base = root / part
            try:
                if base.is_dir() and any(night.isoformat() in str(p) for p in base.rglob("*")):
                    return True
            except FileNotFoundError:  # a temporary renamed while walking: the run writes
                return True
        return False

    return reached


def _publishing(stderr: str, root: Path, night: dt.date) -> bool:
    return "nightly: publish (" in stderr and _new_files("reports", "audiences", "offers")(
        stderr, root, night
    )


# Publishing is a few renames: "publish-start" kills as the step starts, "publish-files" once the
# first product of the night is in place (the rest may be in place too by the time of the kill).
KILL_POINTS = (
    KillPoint("ingest-files", _new_files("raw")),
    KillPoint("daily", _step_started("daily")),
    KillPoint("snapshot", _step_started("snapshot")),
    KillPoint("score", _step_started("score")),
    KillPoint("rank", _step_started("rank")),
    KillPoint("reasons", _step_started("reasons")),
    KillPoint("audiences", _step_started("audiences")),
    KillPoint("report", _step_started("report")),
    KillPoint("publish-start", _step_started("publish")),
    KillPoint("publish-files", _publishing),
)


def _environment(base: Path) -> dict[str, str]:
    repository = str(Path(__file__).resolve().parents[1])
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [repository, os.environ.get("PYTHONPATH")])),
        "PREFECT_HOME": str(WORK / "prefect"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }


def _nightly(base: Path, night: dt.date) -> subprocess.Popen:
    command = [
        sys.executable, "-c", "from flows.cli import main; main()",
        "nightly", "--data-dir", str(base / "data"), "--date", night.isoformat(),
    ]  # fmt: skip
    return subprocess.Popen(
        command,
        cwd=base,
        env=_environment(base),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


class _Stderr:
    """The text a child writes to stderr, collected by a thread (so the pipe never fills)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.text = ""
        self.thread = threading.Thread(target=self._collect, args=(process,), daemon=True)
        self.thread.start()

    def _collect(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            self.text += line


def _prepare(subscribers: int, days: int) -> tuple[Path, dt.date, dt.date]:
    """The data root after one good night (cached); the good night and the night to kill."""
    last = START + dt.timedelta(days=days - 1)
    good = last - dt.timedelta(days=1)
    base = WORK / f"base-{subscribers}x{days}"
    if (base / READY).exists():
        return base, good, last
    if base.exists():
        shutil.rmtree(base)
    (base / "data").mkdir(parents=True)
    print(f"simulating {subscribers:,} subscribers x {days} days ...", flush=True)
    write_world(
        base / "data", SimulationConfig(subscribers=subscribers, days=days, start=START, seed=SEED)
    )
    print(f"publishing the good night {good} (trains the models) ...", flush=True)
    process = _nightly(base, good)
    stderr = _Stderr(process)
    if process.wait(timeout=RUN_SECONDS) != 0:
        stderr.thread.join()
        raise RuntimeError(f"the good night failed:\n{stderr.text[-3000:]}")
    (base / READY).touch()
    return base, good, last


def read_night(lake: Lake, night: dt.date) -> dict[str, Any] | None:
    """What readers see of a published night (None when not published); raises if it is not
    whole: offers, audiences and report present and consistent with the manifest."""
    manifest = read_manifest(lake, night)
    if manifest is None:
        return None
    offers = pl.read_parquet(lake.offers(night) / "offers.parquet")
    audiences = read_summary(lake.audiences(night))
    report = (lake.reports(night) / "report.md").read_text()
    rows = manifest["rows"]
    if offers.height != rows["offers"]:
        raise AssertionError(f"{night}: {offers.height} offers, manifest says {rows['offers']}")
    if audiences.height != rows["audiences"]:
        raise AssertionError(
            f"{night}: {audiences.height} audiences, manifest says {rows['audiences']}"
        )
    if str(night) not in report:
        raise AssertionError(f"{night}: the report is not that night's")
    return {"run_id": manifest["run_id"], "offers": offers, "audiences": audiences}


def _same_night(before: dict[str, Any], after: dict[str, Any] | None) -> bool:
    return (
        after is not None
        and after["run_id"] == before["run_id"]
        and after["offers"].equals(before["offers"])
        and after["audiences"].equals(before["audiences"])
    )


def _verdict(check: Callable[[], bool]) -> str:
    try:
        return "ok" if check() else "FAILED"
    except Exception as error:  # a reader that raises is a damaged night: report it
        return f"FAILED ({type(error).__name__}: {str(error)[:60]})"


def probe(point: KillPoint, base: Path, good: dt.date, night: dt.date) -> dict[str, str]:
    """Kill a run at `point` on a copy of `base`; check what it left; run the night again."""
    copy = WORK / "run"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(base, copy)
    lake = Lake(copy / "data")
    before = read_night(lake, good)
    started = time.monotonic()
    process = _nightly(copy, night)
    stderr = _Stderr(process)
    children: list[psutil.Process] = []
    killed_at = "missed (run ended)"
    deadline = started + RUN_SECONDS
    while process.poll() is None and time.monotonic() < deadline:
        if point.reached(stderr.text, lake.root, night):
            children = psutil.Process(process.pid).children(recursive=True)
            os.kill(process.pid, signal.SIGKILL)
            killed_at = f"{time.monotonic() - started:.1f} s"
            break
        time.sleep(0.02)
    process.wait()
    stderr.thread.join()
    _, alive = psutil.wait_procs(children, timeout=LEFTOVER_SECONDS)
    for leftover in alive:
        leftover.kill()
    result = {
        "point": point.name,
        "killed at": killed_at,
        "left running": str(len(alive)),
        "previous night": _verdict(lambda: _same_night(before, read_night(lake, good))),
        "killed night": _killed_night_state(lake, night),
    }
    rerun = _nightly(copy, night)
    rerun_stderr = _Stderr(rerun)
    code = rerun.wait(timeout=RUN_SECONDS)
    rerun_stderr.thread.join()
    result["next run"] = "exit 0" if code == 0 else f"exit {code}: {rerun_stderr.text[-200:]!r}"
    result["next night"] = _verdict(lambda: read_night(lake, night) is not None)
    result["previous after"] = _verdict(lambda: _same_night(before, read_night(lake, good)))
    return result


def _killed_night_state(lake: Lake, night: dt.date) -> str:
    try:
        return "not published" if read_night(lake, night) is None else "published whole"
    except Exception as error:  # published, but not whole
        return f"FAILED ({type(error).__name__}: {str(error)[:60]})"


def _print_table(rows: list[dict[str, str]]) -> None:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in columns}
    print("| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |")
    print("|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|")
    for row in rows:
        print("| " + " | ".join(row[c].ljust(widths[c]) for c in columns) + " |")


def main(argv: list[str] | None = None) -> None:
    """Prepare the world once, probe every kill point, print the summary table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1500)
    parser.add_argument("--days", type=int, default=70)
    parser.add_argument(
        "--points", nargs="*", choices=[point.name for point in KILL_POINTS], default=None
    )
    args = parser.parse_args(argv)
    base, good, night = _prepare(args.subscribers, args.days)
    points = [p for p in KILL_POINTS if args.points is None or p.name in args.points]
    rows = []
    for point in points:
        print(f"killing the night {night} at {point.name} ...", flush=True)
        rows.append(probe(point, base, good, night))
    _print_table(rows)
    failed = [row["point"] for row in rows if any("FAILED" in value for value in row.values())]
    failed += [row["point"] for row in rows if row["left running"] != "0"]
    print(f"\n{len(rows) - len(set(failed))} of {len(rows)} kill points passed every check.")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
