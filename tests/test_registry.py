"""MLflow tracking, scorer registration, champion gate and loading by alias."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import polars as pl
import pytest
from matplotlib.figure import Figure

from mia.errors import InputError, RunError
from mia.identity import ROOT_ID_FILE, root_identity
from mia.schema import CF_SCORE, CONFIDENCE, OFFER_ID, P_ACCEPT, SUBSCRIBER_ID
from mia.settings import Settings
from models.cf import ALSRecommender
from models.registry import (
    CHAMPION,
    ROOT_ID_TAG,
    ROOT_PATH_TAG,
    ForeignChampionError,
    RegistryError,
    champion_info,
    load_champion,
    log_figure,
    log_metrics,
    log_params,
    log_scorer,
    promote,
    resolve_tracking_uri,
    start_run,
    tracking,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = pd.DataFrame({SUBSCRIBER_ID: [1, 2], OFFER_ID: ["a0", "b0"]})


class QualityScorer:
    """A scorer whose holdout quality is known in advance."""

    def __init__(self, quality: float) -> None:
        self.quality = quality

    def predict_frame(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(pl.lit(self.quality).alias(P_ACCEPT))


def _quality(scorer: QualityScorer) -> dict[str, float]:
    return {"map@5": scorer.quality, "rows": 2.0}


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    """A data root with its MLflow store in it (the default)."""
    return Settings(data_dir=tmp_path_factory.mktemp("root"))


def _register(settings: Settings, name: str, scorer, run_name: str = "train") -> str:
    with start_run(settings, run_name):
        return log_scorer(name, scorer, EXAMPLE)


def test_resolve_tracking_uri(tmp_path):
    assert resolve_tracking_uri("sqlite:///mlruns/x.db", cwd=tmp_path) == (
        f"sqlite:///{tmp_path.resolve()}/mlruns/x.db"
    )
    assert (tmp_path / "mlruns").is_dir()
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert resolve_tracking_uri("http://tracking:5000") == "http://tracking:5000"


def test_tracking_points_at_the_store_and_restores_state(settings):
    before = mlflow.get_tracking_uri()
    environment = os.environ.get("MLFLOW_TRACKING_URI")
    with tracking(settings) as client:
        assert mlflow.get_tracking_uri() == settings.mlflow_uri
        experiment = client.get_experiment_by_name(settings.experiment)
        assert experiment.artifact_location == settings.mlflow_artifacts.resolve().as_uri()
    assert mlflow.get_tracking_uri() == before
    assert os.environ.get("MLFLOW_TRACKING_URI") == environment


def test_run_logs_params_metrics_and_figures(settings):
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    with start_run(settings, "metrics", tags={"family": "cf"}) as run_id:
        log_params({"factors": 8, "alpha": 10.0})
        log_metrics({"map@5": 0.25, "ndcg@5": 0.5}, step=3)
        log_figure(figure, "plots/curve.png")
        with pytest.raises(InputError, match="must end with '.png'"):
            log_figure(figure, "plots/curve.svg")
    with tracking(settings) as client:
        run = client.get_run(run_id)
        artifacts = [item.path for item in client.list_artifacts(run_id, "plots")]
    assert run.info.run_name == "metrics" and run.info.status == "FINISHED"
    assert run.data.tags["family"] == "cf"
    assert run.data.params == {"alpha": "10.0", "factors": "8"}
    assert run.data.metrics == {"map_at_5": 0.25, "ndcg_at_5": 0.5}
    assert artifacts == ["plots/curve.png"]
    with pytest.raises(RunError, match="needs an active MLflow run"):
        log_metrics({"map@5": 0.1})


def test_failed_run_is_marked_failed(settings):
    with pytest.raises(ValueError, match="boom"), start_run(settings, "broken") as run_id:
        raise ValueError("boom")
    with tracking(settings) as client:
        assert client.get_run(run_id).info.status == "FAILED"


def test_registered_scorer_loads_by_alias_in_a_fresh_process(settings, tmp_path):
    interactions = pl.DataFrame(
        {
            SUBSCRIBER_ID: [1, 1, 2, 2, 3],
            OFFER_ID: ["a0", "a1", "b0", "b1", "a0"],
            CONFIDENCE: [1.0, 2.0, 1.0, 1.0, 4.0],
        }
    )
    model = ALSRecommender(factors=2, iterations=3).fit(interactions)
    version = _register(settings, "cf", model)
    with tracking(settings):
        decision = promote("cf", version, lambda scorer: {"map@5": 0.3}, "map@5")
    assert decision.promoted and decision.reason == "no champion yet"
    info = champion_info("cf", settings)
    assert info["version"] == version and info["tags"]["gate.decision"] == "promoted"

    pairs = pl.DataFrame({SUBSCRIBER_ID: [1, 2, 3, 99], OFFER_ID: ["a1", "b0", "zz", "a0"]})
    pairs.write_parquet(tmp_path / "pairs.parquet")
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import mlflow.pyfunc
        import polars as pl
        from mia.settings import Settings
        from models.registry import load_champion, tracking

        root, folder = Path(sys.argv[1]), Path(sys.argv[2])
        settings = Settings(data_dir=root)
        pairs = pl.read_parquet(folder / "pairs.parquet")
        scorer = load_champion("cf", settings)
        scorer.predict_frame(pairs).write_parquet(folder / "direct.parquet")
        with tracking(settings):
            served = mlflow.pyfunc.load_model("models:/cf@champion").predict(pairs.to_pandas())
        pl.from_pandas(served).write_parquet(folder / "served.parquet")
        """
    )
    subprocess.run(
        [sys.executable, "-c", script, str(settings.data_dir), str(tmp_path)],
        cwd=REPO,
        check=True,
        timeout=120,
    )
    expected = model.predict_frame(pairs)
    assert pl.read_parquet(tmp_path / "direct.parquet").equals(expected)
    served = pl.read_parquet(tmp_path / "served.parquet")
    assert served.columns == [SUBSCRIBER_ID, OFFER_ID, CF_SCORE]
    assert np.array_equal(served[CF_SCORE].to_numpy(), expected[CF_SCORE].to_numpy())


