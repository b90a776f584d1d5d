"""Out-of-sample evaluation: a policy, an ensemble and its baselines over a fold's test window.

Everything here trades through the same env core (:class:`~ploutos.env.core.MarketCore`) as
training, with the same costs, over ``Fold.eval_rows(lookback)``: the first decision is taken on
the last bar before the test window and filled at the open of its first bar, so consecutive
folds' curves join. Evaluation never stops early: the bankruptcy rule is off, a policy that loses
everything shows it.

- **policy**: the member (or the ensemble) acts deterministically.
- **buy_and_hold**: ``1/A`` of equity in every asset at the first fill, then no trade.
- **equal_weight**: ``1/A`` in every asset, rebalanced at every bar.
- **flat**: never trades; equity stays at the initial cash. The policy beats it at level ``a``
  when ``1 - PSR(0) < a`` (the PSR of its net returns, :class:`~ploutos.analytics.metrics.Metrics`).
- **random_turnover**: ``S`` (default 200) random policies that trade as much as the policy did,
  stepped as ``S`` envs of one core. A seed starts all cash; at every bar it draws a new target
  with probability ``p`` (uniform in the action box: weights in ``[w_low, 1]``, scaled by the env
  to gross 1 like any action; with discrete actions a uniform choice per asset) and otherwise
  sends its previous target again, as a policy holding a view would. ``p`` is calibrated so that
  the seeds' median realized (annualized) turnover is the policy's: pass after pass over the same
  draws (common random numbers, so the median moves with ``p`` alone), ``p`` is scaled by
  ``target / realized`` and kept inside the bracket the passes so far have established (bisection
  when the scaled step leaves it), until the median is within :data:`TURNOVER_TOLERANCE` or after
  :data:`MAX_PASSES` passes; the closest pass is kept. A policy that trades more than a redraw at
  every bar gets ``p = 1``; one that never trades gets ``p = 0`` (the seeds are flat). The share of
  seeds whose net total return is at least the policy's is ``p_random``: a small value says the
  policy's return is not what its turnover buys by chance.

An ensemble is a policy of its own: each member sees the same observation (the ensemble's own
portfolio), and their target weights are averaged (``combine: mean``) or, with discrete actions,
each asset takes the members' majority choice (ties hold). Averaging members' metrics is not an
ensemble and is not done here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any, NamedTuple, Protocol

import numpy as np

from ploutos.analytics.evaluation import COST_COMPONENTS, RANDOM, Evaluation, FoldEvaluation, RandomBaseline
from ploutos.analytics.metrics import Metrics, block_bootstrap, compute_metrics, cost_breakdown
from ploutos.config import EnvConfig
from ploutos.env.core import MarketCore
from ploutos.env.trading import TradingEnv
from ploutos.features.arrays import FeatureArrays
from ploutos.train.encoders import reading

HOLD = 1
"""The discrete action that keeps a position."""
RANDOM_SEEDS = 200
"""Random-turnover seeds per evaluation: ``p_random`` moves in steps of ``1 / RANDOM_SEEDS``."""
MIN_RANDOM_SEEDS = 100
"""Fewer seeds than this would make ``p_random < 0.05`` rest on a handful of paths."""
TURNOVER_TOLERANCE = 0.02
"""The calibration stops once the seeds' median turnover is within this share of the policy's."""
MAX_PASSES = 16
"""Passes over the window the calibration may take (each steps every seed once over it)."""


class Actor(Protocol):
    """What SB3 models (PPO, RecurrentPPO) and :class:`Ensemble` share."""

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False
    ) -> tuple[np.ndarray, Any]: ...


class Ensemble:
    """Members acting as one policy: mean of their target weights, or per-asset majority vote."""

    def __init__(self, members: Sequence[Actor], combine: str = "mean") -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.combine = combine

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[np.ndarray, Any]:
        states = state if state is not None else [None] * len(self.members)
        actions, new_states = [], []
        for member, member_state in zip(self.members, states, strict=True):
            action, next_state = member.predict(observation, member_state, episode_start, deterministic)
            actions.append(np.asarray(action))
            new_states.append(next_state)
        stacked = np.stack(actions)
        if self.combine == "vote":
            return _majority(stacked), new_states
        # each member's target weights, as the env would hold them alone (gross scaled down to 1: no leverage)
        gross = np.abs(np.nan_to_num(stacked)).sum(axis=-1, keepdims=True)
        targets = np.nan_to_num(stacked) / np.maximum(gross, 1.0)
        return targets.mean(axis=0).astype(np.float32), new_states


def _majority(choices: np.ndarray) -> np.ndarray:
    """Per asset the most common choice of (members, assets) integer actions; a tie holds."""
    n_choices = int(choices.max()) + 1 if choices.size else 3
    counts = np.stack([(choices == c).sum(axis=0) for c in range(max(n_choices, 3))])
    best = counts.max(axis=0)
    winners = (counts == best).sum(axis=0)
    return np.where(winners == 1, counts.argmax(axis=0), HOLD).astype(np.int64)


def run_episode(decide: Any, arrays: FeatureArrays, cfg: EnvConfig, rows: slice, bars_per_year: int) -> Evaluation:
    """Step an evaluation env over ``rows``; ``decide(step, observation, env)`` returns the action."""
    env = TradingEnv(
        arrays, replace(cfg, bankruptcy_equity=0.0), rows=rows, bars_per_year=bars_per_year, evaluation=True
    )
    observation, info = env.reset(seed=0)
    first_fill_row = env.row_start + cfg.lookback  # rows.start may be None or negative
    timestamps, equity, weights, units = [info["timestamp"]], [info["equity"]], [info["weights"]], [env.units]
    turnover, costs, parts = [], [], []
    done, step = False, 0
    while not done:
        observation, _, terminated, truncated, info = env.step(decide(step, observation, env))
        done = terminated or truncated
        timestamps.append(info["timestamp"])
        equity.append(info["equity"])
        weights.append(info["weights"])
        units.append(env.units)
        turnover.append(info["turnover"])
        costs.append(info["costs"])
        parts.append(info["cost_parts"])
        step += 1
    fill_rows = np.arange(first_fill_row, first_fill_row + step)
    return Evaluation(
        timestamps=np.array(timestamps, dtype="datetime64[us]"),
        equity=np.array(equity, dtype=np.float64),
        weights=np.array(weights, dtype=np.float64),
        units=np.array(units, dtype=np.float64),
        fill_prices=np.asarray(arrays.prices[fill_rows, :, 0], dtype=np.float64),
        turnover=np.array(turnover, dtype=np.float64),
        costs=np.array(costs, dtype=np.float64),
        cost_parts=np.array(parts, dtype=np.float64).reshape(step, len(COST_COMPONENTS)),
    )


def run_policy(actor: Actor, arrays: FeatureArrays, cfg: EnvConfig, rows: slice, bars_per_year: int) -> Evaluation:
    """The actor's deterministic path (recurrent state carried from step to step); an actor that reads
    windows from the store (observations by reference) reads them from ``arrays`` meanwhile."""
    memory: dict[str, Any] = {"state": None}

    def decide(step: int, observation: Any, env: TradingEnv) -> Any:
        action, memory["state"] = actor.predict(observation, memory["state"], np.array([step == 0]), deterministic=True)
        return action

    with reading(actor, arrays.values):
        return run_episode(decide, arrays, cfg, rows, bars_per_year)


def buy_and_hold(arrays: FeatureArrays, cfg: EnvConfig, rows: slice, bars_per_year: int) -> Evaluation:
    """Buy ``1/A`` of equity of every asset at the first fill, then hold (discrete buy, then hold)."""
    n_assets = arrays.values.shape[1]
    discrete = replace(cfg, action_mode="discrete", long_only=True)
    buy, hold = np.full(n_assets, 2, dtype=np.int64), np.full(n_assets, HOLD, dtype=np.int64)
    return run_episode(lambda step, *_: buy if step == 0 else hold, arrays, discrete, rows, bars_per_year)


def equal_weight(arrays: FeatureArrays, cfg: EnvConfig, rows: slice, bars_per_year: int) -> Evaluation:
    """``1/A`` of equity in every asset, rebalanced at every bar."""
    n_assets = arrays.values.shape[1]
    target = np.full(n_assets, 1.0 / n_assets, dtype=np.float32)
    continuous = replace(cfg, action_mode="continuous")
    return run_episode(lambda *_: target, arrays, continuous, rows, bars_per_year)


def flat(arrays: FeatureArrays, cfg: EnvConfig, rows: slice, bars_per_year: int) -> Evaluation:
    """All cash throughout: no trade, no cost, equity constant at the initial cash."""
    target = np.zeros(arrays.values.shape[1], dtype=np.float32)
    continuous = replace(cfg, action_mode="continuous")
    return run_episode(lambda *_: target, arrays, continuous, rows, bars_per_year)


class _Paths(NamedTuple):
    """The seeds' paths of one pass: ``equity`` (N+1, S), ``turnover`` and ``costs`` (N, S)."""

    equity: np.ndarray
    turnover: np.ndarray
    costs: np.ndarray


