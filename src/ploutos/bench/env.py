"""``ploutos bench env``: single-env steps per second of :class:`ploutos.env.TradingEnv`.

The env trades 15 assets with 95 features and a lookback of 32 (the full config's shape) on
synthetic arrays, with random actions drawn beforehand (so that sampling is not timed); episodes
are reset when they end, and resets are timed too. In the same run the same loop drives
gym-anytrading's ``StocksEnv`` on its shipped GOOGL data (one asset, two features, window 32),
and the ratio of the two rates is printed. The target is >= 100,000 steps/s for the flat
observation (FinRL's stock env manages about 1,400 and the original project about 4,000).

Benchmarks report; they never fail: a missed target prints ``MISS`` and the exit code stays 0.
The CLI calls :func:`main` with its arguments (``[--steps N] [--repeats N] [--quick]``).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ploutos.bench.timing import Timing, time_call
from ploutos.commandline import Parser
from ploutos.config import EnvConfig
from ploutos.env import TradingEnv
from ploutos.features.arrays import FeatureArrays

TARGET_STEPS_PER_S = 100_000.0
"""Single-env steps per second the flat layout should reach."""


def synthetic_arrays(n_time: int, n_asset: int, n_feat: int, *, seed: int = 0) -> FeatureArrays:
    """Random normal features and geometric random-walk hourly bars, every bar present and valid."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((n_time, n_asset, n_feat), dtype=np.float32)
    log_close = np.cumsum(rng.normal(0.0, 0.005, (n_time, n_asset)), axis=0) + np.log(100.0)
    close = np.exp(log_close)
    open_ = close * np.exp(rng.normal(0.0, 0.002, (n_time, n_asset)))
    high = np.maximum(open_, close) * (1.0 + np.abs(rng.normal(0.0, 0.002, (n_time, n_asset))))
    low = np.minimum(open_, close) * (1.0 - np.abs(rng.normal(0.0, 0.002, (n_time, n_asset))))
    volume = rng.uniform(1e4, 1e6, (n_time, n_asset))
    start = np.datetime64("2020-01-01T00:00", "us")
    return FeatureArrays(
        timestamps=start + np.arange(n_time) * np.timedelta64(1, "h"),
        tickers=tuple(f"T{i:02d}" for i in range(n_asset)),
        names=tuple(f"f{i}" for i in range(n_feat)),
        values=values,
        valid=np.ones((n_time, n_asset), dtype=bool),
        present=np.ones((n_time, n_asset), dtype=bool),
        prices=np.stack([open_, high, low, close, volume], axis=-1),
    )


@dataclass(frozen=True)
class EnvBench:
    """One line of the report."""

    label: str
    steps: int
    timing: Timing
    baseline: str | None = None
    baseline_steps: int = 0
    baseline_timing: Timing | None = None
    target: float | None = None

    @property
    def rate(self) -> float:
        """Steps per second (median repeat)."""
        return self.steps / (self.timing.median_ms / 1000.0)

    @property
    def baseline_rate(self) -> float | None:
        if self.baseline_timing is None:
            return None
        return self.baseline_steps / (self.baseline_timing.median_ms / 1000.0)

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.rate >= self.target


def _loop(env, actions: Sequence, *, seed: int = 0):
    """A closure stepping ``env`` once per action, resetting when an episode ends."""

    def run() -> int:
        env.reset(seed=seed)
        step = env.step
        reset = env.reset
        for action in actions:
            _, _, terminated, truncated, _ = step(action)
            if terminated or truncated:
                reset()
        return len(actions)

    return run


def _loop_into(env, actions: Sequence, *, seed: int = 0):
    """Like :func:`_loop` through :meth:`TradingEnv.advance` and :meth:`TradingEnv.observe_into` (the VecEnv path)."""
    space = env.observation_space
    if env.flat:
        out = np.empty(space.shape, dtype=np.float32)
    else:
        out = {key: np.empty(sub.shape, dtype=np.float32) for key, sub in space.spaces.items()}

    def run() -> int:
        env.reset(seed=seed)
        advance, observe, reset = env.advance, env.observe_into, env.reset
        for action in actions:
            _, terminated, truncated, _ = advance(action)
            if terminated or truncated:
                reset()
            observe(out)
        return len(actions)

    return run


