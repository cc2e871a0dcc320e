"""The data-root lock across real processes: exactly one taker wins, a killed holder frees it."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from flows.cli import app, run_command
from mia.lake import LOCK_FILE, LockedError, run_lock

TAKERS = 4
TRIALS = 15


def _take_in_trials(root: str, barrier, results, trials: int, stale: str | None) -> None:
    """Each trial: try the lock together with the other takers, report, hold it until all tried.

    A taker given `stale` first writes it into the lock file, as a run that died would leave it.
    """
    for _ in range(trials):
        if stale is not None:
            Path(root, LOCK_FILE).write_text(stale)
        barrier.wait()
        try:
            with run_lock(root, owner=f"taker {os.getpid()}"):
                results.put("won")
                barrier.wait()  # every taker has tried while the winner holds the lock
        except LockedError:
            results.put("refused")
            barrier.wait()
        except Exception as error:  # any other outcome is a failure the parent must see
            results.put(repr(error))
            barrier.wait()
        barrier.wait()  # the winner has released before the next trial starts


def _hold_until_killed(root: str, held) -> None:
    with run_lock(root, owner="nightly 2026-03-10"):
        held.set()
        signal.pause()


def _dead_pid(context) -> int:
    process = context.Process(target=os.getpid)
    process.start()
    process.join()
    return process.pid


def test_concurrent_takers_over_a_stale_lock_file_exactly_one_wins_every_trial(tmp_path):
    context = multiprocessing.get_context("spawn")
    # A lock file left by a run that died, naming a pid that no longer exists.
    stale = json.dumps({"pid": _dead_pid(context), "owner": "nightly"})
    barrier, results = context.Barrier(TAKERS), context.Queue()
    takers = [
        context.Process(
            target=_take_in_trials,
            args=(str(tmp_path), barrier, results, TRIALS, stale if number == 0 else None),
        )
        for number in range(TAKERS)
    ]
    for taker in takers:
        taker.start()
    outcomes = [results.get(timeout=60) for _ in range(TAKERS * TRIALS)]
    for taker in takers:
        taker.join(timeout=30)
    assert sorted(set(outcomes)) == ["refused", "won"]
    assert outcomes.count("won") == TRIALS  # one winner per trial (winners report before losers)
    assert (tmp_path / LOCK_FILE).exists()  # never deleted


def test_a_killed_holder_releases_the_lock_and_a_live_holder_is_named(tmp_path):
    context = multiprocessing.get_context("spawn")
    held = context.Event()
    holder = context.Process(target=_hold_until_killed, args=(str(tmp_path), held))
    holder.start()
    try:
        assert held.wait(timeout=60)
        with pytest.raises(LockedError, match=rf"nightly 2026-03-10 \(pid {holder.pid}, started"):
            with run_lock(tmp_path):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(timeout=30)
    with run_lock(tmp_path, owner="next night"):
        pass


def test_a_lock_file_naming_a_live_process_does_not_block(tmp_path):
    # A killed run's lock file whose pid now belongs to another, living process.
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "owner": "nightly"}))
    with run_lock(tmp_path, owner="next night"):
        pass


def test_ingest_and_simulate_refuse_a_data_root_held_by_a_run(tmp_path):
    with run_lock(tmp_path, owner="nightly 2026-03-10"):
        for command in (
            ["ingest", "--data-dir", str(tmp_path), "--date", "2026-03-10"],
            ["simulate", "--data-dir", str(tmp_path), "--subscribers", "10", "--days", "1"],
        ):
            assert run_command(lambda command=command: app(command, standalone_mode=True)) == 1
    assert not (tmp_path / "raw").exists()
    assert not (tmp_path / "incoming").exists()
