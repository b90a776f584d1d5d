"""The encoder lines of ``ploutos bench train``: PPO end to end, observations by reference against flat windows.

On synthetic arrays of the full config's shape (15 assets x 95 features, lookback 32; the
quickstart's other settings: PPO n_steps 256, batch 256, 5 epochs, net_arch [64, 64]) the same
PPO trains, in one run, with repeats interleaved:

- **flat**: today's path, ``obs_layout: flat`` (the env copies each window into the observation)
  and SB3's MLP on it;
- **flat by reference**: ``obs_layout: reference`` with the ``flat`` encoder: the same network on
  the same input, the window gathered from the store inside the policy;
- **shared by reference**: ``obs_layout: reference`` with the ``shared`` encoder;
- **attention by reference**: the same with the ``attention`` encoder;
- **plain SB3**: ``DummyVecEnv`` over the flat env, SB3's ``PPO("MlpPolicy")`` with the same arguments
  (SB3's class itself, not ploutos's subclass).

Every setup has the same envs (the plan's count, stepped as one batch in the learner's process,
except plain SB3's ``DummyVecEnv``), the same torch threads (the plan's learner threads, pinned)
and the same seed. Only ``model.learn(timesteps)`` is timed, after one warm-up rollout and update
per setup. Bytes per stored env-step are every array of the rollout buffer over its steps x envs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import stable_baselines3 as sb3
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

from ploutos.bench.env import synthetic_arrays
from ploutos.bench.timing import time_learning
from ploutos.config import Config
from ploutos.env.batched import BatchedVecEnv
from ploutos.env.trading import TradingEnv
from ploutos.features.arrays import FeatureArrays
from ploutos.node.hardware import plan
from ploutos.train.model import build_model

ASSETS, FEATURES, LOOKBACK = 15, 95, 32
"""The full config's observation: 15 assets x 95 features, lookback 32 (45,618 floats when flat)."""
ROWS = 4_000
"""Synthetic rows the envs trade (about a 6-month training window of 24h bars)."""
SETUPS = ("flat", "flat by reference", "shared by reference", "attention by reference", "plain SB3")
"""Labels of the setups, in the order they are timed."""
TARGET = 8.0
"""The ratio shared by reference / flat that issue 16 asks for."""


@dataclass(frozen=True)
class EncoderBench:
    """Rates and rollout sizes of every setup at one env count."""

    n_envs: int
    learner_threads: int
    steps: dict[str, int]
    seconds: dict[str, tuple[float, ...]]
    bytes_per_step: dict[str, float]
    """Every array of the rollout buffer, per stored env-step."""
    observation_bytes: dict[str, float]
    """The observations alone, per stored env-step."""

    def rate(self, label: str) -> float:
        """Env steps per second of the best repeat."""
        return self.steps[label] / min(self.seconds[label])

    @property
    def ratio(self) -> float:
        return self.rate("shared by reference") / self.rate("flat")


def rollout_bytes(model: Any) -> tuple[float, float]:
    """Bytes per stored env-step of ``model``'s rollout buffer: every array, and the observations alone."""
    buffer = model.rollout_buffer
    steps = buffer.buffer_size * buffer.n_envs

    def nbytes(value: Any) -> int:
        if isinstance(value, np.ndarray):
            return value.nbytes
        if isinstance(value, dict):
            return sum(nbytes(v) for v in value.values())
        if isinstance(value, tuple):  # RecurrentPPO's hidden states
            return sum(nbytes(v) for v in value)
        return 0

    total = sum(nbytes(value) for value in vars(buffer).values())
    return total / steps, nbytes(buffer.observations) / steps


def bench_config(config: Config) -> Config:
    """``config`` with the benchmark's lookback (the arrays fix the assets and features)."""
    return replace(config, env=replace(config.env, lookback=LOOKBACK))


def synthetic_env(arrays: FeatureArrays, config: Config) -> TradingEnv:
    """One env over all of ``arrays``, 24h bars (the encoder lines' and the MPI line's)."""
    return TradingEnv(arrays, config.env, rows=slice(0, len(arrays.timestamps)), bars_per_year=24 * 365)


