"""The scheduled nightly deployment, served against a Prefect server."""

from __future__ import annotations

import logging
import os
from typing import Any

from mia.errors import InputError
from mia.settings import Settings

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "nightly"

NO_SERVER_HELP = """\
`mia serve` needs a Prefect server: schedules are fired by the server, not by a single process.

  1. start one:            prefect server start            (UI and API on http://127.0.0.1:4200)
  2. point Mia at it:      export PREFECT_API_URL=http://127.0.0.1:4200/api
  3. serve the schedule:   mia serve

Without a server, run one night at a time from cron instead, e.g.:
  0 3 * * *  cd /path/to/mia && .venv/bin/mia nightly --data-dir data
"""


def api_url() -> str | None:
    """The configured Prefect API URL, if any."""
    from prefect.settings import PREFECT_API_URL

    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value() or None


def nightly_deployment(settings: Settings, overrides: dict[str, Any] | None = None):
    """The nightly flow as a deployment with the configured cron schedule and time zone."""
    from prefect.client.schemas.schedules import CronSchedule

    from flows.nightly import nightly

    try:
        schedule = CronSchedule(cron=settings.schedule_cron, timezone=settings.timezone)
    except ValueError as error:
        raise InputError(
            f"schedule_cron == {settings.schedule_cron!r} / timezone == {settings.timezone!r} "
            f"is not a valid schedule: {error}"
        ) from error
    return nightly.to_deployment(
        name=DEPLOYMENT_NAME,
        schedules=[schedule],
        parameters={"data_dir": str(settings.data_dir.resolve()), "overrides": overrides or {}},
        description="Mia nightly run: features, models, offers, audiences, report.",
        tags=["mia"],
    )


def serve_nightly(settings: Settings, register_only: bool = False) -> str:
    """Register the nightly deployment and (unless `register_only`) serve it until stopped."""
    if not api_url():
        raise InputError(NO_SERVER_HELP)
    deployment = nightly_deployment(settings)
    if register_only:
        deployment_id = deployment.apply()
        logger.info("registered deployment %s (%s)", DEPLOYMENT_NAME, deployment_id)
        return DEPLOYMENT_NAME
    from prefect import serve

    serve(deployment)
    return DEPLOYMENT_NAME
