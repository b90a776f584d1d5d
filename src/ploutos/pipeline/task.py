"""One task of the grid, one (fold, member), on every rank of the node: the job of one Slurm array task.

:func:`run_task` is what ``ploutos train``, every launcher and ``ploutos run`` call:

1. a task whose file is a usable result is skipped (unless forced); a missing, damaged or foreign
   file is trained again, and a fold whose members are all done gets its ensemble file back if
   that is missing or damaged;
2. the task's lock (:mod:`ploutos.results.locks`) is taken, so that no other process trains it
   meanwhile (:class:`~ploutos.results.locks.TaskHeld` names the holder);
3. node rank 0 computes the features, normalizes them on the fold's training window only, and
   puts them in the node's /dev/shm store; every rank and env worker maps that one copy;
4. every rank trains the member (:class:`~ploutos.train.trainer.MemberTraining`: checkpoints in
   the run folder, resume, preemption);
5. rank 0 records it (:func:`~ploutos.pipeline.record.record_member`): model, evaluation on the
   fold's test window, the task file, and the fold's ensemble once every member has a model.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ploutos.config import Config, config_hash
from ploutos.errors import ConfigError
from ploutos.features.arrays import FeatureArrays
from ploutos.node.allocator import keep_freed_memory
from ploutos.node.context import NodeContext, node_context, node_feature_store, pin_threads
from ploutos.node.hardware import HardwarePlan, PlanWarning, plan
from ploutos.pipeline.record import ensure_ensemble, record_member
from ploutos.results.hdf5 import task_file_problem
from ploutos.results.layout import RunLayout
from ploutos.results.locks import TaskHeld, TaskLock
from ploutos.train.distributed import RankGroup
from ploutos.train.folds import Fold, fold_features, select_fold
from ploutos.train.trainer import MemberTraining, TrainingFiles


@dataclass(frozen=True)
class TaskOutcome:
    """What :func:`run_task` did."""

    fold: int
    member: int
    timesteps: int
    """Environment steps over every rank."""
    resumed: int
    result: Path | None
    """The task file (rank 0), None on other ranks."""
    ensemble: Path | None
    """The fold's ensemble file when this task completed the fold."""
    training_seconds: float
    """Wall-clock seconds of PPO training itself (over every session of a resumed task), 0 when skipped."""
    skipped: bool = False
    """The task's result already existed."""
    redone: str = ""
    """Why an existing task file was not accepted and the task trained again (empty otherwise)."""
    task_seconds: float = 0.0
    """Wall-clock seconds of this call, all of it: checks, features, the store, training, evaluation, files."""


def run_task(
    config: Config, fold_index: int, member: int, *, progress: bool = True, force: bool = False
) -> TaskOutcome:
    """Train, evaluate and record one (fold, member) on every rank of this node (see the module doc)."""
    started = time.perf_counter()
    members = config.ensemble.members
    if not 0 <= member < members:
        raise ConfigError(f"member {member} does not exist: ensemble.members is {members} (0..{members - 1})")
    ctx = node_context()
    ranks = RankGroup(ctx)
    run = RunLayout.of(config)
    result_path = run.result(fold_index, member)
    problem = task_file_problem(result_path, fold_index, member, config_hash(config)) if ranks.is_root else None
    if ranks.broadcast(problem is None and not force):
        ensemble = ensure_ensemble(config, fold_index) if ranks.is_root else None
        skipped = TaskOutcome(fold_index, member, 0, 0, result_path if ranks.is_root else None, ensemble, 0.0, True)
        return replace(skipped, task_seconds=time.perf_counter() - started)
    redone = f"{result_path.name} {problem[0]}: {problem[1]}" if problem and problem[0] != "missing" else ""
    outcome = _train_and_record(config, fold_index, member, ctx, ranks, progress, force)
    return replace(outcome, redone=redone, task_seconds=time.perf_counter() - started)


def _train_and_record(
    config: Config, fold_index: int, member: int, ctx: NodeContext, ranks: RankGroup, progress: bool, force: bool
) -> TaskOutcome:
    run = RunLayout.of(config)
    layout = plan(config)
    layout.require()
    for warning in layout.warnings if ranks.is_root else ():
        warnings.warn(warning, PlanWarning, stacklevel=1)
    pin_threads(layout.learner_threads)
    if config.hardware.keep_freed_memory:
        keep_freed_memory()
    store_hash = f"{config_hash(config)}-fold{fold_index}"
    built: dict[str, Any] = {}

    def build() -> FeatureArrays:
        arrays, built["fold"], built["stats"] = fold_features(config, fold_index)
        return arrays

    with node_feature_store(build, config_hash=store_hash, ctx=ctx, tag=f"f{fold_index}m{member}") as store:
        arrays = store.to_arrays()
        fold = built.get("fold") or select_fold(arrays.timestamps, config, fold_index)
        lock = TaskLock(run.lock(fold_index, member), run.task_name(fold_index, member))
        held = ""
        if ranks.is_root:  # once the data and the fold are known good
            run.prepare(config)
            held = _claim(lock, run, config, fold_index, member, force)
        if held := ranks.broadcast(held):
            if held == "done":  # another process finished it while this one computed the features
                return TaskOutcome(fold_index, member, 0, 0, run.result(fold_index, member), None, 0.0, True)
            raise TaskHeld(held)
        try:
            outcome = _train(config, fold, member, ranks, store.name, store_hash, layout, arrays, built, progress)
        finally:
            lock.release()
        ranks.barrier()
    return outcome


def _claim(lock: TaskLock, run: RunLayout, config: Config, fold_index: int, member: int, force: bool) -> str:
    """Rank 0: take the task's lock; ``""`` when taken, ``"done"`` when the task finished meanwhile,
    else why it is held."""
    try:
        lock.acquire()
    except TaskHeld as err:
        return str(err)
    if not force and task_file_problem(run.result(fold_index, member), fold_index, member, config_hash(config)) is None:
        lock.release()
        return "done"
    return ""


def _train(
    config: Config, fold: Fold, member: int, ranks: RankGroup, store_name: str, store_hash: str, layout: HardwarePlan,
    arrays: FeatureArrays, built: dict[str, Any], progress: bool,
) -> TaskOutcome:  # fmt: skip
    """Every rank: train the member on the store; rank 0 records it."""
    run, stats = RunLayout.of(config), built.get("stats")
    norm = (stats.center, stats.scale) if stats is not None else None
    files = TrainingFiles(run.checkpoint(fold.index, member), run.tensorboard(fold.index, member))
    training = MemberTraining(
        config, fold, member, ranks, store_name, store_hash, layout, norm, files, progress, arrays
    )
    try:
        training.run()
        outcome = TaskOutcome(
            fold.index, member, training.timesteps, training.resumed, None, None, training.wall_seconds
        )
        if ranks.is_root:
            result, ensemble = record_member(config, fold, member, training.trained(), arrays, stats)
            outcome = replace(outcome, result=result, ensemble=ensemble)
    finally:
        training.close()
    return outcome
