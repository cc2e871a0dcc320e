"""Training pipeline on the shared tiny world: blend vs inputs, identical retrain, champion gate,
and a champion loaded in a fresh process scoring a new snapshot."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mia.lake import Lake
from mia.settings import Settings
from models import training
from models.blend import OfferBlend
from models.propensity import CategoryPropensity
from models.registry import tracking
from models.scoring import MODEL_NAME, SCORE_COLUMNS, active_offers, blend_frame, score_offers
from models.training import (
    GATE_METRIC,
    TrainingInputError,
    als_grid,
    blend_windows,
    fit_bundle,
    load_training_data,
    plain_types,
    propensity_model,
    read_or_build_snapshot,
    snapshot_dates,
    train_models,
)
from tests.conftest import share_by_hand, training_world

AS_OF = dt.date(2026, 3, 4)  # the tiny world runs 2026-01-01 .. 2026-03-11


@pytest.fixture(scope="module")
def world(tmp_path_factory, ingested_root) -> tuple[Lake, Settings]:
    base = tmp_path_factory.mktemp("training")
    return training_world(base, ingested_root)


@pytest.fixture(scope="module")
def first(world):
    lake, settings = world
    return train_models(lake, AS_OF, settings)


@pytest.fixture(scope="module")
def second(world, first):
    lake, settings = world
    return train_models(lake, AS_OF, settings)


def test_snapshot_dates_keep_labels_before_as_of():
    settings = Settings(horizon_days=7, snapshot_step_days=7, train_snapshots=4)
    dates = snapshot_dates(AS_OF, settings)
    assert dates == [
        dt.date(2026, 2, 4),
        dt.date(2026, 2, 11),
        dt.date(2026, 2, 18),
        AS_OF - dt.timedelta(days=7),
    ]
    assert dates[-1] + dt.timedelta(days=settings.horizon_days) == AS_OF


def test_als_is_tuned_on_the_validation_window_and_its_ranking_metrics_reported(first):
    for key in ("als.precision@5", "als.map@5", "als.ndcg@5", "als.coverage@5"):
        assert 0.0 <= first.metrics[key] <= 1.0
    grid = als_grid(Settings())
    assert first.bundle.cf.factors in grid["factors"]
    assert first.bundle.cf.regularization in grid["regularization"]


def test_snapshot_dates_use_only_the_history_there_is():
    settings = Settings(horizon_days=7, snapshot_step_days=7, train_snapshots=13)
    dates = snapshot_dates(AS_OF, settings, first_day=dt.date(2026, 1, 1))
    # A week of history behind the oldest: 2026-01-14 is the first such Wednesday.
    assert dates[0] == dt.date(2026, 1, 14)
    assert dates[-1] == AS_OF - dt.timedelta(days=7)
    assert len(dates) == 7


def test_blend_windows_leave_each_propensity_history_to_train_and_calibrate_on():
    assert [blend_windows(n, 3) for n in (3, 4, 5, 8, 13)] == [1, 2, 3, 3, 3]
    assert [blend_windows(n, 1) for n in (3, 13)] == [1, 1]


def test_blend_is_fitted_on_several_windows_with_inputs_from_before_each(world, monkeypatch):
    lake, settings = world
    # Few rows allowed per propensity fit: rows are sampled by label and weighted.
    settings = settings.replace(blend_windows=3, max_train_rows=1000)
    data = load_training_data(lake, AS_OF, settings)
    dates = data.snapshot_dates
    assert list(data.interactions_windows) == [dates[-2]]  # 4 snapshots: T_0 and T_1
    # T_1's rows read the responses up to T_1 only (its labels start after it).
    assert data.offer_states[dates[-2]]["last_impression_ts"].max() < dt.datetime.combine(
        dates[-2] + dt.timedelta(days=1), dt.time()
    )
    propensity_dates, input_models, blend_rows, sampled_positives = [], {}, [], []
    fit_propensity, input_models_of, fit_blend = (
        CategoryPropensity.fit,
        training._input_models,
        OfferBlend.fit,
    )

    def record_propensity(self, train, valid):
        propensity_dates.append((train["snapshot_date"].max(), valid["snapshot_date"].max()))
        labels = pl.concat([data.category_labels[date] for date in train["snapshot_date"].unique()])
        assert train.height < labels.height and train.height == pytest.approx(1000, rel=0.2)
        negatives, positives = labels.height - labels["label"].sum(), labels["label"].sum()
        # Positives fill half of the 1000 rows at most (T_0's 509 are sampled, the earlier weeks'
        # fewer all kept), the negatives the rest, and each kept row weighs 1 / its rate.
        kept = min(positives, 500)
        assert train["label"].sum() == (positives if kept == positives else pytest.approx(500, 0.1))
        weights = train.filter(pl.col("label") == 1)["weight"].unique()
        assert weights.to_list() == [pytest.approx(positives / kept)]
        weights = train.filter(pl.col("label") == 0)["weight"].unique()
        assert weights.to_list() == [pytest.approx(negatives / (1000 - kept))]
        sampled_positives.append(kept < positives)
        assert valid.height == pytest.approx(250, rel=0.2)
        return fit_propensity(self, train, valid)

    def record_inputs(data, settings, window, als_params):
        input_models[window] = input_models_of(data, settings, window, als_params)
        return input_models[window]

    def record_blend(self, frame):
        blend_rows.append(frame.height)
        return fit_blend(self, frame)

    monkeypatch.setattr(CategoryPropensity, "fit", record_propensity)
    monkeypatch.setattr(training, "_input_models", record_inputs)
    monkeypatch.setattr(OfferBlend, "fit", record_blend)
    fit_bundle(data, settings)
    # Each window's propensity trained and calibrated on snapshots before the window's labels.
    assert propensity_dates == [(dates[-3], dates[-2]), (dates[-4], dates[-3])]
    assert sampled_positives == [True, False]  # both ways of the cap are seen
    # Its ALS learned from the interactions up to that window only.
    assert input_models[1].cf.user_items_.sum() == pytest.approx(
        data.interactions_windows[dates[-2]]["confidence"].sum()
    )
    assert input_models[1].cf.user_items_.sum() < input_models[0].cf.user_items_.sum()
    # The blend saw the non-holdout rows of both windows.
    expected = 0
    for window, bundle in input_models.items():
        rows, held = training._labelled_blend_rows(bundle, data, window)
        expected += int((~held).sum())
        # Each window's activity per category comes from its own interactions, not T_0's.
        _, interactions, _ = data.blend_window(window)
        for source, same in ((interactions, True), (data.interactions_as_of, False)):
            share = rows.join(
                share_by_hand(source, data.catalog),
                on=["subscriber_id", "category"],
                how="left",
                maintain_order="left",
            )["share"].fill_null(0.0)
            close = np.allclose(rows["interaction_category_share"].to_numpy(), share.to_numpy())
            assert close is same
    assert blend_rows == [expected]
    # Computed a few subscribers at a time, the rows are the same.
    monkeypatch.setattr(training, "BLEND_CHUNK_SUBSCRIBERS", 97)
    chunked, chunked_held = training._labelled_blend_rows(bundle, data, window)
    assert chunked.equals(rows) and (chunked_held == held).all()


def test_first_training_is_promoted_and_reports_metrics(world, first):
    settings = world[1]
    assert first.version == "1" and first.promoted
    assert first.reason == "no champion yet"
    metrics = first.metrics
    for key in (
        "blend.roc_auc",
        "blend.log_loss",
        "blend.ece",
        "blend.lift_at_10",
        "propensity.data_addon.roc_auc",
        "propensity.all.pr_auc",
    ):
        assert key in metrics
    summary = first.notes["propensity_summary"]
    assert summary.height == 24
    # Where the time went, per model family, summed over the blend's windows.
    parts = {"snapshots", "labels", "responses", "als_tuning", "propensity", "als", "taste"}
    parts |= {"blend_inputs", "blend", "holdout_metrics", "registry"}
    assert (
        set(first.seconds.wall) == set(first.seconds.cpu) == set(first.seconds.peak_rise) == parts
    )
    assert all(value >= 0 for value in first.seconds.wall.values())
    assert all(value >= 0 for value in first.seconds.peak_rise.values())
    with tracking(settings) as client:
        logged = client.get_run(first.run_id).data.metrics
    assert logged["seconds.propensity"] == first.seconds.wall["propensity"]
    assert set(summary.filter(pl.col("kind") == "prior")["category"]) == set(
        first.fallback_categories
    )


def test_blend_beats_each_input_on_the_holdout(first):
    metrics = first.metrics
    assert metrics["blend.roc_auc"] > metrics["inputs.p_category.roc_auc"]
    assert metrics["blend.roc_auc"] > metrics["inputs.cf_score.roc_auc"]
    assert metrics["blend.roc_auc"] > metrics["inputs.taste_logit.roc_auc"] > 0.5


def test_the_blend_learns_from_each_pair_history_as_of_the_last_snapshot(world):
    """The blend's labelled rows read the offer state as of T_0, as a night reads its own: the
    counts are the pair's, and nothing after T_0 (when the labels start) is in them."""
    from models.training import fit_bundle, load_training_data

    lake, settings = world
    data = load_training_data(lake, AS_OF, settings)
    t0 = data.snapshot_dates[-1]
    state = data.offer_states[t0]
    assert state["last_impression_ts"].max() < dt.datetime.combine(
        t0 + dt.timedelta(days=1), dt.time()
    )
    _, frames = fit_bundle(data, settings)
    rows = frames["holdout"].join(
        state.select("subscriber_id", "offer_id", "impressions", "dismisses"),
        on=["subscriber_id", "offer_id"],
        how="left",
    )
    assert rows["impressions"].fill_null(0).sum() > 100
    assert rows["history_offer_impressions"].to_list() == rows["impressions"].fill_null(0).to_list()
    assert rows["history_offer_dismisses"].to_list() == rows["dismisses"].fill_null(0).to_list()


