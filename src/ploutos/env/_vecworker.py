"""The env-worker side of :class:`ploutos.env.vec.ShmVecEnv` (kept apart so that workers stay light).

A worker runs one :class:`~ploutos.env.batch.EnvBatch` over its slice of the envs: trading
envs of one window step as one core, any others one after another. It imports only this module,
the env batch (numpy, gymnasium),
cloudpickle and whatever its env factories need; never mpi4py. It builds its envs, reports their
spaces, receives the shared buffer as a file descriptor over its pipe, then serves small control
messages; observations, actions, rewards and flags move through the buffer (actions of Dict or
Tuple spaces, which have no flat layout, come with the step message).
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

from ploutos.env.batch import EnvBatch, is_wrapped

Layout = list[tuple[str, tuple[int, ...], str, int]]
"""(name, shape, dtype string, byte offset) of each array in the shared buffer."""


def views(buffer: Any, layout: Layout) -> dict[str, np.ndarray]:
    """The arrays of ``layout`` as numpy views into ``buffer`` (no copy)."""
    return {
        name: np.ndarray(shape, dtype=np.dtype(dtype), buffer=buffer, offset=offset)
        for name, shape, dtype, offset in layout
    }


def field(prefix: str, key: Any) -> str:
    """The buffer name of one observation key: ``obs``, ``obs:features``, ``obs:0`` (Tuple spaces)."""
    return prefix if key is None else f"{prefix}:{key}"


def _error(index: int | None, err: BaseException) -> tuple[str, Any]:
    try:
        exc: bytes | None = pickle.dumps(err)
    except Exception:
        exc = None
    text = f"{type(err).__name__}: {err}"
    return "error", (index, exc, text, traceback.format_exc())


def run(worker: int, conn: Any, payload: bytes, first: int) -> None:  # noqa: C901 - one dispatch loop
    """Worker main: ``payload`` is the cloudpickled list of env factories for envs ``first, first + 1, ...``."""
    # Ctrl-C, and Slurm's checkpoint and termination signals (sent to every process of the job
    # step), are the parent's to handle: it may still need us to checkpoint, and closes us, or
    # its exit closes our pipe
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)
    os.environ.setdefault("PLOUTOS_ENV_WORKER", "1")
    try:
        venv = EnvBatch(cloudpickle.loads(payload))
        conn.send(("ok", (venv.observation_space, venv.action_space)))
    except BaseException as err:
        conn.send(_error(_failing_env(err, first), err))
        return
    n = venv.num_envs
    rows = slice(first, first + n)
    arrays: dict[str, np.ndarray] = {}

    def slot_views(prefix: str, slot: int | None) -> dict[Any, np.ndarray]:
        return {key: arrays[field(prefix, key)][rows] if slot is None else arrays[field(prefix, key)][slot, rows]
                for key in venv.keys}  # fmt: skip

    while True:
        try:
            cmd, data = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        index: int | None = None
        try:
            if cmd == "step":
                slot, sent_actions = data
                actions = arrays["actions"][rows] if sent_actions is None else sent_actions
                rewards, terminated, truncated, infos, resets = venv.step_into(
                    actions, slot_views("obs", slot), slot_views("terminal", None)
                )
                arrays["rewards"][rows] = rewards
                arrays["terminated"][rows] = terminated
                arrays["truncated"][rows] = truncated
                conn.send(("ok", (infos, {first + i: info for i, info in resets.items()})))
            elif cmd == "reset":
                slot, work = data
                seeds, options = [seed for seed, _ in work], [option for _, option in work]
                conn.send(("ok", venv.reset_into(slot_views("obs", slot), seeds, options)))
            elif cmd == "attach":
                layout, size = data
                fd = recv_handle(conn)
                try:
                    buffer = mmap.mmap(fd, size)
                finally:
                    os.close(fd)
                arrays = views(buffer, layout)
                conn.send(("ok", None))
            elif cmd in ("env_method", "get_attr", "set_attr", "is_wrapped", "render"):
                targets, args = data
                results = []
                for row in targets:
                    index = row
                    env = venv.envs[row - first]
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
                venv.close()
                conn.send(("ok", None))
                break
            else:
                raise ValueError(f"unknown ShmVecEnv command {cmd!r}")
        except BaseException as err:
            try:
                conn.send(_error(index if index is not None else _failing_env(err, first), err))
            except (BrokenPipeError, OSError):
                break
    conn.close()


def _failing_env(err: BaseException, first: int) -> int | None:
    """The env a step or reset failed in, when the batched VecEnv's loop names it."""
    index = getattr(err, "ploutos_env_index", None)
    return first + index if index is not None else None
