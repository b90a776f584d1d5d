"""Rewards: the differential Sharpe ratio against a straightforward reference."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from ploutos.env.reward import DSR_MIN_VARIANCE, DifferentialSharpe, log_return, penalties, warm_second_moment
from ploutos.env.trading import TradingEnv


def reference_dsr(returns, eta, b0=0.0, clip=math.inf):
    """Moody & Saffell (2001), eq. 4-5, written out with lists; moments start at A = 0, B = b0."""
    a, b, out = 0.0, b0, []
    for r in returns:
        var = b - a**2
        if var > DSR_MIN_VARIANCE:
            out.append(max(-clip, min(clip, (b * (r - a) - 0.5 * a * (r**2 - b)) / var**1.5)))
        else:
            out.append(0.0)
        a = a + eta * (r - a)
        b = b + eta * (r**2 - b)
    return out


def test_dsr_matches_reference():
    returns = np.random.default_rng(3).normal(0.0005, 0.01, 500).tolist()
    dsr = DifferentialSharpe(0.05)
    got = [dsr.update(r) for r in returns]
    assert got == pytest.approx(reference_dsr(returns, 0.05), rel=1e-10, abs=1e-12)
    assert got[0] == 0.0  # zero variance at the start
    assert all(math.isfinite(x) for x in got)


def test_dsr_is_zero_while_flat_and_reset_clears_moments():
    dsr = DifferentialSharpe(0.01)
    assert [dsr.update(0.0) for _ in range(10)] == [0.0] * 10
    dsr.update(0.01)
    dsr.update(-0.02)
    assert dsr.a != 0.0
    dsr.reset()
    assert (dsr.a, dsr.b) == (0.0, 0.0)


def test_log_return_and_penalties():
    assert log_return(100.0, 110.0) == pytest.approx(math.log(1.1))
    assert penalties(0.1, 0.5, 2.0, 0.01) == pytest.approx(0.2 + 0.005)


def test_warm_started_dsr_is_bounded_from_the_first_step_on_real_bars(quickstart_arrays):
    """On EURUSD hourly bars, episodes of random trading: every |D| is within dsr_clip from step 1, and the
    first 50 steps of a 512-step episode carry about their share of |D| (cold-started: 35-41 %, and |D| in the
    tens of thousands)."""
    config, arrays = quickstart_arrays
    cfg = replace(config.env, reward="dsr", rebalance_band=0.0, max_weight_change=None, decide_every=1)
    env = TradingEnv(arrays, cfg, rows=slice(0, 3000), bars_per_year=config.data.bars_per_year)
    env.action_space.seed(0)
    early, total, largest, cold_largest = 0.0, 0.0, 0.0, 0.0
    for episode in range(6):
        env.reset(seed=episode)
        rewards, equity = [], [env.equity]
        for _ in range(512):
            _, reward, terminated, truncated, info = env.step(env.action_space.sample())
            rewards.append(reward)
            equity.append(info["equity"])
            if terminated or truncated:
                break
        d = np.abs(rewards)
        early, total, largest = early + d[:50].sum(), total + d.sum(), max(largest, d.max())
        returns = np.array(equity[1:]) / np.array(equity[:-1]) - 1.0
        cold_largest = max(cold_largest, np.abs(reference_dsr(returns.tolist(), cfg.dsr_eta)).max())
    assert largest <= cfg.dsr_clip
    assert early / total < 0.2, f"{early / total:.0%} of |D| in the first 50 steps"
    assert cold_largest > 10 * cfg.dsr_clip  # what the warm start and the bound prevent


def test_summed_dsr_orders_series_as_their_sharpe_ratios():
    z = np.random.default_rng(4).standard_normal(4000)
    z = (z - z.mean()) / z.std()
    series = {  # per-bar (mean, std): Sharpe ratios -0.02, 0, 0.01, 0.02, 0.05
        "losing": (-0.0002, 0.01), "flat-mean": (0.0, 0.02), "slow": (0.0001, 0.01), "steady": (0.0001, 0.005),
        "strong": (0.0005, 0.01),
    }  # fmt: skip
    summed, sharpe = {}, {}
    for name, (mean, std) in series.items():
        returns = mean + std * z
        dsr = DifferentialSharpe(0.01, clip=10.0)
        dsr.reset(second_moment=std**2)
        summed[name] = sum(dsr.update(r) for r in returns)
        sharpe[name] = returns.mean() / returns.std()
    assert sorted(series, key=summed.get) == sorted(series, key=sharpe.get)


def test_warm_second_moment_uses_only_bars_up_to_the_row():
    close = np.array([[100.0], [101.0], [99.0], [99.0], [150.0]])
    warm = warm_second_moment(close, eta=0.5)  # a window of 2 returns
    assert warm[0] == 0.0
    assert warm[1] == pytest.approx(0.01**2)
    assert warm[3] == pytest.approx(((99 / 101 - 1) ** 2 + 0.0) / 2)
    assert warm[3] == warm_second_moment(close[:4], eta=0.5)[3]  # the next bar does not enter
