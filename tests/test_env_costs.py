"""The cost model against numbers worked out by hand, and the quickstart's costs against its profile."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from ploutos.config import EnvConfig
from ploutos.config.sections import COST_PROFILES, InvalidValue
from ploutos.env import costs
from ploutos.env.trading import TradingEnv


def bars(closes, volumes, *, high_low=0.0) -> np.ndarray:
    """(W, 1, 5) bars with open = close and the given volumes."""
    close = np.asarray(closes, dtype=float)
    prices = np.stack([close, close + high_low, close - high_low, close, np.asarray(volumes, dtype=float)], axis=-1)
    return prices[:, None, :]


def test_profiles_fill_what_the_config_leaves_empty():
    assert EnvConfig(cost_profile="fx").costs == COST_PROFILES["fx"]
    assert EnvConfig(cost_profile="fx").costs.impact_coef == 0.0  # FX volume is a tick count
    mixed = EnvConfig(cost_profile="crypto", commission_bps=0.0).costs
    assert mixed.commission_bps == 0.0 and mixed.half_spread_bps == COST_PROFILES["crypto"].half_spread_bps
    with pytest.raises(InvalidValue, match="borrow_bps_per_year"):
        EnvConfig(borrow_bps_per_year=-1.0)
    with pytest.raises(InvalidValue, match="sec_fee_per_million"):
        EnvConfig(sec_fee_per_million=-1.0)


def test_slippage_is_a_multiple_of_the_fill_bar_range():
    cfg = EnvConfig(slippage_range_mult=0.05)
    high, low, close = np.array([102.0, 10.0, 50.0]), np.array([98.0, 9.0, 50.0]), np.array([100.0, 10.0, 50.0])
    # (102 - 98) / 100 = 0.04 -> 0.05 * 0.04 = 0.002 per unit of notional; a bar with no range has none
    np.testing.assert_allclose(costs.slippage_rate(high, low, close, cfg), [0.002, 0.005, 0.0], rtol=1e-12)


def test_impact_is_the_square_root_law_on_volatility_and_average_volume_before_the_fill():
    cfg = EnvConfig(impact_coef=0.5, impact_window=3)
    closes = [100.0, 101.0, 99.0, 102.0, 100.0, 100.0]
    prices = bars(closes, [1e4, 2e4, 3e4, 4e4, 5e4, 6e4])
    k = costs.impact_factor(prices, cfg)[:, 0]
    # fill at bar 4 (open 100): the 3 bars before are 1..3; returns known there: 1/0, 2/1, 3/2 -> the last 3
    returns = np.log(np.array(closes[1:4]) / np.array(closes[0:3]))
    sigma, volume = returns.std(ddof=1), np.mean([2e4, 3e4, 4e4])
    notional = 50_000.0  # 500 units at 100
    assert k[4] * notional**1.5 == pytest.approx(0.5 * sigma * math.sqrt(500 / volume) * notional, rel=1e-12)
    assert k[0] == 0.0 and k[1] == 0.0  # no volatility estimate yet: no impact rather than NaN
    assert np.isfinite(k).all()
    # the bar's own volume and move do not enter its estimate (no look-ahead in the cost)
    changed = prices.copy()
    changed[4, 0, 3], changed[4, 0, 4] = 150.0, 1.0
    assert costs.impact_factor(changed, cfg)[4, 0] == k[4]


def test_impact_is_off_where_the_coefficient_is_zero():
    prices = bars([100.0, 101.0, 99.0, 102.0], [1e4] * 4)
    assert not costs.impact_factor(prices, EnvConfig(cost_profile="fx")).any()


def test_borrow_cost_accrues_on_shorts_every_bar():
    cfg = EnvConfig(
        lookback=1, cost_profile="fx", commission_bps=0.0, half_spread_bps=0.0, slippage_range_mult=0.0,
        borrow_bps_per_year=500.0,
    )  # fmt: skip
    arrays = _arrays(bars([100.0] * 6, [1e5] * 6))
    env = TradingEnv(arrays, cfg, rows=slice(0, 6), bars_per_year=1000, evaluation=True)
    env.reset(seed=0)
    paid = []
    for action in ([-0.5], [-0.5], [0.5], [0.5]):
        _, _, _, _, info = env.step(np.array(action, dtype=np.float32))
        paid.append(info["cost_parts"][costs.COMPONENTS.index("financing")])
    # 500 bp a year over 1000 bars on a 50,000 short: 2.5 a bar; nothing on the long
    assert paid[0] == pytest.approx(2.5, rel=1e-9)
    assert paid[1] == pytest.approx(0.5 * (100_000 - 2.5) * 0.05 / 1000, rel=1e-9)
    assert paid[2:] == [0.0, 0.0]


def test_cost_parts_add_up_to_the_costs_charged():
    cfg = EnvConfig(lookback=4, cost_profile="crypto", sec_fee_per_million=27.8, impact_window=5)
    rng = np.random.default_rng(0)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 80)))
    arrays = _arrays(bars(closes, rng.uniform(1e3, 1e4, 80), high_low=0.3))
    env = TradingEnv(arrays, cfg, rows=slice(0, 80), bars_per_year=24 * 365, evaluation=True)
    env.reset(seed=0)
    parts = np.zeros(len(costs.COMPONENTS))
    total = 0.0
    for _ in range(60):
        _, _, _, _, info = env.step(rng.uniform(-1, 1, 1).astype(np.float32))
        parts += info["cost_parts"]
        total += info["costs"]
    assert parts.sum() == pytest.approx(total, rel=1e-12)
    assert (parts > 0).sum() == len(costs.COMPONENTS)  # every component was charged


def test_the_quickstart_pays_its_profile_per_unit_of_turnover(quickstart_arrays):
    """On the quickstart's EURUSD bars with its own env settings, the measured cost per unit of traded notional is
    the fx profile's commission and half spread plus its slippage multiple of the fill bars' ranges, and nothing
    else (no impact from tick volume, no borrow)."""
    config, arrays = quickstart_arrays
    cfg = replace(config.env, rebalance_band=0.0, max_weight_change=None, decide_every=1)
    assert config.env.cost_profile == "fx"
    rows = slice(1000, 2000)
    env = TradingEnv(arrays, cfg, rows=rows, bars_per_year=config.data.bars_per_year, evaluation=True)
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    paid = notional = expected = 0.0
    for _ in range(900):
        _, _, _, _, info = env.step(rng.uniform(-1, 1, 1).astype(np.float32))
        fill_row = int(np.searchsorted(arrays.timestamps, info["timestamp"]))
        traded = info["turnover"] * (info["equity"] + info["costs"])  # equity at the open, before costs
        bar = np.asarray(arrays.prices[fill_row, 0], dtype=float)
        profile = COST_PROFILES["fx"]
        rate = (profile.commission_bps + profile.half_spread_bps) * 1e-4
        rate += profile.slippage_range_mult * (bar[1] - bar[2]) / bar[3]
        paid += info["costs"]
        notional += traded
        expected += traded * rate
    per_unit = paid / notional
    assert per_unit == pytest.approx(expected / notional, rel=2e-3)  # equity at the open is approximate above
    assert 0.7e-4 <= per_unit <= 1.5e-4  # 0.7 bp fixed plus slippage on EURUSD's hourly range


def _arrays(prices: np.ndarray):
    from ploutos.bench.env import synthetic_arrays

    base = synthetic_arrays(prices.shape[0], prices.shape[1], 2, seed=0)
    return replace(base, prices=prices.astype(base.prices.dtype), present=np.ones(prices.shape[:2], dtype=bool))
