"""The record of one evaluation: a strategy's path over a test window, and a fold's policy beside its benchmarks.

:mod:`ploutos.train.evaluate` produces these by trading through the env; :mod:`ploutos.results`
writes and reads them. Neither needs the other, only these records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ploutos.analytics.metrics import Bootstrap, Metrics, compute_metrics

BENCHMARKS = ("buy_and_hold", "equal_weight")
"""The benchmarks every policy is evaluated beside, in this order."""


@dataclass(frozen=True)
class Evaluation:
    """One strategy's path over the test window: ``N`` steps, ``N + 1`` marks (the first is the start)."""

    timestamps: np.ndarray
    """(N+1,) datetime64[us]: the bar before the window, then every bar marked."""
    equity: np.ndarray
    """(N+1,) equity at each mark's close."""
    weights: np.ndarray
    """(N+1, A) weights at each mark's close."""
    units: np.ndarray
    """(N+1, A) units held at each mark."""
    fill_prices: np.ndarray
    """(N, A) the open at which step k filled."""
    turnover: np.ndarray
    """(N,) traded notional over equity at each fill."""
    costs: np.ndarray
    """(N,) cash paid in costs at each fill."""

    @property
    def trades(self) -> dict[str, np.ndarray]:
        """Every non-zero fill: ``step``, ``asset``, ``timestamp``, ``units`` (signed), ``price``, ``notional``."""
        delta = np.diff(self.units, axis=0)
        step, asset = np.nonzero(delta)
        units = delta[step, asset]
        price = self.fill_prices[step, asset]
        return {
            "step": step.astype(np.int64),
            "asset": asset.astype(np.int64),
            "timestamp": self.timestamps[step + 1],
            "units": units,
            "price": price,
            "notional": units * price,
        }

    def metrics(self, bars_per_year: int) -> Metrics:
        return compute_metrics(self.equity, bars_per_year, turnover=self.turnover, costs=self.costs)


@dataclass(frozen=True)
class FoldEvaluation:
    """A policy and its benchmarks on one test window, with metrics and the bootstrap of the policy."""

    policy: Evaluation
    benchmarks: dict[str, Evaluation]
    metrics: dict[str, Metrics]
    """``policy`` and every benchmark."""
    bootstrap: Bootstrap
