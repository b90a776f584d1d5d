"""Train one ensemble member on one walk-forward fold: the job of one Slurm array task.

:func:`train_task` runs the whole task on every rank of the node:

1. node rank 0 computes the features, normalizes them on the fold's training window only, and
   puts them in the node's /dev/shm store; every rank and env worker maps that one copy;
2. each rank builds its :class:`~ploutos.env.vec.ShmVecEnv` over the fold's training rows and the
   same PPO or RecurrentPPO model (seeded from the member seed; rank 0's weights are broadcast),
   with its own env seeds; gradients are averaged over the ranks before every optimizer step
   (:mod:`ploutos.train.distributed`), so the member trains ``total_timesteps`` over all ranks;
3. between rollouts the ranks agree on whether a preemption signal arrived; a checkpoint is
   written every ``ppo.checkpoint_every`` steps and on a signal, after which the task stops
   (:class:`Preempted`); run again, it resumes from the checkpoint to the same total;
4. rank 0 saves the model, evaluates it on the fold's test window against the benchmarks, and
   writes the task's HDF5 file; once every member of the fold has a model, it also evaluates the
   fold's ensemble.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger, TensorBoardOutputFormat
from stable_baselines3.common.vec_env import VecMonitor

from ploutos.config import Config, config_hash
from ploutos.errors import ConfigError, PloutosError
from ploutos.features.arrays import FeatureArrays
from ploutos.hardware import HardwarePlan, plan
from ploutos.parallel import node_context, node_feature_store, pin_threads
from ploutos.progress import progress_bar
from ploutos.results.layout import RunLayout
from ploutos.train.checkpoint import Checkpoint, PreemptionFlag, capture_rng, restore_rng
from ploutos.train.distributed import RankGroup
from ploutos.train.folds import Fold, plan_folds

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
class TaskOutcome:
    """What :func:`train_task` did."""

    fold: int
    member: int
    timesteps: int
    """Environment steps over every rank."""
    resumed: int
    result: Path | None
    """The task file (rank 0), None on other ranks."""
    ensemble: Path | None
    """The fold's ensemble file when this task completed the fold."""
    wall_seconds: float
    skipped: bool = False
    """The task's result already existed."""


def member_seed(base: int, fold: int, member: int) -> int:
    """A member's seed: independent streams for every (fold, member) of a base seed."""
    return int(np.random.SeedSequence([base, fold, member]).generate_state(1)[0] & 0x7FFFFFFF)


def algorithm(config: Config) -> Any:
    """The SB3 class of ``ppo.algo``."""
    if config.ppo.algo == "recurrent_ppo":
        from sb3_contrib import RecurrentPPO

        return RecurrentPPO
    from stable_baselines3 import PPO

    return PPO


def policy_name(config: Config) -> str:
    """The SB3 policy class name for ``ppo.algo`` and ``env.obs_layout``."""
    base = "MultiInput" if config.env.obs_layout != "flat" else "Mlp"
    return f"{base}LstmPolicy" if config.ppo.algo == "recurrent_ppo" else f"{base}Policy"


def build_model(config: Config, venv: Any, layout: HardwarePlan, seed: int) -> Any:
    """A fresh PPO / RecurrentPPO with the config's hyperparameters on ``venv``."""
    ppo = config.ppo
    recurrent = ppo.algo == "recurrent_ppo"
    arch = list(ppo.net_arch)
    policy_kwargs: dict[str, Any] = {"net_arch": {"pi": arch, "vf": arch}}
    if recurrent:
        policy_kwargs["lstm_hidden_size"] = ppo.lstm_hidden
    return algorithm(config)(
        policy_name(config),
        venv,
        n_steps=ppo.n_steps,
        batch_size=layout.batch_size,
        n_epochs=ppo.n_epochs,
        learning_rate=ppo.learning_rate,
        gamma=ppo.gamma,
        gae_lambda=ppo.gae_lambda,
        clip_range=ppo.clip_range,
        ent_coef=ppo.ent_coef,
        vf_coef=ppo.vf_coef,
        max_grad_norm=ppo.max_grad_norm,
        policy_kwargs=policy_kwargs,
        seed=seed,
        device=layout.device,
        verbose=0,
    )


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
    def __init__(self, task: _MemberTraining) -> None:
        super().__init__()
        self.task = task

    def _on_rollout_start(self) -> None:
        self.task.between_rollouts()
        # rollout batches are n_envs rows, too small to split across threads, and the env workers
        # need the cores meanwhile; the update gets the learner's threads back
        torch.set_num_threads(1)

    def _on_step(self) -> bool:
        return not self.task.stopping

    def _on_rollout_end(self) -> None:
        torch.set_num_threads(self.task.layout.learner_threads)
        self.task.rollout_done()


