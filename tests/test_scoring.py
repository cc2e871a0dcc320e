"""Fast scoring on the shared tiny world: the pruned path equals the reference path (p_accept to
1e-6, reasons exactly), eligible-only scoring is exactly a subset, reasons on demand; compiled
trees predict what LightGBM predicts, compiled once per model and cached."""

from __future__ import annotations

import datetime as dt
import logging
import pickle
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import models.compiled as compiled
from benchmarks.scoring import reference_reasons, reference_score_offers
from mia.ingest import raw_events, raw_state
from mia.schema import CATEGORY, OFFER_ID, P_ACCEPT, REASONS, SUBSCRIBER_ID
from models.blend import BLEND_FEATURES, candidate_features, candidate_inputs
from models.reasons import explain, top_features
from models.scoring import ScoringInputError, active_offers, add_reasons, score_offers
from tests.conftest import share_by_hand, training_world

AS_OF = dt.date(2026, 3, 4)  # training date; scoring on the last day of the tiny world
NIGHT = dt.date(2026, 3, 11)


@pytest.fixture(scope="module")
def night(tmp_path_factory, ingested_root) -> dict:
    """A bundle trained on the tiny world and the last day's scoring inputs."""
    from features.offer_state import read_offer_state
    from models.cf import build_interactions
    from models.training import read_or_build_snapshot, train_models
    from offers.eligibility import eligible_pairs

    base = tmp_path_factory.mktemp("scoring")
    lake, settings = training_world(base, ingested_root)
    bundle = train_models(lake, AS_OF, settings, register=False).bundle
    bundle.version = "7"
    events = raw_events(lake, "offer_events", NIGHT - dt.timedelta(days=89), NIGHT).collect()
    catalog = raw_state(lake, "catalog", NIGHT)
    snapshot = read_or_build_snapshot(lake, NIGHT, settings)
    eligible = eligible_pairs(
        raw_state(lake, "subscribers", NIGHT),
        catalog,
        raw_state(lake, "holdings", NIGHT),
        events,
        NIGHT,
    )
    return {
        "bundle": bundle,
        # Reverse order: scoring must not depend on the order it is given.
        "snapshot": snapshot.sort(SUBSCRIBER_ID, descending=True),
        "catalog": catalog,
        "interactions": build_interactions(events, NIGHT, lookback_days=90),
        "eligible": eligible,
        "offer_state": read_offer_state(lake, NIGHT),
    }


def night_arguments(night: dict) -> tuple:
    """The bundle, snapshot, catalog and interactions of the night, as scoring takes them."""
    return night["bundle"], night["snapshot"], night["catalog"], night["interactions"]


@pytest.fixture(scope="module")
def reference(night) -> pl.DataFrame:
    return reference_score_offers(*night_arguments(night), offer_state=night["offer_state"])


@pytest.fixture(scope="module")
def full(night) -> pl.DataFrame:
    return score_offers(*night_arguments(night), offer_state=night["offer_state"])


def test_fast_path_equals_reference(full, reference, night):
    assert full.columns == reference.columns
    assert full.height == reference.height == night["snapshot"].height * 65
    for column in (SUBSCRIBER_ID, OFFER_ID, CATEGORY, "model_version"):
        assert full[column].equals(reference[column])
    np.testing.assert_allclose(full[P_ACCEPT].to_numpy(), reference[P_ACCEPT].to_numpy(), atol=1e-6)
    assert full[REASONS].null_count() == 0
    assert full[REASONS].equals(reference[REASONS])


def test_the_offer_state_reaches_the_blend(night, monkeypatch):
    """Each pair's own impressions in the night's offer state are what the blend reads (the tiny
    world's blend has no use for them, so the blend is replaced by that input alone)."""
    bundle, state = night["bundle"], night["offer_state"]
    column = bundle.blend.features.index("history_offer_impressions")
    monkeypatch.setattr(bundle.blend, "predict_matrix", lambda x: x[:, column])
    arguments = (bundle, night["snapshot"], night["catalog"], night["interactions"], False)
    scored = score_offers(*arguments, offer_state=state)
    expected = scored.join(
        state.select(SUBSCRIBER_ID, OFFER_ID, "impressions"),
        on=[SUBSCRIBER_ID, OFFER_ID],
        how="left",
        maintain_order="left",
    )["impressions"].fill_null(0)
    assert expected.sum() > 1000
    assert scored[P_ACCEPT].to_list() == expected.cast(pl.Float64).to_list()
    assert (score_offers(*arguments)[P_ACCEPT] == 0).all()  # without it: never shown


