"""The env-worker side of :class:`ploutos.env.vec.ShmVecEnv` (kept apart so that workers stay light).

A worker imports only this module, numpy, cloudpickle and whatever its env factories need: never
stable-baselines3 (torch: 2-3 s and hundreds of MB per process) and never mpi4py. It builds its
envs, reports their spaces, receives the shared buffer as a file descriptor over its pipe, then
serves small control messages; observations, actions, rewards and flags move through the buffer.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import traceback
from multiprocessing.reduction import recv_handle
from typing import Any

import cloudpickle
import numpy as np

Layout = list[tuple[str, tuple[int, ...], str, int]]
"""(name, shape, dtype string, byte offset) of each array in the shared buffer."""


def views(buffer: Any, layout: Layout) -> dict[str, np.ndarray]:
    """The arrays of ``layout`` as numpy views into ``buffer`` (no copy)."""
    return {
        name: np.ndarray(shape, dtype=np.dtype(dtype), buffer=buffer, offset=offset)
        for name, shape, dtype, offset in layout
    }


def is_wrapped(env: Any, wrapper: tuple[str, str]) -> bool:
    """Whether a wrapper of class ``(module, qualname)`` or a subclass of it is among ``env``'s wrappers.

    The class travels by name: unpickling it would import its module here, and SB3's ``Monitor``
    would pull torch into every worker (seconds of start-up each).
    """
    while env is not None:
        if any((cls.__module__, cls.__qualname__) == wrapper for cls in type(env).__mro__):
            return True
        env = getattr(env, "env", None)
    return False


def _error(index: int | None, err: BaseException) -> tuple[str, Any]:
    try:
        exc: bytes | None = pickle.dumps(err)
    except Exception:
        exc = None
    text = f"{type(err).__name__}: {err}"
    return "error", (index, exc, text, traceback.format_exc())


def _write(arrays: dict[str, np.ndarray], prefix: str, keys: list[str | None], at: tuple, obs: Any) -> None:
    for key in keys:
        arrays[prefix if key is None else f"{prefix}:{key}"][at] = obs if key is None else obs[key]


def run(worker: int, conn: Any, payload: bytes, first: int) -> None:  # noqa: C901 - one dispatch loop
    """Worker main: ``payload`` is the cloudpickled list of env factories for envs ``first, first + 1, ...``."""
    # Ctrl-C, and Slurm's checkpoint and termination signals (sent to every process of the job
    # step), are the parent's to handle: it may still need us to checkpoint, and closes us, or
    # its exit closes our pipe
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)
    os.environ.setdefault("PLOUTOS_ENV_WORKER", "1")
    index: int | None = None
    try:
        envs = []
        for offset, fn in enumerate(cloudpickle.loads(payload)):
            index = first + offset
            envs.append(fn())
        index = None
        conn.send(("ok", (envs[0].observation_space, envs[0].action_space)))
    except BaseException as err:
        conn.send(_error(index, err))
        return
    arrays: dict[str, np.ndarray] = {}
    keys: list[str | None] = []
    while True:
        try:
            cmd, data = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        index = None
        try:
            if cmd == "step":
                actions, rewards = arrays["actions"], arrays["rewards"]
                terminated, truncated = arrays["terminated"], arrays["truncated"]
                infos, reset_infos = [], {}
                for offset, env in enumerate(envs):
                    index = row = first + offset
                    action = actions[row].copy() if actions.ndim > 1 else actions[row]
                    obs, reward, term, trunc, info = env.step(action)
                    rewards[row], terminated[row], truncated[row] = reward, term, trunc
                    info["TimeLimit.truncated"] = bool(trunc and not term)
                    if term or trunc:
                        _write(arrays, "terminal", keys, (row,), obs)
                        obs, reset_infos[row] = env.reset()
                    _write(arrays, "obs", keys, (data, row), obs)
                    infos.append(info)
                conn.send(("ok", (infos, reset_infos)))
            elif cmd == "reset":
                reset_infos = []
                slot, work = data
                for offset, (env, (seed, options)) in enumerate(zip(envs, work, strict=True)):
                    index = first + offset
                    obs, info = env.reset(seed=seed, **({"options": options} if options else {}))
                    _write(arrays, "obs", keys, (slot, index), obs)
                    reset_infos.append(info)
                conn.send(("ok", reset_infos))
            elif cmd == "attach":
                layout, size, keys = data
                fd = recv_handle(conn)
                try:
                    buffer = mmap.mmap(fd, size)
                finally:
                    os.close(fd)
                arrays = views(buffer, layout)
                conn.send(("ok", None))
            elif cmd in ("env_method", "get_attr", "set_attr", "is_wrapped", "render"):
                rows, args = data
                results = []
                for row in rows:
                    index = row
                    env = envs[row - first]
                    if cmd == "env_method":
                        results.append(env.get_wrapper_attr(args[0])(*args[1], **args[2]))
                    elif cmd == "get_attr":
                        results.append(env.get_wrapper_attr(args))
                    elif cmd == "set_attr":
                        results.append(setattr(env, args[0], args[1]))
                    elif cmd == "is_wrapped":
                        results.append(is_wrapped(env, args))
                    else:
                        results.append(env.render())
                conn.send(("ok", results))
            elif cmd == "close":
                for offset, env in enumerate(envs):
                    index = first + offset
                    env.close()
                conn.send(("ok", None))
                break
            else:
                raise ValueError(f"unknown ShmVecEnv command {cmd!r}")
        except BaseException as err:
            try:
                conn.send(_error(index, err))
            except (BrokenPipeError, OSError):
                break
    conn.close()
