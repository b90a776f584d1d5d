"""The record of one evaluation: a strategy's path over a test window, and a fold's policy beside its benchmarks.

:mod:`ploutos.train.evaluate` produces these by trading through the env; :mod:`ploutos.results`
writes and reads them. Neither needs the other, only these records.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ploutos.analytics.metrics import Bootstrap, Metrics, compute_metrics, p_at_least
from ploutos.env.costs import COMPONENTS

BENCHMARKS = ("buy_and_hold", "equal_weight", "flat")
"""The single-path benchmarks every policy is evaluated beside, in this order."""
STITCHED = ("buy_and_hold", "equal_weight")
"""The benchmarks whose curves are chained across folds (flat is 1.0 throughout)."""
RANDOM = "random_turnover"
"""The random policy with the evaluated policy's own turnover (many seeds, see :class:`RandomBaseline`)."""
COST_COMPONENTS: tuple[str, ...] = tuple(COMPONENTS)
"""The cost components of :attr:`Evaluation.cost_parts`, in column order (from the env's cost model)."""


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
    cost_parts: np.ndarray = field(default_factory=lambda: np.zeros((0, len(COST_COMPONENTS))))
    """(N, C) the costs of each fill by component (:data:`COST_COMPONENTS`), in cash; rows sum to ``costs``."""

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
class RandomBaseline:
    """``S`` random policies trading with the evaluated policy's turnover, through the same env and costs.

    Each seed redraws its target with probability :attr:`probability` per bar and keeps it
    otherwise; the probability is calibrated so that the seeds' median realized turnover is the
    policy's (:mod:`ploutos.train.evaluate`). Their net total returns are the null distribution a
    policy's own return is ranked in: :attr:`FoldEvaluation.p_random`.
    """

    probability: float
    """Per-bar probability that a seed draws a new target, after calibration."""
    target_turnover: float
    """The policy's annualized turnover that the calibration aimed at."""
    passes: int
    """Runs over the window the calibration took (the last one is kept)."""
    seed: int
    """Seed of the generator of the draws (the same draws for every pass: common random numbers)."""
    turnover: np.ndarray
    """(S,) each seed's annualized turnover, as :attr:`Metrics.turnover`."""
    total_return: np.ndarray
    """(S,) each seed's net total return."""
    gross_return: np.ndarray
    """(S,) each seed's total return before costs."""
    metrics: Metrics
    """The median over the seeds of every metric (NaN seeds left out)."""

    @property
    def seeds(self) -> int:
        return int(self.total_return.size)


@dataclass(frozen=True)
class FoldEvaluation:
    """A policy and its benchmarks on one test window, with metrics and the bootstrap of the policy."""

    policy: Evaluation
    benchmarks: dict[str, Evaluation]
    metrics: dict[str, Metrics]
    """``policy``, every benchmark of :data:`BENCHMARKS` and :data:`RANDOM` (medians over its seeds)."""
    bootstrap: Bootstrap
    random: RandomBaseline
    cost_breakdown: dict[str, float]
    """The policy's annualized share of equity paid per cost component; sums to its ``cost_drag``."""

    @property
    def p_random(self) -> float:
        """Share of the random-turnover paths whose net total return is at least the policy's."""
        return p_at_least(self.metrics["policy"].total_return, self.random.total_return)
