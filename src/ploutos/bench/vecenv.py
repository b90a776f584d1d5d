"""``ploutos bench vecenv``: Ploutos' VecEnvs against SB3's DummyVecEnv and SubprocVecEnv, same run, same env.

Every vec env steps the same :class:`~ploutos.env.trading.TradingEnv`s (15 assets x 95 features x
lookback 32 on synthetic arrays, the full config's shape; flat observations of 45,618 floats,
which a VecEnv hands to an MLP policy) with the same random actions; throughput is env steps per
second over all envs (median repeat):

- :class:`~ploutos.env.batched.BatchedVecEnv`: the envs as one batch of the market core in this
  process, the windows filled with one gather (``copy_obs=False``, as the trainer uses it);
- :class:`~ploutos.env.vec.ShmVecEnv`: ``--workers`` processes, each stepping its envs as one batch,
  observations in shared memory;
- SB3's ``DummyVecEnv`` (in process, one env after another) and ``SubprocVecEnv`` (one process per
  env, observations pickled through pipes).

Each line is ``vecenv <n> envs x <A> assets, <vec env>: <rate> env-steps/s; DummyVecEnv <rate>
env-steps/s; ratio <r>``: DummyVecEnv, measured in the same run, is the baseline. Benchmarks report;
they never fail. The CLI calls :func:`main` with its arguments.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from ploutos.bench.env import synthetic_arrays
from ploutos.bench.timing import time_call
from ploutos.commandline import Parser, examples
from ploutos.config import EnvConfig
from ploutos.env.batched import BatchedVecEnv
from ploutos.env.trading import TradingEnv
from ploutos.env.vec import ShmVecEnv
from ploutos.node.context import worker_env


def _throughput(venv: Any, steps: int, repeats: int) -> float:
    """Env steps per second across all envs (median of ``repeats``)."""
    rng = np.random.default_rng(1)
    actions = rng.uniform(-1, 1, size=(steps, venv.num_envs, *venv.action_space.shape)).astype(np.float32)
    venv.seed(0)
    venv.reset()

    def run() -> None:
        for a in actions:
            venv.step(a)

    timing = time_call(run, repeats=repeats, warmup=1)
    return steps * venv.num_envs / (timing.median_ms / 1000.0)


def measure(n_envs: int, workers: int, steps: int, repeats: int, lookback: int = 32) -> dict[str, float]:
    """Env steps per second of every vec env over ``n_envs`` trading envs, by label (DummyVecEnv first)."""
    arrays = synthetic_arrays(4_096, 15, 95)
    make = partial(TradingEnv, arrays, replace(EnvConfig(), lookback=lookback), rows=slice(0, 4_096),
                   bars_per_year=24 * 365)  # fmt: skip
    fns = [make] * n_envs
    per_worker = -(-n_envs // workers)
    makers: dict[str, Callable[[], Any]] = {
        "DummyVecEnv": partial(DummyVecEnv, fns),
        "BatchedVecEnv (in process)": partial(BatchedVecEnv, fns, copy_obs=False),
        f"ShmVecEnv ({-(-n_envs // per_worker)} workers, no copy)": partial(
            ShmVecEnv, fns, envs_per_worker=per_worker, copy_obs=False
        ),
        f"SubprocVecEnv ({n_envs} processes)": partial(SubprocVecEnv, fns, start_method="forkserver"),
    }
    rates: dict[str, float] = {}
    for label, maker in makers.items():
        with worker_env(1):  # SubprocVecEnv's workers get the same one-thread caps as ShmVecEnv's
            venv = maker()
        try:
            rates[label] = _throughput(venv, steps, repeats)
        finally:
            venv.close()
    return rates


def format_rates(n_envs: int, rates: dict[str, float]) -> list[str]:
    dummy = rates["DummyVecEnv"]
    return [
        f"vecenv {n_envs} envs x 15 assets, {label}: {rate:,.0f} env-steps/s; DummyVecEnv {dummy:,.0f} env-steps/s; "
        f"ratio {rate / dummy:.2f}"
        for label, rate in rates.items()
        if label != "DummyVecEnv"
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv or []))
    return _run(parser, args)


def build_parser() -> Parser:
    parser = Parser(
        prog="ploutos bench vecenv",
        description="Env steps per second of Ploutos' vec envs (BatchedVecEnv, ShmVecEnv) against SB3's\n"
        "DummyVecEnv and SubprocVecEnv, the same TradingEnvs (15 assets x 95 features x lookback 32,\n"
        "synthetic) and the same random actions, in one run. Prints one line per vec env; writes nothing.",
        epilog=examples("ploutos bench vecenv --quick", "ploutos bench vecenv --envs 16 --workers 4"),
    )
    parser.add_argument("--envs", type=int, default=8, help="envs in the many-envs configuration (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="ShmVecEnv worker processes (default 2)")
    parser.add_argument("--steps", type=int, default=200, help="vec steps per timed repeat (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    return parser


def _run(parser: Parser, args: argparse.Namespace) -> int:
    steps, repeats = (50, 2) if args.quick else (args.steps, args.repeats)
    if min(args.envs, args.workers, steps, repeats) < 1:
        parser.error("--envs, --workers, --steps and --repeats must be >= 1")
    print(
        f"# vec env throughput: TradingEnv 15 assets x 95 features x lookback 32 (flat, 45,618 floats), {steps} steps "
        f"x {repeats} repeats, {os.cpu_count()} cpus (env steps/s across all envs; higher is better)"
    )
    for n_envs in sorted({args.workers, args.envs}):
        for line in format_rates(n_envs, measure(n_envs, args.workers, steps, repeats)):
            print(line)
    return 0
