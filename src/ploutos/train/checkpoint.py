"""Checkpoints of one training task, and the preemption signal that asks for one.

A checkpoint is one file, ``checkpoints/fold<F>_member<M>.ckpt``, in the format of
:mod:`ploutos.train.artifacts` (JSON and weights-only tensors: loading it runs no code): the
policy and optimizer states and the learner's counters, the normalization statistics of the fold,
every rank's RNG states (Python, NumPy, torch, each env's generator), the training curve so far,
and how many times the task was resumed. It is written under a temporary name and renamed, so a
kill during the write leaves the previous checkpoint whole.

Slurm warns a task before its time limit (``--signal``) and on preemption with SIGUSR2 or
SIGTERM; a user stops a run with Ctrl-C (SIGINT). :class:`PreemptionFlag` only records the signal;
the trainer checks it between rollouts, where every rank agrees to stop, writes the checkpoint and
exits (for the requeue, or for the user to run the same command again). A second Ctrl-C stops at
once, without a checkpoint.
"""

from __future__ import annotations

import random
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from ploutos.errors import PloutosError
from ploutos.train.artifacts import ArtifactError, read_artifact, write_artifact

FORMAT_VERSION = 2
PREEMPTION_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


class CheckpointError(PloutosError):
    """A checkpoint that cannot be used: unreadable, of another config, or of another format."""


@dataclass
class Checkpoint:
    """Everything a requeued task needs to continue where it stopped."""

    config_hash: str
    """The config that produced it; a checkpoint of another config is refused."""
    timesteps: int
    """Environment steps of the member so far, over every rank."""
    policy: dict[str, torch.Tensor]
    """The policy's state dict."""
    optimizer: dict[str, Any]
    """The optimizer's state dict."""
    learner: dict[str, Any]
    """The learner's counters: ``num_timesteps`` (this rank's), ``n_updates``, ``episodes`` (recent
    episode infos: ``r``, ``l``, ``t``)."""
    norm_center: np.ndarray
    norm_scale: np.ndarray
    rank_rng: list[dict[str, Any]]
    """Per rank: ``python``, ``numpy``, ``torch`` and ``envs`` (each env's bit generator state)."""
    curve: dict[str, list[float]] = field(default_factory=dict)
    """Training curve rows so far (see :class:`ploutos.train.trainer.CurveWriter`)."""
    resumed: int = 0
    """How many times the task was resumed before this checkpoint."""
    wall_seconds: float = 0.0
    selection: dict[str, Any] = field(default_factory=dict)
    """The validation curve and choice so far (:meth:`ploutos.train.selection.Selection.state`)."""
    best_policy: dict[str, torch.Tensor] | None = None
    """The best validated policy weights so far (None before a validation)."""
    """Training time spent before this checkpoint, over every attempt."""

    def save(self, path: Path) -> None:
        meta = {
            "kind": "checkpoint",
            "format": FORMAT_VERSION,
            "config_hash": self.config_hash,
            "timesteps": self.timesteps,
            "learner": self.learner,
            "norm_center": np.asarray(self.norm_center, dtype=np.float64).tolist(),
            "norm_scale": np.asarray(self.norm_scale, dtype=np.float64).tolist(),
            "rank_rng": [_rng_to_json(state) for state in self.rank_rng],
            "curve": self.curve,
            "resumed": self.resumed,
            "wall_seconds": self.wall_seconds,
            "selection": self.selection,
        }
        tensors = {
            "policy": self.policy,
            "optimizer": self.optimizer,
            "torch_rng": [state["torch"] for state in self.rank_rng],
        }
        if self.best_policy is not None:
            tensors["best_policy"] = self.best_policy
        write_artifact(path, meta, tensors)

    @staticmethod
    def load(path: Path, *, config_hash: str) -> Checkpoint:
        try:
            meta, tensors = read_artifact(path, "checkpoint", FORMAT_VERSION)
        except ArtifactError as err:
            raise CheckpointError(f"{err}; remove it to restart the task") from None
        if meta["config_hash"] != config_hash:
            raise CheckpointError(
                f"{path}: checkpoint of config {meta['config_hash']}, not of this config {config_hash}; "
                "remove it to restart the task, or run with the config it was made with"
            )
        try:
            rank_rng = [
                {**_rng_from_json(state), "torch": torch_state}
                for state, torch_state in zip(meta["rank_rng"], tensors["torch_rng"], strict=True)
            ]
            return Checkpoint(
                config_hash=meta["config_hash"],
                timesteps=int(meta["timesteps"]),
                policy=tensors["policy"],
                optimizer=tensors["optimizer"],
                learner=dict(meta["learner"]),
                norm_center=np.asarray(meta["norm_center"], dtype=np.float64),
                norm_scale=np.asarray(meta["norm_scale"], dtype=np.float64),
                rank_rng=rank_rng,
                curve={key: [float(v) for v in values] for key, values in meta["curve"].items()},
                resumed=int(meta["resumed"]),
                wall_seconds=float(meta["wall_seconds"]),
                selection=dict(meta.get("selection") or {}),
                best_policy=tensors.get("best_policy"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(
                f"{path}: damaged checkpoint ({type(err).__name__}: {err}); remove it to restart the task"
            ) from None


def _rng_to_json(state: dict[str, Any]) -> dict[str, Any]:
    """A rank's RNG states without torch's (a tensor, stored with the tensors) as plain JSON."""
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
        "envs": [_plain(env_state) for env_state in state["envs"]],
    }


def _rng_from_json(data: dict[str, Any]) -> dict[str, Any]:
    version, internal, gauss = data["python"]
    name, keys, pos, has_gauss, cached = data["numpy"]
    return {
        "python": (int(version), tuple(int(k) for k in internal), gauss),
        "numpy": (str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)),
        "envs": [_unplain(env_state) for env_state in data["envs"]],
    }


def _plain(value: Any) -> Any:
    """A bit generator's state as JSON: arrays become ``{"ndarray": [...], "dtype": "..."}``."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return {"ndarray": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _unplain(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"ndarray", "dtype"}:
            return np.asarray(value["ndarray"], dtype=np.dtype(value["dtype"]))
        return {key: _unplain(item) for key, item in value.items()}
    return value


def capture_rng(env_generators: list[np.random.Generator]) -> dict[str, Any]:
    """This process's RNG states and those of its envs."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "envs": [gen.bit_generator.state for gen in env_generators],
    }


def restore_rng(state: dict[str, Any]) -> list[np.random.Generator]:
    """Restore this process's RNG states; returns the env generators to hand back to the envs."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generators = []
    for env_state in state["envs"]:
        generator = np.random.Generator(getattr(np.random, env_state["bit_generator"])())
        generator.bit_generator.state = env_state
        generators.append(generator)
    return generators


class PreemptionFlag:
    """Records SIGUSR2/SIGTERM/SIGINT instead of dying, so that the trainer can checkpoint first.

    While installed, a second SIGUSR2 or SIGTERM still only sets the flag; a second SIGINT (Ctrl-C
    twice) raises :class:`KeyboardInterrupt` at once. The previous handlers come back on
    :meth:`restore`.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> PreemptionFlag:
        for signum in PREEMPTION_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            if self.signal == signal.SIGINT:
                raise KeyboardInterrupt
            print("ploutos: Ctrl-C: checkpointing after this rollout (Ctrl-C again stops at once)", file=sys.stderr)
        self.signal = signum

    @property
    def raised(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
