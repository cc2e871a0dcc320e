"""Per-category propensity, reason codes and metrics on small hand-made frames."""

from __future__ import annotations

import datetime as dt
import logging
import math

import numpy as np
import polars as pl
import pytest

from mia.errors import InputError
from mia.progress import PROGRESS_LOGGER
from models import metrics
from models.propensity import (
    CategoryPropensity,
    FeatureEncoding,
    early_stopped_round,
    training_frame,
)
from models.reasons import PRIOR_REASON, explain

T1 = dt.date(2026, 2, 1)
T2 = dt.date(2026, 2, 8)
WORDS = {
    "data_megabytes_7d": "data used in the last 7 days",
    "noise": "random noise",
    "device_os": "device operating system",
    "holds_esim": "holds an esim product (1 = yes)",
}


def _world(rows: int, seed: int, date: dt.date) -> pl.DataFrame:
    """Subscriber x category rows: data_addon driven by data use, esim by iOS, roaming rare."""
    rng = np.random.default_rng(seed)
    data = rng.gamma(2.0, 500.0, rows)
    os_ = rng.choice(["android", "ios", "other"], rows, p=[0.6, 0.3, 0.1])
    category = rng.choice(["data_addon", "esim", "roaming"], rows, p=[0.45, 0.45, 0.10])
    holds = (rng.random(rows) < 0.3).astype(np.int8)
    logit = np.where(
        category == "data_addon", -3 + data / 400, -2.5 + 3.0 * (os_ == "ios") - 1.5 * holds
    )
    p = 1 / (1 + np.exp(-logit))
    label = (rng.random(rows) < p).astype(np.int8)
    label[category == "roaming"] = (rng.random((category == "roaming").sum()) < 0.02).astype(
        np.int8
    )
    return pl.DataFrame(
        {
            "subscriber_id": np.arange(rows, dtype=np.int64) + (seed * 100_000),
            "snapshot_date": [date] * rows,
            "category": category,
            "label": label,
            "data_megabytes_7d": data,
            "noise": rng.normal(size=rows),
            "device_os": pl.Series(os_).cast(pl.Categorical),
            "holds_esim": holds,
        }
    )


@pytest.fixture(scope="module")
def frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    return _world(6000, 1, T1), _world(3000, 2, T2)


@pytest.fixture(scope="module")
def fitted(frames) -> CategoryPropensity:
    train, valid = frames
    return CategoryPropensity(
        categories=("data_addon", "esim", "roaming"),
        num_boost_round=60,
        min_positives=30,
        num_threads=1,
    ).fit(train, valid)


def test_models_learn_signal_and_rare_category_falls_back(fitted, frames):
    _, valid = frames
    summary = fitted.summary_
    assert summary["category"].to_list() == ["data_addon", "esim", "roaming"]
    assert fitted.fallback_categories_ == ["roaming"]
    roaming = summary.filter(pl.col("category") == "roaming").row(0, named=True)
    assert roaming["kind"] == "prior" and "min_positives" in roaming["reason"]
    # Smoothed base rate: (positives + strength * pooled) / (rows + strength).
    assert roaming["prior"] == pytest.approx(fitted.priors_["roaming"])
    assert 0 < roaming["prior"] < 0.2

    scored = fitted.predict(valid).join(
        valid.select("subscriber_id", "category", "label"), on=["subscriber_id", "category"]
    )
    for category, minimum in (("data_addon", 0.8), ("esim", 0.7)):
        part = scored.filter(pl.col("category") == category)
        assert metrics.roc_auc(part["label"], part["p_category"]) > minimum
        # Calibrated on the validation window: mean prediction close to the observed rate.
        assert part["p_category"].mean() == pytest.approx(part["label"].mean(), abs=0.02)
    prior_rows = scored.filter(pl.col("category") == "roaming")["p_category"]
    assert prior_rows.n_unique() == 1