def ploutos_env(layout: str, mode: str, *, n_time: int, n_asset: int, n_feat: int, lookback: int):

    cfg = replace(EnvConfig(), obs_layout=layout, action_mode=mode, lookback=lookback)
    arrays = synthetic_arrays(n_time, n_asset, n_feat)
    return TradingEnv(arrays, cfg, rows=slice(0, n_time), bars_per_year=24 * 365)


def anytrading_env(window: int = 32):
    """gym-anytrading's StocksEnv over its shipped GOOGL daily bars, or None if it is not installed."""
    try:
        from gym_anytrading.datasets import STOCKS_GOOGL  # a baseline: the benchmark runs without it
        from gym_anytrading.envs import StocksEnv  # a baseline: the benchmark runs without it
    except ImportError:
        return None
    return StocksEnv(df=STOCKS_GOOGL.copy(), window_size=window, frame_bound=(window, len(STOCKS_GOOGL)))


def run(
    *,
    steps: int = 100_000,
    repeats: int = 3,
    warmup: int = 1,
    n_asset: int = 15,
    n_feat: int = 95,
    lookback: int = 32,
    n_time: int = 4_096,
) -> list[EnvBench]:
    """Time the flat and the (asset, lookback, feature) layouts (continuous actions), then discrete flat."""
    rng = np.random.default_rng(1)
    baseline = anytrading_env(lookback)
    base_timing = None
    if baseline is not None:
        base_actions = rng.integers(0, 2, steps).tolist()
        base_timing = time_call(_loop(baseline, base_actions), repeats=repeats, warmup=warmup)
    results = []
    cases = (
        ("flat", "continuous", "step"),
        ("flat", "continuous", "advance+observe_into"),
        ("asset_lookback_feature", "continuous", "step"),
        ("flat", "discrete", "step"),
    )
    for layout, mode, path in cases:
        env = ploutos_env(layout, mode, n_time=n_time, n_asset=n_asset, n_feat=n_feat, lookback=lookback)
        if mode == "continuous":
            actions = list(rng.uniform(-1.0, 1.0, (steps, n_asset)).astype(np.float32))
        else:
            actions = list(rng.integers(0, 3, (steps, n_asset)))
        loop = _loop(env, actions) if path == "step" else _loop_into(env, actions)
        timing = time_call(loop, repeats=repeats, warmup=warmup)
        results.append(
            EnvBench(
                label=f"env {n_asset} assets x {n_feat} features x lookback {lookback}, {layout}, {mode}, {path}",
                steps=steps,
                timing=timing,
                baseline="gym-anytrading StocksEnv" if baseline is not None else None,
                baseline_steps=steps,
                baseline_timing=base_timing,
                target=TARGET_STEPS_PER_S if (layout, mode, path) == cases[0] else None,
            )
        )
    return results


def format_results(results: Sequence[EnvBench]) -> list[str]:
    lines = []
    for r in results:
        line = f"{r.label}: {r.rate:,.0f} steps/s"
        if r.baseline_rate is not None:
            line += f"; {r.baseline} {r.baseline_rate:,.0f} steps/s; ratio {r.rate / r.baseline_rate:.2f}"
        if r.target is not None:
            line += f"; target >= {r.target:,.0f} steps/s: {'PASS' if r.passed else 'MISS'}"
        lines.append(line)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="ploutos bench env", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100_000, help="steps per timed repeat (default 100000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    parser.add_argument("--quick", action="store_true", help="20000 steps, 1 repeat")
    args = parser.parse_args(list(argv) if argv is not None else None)
    steps, repeats = (20_000, 1) if args.quick else (args.steps, args.repeats)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}")
    for line in format_results(run(steps=steps, repeats=repeats)):
        print(line)
    return 0
