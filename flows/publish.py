"""Staging and publishing of one night's outputs, as one unit.

A night writes everything into a private staging folder under `DATA/.staging/`: the products it
publishes under `night/` (offers, audiences, report) and scratch work under `work/`. Publishing:

1. writes the manifest into the staged offers and flushes (fsync) every staged file and folder;
2. removes what an interrupted publish of the night left (hidden entries, versions never pointed
   to) and renames the staged `night/` folder to a new version,
   `nights/date=D/v<NNNNNN>-<run_id>/`, in one rename; flushes the night's folder;
3. creates the documented paths `offers/date=D`, `audiences/date=D`, `reports/date=D` where they
   are missing, each a link `-> ../nights/date=D/current/<product>` (dangling until step 4);
4. flips the pointer `nights/date=D/current` to the new version: a new symlink renamed over the
   old one, one atomic `rename`, then flushes the folder. This is the commit point;
5. replaces the folders of a night published before versions (real folders at the documented
   paths) by the links, removes versions beyond the newest `keep_versions` (the current one is the
   newest) and the strays of every night, then the staging folder.

Why this design: a night is one unit only if one atomic operation publishes all of it; renaming
one symlink is that operation, and versions that never change once written are what let readers
read while the next night publishes. A crash before step 4 leaves readers the old night, complete;
a crash after it, the new night. The next publish, a retry of the same staging or a new run,
completes or redoes the work and removes what the crash left. Readers that need one version across
products resolve the pointer once (`Lake.night`; `Lake.offers`, `audiences` and `reports` do);
the documented links follow the pointer each time a file is opened. A version is collected while
a reader may still be reading it only with `keep_versions == 1`; keep at least 2 when readers run
during the nightly publish.

Data roots published before versions stay readable as they are: `Lake` falls back to the real
folders at the documented paths. A night is migrated when it is published again: right after the
flip its old folders are replaced by the links, product by product, so for that moment a reader of
the documented paths (not of `Lake`) can find an old product beside a new one, or none.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mia.lake import (
    CURRENT,
    NIGHTS,
    PUBLISHED,
    Lake,
    fsync_path,
    fsync_tree,
    remove_path,
    temporary_sibling,
    write_json,
)

logger = logging.getLogger(__name__)

STAGING = ".staging"
MANIFEST = "manifest.json"
PRODUCTS = PUBLISHED
VERSION_PREFIX = "v"


@dataclass
class Staging:
    """The private folders one run writes before publishing."""

    lake: Lake
    as_of: dt.date
    run_id: str
    durations: dict[str, float] = field(default_factory=dict)
    peak_memory: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        """Staging folder of this run."""
        return self.lake.root / STAGING / f"{self.as_of.isoformat()}-{self.run_id}"

    @property
    def night(self) -> Path:
        """Staged products, published together as one version of the night."""
        return self.root / "night"

    def product(self, name: str) -> Path:
        """Staged folder of one published product (offers, audiences, reports)."""
        path = self.night / name
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


def publish(staging: Staging, manifest: dict[str, Any], keep_versions: int = 3) -> Path:
    """Publish the staged products as a new version of the night and point the night at it;
    returns the version's manifest. Completes a publish of the same staging that was interrupted.
    """
    lake, as_of = staging.lake, staging.as_of
    if staging.night.is_dir():
        version = _new_version(staging, manifest)
    else:
        version = _interrupted_version(staging)
    _link_products(lake, as_of, migrate=False)
    _point(lake.night_versions(as_of), version)
    _link_products(lake, as_of, migrate=True)
    collect_versions(lake, keep_versions)
    shutil.rmtree(staging.root, ignore_errors=True)
    logger.info("published %s (run %s) as %s", as_of, staging.run_id, version.name)
    return version / "offers" / MANIFEST


def _new_version(staging: Staging, manifest: dict[str, Any]) -> Path:
    """Write the manifest, flush the staged products and rename them to a new version."""
    for product in PRODUCTS:
        if not (staging.night / product).is_dir():
            raise FileNotFoundError(f"staged product {product!r} is missing in {staging.night}")
    write_json(
        {
            **manifest,
            "status": "published",
            "durations_seconds": staging.durations,
            "peak_rss_gb_after": staging.peak_memory,
            "cpu_seconds": staging.cpu_seconds,
        },
        staging.night / "offers" / MANIFEST,
    )
    fsync_tree(staging.night)
    night = staging.lake.night_versions(staging.as_of)
    _remove_strays(night)
    night.mkdir(parents=True, exist_ok=True)
    fsync_path(night.parent)  # its entry for a new night's folder
    fsync_path(staging.lake.root)  # its entry for `nights/` on the first publish
    numbers = [number for number, _ in _versions(night)]
    version = night / f"{VERSION_PREFIX}{max(numbers, default=0) + 1:06d}-{staging.run_id}"
    os.rename(staging.night, version)
    fsync_path(night)
    return version


def _interrupted_version(staging: Staging) -> Path:
    """The version an interrupted publish of this staging already made."""
    versions = _versions(staging.lake.night_versions(staging.as_of))
    if staging.root.is_dir() and versions and versions[-1][1].name.endswith(staging.run_id):
        return versions[-1][1]
    raise FileNotFoundError(f"staged products are missing in {staging.night}")


def _versions(night: Path) -> list[tuple[int, Path]]:
    """(number, folder) of the versions of a night, oldest first."""
    found = []
    if night.is_dir():
        for child in night.iterdir():
            number = child.name[len(VERSION_PREFIX) :].split("-", 1)[0]
            if child.name.startswith(VERSION_PREFIX) and number.isdigit():
                found.append((int(number), child))
    return sorted(found)


def _pointed_number(night: Path) -> int | None:
    """Number of the version the night's pointer names; None without a pointer (or a copied one)."""
    try:
        name = os.readlink(night / CURRENT)
    except OSError:
        return None
    number = name[len(VERSION_PREFIX) :].split("-", 1)[0]
    return int(number) if number.isdigit() else None


