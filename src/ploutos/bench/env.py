"""``ploutos bench env``: env steps per second of the market simulator, one env and a batch.

The envs trade 15 assets with 95 features and a lookback of 32 (the full config's shape) on
synthetic arrays, with random actions drawn beforehand (so that sampling is not timed); episodes
are reset when they end, and resets are timed too. In one run:

- ``batched 64 envs x 15 assets: N env-steps/s``: the :class:`~ploutos.env.core.MarketCore` of 64
  envs stepping with row-index observations (each env's decision row and portfolio state: what a
  policy that reads the window from the store needs), beside the single env's rate and the target
  of 300,000;
- the same core filling flat observation windows for the batch (what today's MLP policies take);
- a single :class:`~ploutos.env.trading.TradingEnv` (gymnasium ``step``) in each layout, beside
  gym-anytrading's ``StocksEnv`` on its shipped GOOGL data (one asset, two features, window 32).

Every line is ``<subject>: <rate> <unit>[; <baseline> <rate> <unit>; ratio <r>][; target >= <t>
<unit>: PASS|MISS]``: scripts read it. Benchmarks report; they never fail. The CLI calls
:func:`main` with its arguments (``[--steps N] [--repeats N] [--quick]``).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ploutos.bench.timing import Timing, time_call
from ploutos.commandline import Parser, examples
from ploutos.config import EnvConfig
from ploutos.env.core import MarketCore
from ploutos.env.trading import TradingEnv
from ploutos.features.arrays import FeatureArrays

TARGET_BATCHED = 300_000.0
"""Env steps per second the batched core of 64 envs should reach with row-index observations."""
BATCH = 64
"""Envs of the batched lines."""


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
    unit: str = "steps/s"

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


def _batched_loop(core: MarketCore, actions: np.ndarray, *, windows: bool, seed: int = 0):
    """The simulator stepping every env of ``core`` per action row; ended episodes restart at once.

    Observations: each env's decision row and its portfolio state, plus, with ``windows``, the
    flat ``(lookback, asset, feature)`` windows filled for the batch."""
    n, layout = core.n_envs, core.lookback * core.n_assets * core.n_features
    portfolio = np.empty((n, core.n_assets + 3), dtype=np.float32)
    window = np.empty((n, layout), dtype=np.float32)
    rngs = [np.random.default_rng(seed + i) for i in range(n)]

    def restart(envs: np.ndarray) -> None:
        starts = [core.draw_start(rngs[i]) for i in envs.tolist()]
        core.reset(envs, np.array([t for t, _ in starts]), np.array([end for _, end in starts]))

    def run() -> int:
        restart(np.arange(n))
        for action in actions:
            step = core.step(action)
            ended = np.flatnonzero(step.terminated | step.truncated)
            if len(ended):
                restart(ended)
            core.portfolio_into(portfolio)
            rows = core.rows  # the row-index observation: a policy gathers the windows itself
            if windows:
                core.window_into(window, asset_first=False)
            del rows
        return len(actions) * n

    return run


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
    """The batched core (row indices, then flat windows), then one TradingEnv in each layout."""
    rng = np.random.default_rng(1)
    arrays = synthetic_arrays(n_time, n_asset, n_feat)
    cfg = replace(EnvConfig(), lookback=lookback)
    single = ploutos_env("flat", "continuous", n_time=n_time, n_asset=n_asset, n_feat=n_feat, lookback=lookback)
    single_actions = list(rng.uniform(-1.0, 1.0, (steps, n_asset)).astype(np.float32))
    single_timing = time_call(_loop(single, single_actions), repeats=repeats, warmup=warmup)
    batch_steps = max(steps // BATCH, 1)
    batch_actions = rng.uniform(-1.0, 1.0, (batch_steps, BATCH, n_asset))
    results = []
    for windows in (False, True):
        core = MarketCore(arrays, cfg, rows=slice(0, n_time), n_envs=BATCH, bars_per_year=24 * 365)
        timing = time_call(_batched_loop(core, batch_actions, windows=windows), repeats=repeats, warmup=warmup)
        what = "flat windows" if windows else "row indices + portfolio"
        results.append(
            EnvBench(
                label=f"batched {BATCH} envs x {n_asset} assets ({what})",
                steps=batch_steps * BATCH,
                timing=timing,
                baseline="single TradingEnv",
                baseline_steps=steps,
                baseline_timing=single_timing,
                target=None if windows else TARGET_BATCHED,
                unit="env-steps/s",
            )
        )
    baseline = anytrading_env(lookback)
    base_timing = None
    if baseline is not None:
        base_actions = rng.integers(0, 2, steps).tolist()
        base_timing = time_call(_loop(baseline, base_actions), repeats=repeats, warmup=warmup)
    cases = (("flat", "continuous"), ("asset_lookback_feature", "continuous"), ("flat", "discrete"))
    for layout, mode in cases:
        env = ploutos_env(layout, mode, n_time=n_time, n_asset=n_asset, n_feat=n_feat, lookback=lookback)
        if mode == "continuous":
            actions = list(rng.uniform(-1.0, 1.0, (steps, n_asset)).astype(np.float32))
        else:
            actions = list(rng.integers(0, 3, (steps, n_asset)))
        timing = single_timing if (layout, mode) == ("flat", "continuous") else time_call(
            _loop(env, actions), repeats=repeats, warmup=warmup
        )  # fmt: skip
        results.append(
            EnvBench(
                label=f"single TradingEnv {n_asset} assets x {n_feat} features x lookback {lookback}, {layout}, {mode}",
                steps=steps,
                timing=timing,
                baseline="gym-anytrading StocksEnv" if baseline is not None else None,
                baseline_steps=steps,
                baseline_timing=base_timing,
            )
        )
    return results


def format_results(results: Sequence[EnvBench]) -> list[str]:
    lines = []
    for r in results:
        line = f"{r.label}: {r.rate:,.0f} {r.unit}"
        if r.baseline_rate is not None:
            line += f"; {r.baseline} {r.baseline_rate:,.0f} steps/s; ratio {r.rate / r.baseline_rate:.2f}"
        if r.target is not None:
            line += f"; target >= {r.target:,.0f} {r.unit}: {'PASS' if r.passed else 'MISS'}"
        lines.append(line)
    return lines


def build_parser() -> Parser:
    parser = Parser(
        prog="ploutos bench env",
        description="Env steps per second of the market simulator on synthetic arrays of the full config's\n"
        "shape (15 assets x 95 features, lookback 32): a batch of 64 envs and a single env, in both\n"
        "observation layouts, beside gym-anytrading's StocksEnv. Prints one line per setup; writes nothing.",
        epilog=examples("ploutos bench env --quick", "ploutos bench env --steps 200000 --repeats 5"),
    )
    parser.add_argument("--steps", type=int, default=100_000, help="steps per timed repeat (default 100000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    parser.add_argument("--quick", action="store_true", help="20000 steps, 1 repeat")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    steps, repeats = (20_000, 1) if args.quick else (args.steps, args.repeats)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}")
    for line in format_results(run(steps=steps, repeats=repeats)):
        print(line)
    return 0
