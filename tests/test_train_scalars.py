"""The trading scalars written to TensorBoard measure what the test metrics measure."""

from __future__ import annotations

import numpy as np
import pytest

from ploutos.analytics.metrics import compute_metrics
from ploutos.env.trading import TradingEnv
from ploutos.train.scalars import EpisodeScalars


def test_an_episodes_scalars_are_its_metrics(quickstart_arrays):
    """One env traded at random to its episode's end: the scalars equal compute_metrics of its path."""
    config, arrays = quickstart_arrays
    env = TradingEnv(arrays, config.env, rows=slice(0, 600), bars_per_year=config.data.bars_per_year)
    scalars = EpisodeScalars(1, config.env.initial_cash, config.data.bars_per_year)
    _, info = env.reset(seed=3)
    equity, turnover, costs = [info["equity"]], [], []
    done = False
    while not done:
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        done = terminated or truncated
        scalars.step([info], np.array([done]))
        equity.append(info["equity"])
        turnover.append(info["turnover"])
        costs.append(info["costs"])
    assert sum(turnover) > 0 and sum(costs) > 0  # the check below means something
    expected = compute_metrics(np.array(equity), config.data.bars_per_year, turnover=np.array(turnover),
                               costs=np.array(costs))  # fmt: skip
    row = scalars.drain()
    assert row["trading/episodes"] == 1
    assert row["trading/episode_return"] == pytest.approx(expected.total_return, rel=1e-12)
    assert row["trading/episode_turnover"] == pytest.approx(expected.turnover, rel=1e-12)
    assert row["trading/episode_cost_drag"] == pytest.approx(expected.cost_drag, rel=1e-12)
    assert scalars.drain() == {}  # drained: the next rollout reports only its own episodes


def test_episodes_of_several_envs_are_averaged_and_restart_clean():
    scalars = EpisodeScalars(2, 100.0, 10)
    step = [{"equity": 110.0, "turnover": 1.0, "costs": 1.0}, {"equity": 90.0, "turnover": 0.5, "costs": 2.0}]
    scalars.step(step, np.array([True, False]))
    scalars.step(step, np.array([True, True]))
    row = scalars.drain()
    # env 0: two one-bar episodes, +10% each; env 1: one two-bar episode, -10%
    assert row["trading/episodes"] == 3
    assert row["trading/episode_return"] == pytest.approx((0.1 + 0.1 - 0.1) / 3)
    assert row["trading/episode_turnover"] == pytest.approx((10.0 + 10.0 + 0.5 * 2 / 2 * 10) / 3)
    assert row["trading/episode_cost_drag"] == pytest.approx((0.1 + 0.1 + (2 / 100 + 2 / 90) / 2 * 10) / 3)
