"""Drift of a trained fold's observation features on recent bars (``ploutos drift``, paper trading's halt).

The reference is the quantile sketch that training wrote into the fold's task file (``/drift``, on the
normalized training rows the agent saw); the recent rows come through :func:`normalized_features`, the
training code path with the fold's normalization, so both sides are on the same scale. Scores and
thresholds: :mod:`ploutos.analytics.drift`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ploutos.analytics.drift import DriftReport, compare
from ploutos.errors import PloutosError
from ploutos.features.arrays import FeatureArrays
from ploutos.pipeline.policy import Policy, normalized_features
from ploutos.results.hdf5 import DriftReference, ResultError, read_drift
from ploutos.results.layout import RunLayout


@dataclass(frozen=True)
class DriftCheck:
    """A drift report with what it was computed on."""

    report: DriftReport
    tickers: tuple[str, ...]
    names: tuple[str, ...]
    first: np.datetime64
    last: np.datetime64

    @property
    def span(self) -> str:
        """The scored bars as ``first .. last UTC``."""
        first, last = (str(np.datetime_as_string(t, "m")).replace("T", " ") for t in (self.first, self.last))
        return f"bars {first} .. {last} UTC"


def reference_of(run_dir: Path, policy: Policy) -> DriftReference:
    """The sketch of the policy's fold (its members share the training window: the first one's file)."""
    path = RunLayout(Path(run_dir)).result(policy.fold, policy.members[0])
    try:
        reference = read_drift(path)
    except ResultError as err:
        raise PloutosError(str(err)) from None
    expected = (len(policy.tickers), len(policy.names))
    if reference.quantiles.shape[:2] != expected:
        raise PloutosError(f"{path}: /drift holds {reference.quantiles.shape[:2]} (assets, features), not {expected}")
    return reference


def score(arrays: FeatureArrays, reference: DriftReference, n_bars: int, stop: int | None = None) -> DriftCheck:
    """Score the ``n_bars`` rows of normalized ``arrays`` before row ``stop`` (default: all) against ``reference``
    (rows in the features' warm-up are not valid, so they do not count)."""
    stop = len(arrays.timestamps) if stop is None else stop
    if n_bars < 1 or stop < 1:
        raise PloutosError(f"no bars to score for drift ({n_bars} asked, {stop} available)")
    rows = slice(max(0, stop - n_bars), stop)
    report = compare(reference.quantiles, reference.cdf, reference.rows, arrays.values[rows], arrays.valid[rows])
    return DriftCheck(report, arrays.tickers, arrays.names, arrays.timestamps[rows.start], arrays.timestamps[stop - 1])


def check_drift(bars: pl.DataFrame, policy: Policy, reference: DriftReference, n_bars: int) -> DriftCheck:
    """Score the last ``n_bars`` bars of ``bars`` against ``reference``, features by the training path."""
    return score(normalized_features(bars, policy), reference, n_bars)


def halt_reason(checked: DriftCheck, threshold: float) -> str:
    """Why trading stops (empty: it goes on): the share of drifting pairs reached ``threshold`` (0: never)."""
    report = checked.report
    if not threshold or report.share < threshold:
        return ""
    a, f = np.unravel_index(int(np.nanargmax(np.where(report.drifting, report.psi, -np.inf))), report.psi.shape)
    return (
        f"feature drift: {int(report.drifting.sum())} of {report.scored} (feature, asset) pairs ({report.share:.0%}) "
        f"drift over {checked.span}, paper.drift_halt is {threshold:.0%} (worst {checked.names[f]} "
        f"{checked.tickers[a]}: PSI {report.psi[a, f]:.2f}); see ploutos drift --live, retrain, or --ignore-drift"
    )
