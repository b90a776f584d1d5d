"""BatchedVecEnv: a stable-baselines3 ``VecEnv`` whose trading envs step as one array computation.

``BatchedVecEnv(env_fns)`` builds the envs in this process, like SB3's ``DummyVecEnv``, and steps
them through an :class:`~ploutos.env.batch.EnvBatch`: when they are bare trading envs of one
window, a vec step is one step of one :class:`~ploutos.env.core.MarketCore` plus one gather of the
observation windows; any other envs step one after another, exactly as in ``DummyVecEnv``, so the
class is a general ``VecEnv`` (SB3's own VecEnv tests run against it, tests/test_sb3_vec_envs.py).

Semantics are SB3's: auto-reset on done with ``infos[i]["terminal_observation"]`` and
``infos[i]["TimeLimit.truncated"]``; seeds and options from :meth:`seed`/:meth:`set_options` used
once at the next :meth:`reset`; ``reset_infos``; rewards float32; ``env_method``, ``get_attr``,
``set_attr`` and ``env_is_wrapped`` on the env objects (negative indices count from the end).
An env's ``np_random`` draws its episode starts, so ``set_attr("np_random", ...)`` restores them.

``copy_obs=False`` returns views into two observation buffers used in turn instead of copies: a
step's observations stay valid until the step after the next one, which is what SB3's PPO and
RecurrentPPO need (they keep the previous observation across one step).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from ploutos.env.batch import EnvBatch, is_wrapped, new_buffers, structured


class BatchedVecEnv(VecEnv):
    """``len(env_fns)`` envs in this process; trading envs of one window step together (see the module doc)."""

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], *, copy_obs: bool = True) -> None:
        self.batch = EnvBatch(env_fns)
        self.envs = self.batch.envs
        super().__init__(len(self.envs), self.batch.observation_space, self.batch.action_space)
        self.keys = self.batch.keys
        self.copy_obs = copy_obs
        self._slots = [new_buffers(self.observation_space, self.num_envs) for _ in range(1 if copy_obs else 2)]
        self._slot = 0
        self._actions: Any = None

    @property
    def core(self) -> Any:
        """The :class:`~ploutos.env.core.MarketCore` the envs share, or None when they step one by one."""
        return self.batch.core

    def _result(self) -> VecEnvObs:
        slot = self._slots[self._slot]
        return structured(self.observation_space, {key: (slot[key].copy() if self.copy_obs else slot[key])
                                                   for key in self.keys})  # fmt: skip

    # ------------------------------------------------------------------------------------------ VecEnv API

    def reset(self) -> VecEnvObs:
        self._slot = (self._slot + 1) % len(self._slots)
        self.reset_infos = self.batch.reset_into(self._slots[self._slot], self._seeds, self._options)
        self._reset_seeds()
        self._reset_options()
        return self._result()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async()")
        self._slot = (self._slot + 1) % len(self._slots)
        rewards, terminated, truncated, infos, resets = self.batch.step_into(self._actions, self._slots[self._slot])
        self._actions = None
        for index, info in resets.items():
            self.reset_infos[index] = info
        return self._result(), np.asarray(rewards, dtype=np.float32), terminated | truncated, infos

    def close(self) -> None:
        self.batch.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            warnings.warn(
                f"The render mode is {self.render_mode}, but this method assumes it is `rgb_array` to obtain images.",
                stacklevel=2,
            )
            return [None] * self.num_envs
        return [env.render() for env in self.envs]  # type: ignore[misc]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [self.envs[i].get_wrapper_attr(attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for i in self._get_indices(indices):
            setattr(self.envs[i], attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        return [
            self.envs[i].get_wrapper_attr(method_name)(*method_args, **method_kwargs)
            for i in self._get_indices(indices)
        ]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        wrapper = (wrapper_class.__module__, wrapper_class.__qualname__)
        return [is_wrapped(self.envs[i], wrapper) for i in self._get_indices(indices)]
