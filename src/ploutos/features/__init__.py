"""Features: pure causal indicators (:mod:`.indicators`), their registry, the Polars engine,
alignment into dense arrays, train-window normalization, and a pandas facade.

The names below load their module on first use (PEP 562): env workers import only
:mod:`ploutos.features.arrays`, a numpy container, and must not pay for Polars and the engine.
``align`` (:mod:`.grid`) and ``normalize`` (:mod:`.normalize`) are imported from their modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ploutos.features.arrays import FeatureArrays
    from ploutos.features.engine import compute, feature_specs
    from ploutos.features.normalize import NormStats
    from ploutos.features.pandas_api import FeatureEngineer
    from ploutos.features.registry import FeatureSpec, all_specs

_HOMES = {
    "FeatureArrays": "arrays",
    "FeatureEngineer": "pandas_api",
    "FeatureSpec": "registry",
    "NormStats": "normalize",
    "all_specs": "registry",
    "compute": "engine",
    "feature_specs": "engine",
}
__all__ = ["FeatureArrays", "FeatureEngineer", "FeatureSpec", "NormStats", "all_specs", "compute", "feature_specs"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ploutos.features' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ploutos.features.{home}"), name)
