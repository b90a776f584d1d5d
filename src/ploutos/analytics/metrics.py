"""Performance metrics of an out-of-sample equity curve, and a block bootstrap of them.

Conventions:

* An equity curve has ``N + 1`` points: ``equity[0]`` is the value before the first step and
  ``equity[t + 1]`` the value after step ``t``. Its returns are the ``N`` per-bar *simple*
  returns ``equity[t + 1] / equity[t] - 1`` (:func:`returns_of`).
* Annualization multiplies per-bar figures by ``bars_per_year`` (means) or its square root
  (standard deviations), where ``bars_per_year`` is the session policy's count of hourly bars
  (:data:`ploutos.config.sections.SESSION_BARS_PER_YEAR`), not a fixed 252 x 24.
* A ratio that is undefined (zero volatility, fewer than two returns, no drawdown, no bar with
  exposure) is NaN, never an exception or an infinity, so that tables of many folds aggregate
  with ``nanmean`` and nothing crashes at the end of a long run.
* Once equity reaches zero or below the account is dead: later returns are 0 and the
  annualized return is -1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

_NOISE = 1e-12
"""A per-bar return std or a drawdown below this is floating-point noise (a constant-growth
curve built with cumprod wobbles by ~1e-16) and counts as exactly zero."""


@dataclass(frozen=True)
class Metrics:
    total_return: float
    """``equity[-1] / equity[0] - 1``."""
    annual_return: float
    """Geometric: ``(1 + total_return) ** (bars_per_year / N) - 1``; -1 once equity reached <= 0."""
    volatility: float
    """``std(r, ddof=1) * sqrt(bars_per_year)``."""
    sharpe: float
    """``mean(r) / std(r, ddof=1) * sqrt(bars_per_year)``, risk-free rate 0."""
    sortino: float
    """``mean(r) / sqrt(mean(min(r, 0) ** 2)) * sqrt(bars_per_year)``; NaN without a losing bar."""
    calmar: float
    """``annual_return / max_drawdown``."""
    max_drawdown: float
    """``max(1 - equity / cummax(equity))``, a positive share of the running peak."""
    win_rate: float
    """Share of bars with ``r > 0`` among bars with ``r != 0`` (bars with exposure)."""
    turnover: float
    """Annualized one-way traded notional over equity: ``sum(turnover) / N * bars_per_year``."""
    cost_drag: float
    """Annualized share of equity paid in costs: ``sum(costs / equity[:-1]) / N * bars_per_year``."""
    psr: float
    """Probabilistic Sharpe ratio against 0 (Bailey & Lopez de Prado 2012) of the per-bar Sharpe."""
    n_bars: int
    """N, the number of returns."""

    def as_dict(self) -> dict[str, float]:
        """Every field by name (``n_bars`` stays an int), e.g. for HDF5 attributes or a table row."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check_equity(equity: np.ndarray) -> np.ndarray:
    equity = np.asarray(equity, dtype=np.float64)
    if equity.ndim != 1 or equity.size < 2:
        raise ValueError(f"equity must be a 1-D curve of at least 2 points, got shape {equity.shape}")
    if not np.all(np.isfinite(equity)):
        raise ValueError(f"equity has {int(np.sum(~np.isfinite(equity)))} non-finite value(s) (NaN or inf)")
    if equity[0] <= 0:
        raise ValueError(f"equity[0] must be positive to measure returns against it, got {equity[0]}")
    return equity


def _check_per_step(values: np.ndarray | None, n: int, name: str) -> np.ndarray:
    if values is None:
        return np.zeros(n)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one value per step of the equity curve, got {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} has non-finite values (NaN or inf)")
    return values


def returns_of(equity: np.ndarray) -> np.ndarray:
    """Per-bar simple returns (N,) of an equity curve (N + 1,); 0 after equity reached <= 0."""
    equity = _check_equity(equity)
    # A dead account earns nothing; dividing by zero or a negative balance would make noise.
    alive = np.logical_and.accumulate(equity[:-1] > 0)
    ratio = np.divide(equity[1:], equity[:-1], out=np.ones(equity.size - 1), where=alive)
    return ratio - 1.0


def _annualize_growth(total_return: float, n: int, bars_per_year: int) -> float:
    """``(1 + total_return) ** (bars_per_year / n) - 1`` for ``total_return > -1``, in log space."""
    exponent = math.log1p(total_return) * bars_per_year / n
    # Compounding a short lucky curve over a year can exceed the float range; that is no number.
    return math.expm1(exponent) if exponent < 700 else math.nan