def test_large_categories_train_on_a_dask_cluster(fitted, frames, caplog):
    from distributed import LocalCluster

    train, valid = frames
    params = {**fitted.get_params(), "dask_min_rows": 2000}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        with caplog.at_level("INFO", logger="models.propensity"):
            params["dask_address"] = cluster.scheduler_address
            clustered = CategoryPropensity(**params)
            clustered.fit(train, valid)
    # data_addon and esim (about 2,700 training rows each) train on the cluster's 2 workers.
    assert caplog.text.count("trained on the Dask cluster") == 2
    assert clustered.fallback_categories_ == ["roaming"]
    labels = valid.select("subscriber_id", "category", "label")
    local, remote = (
        model.predict(valid).join(labels, on=["subscriber_id", "category"])
        for model in (fitted, clustered)
    )
    for category in ("data_addon", "esim"):
        booster = clustered.boosters_[category]
        # Cut where early stopping would have stopped: no trees past the best round.
        assert 1 <= booster.best_iteration == booster.num_trees() <= params["num_boost_round"]
        aucs = [
            metrics.roc_auc(part["label"], part["p_category"])
            for part in (frame.filter(pl.col("category") == category) for frame in (local, remote))
        ]
        assert aucs[1] == pytest.approx(aucs[0], abs=0.02)


def test_early_stopped_round_is_where_validation_loss_bottoms_out(fitted, frames):
    _, valid = frames
    part = valid.filter(pl.col("category") == "data_addon")
    booster = fitted.boosters_["data_addon"]
    x, y = fitted.encoding_.matrix(part), part["label"].cast(pl.Float64).to_numpy()
    # The local booster was early-stopped on these very rows: the same round is found again.
    assert early_stopped_round(booster, x, y, patience=40) == booster.best_iteration
    assert early_stopped_round(booster, x, y, patience=1) <= booster.best_iteration


def test_predict_shape_order_and_determinism(fitted, frames):
    train, valid = frames
    snapshot = valid.drop("category", "label").head(5)
    first = fitted.predict(snapshot)
    assert first.columns == ["subscriber_id", "category", "p_category"]
    assert first.height == 5 * 3
    assert first["category"].to_list()[:3] == ["data_addon", "esim", "roaming"]
    again = CategoryPropensity(**fitted.get_params()).fit(train, valid).predict(snapshot)
    assert first.equals(again)


def test_categorical_levels_map_identically_and_unknown_is_missing(fitted, frames):
    _, valid = frames
    assert fitted.encoding_.levels["device_os"] == ("android", "ios", "other")
    base = valid.drop("category", "label").head(3)
    # Same values with another physical encoding (plain strings) give the same predictions.
    as_strings = base.with_columns(pl.col("device_os").cast(pl.String))
    assert fitted.predict(base).equals(fitted.predict(as_strings))
    unknown = base.with_columns(pl.lit("symbian").alias("device_os"))
    matrix = fitted.encoding_.matrix(unknown)
    assert np.isnan(matrix[:, fitted.encoding_.names.index("device_os")]).all()


def test_missing_feature_and_bad_labels_are_refused(fitted, frames):
    train, valid = frames
    with pytest.raises(InputError, match="noise"):
        fitted.predict(valid.drop("noise"))
    bad = train.with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(2)
        .otherwise(pl.col("label"))
        .cast(pl.Int8)
        .alias("label")
    )
    with pytest.raises(InputError, match="label"):
        CategoryPropensity(categories=("esim",)).fit(bad, valid)
    empty = train.with_columns(pl.lit(None, dtype=pl.String).alias("category"))
    with pytest.raises(InputError, match="category"):
        CategoryPropensity().fit(empty, valid)
    with pytest.raises(InputError, match="calibration"):
        CategoryPropensity(calibration="magic").fit(train, valid)


def test_feature_encoding_rejects_text_like_types():
    frame = pl.DataFrame({"subscriber_id": [1], "when": [dt.date(2026, 1, 1)]})
    with pytest.raises(InputError, match="when"):
        FeatureEncoding.fit(frame)