def test_promote_keeps_the_champion_when_the_candidate_is_worse(settings):
    first = _register(settings, "gate", QualityScorer(0.50))
    worse = _register(settings, "gate", QualityScorer(0.40))
    with tracking(settings) as client:
        assert promote("gate", first, _quality, "map@5").promoted
        decision = promote("gate", worse, _quality, "map@5", tolerance=0.05)
        tags = client.get_model_version("gate", worse).tags
    assert not decision.promoted
    assert decision.champion_version == first and decision.candidate_version == worse
    assert (decision.candidate_metric, decision.champion_metric) == (0.40, 0.50)
    assert "worse than champion beyond tolerance 0.05" in decision.reason
    assert tags["gate.decision"] == "rejected" and tags["gate.reason"] == decision.reason
    assert tags["gate.champion_version"] == first and tags["gate.candidate_value"] == "0.4"
    assert champion_info("gate", settings)["version"] == first
    assert load_champion("gate", settings).quality == 0.50


def test_promote_takes_a_better_or_tolerably_worse_candidate(settings):
    first = _register(settings, "better", QualityScorer(0.50))
    close = _register(settings, "better", QualityScorer(0.495))
    best = _register(settings, "better", QualityScorer(0.70))
    with tracking(settings) as client:
        promote("better", first, _quality, "map@5")
        assert promote("better", close, _quality, "map@5", tolerance=0.01).promoted
        decision = promote("better", best, _quality, "map@5")
        alias = client.get_model_version_by_alias("better", CHAMPION).version
        again = promote("better", best, _quality, "map@5")
    assert decision.promoted and decision.champion_version == close
    assert again.promoted and again.reason == "already champion"
    assert str(alias) == best and load_champion("better", settings).quality == 0.70


def test_promote_when_lower_is_better(settings):
    first = _register(settings, "loss", QualityScorer(0.30))
    higher_loss = _register(settings, "loss", QualityScorer(0.40))
    with tracking(settings):
        promote("loss", first, _quality, "map@5", higher_is_better=False)
        decision = promote("loss", higher_loss, _quality, "map@5", higher_is_better=False)
    assert not decision.promoted and "lower is better" in decision.reason


def test_registry_errors(settings):
    assert champion_info("nothing", settings) is None
    with pytest.raises(RegistryError, match="has no 'champion' version"):
        load_champion("nothing", settings)
    version = _register(settings, "errors", QualityScorer(0.1))
    with tracking(settings):
        with pytest.raises(InputError, match="metric 'auc' is not among"):
            promote("errors", version, _quality, "auc")
        with pytest.raises(RegistryError, match="has no version '42'"):
            promote("errors", "42", _quality, "map@5")
        with pytest.raises(InputError, match="tolerance == -1"):
            promote("errors", version, _quality, "map@5", tolerance=-1)
    assert champion_info("errors", settings) is None
    with start_run(settings, "bad"), pytest.raises(InputError, match="no predict_frame"):
        log_scorer("errors", object(), EXAMPLE)


