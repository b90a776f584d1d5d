"""Train one ensemble member on one walk-forward fold, on every rank of the node.

:class:`MemberTraining` is the learning part of a task (:func:`ploutos.pipeline.task.run_task`
runs the whole task: the node's feature store, this, then the task files):

1. the features are already in the node's /dev/shm store, normalized on the fold's training
   window; every rank and env worker maps that one copy;
2. each rank builds its :class:`~ploutos.env.vec.ShmVecEnv` over the fold's training rows and the
   same PPO or RecurrentPPO model (seeded from the member seed; rank 0's weights are broadcast),
   with its own env seeds; gradients are averaged over the ranks before every optimizer step
   (:mod:`ploutos.train.distributed`), so the member trains ``total_timesteps`` over all ranks;
3. between rollouts the ranks agree on whether a preemption signal arrived; a checkpoint is
   written every ``ppo.checkpoint_every`` steps and on a signal, after which the task stops
   (:class:`Preempted`); run again, it resumes from the checkpoint to the same total;
4. :meth:`MemberTraining.trained` hands the model, its curve and the facts of the run to whoever
   records them; this module knows nothing of run folders or task files, only the two paths of
   :class:`TrainingFiles`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger, TensorBoardOutputFormat
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from ploutos.config import Config, config_hash
from ploutos.env.batched import BatchedVecEnv
from ploutos.env.factory import StoreEnvFactory
from ploutos.env.trading import TradingEnv
from ploutos.env.vec import ShmVecEnv
from ploutos.errors import ConfigError, PloutosError
from ploutos.features.arrays import FeatureArrays
from ploutos.node.hardware import HardwarePlan
from ploutos.progress import progress_bar
from ploutos.train.checkpoint import Checkpoint, PreemptionFlag, capture_rng, restore_rng
from ploutos.train.distributed import RankGroup
from ploutos.train.folds import Fold
from ploutos.train.model import build_model, member_seed
from ploutos.train.scalars import EpisodeScalars, write_scalars
from ploutos.train.selection import Selection, Validator

CURVE_KEYS = {
    "time/total_timesteps": "timesteps",
    "rollout/ep_rew_mean": "ep_rew_mean",
    "rollout/ep_len_mean": "ep_len_mean",
    "train/policy_gradient_loss": "policy_gradient_loss",
    "train/value_loss": "value_loss",
    "train/entropy_loss": "entropy_loss",
    "train/approx_kl": "approx_kl",
    "train/clip_fraction": "clip_fraction",
    "train/explained_variance": "explained_variance",
    "time/fps": "fps",
}
"""SB3 logger keys kept in the training curve, and their column names."""
CURVE_COLUMNS = ("timesteps", "wall_seconds", *list(CURVE_KEYS.values())[1:])


class Preempted(PloutosError):
    """The task checkpointed after a preemption signal and stopped; running it again resumes it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass(frozen=True)
class TrainingFiles:
    """Where a member's training writes, chosen by the caller (the run folder's layout)."""

    checkpoint: Path
    """The checkpoint file: read to resume, written every ``ppo.checkpoint_every`` steps and on a signal."""
    tensorboard: Path
    """TensorBoard event folder (rank 0 writes it)."""


@dataclass(frozen=True)
class TrainedMember:
    """A finished member's training, as the task's records need it (rank 0)."""

    model: Any
    """The SB3 model."""
    seed: int
    """The member seed, also used for the evaluation's bootstrap."""
    timesteps: int
    """Environment steps over every rank."""
    resumed: int
    """Times the training resumed from a checkpoint."""
    wall_seconds: float
    """Training time, over every resumption."""
    started: str
    """ISO UTC time the latest (resumed) training started."""
    ranks: int
    """Data-parallel learner ranks."""
    layout: HardwarePlan
    """Envs, env workers and device it ran with."""
    curve: dict[str, list[float]]
    """The training curve (:data:`CURVE_COLUMNS`)."""
    replicas: list[dict[str, str]]
    """Every rank's parameter and rollout digests."""
    validation: dict[str, Any]
    """The validation curve and the chosen checkpoint (empty without a validation window)."""