def test_training_frame_joins_labels_to_their_snapshot():
    snapshot = pl.DataFrame(
        {"subscriber_id": [1, 2], "snapshot_date": [T1, T1], "calls": [3.0, 4.0]}
    )
    labels = pl.DataFrame(
        {
            "subscriber_id": [2, 1, 1, 3],
            "snapshot_date": [T1, T1, T1, T1],
            "category": ["tariff", "roaming", "esim", "esim"],
            "label": [1, 0, 1, 1],
        }
    )
    joined = training_frame(snapshot, labels)
    assert joined.select("subscriber_id", "category", "label", "calls").rows() == [
        (1, "esim", 1, 3.0),
        (1, "roaming", 0, 3.0),
        (2, "tariff", 1, 4.0),
    ]


def test_reasons_name_the_driving_feature_in_words(fitted, frames):
    _, valid = frames
    snapshot = valid.drop("category", "label")
    reasons = explain(fitted, snapshot, top_n=2, describe=WORDS.__getitem__)
    assert reasons.columns == ["subscriber_id", "category", "reasons"]
    assert reasons.height == snapshot.height * 3
    heavy = snapshot.sort("data_megabytes_7d", descending=True)["subscriber_id"][0]
    top = reasons.filter((pl.col("subscriber_id") == heavy) & (pl.col("category") == "data_addon"))
    assert top["reasons"][0].startswith("data used in the last 7 days (high)")
    ios = snapshot.filter(pl.col("device_os") == "ios")["subscriber_id"][0]
    esim = reasons.filter((pl.col("subscriber_id") == ios) & (pl.col("category") == "esim"))
    assert esim["reasons"][0].startswith("device operating system (ios)")
    assert esim["reasons"][0].count("; ") == 1
    assert set(reasons.filter(pl.col("category") == "roaming")["reasons"]) == {PRIOR_REASON}
    # A 0/1 flag reads "yes"/"no", without the description's note in brackets.
    phrases = set(reasons.filter(pl.col("category") == "esim")["reasons"].str.split("; ").explode())
    flags = {phrase for phrase in phrases if phrase.startswith("holds an esim product")}
    assert flags <= {"holds an esim product (yes)", "holds an esim product (no)"} and flags


def test_metrics_exact_values():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    assert metrics.roc_auc(y, p) == pytest.approx(0.75)
    assert metrics.log_loss(y, p) == pytest.approx(-np.mean(np.log([0.9, 0.6, 0.35, 0.8])))
    # Bins: 0.1 -> bin 1, 0.35 and 0.4 -> bin 3 and 4, 0.8 -> bin 8.
    assert metrics.expected_calibration_error(y, p) == pytest.approx((0.1 + 0.65 + 0.4 + 0.2) / 4)
    assert metrics.lift_at(y, p, 0.25) == pytest.approx(2.0)
    result = metrics.binary_metrics(y, p, prefix="esim")
    assert list(result) == [f"esim.{name}" for name in metrics.METRIC_NAMES]
    assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))
    assert metrics.finite({"a": math.nan, "b": 1.0}) == {"b": 1.0}
    with pytest.raises(InputError, match="outside"):
        metrics.log_loss([0, 1], [0.5, 1.5])
    gains = metrics.lift_table(y, p, buckets=2)
    assert gains["gain"].to_list() == [0.5, 1.0]


def test_fit_reports_which_category_is_training_n_of_n(frames, caplog):
    train, valid = frames
    categories = ("data_addon", "esim", "roaming")
    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):
        CategoryPropensity(categories=categories, num_boost_round=5, num_threads=1).fit(
            train, valid
        )
    reports = [record.progress for record in caplog.records if hasattr(record, "progress")]
    assert [(report.done, report.total) for report in reports] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert sorted(report.item for report in reports[:3]) == sorted(categories)
    assert {report.step for report in reports} == {"propensity models"}