def test_the_interactions_reach_the_blend_as_activity_per_category(night, monkeypatch):
    """Each pair's share of the subscriber's interactions on the offer's category is what the
    blend reads, in any chunk (the blend is replaced by that input alone)."""
    bundle = night["bundle"]
    column = bundle.blend.features.index("interaction_category_share")
    monkeypatch.setattr(bundle.blend, "predict_matrix", lambda x: x[:, column])
    arguments = (bundle, night["snapshot"], night["catalog"], night["interactions"], False)
    scored = score_offers(*arguments, chunk_subscribers=97)
    expected = scored.join(
        share_by_hand(night["interactions"], night["catalog"]),
        on=[SUBSCRIBER_ID, CATEGORY],
        how="left",
        maintain_order="left",
    )["share"].fill_null(0.0)
    assert (expected > 0).sum() > 1000 and (expected < 1).sum() > 1000
    np.testing.assert_allclose(scored[P_ACCEPT].to_numpy(), expected.to_numpy(), rtol=1e-12)
    assert score_offers(*arguments)[P_ACCEPT].equals(scored[P_ACCEPT])
    without = score_offers(bundle, night["snapshot"], night["catalog"], None, False)
    assert (without[P_ACCEPT] == 0).all()  # no interactions known: no activity anywhere


@pytest.mark.parametrize("threads", [1, 3])
def test_scoring_is_deterministic_and_chunking_changes_nothing(full, night, threads):
    again = score_offers(
        night["bundle"],
        night["snapshot"],
        night["catalog"],
        night["interactions"],
        chunk_subscribers=97,
        offer_state=night["offer_state"],
        threads=threads,
    )
    assert again.equals(full)
    assert again.write_ipc(None).getvalue() == full.write_ipc(None).getvalue()


def test_eligible_scoring_is_exactly_the_eligible_subset(full, night):
    eligible = night["eligible"]
    assert 0 < eligible.height < full.height
    pruned = score_offers(
        night["bundle"],
        night["snapshot"],
        night["catalog"],
        night["interactions"],
        eligible=eligible.sample(fraction=1.0, shuffle=True, seed=3),  # any order
        chunk_subscribers=250,
        offer_state=night["offer_state"],
    )
    expected = full.join(eligible, on=[SUBSCRIBER_ID, OFFER_ID], how="semi")
    assert pruned.height == eligible.height
    assert pruned.equals(expected)


def test_eligible_pairs_outside_the_night_are_dropped_and_repeats_scored_once(full, night):
    first = full[SUBSCRIBER_ID].min()
    eligible = pl.DataFrame(
        {
            SUBSCRIBER_ID: [first, first, first, -5, first],
            OFFER_ID: ["music_trial", "music_trial", "no_such_offer", "music_trial", "esim_switch"],
        }
    )
    pruned = score_offers(
        night["bundle"],
        night["snapshot"],
        night["catalog"],
        night["interactions"],
        eligible=eligible,
        offer_state=night["offer_state"],
    )
    expected = full.filter(
        (pl.col(SUBSCRIBER_ID) == first) & pl.col(OFFER_ID).is_in(["esim_switch", "music_trial"])
    )
    assert expected.height == 2
    assert pruned.equals(expected)
    empty = score_offers(
        night["bundle"],
        night["snapshot"],
        night["catalog"],
        night["interactions"],
        eligible=eligible.clear(),
        offer_state=night["offer_state"],
    )
    assert empty.height == 0 and empty.columns == full.columns


def test_add_reasons_on_published_rows_only(full, night):
    without = score_offers(
        night["bundle"],
        night["snapshot"],
        night["catalog"],
        night["interactions"],
        False,
        offer_state=night["offer_state"],
    )
    assert without[REASONS].null_count() == without.height
    published = (
        without.sort(P_ACCEPT, descending=True)
        .group_by(SUBSCRIBER_ID, maintain_order=True)
        .head(5)
        .with_columns(pl.col(CATEGORY).cast(pl.Categorical))
        .select(SUBSCRIBER_ID, OFFER_ID, CATEGORY, P_ACCEPT, REASONS)
    )
    explained = add_reasons(night["bundle"], night["snapshot"], published)
    assert explained.columns == published.columns
    assert explained.drop(REASONS).equals(published.drop(REASONS))
    expected = published.drop(REASONS).join(
        full.select(SUBSCRIBER_ID, OFFER_ID, REASONS), on=[SUBSCRIBER_ID, OFFER_ID], how="left"
    )
    assert explained[REASONS].equals(expected[REASONS])
    assert explained[REASONS].null_count() == 0


def test_add_reasons_refuses_subscribers_missing_from_the_snapshot(full, night):
    rows = full.head(2).with_columns(pl.Series(SUBSCRIBER_ID, [-1, -2], dtype=pl.Int64))
    with pytest.raises(ScoringInputError, match=r"subscriber_id.*\[-2, -1\]"):
        add_reasons(night["bundle"], night["snapshot"], rows)
    with pytest.raises(ScoringInputError, match="category"):
        add_reasons(night["bundle"], night["snapshot"], full.head(2).drop(CATEGORY))


