"""Sharded nightly work: snapshots, ranking and audiences give the unsharded result."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from benchmarks.scale import exponent, n_shards_for, replicate_days
from features.daily import build_daily_range
from features.snapshot import (
    SnapshotInputError,
    build_snapshot,
    read_snapshot,
    read_snapshot_shard,
    shard_rows,
    snapshot_work_dir,
    write_snapshot_shard,
)
from flows import steps
from mia.hashing import shard_key, shard_key_range, shard_of
from mia.lake import (
    ROW_GROUP_ROWS,
    Lake,
    _key_cuts,
    merge_sorted_parquet,
    partition_files,
    read_partition,
    scan_partitions,
    stably_sorted,
    write_partition,
)
from mia.schema import SHARD_KEY
from mia.settings import Settings
from offers.audience import (
    audience_summary,
    build_audiences,
    write_audiences,
    write_audiences_in_parts,
)
from offers.groups import assign_groups
from offers.rank import rank_offers, rank_offers_by_shard
from tests.conftest import TINY_LAST_DAY, TINY_START, night_overrides

# ---------------------------------------------------------------------------- shard keys


@pytest.mark.parametrize("n_shards", [1, 2, 3, 7, 100])
def test_a_shard_is_exactly_its_range_of_shard_keys(n_shards):
    ids = np.arange(1, 50_001)
    keys, shards = shard_key(ids), shard_of(ids, n_shards)
    ranges = [shard_key_range(shard, n_shards) for shard in range(n_shards)]
    assert ranges[0][0] == 0 and ranges[-1][1] == 2**16
    assert all(ranges[i][1] == ranges[i + 1][0] for i in range(n_shards - 1))
    for shard, (low, high) in enumerate(ranges):
        assert np.array_equal((keys >= low) & (keys < high), shards == shard)
    # Shards are balanced: none is more than 10% off its share (50,000 ids is plenty).
    assert np.bincount(shards, minlength=n_shards).max() <= 1.1 * ids.size / n_shards


def test_shard_numbers_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"n_shards == 0, must be in \[1, 65536\]"):
        shard_of(np.arange(3), 0)
    with pytest.raises(ValueError, match=r"shard == 2, must be in \[0, 2\)"):
        shard_key_range(2, 2)


def test_partitions_stored_by_shard_key_are_read_one_shard_at_a_time(tmp_path):
    rng = np.random.default_rng(5)
    rows = 3 * ROW_GROUP_ROWS
    frame = pl.DataFrame(
        {"subscriber_id": rng.integers(1, 100_000, rows), "value": rng.random(rows)}
    )
    keyed = Lake(tmp_path / "keyed")
    plain = Lake(tmp_path / "plain")  # written without keys: the reader computes them
    for day in (TINY_START, TINY_LAST_DAY):
        write_partition(frame, keyed.raw("usage", day), by_shard=True)
        write_partition(frame, plain.raw("usage", day))
    # Row groups hold disjoint, ascending key ranges, so a shard's read skips the others.
    metadata = pq.ParquetFile(partition_files(keyed.raw("usage", TINY_START))[0]).metadata
    assert metadata.num_row_groups == 3
    column = metadata.schema.names.index(SHARD_KEY)
    bounds = [metadata.row_group(g).column(column).statistics for g in range(3)]
    assert all(bounds[g].max <= bounds[g + 1].min for g in range(2))
    whole = pl.concat([frame.with_columns(date=pl.lit(day)) for day in (TINY_START, TINY_LAST_DAY)])
    for lake in (keyed, plain):
        assert scan_partitions(lake.root / "raw" / "usage").collect().columns == whole.columns
        for shard in range(3):
            got = scan_partitions(lake.root / "raw" / "usage", shard=(shard, 3)).collect()
            expected = shard_rows(whole, shard, 3)
            assert_frame_equal(got, expected, check_row_order=False)
            one_day = read_partition(partition_files(lake.raw("usage", TINY_START)), (shard, 3))
            assert_frame_equal(one_day, shard_rows(frame, shard, 3), check_row_order=False)


def _offer_files(folder: Path, rows_per_group: int = 50) -> list[Path]:
    """Three files of offers of disjoint subscribers, as shards write them, plus an empty one."""
    rng = np.random.default_rng(11)
    ids = rng.permutation(np.arange(1, 301))
    files = []
    for number, mine in enumerate(np.array_split(ids, 3)):
        per = rng.integers(1, 6, mine.size)
        frame = pl.DataFrame(
            {
                "subscriber_id": np.repeat(mine, per),
                "rank": np.concatenate([np.arange(1, k + 1) for k in per]),
                "offer_id": rng.choice(["o1", "o2", "o3"], int(per.sum())),
            }
        ).sort("subscriber_id", "rank")
        files.append(folder / f"shard-{number}.parquet")
        frame.write_parquet(files[-1], row_group_size=rows_per_group, statistics=True)
    files.append(folder / "shard-empty.parquet")
    pl.read_parquet(files[0]).clear().write_parquet(files[-1])
    return files


def test_merging_sorted_files_in_parts_equals_sorting_their_union(tmp_path):
    files = _offer_files(tmp_path)
    # Unsorted rows and a missing key are merged right too, only with less memory saved.
    first = pl.read_parquet(files[0])
    shuffled = first.sample(fraction=1.0, shuffle=True, seed=3)
    missing_key = pl.DataFrame([[None], [1], ["o1"]], schema=first.schema, orient="col")
    pl.concat([shuffled, missing_key]).write_parquet(files[0], row_group_size=50)
    expected = pl.concat([pl.read_parquet(file) for file in files]).sort("subscriber_id", "rank")
    outputs = []
    for part_rows in (1, 120, 10_000):
        path = merge_sorted_parquet(
            files,
            tmp_path / f"out-{part_rows}" / "offers.parquet",
            by=["subscriber_id", "rank"],
            part_rows=part_rows,
        )
        assert_frame_equal(pl.read_parquet(path), expected)
        assert [p.name for p in path.parent.iterdir()] == ["offers.parquet"]  # parts removed
        outputs.append(path.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


def test_stable_sort_by_ranks_is_polars_stable_sort():
    """Candidates are written sorted by offer: by ranks of the few distinct strings, with the
    same rows in the same order as polars' stable sort, whatever the values."""
    rng = np.random.default_rng(5)
    names = np.array(["b", "a", "ä", "a b", "B", "", "z" * 40, "10", "9"])
    frame = pl.DataFrame({"key": names[rng.integers(0, names.size, 5000)], "row": np.arange(5000)})
    for column, rows in [("key", frame), ("row", frame), ("key", frame.head(0))]:
        assert_frame_equal(stably_sorted(rows, column), rows.sort(column, maintain_order=True))
    # Nulls, and more distinct strings than the ranks hold, take polars' own sort.
    with_nulls = frame.with_columns(pl.when(pl.col("row") % 7 == 0).then(None).otherwise("key"))
    expected = with_nulls.sort("key", maintain_order=True)
    assert_frame_equal(stably_sorted(with_nulls, "key"), expected)
    many = pl.DataFrame({"key": [str(n) for n in range(70_000, 0, -1)]})
    assert_frame_equal(stably_sorted(many, "key"), many.sort("key", maintain_order=True))


