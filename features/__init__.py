"""features layer of Mia: daily aggregates, point-in-time snapshots, feature catalog, labels.

The public names below are loaded on first use, so `python -m features.catalog` and light
imports such as `features.drift` do not pull in the whole layer.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FEATURES": "features.catalog",
    "Feature": "features.catalog",
    "categorical_features": "features.catalog",
    "describe_feature": "features.catalog",
    "feature_names": "features.catalog",
    "features_for_tables": "features.catalog",
    "render_markdown": "features.catalog",
    "aggregate_day": "features.daily",
    "build_daily": "features.daily",
    "build_daily_range": "features.daily",
    "build_snapshot": "features.snapshot",
    "compute_snapshot": "features.snapshot",
    "read_snapshot": "features.snapshot",
    "category_labels": "features.labels",
    "offer_labels": "features.labels",
    "training_frame": "features.labels",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'features' has no attribute {name!r}")