def _point(night: Path, version: Path) -> None:
    """Flip the night's pointer to `version` in one rename, then flush the folder."""
    pointer = night / CURRENT
    if pointer.is_dir() and not pointer.is_symlink():
        # A copy of the data root that followed links: its pointer is a folder, read until now.
        os.rename(pointer, temporary_sibling(pointer))
    link = temporary_sibling(pointer)
    os.symlink(version.name, link)
    os.replace(link, pointer)
    fsync_path(night)


def _link_products(lake: Lake, as_of: dt.date, migrate: bool) -> None:
    """Make each product's documented path a link through the night's pointer. A folder there
    (published before versions) is moved into the night's folder, to be collected, only when
    `migrate`."""
    night = lake.night_versions(as_of)
    for product in PRODUCTS:
        path = lake.link(product, as_of)
        target = os.path.join("..", NIGHTS, night.name, CURRENT, product)
        if path.is_symlink() and os.readlink(path) == target:
            continue
        if path.exists() and not path.is_symlink():
            if not migrate:
                continue
            os.rename(path, temporary_sibling(night / product))
        path.parent.mkdir(parents=True, exist_ok=True)
        link = temporary_sibling(night / product)
        os.symlink(target, link)
        os.replace(link, path)
        fsync_path(path.parent)


def _remove_strays(night: Path) -> None:
    """Remove hidden leftovers and versions never pointed to (newer than the pointer's)."""
    if not night.is_dir():
        return
    pointer = night / CURRENT
    pointed = _pointed_number(night)
    copied = pointer.is_dir() and not pointer.is_symlink()
    for child in sorted(night.iterdir()):
        if child.name.startswith("."):
            remove_path(child)
    for number, version in _versions(night):
        if not copied and (pointed is None or number > pointed):
            remove_path(version)


def collect_versions(lake: Lake, keep_versions: int) -> None:
    """Keep the current and newest earlier versions of every night, `keep_versions` in all, and
    remove the rest, strays included. A night never published (no pointer) goes with its links."""
    for date in lake.dates(NIGHTS):
        night = lake.night_versions(date)
        _remove_strays(night)
        pointed = _pointed_number(night)
        if pointed is not None:
            for _, version in _versions(night)[:-keep_versions]:
                remove_path(version)
        elif not (night / CURRENT).exists():
            for product in PRODUCTS:
                if not lake.link(product, date).exists():  # a link to nothing
                    remove_path(lake.link(product, date))
            with contextlib.suppress(OSError):
                night.rmdir()


def read_manifest(lake: Lake, as_of: dt.date) -> dict[str, Any] | None:
    """The manifest of a published night, or None when that night was not published."""
    path = lake.offers(as_of) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def published_dates(lake: Lake) -> list[dt.date]:
    """Nights whose offers were published completely (they have a manifest)."""
    dates = sorted(set(lake.dates(NIGHTS)) | set(lake.dates("offers")))
    return [date for date in dates if (lake.offers(date) / MANIFEST).exists()]