def test_tastes_are_learned_on_the_last_snapshot_and_can_be_left_out(first, world):
    taste = first.bundle.taste
    assert taste.fitted_ and taste.categories_ == first.bundle.propensity.categories_
    assert taste.factors == 4 and taste.window == 90
    lake, settings = world
    without = train_models(lake, AS_OF, settings.replace(taste_factors=0), register=False)
    assert without.bundle.taste is None
    assert "inputs.taste_logit.roc_auc" not in without.metrics
    snapshot = read_or_build_snapshot(lake, AS_OF, settings)
    bundle = without.bundle
    scores = score_offers(bundle, snapshot, bundle.catalog, bundle.interactions)
    assert scores.height > 0 and scores["p_accept"].is_between(0, 1).all()


def test_retraining_unchanged_data_is_identical(first, second, world):
    lake, settings = world
    assert second.metrics == first.metrics
    assert second.promoted and second.version == "2"
    snapshot = read_or_build_snapshot(lake, AS_OF, settings)
    catalog, interactions = first.bundle.catalog, first.bundle.interactions
    one = score_offers(first.bundle, snapshot, catalog, interactions).drop("model_version")
    two = score_offers(second.bundle, snapshot, catalog, interactions).drop("model_version")
    assert one.equals(two)


def test_gate_keeps_champion_when_a_worse_model_is_offered(world, second):
    from models import registry

    lake, settings = world
    worse = second.bundle
    worse = type(worse)(**{**worse.__dict__, "blend": None, "version": ""})
    snapshot = read_or_build_snapshot(lake, AS_OF, settings)
    offers = active_offers(worse.catalog, AS_OF + dt.timedelta(days=1))
    frame = blend_frame(second.bundle, snapshot, offers, worse.interactions)
    noise = np.random.default_rng(0).random(frame.height) < 0.2
    worse.blend = OfferBlend(num_boost_round=30, num_threads=1, monotone=False).fit(
        frame.with_columns(pl.Series("label", noise.astype(np.int8)))
    )
    with registry.start_run(settings, "worse-candidate"):
        example = plain_types(snapshot.head(3)).to_pandas()
        version = registry.log_scorer(MODEL_NAME, worse, example)
        decision = registry.promote(
            MODEL_NAME, version, second.evaluate, GATE_METRIC, tolerance=settings.gate_tolerance
        )
    assert not decision.promoted
    assert decision.champion_version == second.version
    assert decision.candidate_metric < decision.champion_metric - settings.gate_tolerance
    assert "worse than champion" in decision.reason
    assert registry.champion_info(MODEL_NAME, settings)["version"] == second.version


