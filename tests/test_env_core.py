"""The batched market core against the env it replaced (tests/reference/list_trading_env.py, one env of
per-asset Python floats): for the same seeds and actions, the new TradingEnv, the in-process
BatchedVecEnv and the process ShmVecEnv agree with it step for step (equity, rewards, costs to
1e-9) in every layout x action x reward combination, over bars with gaps, missing prices, costs,
penalties, bankruptcies and auto-resets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv

from ploutos.bench.env import synthetic_arrays
from ploutos.config import EnvConfig
from ploutos.env.batched import BatchedVecEnv
from ploutos.env.core import MarketCore
from ploutos.env.trading import TradingEnv
from ploutos.env.vec import ShmVecEnv
from ploutos.features.arrays import FeatureArrays
from reference.list_trading_env import ListTradingEnv

TOL = 1e-9


def gappy_arrays(n_time: int = 500, n_asset: int = 4, n_feat: int = 3, seed: int = 11) -> FeatureArrays:
    """Synthetic bars with what real data has: bars missing (not present), and prices missing for a stretch."""
    arrays = synthetic_arrays(n_time, n_asset, n_feat, seed=seed)
    rng = np.random.default_rng(seed)
    present = rng.random((n_time, n_asset)) > 0.05
    prices = arrays.prices.copy()
    prices[100:130, 1, :4] = np.nan  # an asset with no price at all for 30 bars
    prices[:, 2, 4] = np.where(rng.random(n_time) < 0.1, 0.0, prices[:, 2, 4])  # no volume on some bars
    return replace(arrays, present=present, prices=prices)


ARRAYS = gappy_arrays()
COSTLY = replace(EnvConfig(), lookback=6, episode_bars=120, impact_coef=0.1, sec_fee_per_million=27.8)
CONFIGS = {
    "flat-continuous-log": replace(COSTLY, obs_layout="flat", action_mode="continuous", reward="log_return"),
    "flat-discrete-dsr": replace(COSTLY, obs_layout="flat", action_mode="discrete", reward="dsr"),
    "dict-continuous-dsr-penalties": replace(
        COSTLY, obs_layout="asset_lookback_feature", action_mode="continuous", reward="dsr",
        drawdown_penalty=0.1, turnover_penalty=0.01, long_only=True,
    ),
    "flat-continuous-dsr-trading-rules": replace(
        COSTLY, obs_layout="flat", action_mode="continuous", reward="dsr", rebalance_band=0.05,
        max_weight_change=0.3, decide_every=3, borrow_bps_per_year=2_000.0, cost_profile="crypto",
    ),
    "dict-discrete-log-bankrupt": replace(
        COSTLY, obs_layout="asset_lookback_feature", action_mode="discrete", reward="log_return",
        bankruptcy_equity=0.999,
    ),
}  # fmt: skip
ROWS = slice(20, 480)


def _actions(space, rng: np.random.Generator, n: int, step: int) -> np.ndarray:
    """Actions that exercise every branch: out-of-box weights, NaN, holds, full sells."""
    if hasattr(space, "nvec"):
        return rng.integers(0, 3, (n, len(space.nvec)))
    a = rng.uniform(-1.5, 1.5, (n, space.shape[0])).astype(np.float32)
    if step % 7 == 3:
        a[:, 0] = np.nan
    return a


def assert_close(a, b, what: str) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=TOL, atol=TOL,
                               err_msg=what)  # fmt: skip


def assert_obs(a, b, what: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-6, err_msg=f"{what}[{key}]")
    else:
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=what)  # float32 of equal float64


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("evaluation", [False, True], ids=["training", "evaluation"])
def test_the_env_agrees_with_the_env_it_replaced(name: str, evaluation: bool):
    cfg = CONFIGS[name]
    new = TradingEnv(ARRAYS, cfg, rows=ROWS, bars_per_year=24 * 365, evaluation=evaluation)
    old = ListTradingEnv(ARRAYS, cfg, rows=ROWS, bars_per_year=24 * 365, evaluation=evaluation)
    rng = np.random.default_rng(3)
    episodes = 0
    for episode in range(4):
        obs_new, info_new = new.reset(seed=episode)
        obs_old, info_old = old.reset(seed=episode)
        assert_obs(obs_new, obs_old, f"{name}: reset obs")
        assert info_new["timestamp"] == info_old["timestamp"]
        for step in range(1000):
            action = _actions(new.action_space, rng, 1, step)[0]
            obs_new, r_new, term_new, trunc_new, info_new = new.step(action)
            obs_old, r_old, term_old, trunc_old, info_old = old.step(action)
            where = f"{name} episode {episode} step {step}"
            assert (term_new, trunc_new) == (term_old, trunc_old), where
            assert_close(r_new, r_old, f"{where}: reward")
            for key in ("equity", "cash", "turnover", "costs", "drawdown", "weights"):
                assert_close(info_new[key], info_old[key], f"{where}: {key}")
            assert info_new["timestamp"] == info_old["timestamp"], where
            assert_obs(obs_new, obs_old, f"{where}: obs")
            if term_new or trunc_new:
                episodes += 1
                break
    assert episodes == 4


def _old_env(cfg: EnvConfig):
    return lambda: ListTradingEnv(ARRAYS, cfg, rows=ROWS, bars_per_year=24 * 365)


def _new_env(cfg: EnvConfig):
    return lambda: TradingEnv(ARRAYS, cfg, rows=ROWS, bars_per_year=24 * 365)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("kind", ["batched", "shm"])
def test_vec_envs_agree_with_the_old_env_step_for_step(name: str, kind: str):
    cfg, n = CONFIGS[name], 5
    reference = DummyVecEnv([_old_env(cfg)] * n)
    if kind == "batched":
        tested = BatchedVecEnv([_new_env(cfg)] * n)
        assert isinstance(tested.core, MarketCore) and tested.core.n_envs == n  # one core steps them all
    else:
        tested = ShmVecEnv([_new_env(cfg)] * n, envs_per_worker=3)
    try:
        reference.seed(17)
        tested.seed(17)
        assert_obs(tested.reset(), reference.reset(), f"{name}: reset")
        rng = np.random.default_rng(9)
        dones_seen = 0
        for step in range(400):
            actions = _actions(tested.action_space, rng, n, step)
            obs_t, rew_t, done_t, infos_t = tested.step(actions)
            obs_r, rew_r, done_r, infos_r = reference.step(actions)
            where = f"{name} {kind} step {step}"
            np.testing.assert_array_equal(done_t, done_r, err_msg=where)
            assert_close(rew_t, rew_r, f"{where}: rewards")  # float32 both
            assert_obs(obs_t, obs_r, f"{where}: obs")
            for i in range(n):
                for key in ("equity", "costs", "turnover"):
                    assert_close(infos_t[i][key], infos_r[i][key], f"{where} env {i}: {key}")
                assert infos_t[i]["TimeLimit.truncated"] == infos_r[i]["TimeLimit.truncated"], where
                if done_r[i]:
                    assert_obs(infos_t[i]["terminal_observation"], infos_r[i]["terminal_observation"], where)
            dones_seen += int(done_r.sum())
        assert dones_seen >= n  # every env went through at least one auto-reset
    finally:
        tested.close()
        reference.close()


def test_the_core_exposes_rows_and_portfolio_without_building_windows():
    cfg = CONFIGS["flat-continuous-log"]
    core = MarketCore(ARRAYS, cfg, rows=ROWS, n_envs=64, bars_per_year=24 * 365)
    rng = np.random.default_rng(0)
    starts = [core.draw_start(np.random.default_rng(i)) for i in range(64)]
    core.reset(np.arange(64), np.array([t for t, _ in starts]), np.array([e for _, e in starts]))
    rows_before = core.rows.copy()
    step = core.step(rng.uniform(-1, 1, (64, ARRAYS.values.shape[1])))
    np.testing.assert_array_equal(core.rows, rows_before + 1)
    np.testing.assert_array_equal(step.fill_rows, core.rows)
    portfolio = np.empty((64, ARRAYS.values.shape[1] + 3), dtype=np.float32)
    core.portfolio_into(portfolio)
    np.testing.assert_allclose(portfolio[:, : ARRAYS.values.shape[1]], core.weights, rtol=1e-6)
    assert not core.values.flags.writeable  # the store is only ever read