class CurveWriter(KVWriter):
    """Keeps the SB3 logger's rows as the training curve (timesteps counted over every rank)."""

    def __init__(self, curve: dict[str, list[float]], ranks: int, wall_offset: float) -> None:
        self.curve = curve
        for column in CURVE_COLUMNS:
            curve.setdefault(column, [])
        self.ranks, self.wall_offset, self.started = ranks, wall_offset, time.perf_counter()

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        # SB3 logs a rollout's statistics before the update that follows it, next to the losses of
        # the previous update: the losses belong to the previous row
        curve, timesteps = self.curve, float(step * self.ranks)
        if curve["timesteps"]:
            for key, name in CURVE_KEYS.items():
                if key.startswith("train/") and key in key_values:
                    curve[name][-1] = float(key_values[key])
        if curve["timesteps"] and curve["timesteps"][-1] == timesteps:
            return  # the dump after the last update: its losses are placed, there is no new rollout
        row = {name: float(key_values.get(key, math.nan)) for key, name in CURVE_KEYS.items() if key[:6] != "train/"}
        row["timesteps"] = timesteps
        row["wall_seconds"] = self.wall_offset + time.perf_counter() - self.started
        for column in CURVE_COLUMNS:
            curve[column].append(row.get(column, math.nan))

    def close(self) -> None:
        pass


class _TaskCallback(BaseCallback):
    def __init__(self, task: MemberTraining) -> None:
        super().__init__()
        self.task = task

    def _on_rollout_start(self) -> None:
        self.task.between_rollouts()
        # rollout batches are n_envs rows, too small to split across threads, and the env workers
        # need the cores meanwhile; the update gets the learner's threads back
        torch.set_num_threads(1)

    def _on_step(self) -> bool:
        if self.task.episodes is not None:
            self.task.episodes.step(self.locals["infos"], self.locals["dones"])
        return not (self.task.stopping or self.task.stopped_early)

    def _on_rollout_end(self) -> None:
        torch.set_num_threads(self.task.layout.learner_threads)
        self.task.rollout_done()


def make_venv(
    config: Config, fold: Fold, layout: HardwarePlan, arrays: FeatureArrays, store_name: str, store_hash: str
) -> VecEnv:
    """The rank's envs over the fold's training rows, where the plan puts them: stepped as one core in
    this process (``layout.workers == 0``), or by worker processes that map the node store by name."""
    rows, bars = (fold.train.start, fold.train.stop), config.data.bars_per_year
    if layout.workers == 0:
        make = functools.partial(TradingEnv, arrays, config.env, rows=slice(*rows), bars_per_year=bars)
        return BatchedVecEnv([make] * layout.n_envs, copy_obs=False)
    factory = StoreEnvFactory(store_name, store_hash, config.env, rows, bars)
    return ShmVecEnv([factory] * layout.n_envs, envs_per_worker=layout.envs_per_worker, copy_obs=False)


