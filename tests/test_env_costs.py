"""Each cost component against numbers worked out by hand."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from ploutos.config import EnvConfig
from ploutos.config.sections import InvalidValue
from ploutos.env import costs

NOTIONAL = np.array([10_000.0, 0.0, 2_500.0])


def test_commission_and_half_spread_are_bps_of_notional():
    # 0.5 + 1.0 bps of 10,000 is 1.5; of 2,500 it is 0.375
    np.testing.assert_allclose(costs.commission_spread(NOTIONAL, 0.5, 1.0), [1.5, 0.0, 0.375], rtol=1e-12)


def test_slippage_is_a_multiple_of_the_bar_range():
    high, low, close = np.array([102.0, 10.0, 50.0]), np.array([98.0, 9.0, 50.0]), np.array([100.0, 10.0, 50.0])
    # (102 - 98) / 100 = 0.04 -> 0.05 * 0.04 * 10,000 = 20; a bar with no range has no slippage
    np.testing.assert_allclose(costs.slippage(NOTIONAL, high, low, close, 0.05), [20.0, 0.0, 0.0], rtol=1e-12)


def test_square_root_impact_and_zero_volume_guard():
    volume, price = np.array([1_000.0, 5.0, 0.0]), np.array([100.0, 100.0, 100.0])
    # sqrt(10,000 / (1,000 * 100)) = 0.316227766...; 0.1 * that * 10,000 = 316.227766...
    out = costs.impact(NOTIONAL, volume, price, 0.1)
    assert out[0] == pytest.approx(0.1 * math.sqrt(0.1) * 10_000.0, rel=1e-12)
    assert out[1] == 0.0  # nothing traded
    assert out[2] == 0.0  # no volume on the bar: no impact rather than a division by zero
    assert np.isfinite(out).all()


def test_regulatory_fee_on_sells_only():
    out = costs.regulatory_fee(NOTIONAL, np.array([True, True, False]), 27.80)
    np.testing.assert_allclose(out, [0.278, 0.0, 0.0], rtol=1e-12)


def test_total_cost_adds_the_components():
    cfg = replace(EnvConfig(), commission_bps=0.5, half_spread_bps=1.0, slippage_vol_mult=0.05, impact_coef=0.1)
    cfg = replace(cfg, sec_fee_per_million=27.80)
    one = np.array([10_000.0])
    total = costs.total_cost(
        one, np.array([True]), np.array([102.0]), np.array([98.0]), np.array([100.0]), np.array([1_000.0]),
        np.array([100.0]), cfg,
    )  # fmt: skip
    assert total[0] == pytest.approx(1.5 + 20.0 + 316.2277660168379 + 0.278, rel=1e-12)
    # the per-bar rates the env folds these into give the same number
    rate = costs.linear_rate(np.array([102.0]), np.array([98.0]), np.array([100.0]), cfg)
    k = costs.impact_factor(np.array([1_000.0]), np.array([100.0]), cfg)
    assert (rate * one + k * one**1.5 + 0.278)[0] == pytest.approx(total[0], rel=1e-12)


def test_negative_costs_are_refused():
    with pytest.raises(InvalidValue, match="sec_fee_per_million"):
        EnvConfig(sec_fee_per_million=-1.0)
