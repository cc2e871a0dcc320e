"""Publishing a night as one unit: versions, one pointer, crashes at every step, old layouts."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from flows.cli import app, run_command
from flows.publish import (
    STAGING,
    Staging,
    clear_stale_staging,
    publish,
    published_dates,
    read_manifest,
)
from mia.lake import PUBLISHED, Lake
from mia.settings import SettingsError, load_settings

DAY = dt.date(2026, 3, 1)
OLD, NEW = "20260301-00000000old", "20260301-00000000new"
KEEP = 2
# Every call that changes the disk during publish; one of them fails at step n.
STEPS = [
    (os, "replace"),
    (os, "rename"),
    (os, "symlink"),
    (os, "mkdir"),
    (os, "fsync"),
    (os, "unlink"),
    (os, "rmdir"),
    (shutil, "rmtree"),
]


def _stage(lake: Lake, run_id: str, date: dt.date = DAY) -> Staging:
    """A staged night whose every file says which run wrote it."""
    staging = Staging(lake, date, run_id)
    (staging.product("offers") / "offers.parquet").write_text(f"offers of {run_id}")
    (staging.product("audiences") / "summary.csv").write_text(f"offer_id,file\n{run_id},a.csv\n")
    (staging.product("audiences") / "a.csv").write_text(f"subscriber_id,run\n1,{run_id}\n")
    (staging.product("reports") / "report.md").write_text(f"# report of {run_id}\n")
    (staging.work("ranked") / "part-0.parquet").write_bytes(b"scratch")
    return staging


def _publish(lake: Lake, run_id: str, date: dt.date = DAY, keep: int = KEEP) -> None:
    publish(_stage(lake, run_id, date), {"run_id": run_id, "as_of": date.isoformat()}, keep)


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _seen(lake: Lake, date: dt.date = DAY) -> dict[str, dict[str, bytes]]:
    """What a reader through `Lake` sees of a night: one pointer read, every product's files."""
    version = lake.night(date)
    return {
        product: _files(version / product if version else lake.link(product, date))
        for product in PUBLISHED
    }


def _seen_by_links(lake: Lake, date: dt.date = DAY) -> dict[str, dict[str, bytes]]:
    """What a notebook sees through the documented paths `<product>/date=D`."""
    return {product: _files(lake.link(product, date)) for product in PUBLISHED}


def _strays(lake: Lake) -> list[str]:
    """Hidden leftovers anywhere, and versions beyond the kept ones."""
    found = [
        str(path.relative_to(lake.root))
        for path in lake.root.rglob(".*")
        if path != lake.root / STAGING
    ]
    found += [name for name in os.listdir(lake.root / STAGING)]
    for night in (lake.root / "nights").iterdir():
        versions = [path for path in night.iterdir() if path.name != "current"]
        if len(versions) > KEEP:
            found += [str(path) for path in versions]
    return found


def _root(base: Path, layout: str) -> Lake:
    """A data root whose night DAY was published by run OLD, in one of the layouts Mia meets."""
    lake = Lake(base / "data")
    if layout == "versions":
        _publish(lake, OLD)
    elif layout == "before versions":  # real folders at the documented paths
        earlier = Lake(base / "earlier")
        _publish(earlier, OLD)
        for product in PUBLISHED:
            shutil.copytree(earlier.published(product, DAY), lake.link(product, DAY))
    elif layout == "copied":  # a copy that followed every link
        _publish(Lake(base / "source"), OLD)
        shutil.copytree(base / "source", lake.root)
    return lake


@contextmanager
def _crash_at(step: int) -> Iterator[list[int]]:
    """Make the `step`-th call (from 0) of any of STEPS raise, as a crash there would stop;
    yields the list of calls made."""
    calls: list[int] = []
    with pytest.MonkeyPatch.context() as patch:
        for module, name in STEPS:
            patch.setattr(module, name, _counted(getattr(module, name), calls, step))
        yield calls


def _counted(original, calls: list[int], step: int):
    """`original`, counting its calls in `calls` and raising at call number `step`."""

    def call(*args, **kwargs):
        calls.append(len(calls))
        if len(calls) - 1 == step:
            raise OSError(f"crash injected at step {step}")
        return original(*args, **kwargs)

    return call


