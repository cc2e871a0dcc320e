"""MLflow tracking and model registry: runs, scorer models, and a champion quality gate.

The store is `settings.mlflow_uri` (sqlite; by default `<data_dir>/mlruns/mlflow.db`, so each
data root keeps its own models); a relative sqlite path is resolved against the
working directory once, so later `chdir`s cannot split the store. Artifacts live under
`settings.mlflow_artifacts` (the experiment is created with that artifact location).

Any picklable object with `.predict_frame(pl.DataFrame) -> pl.DataFrame` is registered as an
`mlflow.pyfunc` model: pandas in, polars through `predict_frame`, pandas out. The current best
version of a registered model carries the alias `champion` (stages are deprecated).

Every registered version is tagged with the identity of the data root it was trained from
(`mia.identity`). A champion of another root is refused (ForeignChampionError) wherever it would
be used: read, loaded, or compared with a candidate; unless `settings.shared_registry` says the
store is shared on purpose, which is logged. A champion registered before versions carried a
root (no tag) is adopted by the first root that uses it: tagged with that root, with a warning;
from then on other roots are refused it.

MLflow metric names may not contain `@`, so `log_metrics` writes `map@5` as `map_at_5`.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import mlflow.pyfunc  # noqa: E402
import pandas as pd  # noqa: E402
import polars as pl  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from mlflow.tracking import _model_registry, _tracking_service  # noqa: E402
from mlflow.tracking import fluent as _fluent  # noqa: E402

from mia.errors import InputError, RunError  # noqa: E402
from mia.identity import ROOT_ID_FILE, read_root_identity, root_identity  # noqa: E402
from mia.settings import Settings, mlflow_store_defaults  # noqa: E402

logger = logging.getLogger(__name__)

CHAMPION = "champion"
MODEL_ARTIFACT = "model"
GATE_TAG_PREFIX = "gate."
# Model version tags: the data root a version was trained from.
ROOT_ID_TAG = "mia.data_root_id"
ROOT_PATH_TAG = "mia.data_root"
# Packages a served scorer may need; pinned to the versions installed when it was logged.
SCORER_PACKAGES = (
    "mlflow",
    "cloudpickle",
    "numpy",
    "pandas",
    "pyarrow",
    "polars",
    "scipy",
    "scikit-learn",
    "lightgbm",
    "implicit",
    "threadpoolctl",
)
_STATE_VARIABLES = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
)


# The settings of the innermost `tracking` block: its data root is the one models belong to.
_active_settings: ContextVar[Settings | None] = ContextVar("mia_tracking_settings", default=None)


class RegistryError(RunError):
    """The registry is missing something a step needs (a model, a version, a champion)."""


class ForeignChampionError(InputError):
    """The champion of the store was registered from another data root."""


def resolve_tracking_uri(uri: str, cwd: Path | None = None) -> str:
    """The tracking URI with a relative sqlite path made absolute (against `cwd` or the cwd)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path = Path(uri[len(prefix) :])
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return prefix + str(path.resolve())


def _artifact_location(settings: Settings) -> str:
    location = Path(settings.mlflow_artifacts)
    location = location if location.is_absolute() else Path.cwd() / location
    location.mkdir(parents=True, exist_ok=True)
    return location.resolve().as_uri()


def _experiment_id(client: MlflowClient, settings: Settings) -> str:
    """Id of `settings.experiment`, created with the configured artifact location if needed."""
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(
            settings.experiment, artifact_location=_artifact_location(settings)
        )
    except MlflowException:
        # Another process created it between the lookup and the create.
        experiment = client.get_experiment_by_name(settings.experiment)
        if experiment is None:
            raise
        return experiment.experiment_id


