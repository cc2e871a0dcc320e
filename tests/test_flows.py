"""The nightly flow end to end on the tiny world: publishing, reruns, failures, locks, bad input."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from flows import steps
from flows.cli import app, run_command
from flows.nightly import nightly
from flows.publish import MANIFEST, STAGING, published_dates, read_manifest
from mia.errors import InputError
from mia.hashing import control_mask
from mia.lake import LOCK_FILE, Lake, LockedError, run_lock
from mia.settings import Settings
from tests.conftest import (
    TINY_DAYS,
    TINY_LAST_DAY,
    TINY_START,
    assert_offers_follow_the_policy,
    night_overrides,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _published(root: Path, date: dt.date) -> dict[str, bytes]:
    """Published offers and audiences of a night; the manifest (it holds durations) aside."""
    lake = Lake(root)
    files = {}
    for name, directory in (
        ("offers", lake.offers(date)),
        ("audiences", lake.audiences(date)),
    ):
        files.update(
            {f"{name}/{key}": value for key, value in _files(directory).items() if key != MANIFEST}
        )
    return files


def _copy_run(night_run, tmp_path: Path) -> Path:
    root = tmp_path / "run"
    shutil.copytree(night_run.root, root)
    return root


def _assert_unlocked(root: Path) -> None:
    """No run holds the data root any more (the lock file itself stays)."""
    with open(root / LOCK_FILE) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _mia(*arguments: str) -> int:
    return run_command(lambda: app(list(arguments), standalone_mode=True))


def test_nightly_publishes_offers_audiences_report_and_manifest(night_run):
    lake = Lake(night_run.data_dir)
    offers = pl.read_parquet(lake.offers(TINY_LAST_DAY) / "offers.parquet")
    manifest = read_manifest(lake, TINY_LAST_DAY)
    assert manifest["status"] == "published"
    assert manifest["rows"]["offers"] == offers.height > 0
    assert manifest["models"]["champion_version"] == "1"
    assert manifest["run_id"] == offers["run_id"].unique().item()
    # Published ranks 1..reason_ranks (2) say why, in words (added per shard after ranking); the
    # later ranks have no reasons: SHAP is the costly part of the night.
    read = offers.filter(pl.col("rank") <= 2)["reasons"]
    assert read.null_count() == 0 and (read.str.len_chars() > 10).all()
    assert offers.filter(pl.col("rank") > 2)["reasons"].null_count() == (offers["rank"] > 2).sum()
    steps_timed = {"ingest", "snapshot", "train", "score", "rank", "reasons", "audiences"}
    assert set(manifest["durations_seconds"]) >= steps_timed
    # Peak memory of the flow process after each timed step: known, and never going down.
    memory = manifest["peak_rss_gb_after"]
    assert set(memory) == set(manifest["durations_seconds"])
    # CPU seconds of the flow process per step: every step timed, and the night's work takes some.
    assert set(manifest["cpu_seconds"]) == set(manifest["durations_seconds"])
    assert sum(manifest["cpu_seconds"].values()) > 0
    order = ["ingest", "daily", "snapshot", "train", "score", "rank", "reasons", "audiences"]
    in_order = [memory[step] for step in order]
    assert 0 < in_order[0] and in_order == sorted(in_order)
    assert published_dates(lake) == [TINY_LAST_DAY]

    summary = pl.read_csv(lake.audiences(TINY_LAST_DAY) / "summary.csv")
    assert manifest["rows"]["audiences"] == summary.height > 0
    report = lake.reports(TINY_LAST_DAY) / "report.md"
    text = report.read_text()
    assert "Mia nightly report" in text
    # Counted from the offers file without loading it: the same as counting the loaded file.
    assert f"- subscribers with offers: {offers['subscriber_id'].n_unique():,};" in text
    categories = offers["category"].n_unique()
    assert f"- offers: {offers.height:,} across {categories} categories" in text
    assert (lake.reports(TINY_LAST_DAY) / "offers_per_category.png").stat().st_size > 1000
    assert not (lake.root / STAGING).exists() or not any((lake.root / STAGING).iterdir())
    _assert_unlocked(lake.root)


def test_control_group_never_receives_offers(night_run):
    offers = pl.read_parquet(Lake(night_run.data_dir).offers(TINY_LAST_DAY) / "offers.parquet")
    ids = offers["subscriber_id"].unique()
    assert not control_mask(ids, Settings().group_salt, Settings().control_share).any()
    per_subscriber = offers.group_by("subscriber_id").agg(pl.len().alias("n"))
    assert per_subscriber["n"].max() <= Settings().top_k


def test_rerun_of_the_same_night_gives_identical_outputs(night_run, tmp_path):
    root = _copy_run(night_run, tmp_path)
    before = _published(root / "data", TINY_LAST_DAY)
    manifest = nightly(
        date=TINY_LAST_DAY.isoformat(),
        data_dir=str(root / "data"),
        overrides=night_overrides(root),
    )
    assert manifest["models"]["trained_tonight"] is False
    assert _published(root / "data", TINY_LAST_DAY) == before


def _assert_same_frames(left: pl.DataFrame, right: pl.DataFrame, what: str) -> None:
    """Equal frames, floats to 1e-9 and the run id aside (it names the settings)."""
    from polars.testing import assert_frame_equal

    try:
        assert_frame_equal(
            left.drop("run_id", strict=False),
            right.drop("run_id", strict=False),
            rel_tol=0,
            abs_tol=1e-9,
        )
    except AssertionError as error:
        raise AssertionError(f"{what}: {error}") from error


def test_compiled_trees_publish_what_lightgbm_publishes(night_run, tmp_path):
    root = _copy_run(night_run, tmp_path)
    lake, compiled = Lake(root / "data"), Lake(night_run.data_dir)
    nightly(
        date=TINY_LAST_DAY.isoformat(),
        data_dir=str(root / "data"),
        overrides={**night_overrides(root), "compiled_trees": False},
    )
    # The champion was compiled once, when it was trained, beside its MLflow artifacts.
    assert list((night_run.data_dir / "mlruns" / "artifacts" / "compiled").glob("*.o"))
    _assert_same_frames(
        pl.read_parquet(lake.offers(TINY_LAST_DAY) / "offers.parquet"),
        pl.read_parquet(compiled.offers(TINY_LAST_DAY) / "offers.parquet"),
        "offers",
    )
    files = sorted(path.name for path in compiled.audiences(TINY_LAST_DAY).glob("*.csv"))
    assert files and files == sorted(p.name for p in lake.audiences(TINY_LAST_DAY).glob("*.csv"))
    for name in files:
        _assert_same_frames(
            pl.read_csv(lake.audiences(TINY_LAST_DAY) / name),
            pl.read_csv(compiled.audiences(TINY_LAST_DAY) / name),
            name,
        )


def test_failed_run_leaves_previous_outputs_and_next_run_succeeds(night_run, tmp_path, monkeypatch):
    root = _copy_run(night_run, tmp_path)
    data = root / "data"
    before = _published(data, TINY_LAST_DAY)
    report_before = _files(Lake(data).reports(TINY_LAST_DAY))

    def crash(*args, **kwargs):
        raise RuntimeError("disk full while writing audiences (injected)")

    monkeypatch.setattr(steps, "audiences", crash)
    with pytest.raises(RuntimeError, match="injected"):
        nightly(date=TINY_LAST_DAY.isoformat(), data_dir=str(data), overrides=night_overrides(root))
    assert _published(data, TINY_LAST_DAY) == before
    assert _files(Lake(data).reports(TINY_LAST_DAY)) == report_before
    _assert_unlocked(data)

    monkeypatch.undo()
    manifest = nightly(
        date=TINY_LAST_DAY.isoformat(), data_dir=str(data), overrides=night_overrides(root)
    )
    assert manifest["status"] == "published"
    assert _published(data, TINY_LAST_DAY) == before
    assert not any((data / STAGING).iterdir())


def test_second_run_on_a_locked_data_root_fails_and_publishes_nothing(night_run, tmp_path):
    root = _copy_run(night_run, tmp_path)
    data = root / "data"
    earlier = TINY_LAST_DAY - dt.timedelta(days=1)
    with run_lock(data, owner="another nightly"):
        with pytest.raises(LockedError, match="in use by another nightly"):
            nightly(date=earlier.isoformat(), data_dir=str(data), overrides=night_overrides(root))
    assert earlier not in Lake(data).dates("offers")


def test_bad_delivery_exits_2_and_writes_nothing(night_run, tmp_path, capsys):
    root = _copy_run(night_run, tmp_path)
    data = root / "data"
    lake = Lake(data)
    new_day = TINY_LAST_DAY + dt.timedelta(days=1)
    shutil.copytree(lake.incoming(TINY_LAST_DAY), lake.incoming(new_day))
    usage_path = lake.incoming(new_day) / "usage.parquet"
    usage = pl.read_parquet(usage_path)
    usage.with_columns(
        pl.when(pl.int_range(pl.len()) < 2).then(pl.lit("fax")).otherwise("kind").alias("kind")
    ).write_parquet(usage_path)
    before = {part: _files(data / part) for part in ("raw", "daily", "features", "offers")}

    code = _mia(
        "nightly",
        "--data-dir",
        str(data),
        "--date",
        new_day.isoformat(),
        "--config",
        str(_config_file(root)),
    )
    assert code == 2
    assert "usage.kind" in capsys.readouterr().err  # refused for the bad cells, nothing else
    after = {part: _files(data / part) for part in ("raw", "daily", "features", "offers")}
    assert after == before


def _config_file(root: Path) -> Path:
    path = root / "mia.toml"
    overrides = night_overrides(root)
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in overrides.items()))
    return path


def test_missing_day_is_bad_input(night_run, tmp_path):
    root = _copy_run(night_run, tmp_path)
    with pytest.raises(InputError, match="no input for"):
        nightly(date="2030-01-01", data_dir=str(root / "data"), overrides=night_overrides(root))


def test_cli_shows_explains_lists_and_exports(night_run, tmp_path, capsys):
    data, day = str(night_run.data_dir), TINY_LAST_DAY.isoformat()
    offers = pl.read_parquet(Lake(night_run.data_dir).offers(TINY_LAST_DAY) / "offers.parquet")
    subscriber = str(offers["subscriber_id"][0])
    offer_id = offers["offer_id"][0]

    assert (
        _mia("offers", "show", "--data-dir", data, "--date", day, "--subscriber", subscriber) == 0
    )
    assert offer_id in capsys.readouterr().out
    assert (
        _mia("offers", "explain", "--data-dir", data, "--date", day, "--subscriber", subscriber,
             "--all")
        == 0
    )  # fmt: skip
    # Each offer with the rules it failed and what exploration knows of it.
    explained = capsys.readouterr().out
    for column in ("failed_rules", "impressions", "posterior_mean", "exploring"):
        assert column in explained
    assert _mia("audience", "list", "--data-dir", data, "--date", day) == 0
    assert offer_id in capsys.readouterr().out

    exported = tmp_path / "audience.csv"
    code = _mia(
        "audience", "export", "--data-dir", data, "--date", day, "--offer", offer_id,
        "--out", str(exported),
    )  # fmt: skip
    assert code == 0
    frame = pl.read_csv(exported)
    assert set(frame["offer_id"].unique()) == {offer_id}
    assert _mia("audience", "export", "--data-dir", data, "--date", day, "--offer", "nope",
                "--out", str(exported)) == 2  # fmt: skip
    assert _mia("offers", "show", "--data-dir", data, "--date", "2031-02-30") == 2
    assert _mia("report", "--data-dir", data, "--date", day) == 0
    assert "Mia nightly report" in capsys.readouterr().out
    first = TINY_START.isoformat()
    assert _mia("lift", "--data-dir", data, "--from", first, "--to", day, "--level", "all") == 0
    lift_table = capsys.readouterr().out
    assert "treatment vs control" in lift_table and "relative_lift" in lift_table


def test_manifest_is_valid_json_with_inputs(night_run):
    path = Lake(night_run.data_dir).offers(TINY_LAST_DAY) / MANIFEST
    manifest = json.loads(path.read_text())
    assert manifest["inputs"]["raw_rows"]["usage"] > 0
    # Every day was ingested before the night (ingested_root); the night re-ingested its own.
    assert manifest["inputs"]["ingested_days"] == {
        "count": TINY_DAYS,
        "first": TINY_START.isoformat(),
        "last": TINY_LAST_DAY.isoformat(),
        "tonight": [TINY_LAST_DAY.isoformat()],
    }
    assert manifest["inputs"]["state_tables"]["catalog"]["delivered"] == TINY_LAST_DAY.isoformat()
    assert manifest["inputs"]["warnings"] == []
    assert manifest["models"]["trained_tonight"] is True
    assert manifest["models"]["mlflow_run_id"]


def test_report_is_tracked_in_mlflow(night_run):
    import mlflow

    from models.registry import tracking

    settings = Settings(data_dir=night_run.data_dir)
    run_id = night_run.manifest["models"]["mlflow_nightly_run_id"]
    with tracking(settings):
        run = mlflow.get_run(run_id)
        files = {item.path for item in mlflow.MlflowClient().list_artifacts(run_id, "report")}
    assert run.data.metrics["offers"] == night_run.manifest["rows"]["offers"]
    assert "report/report.md" in files


def test_shards_scored_in_threads_give_the_one_shard_outputs(night_run, tmp_path):
    from flows.nightly import nightly

    root = _copy_run(night_run, tmp_path)
    data = root / "data"
    local = _published(night_run.data_dir, TINY_LAST_DAY)
    manifest = nightly(
        date=TINY_LAST_DAY.isoformat(),
        data_dir=str(data),
        overrides={**night_overrides(root), "n_shards": 3, "score_workers": 3},
    )
    assert manifest["settings"]["n_shards"] == 3
    threaded = _published(data, TINY_LAST_DAY)
    offers = "offers/offers.parquet"
    assert pl.read_parquet(threaded.pop(offers)).equals(pl.read_parquet(local.pop(offers)))
    assert threaded == local


def test_sharded_run_on_a_dask_cluster_gives_the_local_outputs(night_run, tmp_path):
    from distributed import LocalCluster
    from prefect.settings import PREFECT_API_URL

    from flows.nightly import nightly_for

    root = _copy_run(night_run, tmp_path)
    data = root / "data"
    local = _published(night_run.data_dir, TINY_LAST_DAY)
    # Workers report task runs to the same Prefect API as this process.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
            settings = Settings(dask_address=cluster.scheduler_address)
            manifest = nightly_for(settings)(
                date=TINY_LAST_DAY.isoformat(),
                data_dir=str(data),
                overrides={**night_overrides(root), "n_shards": 3},
            )
    assert manifest["settings"]["n_shards"] == 3
    assert _published(data, TINY_LAST_DAY) == local


def test_published_offers_respect_eligibility_and_contact_policy(night_run):
    from flows.steps import eligible_for_night
    from mia.ingest import raw_state

    lake, settings = Lake(night_run.data_dir), Settings()
    offers = pl.read_parquet(lake.offers(TINY_LAST_DAY) / "offers.parquet")
    eligible = eligible_for_night(lake, TINY_LAST_DAY, settings)
    assert_offers_follow_the_policy(offers, eligible, settings)
    capacity = raw_state(lake, "catalog", TINY_LAST_DAY).select("offer_id", "capacity")
    given = offers.group_by("offer_id").agg(pl.len().alias("n")).join(capacity, on="offer_id")
    assert given.filter(
        pl.col("capacity").is_not_null() & (pl.col("n") > pl.col("capacity"))
    ).is_empty()
    assert (offers["expected_value"] >= 0).all() and offers["p_accept"].is_between(0, 1).all()


def test_a_root_pointed_at_another_roots_models_is_refused_before_any_write(
    night_run, fresh_root, monkeypatch, capsys
):
    """The store of the night's root holds a fresh champion: another root must not use it."""
    theirs = Settings(data_dir=night_run.data_dir)
    monkeypatch.setenv("MIA_MLFLOW_URI", theirs.mlflow_uri)
    monkeypatch.setenv("MIA_MLFLOW_ARTIFACTS", str(theirs.mlflow_artifacts))
    before = {k: v for k, v in _files(fresh_root).items() if not k.startswith(".mia.lock")}
    day = TINY_LAST_DAY.isoformat()
    assert _mia("nightly", "--data-dir", str(fresh_root), "--date", day) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert f"trained from data root {night_run.data_dir}" in error and "shared_registry" in error
    after = {k: v for k, v in _files(fresh_root).items() if not k.startswith(".mia.lock")}
    assert after == before


def test_the_champion_is_loaded_once_per_process_and_compiled_unless_off(night_run):
    from models.scoring import load_bundle

    settings = Settings(data_dir=night_run.data_dir, train_snapshots=4)
    first = load_bundle(settings)
    assert load_bundle(settings) is first and first.version == "1"
    assert first.propensity.compiled_ and first.blend.compiled_ is not None
    plain = load_bundle(settings.replace(compiled_trees=False))
    assert plain is not first and plain.propensity.compiled_ == {}
