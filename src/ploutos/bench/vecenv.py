"""``ploutos bench vecenv``: ShmVecEnv against SB3's SubprocVecEnv and DummyVecEnv, same run, same env.

The env is a stand-in with the TradingEnv's observation size (15 assets x 95 features x lookback
32 = 45,600 floats, plus 5 for the portfolio state) that returns a preallocated observation, so
the numbers measure the vectorization overhead (moving observations between processes), which is
what ShmVecEnv exists to remove. Throughput is total env steps per second across all envs.

Configurations: 2 envs (one per worker for both multiprocess vec envs: the same number of
processes) and ``--envs`` envs (default 8) in ``--workers`` (default 2) ShmVecEnv workers, against
SubprocVecEnv, which needs one process per env. Target: ShmVecEnv >= 5x SubprocVecEnv.
Benchmarks report; they never fail: a missed target prints ``MISS`` and the exit code stays 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from ploutos.bench.timing import format_ms, time_call
from ploutos.commandline import Parser
from ploutos.env.vec import ShmVecEnv
from ploutos.node.context import worker_env

OBS_SIZE = 15 * 95 * 32 + 5
"""A TradingEnv observation: 15 assets x 95 features x lookback 32, plus the portfolio state."""
TARGET_RATIO = 5.0
"""ShmVecEnv steps/s over SubprocVecEnv steps/s must be at or above this."""


class StandInEnv(gym.Env):
    """Returns a preallocated observation of ``size`` floats; episodes of ``length`` steps."""

    metadata = {"render_modes": []}

    def __init__(self, size: int = OBS_SIZE, n_assets: int = 15, length: int = 1000) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(n_assets,), dtype=np.float32)
        self._obs = np.random.default_rng(0).normal(size=size).astype(np.float32)
        self.length, self.t = length, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs, {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        self._obs[0] = self.t
        return self._obs, float(action[0]) * 1e-3, False, self.t >= self.length, {}


def _make(size: int) -> Callable[[], gym.Env]:
    def make() -> gym.Env:
        return StandInEnv(size)

    return make


def _throughput(venv: Any, steps: int, repeats: int) -> float:
    """Env steps per second across all envs (median of ``repeats``)."""
    actions = np.random.default_rng(1).uniform(-1, 1, size=(steps, venv.num_envs, *venv.action_space.shape))
    actions = actions.astype(np.float32)
    venv.reset()

    def run() -> None:
        for a in actions:
            venv.step(a)

    timing = time_call(run, repeats=repeats, warmup=1)
    return steps * venv.num_envs / (timing.median_ms / 1000.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="ploutos bench vecenv", description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=8, help="envs in the many-envs configuration (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="ShmVecEnv worker processes (default 2)")
    parser.add_argument("--steps", type=int, default=200, help="vec steps per timed repeat (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    parser.add_argument("--obs-size", type=int, default=OBS_SIZE, help=f"floats per observation (default {OBS_SIZE})")
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    args = parser.parse_args(list(argv or []))
    steps, repeats = (50, 2) if args.quick else (args.steps, args.repeats)

    print(
        f"vec env throughput: observation {args.obs_size:,} float32, {steps} steps x {repeats} repeats, "
        f"{os.cpu_count()} cpus (env steps/s across all envs; higher is better)"
    )
    for n_envs in sorted({args.workers, args.envs}):
        fns = [_make(args.obs_size) for _ in range(n_envs)]
        per_worker = -(-n_envs // args.workers)
        rates: dict[str, float] = {}
        workers = -(-n_envs // per_worker)
        makers: dict[str, Callable[[], Any]] = {
            f"ShmVecEnv ({workers} workers)": partial(ShmVecEnv, fns, envs_per_worker=per_worker),
            f"ShmVecEnv ({workers} w, no copy)": partial(ShmVecEnv, fns, envs_per_worker=per_worker, copy_obs=False),
            f"SubprocVecEnv ({n_envs} processes)": partial(SubprocVecEnv, fns, start_method="forkserver"),
            "DummyVecEnv (in process)": partial(DummyVecEnv, fns),
        }
        for label, maker in makers.items():
            with worker_env(1):  # SubprocVecEnv's workers get the same one-thread caps as ShmVecEnv's
                venv = maker()
            try:
                rates[label] = _throughput(venv, steps, repeats)
            finally:
                venv.close()
        print(f"\n{n_envs} envs:")
        shm_rate = next(iter(rates.values()))
        for label, rate in rates.items():
            per_step = format_ms(1000.0 * n_envs / rate)
            ratio = shm_rate / rate
            print(f"  {label:<30} {rate:>10,.0f} steps/s  {per_step:>9} per vec step  shm/this {ratio:5.2f}x")
        subproc = next(rate for label, rate in rates.items() if label.startswith("SubprocVecEnv"))
        for label, rate in rates.items():
            if label.startswith("ShmVecEnv"):
                ratio = rate / subproc
                verdict = "ok" if ratio >= TARGET_RATIO else "MISS"
                print(f"  {label} / SubprocVecEnv = {ratio:.2f}x (target >= {TARGET_RATIO:.0f}x) {verdict}")
    return 0