@contextmanager
def tracking(settings: Settings) -> Iterator[MlflowClient]:
    """Point MLflow at the configured store and experiment; restore the previous state after."""
    uri = resolve_tracking_uri(settings.mlflow_uri)
    saved_variables = {name: os.environ.get(name) for name in _STATE_VARIABLES}
    saved_tracking = _tracking_service.utils._tracking_uri
    saved_registry = _model_registry.utils._registry_uri
    saved_experiment = _fluent._active_experiment_id
    token = _active_settings.set(settings)
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        mlflow.set_experiment(experiment_id=_experiment_id(client, settings))
        yield client
    finally:
        _active_settings.reset(token)
        mlflow.set_tracking_uri(saved_tracking)
        _model_registry.utils._registry_uri = saved_registry
        _fluent._active_experiment_id = saved_experiment
        for name, value in saved_variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def start_run(
    settings: Settings, run_name: str, tags: dict[str, str] | None = None
) -> Iterator[str]:
    """Open an MLflow run in the configured experiment and yield its id; a failure marks it."""
    with tracking(settings), mlflow.start_run(run_name=run_name, tags=tags) as run:
        logger.info("MLflow run %s (%s) started", run_name, run.info.run_id)
        yield run.info.run_id


def _tracking_settings(what: str) -> Settings:
    settings = _active_settings.get()
    if settings is None:
        raise RunError(f"{what} needs the registry: call it inside tracking(settings).")
    return settings


def _root_tags(settings: Settings) -> dict[str, str]:
    """The tags that say which data root a model version was trained from."""
    identity = root_identity(settings.data_dir)
    return {ROOT_ID_TAG: identity.id, ROOT_PATH_TAG: str(identity.path)}


def _active_run_id(what: str) -> str:
    run = mlflow.active_run()
    if run is None:
        raise RunError(f"{what} needs an active MLflow run: call it inside start_run(...).")
    return run.info.run_id


def log_params(params: dict) -> None:
    """Log parameters of the active run (keys sorted, values as text)."""
    _active_run_id("log_params")
    mlflow.log_params({str(key): str(params[key]) for key in sorted(params)})


def metric_key(name: str) -> str:
    """MLflow-safe metric name: `map@5` -> `map_at_5`."""
    return name.replace("@", "_at_")


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log numeric metrics of the active run (`@` in names becomes `_at_`)."""
    _active_run_id("log_metrics")
    mlflow.log_metrics(
        {metric_key(name): float(metrics[name]) for name in sorted(metrics)}, step=step
    )


def log_figure(figure: Any, artifact_file: str) -> None:
    """Save a matplotlib figure of the active run as a PNG artifact."""
    _active_run_id("log_figure")
    if not artifact_file.lower().endswith(".png"):
        raise InputError(f"artifact_file == {artifact_file!r}, must end with '.png'.")
    mlflow.log_figure(figure, artifact_file)


class FrameScorerModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: pandas -> polars -> `scorer.predict_frame` -> pandas."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None):
        """Score a pandas frame with the wrapped polars scorer."""
        return self.scorer.predict_frame(pl.from_pandas(model_input)).to_pandas()


def scorer_requirements() -> list[str]:
    """Pinned pip requirements of a logged scorer (installed versions of SCORER_PACKAGES)."""
    pins = []
    for package in SCORER_PACKAGES:
        try:
            pins.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def log_scorer(
    name: str,
    scorer: Any,
    input_example: pd.DataFrame,
    pip_requirements: list[str] | None = None,
) -> str:
    """Log `scorer` as a pyfunc model of the active run, register it as `name`; its version.

    The version is tagged with the data root of the active `tracking(settings)`.
    """
    run_id = _active_run_id("log_scorer")
    root_tags = _root_tags(_tracking_settings("log_scorer"))
    if not callable(getattr(scorer, "predict_frame", None)):
        raise InputError(
            f"scorer {type(scorer).__name__} has no predict_frame(pl.DataFrame) method."
        )
    if not isinstance(input_example, pd.DataFrame) or input_example.empty:
        raise InputError("input_example must be a non-empty pandas DataFrame.")
    output_example = scorer.predict_frame(pl.from_pandas(input_example)).to_pandas()
    with warnings.catch_warnings():
        # Ids are integer columns that are never missing: MLflow's hint about it is noise.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = infer_signature(input_example, output_example)
    info = mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT,
        python_model=FrameScorerModel(scorer),
        signature=signature,
        input_example=input_example,
        pip_requirements=pip_requirements or scorer_requirements(),
    )
    # Registered with its root's tags in one step: no version is ever seen without them.
    version = str(mlflow.register_model(info.model_uri, name, tags=root_tags).version)
    logger.info("registered %s version %s from run %s", name, version, run_id)
    return version


@dataclass
class PromotionDecision:
    """Outcome of the champion gate for one candidate version."""

    promoted: bool
    reason: str
    champion_version: str | None
    candidate_version: str
    candidate_metric: float | None
    champion_metric: float | None


def _champion_version(client: MlflowClient, name: str) -> Any | None:
    """The model version that holds the champion alias, or None."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _owned_champion(client: MlflowClient, name: str, settings: Settings) -> Any | None:
    """The champion of `name` if this data root may use it (see the module docstring), or None."""
    champion = _champion_version(client, name)
    if champion is None:
        return None
    owner_id, owner_path = champion.tags.get(ROOT_ID_TAG), champion.tags.get(ROOT_PATH_TAG)
    here = read_root_identity(settings.data_dir)
    if owner_id is not None and here is not None and owner_id == here.id:
        return champion
    store = settings.mlflow_uri
    if settings.shared_registry:
        owner = f"data root {owner_path}" if owner_id else "no recorded data root"
        _log_once(
            logging.WARNING,
            f"shared_registry: {name!r} champion v{champion.version} in {store} is used for data "
            f"root {Path(settings.data_dir).absolute()}; it was registered from {owner}",
        )
        return champion
    if owner_id is None:
        tags = _root_tags(settings)
        for key, value in tags.items():
            client.set_model_version_tag(name, champion.version, key, value)
        _log_once(
            logging.WARNING,
            f"{name!r} champion v{champion.version} in {store} was registered before models "
            f"recorded their data root; data root {tags[ROOT_PATH_TAG]} adopts it, and other "
            "data roots will be refused it",
        )
        return client.get_model_version(name, champion.version)
    raise ForeignChampionError(_foreign_message(name, champion.version, owner_path, settings))