class _MemberTraining:
    """The state of one member's training on one rank."""

    def __init__(
        self, config: Config, fold: Fold, member: int, ranks: RankGroup, store_name: str, store_hash: str,
        layout: HardwarePlan, norm: tuple[np.ndarray, np.ndarray] | None, progress: bool,
    ) -> None:  # fmt: skip
        from ploutos.env.factory import StoreEnvFactory
        from ploutos.env.vec import ShmVecEnv

        self.config, self.fold, self.member, self.ranks, self.layout = config, fold, member, ranks, layout
        self.run = RunLayout.of(config)
        self.checkpoint_path = self.run.checkpoint(fold.index, member)
        self.seed = member_seed(config.seed, fold.index, member)
        self.local_total = math.ceil(config.ppo.total_timesteps / ranks.size)
        self.norm = norm
        """The fold's normalization center and scale (rank 0 built them; None on other ranks)."""
        self.stopping = False
        self.started_iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.flag = PreemptionFlag().install()
        self.curve: dict[str, list[float]] = {}
        self.resumed, self.wall_offset = 0, 0.0
        factory = StoreEnvFactory(
            store_name, store_hash, config.env, (fold.train.start, fold.train.stop), config.data.bars_per_year
        )
        self.venv = VecMonitor(
            ShmVecEnv([factory] * layout.n_envs, envs_per_worker=layout.envs_per_worker, copy_obs=False)
        )
        self.model: Any = None
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
        """A fresh model, or the one in the checkpoint."""
        norm = self.norm
        fingerprint = config_hash(self.config)
        checkpoint = None
        if self.checkpoint_path.exists():
            checkpoint = Checkpoint.load(self.checkpoint_path, config_hash=fingerprint) if self.ranks.is_root else None
        checkpoint = self.ranks.broadcast(checkpoint)
        if checkpoint is None:
            self.model = build_model(self.config, self.venv, self.layout, self.seed)
            self.venv.seed(self.seed + 100_003 * self.ranks.rank)  # rank's own episodes
            self.ranks.broadcast_parameters(self.model.policy)
        else:
            if norm is not None:
                _check_same_normalization(checkpoint, norm, self.checkpoint_path)
            self.model = algorithm(self.config).load(
                io.BytesIO(checkpoint.model_zip), env=self.venv, device=self.layout.device
            )
            rng = checkpoint.rank_rng[self.ranks.rank % len(checkpoint.rank_rng)]
            for index, generator in enumerate(restore_rng(rng)):
                if index < self.venv.num_envs:
                    self.venv.set_attr("np_random", generator, indices=index)
            self.curve = {key: list(values) for key, values in checkpoint.curve.items()}
            self.resumed, self.wall_offset = checkpoint.resumed + 1, checkpoint.wall_seconds
            self.last_checkpoint = checkpoint.timesteps
        self.ranks.average_before_step(self.model.policy.optimizer, list(self.model.policy.parameters()))
        formats: list[KVWriter] = [CurveWriter(self.curve, self.ranks.size, self.wall_offset)]
        if self.ranks.is_root:
            tensorboard = self.run.tensorboard(self.fold.index, self.member)
            tensorboard.mkdir(parents=True, exist_ok=True)
            formats.append(TensorBoardOutputFormat(str(tensorboard)))
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

    def replica_fingerprint(self) -> dict[str, str]:
        """This rank's parameters (equal on every rank) and last rollout (different on every rank)."""
        import hashlib

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
        preempted = self.ranks.any(self.flag.raised)
        if preempted or steps - self.last_checkpoint >= self.config.ppo.checkpoint_every:
            self.save_checkpoint()
        if preempted:
            self.stopping = True

    def rollout_done(self) -> None:
        if self.ranks.is_root:
            self.bar.update(self.timesteps - self.bar.n)

    @property
    def wall_seconds(self) -> float:
        return self.wall_offset + time.perf_counter() - self.started

    def save_checkpoint(self) -> None:
        """Collective: gathers every rank's RNG states; rank 0 writes the file."""
        generators = self.venv.get_attr("np_random")
        states = self.ranks.gather(capture_rng(generators))
        if self.ranks.is_root:
            buffer = io.BytesIO()
            self.model.save(buffer)
            Checkpoint(
                config_hash=config_hash(self.config),
                timesteps=self.timesteps,
                model_zip=buffer.getvalue(),
                norm_center=self.norm[0] if self.norm else np.zeros(0),
                norm_scale=self.norm[1] if self.norm else np.zeros(0),
                rank_rng=states or [],
                curve={key: list(values) for key, values in self.curve.items()},
                resumed=self.resumed,
                wall_seconds=self.wall_seconds,
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


def fold_features(config: Config, fold_index: int) -> tuple[FeatureArrays, Fold, Any]:
    """The fold's observation arrays, normalized on its training window, its fold and the statistics."""
    from ploutos.features import normalize
    from ploutos.features.pipeline import load_bars, observation_arrays

    arrays = observation_arrays(load_bars(config), config)
    fold = select_fold(arrays.timestamps, config, fold_index)
    normalized, stats = normalize(arrays, fold.train, config.features)
    return normalized, fold, stats


def select_fold(timestamps: np.ndarray, config: Config, fold_index: int) -> Fold:
    folds = plan_folds(timestamps, config.walkforward, lookback=config.env.lookback)
    if not 0 <= fold_index < len(folds):
        raise ConfigError(
            f"fold {fold_index} does not exist: the walk-forward plan has {len(folds)} fold(s), 0..{len(folds) - 1} "
            "(see `ploutos folds`)"
        )
    return folds[fold_index]


def fold_bounds(fold: Fold) -> dict[str, Any]:
    def iso(moment: np.datetime64) -> str:
        return f"{np.datetime_as_string(moment, unit='s')}Z"

    return {
        "train_start": iso(fold.train_start),
        "train_end": iso(fold.train_end),
        "test_start": iso(fold.test_start),
        "test_end": iso(fold.test_end),
        "train_rows": [fold.train.start, fold.train.stop],
        "test_rows": [fold.test.start, fold.test.stop],
        "embargo_bars": fold.embargo,
    }


def train_task(
    config: Config, fold_index: int, member: int, *, progress: bool = True, force: bool = False
) -> TaskOutcome:
    """Train, evaluate and record one (fold, member) on every rank of this node (see the module doc)."""
    members = config.ensemble.members
    if not 0 <= member < members:
        raise ConfigError(f"member {member} does not exist: ensemble.members is {members} (0..{members - 1})")
    ctx = node_context()
    ranks = RankGroup(ctx)
    run = RunLayout.of(config)
    result_path = run.result(fold_index, member)
    done = ranks.broadcast(result_path.exists() and not force)
    if done:
        return TaskOutcome(fold_index, member, 0, 0, result_path if ranks.is_root else None, None, 0.0, skipped=True)
    layout = plan(config)
    pin_threads(layout.learner_threads)
    torch.set_num_threads(layout.learner_threads)
    fingerprint = config_hash(config)
    store_hash = f"{fingerprint}-fold{fold_index}"
    built: dict[str, Any] = {}

    def build() -> FeatureArrays:
        arrays, built["fold"], built["stats"] = fold_features(config, fold_index)
        return arrays

    with node_feature_store(build, config_hash=store_hash, ctx=ctx, tag=f"f{fold_index}m{member}") as store:
        arrays = store.to_arrays()
        fold = built.get("fold") or select_fold(arrays.timestamps, config, fold_index)
        if ranks.is_root:  # once the data and the fold are known good
            run.prepare(config)
        ranks.barrier()
        stats = built.get("stats")
        norm = (stats.center, stats.scale) if stats is not None else None
        training = _MemberTraining(config, fold, member, ranks, store.name, store_hash, layout, norm, progress)
        try:
            training.start()
            training.learn()
            if training.stopping:
                raise Preempted(
                    f"fold {fold_index} member {member}: {training.flag.name} received; checkpointed at "
                    f"{training.last_checkpoint} of {config.ppo.total_timesteps} steps in {training.checkpoint_path}; "
                    "run the same command again to resume",
                    training.flag.signal or 0,
                )
            timesteps, wall = training.timesteps, training.wall_seconds
            outcome = TaskOutcome(fold_index, member, timesteps, training.resumed, None, None, wall)
            if ranks.is_root:
                from ploutos.train.record import record_member

                outcome = record_member(config, fold, member, training, arrays, stats, outcome)
        finally:
            training.close()
        ranks.barrier()
    return outcome
