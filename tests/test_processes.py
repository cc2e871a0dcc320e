"""Mia's own processes never outlive it: a killed `mia nightly` leaves nothing running."""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from mia.lake import LOCK_HOLDER_FILE
from tests.conftest import TINY_LAST_DAY

REPOSITORY = Path(__file__).resolve().parents[1]
STARTUP_SECONDS = 180


def _until(condition, seconds: float, what: str) -> None:
    """Wait for `condition()`, polling; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux kernel feature")
def test_a_killed_nightly_leaves_no_process_behind(fresh_root, tmp_path):
    environment = {
        **{key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"},
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable, "-c", "from flows.cli import main; main()",
        "nightly", "--data-dir", str(fresh_root), "--date", TINY_LAST_DAY.isoformat(),
    ]  # fmt: skip
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        cli = subprocess.Popen(
            command, cwd=tmp_path, env=environment, stdout=subprocess.DEVNULL, stderr=stderr
        )
    descendants: list[psutil.Process] = []
    try:
        # Mid-run: the flow holds the data root, so its Prefect API server is up.
        _until(
            lambda: (fresh_root / LOCK_HOLDER_FILE).exists() or cli.poll() is not None,
            STARTUP_SECONDS,
            "the nightly run to start",
        )
        assert cli.poll() is None, log.read_text()
        descendants = psutil.Process(cli.pid).children(recursive=True)
        assert descendants  # the local Prefect API server
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait()
        _, alive = psutil.wait_procs(descendants, timeout=30)
        assert alive == []
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        for process in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def test_prefect_server_startup_waits_180_s_unless_the_user_says_otherwise(monkeypatch):
    from prefect.settings import Settings

    from flows.local_api import startup_timeout_seconds

    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    assert startup_timeout_seconds(Settings()) == 180
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "45")
    assert startup_timeout_seconds(Settings()) == 45


def test_a_users_prefect_api_is_used_and_no_server_started():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.local_api import ensure_prefect_api

    before = _child_pids()  # e.g. the test harness's server
    with temporary_settings(updates={PREFECT_API_URL: "http://prefect.example:4200/api"}):
        assert ensure_prefect_api() == "http://prefect.example:4200/api"
    assert _child_pids() <= before


def test_no_server_is_started_from_a_thread_that_may_end_before_the_process():
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        temporary_settings,
    )

    from flows.local_api import ensure_prefect_api

    results = []
    before = _child_pids()  # e.g. the test harness's server
    with temporary_settings(
        updates={PREFECT_SERVER_EPHEMERAL_ENABLED: True}, restore_defaults={PREFECT_API_URL}
    ):
        context = contextvars.copy_context()
        worker = threading.Thread(target=lambda: results.append(context.run(ensure_prefect_api)))
        worker.start()
        worker.join()
    assert results == [None]
    assert _child_pids() <= before


def _child_pids() -> set[int]:
    return {child.pid for child in psutil.Process().children()}