@pytest.mark.parametrize(
    ("layout", "then"),
    [
        ("versions", "retry"),
        ("versions", "new run"),
        ("before versions", "retry"),
        ("copied", "new run"),
    ],
)
def test_a_crash_at_any_step_of_publish_shows_one_whole_night(tmp_path, layout, then):
    template = _root(tmp_path / "template", layout)
    old = _seen(template)
    reference = Lake(tmp_path / "reference")
    shutil.copytree(template.root, reference.root, symlinks=True)
    _publish(reference, NEW)
    new = _seen(reference)
    assert old != new and _seen_by_links(reference) == new

    seen_after_crash = []
    for step in itertools.count():
        lake = Lake(tmp_path / str(step))
        shutil.copytree(template.root, lake.root, symlinks=True)
        staging = _stage(lake, NEW)
        crashed = False
        try:
            with _crash_at(step) as calls:
                publish(staging, {"run_id": NEW, "as_of": DAY.isoformat()}, KEEP)
        except OSError as crash:
            assert f"step {step}" in str(crash)
            crashed = True
        if len(calls) <= step:  # publish made fewer calls: every step has been crashed
            break
        seen = _seen(lake)
        assert seen in (old, new), f"a mix of nights after a crash at step {step}"
        if crashed:  # (some failures are absorbed: an existing folder, a best-effort removal)
            seen_after_crash.append("old" if seen == old else "new")
        assert read_manifest(lake, DAY)["run_id"] in (OLD, NEW)
        if layout == "versions":  # the documented links go through the one pointer
            assert _seen_by_links(lake) == seen
        else:  # each product whole or, for a moment, absent: they migrate one by one
            for product, files in _seen_by_links(lake).items():
                assert files in (old[product], new[product], {})

        if then == "retry" and staging.root.exists():  # as the publish task's retries do
            publish(staging, {"run_id": NEW, "as_of": DAY.isoformat()}, KEEP)
        else:  # as the next nightly run does
            clear_stale_staging(lake)
            _publish(lake, NEW)
        assert _seen(lake) == new and _seen_by_links(lake) == new, f"crash at step {step}"
        assert all(lake.link(product, DAY).is_symlink() for product in PUBLISHED)
        assert _strays(lake) == [], f"left after a crash at step {step}"
        assert published_dates(lake) == [DAY]
    # Readers saw the old night until the flip, the new one after it, nothing else.
    assert seen_after_crash == sorted(seen_after_crash, reverse=True)
    assert seen_after_crash.count("old") > 10 and "new" in seen_after_crash
    assert _seen(lake) == new and _strays(lake) == []


def test_versions_beyond_the_kept_ones_and_unpublished_nights_are_removed(tmp_path):
    lake = Lake(tmp_path / "data")
    other = DAY + dt.timedelta(days=1)
    for number in range(4):
        _publish(lake, f"20260301-{number:011d}", keep=3)
    night = lake.night_versions(DAY)
    assert sorted(os.listdir(night)) == [
        "current",
        "v000002-20260301-00000000001",
        "v000003-20260301-00000000002",
        "v000004-20260301-00000000003",
    ]
    assert os.readlink(night / "current") == "v000004-20260301-00000000003"
    assert read_manifest(lake, DAY)["run_id"] == "20260301-00000000003"

    # A first publish of another night that crashed as it was about to set its pointer ...
    def crash_at_the_pointer(source, link, _symlink=os.symlink):
        if "current.tmp" in str(link):
            raise OSError("crash")
        _symlink(source, link)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(OSError):
        patch.setattr(os, "symlink", crash_at_the_pointer)
        publish(_stage(lake, OLD, other), {"run_id": OLD}, 3)
    assert os.path.islink(lake.link("offers", other)) and published_dates(lake) == [DAY]
    # ... is removed by the next publish, whatever its night; keep 1 leaves only the current.
    _publish(lake, NEW, keep=1)
    assert sorted(os.listdir(night)) == ["current", f"v000005-{NEW}"]
    assert not lake.night_versions(other).exists()
    assert not any(os.path.lexists(lake.link(product, other)) for product in PUBLISHED)
    assert published_dates(lake) == [DAY]


def test_a_night_published_before_versions_is_read_then_migrated(tmp_path):
    lake = _root(tmp_path, "before versions")
    assert lake.night(DAY) is None and published_dates(lake) == [DAY]
    assert read_manifest(lake, DAY)["run_id"] == OLD
    assert (lake.offers(DAY) / "offers.parquet").read_text() == f"offers of {OLD}"
    _publish(lake, NEW)
    assert read_manifest(lake, DAY)["run_id"] == NEW
    assert os.readlink(lake.link("offers", DAY)) == "../nights/date=2026-03-01/current/offers"
    assert (lake.link("reports", DAY) / "report.md").read_text() == f"# report of {NEW}\n"
    assert _strays(lake) == []


def test_keep_night_versions_is_at_least_one():
    assert load_settings(environ={}).keep_night_versions == 3
    rule = r"keep_night_versions == 0 \(from argument keep_night_versions\), must be >= 1"
    with pytest.raises(SettingsError, match=rule):
        load_settings(environ={}, keep_night_versions=0)


def _mia(*arguments: str) -> int:
    return run_command(lambda: app(list(arguments), standalone_mode=True))


def test_cli_export_into_a_folder_writes_one_file_and_never_removes_anything(tmp_path, capsys):
    lake = Lake(tmp_path / "data")
    _publish(lake, NEW)
    (lake.night(DAY) / "audiences" / "gift_box.csv").write_text("subscriber_id\n7\n")
    folder = tmp_path / "campaigns"
    folder.mkdir()
    (folder / "plan.xlsx").write_bytes(b"the user's own file")
    export = ["audience", "export", "--data-dir", str(lake.root), "--date", DAY.isoformat()]
    export += ["--offer", "gift_box", "--out", str(folder)]

    assert _mia(*export) == 0
    assert f"wrote {folder / 'gift_box.csv'}" in capsys.readouterr().out.replace("\n", "")
    assert (folder / "gift_box.csv").read_text() == "subscriber_id\n7\n"
    (folder / "gift_box.csv").write_text("edited")
    assert _mia(*export) == 2
    assert "--force" in capsys.readouterr().err
    assert (folder / "gift_box.csv").read_text() == "edited"
    assert _mia(*export, "--force") == 0
    assert (folder / "gift_box.csv").read_text() == "subscriber_id\n7\n"
    assert sorted(os.listdir(folder)) == ["gift_box.csv", "plan.xlsx"]
    assert (folder / "plan.xlsx").read_bytes() == b"the user's own file"