def test_explain_pairs_equal_the_reference_rows(night):
    model, snapshot = night["bundle"].propensity, night["snapshot"].head(200)
    expected = reference_reasons(night["bundle"], snapshot)
    assert explain(model, snapshot).equals(expected)
    pairs = expected.sample(n=300, seed=5).select(SUBSCRIBER_ID, CATEGORY)
    subset = explain(model, snapshot, pairs=pairs)
    assert subset.equals(expected.join(pairs, on=[SUBSCRIBER_ID, CATEGORY], how="semi"))


def test_candidate_matrix_equals_candidate_frame(night):
    bundle, snapshot = night["bundle"], night["snapshot"].sort(SUBSCRIBER_ID).head(50)
    offers = active_offers(night["catalog"], NIGHT + dt.timedelta(days=1))
    offers = offers.filter(pl.col(CATEGORY).is_in(bundle.propensity.categories_))
    p_category = bundle.propensity.predict_matrix(snapshot)
    cf = np.asarray(bundle.cf.score(snapshot[SUBSCRIBER_ID], offers[OFFER_ID]), dtype=np.float64)
    frame = candidate_features(
        snapshot[SUBSCRIBER_ID],
        p_category,
        bundle.propensity.categories_,
        cf,
        offers,
        bundle.offer_stats,
    )
    inputs = candidate_inputs(
        p_category, bundle.propensity.categories_, cf, offers, bundle.offer_stats
    )
    rows = np.repeat(np.arange(50), offers.height)
    columns = np.tile(np.arange(offers.height), 50)
    matrix = inputs.matrix(rows, columns)
    assert np.array_equal(matrix, frame.select(BLEND_FEATURES).to_numpy(), equal_nan=True)
    assert np.array_equal(
        bundle.blend.predict_matrix(matrix[::7]), bundle.blend.predict(frame[::7])
    )