def _foreign_message(name: str, version: str, owner_path: str | None, settings: Settings) -> str:
    """Why another root's champion is refused here, and the ways out."""
    root = Path(settings.data_dir).absolute()
    defaults = mlflow_store_defaults(settings.data_dir)
    if owner_path == str(root):
        cause = (
            f"that is this folder, but its {ROOT_ID_FILE} was removed or replaced since; "
            f"restore it with the id of tag {ROOT_ID_TAG} of v{version}"
        )
    elif settings.mlflow_uri == defaults["mlflow_uri"]:
        cause = f"this root's store was copied from there; move {root}/mlruns aside to start anew"
    else:
        cause = (
            "mlflow_uri points this root at that root's store; leave mlflow_uri and "
            f"mlflow_artifacts unset so that this root keeps its models in {root}/mlruns"
        )
    return (
        f"{name!r} champion v{version} in {settings.mlflow_uri} was trained from data root "
        f"{owner_path}, not from this data root {root}: a night is never scored with another "
        f"root's models. {cause[:1].upper()}{cause[1:]}; or set shared_registry = true "
        "(MIA_SHARED_REGISTRY=true) to use one store for several roots on purpose."
    )


@functools.cache
def _log_once(level: int, message: str) -> None:
    """Log a message once per process (the champion is looked up several times a night)."""
    logger.log(level, "%s", message)


def _load_scorer(name: str, version: str) -> Any:
    """The scorer of one registered version; RegistryError naming it when its files are gone."""
    where = MlflowClient().get_model_version_download_uri(name, version)
    try:
        # From the version's own files: loading `models:/...` rewrites a metadata file inside
        # the store, which lives in the data root; reading a champion writes nothing.
        model = mlflow.pyfunc.load_model(where)
    except (MlflowException, OSError) as error:
        raise RegistryError(
            f"model {name!r} v{version}: its files are missing from {where} "
            f"({' '.join(str(error).split())}); the artifacts folder was deleted or moved. "
            "Run `mia train` to train and register a new version (or restore the folder)."
        ) from error
    return model.unwrap_python_model().scorer


def _scorer_or_error(name: str, version: str) -> Any:
    """The scorer of a registered version, or the RegistryError saying its files are gone."""
    try:
        return _load_scorer(name, version)
    except RegistryError as error:
        return error


