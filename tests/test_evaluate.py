"""Evaluation against the oracle: exact values on hand-made frames, then the tiny world."""

from __future__ import annotations

import datetime as dt
import math

import polars as pl
import pytest

from mia.lake import Lake
from mia.settings import Settings, load_settings
from models.evaluate import (
    capture_table,
    category_auc_metrics,
    evaluate_against_oracle,
    held_offers,
    normalised_auc,
    oracle_table,
    top_k_metrics,
)
from models.training import TrainingInputError
from tests.conftest import TINY_LAST_DAY, training_world

AS_OF = dt.date(2026, 3, 4)


def test_normalised_auc():
    assert normalised_auc(0.7, 0.8) == pytest.approx(2 / 3)
    assert normalised_auc(0.8, 0.8) == pytest.approx(1.0)
    assert math.isnan(normalised_auc(0.7, 0.5))
    assert math.isnan(normalised_auc(math.nan, 0.8))


def test_category_auc_metrics_exact():
    rows = 12
    frame = pl.DataFrame(
        {
            "category": ["esim"] * rows + ["gift"] * 3,
            "label": [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0] + [1, 0, 0],
            # Mia swaps one pair of ranks; the oracle ranks perfectly.
            "p_accept": [0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 0.7, 0.8, 0.85, 0.9, 0.95, 0.05]
            + [0.2, 0.1, 0.1],
            "oracle_p": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.05]
            + [0.2, 0.1, 0.1],
        }
    )
    result = category_auc_metrics(frame)
    assert result["oracle.esim.oracle_auc"] == pytest.approx(1.0)
    assert result["oracle.esim.mia_auc"] == pytest.approx(1 - 1 / 35)
    assert result["oracle.esim.normalised_auc"] == pytest.approx((0.5 - 1 / 35) / 0.5)
    # Too few rows of each class in gift: counted, but no AUC.
    assert result["oracle.gift.impressions"] == 3 and "oracle.gift.mia_auc" not in result
    assert result["oracle.categories_evaluated"] == 1
    assert result["oracle.mean_normalised_auc"] == pytest.approx(
        result["oracle.esim.normalised_auc"]
    )


def test_top_k_metrics_exact():
    frame = pl.DataFrame(
        {
            "subscriber_id": [1, 1, 1, 2, 2, 2],
            "offer_id": ["a", "b", "c", "a", "b", "c"],
            "p_accept": [0.9, 0.5, 0.1, 0.2, 0.3, 0.3],
            "oracle_p": [0.2, 0.4, 0.0, 0.1, 0.3, 0.5],
        }
    )
    result = top_k_metrics(frame, ks=(1, 2))
    # Mia picks a (0.2) for 1 and, on a tie, b (0.3) for 2; the oracle picks b (0.4) and c (0.5).
    assert result["top1.mia_expected_accepts"] == pytest.approx(0.5)
    assert result["top1.oracle_expected_accepts"] == pytest.approx(0.9)
    assert result["top1.random_expected_accepts"] == pytest.approx(0.2 + 0.3)
    assert result["top1.capture"] == pytest.approx(0.5 / 0.9)
    assert result["top2.mia_expected_accepts"] == pytest.approx(0.6 + 0.8)
    assert result["top2.oracle_expected_accepts"] == pytest.approx(0.6 + 0.8)
    assert result["top2.capture"] == pytest.approx(1.0)
    rows = capture_table(result)
    assert [row["row"] for row in rows] == ["top1 expected accepts", "top2 expected accepts"]
    assert rows[0] == {
        "row": "top1 expected accepts",
        "mia": pytest.approx(0.5),
        "oracle": pytest.approx(0.9),
        "random": pytest.approx(0.5),
        "capture": pytest.approx(0.5 / 0.9),
    }


def test_oracle_table_rows_share_one_set_of_columns():
    impressions = pl.DataFrame(
        {
            "category": ["music"] * 20 + ["video"] * 3,
            "label": [0, 1] * 10 + [0, 1, 0],
            "p_accept": [0.2, 0.6] * 10 + [0.1, 0.5, 0.3],
            "oracle_p": [0.1, 0.7] * 10 + [0.2, 0.4, 0.3],
        }
    )
    rows = oracle_table(category_auc_metrics(impressions))
    assert [row["row"] for row in rows] == ["music", "video", "all categories"]
    assert all(list(row) == list(rows[0]) for row in rows)
    assert (rows[-1]["impressions"], rows[-1]["accepts"]) == (23, 11)
    assert rows[-1]["normalised_auc"] == pytest.approx(1.0)


