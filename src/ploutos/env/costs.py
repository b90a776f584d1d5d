"""Transaction and holding costs: the cost model of the env, as per-bar rates on numpy arrays.

A fill of traded notional ``N = |units traded| x open`` (cash units) on a bar pays, per asset:

============  =====================================================================================
component     cost
============  =====================================================================================
commission    ``N * commission_bps / 1e4``
spread        ``N * half_spread_bps / 1e4``
slippage      ``N * slippage_range_mult * (high - low) / close`` (the fill bar's relative range)
impact        ``N * impact_coef * sigma * sqrt(|units| / V)``: the square-root law, with ``sigma`` the
              standard deviation of close-to-close log returns and ``V`` the average volume, both over
              the ``impact_window`` bars before the fill bar; 0 where the asset has no volume history
financing     every bar, ``borrow_bps_per_year / 1e4 / bars_per_year`` of the short notional at the
              close (shorts only: the env never borrows cash, it has no leverage)
fees          ``sec_fee_per_million / 1e6`` of the sell notional
============  =====================================================================================

The rates come from :attr:`ploutos.config.EnvConfig.costs`: a profile per asset class (``fx``,
``equity``, ``crypto``; :data:`ploutos.config.sections.COST_PROFILES`) with the config's own values
in place of the profile's. Impact needs a volume in units traded; FX data carries tick counts,
so the ``fx`` profile turns it off.

The square-root law is the same at any bar length: ``sigma`` grows and ``V`` grows with the
square root and the length of the bar, so ``sigma / sqrt(V)`` is what a daily calibration gives.
With ``Q = N / price``, impact is ``k * N ** 1.5`` with ``k = impact_coef * sigma / sqrt(V * price)``
(:func:`impact_factor`), which the env's kernel evaluates per fill.
"""

from __future__ import annotations

import numpy as np

from ploutos.config import EnvConfig

COMPONENTS = ("commission", "spread", "slippage", "impact", "financing", "fees")
"""The cost components, in the order of ``Step.cost_parts`` columns."""


def slippage_rate(high: np.ndarray, low: np.ndarray, close: np.ndarray, cfg: EnvConfig) -> np.ndarray:
    """Slippage per unit of notional on each bar: ``slippage_range_mult * (high - low) / close``."""
    return cfg.costs.slippage_range_mult * _relative_range(high, low, close)


def linear_rate(high: np.ndarray, low: np.ndarray, close: np.ndarray, cfg: EnvConfig) -> np.ndarray:
    """Cost per unit of notional that is linear in it (commission, spread, slippage), for bars of any shape."""
    rates = cfg.costs
    return (rates.commission_bps + rates.half_spread_bps) * 1e-4 + slippage_rate(high, low, close, cfg)


def impact_factor(prices: np.ndarray, cfg: EnvConfig) -> np.ndarray:
    """``k`` per (bar, asset) such that impact cost is ``k * notional ** 1.5`` for a fill at that bar's open.

    ``prices`` is ``(W, A, 5)`` open, high, low, close, volume of consecutive bars; ``sigma`` and ``V``
    are measured on the up to ``impact_window`` bars before each bar (never the bar itself), so a
    window's first bar has no impact estimate (0).
    """
    coef = cfg.costs.impact_coef
    prices = np.asarray(prices, dtype=np.float64)
    if coef == 0.0:
        return np.zeros(prices.shape[:2])
    open_, close, volume = prices[..., 0], prices[..., 3], prices[..., 4]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_return = np.log(close[1:] / close[:-1])
    log_return = np.vstack([np.full((1, close.shape[1]), np.nan), log_return])
    sigma = np.sqrt(_trailing_variance(log_return, cfg.impact_window))
    volume = np.where(np.isfinite(volume) & (volume > 0), volume, np.nan)
    mean_volume = _trailing_mean(volume, cfg.impact_window)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = coef * sigma / np.sqrt(mean_volume * open_)
    return np.where(np.isfinite(k), k, 0.0)


def borrow_rate_per_bar(cfg: EnvConfig, bars_per_year: int) -> float:
    """Share of the short notional paid as financing every bar."""
    yearly = cfg.costs.borrow_bps_per_year * 1e-4
    if yearly == 0.0:
        return 0.0
    if bars_per_year <= 0:
        raise ValueError("borrow costs accrue per bar: bars_per_year must be given (> 0)")
    return yearly / bars_per_year


def cost_components(
    notional: np.ndarray, is_sell: np.ndarray, prices: np.ndarray, short_notional: np.ndarray, cfg: EnvConfig,
    bars_per_year: int, impact_k: np.ndarray,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Every component of one fill of ``notional`` per asset on a bar ``prices`` ``(A, 5)``, and the bar's
    financing of ``short_notional`` (at the close), written out for tests and readers; ``impact_k``
    is that bar's :func:`impact_factor` row."""
    rates = cfg.costs
    high, low, close = prices[:, 1], prices[:, 2], prices[:, 3]
    return {
        "commission": notional * rates.commission_bps * 1e-4,
        "spread": notional * rates.half_spread_bps * 1e-4,
        "slippage": notional * slippage_rate(high, low, close, cfg),
        "impact": impact_k * notional * np.sqrt(notional),
        "financing": short_notional * borrow_rate_per_bar(cfg, bars_per_year),
        "fees": np.where(is_sell, notional * cfg.sec_fee_per_million * 1e-6, 0.0),
    }


def _relative_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (np.asarray(high, dtype=np.float64) - low) / close
    return np.where(np.isfinite(rel) & (rel > 0), rel, 0.0)


def _trailing_sums(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, sum and sum of squares of the finite values of ``x`` over the ``window`` rows before each row."""
    ok = np.isfinite(x)
    values = np.where(ok, x, 0.0)
    stacked = np.stack([ok.astype(np.float64), values, values * values])
    cumulative = np.concatenate([np.zeros((3, 1, x.shape[1])), np.cumsum(stacked, axis=1)], axis=1)
    rows = np.arange(x.shape[0])
    before = cumulative[:, rows] - cumulative[:, np.maximum(rows - window, 0)]
    return before[0], before[1], before[2]


def _trailing_mean(x: np.ndarray, window: int) -> np.ndarray:
    count, total, _ = _trailing_sums(x, window)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _trailing_variance(x: np.ndarray, window: int) -> np.ndarray:
    """Sample variance over the ``window`` rows before each row; NaN with fewer than 2 finite values."""
    count, total, squares = _trailing_sums(x, window)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / count
        variance = (squares - count * mean * mean) / (count - 1)
    return np.where(count >= 2, np.maximum(variance, 0.0), np.nan)