def _metric_of(evaluate: Callable[[Any], dict[str, float]], scorer: Any, metric: str) -> float:
    metrics = evaluate(scorer)
    if metric not in metrics:
        raise InputError(f"metric {metric!r} is not among the evaluated metrics {sorted(metrics)}.")
    return float(metrics[metric])


def promote(
    name: str,
    version: str,
    evaluate: Callable[[Any], dict[str, float]],
    metric: str,
    higher_is_better: bool = True,
    tolerance: float = 0.01,
) -> PromotionDecision:
    """Champion gate: make `version` champion unless it is worse than the champion by > tolerance.

    Call inside `tracking(settings)`; a champion of another data root is refused
    (ForeignChampionError) unless `settings.shared_registry`. Both models are scored by the same
    `evaluate` (one holdout); `tolerance` is absolute, in the metric's units. The decision is
    written as `gate.*` tags on the candidate version.
    """
    if not tolerance >= 0:
        raise InputError(f"tolerance == {tolerance!r}, must be >= 0.")
    settings = _tracking_settings("promote")
    version = str(version)
    client = MlflowClient()
    try:
        client.get_model_version(name, version)
    except MlflowException as error:
        raise RegistryError(f"model {name!r} has no version {version!r}.") from error
    champion = _owned_champion(client, name, settings)
    champion_version = None if champion is None else str(champion.version)
    candidate_metric = _metric_of(evaluate, _load_scorer(name, version), metric)
    champion_metric: float | None = None
    if champion is None:
        promoted, reason = True, "no champion yet"
    elif champion_version == version:
        promoted, reason = True, "already champion"
        champion_metric = candidate_metric
    elif isinstance(champion_scorer := _scorer_or_error(name, champion_version), RegistryError):
        # A champion whose files are gone cannot score: any loadable candidate replaces it.
        promoted, reason = True, f"champion v{champion_version} cannot be loaded: {champion_scorer}"
    else:
        champion_metric = _metric_of(evaluate, champion_scorer, metric)
        margin = candidate_metric - champion_metric
        if not higher_is_better:
            margin = -margin
        promoted = not math.isnan(candidate_metric) and (
            math.isnan(champion_metric) or margin >= -tolerance
        )
        direction = "higher" if higher_is_better else "lower"
        verdict = "within" if promoted else "worse than champion beyond"
        reason = (
            f"{metric} {candidate_metric:.6g} vs champion v{champion_version} "
            f"{champion_metric:.6g} ({direction} is better): {verdict} tolerance {tolerance:g}"
        )
    tags = {
        "decision": "promoted" if promoted else "rejected",
        "reason": reason,
        "metric": metric,
        "candidate_value": repr(candidate_metric),
        "champion_value": repr(champion_metric),
        "champion_version": str(champion_version),
        "tolerance": repr(tolerance),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, GATE_TAG_PREFIX + key, value)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    log = logger.info if promoted else logger.warning
    log("%s v%s %s: %s", name, version, tags["decision"], reason)
    return PromotionDecision(
        promoted=promoted,
        reason=reason,
        champion_version=champion_version,
        candidate_version=version,
        candidate_metric=candidate_metric,
        champion_metric=champion_metric,
    )


def load_champion(name: str, settings: Settings) -> Any:
    """The scorer object registered as `models:/<name>@champion`."""
    with tracking(settings) as client:
        champion = _owned_champion(client, name, settings)
        if champion is None:
            raise RegistryError(
                f"model {name!r} has no {CHAMPION!r} version in {settings.mlflow_uri}; "
                "train and promote one first."
            )
        return _load_scorer(name, str(champion.version))


def champion_info(name: str, settings: Settings) -> dict | None:
    """Version, run id, creation time and tags of the champion of `name`, or None if there is
    none; ForeignChampionError if another data root registered it (unless shared_registry)."""
    with tracking(settings) as client:
        champion = _owned_champion(client, name, settings)
        if champion is None:
            return None
        return {
            "name": name,
            "version": str(champion.version),
            "run_id": champion.run_id,
            "created": dt.datetime.fromtimestamp(champion.creation_timestamp / 1000, dt.UTC),
            "tags": dict(champion.tags),
        }
