"""Out-of-sample evaluation: a policy, an ensemble and two benchmarks over a fold's test window.

Everything here trades through the same :class:`~ploutos.env.trading.TradingEnv` as training,
with the same costs, over ``Fold.eval_rows(lookback)``: the first decision is taken on the last
bar before the test window and filled at the open of its first bar, so consecutive folds' curves
join. Evaluation never stops early: the bankruptcy rule is off, a policy that loses everything
shows it.

- **policy**: the member (or the ensemble) acts deterministically.
- **buy_and_hold**: ``1/A`` of equity in every asset at the first fill, then no trade.
- **equal_weight**: ``1/A`` in every asset, rebalanced at every bar.

An ensemble is a policy of its own: each member sees the same observation (the ensemble's own
portfolio), and their target weights are averaged (``combine: mean``) or, with discrete actions,
each asset takes the members' majority choice (ties hold). Averaging members' metrics is not an
ensemble and is not done here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from ploutos.analytics.evaluation import Evaluation, FoldEvaluation
from ploutos.analytics.metrics import block_bootstrap
from ploutos.config import EnvConfig
from ploutos.env.trading import TradingEnv
from ploutos.features.arrays import FeatureArrays

HOLD = 1
"""The discrete action that keeps a position."""


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
        return stacked.mean(axis=0).astype(np.float32), new_states


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
    turnover, costs = [], []
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
    )


def run_policy(actor: Actor, arrays: FeatureArrays, cfg: EnvConfig, rows: slice, bars_per_year: int) -> Evaluation:
    """The actor's deterministic path (recurrent state carried from step to step)."""
    memory: dict[str, Any] = {"state": None}

    def decide(step: int, observation: Any, env: TradingEnv) -> Any:
        action, memory["state"] = actor.predict(observation, memory["state"], np.array([step == 0]), deterministic=True)
        return action

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


def evaluate(
    actor: Actor, arrays: FeatureArrays, cfg: EnvConfig, rows: slice, bars_per_year: int, *, seed: int = 0
) -> FoldEvaluation:
    """The actor and both benchmarks over ``rows``, their metrics, and a block bootstrap of the actor."""
    policy = run_policy(actor, arrays, cfg, rows, bars_per_year)
    benchmarks = {
        "buy_and_hold": buy_and_hold(arrays, cfg, rows, bars_per_year),
        "equal_weight": equal_weight(arrays, cfg, rows, bars_per_year),
    }
    metrics = {"policy": policy.metrics(bars_per_year)}
    metrics.update({name: path.metrics(bars_per_year) for name, path in benchmarks.items()})
    returns = policy.equity[1:] / policy.equity[:-1] - 1.0
    bootstrap = block_bootstrap(returns, bars_per_year, seed=seed)
    return FoldEvaluation(policy=policy, benchmarks=benchmarks, metrics=metrics, bootstrap=bootstrap)
