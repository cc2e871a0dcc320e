"""The Prefect API that a command's flows report to, and a local one that never outlives Mia.

Without PREFECT_API_URL, Prefect starts a temporary API server as a child process on first use,
from whichever thread needs it first, and nothing stops that child when its parent is killed: a
killed `mia nightly` would leave it running. So a command starts that server itself, from the main
thread, through `flows.launcher`, which has the kernel kill it when the command's process dies. A
user's own PREFECT_API_URL is used as it is.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading

import prefect
from prefect.context import refresh_global_settings_context
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_EPHEMERAL_ENABLED,
    Settings,
    get_current_settings,
)

from flows.launcher import launcher_command

logger = logging.getLogger(__name__)

# Prefect waits 20 s by default; a loaded machine can take longer to import and migrate the server.
DEFAULT_STARTUP_TIMEOUT_SECONDS = 180


class LocalApiServer(SubprocessASGIServer):
    """Prefect's temporary API server, started so that it dies with this process."""

    def _run_uvicorn_command(self) -> subprocess.Popen:
        # The command and environment of SubprocessASGIServer._run_uvicorn_command (Prefect 3).
        command = [
            sys.executable, "-m", "uvicorn",
            "--app-dir", str(prefect.__module_path__.parent),
            "--factory", "prefect.server.api.server:create_app",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--log-level", "error",
            "--lifespan", "on",
        ]  # fmt: skip
        environment = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True),
        }
        return subprocess.Popen(launcher_command(command), env=environment)


def startup_timeout_seconds(settings: Settings | None = None) -> int:
    """The user's PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, else Mia's default."""
    ephemeral = (settings or get_current_settings()).server.ephemeral
    if "startup_timeout_seconds" in ephemeral.model_fields_set:
        return ephemeral.startup_timeout_seconds
    return DEFAULT_STARTUP_TIMEOUT_SECONDS


def ensure_prefect_api() -> str | None:
    """Point this process's flows at the user's Prefect API (PREFECT_API_URL), or at a local API
    server started now that lives as long as this process and no longer; the URL in use.

    From another thread than the main one, or where no API is configured and Prefect's temporary
    server is disabled, nothing is started and None returned: Prefect then does as it would.
    """
    configured = PREFECT_API_URL.value()
    if configured or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return configured or None
    if threading.current_thread() is not threading.main_thread():
        # The kernel would kill the server when this thread ends: leave it to Prefect.
        return None
    server = LocalApiServer(port=_free_port())
    server.start(timeout=startup_timeout_seconds())  # Prefect stops it at exit
    # Process-wide, so that Prefect's own worker threads report to this server too.
    os.environ["PREFECT_API_URL"] = server.api_url
    refresh_global_settings_context()
    logger.info("local Prefect API on %s", server.api_url)
    return server.api_url


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