def _random_paths(core: MarketCore, probability: float, seed: int) -> _Paths:
    """One pass of every seed of ``core`` over its window, redrawing targets with ``probability``."""
    rng = np.random.default_rng(seed)
    n_envs, n_assets = core.n_envs, core.n_assets
    t0, end = core.draw_start(rng)
    core.reset(np.arange(n_envs), t0, end)
    n = end - t0
    equity = np.empty((n + 1, n_envs))
    equity[0] = core.initial
    turnover, costs = np.zeros((n, n_envs)), np.zeros((n, n_envs))
    target = np.full((n_envs, n_assets), float(HOLD) if core.discrete else 0.0)  # all cash: p = 0 is flat
    for k in range(n):
        # Drawn for every seed at every bar whatever p: each pass sees the same stream.
        redraw = rng.random(n_envs) < probability
        fresh = rng.integers(0, 3, (n_envs, n_assets)) if core.discrete else rng.uniform(core.w_low, 1.0, target.shape)
        target[redraw] = fresh[redraw]
        live = np.flatnonzero(core.active)  # a seed that went bankrupt keeps its last equity
        equity[k + 1] = equity[k]
        if live.size:
            step = core.step(target[live], live)
            equity[k + 1, live], turnover[k, live], costs[k, live] = step.equity, step.turnover, step.costs
    return _Paths(equity, turnover, costs)


