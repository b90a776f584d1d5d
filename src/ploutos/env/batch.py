"""EnvBatch: ``N`` envs stepped together, with stable-baselines3's auto-reset semantics, without SB3.

When every env is a bare :class:`~ploutos.env.trading.TradingEnv` over the same arrays, config,
rows and mode (what the trainer builds), they join one :class:`~ploutos.env.core.MarketCore` of
``N`` envs and a step is one core step plus one gather of the observation windows for the whole
batch: no Python loop over envs, no pipe, no pickling. Any other envs (wrapped ones, other env
classes) step one after another. Observations are written into arrays the caller owns: the
buffers of :class:`~ploutos.env.batched.BatchedVecEnv`, or a worker's slice of the shared
buffer of :class:`~ploutos.env.vec.ShmVecEnv`. This module imports neither torch nor SB3, so env
workers stay light.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ploutos.env.core import MarketCore
from ploutos.env.trading import TradingEnv

_NO_ENVS = np.empty(0, dtype=np.int64)

Buffers = dict[Any, np.ndarray]
"""Observation arrays by key (``None`` for an unstructured space), leading axis the env."""


def _subspaces(space: spaces.Space) -> dict[Any, spaces.Space]:
    if isinstance(space, spaces.Dict):
        return dict(space.spaces)
    if isinstance(space, spaces.Tuple):
        return dict(enumerate(space.spaces))
    return {None: space}


def obs_keys(space: spaces.Space) -> list[Any]:
    """The keys of a Dict observation space, the positions of a Tuple's, or ``[None]``."""
    return list(_subspaces(space))


