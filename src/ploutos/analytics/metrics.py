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
* Significance: the probabilistic Sharpe ratio (PSR) of Bailey & Lopez de Prado (2012) and their
  deflated Sharpe ratio (DSR, 2014), which is the PSR against the Sharpe ratio the best of ``N``
  trials of pure noise would be expected to show (:func:`expected_max_sharpe`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from statistics import NormalDist

import numpy as np

_NOISE = 1e-12
"""A per-bar return std or a drawdown below this is floating-point noise (a constant-growth
curve built with cumprod wobbles by ~1e-16) and counts as exactly zero."""
EULER_GAMMA = 0.5772156649015329
"""The Euler-Mascheroni constant, in the expected maximum of ``N`` Gaussian Sharpe ratios."""
_NORMAL = NormalDist()


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
    """Annualized traded notional over equity, buys plus sells (two-way: a round trip of the whole equity is 2):
    ``sum(turnover) / N * bars_per_year``."""
    cost_drag: float
    """Annualized share of equity paid in costs: ``sum(costs / equity[:-1]) / N * bars_per_year``."""
    psr: float
    """Probabilistic Sharpe ratio against 0 (Bailey & Lopez de Prado 2012) of the per-bar Sharpe;
    ``1 - psr`` is the p-value of "the Sharpe ratio is above 0" (beating flat)."""
    n_bars: int
    """N, the number of returns."""
    gross_return: float = math.nan
    """Total return before costs: per bar ``(equity[t+1] + costs[t]) / equity[t] - 1`` (the step's
    costs given back), compounded; 0 after equity reached <= 0. What the trades earned, so that a
    policy that loses only to costs shows it. (Last, with a default, so that older callers that
    build a :class:`Metrics` by keyword keep working.)"""

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


def moments(r: np.ndarray) -> tuple[float, float]:
    """Sample skewness and (non-excess, 3 for a Gaussian) kurtosis of ``r``; NaN without variance."""
    r = np.asarray(r, dtype=np.float64)
    dev = r - r.mean()
    m2 = float(np.mean(dev**2)) if r.size else 0.0
    if m2 <= 0:
        return math.nan, math.nan
    return float(np.mean(dev**3)) / m2**1.5, float(np.mean(dev**4)) / m2**2


def probabilistic_sharpe(sr: float, benchmark: float, n: int, skew: float, kurtosis: float) -> float:
    """PSR: the probability that the true per-bar Sharpe exceeds ``benchmark``, given the observed
    per-bar ``sr`` over ``n`` returns of that ``skew`` and (non-excess) ``kurtosis`` (Bailey & Lopez
    de Prado 2012): ``Z[(sr - benchmark) sqrt(n - 1) / sqrt(1 - skew sr + (kurtosis - 1) / 4 sr^2)]``.
    NaN when an input is not finite or the variance term is not positive."""
    if not all(math.isfinite(x) for x in (sr, benchmark, skew, kurtosis)) or n < 2:
        return math.nan
    # kurt >= 1 + skew^2 for any sample, so this is >= (1 - skew * sr / 2)^2 >= 0; 0 is degenerate.
    var = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr**2
    if var <= 0:
        return math.nan
    return _NORMAL.cdf((sr - benchmark) * math.sqrt(n - 1) / math.sqrt(var))


def expected_max_sharpe(variance: float, n_trials: int) -> float:
    """``SR*``: the Sharpe ratio the best of ``n_trials`` strategies without skill is expected to show,
    when their Sharpe ratios vary with ``variance`` across trials (Bailey & Lopez de Prado 2014):
    ``sqrt(variance) * ((1 - gamma) Z^-1(1 - 1/N) + gamma Z^-1(1 - 1/(N e)))``, gamma Euler's.
    One trial selected nothing: 0. NaN when the variance is not finite."""
    if n_trials <= 1:
        return 0.0
    if not math.isfinite(variance) or variance < 0:
        return math.nan
    n = float(n_trials)
    quantiles = _NORMAL.inv_cdf(1.0 - 1.0 / n), _NORMAL.inv_cdf(1.0 - 1.0 / (n * math.e))
    return math.sqrt(variance) * ((1.0 - EULER_GAMMA) * quantiles[0] + EULER_GAMMA * quantiles[1])


def deflated_sharpe(returns: np.ndarray, trial_sharpes: np.ndarray) -> float:
    """DSR of per-bar ``returns``: their PSR against :func:`expected_max_sharpe` of the trials.

    ``trial_sharpes`` are the per-bar Sharpe ratios of every strategy tried in the research that
    produced this one (itself included); their variance uses ``ddof=1``. Trials whose Sharpe is
    NaN (no variance: a policy that never traded) are left out of both the count and the variance.
    Skew, kurtosis and ``n`` are those of ``returns``. With one trial (or none) it is the PSR(0).
    """
    r = np.asarray(returns, dtype=np.float64)
    trials = np.asarray(trial_sharpes, dtype=np.float64)
    trials = trials[np.isfinite(trials)]
    if r.size < 2 or not np.all(np.isfinite(r)):
        return math.nan
    std = float(r.std(ddof=1))
    if std < _NOISE:
        return math.nan
    variance = float(trials.var(ddof=1)) if trials.size > 1 else 0.0
    skew, kurtosis = moments(r)
    benchmark = expected_max_sharpe(variance, trials.size)
    return probabilistic_sharpe(float(r.mean()) / std, benchmark, r.size, skew, kurtosis)


def _psr(r: np.ndarray, sr: float) -> float:
    """Bailey & Lopez de Prado's PSR(0) of the per-bar Sharpe ``sr`` with sample skew and kurtosis."""
    skew, kurtosis = moments(r)
    return probabilistic_sharpe(sr, 0.0, r.size, skew, kurtosis)


def gross_returns(equity: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Per-bar returns before costs, ``(equity[t+1] + costs[t]) / equity[t] - 1``; 0 once equity is <= 0."""
    equity = _check_equity(equity)
    costs = _check_per_step(costs, equity.size - 1, "costs")
    alive = np.logical_and.accumulate(equity[:-1] > 0)
    ratio = np.divide(equity[1:] + costs, equity[:-1], out=np.ones(equity.size - 1), where=alive)
    return ratio - 1.0


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
        gross_return=float(np.prod(1.0 + gross_returns(equity, costs)) - 1.0),
    )


def cost_breakdown(equity: np.ndarray, parts: np.ndarray, bars_per_year: int) -> np.ndarray:
    """Annualized share of equity paid in each cost component: ``parts`` (N, C) in cash -> (C,),
    ``sum(parts[:, c] / equity[:-1]) / N * bars_per_year``, the same measure as ``cost_drag`` (the
    components sum to it)."""
    equity = _check_equity(equity)
    parts = np.asarray(parts, dtype=np.float64)
    n = equity.size - 1
    if parts.ndim != 2 or parts.shape[0] != n:
        raise ValueError(f"cost parts must have shape ({n}, C), one row per step, got {parts.shape}")
    alive = (equity[:-1] > 0)[:, None]
    share = np.divide(parts, equity[:-1, None], out=np.zeros(parts.shape), where=alive)
    return share.sum(axis=0) / n * bars_per_year


def p_at_least(value: float, samples: np.ndarray) -> float:
    """The share of ``samples`` that are at least ``value``: the one-sided p-value of ``value`` against
    the distribution the samples come from (e.g. random policies); NaN without samples or value."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if not samples.size or not math.isfinite(value):
        return math.nan
    return float(np.mean(samples >= value))


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