def random_turnover(
    arrays: FeatureArrays, cfg: EnvConfig, rows: slice, bars_per_year: int, target: float, *,
    seeds: int = RANDOM_SEEDS, seed: int = 0,
) -> RandomBaseline:  # fmt: skip
    """``seeds`` random policies whose median annualized turnover is ``target`` (see the module doc)."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    core = MarketCore(
        arrays, replace(cfg, bankruptcy_equity=0.0), rows=rows, n_envs=seeds, evaluation=True,
        bars_per_year=bars_per_year,
    )  # fmt: skip

    def realized(paths: _Paths) -> float:
        return float(np.median(paths.turnover.sum(axis=0))) / len(paths.turnover) * bars_per_year

    target = max(float(target), 0.0) if math.isfinite(target) else 0.0
    # first guess: a redraw moves each weight by E|U - U'| = (1 - w_low) / 3; drift is ignored
    per_redraw = core.n_assets * (1.0 - core.w_low) / 3.0
    p = min(1.0, target / bars_per_year / per_redraw) if target > 0 else 0.0
    lo, hi = 0.0, 1.0
    best: tuple[float, float, _Paths] | None = None
    passes = 0
    while True:
        paths = _random_paths(core, p, seed)
        passes += 1
        got = realized(paths)
        if best is None or abs(got - target) < abs(best[1] - target):
            best = (p, got, paths)
        if target == 0 or abs(got - target) <= TURNOVER_TOLERANCE * target or passes >= MAX_PASSES:
            break
        if got < target:
            if p >= 1.0:  # a redraw at every bar trades less than the policy: as close as it gets
                break
            lo = p
        else:
            hi = p
        step = p * target / got if got > 0 else 4.0 * max(p, 1e-6)
        p = step if lo < step < hi else (lo + hi) / 2.0
    p, _, paths = best
    per_seed = [
        compute_metrics(paths.equity[:, s], bars_per_year, turnover=paths.turnover[:, s], costs=paths.costs[:, s])
        for s in range(seeds)
    ]
    table = {f.name: np.array([getattr(m, f.name) for m in per_seed], dtype=np.float64) for f in fields(Metrics)}
    medians = {name: float(np.median(v[np.isfinite(v)])) if np.isfinite(v).any() else math.nan
               for name, v in table.items()}  # fmt: skip
    medians["n_bars"] = per_seed[0].n_bars
    return RandomBaseline(
        probability=p,
        target_turnover=target,
        passes=passes,
        seed=seed,
        turnover=table["turnover"],
        total_return=table["total_return"],
        gross_return=table["gross_return"],
        metrics=Metrics(**medians),
    )


def evaluate(
    actor: Actor, arrays: FeatureArrays, cfg: EnvConfig, rows: slice, bars_per_year: int, *, seed: int = 0,
    random_seeds: int = RANDOM_SEEDS,
) -> FoldEvaluation:  # fmt: skip
    """The actor and its baselines over ``rows``, their metrics, and a block bootstrap of the actor.

    ``seed`` seeds the bootstrap and the random-turnover baseline (the task's seed: a rerun gives
    the same file).
    """
    if random_seeds < MIN_RANDOM_SEEDS:
        raise ValueError(f"random_seeds must be at least {MIN_RANDOM_SEEDS}, got {random_seeds}")
    policy = run_policy(actor, arrays, cfg, rows, bars_per_year)
    benchmarks = {
        "buy_and_hold": buy_and_hold(arrays, cfg, rows, bars_per_year),
        "equal_weight": equal_weight(arrays, cfg, rows, bars_per_year),
        "flat": flat(arrays, cfg, rows, bars_per_year),
    }
    metrics = {"policy": policy.metrics(bars_per_year)}
    metrics.update({name: path.metrics(bars_per_year) for name, path in benchmarks.items()})
    random = random_turnover(
        arrays, cfg, rows, bars_per_year, metrics["policy"].turnover, seeds=random_seeds, seed=seed
    )
    metrics[RANDOM] = random.metrics
    returns = policy.equity[1:] / policy.equity[:-1] - 1.0
    bootstrap = block_bootstrap(returns, bars_per_year, seed=seed)
    breakdown = cost_breakdown(policy.equity, policy.cost_parts, bars_per_year)
    return FoldEvaluation(
        policy=policy,
        benchmarks=benchmarks,
        metrics=metrics,
        bootstrap=bootstrap,
        random=random,
        cost_breakdown={name: float(value) for name, value in zip(COST_COMPONENTS, breakdown, strict=True)},
    )
