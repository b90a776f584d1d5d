"""``ploutos validate``: the whole pipeline of a config on a tiny budget, stage by stage.

Before spending cluster hours, run every stage once: data, walk-forward plan, features of the
first fold, one rollout of training per ensemble member (node store, env workers, PPO update,
checkpoint), evaluation against the benchmarks, the fold's ensemble, and the task files checked
against the schema. Results go to ``<results_dir>/<name>-validate`` (replaced on every run), so a
real run of the same name is never touched.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ploutos.config import Config
from ploutos.data.build import build_dataset
from ploutos.errors import PloutosError, first_line
from ploutos.node.hardware import plan
from ploutos.pipeline.task import run_task
from ploutos.results.hdf5 import missing_fields, read_metrics
from ploutos.results.layout import RunLayout
from ploutos.train.folds import fold_features, plan_for


class ValidationFailed(PloutosError):
    """A stage failed; the message names it."""


def tiny(config: Config) -> Config:
    """The config on a budget of two rollouts per member (a checkpoint between them), in its own run folder."""
    layout = plan(config)
    rollout = layout.rollout * layout.ranks
    ppo = replace(config.ppo, total_timesteps=2 * rollout, checkpoint_every=rollout)
    return replace(config, name=f"{config.name}-validate", ppo=ppo)


def validate(config: Config, *, echo: Callable[[str], Any] = print) -> Config:
    """Run every stage; print one line per stage; raise :class:`ValidationFailed` at the first failure."""
    small = tiny(config)
    run = RunLayout.of(small)
    facts: dict[str, Any] = {}

    def stage(name: str, doing: str, work: Callable[[], str]) -> None:
        echo(f"[ .. ] {name:<10} {doing} ...")  # a stage can take minutes: say what is running
        started = time.perf_counter()
        try:
            detail = work()
        except Exception as err:
            echo(f"[FAIL] {name:<10} {type(err).__name__}: {first_line(err)}")
            raise ValidationFailed(f"validate: stage {name} failed: {first_line(err)}") from err
        echo(f"[ ok ] {name:<10} {detail} ({time.perf_counter() - started:.1f} s)")

    def data() -> str:
        return build_dataset(config.data, progress=False).summary().splitlines()[-1]

    def folds() -> str:
        planned = plan_for(config)
        facts["folds"] = len(planned)
        members = config.ensemble.members
        return f"{len(planned)} fold(s) x {members} member(s); fold 0 trains on {planned[0].train_bars} bars"

    def features() -> str:
        arrays, fold, stats = fold_features(config, 0)
        worst = max(stats.saturation.values(), default=0.0)
        return (
            f"{arrays.shape[2]} features x {arrays.shape[1]} asset(s) x {arrays.shape[0]} bars; "
            f"largest share at the clip bound {worst:.2%}"
        )

    def train() -> str:
        if run.root.exists():
            shutil.rmtree(run.root)
        steps = []
        for member in range(config.ensemble.members):
            outcome = run_task(small, 0, member, progress=False)
            steps.append(outcome.timesteps)
            facts["ensemble"] = outcome.ensemble
        return f"{len(steps)} member(s) of fold 0, {steps[0]} steps each (2 rollouts, a checkpoint between), evaluated"

    def results() -> str:
        files = sorted(run.tasks.glob("*.h5"))
        problems = {path.name: missing_fields(path) for path in files}
        incomplete = {name: fields for name, fields in problems.items() if fields}
        if incomplete:
            raise ValidationFailed(f"task files miss schema fields: {incomplete}")
        if facts.get("ensemble") is None:
            raise ValidationFailed("the fold's ensemble file was not written")
        sharpe = read_metrics(Path(facts["ensemble"]))["policy"]["sharpe"]
        return f"{len(files)} task file(s) hold every schema field; ensemble Sharpe {sharpe:.2f} (tiny budget)"

    members = config.ensemble.members
    for name, doing, work in (
        ("data", f"building {config.data.store} from {config.data.source}", data),
        ("folds", "planning the walk-forward folds", folds),
        ("features", "computing and normalizing fold 0's features", features),
        ("train", f"training {members} member(s) of fold 0 for 2 rollouts each, then evaluating", train),
        ("results", "checking the task files against the schema", results),
    ):
        stage(name, doing, work)
    echo(f"validated: {run.root} holds the tiny run; `ploutos train` and `sbatch slurm/train_array.sh` can start")
    return small
