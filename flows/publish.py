"""Staging and publishing of one night's outputs.

A night writes everything into a private staging folder under `DATA/.staging/`. Only when every step
has succeeded are the offers, audiences and report folders renamed into place, each one a single
atomic rename, and the manifest written last. A failed or killed run leaves the previous outputs
untouched; the staging folder of a failed run is removed at the start of the next.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mia.lake import Lake, replace_path, write_json

logger = logging.getLogger(__name__)

STAGING = ".staging"
MANIFEST = "manifest.json"
PRODUCTS = ("offers", "audiences", "reports")


@dataclass
class Staging:
    """The private folders one run writes before publishing."""

    lake: Lake
    as_of: dt.date
    run_id: str
    durations: dict[str, float] = field(default_factory=dict)
    peak_memory: dict[str, float] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        """Staging folder of this run."""
        return self.lake.root / STAGING / f"{self.as_of.isoformat()}-{self.run_id}"

    def product(self, name: str) -> Path:
        """Staged folder of one published product (offers, audiences, reports)."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def work(self, name: str) -> Path:
        """Scratch folder for intermediate results (never published)."""
        path = self.root / "work" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def run_id_for(as_of: dt.date, fingerprint: dict[str, Any]) -> str:
    """A deterministic run id: the same date and inputs give the same id."""
    digest = hashlib.sha256(
        json.dumps(
            {"as_of": as_of.isoformat(), **fingerprint}, sort_keys=True, default=str
        ).encode()
    ).hexdigest()
    return f"{as_of.strftime('%Y%m%d')}-{digest[:10]}"


def clear_stale_staging(lake: Lake) -> None:
    """Remove staging folders left by runs that failed or were killed."""
    base = lake.root / STAGING
    if base.is_dir():
        for child in sorted(base.iterdir()):
            logger.info("removing staging folder of an unfinished run: %s", child)
            shutil.rmtree(child, ignore_errors=True)


def published_path(lake: Lake, product: str, as_of: dt.date) -> Path:
    """Where a published product of one night lives."""
    return {"offers": lake.offers, "audiences": lake.audiences, "reports": lake.reports}[product](
        as_of
    )


def publish(staging: Staging, manifest: dict[str, Any]) -> Path:
    """Move the staged products into place, offers (holding the manifest) last."""
    for product in PRODUCTS:
        if not (staging.root / product).is_dir():
            raise FileNotFoundError(f"staged product {product!r} is missing in {staging.root}")
    write_json(
        {
            **manifest,
            "status": "published",
            "durations_seconds": staging.durations,
            "peak_rss_gb_after": staging.peak_memory,
        },
        staging.root / "offers" / MANIFEST,
    )
    # Offers go last: a manifest in place means the audiences and report of that night are too.
    for product in ("reports", "audiences", "offers"):
        target = published_path(staging.lake, product, staging.as_of)
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_path(staging.root / product, target)
    shutil.rmtree(staging.root, ignore_errors=True)
    logger.info("published %s (run %s)", staging.as_of, staging.run_id)
    return staging.lake.offers(staging.as_of) / MANIFEST


def read_manifest(lake: Lake, as_of: dt.date) -> dict[str, Any] | None:
    """The manifest of a published night, or None when that night was not published."""
    path = lake.offers(as_of) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def published_dates(lake: Lake) -> list[dt.date]:
    """Nights whose offers were published completely (they have a manifest)."""
    return [date for date in lake.dates("offers") if (lake.offers(date) / MANIFEST).exists()]