def test_merge_parts_hold_about_part_rows(tmp_path):
    files = _offer_files(tmp_path, rows_per_group=20)
    union = pl.concat([pl.read_parquet(file) for file in files])
    cuts = _key_cuts(files, "subscriber_id", 100)
    bounds = [-1, *cuts, union["subscriber_id"].max()]
    sizes = [
        union.filter(pl.col("subscriber_id").is_between(low, high, closed="right")).height
        for low, high in zip(bounds, bounds[1:], strict=False)
    ]
    # At most the rows asked for, plus a row group of each file cut across.
    assert max(sizes) <= 100 + 3 * 20
    assert len(sizes) >= union.height // (100 + 3 * 20)


def test_failed_merge_leaves_the_previous_file(tmp_path):
    files = _offer_files(tmp_path)
    path = tmp_path / "out" / "offers.parquet"
    merge_sorted_parquet(files, path, by=["subscriber_id", "rank"], part_rows=100)
    before = path.read_bytes()
    with pytest.raises(pl.exceptions.ColumnNotFoundError):
        merge_sorted_parquet(files, path, by=["subscriber_id", "score"], part_rows=100)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["offers.parquet"]


# ---------------------------------------------------------------------------- snapshots


@pytest.fixture(scope="module")
def aggregated_root(tmp_path_factory, ingested_root) -> Path:
    """The tiny world with daily aggregates up to its last day (read-only)."""
    root = tmp_path_factory.mktemp("aggregated") / "data"
    shutil.copytree(ingested_root, root)
    build_daily_range(Lake(root), TINY_START, TINY_LAST_DAY)
    return root