class MemberTraining:
    """The state of one member's training on one rank; :meth:`run` trains it to the config's total."""

    def __init__(
        self, config: Config, fold: Fold, member: int, ranks: RankGroup, store_name: str, store_hash: str,
        layout: HardwarePlan, norm: tuple[np.ndarray, np.ndarray] | None, files: TrainingFiles, progress: bool,
        arrays: FeatureArrays,
    ) -> None:  # fmt: skip
        self.config, self.fold, self.member, self.ranks, self.layout = config, fold, member, ranks, layout
        self.files = files
        self.checkpoint_path = files.checkpoint
        self.seed = member_seed(config.seed, fold.index, member)
        self.local_total = math.ceil(config.ppo.total_timesteps / ranks.size)
        self.norm = norm
        """The fold's normalization center and scale (rank 0 built them; None on other ranks)."""
        self.stopping = False
        self.stopped_early = False
        """Validation patience ran out: the member is done before ``total_timesteps``."""
        self.arrays = arrays
        self.validator = Validator(config, fold, arrays)
        self.started_iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.flag = PreemptionFlag().install()
        self.curve: dict[str, list[float]] = {}
        self.resumed, self.wall_offset = 0, 0.0
        self.venv = VecMonitor(make_venv(config, fold, layout, arrays, store_name, store_hash))
        self.model: Any = None
        self.tensorboard: Any = None
        """Rank 0's TensorBoard writer (``SummaryWriter``), for the trading scalars."""
        self.episodes = (
            EpisodeScalars(layout.n_envs, config.env.initial_cash, config.data.bars_per_year) if ranks.is_root else None
        )
        self.replicas: list[dict[str, str]] = []
        """Every rank's :meth:`replica_fingerprint` at the end (on rank 0)."""
        self.last_checkpoint = 0
        rollout = layout.n_steps * layout.n_envs  # SB3 stops at the first whole rollout past the total
        self.bar = progress_bar(
            total=math.ceil(self.local_total / rollout) * rollout * ranks.size,
            enabled=progress and ranks.is_root,
            desc=f"fold {fold.index} member {member}",
            unit="step",
        )

    @property
    def timesteps(self) -> int:
        """Member steps over every rank."""
        return int(self.model.num_timesteps) * self.ranks.size if self.model is not None else 0

    def start(self) -> None:
        """A fresh model, or one built the same way and loaded with the checkpoint's states."""
        fingerprint = config_hash(self.config)
        checkpoint = None
        if self.checkpoint_path.exists():
            checkpoint = Checkpoint.load(self.checkpoint_path, config_hash=fingerprint) if self.ranks.is_root else None
        checkpoint = self.ranks.broadcast(checkpoint)
        if checkpoint is None:
            self.model = build_model(self.config, self.venv, self.layout, self.seed, self.arrays.values)
            self.venv.seed(self.seed + 100_003 * self.ranks.rank)  # rank's own episodes
            self.ranks.broadcast_parameters(self.model.policy)
        else:
            if self.norm is not None:
                _check_same_normalization(checkpoint, self.norm, self.checkpoint_path)
            # seeds come from the RNG states
            self.model = build_model(self.config, self.venv, self.layout, seed=None, values=self.arrays.values)
            self.model.policy.load_state_dict(checkpoint.policy)
            self.model.policy.optimizer.load_state_dict(checkpoint.optimizer)
            learner = checkpoint.learner
            self.model.num_timesteps = int(learner["num_timesteps"])
            self.model._n_updates = int(learner["n_updates"])
            self.model.ep_info_buffer = deque(learner["episodes"], maxlen=self.model._stats_window_size)
            self.model.ep_success_buffer = deque(maxlen=self.model._stats_window_size)
            rng = checkpoint.rank_rng[self.ranks.rank % len(checkpoint.rank_rng)]
            for index, generator in enumerate(restore_rng(rng)):
                if index < self.venv.num_envs:
                    self.venv.set_attr("np_random", generator, indices=index)
            self.curve = {key: list(values) for key, values in checkpoint.curve.items()}
            self.resumed, self.wall_offset = checkpoint.resumed + 1, checkpoint.wall_seconds
            self.last_checkpoint = checkpoint.timesteps
            if checkpoint.selection:
                selection = Selection.from_state(checkpoint.selection, checkpoint.best_policy)
                self.validator = Validator(self.config, self.fold, self.arrays, selection)
        self.ranks.average_before_step(self.model.policy.optimizer, list(self.model.policy.parameters()))
        formats: list[KVWriter] = [CurveWriter(self.curve, self.ranks.size, self.wall_offset)]
        if self.ranks.is_root:
            self.files.tensorboard.mkdir(parents=True, exist_ok=True)
            board = TensorBoardOutputFormat(str(self.files.tensorboard))
            self.tensorboard = board.writer
            formats.append(board)
        self.model.set_logger(Logger(folder=None, output_formats=formats))
        self.bar.update(self.timesteps)
        self.started = time.perf_counter()

    def learn(self) -> None:
        remaining = self.local_total - int(self.model.num_timesteps)
        if remaining > 0:
            self.model.learn(remaining, callback=_TaskCallback(self), reset_num_timesteps=False)
            if not self.stopping:
                self.model.logger.dump(self.model.num_timesteps)  # the last update's losses
        if not self.stopping:
            self.replicas = self.ranks.gather(self.replica_fingerprint()) or []
            if self.ranks.is_root and self.validator.enabled:
                if self.validator.last != self.timesteps:
                    self.validator.validate(self.model, self.timesteps)  # the final weights are a candidate
                    self.log_validation()
                self.validator.keep_best(self.model)

    def run(self) -> None:
        """Start (or resume) and train to the total; :class:`Preempted` after a signal's checkpoint."""
        self.start()
        self.learn()
        if self.stopping:
            raise Preempted(
                f"fold {self.fold.index} member {self.member}: {self.flag.name} received; checkpointed at "
                f"{self.last_checkpoint} of {self.config.ppo.total_timesteps} steps in {self.checkpoint_path}; "
                "run the same command again to resume",
                self.flag.signal or 0,
            )

    def trained(self) -> TrainedMember:
        """The finished training, for the task's records."""
        return TrainedMember(
            model=self.model,
            seed=self.seed,
            timesteps=self.timesteps,
            resumed=self.resumed,
            wall_seconds=self.wall_seconds,
            started=self.started_iso,
            ranks=self.ranks.size,
            layout=self.layout,
            curve=self.curve,
            replicas=self.replicas,
            validation=self.validator.record(),
        )

    def replica_fingerprint(self) -> dict[str, str]:
        """This rank's parameters (equal on every rank) and last rollout (different on every rank)."""
        observations = self.model.rollout_buffer.observations
        if isinstance(observations, dict):
            observations = np.concatenate([np.ravel(v) for v in observations.values()])
        return {
            "parameters": self.ranks.parameter_digest(self.model.policy)[:16],
            "rollout": hashlib.sha256(np.ascontiguousarray(observations).tobytes()).hexdigest()[:16],
        }

    def between_rollouts(self) -> None:
        """Collective: every rank calls it before every rollout, at the same step count."""
        steps = self.timesteps
        if steps == 0 or self.stopping:
            return
        if self.validator.due(steps):
            if self.ranks.is_root:
                self.validator.validate(self.model, steps)
                self.log_validation()
            self.validator.last = steps
            self.stopped_early = bool(self.ranks.broadcast(self.validator.exhausted if self.ranks.is_root else None))
        preempted = self.ranks.any(self.flag.raised)
        if preempted or steps - self.last_checkpoint >= self.config.ppo.checkpoint_every:
            self.save_checkpoint()
        if preempted:
            self.stopping = True

    def rollout_done(self) -> None:
        if self.ranks.is_root:
            self.bar.update(self.timesteps - self.bar.n)
            if self.tensorboard is not None and self.episodes is not None:
                write_scalars(self.tensorboard, self.episodes.drain(), self.timesteps)

    def log_validation(self) -> None:
        """Rank 0: the latest validation's row in TensorBoard, at the step it was taken."""
        curve = self.validator.selection.curve
        if self.tensorboard is not None and curve["timesteps"]:
            row = {f"validation/{key}": values[-1] for key, values in curve.items() if key != "timesteps"}
            write_scalars(self.tensorboard, row, int(curve["timesteps"][-1]))

    @property
    def wall_seconds(self) -> float:
        return self.wall_offset + time.perf_counter() - self.started

    def save_checkpoint(self) -> None:
        """Collective: gathers every rank's RNG states; rank 0 writes the file."""
        generators = self.venv.get_attr("np_random")
        states = self.ranks.gather(capture_rng(generators))
        if self.ranks.is_root:
            Checkpoint(
                config_hash=config_hash(self.config),
                timesteps=self.timesteps,
                policy=self.model.policy.state_dict(),
                optimizer=self.model.policy.optimizer.state_dict(),
                learner={
                    "num_timesteps": int(self.model.num_timesteps),
                    "n_updates": int(self.model._n_updates),
                    "episodes": [{k: float(v) for k, v in info.items()} for info in self.model.ep_info_buffer or []],
                },
                norm_center=self.norm[0] if self.norm else np.zeros(0),
                norm_scale=self.norm[1] if self.norm else np.zeros(0),
                rank_rng=states or [],
                curve={key: list(values) for key, values in self.curve.items()},
                resumed=self.resumed,
                wall_seconds=self.wall_seconds,
                selection=self.validator.selection.state(),
                best_policy=self.validator.selection.best_policy,
            ).save(self.checkpoint_path)
        self.last_checkpoint = self.timesteps

    def close(self) -> None:
        self.flag.restore()
        self.bar.close()
        self.venv.close()


def _check_same_normalization(checkpoint: Checkpoint, norm: tuple[np.ndarray, np.ndarray], path: Path) -> None:
    if not (np.array_equal(checkpoint.norm_center, norm[0]) and np.array_equal(checkpoint.norm_scale, norm[1])):
        raise ConfigError(
            f"{path}: the fold's normalization statistics differ from the checkpoint's (the dataset changed); "
            "remove the checkpoint to restart the task"
        )