def _psr(r: np.ndarray, sr: float) -> float:
    """Bailey & Lopez de Prado's PSR(0) of the per-bar Sharpe ``sr`` with sample skew and kurtosis."""
    dev = r - r.mean()
    m2 = float(np.mean(dev**2))
    if not math.isfinite(sr) or m2 <= 0:
        return math.nan
    skew = float(np.mean(dev**3)) / m2**1.5
    kurt = float(np.mean(dev**4)) / m2**2
    # kurt >= 1 + skew^2 for any sample, so this is >= (1 - skew * sr / 2)^2 >= 0; 0 is degenerate.
    var = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr**2
    if var <= 0:
        return math.nan
    z = sr * math.sqrt(r.size - 1) / math.sqrt(var)
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def compute_metrics(
    equity: np.ndarray,
    bars_per_year: int,
    *,
    turnover: np.ndarray | None = None,
    costs: np.ndarray | None = None,
) -> Metrics:
    """Metrics of ``equity`` (N + 1,) with per-step ``turnover`` and ``costs`` in currency (N,); None is 0."""
    equity = _check_equity(equity)
    if bars_per_year <= 0:
        raise ValueError(f"bars_per_year must be positive, got {bars_per_year}")
    n = equity.size - 1
    turnover = _check_per_step(turnover, n, "turnover")
    costs = _check_per_step(costs, n, "costs")
    r = returns_of(equity)
    scale = math.sqrt(bars_per_year)

    total = float(equity[-1] / equity[0] - 1.0)
    annual = -1.0 if np.any(equity <= 0) else _annualize_growth(total, n, bars_per_year)
    mean = float(r.mean())
    std = float(r.std(ddof=1)) if n >= 2 else math.nan
    if std < _NOISE:
        std = 0.0
    sharpe = mean / std * scale if std > 0 else math.nan
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    sortino = mean / downside * scale if downside >= _NOISE else math.nan
    drawdown = float(np.max(1.0 - equity / np.maximum.accumulate(equity)))
    drawdown = 0.0 if drawdown < _NOISE else drawdown
    calmar = annual / drawdown if drawdown > 0 and math.isfinite(annual) else math.nan
    exposed = r != 0
    win_rate = float(np.mean(r[exposed] > 0)) if exposed.any() else math.nan
    cost_share = np.divide(costs, equity[:-1], out=np.zeros(n), where=equity[:-1] > 0)
    return Metrics(
        total_return=total,
        annual_return=annual,
        volatility=std * scale,
        sharpe=sharpe,
        sortino=sortino,
        calmar=calmar,
        max_drawdown=drawdown,
        win_rate=win_rate,
        turnover=float(turnover.sum()) / n * bars_per_year,
        cost_drag=float(cost_share.sum()) / n * bars_per_year,
        psr=_psr(r, sharpe / scale),
        n_bars=n,
    )


@dataclass(frozen=True)
class Bootstrap:
    block: int
    """Block length in bars."""
    confidence: float
    """Coverage of the percentile intervals, e.g. 0.95."""
    samples: dict[str, np.ndarray]
    """``sharpe``, ``total_return``, ``max_drawdown``, ``annual_return`` -> (n_samples,) float64."""
    intervals: dict[str, tuple[float, float]]
    """Same keys -> (low, high) percentile interval at ``confidence``; NaN samples are left out."""


def block_bootstrap(
    returns: np.ndarray,
    bars_per_year: int,
    *,
    n_samples: int = 1000,
    block: int | None = None,
    confidence: float = 0.95,
    seed: int = 0,
) -> Bootstrap:
    """Circular moving-block bootstrap of per-bar ``returns``: each sample is a path of N returns
    glued from blocks starting at uniform random bars (wrapping around the end), whose statistics
    are computed on its equity curve starting at 1. Blocks keep the short-range dependence
    (volatility clustering) that an iid resampling would destroy; default length ``round(N ** (1/3))``.
    """
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1 or r.size < 2:
        raise ValueError(f"returns must be 1-D with at least 2 values, got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("returns have non-finite values (NaN or inf)")
    n = r.size
    block = max(1, round(n ** (1 / 3))) if block is None else block
    if not 1 <= block <= n:
        raise ValueError(f"block must be between 1 and the number of returns {n}, got {block}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if bars_per_year <= 0:
        raise ValueError(f"bars_per_year must be positive, got {bars_per_year}")

    rng = np.random.default_rng(seed)
    n_blocks = -(-n // block)
    starts = rng.integers(0, n, size=(n_samples, n_blocks))
    index = (starts[:, :, None] + np.arange(block)).reshape(n_samples, n_blocks * block)[:, :n] % n
    paths = r[index]

    # Growth factors clipped at 0: an account that is wiped out stays at 0 (as in returns_of).
    equity = np.cumprod(np.maximum(1.0 + paths, 0.0), axis=1)
    peak = np.maximum.accumulate(np.maximum(equity, 1.0), axis=1)
    drawdown = np.max(1.0 - equity / peak, axis=1)
    drawdown[drawdown < _NOISE] = 0.0
    total = equity[:, -1] - 1.0
    with np.errstate(divide="ignore", over="ignore"):
        annual = np.where(total > -1.0, np.expm1(np.log(np.maximum(total + 1.0, 1e-300)) * bars_per_year / n), -1.0)
    annual[~np.isfinite(annual)] = np.nan
    std = paths.std(axis=1, ddof=1)
    safe = std >= _NOISE
    sharpe = np.full(n_samples, np.nan)
    sharpe[safe] = paths.mean(axis=1)[safe] / std[safe] * math.sqrt(bars_per_year)

    samples = {"sharpe": sharpe, "total_return": total, "max_drawdown": drawdown, "annual_return": annual}
    tail = (1.0 - confidence) / 2.0
    intervals = {}
    for key, values in samples.items():
        finite = values[np.isfinite(values)]
        if finite.size:
            low, high = np.quantile(finite, [tail, 1.0 - tail])
            intervals[key] = (float(low), float(high))
        else:
            intervals[key] = (math.nan, math.nan)
    return Bootstrap(block=block, confidence=confidence, samples=samples, intervals=intervals)