def test_union_of_snapshot_shards_is_the_unsharded_snapshot(aggregated_root):
    lake = Lake(aggregated_root)
    whole = build_snapshot(lake, TINY_LAST_DAY, Settings(), write=False)
    settings = Settings(n_shards=3)
    shards = [build_snapshot(lake, TINY_LAST_DAY, settings, write=False, shard=s) for s in range(3)]
    assert all(shard.height > 0 for shard in shards)
    for number, shard in enumerate(shards):
        assert (shard_of(shard["subscriber_id"], 3) == number).all()
        assert shard["subscriber_id"].is_sorted()
    assert pl.concat(shards).sort("subscriber_id").equals(whole)
    assert sum(shard.height for shard in shards) == whole.height


def test_sharded_snapshot_is_stored_one_file_per_shard_and_read_whole(aggregated_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(aggregated_root, root)
    lake = Lake(root)
    whole = build_snapshot(lake, TINY_LAST_DAY, Settings(), write=False)
    rows = steps.snapshot(lake, TINY_LAST_DAY, Settings(n_shards=3))
    assert rows == whole.height
    files = sorted(path.name for path in lake.snapshot(TINY_LAST_DAY).iterdir())
    assert files == ["part-0000.parquet", "part-0001.parquet", "part-0002.parquet"]
    assert not snapshot_work_dir(lake, TINY_LAST_DAY).exists()
    assert read_snapshot(lake, TINY_LAST_DAY).equals(whole)
    # A shard reads its own file, or filters a snapshot stored with another shard count.
    for n_shards in (3, 2):
        for shard in range(n_shards):
            expected = shard_rows(whole, shard, n_shards)
            got = read_snapshot_shard(lake, TINY_LAST_DAY, shard, n_shards)
            assert got.sort("subscriber_id").equals(expected)


def test_missing_shard_is_never_swapped_in(aggregated_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(aggregated_root, root)
    lake = Lake(root)
    settings = Settings(n_shards=3)
    steps.begin_snapshot(lake, TINY_LAST_DAY)
    write_snapshot_shard(lake, TINY_LAST_DAY, settings, 0)
    write_snapshot_shard(lake, TINY_LAST_DAY, settings, 2)
    with pytest.raises(SnapshotInputError, match=r"part-0001\.parquet"):
        steps.finish_snapshot(lake, TINY_LAST_DAY, settings)
    assert not lake.snapshot(TINY_LAST_DAY).exists()
    steps.begin_snapshot(lake, TINY_LAST_DAY)  # a new run starts from no shards
    assert not snapshot_work_dir(lake, TINY_LAST_DAY).exists()


def test_shard_out_of_range_is_bad_input(aggregated_root):
    with pytest.raises(SnapshotInputError, match=r"shard == 3, must be in \[0, 3\)"):
        build_snapshot(Lake(aggregated_root), TINY_LAST_DAY, Settings(n_shards=3), shard=3)


# ---------------------------------------------------------------------------- offers

CATALOG = pl.DataFrame(
    {
        "offer_id": ["a1", "a2", "b1", "b2", "c1", "d1"],
        "category": ["data_addon", "data_addon", "roaming", "roaming", "music", "voice_pack"],
        "value": [1.0, 2.0, 1.5, 1.0, 3.0, 0.5],
        "capacity": [None, 4, None, 3, 2, None],
    },
    schema={
        "offer_id": pl.String,
        "category": pl.String,
        "value": pl.Float64,
        "capacity": pl.Int64,
    },
)


def random_scores(subscribers: int, seed: int) -> pl.DataFrame:
    """Scores of a random subset of (subscriber, offer) pairs."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(1, subscribers + 1), CATALOG.height)
    offers = np.tile(CATALOG["offer_id"].to_numpy(), subscribers)
    keep = rng.random(ids.size) < 0.7
    return pl.DataFrame(
        {
            "subscriber_id": ids[keep],
            "offer_id": offers[keep],
            "p_accept": rng.random(int(keep.sum())).round(3),  # rounded: ties happen
            "reasons": [f"r{i}" for i in range(int(keep.sum()))],
            "model_version": "v1",
        }
    )


def by_shard(scores: pl.DataFrame, n_shards: int) -> list[pl.DataFrame]:
    return [shard_rows(scores, shard, n_shards) for shard in range(n_shards)]


@pytest.mark.parametrize("n_shards", [1, 3, 7])
def test_ranking_by_shard_equals_one_pass(n_shards):
    settings = Settings(
        min_probability=0.05,
        exploration_share=0.3,
        top_k=2,
        random_arm_share=0.15,
        propensity_only_arm_share=0.15,
    )
    scores = random_scores(60, seed=n_shards)
    groups = assign_groups(scores["subscriber_id"].unique(), settings)
    eligible = scores.select("subscriber_id", "offer_id")
    whole = rank_offers(scores, eligible, CATALOG, groups, settings, run_id="r1")
    shards = [
        (part, part.select("subscriber_id", "offer_id")) for part in by_shard(scores, n_shards)
    ]
    frames = list(rank_offers_by_shard(shards, CATALOG, groups, settings, run_id="r1"))
    # One frame per shard, holding that shard's subscribers only; together the one-pass result.
    assert len(frames) == n_shards
    for number, frame in enumerate(frames):
        assert (shard_of(frame["subscriber_id"], n_shards) == number).all()
    assert pl.concat(frames).sort("subscriber_id", "rank").equals(whole)
    # Lazy scores of eligible pairs only (eligible None), as the nightly step passes them.
    lazy_shards = [(part.lazy(), None) for part, _ in shards]
    again = rank_offers_by_shard(lazy_shards, CATALOG, groups, settings, run_id="r1")
    assert pl.concat(list(again)).sort("subscriber_id", "rank").equals(whole)
    # The case is not trivial: capacity binds and some subscribers explore.
    capped = whole.join(CATALOG, on="offer_id").filter(pl.col("capacity").is_not_null())
    counts = capped.group_by("offer_id", "capacity").len()
    assert (counts["len"] == counts["capacity"]).any()
    assert whole["explore"].any()
    arms = whole.join(groups, on="subscriber_id")["group"].unique().sort().to_list()
    assert arms == ["propensity_only", "random", "treatment"]


def test_ranking_by_shard_needs_a_shard():
    from offers.eligibility import OffersInputError

    groups = assign_groups([1], Settings())
    with pytest.raises(OffersInputError, match="at least one shard"):
        list(rank_offers_by_shard([], CATALOG, groups, Settings(), run_id="r1"))


def _files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_audiences_written_in_parts_equal_one_pass(tmp_path):
    settings = Settings(min_probability=0.05)
    scores = random_scores(80, seed=5)
    groups = assign_groups(scores["subscriber_id"].unique(), settings)

    def build(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
        return build_audiences(
            frame,
            frame.select("subscriber_id", "offer_id"),
            CATALOG,
            groups,
            settings,
            generated_at="2026-03-10",
        )

    whole = build(scores)
    write_audiences(whole, audience_summary(whole, CATALOG), tmp_path / "one")
    parts = [
        build(scores.filter(pl.col("offer_id").is_in(offers)))
        for offers in steps.offer_groups(scores["offer_id"].unique().to_list(), 4)
    ]
    summary = write_audiences_in_parts(parts, CATALOG, tmp_path / "parts")
    assert summary.equals(audience_summary(whole, CATALOG))
    assert _files(tmp_path / "parts") == _files(tmp_path / "one")


def test_offer_groups_cover_every_offer_once():
    offers = [f"o{i:02d}" for i in range(10)]
    groups = steps.offer_groups(list(reversed(offers)), 3)
    assert groups == [offers[0:4], offers[4:8], offers[8:10]]
    assert steps.offer_groups(offers[:2], 5) == [["o00"], ["o01"]]
    assert steps.offer_groups([], 3) == []


# ---------------------------------------------------------------------------- the night


@pytest.mark.usefixtures("prefect_harness")
def test_sharded_night_publishes_the_unsharded_outputs(night_run, tmp_path):
    from flows.nightly import nightly

    root = tmp_path / "run"
    shutil.copytree(night_run.root, root)
    manifest = nightly(
        date=TINY_LAST_DAY.isoformat(),
        data_dir=str(root / "data"),
        overrides={**night_overrides(root), "n_shards": 3},
    )
    assert manifest["settings"]["n_shards"] == 3
    assert not manifest["models"]["trained_tonight"]
    lake, reference = Lake(root / "data"), Lake(night_run.data_dir)
    assert len(list(lake.snapshot(TINY_LAST_DAY).glob("*.parquet"))) == 3
    assert read_snapshot(lake, TINY_LAST_DAY).equals(read_snapshot(reference, TINY_LAST_DAY))
    for folder in ("offers", "audiences"):
        ours = getattr(lake, folder)(TINY_LAST_DAY)
        theirs = getattr(reference, folder)(TINY_LAST_DAY)
        names = sorted(path.name for path in theirs.iterdir() if path.name != "manifest.json")
        assert names
        for name in names:
            assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name


# ---------------------------------------------------------------------------- benchmark helpers


def test_benchmark_helpers():
    assert [n_shards_for(n) for n in (1, 149_999, 150_001, 1_035_950)] == [1, 1, 2, 10]
    assert exponent([1e5, 1e6], [10.0, 100.0]) == pytest.approx(1.0)
    assert exponent([1e5, 3e5, 1e6], [5.0, 5.0 * 3**0.8, 5.0 * 10**0.8]) == pytest.approx(0.8)


def test_a_night_world_gets_only_the_last_offer_state_and_every_manifest(aggregated_root, tmp_path):
    from features.offer_state import OFFER_STATE, read_offer_state, update_offer_state

    base = tmp_path / "base"
    shutil.copytree(aggregated_root, base)
    before = TINY_LAST_DAY - dt.timedelta(days=1)
    update_offer_state(Lake(base), before)
    days = (TINY_LAST_DAY - TINY_START).days + 1
    replicate_days(base, tmp_path / "twice", 2, days, every_offer_state=False)
    states = tmp_path / "twice" / "daily" / OFFER_STATE
    assert [path.parent.name for path in states.glob("*/*.parquet")] == [f"date={before}"]
    assert len(list(states.glob("*/*.json"))) == days - 1  # the last day is the night's
    assert update_offer_state(Lake(tmp_path / "twice"), before) == []  # every state is current
    replicated = read_offer_state(Lake(tmp_path / "twice"), before)
    assert replicated.height == 2 * read_offer_state(Lake(base), before).height


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_peak_memory_is_the_process_own_not_its_parents():
    ballast = np.ones(400 * 2**20 // 8)  # the parent (this test) holds 400 MiB more
    code = (
        "import numpy as np; from mia.memory import peak_rss_bytes; before = peak_rss_bytes(); "
        "held = np.ones(200 * 2**20 // 8); print(before, peak_rss_bytes())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = (int(value) / 2**20 for value in out.stdout.split())
    assert ballast.sum() > 0 and 0 < before < 200  # MiB: imports only, not the parent's memory
    assert 200 <= after - before < 260


def test_the_retrain_benchmark_refuses_a_world_too_short_for_its_weekly_snapshots(capsys):
    from benchmarks import scale

    with pytest.raises(SystemExit, match="13 weekly snapshots need a world of at least 106 days"):
        scale.main(["--train", "--days", "90", "--subscribers", "1000", "--base", "1000"])


def test_the_night_table_shows_wall_and_cpu_seconds_per_step():
    from benchmarks.scale import STEPS, table

    row = {"size": 1_000_000, "n_shards": 5, "flow_seconds": 400.2, "peak_rss_gb": 6.94}
    row |= {"steps_seconds": 390.4, "steps_cpu_seconds": 610.6, "step_score": 120.04}
    header, _, line = table([row | {"cpu_score": 201.26}]).splitlines()
    assert header.split(" | ")[4 + STEPS.index("score")] == "score"
    cells = line.strip("| ").split(" | ")
    assert cells[:4] == ["1,000,000", "5", "400", "390 (611)"]
    assert cells[4 + STEPS.index("score")] == "120.0 (201.3)"
    assert cells[4 + STEPS.index("rank")] == "-"  # not measured
    assert cells[-1] == "6.9"
    # A run from before CPU time was recorded: wall seconds alone.
    cells = table([row | {"steps_cpu_seconds": None}]).splitlines()[2].strip("| ").split(" | ")
    assert cells[3] == "390" and cells[4 + STEPS.index("score")] == "120.0"


def test_the_retrain_table_shows_seconds_and_the_rise_of_peak_memory_per_part():
    from benchmarks.scale import TRAIN_PARTS, train_table

    row = {
        "size": 100_000,
        "train_snapshots": 13,
        "train_seconds": 716.4,
        "train_cpu_seconds": 1055.8,
        "peak_rss_gb": 11.96,
        "own_peak_rss_gb": 12.03,
        "wall_propensity": 530.4,
        "cpu_propensity": 838.7,
        "peak_rise_gb_propensity": 6.04,
    }
    seconds, rises = train_table([row]).split("\n\nRise of peak RSS per part (GiB):\n\n")
    header, _, line = seconds.splitlines()
    assert header.split(" | ")[3 + TRAIN_PARTS.index("propensity")] == "propensity"
    cells = line.strip("| ").split(" | ")
    assert cells[:3] == ["100,000", "13", "716 (1056)"]
    assert cells[3 + TRAIN_PARTS.index("propensity")] == "530 (839)"
    assert cells[3 + TRAIN_PARTS.index("als")] == "0 (0)"  # a part that did not run
    assert cells[-1] == "12.0"
    cells = rises.splitlines()[2].strip("| ").split(" | ")
    assert cells[:2] == ["100,000", "12.0"]
    assert cells[2 + TRAIN_PARTS.index("propensity")] == "+6.0"
    assert cells[2 + TRAIN_PARTS.index("als")] == "-"  # measured before parts were recorded