def test_champion_scores_a_new_snapshot_in_a_fresh_process(world, second, tmp_path):
    from mia.ingest import raw_state

    lake, settings = world
    new_day = AS_OF + dt.timedelta(days=3)
    snapshot = read_or_build_snapshot(lake, new_day, settings)
    snapshot_file = tmp_path / "snapshot.parquet"
    snapshot.write_parquet(snapshot_file)
    output = tmp_path / "scores.parquet"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        import polars as pl
        from mia.settings import Settings
        from models.scoring import load_bundle
        settings = Settings(data_dir=Path({str(settings.data_dir)!r}))
        bundle = load_bundle(settings)
        bundle.predict_frame(pl.read_parquet({str(snapshot_file)!r})).write_parquet({str(output)!r})
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    scores = pl.read_parquet(output)
    assert tuple(scores.columns) == SCORE_COLUMNS
    offers = active_offers(raw_state(lake, "catalog", AS_OF), new_day + dt.timedelta(days=1))
    assert scores.height == snapshot.height * offers.height
    assert set(scores["model_version"]) == {second.version}
    assert scores["p_accept"].is_between(0, 1).all()
    assert scores["reasons"].str.count_matches("; ").max() == 2
    assert scores.select("subscriber_id", "offer_id").equals(
        scores.select("subscriber_id", "offer_id").sort("subscriber_id", "offer_id")
    )
    expected = score_offers(
        second.bundle, snapshot, second.bundle.catalog, second.bundle.interactions
    )
    # The fresh process scores with compiled trees (compiling them first): LightGBM's numbers
    # to within rounding, everything else the same.
    assert scores.drop("model_version", "p_accept").equals(
        expected.drop("model_version", "p_accept")
    )
    assert (scores["p_accept"] - expected["p_accept"]).abs().max() < 1e-9


