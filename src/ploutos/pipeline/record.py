"""After a member's training: save its model, evaluate it and its fold's ensemble, write the task files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ploutos.analytics.drift import METHOD, PROBABILITIES, reference_sketch
from ploutos.analytics.evaluation import FoldEvaluation
from ploutos.config import Config, config_hash, dump
from ploutos.features.arrays import FeatureArrays
from ploutos.features.normalize import NormStats
from ploutos.results.hdf5 import DriftReference, TaskResult, task_file_problem, write_task_result
from ploutos.results.layout import RunLayout
from ploutos.results.provenance import provenance
from ploutos.train.artifacts import load_policy, save_policy
from ploutos.train.evaluate import Actor, Ensemble, evaluate
from ploutos.train.folds import Fold, fold_features
from ploutos.train.trainer import TrainedMember


def evaluate_fold(actor: Actor, arrays: FeatureArrays, fold: Fold, config: Config, seed: int) -> FoldEvaluation:
    """``actor`` over the fold's test window, beside the benchmarks."""
    rows = fold.eval_rows(config.env.lookback)
    return evaluate(actor, arrays, config.env, rows, config.data.bars_per_year, seed=seed)


def drift_reference(arrays: FeatureArrays, fold: Fold) -> DriftReference:
    """The sketch of the features the agent saw on the fold's training window (normalized, valid entries)."""
    quantiles, cdf, rows = reference_sketch(arrays.values[fold.train], arrays.valid[fold.train], PROBABILITIES)
    return DriftReference(quantiles, cdf, PROBABILITIES, rows, METHOD)


def _result(
    config: Config, fold: Fold, member: int | None, arrays: FeatureArrays, stats: NormStats | None,
    evaluation: FoldEvaluation, record: dict[str, Any], training: dict[str, Any],
    validation: dict[str, Any] | None = None,
) -> TaskResult:  # fmt: skip
    return TaskResult(
        fold=fold.index,
        member=member,
        run=config.name,
        config_hash=config_hash(config),
        config_yaml=dump(config),
        provenance=record,
        fold_bounds=fold.bounds(),
        tickers=tuple(arrays.tickers),
        feature_names=tuple(arrays.names),
        norm_center=stats.center if stats is not None else [],
        norm_scale=stats.scale if stats is not None else [],
        evaluation=evaluation,
        training=training,
        validation=validation or {},
        drift=drift_reference(arrays, fold),
    )


def record_member(
    config: Config, fold: Fold, member: int, trained: TrainedMember, arrays: FeatureArrays, stats: NormStats | None
) -> tuple[Path, Path | None]:
    """Rank 0: model file, evaluation, task file; then the ensemble's file if this completed the fold.

    Returns the task file and the ensemble's file (None while members are missing).
    """
    run = RunLayout.of(config)
    save_policy(trained.model, run.model(fold.index, member), config)
    evaluation = evaluate_fold(trained.model, arrays, fold, config, seed=trained.seed)
    record = provenance(config.data.store)
    record.update(
        ranks=trained.ranks,
        started=trained.started,
        finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        wall_seconds=trained.wall_seconds,
        timesteps=trained.timesteps,
        resumed=trained.resumed,
        n_envs=trained.layout.n_envs,
        env_workers=trained.layout.workers,
        device=trained.layout.device,
        replica_parameters=[replica["parameters"] for replica in trained.replicas],
        replica_rollouts=[replica["rollout"] for replica in trained.replicas],
    )
    result = run.result(fold.index, member)
    task = _result(config, fold, member, arrays, stats, evaluation, record, trained.curve, trained.validation)
    write_task_result(result, task)
    run.checkpoint(fold.index, member).unlink(missing_ok=True)  # the result is final; a rerun skips the task
    ensemble = evaluate_ensemble(config, fold, arrays, stats, record) if fold_complete(config, fold.index) else None
    return result, ensemble


def ensure_ensemble(config: Config, fold_index: int) -> Path | None:
    """Rebuild the fold's ensemble file when every member has its model but the file is missing or
    unusable (a kill between the last member's file and the ensemble's leaves that state)."""
    run = RunLayout.of(config)
    path = run.result(fold_index, None)
    if not fold_complete(config, fold_index) or task_file_problem(path, fold_index, None, config_hash(config)) is None:
        return None
    arrays, fold, stats = fold_features(config, fold_index)
    return evaluate_ensemble(config, fold, arrays, stats, provenance(config.data.store))


def fold_complete(config: Config, fold_index: int) -> bool:
    """Whether every member of the fold has its model."""
    run = RunLayout.of(config)
    return all(run.model(fold_index, m).exists() for m in range(config.ensemble.members))


def evaluate_ensemble(
    config: Config, fold: Fold, arrays: FeatureArrays, stats: NormStats | None, record: dict[str, Any]
) -> Path:
    """Load every member of the fold, evaluate them as one policy, write ``fold<F>_ensemble.h5``."""
    run = RunLayout.of(config)
    members = [load_policy(run.model(fold.index, m), config_hash(config)) for m in range(config.ensemble.members)]
    ensemble = Ensemble(members, config.ensemble.combine)
    evaluation = evaluate_fold(ensemble, arrays, fold, config, seed=config.seed)
    record = {**record, "members": config.ensemble.members, "combine": config.ensemble.combine}
    path = run.result(fold.index, None)
    write_task_result(path, _result(config, fold, None, arrays, stats, evaluation, record, {}))
    return path
