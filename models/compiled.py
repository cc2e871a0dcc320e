"""Compiled trees: LightGBM boosters turned into native code with lleaves, for scoring.

`booster.predict` walks every tree for every row through LightGBM's generic predictor; lleaves
compiles the model text to machine code (via LLVM), which is several times faster on the night's
rows and gives the same numbers (both evaluate the same thresholds in double precision; the tests
check identity to 1e-9 on rows with missing values, unseen categories and every category model).

Compilation takes seconds per model, so the object code is cached in a folder (by default beside
the MLflow artifacts, `<mlflow_artifacts>/compiled`), one file per model text, host CPU and
compiler version: a model version is compiled once on a machine and later nights load the file.
When lleaves or llvmlite is missing or compilation fails, scoring falls back to
`booster.predict` with one warning; results are the same, only slower.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import lightgbm as lgb
import numpy as np

logger = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]
CACHE_SUFFIX = ".o"


@functools.cache
def _toolchain() -> str | None:
    """Versions of lleaves and llvmlite and the host CPU (part of every cache key), or None when
    they cannot be imported."""
    try:
        import lleaves  # noqa: F401
        import llvmlite.binding as llvm
    except ImportError as error:
        _warn_once(f"compiled trees unavailable ({error}); scoring uses booster.predict")
        return None
    versions = [metadata.version(name) for name in ("lleaves", "llvmlite")]
    return "|".join([*versions, llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()])


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning("%s", message)


def cache_key(model_text: str, raw_score: bool) -> str | None:
    """File name stem of a compiled model: a hash of its text, output kind and the toolchain."""
    toolchain = _toolchain()
    if toolchain is None:
        return None
    digest = hashlib.sha256()
    for part in (model_text, f"raw_score={raw_score}", toolchain):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def _compile(model_text: str, raw_score: bool, cache: Path) -> object:
    """An lleaves model compiled from `model_text`, its object code cached at `cache`."""
    import lleaves

    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mia-compile-") as scratch:
        model_file = Path(scratch) / "model.txt"
        model_file.write_text(model_text)
        model = lleaves.Model(model_file=str(model_file))
        if cache.exists():
            model.compile(cache=str(cache), raw_score=raw_score)
            return model
        # Written next to its final name, then renamed: a concurrent worker or a killed run never
        # leaves a partial file where another process would load it.
        partial = Path(scratch) / "partial.o"
        model.compile(cache=str(partial), raw_score=raw_score)
        staged = cache.with_name(f"{cache.name}.tmp-{os.getpid()}")
        staged.write_bytes(partial.read_bytes())
        os.replace(staged, cache)
        return model


class PicklesWithoutCompiled:
    """Mixin for models that hold compiled code in `compiled_`: it lives in one process only, so
    a pickled model leaves it behind and compiles again where it is loaded (`use_compiled`)."""

    def __getstate__(self) -> dict[str, object]:
        return {key: value for key, value in self.__dict__.items() if key != "compiled_"}


def compiled_predict(
    booster: lgb.Booster, cache_dir: Path | None, *, raw_score: bool, num_threads: int
) -> Predict:
    """A function rows -> predictions equal to `booster.predict(rows, raw_score=raw_score)`,
    compiled (cached under `cache_dir`) when possible, else `booster.predict` itself."""

    def fallback(x: np.ndarray) -> np.ndarray:
        return booster.predict(x, raw_score=raw_score, num_threads=num_threads)

    if cache_dir is None:
        return fallback
    model_text = booster.model_to_string()
    key = cache_key(model_text, raw_score)
    if key is None:
        return fallback
    try:
        model = _compile(model_text, raw_score, Path(cache_dir) / f"{key}{CACHE_SUFFIX}")
    except Exception as error:  # noqa: BLE001 - any compiler failure falls back to LightGBM
        _warn_once(f"compiling a model failed ({type(error).__name__}: {error}); using LightGBM")
        return fallback
    features = booster.num_feature()

    def predict(x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != features:
            return fallback(x)  # LightGBM's own error message
        if not x.shape[0]:
            return np.empty(0)
        return model.predict(np.ascontiguousarray(x, dtype=np.float64), n_jobs=num_threads)

    return predict