def test_not_enough_history_is_refused(world):
    lake, settings = world
    with pytest.raises(TrainingInputError, match="needs at least 3 snapshots"):
        train_models(lake, dt.date(2026, 1, 20), settings, register=False)


def test_a_dask_address_sends_large_categories_to_the_cluster():
    model = propensity_model(Settings(dask_address="tcp://scheduler:8786", dask_train_rows=5000))
    assert (model.dask_address, model.dask_min_rows) == ("tcp://scheduler:8786", 5000)
    assert propensity_model(Settings()).dask_address is None  # trains here


def test_snapshots_beyond_the_memory_budget_are_read_back_from_the_lake(world, first):
    from features.snapshot import read_snapshot

    lake, settings = world
    dates = snapshot_dates(AS_OF, settings)
    size = read_snapshot(lake, dates[-1]).estimated_size()
    store = training.SnapshotStore(lake, budget=int(size * 1.5))
    for date in reversed(dates):  # the newest first, as training adds them
        store.add(date, read_snapshot(lake, date))
    assert store.in_memory() == [dates[-1]]
    assert list(store) == dates and len(store) == len(dates)
    for date in dates:
        assert store[date].equals(read_snapshot(lake, date))
    with pytest.raises(KeyError):
        store[AS_OF]


def test_frames_on_demand_are_read_at_each_use_and_never_kept():
    reads = []

    def read(date: dt.date) -> pl.DataFrame:
        reads.append(date)
        return pl.DataFrame({"day": [date.day]})

    first, second = dt.date(2026, 3, 4), dt.date(2026, 2, 25)
    frames = training.FramesOnDemand([first, second, first], read)
    assert list(frames) == [second, first] and len(frames) == 2 and reads == []
    assert frames[first]["day"].to_list() == [4] and frames[first].height == 1
    assert reads == [first, first]  # read again: nothing is held between uses
    other = dt.date(2026, 1, 1)
    assert frames.get(other) is None and reads == [first, first]
    with pytest.raises(KeyError):
        frames[other]
