"""Scale observation features with statistics of the training window only.

``fit`` reads only the rows it is given (a fold's training window) and only valid entries; the
same statistics are then applied to every row, so the test window is scaled as the agent would
have seen it live. After clipping to ``[-clip, clip]`` no feature may sit at a bound for more
than ``max_saturation`` of its valid values in the training window: a feature that does is
broken (a heavy tail, a near-constant series) and the build stops naming it. The test window is
not judged, so that out-of-sample data never decides which folds run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from ploutos.config import FeaturesConfig
from ploutos.errors import FeatureError
from ploutos.features.arrays import FeatureArrays

Method = Literal["zscore", "robust", "none"]
IQR_TO_STD = 1.349
"""Interquartile range of a unit normal: makes robust scales comparable to standard deviations."""


@dataclass(frozen=True)
class NormStats:
    """Per-feature center and scale, fitted on one window."""

    method: Method
    center: np.ndarray
    """(F,) float64."""
    scale: np.ndarray
    """(F,) float64, > 0; 1 for a feature that was constant in the window."""
    constant: tuple[str, ...]
    """Features with no spread in the window (they normalize to 0)."""
    saturation: dict[str, float] = field(default_factory=dict)
    """Share of each feature's valid training values at the clip bound once scaled (set by :func:`normalize`)."""


def fit(arrays: FeatureArrays, rows: slice, method: Method) -> NormStats:
    """Center and scale of each feature over the valid entries of ``rows``."""
    values = arrays.values[rows].astype(np.float64)
    valid = arrays.valid[rows]
    n_features = len(arrays.names)
    if method == "none":
        return NormStats(method, np.zeros(n_features), np.ones(n_features), ())
    flat = values[valid]  # (valid entries, F)
    if len(flat) < 2:
        raise FeatureError(f"cannot fit normalization: only {len(flat)} valid bar(s) in the training window")
    if method == "zscore":
        center, scale = flat.mean(axis=0), flat.std(axis=0)
    else:
        q25, center, q75 = np.percentile(flat, [25, 50, 75], axis=0)
        scale = (q75 - q25) / IQR_TO_STD
    degenerate = ~(scale > 1e-12)
    scale = np.where(degenerate, 1.0, scale)
    constant = tuple(name for name, flag in zip(arrays.names, degenerate, strict=True) if flag)
    return NormStats(method, center, scale, constant)


def transform(arrays: FeatureArrays, stats: NormStats, clip: float) -> FeatureArrays:
    """Scaled, clipped float32 values; entries that are not valid stay 0."""
    scaled = (arrays.values - stats.center.astype(np.float32)) / stats.scale.astype(np.float32)
    np.clip(scaled, -clip, clip, out=scaled)
    scaled[~arrays.valid] = 0.0
    return replace(arrays, values=scaled.astype(np.float32, copy=False))


def saturation(arrays: FeatureArrays, clip: float, rows: slice | None = None) -> dict[str, float]:
    """Share of each feature's valid values at the clip bounds."""
    rows = rows or slice(None)
    values, valid = arrays.values[rows], arrays.valid[rows]
    at_bound = (np.abs(values) >= clip * (1 - 1e-6)) & valid[..., None]
    counts = max(int(valid.sum()), 1)
    shares = at_bound.sum(axis=(0, 1)) / counts
    return {name: float(share) for name, share in zip(arrays.names, shares, strict=True)}


def normalize(arrays: FeatureArrays, train_rows: slice, cfg: FeaturesConfig) -> tuple[FeatureArrays, NormStats]:
    """Fit on ``train_rows``, scale everything, and refuse a feature that saturates.

    Saturation is judged on the training rows only: refusing a fold because of what its test
    window holds would let out-of-sample data decide which experiments run. (A feature that is
    often clipped in training carries little information, which is what the check is for.)
    """
    stats = fit(arrays, train_rows, cfg.normalize)
    if cfg.normalize == "none":
        return arrays, stats
    scaled = transform(arrays, stats, cfg.clip)
    shares = saturation(scaled, cfg.clip, train_rows)
    stats = replace(stats, saturation=shares)
    offenders = sorted(((s, n) for n, s in shares.items() if s > cfg.max_saturation), reverse=True)
    if offenders:
        listed = ", ".join(f"{name} {share:.1%}" for share, name in offenders[:5])
        more = f" and {len(offenders) - 5} more" if len(offenders) > 5 else ""
        raise FeatureError(
            f"feature(s) saturate at the clip bound ±{cfg.clip:g} above features.max_saturation "
            f"{cfg.max_saturation:.1%}: {listed}{more}; raise features.clip, use features.normalize: robust, "
            "or lengthen the training window"
        )
    return scaled, stats
