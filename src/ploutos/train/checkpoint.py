"""Checkpoints of one training task, and the preemption signal that asks for one.

A checkpoint is one file, ``checkpoints/fold<F>_member<M>.ckpt``: a pickle of the SB3 model (its
zip, with the policy and optimizer states and the step counter), the normalization statistics
of the fold, every rank's RNG states (Python, NumPy, torch, each env's generator), the training
curve so far, and how many times the task was resumed. It is written under a temporary name and
renamed, so a kill during the write leaves the previous checkpoint whole.

Slurm warns a task before its time limit (``--signal``) and on preemption with SIGUSR2 or
SIGTERM. :class:`PreemptionFlag` only records the signal; the trainer checks it between rollouts,
where every rank agrees to stop, writes the checkpoint and exits for the requeue.
"""

from __future__ import annotations

import pickle
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from ploutos.errors import PloutosError
from ploutos.files import atomic_path

FORMAT_VERSION = 1
PREEMPTION_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class CheckpointError(PloutosError):
    """A checkpoint that cannot be used: unreadable, of another config, or of another format."""


@dataclass
class Checkpoint:
    """Everything a requeued task needs to continue where it stopped."""

    config_hash: str
    """The config that produced it; a checkpoint of another config is refused."""
    timesteps: int
    """Environment steps of the member so far, over every rank."""
    model_zip: bytes
    """The SB3 model saved as a zip (policy, optimizer, counters)."""
    norm_center: np.ndarray
    norm_scale: np.ndarray
    rank_rng: list[dict[str, Any]]
    """Per rank: ``python``, ``numpy``, ``torch`` and ``envs`` (each env's bit generator state)."""
    curve: dict[str, list[float]] = field(default_factory=dict)
    """Training curve rows so far (see :class:`ploutos.train.trainer.CurveWriter`)."""
    resumed: int = 0
    """How many times the task was resumed before this checkpoint."""
    wall_seconds: float = 0.0
    """Training time spent before this checkpoint, over every attempt."""
    format_version: int = FORMAT_VERSION

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            pickle.dump(self, handle, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def load(path: Path, *, config_hash: str) -> Checkpoint:
        try:
            with open(path, "rb") as handle:
                checkpoint = pickle.load(handle)
        except Exception as err:  # unpickling foreign bytes can raise nearly anything (ImportError, OverflowError...)
            raise CheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from None
        if not isinstance(checkpoint, Checkpoint) or checkpoint.format_version != FORMAT_VERSION:
            raise CheckpointError(f"{path}: not a Ploutos checkpoint of format {FORMAT_VERSION}; remove it to restart")
        if checkpoint.config_hash != config_hash:
            raise CheckpointError(
                f"{path}: checkpoint of config {checkpoint.config_hash}, not of this config {config_hash}; "
                "remove it to restart the task, or run with the config it was made with"
            )
        return checkpoint


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
    """Records SIGUSR2/SIGTERM instead of dying, so that the trainer can checkpoint first.

    While installed, a second signal of the same kind still only sets the flag; the previous
    handlers come back on :meth:`restore`.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> PreemptionFlag:
        for signum in PREEMPTION_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
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