def test_held_offers_uses_current_holdings():
    catalog = pl.DataFrame(
        {"offer_id": ["v1", "v2", "m1"], "product_id": ["video", "video", "music"]}
    )
    holdings = pl.DataFrame(
        {
            "subscriber_id": [1, 2, 3],
            "product_id": ["video", "music", "music"],
            "start_date": [dt.date(2026, 1, 1)] * 3,
            "end_date": [None, dt.date(2026, 1, 5), None],
        }
    )
    held = held_offers(holdings, catalog, dt.date(2026, 2, 1)).sort("subscriber_id", "offer_id")
    assert held.rows() == [(1, "v1"), (1, "v2"), (3, "m1")]
    assert held_offers(None, catalog, dt.date(2026, 2, 1)).is_empty()


def plain_snapshot(lake: Lake, settings: Settings) -> pl.DataFrame:
    from models.training import read_or_build_snapshot

    return read_or_build_snapshot(lake, AS_OF, settings)


def test_evaluate_against_oracle_on_the_tiny_world(tmp_path, ingested_root):
    from models.registry import tracking
    from models.training import train_models

    lake, settings = training_world(tmp_path, ingested_root)
    report = train_models(lake, AS_OF, settings, register=False)
    result = evaluate_against_oracle(lake, AS_OF, settings, bundle=report.bundle)
    assert result["oracle.categories_evaluated"] >= 1
    assert 0.5 < result["oracle.all.oracle_auc"] <= 1
    assert result["oracle.all.mia_auc"] > 0.5
    # Mia's pick beats a random pick but not the oracle's own.
    assert result["top1.random_capture"] < result["top1.capture"] <= 1.0
    assert result["top5.capture"] <= 1.0
    # With the eligible pairs given, choices are made among those pairs only.
    scores = report.bundle.predict_frame(plain_snapshot(lake, settings))
    pairs = scores.filter(pl.col("subscriber_id").is_in([5, 9])).select("subscriber_id", "offer_id")
    narrowed = evaluate_against_oracle(lake, AS_OF, settings, report.bundle, False, pairs.head(3))
    assert narrowed["subscribers"] == pairs.head(3)["subscriber_id"].n_unique()
    assert narrowed["oracle.mean_normalised_auc"] == result["oracle.mean_normalised_auc"]
    assert capture_table(result)[-1]["row"] == "top5 expected accepts"
    with tracking(settings) as client:
        runs = client.search_runs(
            [client.get_experiment_by_name(settings.experiment).experiment_id]
        )
    assert runs[0].data.metrics["top1.capture"] == pytest.approx(result["top1.capture"])


def test_a_champion_trained_after_the_date_is_not_evaluated(night_run):
    settings = load_settings(data_dir=night_run.data_dir, **night_run.overrides)
    earlier = TINY_LAST_DAY - dt.timedelta(days=7)
    with pytest.raises(TrainingInputError, match=f"trained as of {TINY_LAST_DAY}, after {earlier}"):
        evaluate_against_oracle(Lake(night_run.data_dir), earlier, settings)


def test_cli_evaluates_models_trained_as_of_an_earlier_date(night_run, tmp_path, capsys):
    """After a night (as after `make demo`), `mia evaluate` of an earlier date trains models as
    of that date, unregistered, and evaluates them; the champion stays."""
    from models.registry import champion_info
    from models.scoring import MODEL_NAME
    from tests.test_flows import _config_file, _copy_run, _mia

    root = _copy_run(night_run, tmp_path)
    config = _config_file(root)
    settings = load_settings(config_file=config, data_dir=root / "data")
    champion = champion_info(MODEL_NAME, settings)["version"]
    earlier = TINY_LAST_DAY - dt.timedelta(days=7)
    arguments = ("--data-dir", str(root / "data"), "--config", str(config))
    code = _mia("evaluate", "--date", earlier.isoformat(), *arguments)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"trained as of {TINY_LAST_DAY}, after {earlier}" in captured.err
    assert "\nall categories\t" in captured.out and "\ntop1 expected accepts\t" in captured.out
    assert champion_info(MODEL_NAME, settings)["version"] == champion
    # The last day has no outcomes after it: refused, with the reason.
    assert _mia("evaluate", "--date", TINY_LAST_DAY.isoformat(), *arguments) == 2
    assert f"no offer events ingested after {TINY_LAST_DAY}" in capsys.readouterr().err
