"""TradingEnv: gymnasium contract, fill timing, accounting, episodes."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env

from ploutos.bench.env import synthetic_arrays
from ploutos.config import EnvConfig
from ploutos.env import TradingEnv
from ploutos.features.arrays import FeatureArrays

FREE = replace(
    EnvConfig(),
    commission_bps=0.0,
    half_spread_bps=0.0,
    slippage_range_mult=0.0,
    impact_coef=0.0,
    borrow_bps_per_year=0.0,
)


def hand_arrays(open_, close, *, present=None, high=None, low=None, volume=None, n_feat=2) -> FeatureArrays:
    """(T, A) prices given by hand; features are a simple function of the row so that windows can be checked."""
    open_, close = np.asarray(open_, dtype=float), np.asarray(close, dtype=float)
    if open_.ndim == 1:
        open_, close = open_[:, None], close[:, None]
    n_time, n_asset = open_.shape
    high = np.maximum(open_, close) if high is None else np.asarray(high, dtype=float).reshape(n_time, n_asset)
    low = np.minimum(open_, close) if low is None else np.asarray(low, dtype=float).reshape(n_time, n_asset)
    volume = np.full((n_time, n_asset), 1e6) if volume is None else np.asarray(volume, float).reshape(n_time, n_asset)
    present = np.ones((n_time, n_asset), bool) if present is None else np.asarray(present, bool).reshape(n_time, -1)
    values = np.arange(n_time * n_asset * n_feat, dtype=np.float32).reshape(n_time, n_asset, n_feat) / 100
    return FeatureArrays(
        timestamps=np.datetime64("2024-01-02T14:00", "us") + np.arange(n_time) * np.timedelta64(1, "h"),
        tickers=tuple(f"A{i}" for i in range(n_asset)),
        names=tuple(f"f{i}" for i in range(n_feat)),
        values=values,
        valid=present.copy(),
        present=present,
        prices=np.stack([open_, high, low, close, volume], axis=-1),
    )


def make_env(arrays, cfg=FREE, *, evaluation=True, rows=None, **changes) -> TradingEnv:
    cfg = replace(cfg, **changes)
    rows = slice(0, len(arrays.timestamps)) if rows is None else rows
    return TradingEnv(arrays, cfg, rows=rows, bars_per_year=252 * 7, evaluation=evaluation)


SMALL = synthetic_arrays(300, 3, 4, seed=5)


@pytest.mark.parametrize("layout", ["flat", "asset_lookback_feature"])
@pytest.mark.parametrize("mode", ["continuous", "discrete"])
def test_passes_sb3_check_env(layout, mode):
    env = make_env(SMALL, EnvConfig(), evaluation=False, lookback=8, obs_layout=layout, action_mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, warn=False)
    obs, info = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    assert set(info) >= {"equity", "weights", "turnover", "costs", "timestamp"}


def test_observation_layouts_hold_the_window_and_the_portfolio():
    arrays = synthetic_arrays(60, 3, 4, seed=2)
    flat = make_env(arrays, lookback=5, obs_layout="flat")
    nested = make_env(arrays, lookback=5, obs_layout="asset_lookback_feature")
    obs_f, _ = flat.reset(seed=0)
    obs_n, _ = nested.reset(seed=0)
    t = 4  # first row with a full lookback
    window = arrays.values[t - 4 : t + 1]
    np.testing.assert_array_equal(obs_f[: window.size], window.reshape(-1))
    np.testing.assert_array_equal(obs_n["features"], window.transpose(1, 0, 2))
    np.testing.assert_array_equal(obs_f[window.size :], [0, 0, 0, 1, 0, 0])  # weights, cash share, log ret, dd
    action = np.array([0.5, -0.25, 0.0], dtype=np.float32)
    obs_f, *_, info = flat.step(action)
    obs_n, *_ = nested.step(action)
    np.testing.assert_array_equal(obs_f[window.size :], obs_n["portfolio"])
    np.testing.assert_allclose(obs_f[window.size : window.size + 3], info["weights"], rtol=1e-6)
    assert obs_f[-2] == pytest.approx(math.log(info["equity"] / FREE.initial_cash), abs=1e-7)
    buf = np.empty_like(obs_f)
    flat.observe_into(buf)
    np.testing.assert_array_equal(buf, obs_f)


def test_action_at_bar_t_fills_at_the_next_open():
    # close 10 -> open 11, close 12 -> open 12.5, close 13 -> open 9, close 8 -> open 8, close 8
    arrays = hand_arrays([10, 11, 12.5, 9, 8], [10, 12, 13, 8, 8])
    env = make_env(arrays, lookback=1, initial_cash=1000.0)
    env.reset(seed=0)
    _, r1, *_, info = env.step(np.array([1.0], dtype=np.float32))  # decided on bar 0, bought at bar 1's open
    units = 1000.0 / 11.0
    assert info["equity"] == pytest.approx(units * 12.0, rel=1e-13)
    assert r1 == pytest.approx(math.log(units * 12.0 / 1000.0), rel=1e-12)
    _, r2, *_, info = env.step(np.array([1.0], dtype=np.float32))  # keep: the gap 12 -> 12.5 is earned
    assert info["equity"] == pytest.approx(units * 13.0, rel=1e-13)
    assert r2 == pytest.approx(math.log(13.0 / 12.0), rel=1e-12)
    assert info["turnover"] == pytest.approx(0.0, abs=1e-12)
    _, r3, *_, info = env.step(np.array([0.0], dtype=np.float32))  # sold at bar 3's open (9), after the gap down
    assert info["equity"] == pytest.approx(units * 9.0, rel=1e-13)
    assert r3 == pytest.approx(math.log(9.0 / 13.0), rel=1e-12)
    np.testing.assert_allclose(info["weights"], [0.0], atol=1e-12)
    assert info["timestamp"] == arrays.timestamps[3]
    _, _, terminated, truncated, info = env.step(np.array([0.0], dtype=np.float32))
    assert info["equity"] == pytest.approx(units * 9.0, rel=1e-13)  # flat in cash
    assert truncated and not terminated  # the last row has been marked


def test_short_position_and_gross_exposure_is_scaled_to_one():
    arrays = hand_arrays([[10, 20], [10, 20], [11, 18]], [[10, 20], [10, 20], [12, 16]])
    env = make_env(arrays, lookback=1, initial_cash=1000.0)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([1.0, -1.0], dtype=np.float32))  # |w| sums to 2 -> 0.5, -0.5
    np.testing.assert_allclose(info["weights"], [0.5, -0.5], rtol=1e-12)
    _, _, _, _, info = env.step(np.array([1.0, -1.0], dtype=np.float32))
    # 50 units long at 10 -> 12, 25 short at 20 -> 16 (rebalanced at 11 and 18 first, which is neutral for equity)
    # at bar 2's open equity = 1000 + 50*1 - 25*(-2) = 1100; re-targeted 550/11 = 50 long, 550/18 short
    eq_open = 1000.0 + 50 * (11 - 10) - 25 * (18 - 20)
    expected = eq_open + eq_open / 2 / 11 * (12 - 11) - eq_open / 2 / 18 * (16 - 18)
    assert info["equity"] == pytest.approx(expected, rel=1e-13)


def test_costs_are_charged_on_the_fill_bar():
    cfg = replace(FREE, commission_bps=1.0, half_spread_bps=2.0, slippage_range_mult=0.1, sec_fee_per_million=30.0)
    arrays = hand_arrays(
        [100, 100, 100, 100], [100, 100, 100, 100], high=[100, 104, 101, 100], low=[100, 98, 99, 100],
        volume=[1e5, 2e4, 5e4, 1e5],
    )  # fmt: skip
    env = make_env(arrays, cfg, lookback=1, initial_cash=10_000.0)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([0.5], dtype=np.float32))  # buy 5,000 at bar 1
    buy = 5_000 * 3e-4 + 0.1 * 6 / 100 * 5_000
    assert info["costs"] == pytest.approx(buy, rel=1e-12)
    assert info["equity"] == pytest.approx(10_000.0 - buy, rel=1e-13)
    assert info["turnover"] == pytest.approx(0.5, rel=1e-12)
    np.testing.assert_allclose(info["cost_parts"], [0.5, 1.0, 30.0, 0.0, 0.0, 0.0], rtol=1e-12)
    _, _, _, _, info = env.step(np.array([0.0], dtype=np.float32))  # sell those 50 units at bar 2
    sell = 5_000 * 3e-4 + 0.1 * 2 / 100 * 5_000 + 30e-6 * 5_000
    assert info["costs"] == pytest.approx(sell, rel=1e-12)
    assert info["cost_parts"][-1] == pytest.approx(30e-6 * 5_000, rel=1e-12)
    assert info["equity"] == pytest.approx(10_000.0 - buy - sell, rel=1e-13)


def test_log_rewards_sum_to_the_log_of_final_over_initial_equity():
    env = make_env(SMALL, EnvConfig(), evaluation=False, lookback=8, episode_bars=200)
    env.reset(seed=7)
    env.action_space.seed(7)
    total, done, info = 0.0, False, {}
    while not done:
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        total += reward
        done = terminated or truncated
    assert info["costs"] >= 0.0
    assert total == pytest.approx(math.log(info["equity"] / EnvConfig().initial_cash), abs=1e-9)


def test_dsr_reward_matches_a_reference_on_the_equity_curve():
    from test_env_reward import reference_dsr

    env = make_env(SMALL, EnvConfig(), evaluation=True, lookback=32, reward="dsr", dsr_eta=0.05, dsr_clip=1.5)
    env.reset(seed=0)
    env.action_space.seed(0)
    # the warm start: mean squared one-bar return of the assets over the 20 bars up to the first decision
    close = np.asarray(SMALL.prices[:, :, 3], dtype=float)
    t0 = env.lookback - 1
    b0 = float(np.mean((close[t0 - 19 : t0 + 1] / close[t0 - 20 : t0] - 1.0) ** 2))
    equity, rewards = [EnvConfig().initial_cash], []
    for _ in range(100):
        _, reward, *_, info = env.step(env.action_space.sample())
        rewards.append(reward)
        equity.append(info["equity"])
    returns = [b / a - 1.0 for a, b in zip(equity[:-1], equity[1:], strict=True)]
    assert rewards == pytest.approx(reference_dsr(returns, 0.05, b0=b0, clip=1.5), rel=1e-9, abs=1e-12)
    assert max(map(abs, rewards)) == 1.5  # the bound is reached, and holds


def test_penalties_are_subtracted():
    action = np.array([0.3, -0.3, 0.2], dtype=np.float32)
    plain = make_env(SMALL, EnvConfig(), lookback=8)
    penal = make_env(SMALL, EnvConfig(), lookback=8, drawdown_penalty=2.0, turnover_penalty=0.5)
    plain.reset(seed=0)
    penal.reset(seed=0)
    for _ in range(20):
        _, r0, *_ = plain.step(action)
        _, r1, *_, info = penal.step(action)
        assert r1 == pytest.approx(r0 - 2.0 * info["drawdown"] - 0.5 * info["turnover"], abs=1e-12)


def rollout(seed: int, layout: str = "flat", n: int = 50):
    env = make_env(SMALL, EnvConfig(), evaluation=False, lookback=8, obs_layout=layout, episode_bars=30)
    obs, info = env.reset(seed=seed)
    env.action_space.seed(seed)
    out = [(obs, info["timestamp"])]
    for _ in range(n):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        out.append((obs, reward, info["equity"], info["timestamp"]))
        if terminated or truncated:
            obs, info = env.reset()
            out.append((obs, info["timestamp"]))
    return out


def _flatten(item):
    return [np.concatenate([v.ravel() for v in x.values()]) if isinstance(x, dict) else x for x in item]


def test_same_seed_same_rollout_and_seeds_change_the_start():
    for layout in ("flat", "asset_lookback_feature"):
        a, b = rollout(3, layout), rollout(3, layout)
        for x, y in zip(a, b, strict=True):
            for u, v in zip(_flatten(x), _flatten(y), strict=True):
                np.testing.assert_array_equal(u, v)
    env = make_env(SMALL, EnvConfig(), evaluation=False, lookback=8, episode_bars=30)
    starts = {env.reset(seed=s)[1]["timestamp"] for s in range(10)}
    assert len(starts) >= 5
    first_full = SMALL.timestamps[7]
    assert min(starts) >= first_full
    assert max(starts) <= SMALL.timestamps[len(SMALL.timestamps) - 1 - 8]


def test_evaluation_runs_from_the_first_full_lookback_to_the_end_of_rows():
    env = make_env(SMALL, EnvConfig(), evaluation=True, lookback=8, rows=slice(100, 160), episode_bars=5)
    _, info = env.reset(seed=0)
    assert info["timestamp"] == SMALL.timestamps[107]
    steps, done = 0, False
    while not done:
        *_, terminated, truncated, info = env.step(np.zeros(3, dtype=np.float32))
        steps += 1
        done = terminated or truncated
    assert truncated and steps == 159 - 107 and info["timestamp"] == SMALL.timestamps[159]


def test_training_episodes_are_truncated_after_episode_bars():
    env = make_env(SMALL, EnvConfig(), evaluation=False, lookback=8, episode_bars=12)
    for seed in range(3):
        env.reset(seed=seed)
        flags = [env.step(np.zeros(3, dtype=np.float32))[2:4] for _ in range(12)]
        assert flags[-1] == (False, True) and all(f == (False, False) for f in flags[:-1])
        with pytest.raises(RuntimeError):
            env.step(np.zeros(3, dtype=np.float32))


def test_bankruptcy_terminates():
    arrays = hand_arrays([10, 10, 8, 4, 4, 4], [10, 10, 6, 4, 4, 4])
    env = make_env(arrays, lookback=1, bankruptcy_equity=0.5)
    env.reset(seed=0)
    *_, terminated, truncated, info = env.step(np.array([1.0], dtype=np.float32))
    assert not terminated
    *_, terminated, truncated, info = env.step(np.array([1.0], dtype=np.float32))  # 10 -> 6: 60% left
    assert not terminated
    *_, terminated, truncated, info = env.step(np.array([1.0], dtype=np.float32))  # 6 -> 4: 40% left
    assert terminated and not truncated
    assert info["equity"] == pytest.approx(FREE.initial_cash * 0.4, rel=1e-12)


def test_absent_bars_are_not_traded_and_nan_prices_do_not_leak():
    nan = np.nan
    open_ = [[10, 20], [10, 20], [11, nan], [12, 22], [12, 22]]
    close = [[10, 20], [10, 20], [11, nan], [12, 22], [12, 22]]
    present = [[1, 1], [1, 1], [1, 0], [1, 1], [1, 1]]
    arrays = hand_arrays(open_, close, present=present)
    env = make_env(arrays, lookback=1, initial_cash=1000.0)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([0.5, 0.5], dtype=np.float32))
    units_b = 500.0 / 20.0
    obs, _, _, _, info = env.step(np.array([0.0, 0.0], dtype=np.float32))  # B has no bar: its sale is ignored
    assert np.isfinite(obs).all()
    # A sold at 11; B kept and valued at its last price 20
    assert info["equity"] == pytest.approx(50.0 * 11 + units_b * 20.0, rel=1e-13)
    assert info["weights"][0] == 0.0 and info["weights"][1] > 0.0
    _, _, _, _, info = env.step(np.array([0.0, 0.0], dtype=np.float32))  # now B trades at 22
    assert info["equity"] == pytest.approx(50.0 * 11 + units_b * 22.0, rel=1e-13)
    np.testing.assert_allclose(info["weights"], [0.0, 0.0], atol=1e-12)


def test_discrete_actions_sell_hold_buy():
    arrays = hand_arrays([[10, 10], [10, 10], [10, 10], [10, 10]], [[10, 10], [10, 10], [10, 10], [10, 10]])
    env = make_env(arrays, lookback=1, action_mode="discrete", initial_cash=1000.0)
    env.reset(seed=0)
    *_, info = env.step(np.array([2, 0]))
    np.testing.assert_allclose(info["weights"], [0.5, -0.5], rtol=1e-12)
    *_, info = env.step(np.array([1, 2]))  # hold A, buy B
    np.testing.assert_allclose(info["weights"], [0.5, 0.5], rtol=1e-12)
    long_only = make_env(arrays, lookback=1, action_mode="discrete", long_only=True)
    long_only.reset(seed=0)
    *_, info = long_only.step(np.array([0, 2]))
    np.testing.assert_allclose(info["weights"], [0.0, 0.5], rtol=1e-12)


def test_rows_too_short_are_refused():
    with pytest.raises(ValueError, match="lookback"):
        make_env(SMALL, EnvConfig(), lookback=8, rows=slice(0, 8))


def test_bench_env_runs_small():
    from ploutos.bench import env as bench

    results = bench.run(steps=300, repeats=1, warmup=0, n_asset=3, n_feat=4, lookback=8, n_time=200)
    assert len(results) == 5 and all(r.rate > 0 for r in results)
    lines = bench.format_results(results)
    assert lines[0].endswith(("PASS", "MISS")) and "steps/s" in lines[0]