@contextmanager
def _models(config: Config, arrays: FeatureArrays, layout: Any, seed: int) -> Iterator[dict[str, Any]]:
    """Every setup's model on its own envs; the envs are closed on exit."""
    venvs: list[Any] = []
    try:
        models = {}
        for label in SETUPS:
            layout_name = "flat" if label in ("flat", "plain SB3") else "reference"
            encoder = label.split()[0] if label.endswith("by reference") else "flat"
            cfg = replace(
                config, env=replace(config.env, obs_layout=layout_name), ppo=replace(config.ppo, encoder=encoder)
            )
            make = functools.partial(synthetic_env, arrays, cfg)
            if label == "plain SB3":
                venv = VecMonitor(DummyVecEnv([make] * layout.n_envs))
            else:
                venv = VecMonitor(BatchedVecEnv([make] * layout.n_envs, copy_obs=False))
            venvs.append(venv)
            plain = None
            if label == "plain SB3":  # SB3's classes as shipped (their optimizer settings too)
                plain = sb3.PPO if cfg.ppo.algo == "ppo" else RecurrentPPO
            models[label] = build_model(cfg, venv, layout, seed, values=arrays.values, algorithm_class=plain)
            venv.seed(seed)
        yield models
    finally:
        for venv in venvs:
            venv.close()


def measure_encoders(
    config: Config, *, timesteps: int, repeats: int, threads: Any, seed: int, n_envs: int | None = None,
    rows: int = ROWS,
) -> EncoderBench:  # fmt: skip
    """Warm every setup up with one rollout and update, then time ``learn(timesteps)`` in turn.

    ``threads.use(n)`` pins the learner threads (:class:`ploutos.bench.train` passes its switch).
    """
    config = bench_config(config)
    if n_envs is not None:
        config = replace(config, hardware=replace(config.hardware, n_envs=n_envs))
    layout = plan(config)
    arrays = synthetic_arrays(rows, ASSETS, FEATURES, seed=seed)
    values = arrays.values.view()
    values.flags.writeable = False  # as the node store maps it: read-only, read in place
    arrays = replace(arrays, values=values)
    threads.use(layout.learner_threads)
    with _models(config, arrays, layout, seed) as models:
        sizes = {label: rollout_bytes(model) for label, model in models.items()}
        seconds, steps = time_learning(models, warmup_steps=layout.rollout, timesteps=timesteps, repeats=repeats)
    threads.defaults()
    return EncoderBench(
        n_envs=layout.n_envs,
        learner_threads=layout.learner_threads,
        steps=steps,
        seconds=seconds,
        bytes_per_step={label: size[0] for label, size in sizes.items()},
        observation_bytes={label: size[1] for label, size in sizes.items()},
    )


def format_encoders(r: EncoderBench) -> list[str]:
    """The encoder lines; ``encoder shared by reference / flat: R x`` is the one scripts read."""

    def runs(label: str) -> str:
        return ", ".join(f"{s:.2f} s" for s in r.seconds[label])

    lines = [
        f"encoders {ASSETS} assets x {FEATURES} features x lookback {LOOKBACK}, {r.n_envs} envs, torch threads "
        f"{r.learner_threads} (pinned), every setup:"
    ]
    for label in SETUPS:
        lines.append(
            f"  {label:<22} {r.rate(label):>9,.0f} steps/s  (best of {len(r.seconds[label])}: {runs(label)} for "
            f"{r.steps[label]:,} steps); rollout {r.bytes_per_step[label]:,.0f} bytes per stored env-step "
            f"(observations {r.observation_bytes[label]:,.0f})"
        )
    verdict = "PASS" if r.ratio >= TARGET else "MISS"
    lines.append(
        f"encoder shared by reference / flat: {r.ratio:.2f} x (same envs, threads and PPO; target >= {TARGET:g}: "
        f"{verdict}); attention by reference / flat: {r.rate('attention by reference') / r.rate('flat'):.2f} x; "
        f"flat by reference / flat: {r.rate('flat by reference') / r.rate('flat'):.2f} x; "
        f"flat / plain SB3: {r.rate('flat') / r.rate('plain SB3'):.2f} x"
    )
    lines.append(
        f"bytes per stored env-step: shared by reference {r.bytes_per_step['shared by reference']:,.0f}, flat "
        f"{r.bytes_per_step['flat']:,.0f} ({r.bytes_per_step['flat'] / r.bytes_per_step['shared by reference']:,.0f}"
        " x)"
    )
    return lines