def test_deleted_model_files_name_the_version_and_how_to_rebuild(tmp_path):
    settings = Settings(data_dir=tmp_path)
    version = _register(settings, "gone", QualityScorer(0.2))
    with tracking(settings):
        promote("gone", version, _quality, "map@5")
    shutil.rmtree(settings.mlflow_artifacts)
    with pytest.raises(RegistryError) as caught:
        load_champion("gone", settings)
    message = str(caught.value)
    assert f"'gone' v{version}" in message and "mia train" in message
    # Training again registers a version that replaces the champion it cannot compare with.
    retrained = _register(settings, "gone", QualityScorer(0.1))
    with tracking(settings):
        decision = promote("gone", retrained, _quality, "map@5")
    assert decision.promoted and f"champion v{version} cannot be loaded" in decision.reason
    assert load_champion("gone", settings).quality == 0.1


def _train_and_promote(settings: Settings, name: str, quality: float) -> str:
    version = _register(settings, name, QualityScorer(quality))
    with tracking(settings):
        assert promote(name, version, _quality, "map@5").promoted
    return version


def test_two_data_roots_in_one_working_directory_never_share_a_champion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = Settings(data_dir=Path("first")), Settings(data_dir=Path("second"))
    for settings in (first, second):
        settings.data_dir.mkdir()
    _train_and_promote(first, "shared-name", 0.5)
    assert champion_info("shared-name", second) is None  # the second root trains its own
    _train_and_promote(second, "shared-name", 0.1)
    assert load_champion("shared-name", first).quality == 0.5
    assert load_champion("shared-name", second).quality == 0.1
    tags = champion_info("shared-name", first)["tags"]
    assert tags[ROOT_ID_TAG] == root_identity(first.data_dir).id
    assert tags[ROOT_PATH_TAG] == str(tmp_path / "first")
    assert (tmp_path / "first" / "mlruns" / "mlflow.db").is_file()
    assert not (tmp_path / "mlruns").exists()


def test_another_roots_champion_is_refused_unless_the_registry_is_shared(tmp_path):
    owner = Settings(data_dir=tmp_path / "owner")
    owner.data_dir.mkdir()
    version = _train_and_promote(owner, "offers", 0.5)
    borrower = owner.replace(
        data_dir=tmp_path / "borrower",
        mlflow_uri=owner.mlflow_uri,
        mlflow_artifacts=owner.mlflow_artifacts,
    )
    borrower.data_dir.mkdir()
    with pytest.raises(ForeignChampionError) as caught:
        champion_info("offers", borrower)
    message = str(caught.value)
    assert f"data root {owner.data_dir}" in message and str(borrower.data_dir) in message
    assert "shared_registry" in message and "leave mlflow_uri" in message
    assert isinstance(caught.value, InputError)  # exit code 2
    with pytest.raises(ForeignChampionError):
        load_champion("offers", borrower)
    candidate = _register(borrower, "offers", QualityScorer(0.9))
    with tracking(borrower), pytest.raises(ForeignChampionError):
        promote("offers", candidate, _quality, "map@5")
    assert champion_info("offers", owner)["version"] == version

    shared = borrower.replace(shared_registry=True)
    assert champion_info("offers", shared)["version"] == version
    assert load_champion("offers", shared).quality == 0.5


def test_a_champion_without_a_data_root_is_adopted_by_the_first_root_that_uses_it(tmp_path):
    first = Settings(data_dir=tmp_path / "first")
    first.data_dir.mkdir()
    version = _train_and_promote(first, "legacy", 0.5)
    with tracking(first) as client:  # as registered before versions carried their root
        for key in (ROOT_ID_TAG, ROOT_PATH_TAG):
            client.delete_model_version_tag("legacy", version, key)
    (first.data_dir / ROOT_ID_FILE).unlink()
    later = first.replace(
        data_dir=tmp_path / "later",
        mlflow_uri=first.mlflow_uri,
        mlflow_artifacts=first.mlflow_artifacts,
    )
    later.data_dir.mkdir()
    assert champion_info("legacy", later)["tags"][ROOT_ID_TAG] == root_identity(later.data_dir).id
    with pytest.raises(ForeignChampionError):
        champion_info("legacy", first)


def test_the_data_root_id_is_written_once(tmp_path):
    identity = root_identity(tmp_path)
    assert root_identity(tmp_path) == identity
    assert [path.name for path in tmp_path.iterdir()] == [ROOT_ID_FILE]
    (tmp_path / ROOT_ID_FILE).write_text("{")
    with pytest.raises(InputError, match="mia.data_root_id"):
        root_identity(tmp_path)
