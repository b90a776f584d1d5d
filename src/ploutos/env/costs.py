"""Transaction costs of one fill, as pure functions on numpy arrays (one entry per asset).

Every function takes the *traded notional* ``|units traded| x fill price`` (>= 0, in cash units)
and returns the cost in cash units, element-wise:

==================  ===============================================================================
component           cost
==================  ===============================================================================
commission+spread   ``notional * (commission_bps + half_spread_bps) / 1e4``
slippage            ``slippage_vol_mult * (high - low) / close * notional`` (range of the fill bar)
square-root impact  ``impact_coef * sqrt(notional / (volume * price)) * notional``; 0 where volume is 0
regulatory fee      ``sec_fee_per_million / 1e6 * notional`` on sells only
==================  ===============================================================================

:class:`ploutos.env.trading.TradingEnv` folds the per-bar parts into per-bar rates once per
episode (:func:`linear_rate`, :func:`impact_factor`) so that a step costs a few array operations;
:func:`total_cost` is the same arithmetic written out, for tests and callers outside the env.
"""

from __future__ import annotations

import numpy as np

from ploutos.config import EnvConfig


def commission_spread(notional: np.ndarray, commission_bps: float, half_spread_bps: float) -> np.ndarray:
    """Commission plus half the bid-ask spread, both in basis points of the traded notional."""
    return notional * ((commission_bps + half_spread_bps) * 1e-4)


def slippage(notional: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, vol_mult: float) -> np.ndarray:
    """``vol_mult`` times the fill bar's relative range ``(high - low) / close``, on the notional."""
    return vol_mult * _relative_range(high, low, close) * notional


def impact(notional: np.ndarray, volume: np.ndarray, price: np.ndarray, coef: float) -> np.ndarray:
    """Square-root impact ``coef * sqrt(notional / (volume * price)) * notional``; 0 where the bar has no volume."""
    return coef * np.sqrt(notional) * notional * _inv_sqrt_dollar_volume(volume, price)


def regulatory_fee(notional: np.ndarray, is_sell: np.ndarray, fee_per_million: float) -> np.ndarray:
    """A fee of ``fee_per_million`` per million of notional, charged on sells only."""
    return np.where(is_sell, notional * (fee_per_million * 1e-6), 0.0)


def total_cost(
    notional: np.ndarray,
    is_sell: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    price: np.ndarray,
    cfg: EnvConfig,
) -> np.ndarray:
    """Every component of a fill at ``price`` on a bar with ``high, low, close, volume``, per asset."""
    return (
        commission_spread(notional, cfg.commission_bps, cfg.half_spread_bps)
        + slippage(notional, high, low, close, cfg.slippage_vol_mult)
        + impact(notional, volume, price, cfg.impact_coef)
        + regulatory_fee(notional, is_sell, cfg.sec_fee_per_million)
    )


def linear_rate(high: np.ndarray, low: np.ndarray, close: np.ndarray, cfg: EnvConfig) -> np.ndarray:
    """Cost per unit of notional that is linear in it (commission, spread, slippage), for bars of any shape."""
    return (cfg.commission_bps + cfg.half_spread_bps) * 1e-4 + cfg.slippage_vol_mult * _relative_range(high, low, close)


def impact_factor(volume: np.ndarray, price: np.ndarray, cfg: EnvConfig) -> np.ndarray:
    """``k`` such that impact cost is ``k * notional ** 1.5``, for bars of any shape."""
    return cfg.impact_coef * _inv_sqrt_dollar_volume(volume, price)


def _relative_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (np.asarray(high, dtype=np.float64) - low) / close
    return np.where(np.isfinite(rel) & (rel > 0), rel, 0.0)


def _inv_sqrt_dollar_volume(volume: np.ndarray, price: np.ndarray) -> np.ndarray:
    dollar = np.asarray(volume, dtype=np.float64) * price
    ok = np.isfinite(dollar) & (dollar > 0)
    return np.where(ok, 1.0 / np.sqrt(np.where(ok, dollar, 1.0)), 0.0)