def test_top_features_is_a_stable_descending_argsort():
    rng = np.random.default_rng(0)
    values = np.round(rng.normal(size=(500, 40)), 1)  # many ties
    values[:, rng.random(40) < 0.5] = 0.0  # columns no tree uses
    values[:3] = 0.0  # rows with nothing but zeros
    values[3, [5, 9]] = -0.0
    for count in (1, 3, 5):
        expected = np.argsort(-values, axis=1, kind="stable")[:, :count]
        assert np.array_equal(top_features(values, count), expected)
    hand = np.array([[0.0, 2.0, 0.0, 2.0, -1.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert top_features(hand, 3).tolist() == [[1, 3, 0], [0, 1, 2]]


def test_reasons_for_the_first_ranks_only_are_the_same_reasons(full, night, monkeypatch):
    import models.scoring as scoring

    ranked = (
        full.sort(P_ACCEPT, descending=True)
        .group_by(SUBSCRIBER_ID, maintain_order=True)
        .head(5)
        .with_columns(pl.col(P_ACCEPT).rank("ordinal", descending=True).over(SUBSCRIBER_ID))
        .rename({P_ACCEPT: "rank"})
        .drop(REASONS)
    )
    explained_pairs = []

    def counting_explain(model, snapshot, pairs):
        explained_pairs.append(pairs.height)
        return explain(model, snapshot, pairs=pairs)

    monkeypatch.setattr(scoring, "explain", counting_explain)
    explained = add_reasons(night["bundle"], night["snapshot"], ranked, max_rank=2)
    first = explained.filter(pl.col("rank") <= 2)
    # SHAP ran for the subscriber x category pairs of ranks 1-2 only.
    assert explained_pairs == [first.select(SUBSCRIBER_ID, CATEGORY).unique().height]
    assert explained.filter(pl.col("rank") > 2)[REASONS].null_count() == (ranked["rank"] > 2).sum()
    expected = first.join(
        full.select(SUBSCRIBER_ID, OFFER_ID, REASONS), on=[SUBSCRIBER_ID, OFFER_ID], how="left"
    )
    assert first[REASONS].null_count() == 0
    assert first[REASONS].equals(expected[f"{REASONS}_right"])
    with pytest.raises(ScoringInputError, match=r"\['rank'\] missing"):
        add_reasons(night["bundle"], night["snapshot"], ranked.drop("rank"), max_rank=2)


# ---------------------------------------------------------------- compiled trees (models.compiled)


@pytest.fixture
def bundle_reset(night):
    """The night's bundle goes back to LightGBM's own predict after a test compiles it."""
    yield
    night["bundle"].use_compiled(None)


@pytest.fixture(scope="module")
def compiled_dir(tmp_path_factory) -> Path:
    """One cache of compiled trees for the module's bundle (compiling takes seconds)."""
    return tmp_path_factory.mktemp("compiled")


def _hard_rows(bundle, snapshot) -> np.ndarray:
    """The night's feature rows plus copies with missing values everywhere, unseen and negative
    category codes: the rows where other tree compilers disagree with LightGBM."""
    propensity = bundle.propensity
    x = propensity.feature_matrix(snapshot)
    rng = np.random.default_rng(5)
    holes = x.copy()
    holes[rng.random(x.shape) < 0.3] = np.nan
    odd = x.copy()
    for name in propensity.encoding_.levels:
        column = propensity.encoding_.names.index(name)
        odd[: len(odd) // 2, column] = len(propensity.encoding_.levels[name]) + 3
        odd[len(odd) // 2 :, column] = -1
    return np.vstack([x, holes, odd])


def test_compiled_models_predict_what_lightgbm_predicts(bundle_reset, night, compiled_dir):
    bundle = night["bundle"]
    assert bundle.propensity.encoding_.levels, "the tiny world must exercise categorical splits"
    x = _hard_rows(bundle, night["snapshot"])
    plain_category = bundle.propensity.use_compiled(None).predict_features(x)
    blend_rows = np.random.default_rng(3).normal(size=(5000, bundle.blend.booster_.num_feature()))
    blend_rows[::7, 2] = np.nan
    plain_blend = bundle.blend.use_compiled(None).predict_matrix(blend_rows)

    bundle.use_compiled(compiled_dir)
    assert set(bundle.propensity.compiled_) == set(bundle.propensity.boosters_)
    np.testing.assert_allclose(bundle.propensity.predict_features(x), plain_category, atol=1e-9)
    np.testing.assert_allclose(bundle.blend.predict_matrix(blend_rows), plain_blend, atol=1e-9)
    arguments = (night["snapshot"], night["catalog"], night["interactions"], False)
    scored = score_offers(bundle, *arguments, offer_state=night["offer_state"])
    plain = score_offers(bundle.use_compiled(None), *arguments, offer_state=night["offer_state"])
    np.testing.assert_allclose(scored[P_ACCEPT].to_numpy(), plain[P_ACCEPT].to_numpy(), atol=1e-9)
    assert scored.drop(P_ACCEPT).equals(plain.drop(P_ACCEPT))


def test_each_model_is_compiled_once_then_loaded_from_the_cache(
    bundle_reset, night, compiled_dir, monkeypatch
):
    bundle = night["bundle"]
    bundle.use_compiled(compiled_dir)
    files = sorted(compiled_dir.glob(f"*{compiled.CACHE_SUFFIX}"))
    # One file per category booster and one for the blend, nothing half-written left beside them.
    assert len(files) == len(bundle.propensity.boosters_) + 1
    assert sorted(compiled_dir.iterdir()) == files
    stamps = {path: path.stat().st_mtime_ns for path in files}

    import lleaves

    compiles = []
    original = lleaves.Model.compile

    def counting(self, cache=None, **options):
        compiles.append(cache)
        return original(self, cache=cache, **options)

    monkeypatch.setattr(lleaves.Model, "compile", counting)
    bundle.use_compiled(compiled_dir)
    # Every model is loaded from its own cache file, and none is written again.
    assert sorted(compiles) == [str(path) for path in files]
    assert {path: path.stat().st_mtime_ns for path in files} == stamps


def test_compilation_off_or_failing_scores_with_lightgbm(
    bundle_reset, night, tmp_path, monkeypatch, caplog
):
    bundle = night["bundle"]
    x = bundle.propensity.feature_matrix(night["snapshot"])
    plain = bundle.propensity.use_compiled(None).predict_features(x)
    assert bundle.propensity.compiled_ == {}

    def broken(*args, **kwargs):
        raise RuntimeError("no LLVM here")

    monkeypatch.setattr(compiled, "_compile", broken)
    compiled._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="models.compiled"):
        bundle.use_compiled(tmp_path)
    assert "compiling a model failed (RuntimeError: no LLVM here); using LightGBM" in caplog.text
    assert np.array_equal(bundle.propensity.predict_features(x), plain)
    assert list(tmp_path.iterdir()) == []


def test_a_pickled_bundle_leaves_its_compiled_code_behind(bundle_reset, night, compiled_dir):
    bundle = night["bundle"].use_compiled(compiled_dir)
    copy = pickle.loads(pickle.dumps(bundle))
    assert "compiled_" not in copy.propensity.__dict__ and "compiled_" not in copy.blend.__dict__
    x = bundle.propensity.feature_matrix(night["snapshot"])
    np.testing.assert_allclose(
        copy.propensity.predict_features(x), bundle.propensity.predict_features(x), atol=1e-9
    )
