"""One task of the grid, one (fold, member), on every rank of the node: the job of one Slurm array task.

:func:`run_task` is what ``ploutos train``, every launcher and ``ploutos run`` call:

1. a task whose file exists is skipped (unless forced);
2. node rank 0 computes the features, normalizes them on the fold's training window only, and
   puts them in the node's /dev/shm store; every rank and env worker maps that one copy;
3. every rank trains the member (:class:`~ploutos.train.trainer.MemberTraining`: checkpoints in
   the run folder, resume, preemption);
4. rank 0 records it (:func:`~ploutos.pipeline.record.record_member`): model, evaluation on the
   fold's test window, the task file, and the fold's ensemble once every member has a model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ploutos.config import Config, config_hash
from ploutos.errors import ConfigError
from ploutos.features.arrays import FeatureArrays
from ploutos.node.context import node_context, node_feature_store, pin_threads
from ploutos.node.hardware import plan
from ploutos.pipeline.record import record_member
from ploutos.results.layout import RunLayout
from ploutos.train.distributed import RankGroup
from ploutos.train.folds import fold_features, select_fold
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
    wall_seconds: float
    skipped: bool = False
    """The task's result already existed."""


def run_task(
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
    if ranks.broadcast(result_path.exists() and not force):
        return TaskOutcome(fold_index, member, 0, 0, result_path if ranks.is_root else None, None, 0.0, skipped=True)
    layout = plan(config)
    pin_threads(layout.learner_threads)
    store_hash = f"{config_hash(config)}-fold{fold_index}"
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
        files = TrainingFiles(run.checkpoint(fold_index, member), run.tensorboard(fold_index, member))
        training = MemberTraining(config, fold, member, ranks, store.name, store_hash, layout, norm, files, progress)
        try:
            training.run()
            outcome = TaskOutcome(
                fold_index, member, training.timesteps, training.resumed, None, None, training.wall_seconds
            )
            if ranks.is_root:
                result, ensemble = record_member(config, fold, member, training.trained(), arrays, stats)
                outcome = replace(outcome, result=result, ensemble=ensemble)
        finally:
            training.close()
        ranks.barrier()
    return outcome
