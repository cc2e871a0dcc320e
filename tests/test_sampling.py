"""Training rows at scale: sampled by label and weighted, reproducibly."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from models import metrics
from models.propensity import CategoryPropensity, training_frame
from models.sampling import WEIGHT, LabelRates, label_rates, sample_by_label, sample_rows
from tests.test_propensity import T1, T2, _world


def test_label_rates_keep_about_max_rows():
    assert label_rates(1_000, 100, 2_000) == LabelRates(1.0, 1.0)  # everything fits
    rates = label_rates(10_000, 1_000, 4_000)
    assert rates.positive == 1.0 and rates.negative == pytest.approx(3_000 / 9_000)
    # Positives fill half of the rows at most; negatives the rest.
    rates = label_rates(10_000, 3_900, 4_000)
    assert rates.positive == pytest.approx(2_000 / 3_900)
    assert rates.negative == pytest.approx(2_000 / 6_100)
    # A million subscribers' 11 weeks: 20.2M rows, 1.8M positives, 1M kept rows.
    rates = label_rates(20_194_730, 1_800_000, 1_000_000)
    assert rates.positive * 1_800_000 == pytest.approx(500_000)
    assert rates.positive * 1_800_000 + rates.negative * 18_394_730 == pytest.approx(1_000_000)
    assert label_rates(10**10, 0, 4_000) == LabelRates(1.0, 1e-3)  # a floor on negatives


def test_sampled_negatives_keep_every_positive_and_weigh_the_rest_up():
    labels = _world(20_000, 3, T1).select("subscriber_id", "snapshot_date", "category", "label")
    sampled = sample_by_label(labels, LabelRates(negative=0.25), seed=7)
    positives = labels.filter(pl.col("label") == 1)
    assert sampled.filter(pl.col("label") == 1).drop(WEIGHT).equals(positives)
    negatives = sampled.filter(pl.col("label") == 0)
    kept = negatives.height / labels.filter(pl.col("label") == 0).height
    assert kept == pytest.approx(0.25, abs=0.02)
    assert set(negatives[WEIGHT]) == {4.0} and set(
        sampled.filter(pl.col("label") == 1)[WEIGHT]
    ) == {1.0}
    # Weighted, the sample estimates the category's rate of all rows.
    for category in ("data_addon", "esim"):
        part, whole = (f.filter(pl.col("category") == category) for f in (sampled, labels))
        estimate = (part["label"] * part[WEIGHT]).sum() / part[WEIGHT].sum()
        assert estimate == pytest.approx(whole["label"].mean(), rel=0.05)
    # Reproducible, and a subscriber's rows do not depend on the other subscribers.
    assert sample_by_label(labels, LabelRates(negative=0.25), seed=7).equals(sampled)
    assert not sample_by_label(labels, LabelRates(negative=0.25), seed=8).equals(sampled)
    half = labels.filter(pl.col("subscriber_id") % 2 == 0)
    assert sample_by_label(half, LabelRates(negative=0.25), seed=7).equals(
        sampled.filter(pl.col("subscriber_id") % 2 == 0)
    )
    assert sample_by_label(labels, LabelRates(), seed=7).equals(labels)  # rates 1: as they are
    with pytest.raises(ValueError, match="negative rate"):
        sample_by_label(labels, LabelRates(negative=0.0), seed=7)
    with pytest.raises(ValueError, match="positive rate"):
        sample_by_label(labels, LabelRates(positive=1.5), seed=7)


def test_sampled_positives_are_weighed_up_like_negatives():
    labels = _world(20_000, 3, T1).select("subscriber_id", "snapshot_date", "category", "label")
    sampled = sample_by_label(labels, LabelRates(positive=0.5, negative=0.1), seed=7)
    for label, rate in ((1, 0.5), (0, 0.1)):
        part = sampled.filter(pl.col("label") == label)
        assert part.height / labels.filter(pl.col("label") == label).height == pytest.approx(
            rate, rel=0.1
        )
        assert set(part[WEIGHT]) == {1 / rate}
    # Weighted, the sample still estimates the category's rate of all rows.
    for category in ("data_addon", "esim"):
        part, whole = (f.filter(pl.col("category") == category) for f in (sampled, labels))
        estimate = (part["label"] * part[WEIGHT]).sum() / part[WEIGHT].sum()
        assert estimate == pytest.approx(whole["label"].mean(), rel=0.1)


def test_uniformly_sampled_rows_keep_the_rate():
    labels = _world(20_000, 4, T2).select("subscriber_id", "snapshot_date", "category", "label")
    assert sample_rows(labels, 20_000, seed=7).equals(labels)
    sampled = sample_rows(labels, 5_000, seed=7)
    assert sampled.height == pytest.approx(5_000, rel=0.05)
    assert WEIGHT not in sampled.columns
    assert sampled["label"].mean() == pytest.approx(labels["label"].mean(), abs=0.01)


def test_a_propensity_fitted_on_sampled_negatives_ranks_and_priors_as_on_all_rows():
    train, valid = _world(12_000, 1, T1), _world(4_000, 2, T2)
    model = dict(categories=("data_addon", "esim", "roaming"), num_boost_round=60, num_threads=1)
    full = CategoryPropensity(**model).fit(train, valid)
    sampled_train = training_frame(
        train.drop("label", "category"),
        sample_by_label(
            train.select("subscriber_id", "snapshot_date", "category", "label"),
            LabelRates(negative=0.3),
            7,
        ),
    )
    assert WEIGHT in sampled_train.columns and sampled_train.height < 0.5 * train.height
    sampled = CategoryPropensity(**model).fit(sampled_train, valid)
    assert WEIGHT not in sampled.encoding_.names  # a weight is not a feature
    # The weighted prior of the rare category is the full data's up to sampling noise.
    assert sampled.priors_["roaming"] == pytest.approx(full.priors_["roaming"], rel=0.25)
    assert sampled.pooled_rate_ == pytest.approx(full.pooled_rate_, rel=0.05)
    scored = {
        name: m.predict(valid).join(
            valid.select("subscriber_id", "category", "label"), on=["subscriber_id", "category"]
        )
        for name, m in (("full", full), ("sampled", sampled))
    }
    for category in ("data_addon", "esim"):
        aucs = {
            name: metrics.roc_auc(*_columns(frame.filter(pl.col("category") == category)))
            for name, frame in scored.items()
        }
        assert aucs["sampled"] == pytest.approx(aucs["full"], abs=0.02)
        part = scored["sampled"].filter(pl.col("category") == category)
        # Calibrated on all validation rows: the mean prediction is the observed rate.
        assert part["p_category"].mean() == pytest.approx(part["label"].mean(), abs=0.02)


def _columns(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return frame["label"].to_numpy(), frame["p_category"].to_numpy()