def obs_shapes(space: spaces.Space) -> dict[Any, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each key's observation (one env)."""
    subs = _subspaces(space)
    found = {}
    for key, sub in subs.items():
        if sub.shape is None or sub.dtype is None:
            raise TypeError(f"observation spaces need a shape and a dtype, got {sub}")
        found[key] = (tuple(sub.shape), np.dtype(sub.dtype))
    return found


def new_buffers(space: spaces.Space, n: int) -> Buffers:
    return {key: np.zeros((n, *shape), dtype=dtype) for key, (shape, dtype) in obs_shapes(space).items()}


def structured(space: spaces.Space, by_key: dict[Any, Any]) -> Any:
    """Per-key arrays in the structure of ``space``: the array, a dict, or a tuple."""
    if isinstance(space, spaces.Dict):
        return by_key
    if isinstance(space, spaces.Tuple):
        return tuple(by_key[i] for i in range(len(space.spaces)))
    return by_key[None]


def is_wrapped(env: gym.Env, wrapper: tuple[str, str]) -> bool:
    """Whether a wrapper of class ``(module, qualname)`` or a subclass of it is among ``env``'s wrappers.

    The class travels by name, so that asking from another process never imports its module there.
    """
    current: Any = env
    while current is not None:
        if any((cls.__module__, cls.__qualname__) == wrapper for cls in type(current).__mro__):
            return True
        current = getattr(current, "env", None)
    return False


def shared_core(envs: Sequence[gym.Env]) -> MarketCore | None:
    """One core for ``envs`` when they are all bare TradingEnvs of one window (they join it), else None."""
    first = envs[0]
    if not all(type(env) is TradingEnv for env in envs) or not all(first.same_window(env) for env in envs):
        return None
    core = MarketCore(first.arrays, first.cfg, rows=slice(first.row_start, first.row_stop), n_envs=len(envs),
                      evaluation=first.evaluation, bars_per_year=first.bars_per_year)  # fmt: skip
    for index, env in enumerate(envs):
        env.join(core, index)
    return core


class EnvBatch:
    """The envs of ``env_fns``; trading envs of one window step together (see the module doc)."""

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]]) -> None:
        if not env_fns:
            raise ValueError("at least one env factory is needed")
        self.envs: list[gym.Env] = []
        for index, fn in enumerate(env_fns):
            self.envs.append(_tagged(index, fn))
        if len({id(env) for env in self.envs}) != len(self.envs):
            raise ValueError("the env factories returned the same env object twice; each must build its own env")
        first = self.envs[0]
        for index, env in enumerate(self.envs[1:], 1):
            if env.observation_space != first.observation_space or env.action_space != first.action_space:
                raise ValueError(f"env {index} has other spaces than env 0")
        self.observation_space, self.action_space = first.observation_space, first.action_space
        self.keys = obs_keys(first.observation_space)
        self.core = shared_core(self.envs)

    @property
    def num_envs(self) -> int:
        return len(self.envs)

    def reset_into(self, out: Buffers, seeds: Sequence[int | None], options: Sequence[dict | None]) -> list[dict]:
        """Reset every env (with its seed and options), observations into ``out``; the reset infos."""
        infos = []
        for index, (env, seed, option) in enumerate(zip(self.envs, seeds, options, strict=True)):
            if self.core is None:
                extra = {"options": option} if option else {}
                obs, info = _tagged(index, lambda env=env, seed=seed, extra=extra: env.reset(seed=seed, **extra))
                self._write(out, index, obs)
            else:
                gym.Env.reset(env, seed=seed)  # (re)seeds the env's np_random, as its own reset would
                env.start_episode()
                info = env.reset_info()
            infos.append(info)
        if self.core is not None:
            self._observe(out)
        return infos

    def step_into(
        self, actions: np.ndarray, out: Buffers, terminal: Buffers | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict], dict[int, dict]]:
        """Step every env; observations (after auto-resets) into ``out``, the observations that ended
        episodes into ``terminal`` (else into the infos). Returns rewards, terminated, truncated,
        infos and the reset infos of the envs that were reset."""
        if self.core is None:
            return self._step_each(actions, out, terminal)
        step = self.core.step(actions)
        timestamps = self.core.arrays.timestamps
        # lists first: one conversion per array, not one numpy scalar per env and field
        equity, cash, turnover = step.equity.tolist(), step.cash.tolist(), step.turnover.tolist()
        costs, drawdown, truncated = step.costs.tolist(), step.drawdown.tolist(), step.truncated.tolist()
        infos = [
            {
                "equity": equity[i],
                "cash": cash[i],
                "weights": step.weights[i].copy(),
                "turnover": turnover[i],
                "costs": costs[i],
                "drawdown": drawdown[i],
                "timestamp": timestamps[step.fill_rows[i]],
                "TimeLimit.truncated": truncated[i],
            }
            for i in range(self.num_envs)
        ]
        resets: dict[int, dict] = {}
        finished = step.terminated | step.truncated
        done = np.flatnonzero(finished) if finished.any() else _NO_ENVS
        if len(done):
            ended = new_buffers(self.observation_space, len(done))
            self._observe(ended, done)
            for row, i in enumerate(done.tolist()):
                if terminal is None:
                    infos[i]["terminal_observation"] = self._read(ended, row)
                else:
                    self._write(terminal, i, self._read(ended, row))
                self.envs[i].start_episode()
                resets[i] = self.envs[i].reset_info()
        self._observe(out)
        return step.rewards, step.terminated, step.truncated, infos, resets

    def _step_each(
        self, actions: np.ndarray, out: Buffers, terminal: Buffers | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict], dict[int, dict]]:
        n = self.num_envs
        rewards, terminated, truncated = np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        infos, resets = [], {}
        for i, env in enumerate(self.envs):
            obs, rewards[i], terminated[i], truncated[i], info = _tagged(i, lambda env=env, i=i: env.step(actions[i]))
            info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            if terminated[i] or truncated[i]:
                if terminal is None:
                    info["terminal_observation"] = obs
                else:
                    self._write(terminal, i, obs)
                obs, resets[i] = _tagged(i, env.reset)
            self._write(out, i, obs)
            infos.append(info)
        return rewards, terminated, truncated, infos, resets

    def _observe(self, out: Buffers, index: np.ndarray | None = None) -> None:
        """The core's observations of every env (or of envs ``index``, into ``out``'s first rows)."""
        core, first = self.core, self.envs[0]
        assert core is not None and isinstance(first, TradingEnv)
        if first.flat:
            flat, window = out[None], first._window_size
            core.window_into(flat[:, :window], index, asset_first=False)
            core.portfolio_into(flat[:, window:], index)
        elif first.reference:  # the decision rows and the portfolios: no window is copied
            flat = out[None]
            flat[:, 0] = core.rows if index is None else core.rows[index]
            core.portfolio_into(flat[:, 1:], index)
        else:
            core.window_into(out["features"], index, asset_first=True)
            core.portfolio_into(out["portfolio"], index)

    def _write(self, out: Buffers, index: int, obs: Any) -> None:
        for key in self.keys:
            out[key][index] = obs if key is None else obs[key]

    def _read(self, buffers: Buffers, index: int) -> Any:
        """One env's observation, copied out of ``buffers``, in the structure of the space."""
        return structured(self.observation_space, {key: buffers[key][index].copy() for key in self.keys})

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _tagged(index: int, call: Callable[[], Any]) -> Any:
    """``call()``; an exception carries the env index, so that a worker's error names the env."""
    try:
        return call()
    except BaseException as err:
        err.ploutos_env_index = index  # type: ignore[attr-defined]
        raise
