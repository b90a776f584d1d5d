"""Features: pure causal indicators (:mod:`.indicators`), their registry, the Polars engine,
alignment into dense arrays, train-window normalization, and a pandas facade."""

from ploutos.features.arrays import FeatureArrays, align
from ploutos.features.engine import compute, feature_specs
from ploutos.features.normalize import NormStats, normalize
from ploutos.features.pandas_api import FeatureEngineer
from ploutos.features.registry import FeatureSpec, all_specs

__all__ = [
    "FeatureArrays",
    "FeatureEngineer",
    "FeatureSpec",
    "NormStats",
    "align",
    "all_specs",
    "compute",
    "feature_specs",
    "normalize",
]
