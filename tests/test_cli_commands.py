"""Command-line errors and tables that tell a user what happened: evaluate, lift, missing input."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from flows.cli import EXIT_BAD_INPUT, EXIT_OK
from flows.steps import ingest_new_days
from mia.errors import InputError
from mia.lake import Lake
from tests.test_cli_text import mia

DAY = dt.date(2026, 3, 10)


def test_lift_with_reversed_dates_says_so(tmp_path, capsys):
    code = mia("lift", "--data-dir", str(tmp_path), "--from", "2026-03-10", "--to", "2026-03-01")
    assert code == EXIT_BAD_INPUT
    assert "--to 2026-03-01 is before --from 2026-03-10: the dates are reversed" in (
        capsys.readouterr().err
    )


def test_missing_input_suggests_simulate_only_for_an_empty_root(tmp_path):
    lake = Lake(tmp_path / "data")
    with pytest.raises(InputError, match="mia simulate"):
        ingest_new_days(lake, DAY)
    # Deliveries of other days exist: a synthetic world would overwrite them.
    (lake.root / "incoming" / "date=2026-03-20").mkdir(parents=True)
    with pytest.raises(InputError) as caught:
        ingest_new_days(lake, DAY)
    assert "mia simulate" not in str(caught.value)
    assert f"no input for {DAY}" in str(caught.value)


def simulated_lake(tmp_path, last_event_day: dt.date) -> Lake:
    """A root that looks simulated (truth/) with offer events ingested up to `last_event_day`."""
    lake = Lake(tmp_path / "data")
    (lake.root / "truth").mkdir(parents=True)
    (lake.root / "raw" / "offer_events" / f"date={last_event_day}").mkdir(parents=True)
    return lake


def test_evaluate_refuses_a_date_with_no_outcomes_after_it(tmp_path, capsys):
    lake = simulated_lake(tmp_path, DAY)
    code = mia("evaluate", "--data-dir", str(lake.root), "--date", DAY.isoformat())
    assert code == EXIT_BAD_INPUT
    assert f"no offer events ingested after {DAY} (last ingested day: {DAY})" in (
        capsys.readouterr().err
    )


ORACLE_RESULT = {
    "oracle.music.impressions": 40.0,
    "oracle.music.accepts": 8.0,
    "oracle.music.mia_auc": 0.7,
    "oracle.music.oracle_auc": 0.8,
    "oracle.music.normalised_auc": 2 / 3,
    "oracle.categories_evaluated": 1.0,
    "oracle.mean_normalised_auc": 2 / 3,
    "oracle.all.mia_auc": 0.7,
    "oracle.all.oracle_auc": 0.8,
    "top1.mia_expected_accepts": 5.0,
    "top1.oracle_expected_accepts": 6.0,
    "top1.random_expected_accepts": 1.0,
    "top1.capture": 5 / 6,
    "top1.random_capture": 1 / 6,
}


def test_evaluate_trains_as_of_the_date_when_the_champion_is_later(tmp_path, capsys, monkeypatch):
    """A champion trained after the date (as after `make demo`) is not evaluated: models
    trained as of the date are, without being registered; every table row fits its header."""
    import flows.steps
    import models.evaluate
    import models.training

    lake = simulated_lake(tmp_path, DAY + dt.timedelta(days=7))
    trained_bundle = object()
    trained = []

    def train_models(lake, as_of, settings, register=True):
        trained.append((as_of, register))
        return SimpleNamespace(bundle=trained_bundle)

    def evaluate_against_oracle(lake, as_of, settings, bundle=None, eligible=None):
        assert bundle is trained_bundle
        return ORACLE_RESULT

    monkeypatch.setattr(
        models.evaluate,
        "champion_trained_after",
        lambda settings, as_of: f"champion v1 was trained as of {DAY + dt.timedelta(days=7)}",
    )
    monkeypatch.setattr(models.training, "train_models", train_models)
    monkeypatch.setattr(models.evaluate, "evaluate_against_oracle", evaluate_against_oracle)
    monkeypatch.setattr(flows.steps, "eligible_for_night", lambda lake, night, settings: None)
    code = mia("evaluate", "--data-dir", str(lake.root), "--date", DAY.isoformat())
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.err
    assert trained == [(DAY, False)]
    assert f"training models as of {DAY} to evaluate (not registered)" in captured.err
    lines = [line.split("\t") for line in captured.out.splitlines() if "\t" in line]
    headers = [fields for fields in lines if fields[0] == "row"]
    assert [len(header) for header in headers] == [6, 5]
    width = 0
    for fields in lines:
        width = len(fields) if fields[0] == "row" else width
        assert len(fields) == width
    all_categories = next(fields for fields in lines if fields[0] == "all categories")
    assert all_categories[1:3] == ["40", "8"] and "nan" not in all_categories
