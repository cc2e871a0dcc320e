"""`mia serve`: the nightly deployment and its cron schedule on a real Prefect server (loopback)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT = 120
SCHEDULE_TIMEOUT = 90


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until(check, timeout: float, what: str):
    """Poll an external process until `check()` returns a truthy value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _environment(tmp_path: Path, api_url: str | None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PREFECT_") and not key.startswith("MIA_")
    }
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS="1",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


QUERY = """
import asyncio, json
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

async def main():
    async with get_client() as client:
        deployment = await client.read_deployment_by_name("mia-nightly/nightly")
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
        print(json.dumps({
            "schedules": [
                {"cron": s.schedule.cron, "timezone": s.schedule.timezone, "active": s.active}
                for s in deployment.schedules
            ],
            "parameters": deployment.parameters,
            "scheduled": sorted(
                run.expected_start_time.isoformat()
                for run in runs
                if run.state and run.state.is_scheduled()
            ),
        }))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real Prefect server on a free loopback port, for this module only."""
    tmp_path = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=_environment(tmp_path, None),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        _wait_until(lambda: _healthy(url), SERVER_START_TIMEOUT, "the Prefect server")
        yield url, tmp_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_serve_registers_the_nightly_deployment_with_its_schedule(prefect_server, tmp_path):
    url, server_home = prefect_server
    env = _environment(server_home, url)
    data_dir = tmp_path / "data"
    registered = subprocess.run(
        [
            str(VENV_BIN / "mia"), "serve", "--register-only", "--data-dir", str(data_dir),
            "--cron", "0 3 * * *", "--timezone", "Europe/Moscow",
        ],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=180,
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    assert "mia-nightly/nightly" in registered.stdout

    def scheduled_runs():
        query = subprocess.run(
            [sys.executable, "-c", QUERY], env=env, capture_output=True, text=True, timeout=120
        )
        assert query.returncode == 0, query.stderr
        state = json.loads(query.stdout)
        return state if state["scheduled"] else None

    state = _wait_until(scheduled_runs, SCHEDULE_TIMEOUT, "scheduled runs of the deployment")
    expected = {"cron": "0 3 * * *", "timezone": "Europe/Moscow", "active": True}
    assert state["schedules"] == [expected]
    assert state["parameters"]["data_dir"] == str(data_dir.resolve())
    # Every scheduled run starts at 03:00 Moscow time (00:00 UTC).
    assert all(start.endswith("T00:00:00+00:00") for start in state["scheduled"])


def test_serve_without_a_server_explains_how_to_start_one(tmp_path):
    result = subprocess.run(
        [str(VENV_BIN / "mia"), "serve", "--data-dir", str(tmp_path / "data")],
        env=_environment(tmp_path, None),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    assert "prefect server start" in result.stderr
    assert "mia nightly" in result.stderr
