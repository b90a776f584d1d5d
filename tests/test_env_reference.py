"""Observations by reference (``env.obs_layout: reference``): the decision row and the portfolio, no window.

Every env that produces the layout (the gymnasium TradingEnv, the in-process BatchedVecEnv, the
ShmVecEnv workers) is stepped in lockstep with the same env in the ``flat`` layout: the row names
exactly the window the flat observation carries, and the portfolio part is bitwise the flat one, at
resets, steps and terminal observations alike.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.vec_env import DummyVecEnv

from ploutos.bench.env import synthetic_arrays
from ploutos.config import EnvConfig
from ploutos.env.batched import BatchedVecEnv
from ploutos.env.core import MAX_REFERENCE_ROWS
from ploutos.env.trading import TradingEnv, reference_space
from ploutos.env.vec import ShmVecEnv

ARRAYS = synthetic_arrays(400, 3, 5, seed=4)
CFG = replace(EnvConfig(), lookback=7, episode_bars=50, obs_layout="reference")
ROWS = slice(30, 380)


def _env(cfg: EnvConfig = CFG, *, evaluation: bool = False) -> TradingEnv:
    return TradingEnv(ARRAYS, cfg, rows=ROWS, bars_per_year=24 * 365, evaluation=evaluation)


def assert_same_observation(reference: np.ndarray, flat: np.ndarray, lookback: int = CFG.lookback) -> None:
    """``reference`` (rows, portfolios) names exactly the windows and holds the portfolios of ``flat``."""
    reference, flat = np.atleast_2d(reference), np.atleast_2d(flat)
    rows = reference[:, 0].astype(np.int64)
    assert np.array_equal(rows, reference[:, 0])  # whole numbers
    windows = ARRAYS.values[rows[:, None] + np.arange(1 - lookback, 1)[None, :]].reshape(len(rows), -1)
    size = windows.shape[1]
    assert np.array_equal(flat[:, :size], windows)
    assert np.array_equal(flat[:, size:], reference[:, 1:])


@pytest.mark.parametrize("mode", ["continuous", "discrete"])
def test_passes_sb3_check_env(mode: str):
    env = _env(replace(CFG, action_mode=mode))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, warn=False)
    obs, _ = env.reset(seed=2)
    assert env.observation_space.contains(obs)
    assert obs.shape == (1 + 3 + 3,) and obs.dtype == np.float32
    assert obs[0] == env.decision_row


def test_the_row_names_the_flat_window_step_for_step():
    ref, flat = _env(), _env(replace(CFG, obs_layout="flat"))
    rng = np.random.default_rng(0)
    for episode in range(3):
        obs_r, _ = ref.reset(seed=episode)
        obs_f, _ = flat.reset(seed=episode)
        assert_same_observation(obs_r, obs_f)
        done = False
        while not done:
            action = rng.uniform(-1, 1, 3).astype(np.float32)
            obs_r, rew_r, term, trunc, _ = ref.step(action)
            obs_f, rew_f, *_ = flat.step(action)
            assert rew_r == rew_f
            assert_same_observation(obs_r, obs_f)
            done = term or trunc


def test_every_window_of_one_store_shares_one_space():
    """Training, validation and test envs of a fold trade other rows of the same store: one policy sees them all."""
    train = TradingEnv(ARRAYS, CFG, rows=slice(0, 200), bars_per_year=24 * 365)
    test = TradingEnv(ARRAYS, CFG, rows=slice(200, 400), bars_per_year=24 * 365, evaluation=True)
    assert train.observation_space == test.observation_space
    assert train.observation_space.high[0] == len(ARRAYS.timestamps) - 1


def test_rows_float32_cannot_name_are_refused_in_one_line():
    reference_space(MAX_REFERENCE_ROWS, 3)
    assert float(np.float32(MAX_REFERENCE_ROWS - 1)) == MAX_REFERENCE_ROWS - 1
    with pytest.raises(ValueError, match=r"16,777,217 rows; float32 .* exactly only up to 16,777,216") as caught:
        reference_space(MAX_REFERENCE_ROWS + 1, 3)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("kind", ["batched", "shm"])
def test_vec_envs_emit_the_rows_and_portfolios_of_the_flat_layout(kind: str):
    n = 5
    flat_cfg = replace(CFG, obs_layout="flat")
    make_ref = lambda: _env()  # noqa: E731
    make_flat = lambda: _env(flat_cfg)  # noqa: E731
    tested = BatchedVecEnv([make_ref] * n) if kind == "batched" else ShmVecEnv([make_ref] * n, envs_per_worker=3)
    oracle = DummyVecEnv([make_flat] * n)
    try:
        if kind == "batched":
            assert tested.core is not None and tested.core.n_envs == n  # one core, one write of the rows
        tested.seed(5)
        oracle.seed(5)
        assert_same_observation(tested.reset(), oracle.reset())
        rng = np.random.default_rng(1)
        ended = 0
        for _ in range(150):
            actions = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
            obs_t, rew_t, done_t, infos_t = tested.step(actions)
            obs_o, rew_o, done_o, infos_o = oracle.step(actions)
            np.testing.assert_array_equal(done_t, done_o)
            np.testing.assert_array_equal(rew_t, rew_o)
            assert_same_observation(obs_t, obs_o)
            for i in np.flatnonzero(done_o):
                assert_same_observation(infos_t[i]["terminal_observation"], infos_o[i]["terminal_observation"])
                ended += 1
        assert ended >= n
    finally:
        tested.close()
        oracle.close()
