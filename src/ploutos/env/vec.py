"""ShmVecEnv: a stable-baselines3 ``VecEnv`` with several envs per worker process and shared-memory I/O.

SB3's ``SubprocVecEnv`` runs one env per process and pickles every observation through a pipe;
with 45,600-float observations that copy, not the env, is the cost. Here each worker process runs
``envs_per_worker`` envs as one :class:`~ploutos.env.batch.EnvBatch` (trading envs of one window
step as one array computation); observations (one array per key of a ``Dict`` or ``Tuple``
space), terminal observations, actions, rewards and the terminated/truncated flags live in one
shared buffer, and pipes carry only tiny control messages and the ``info`` dicts. With few cores
the in-process :class:`~ploutos.env.batched.BatchedVecEnv` is faster (no pipes at all); the
hardware plan chooses.

The buffer is an anonymous ``memfd`` (an unlinked file in /dev/shm where memfd is missing) created
by the parent after the workers report their spaces; its descriptor is passed to each worker over
its pipe (``SCM_RIGHTS``). It has no name, so nothing can leak in /dev/shm and no exiting process
can unlink it under the others (the trap of :mod:`multiprocessing.shared_memory` in Python 3.11).

Semantics mirror ``SubprocVecEnv``/``DummyVecEnv`` exactly: auto-reset on done with
``infos[i]["terminal_observation"]`` and ``infos[i]["TimeLimit.truncated"]``, seeds and options
from :meth:`seed`/:meth:`set_options` used once at the next :meth:`reset`, ``reset_infos``,
``env_method``, ``get_attr``, ``set_attr``, ``env_is_wrapped``. Rewards are float32 (as in
``DummyVecEnv``). Workers start with one BLAS/OpenMP thread (:func:`ploutos.node.context.worker_env`)
and import neither stable-baselines3 nor mpi4py (see :mod:`ploutos.env._vecworker`).

Failures never hang: every wait watches the workers' process sentinels, so a worker that is killed,
segfaults or raises in ``step``/``reset`` becomes a :class:`VecEnvWorkerError` naming the worker,
its pid, the env index and the original error; the vec env is then closed. Errors in
``env_method``/``get_attr``/``set_attr`` re-raise the env's own exception and leave the workers up.
A vec env nobody closed is shut down at interpreter exit, so its workers never keep a process
alive.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing as mp
import os
import pickle
import signal
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from multiprocessing import forkserver
from multiprocessing.connection import wait
from multiprocessing.reduction import send_handle
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from ploutos.env import _vecworker
from ploutos.env.batch import obs_keys, obs_shapes, structured
from ploutos.errors import PloutosError
from ploutos.node.context import worker_env

ALIGN = 64


class VecEnvWorkerError(PloutosError):
    """An env worker died or an env raised in ``step``/``reset``; names the worker, pid and env."""


WORKER_IGNORED_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
"""Signals Slurm sends to every process of a job step; the parent handles them (checkpoint)."""


def _start_forkserver_deaf() -> None:
    """Start multiprocessing's forkserver (and resource tracker) ignoring ``WORKER_IGNORED_SIGNALS``.

    Slurm signals every process of the step. A forkserver killed by SIGUSR2 closes the pipes
    that report its children's exit codes, and every worker then looks dead (exit code 255)
    while the trainer is still checkpointing. An ignored signal stays ignored across exec, so
    the servers are started inside a short window where this process ignores them too.
    """

    if threading.current_thread() is not threading.main_thread():
        forkserver.ensure_running()
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in WORKER_IGNORED_SIGNALS}
    try:
        forkserver.ensure_running()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


FLAT_ACTIONS = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
"""Action spaces whose actions travel through the shared buffer; others (Dict, Tuple) come with the step message."""


def _layout(obs_space: spaces.Space, action_space: spaces.Space, n: int) -> tuple[_vecworker.Layout, int]:
    """Arrays of the shared buffer and its size in bytes."""
    fields: list[tuple[str, tuple[int, ...], np.dtype]] = []
    for key, (shape, dtype) in obs_shapes(obs_space).items():
        for prefix, lead in (("obs", (2, n)), ("terminal", (n,))):  # obs: two slots, alternating per step
            fields.append((_vecworker.field(prefix, key), (*lead, *shape), dtype))
    if isinstance(action_space, FLAT_ACTIONS):
        fields.append(("actions", (n, *action_space.shape), np.dtype(action_space.dtype)))
    fields += [
        ("rewards", (n,), np.dtype(np.float32)),
        ("terminated", (n,), np.dtype(bool)),
        ("truncated", (n,), np.dtype(bool)),
    ]
    layout, offset = [], 0
    for name, shape, dtype in fields:
        layout.append((name, shape, dtype.str, offset))
        offset += -(-int(np.prod(shape, dtype=np.int64)) * dtype.itemsize // ALIGN) * ALIGN
    return layout, max(offset, ALIGN)


def _anonymous_fd(size: int) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("ploutos-shmvecenv", os.MFD_CLOEXEC)
    else:  # pragma: no cover - non-Linux
        fd, path = tempfile.mkstemp(prefix="ploutos-shmvecenv-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        os.unlink(path)
    os.ftruncate(fd, size)
    return fd


class ShmVecEnv(VecEnv):
    """A ``VecEnv`` over ``len(env_fns)`` envs in ``ceil(len / envs_per_worker)`` worker processes.

    ``env_fns`` are picklable (cloudpickle) factories run inside the workers; env ``i`` lives in
    worker ``i // envs_per_worker``. ``timeout`` (seconds, None = none) bounds every wait for a live
    but silent worker; dead workers are detected at once whatever it is. ``start_timeout`` bounds
    building the envs.

    ``copy_obs=False`` returns views into the shared buffer instead of copies (saves a copy of all
    observations per step): observations come from two slots used in turn, so the arrays returned
    by a step or reset stay valid until the step after the next one, which is what SB3's
    ``PPO``/``RecurrentPPO`` need (they hold the previous observation across one step); anything
    that keeps observations longer must copy them.
    """

    def __init__(
        self,
        env_fns: list[Callable[[], gym.Env]],
        *,
        envs_per_worker: int,
        context: str = "forkserver",
        timeout: float | None = None,
        copy_obs: bool = True,
        start_timeout: float | None = 600.0,
    ) -> None:
        if not env_fns:
            raise ValueError("ShmVecEnv needs at least one env factory")
        if envs_per_worker < 1:
            raise ValueError(f"envs_per_worker must be >= 1, got {envs_per_worker}")
        self.waiting = False
        self.closed = False
        self._failure: str | None = None
        self.timeout = timeout
        self.copy_obs = copy_obs
        self._slot = 0
        n = len(env_fns)
        ctx = mp.get_context(context)
        if context == "forkserver":
            _start_forkserver_deaf()
        self._ranges = [range(lo, min(lo + envs_per_worker, n)) for lo in range(0, n, envs_per_worker)]
        self._worker_of = [w for w, rows in enumerate(self._ranges) for _ in rows]
        self.remotes: list[Any] = []
        self.processes: list[Any] = []
        with worker_env(1):
            for w, rows in enumerate(self._ranges):
                remote, child = ctx.Pipe()
                payload = cloudpickle.dumps([env_fns[i] for i in rows])
                process = ctx.Process(
                    target=_vecworker.run, args=(w, child, payload, rows.start), daemon=True, name=f"ShmVecEnv-{w}"
                )
                process.start()
                child.close()
                self.remotes.append(remote)
                self.processes.append(process)
        try:
            found = self._gather(range(len(self._ranges)), "building its envs", timeout=start_timeout)
            obs_space, action_space = found[0]
            for w, (obs_w, act_w) in found.items():
                if obs_w != obs_space or act_w != action_space:
                    raise VecEnvWorkerError(f"ShmVecEnv worker {w} builds envs with other spaces than worker 0")
            self.keys = obs_keys(obs_space)
            self._flat_actions = isinstance(action_space, FLAT_ACTIONS)
            layout, size = _layout(obs_space, action_space, n)
            fd = _anonymous_fd(size)
            try:
                self._buffer = mmap.mmap(fd, size)
                for w, remote in enumerate(self.remotes):
                    self._send(w, ("attach", (layout, size)), "attaching the shared buffer")
                    send_handle(remote, fd, self.processes[w].pid)
            finally:
                os.close(fd)
            self._gather(range(len(self._ranges)), "attaching the shared buffer", timeout=start_timeout)
        except BaseException:
            self._shutdown(graceful=False)
            raise
        self._arrays = _vecworker.views(self._buffer, layout)
        super().__init__(n, obs_space, action_space)
        # at interpreter exit, before multiprocessing joins its children (which ignore SIGTERM): a vec
        # env nobody closed, or one whose worker raised, must never keep the process alive
        self._finalizer = weakref.finalize(self, _shutdown_at_exit, list(self.remotes), list(self.processes))

    # ------------------------------------------------------------ plumbing

    def _describe(self, w: int) -> str:
        rows = self._ranges[w]
        envs = f"env {rows.start}" if len(rows) == 1 else f"envs {rows.start}-{rows.stop - 1}"
        return f"ShmVecEnv worker {w} (pid {self.processes[w].pid}, {envs})"

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise VecEnvWorkerError(f"ShmVecEnv was closed after a failure: {self._failure}")
        if self.closed:
            raise VecEnvWorkerError("ShmVecEnv is closed")

    def _fail(self, message: str) -> VecEnvWorkerError:
        """Close everything and return the error to raise."""
        self._failure = message.splitlines()[0]
        self.waiting = False
        self._shutdown(graceful=False)
        return VecEnvWorkerError(message)

    def _death(self, w: int, what: str) -> str:
        process = self.processes[w]
        process.join(1.0)
        code = process.exitcode
        if code is None:
            how = "closed its pipe"
        elif code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        return f"{self._describe(w)} {how} while {what}"

    def _send(self, w: int, message: Any, what: str) -> None:
        try:
            self.remotes[w].send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError) as err:
            raise self._fail(self._death(w, what)) from err

    def _gather(self, workers: Sequence[int], what: str, *, timeout: float | None = None, fatal: bool = True) -> dict:
        """The reply of each worker in ``workers``; a dead or failing worker raises (after all replied)."""
        pending = {w: None for w in workers}
        replies: dict[int, Any] = {}
        errors: list[tuple[int, Any]] = []
        by_object = {}
        for w in pending:
            by_object[self.remotes[w]] = w
            by_object[self.processes[w].sentinel] = w
        while pending:
            objects = [self.remotes[w] for w in pending] + [self.processes[w].sentinel for w in pending]
            ready = wait(objects, timeout)
            if not ready:
                names = ", ".join(self._describe(w) for w in pending)
                raise self._fail(f"no reply within {timeout} s while {what} from {names}")
            for obj in ready:
                w = by_object[obj]
                if w not in pending:
                    continue
                remote = self.remotes[w]
                try:
                    if obj is not remote and not remote.poll():
                        raise EOFError
                    status, payload = remote.recv()
                except (EOFError, ConnectionResetError, OSError) as err:
                    raise self._fail(self._death(w, what)) from err
                del pending[w]
                if status == "ok":
                    replies[w] = payload
                else:
                    errors.append((w, payload))
        if errors:
            w, (index, exc, text, trace) = errors[0]
            where = f"env {index} in {self._describe(w)}" if index is not None else self._describe(w)
            if fatal:
                raise self._fail(f"{where} raised while {what}: {text}\n{trace}")
            err = None
            if exc is not None:
                try:
                    err = pickle.loads(exc)
                except Exception:
                    err = None
            if isinstance(err, BaseException):
                err.add_note(f"(raised in {where}; worker traceback follows)\n{trace}")
                raise err
            raise VecEnvWorkerError(f"{where} raised while {what}: {text}\n{trace}")
        return replies

    def _shutdown(self, *, graceful: bool) -> None:
        if graceful:
            live = [w for w, p in enumerate(self.processes) if p.is_alive()]
            for w in live:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, OSError):
                    self.remotes[w].send(("close", None))
            for w in live:
                self.processes[w].join(10.0)
        for remote in self.remotes:  # a worker waiting for a command sees the pipe close and exits
            remote.close()
        for process in self.processes:
            process.join(1.0)
            if process.is_alive():  # busy in an env; workers ignore SIGTERM (it is the parent's)
                process.kill()
                process.join(2.0)
        self.closed = True

    def _by_worker(self, indices: VecEnvIndices) -> tuple[list[int], dict[int, list[int]]]:
        rows = [int(row) % self.num_envs for row in self._get_indices(indices)]  # -1 is the last env
        groups: dict[int, list[int]] = {}
        for row in rows:
            groups.setdefault(self._worker_of[row], []).append(row)
        return rows, groups

    def _call(self, cmd: str, args: Any, indices: VecEnvIndices) -> list[Any]:
        self._check_usable()
        rows, groups = self._by_worker(indices)
        for w, group in groups.items():
            self._send(w, (cmd, (group, args)), cmd)
        replies = self._gather(list(groups), f"running {cmd}", timeout=self.timeout, fatal=False)
        found = {row: value for w, group in groups.items() for row, value in zip(group, replies[w], strict=True)}
        return [found[row] for row in rows]

    def _obs(self, prefix: str, row: int | None = None) -> VecEnvObs:
        pick: Any = self._slot if row is None else row
        copy = self.copy_obs or row is not None

        def get(key: Any) -> np.ndarray:
            array = self._arrays[_vecworker.field(prefix, key)][pick]
            return array.copy() if copy else array

        return structured(self.observation_space, {key: get(key) for key in self.keys})

    # ------------------------------------------------------------ VecEnv API

    def reset(self) -> VecEnvObs:
        self._check_usable()
        self._slot = 1 - self._slot
        for w, rows in enumerate(self._ranges):
            work = [(self._seeds[i], self._options[i]) for i in rows]
            self._send(w, ("reset", (self._slot, work)), "resetting")
        replies = self._gather(range(len(self._ranges)), "resetting", timeout=self.timeout)
        for w, rows in enumerate(self._ranges):
            for i, info in zip(rows, replies[w], strict=True):
                self.reset_infos[i] = info
        self._reset_seeds()
        self._reset_options()
        return self._obs("obs")

    def step_async(self, actions: np.ndarray) -> None:
        self._check_usable()
        if self._flat_actions:
            target = self._arrays["actions"]
            target[...] = np.asarray(actions).reshape(target.shape)
        self._slot = 1 - self._slot
        for w, rows in enumerate(self._ranges):
            sent = None if self._flat_actions else [actions[i] for i in rows]
            self._send(w, ("step", (self._slot, sent)), "stepping")
        self.waiting = True

    def step_wait(self) -> VecEnvStepReturn:
        replies = self._gather(range(len(self._ranges)), "stepping", timeout=self.timeout)
        self.waiting = False
        infos: list[dict[str, Any]] = []
        for w in range(len(self._ranges)):
            worker_infos, reset_infos = replies[w]
            infos.extend(worker_infos)
            for i, info in reset_infos.items():
                self.reset_infos[i] = info
        dones = self._arrays["terminated"] | self._arrays["truncated"]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = self._obs("terminal", int(i))
        return self._obs("obs"), self._arrays["rewards"].copy(), dones, infos

    def close(self) -> None:
        if getattr(self, "_finalizer", None) is not None:
            self._finalizer.detach()
        if self.closed:
            return
        if self.waiting:
            with contextlib.suppress(VecEnvWorkerError):
                self._gather(range(len(self._ranges)), "finishing a step before closing", timeout=10.0)
            self.waiting = False
        if not self.closed:
            self._shutdown(graceful=True)

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            warnings.warn(
                f"The render mode is {self.render_mode}, but this method assumes it is `rgb_array` to obtain images.",
                stacklevel=2,
            )
            return [None] * self.num_envs
        return self._call("render", None, None)

    def has_attr(self, attr_name: str) -> bool:
        try:
            self.get_attr(attr_name)
        except AttributeError:
            return False
        return True

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._call("get_attr", attr_name, indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._call("set_attr", (attr_name, value), indices)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        return self._call("env_method", (method_name, method_args, method_kwargs), indices)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return self._call("is_wrapped", (wrapper_class.__module__, wrapper_class.__qualname__), indices)

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers (worker ``w`` runs envs ``w * envs_per_worker, ...``)."""
        return [int(p.pid) for p in self.processes]


def _shutdown_at_exit(remotes: list[Any], processes: list[Any]) -> None:
    """Close the pipes (a worker waiting for a command then exits) and kill what still runs."""
    for remote in remotes:
        remote.close()
    for process in processes:
        process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join(1.0)
