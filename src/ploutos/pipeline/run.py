"""The chain every entry point shares: dataset -> walk-forward plan -> tasks -> aggregate -> report.

``ploutos run`` and every launcher (``ploutos launch``, ``jobs/walkforward.py``, the sbatch
submitter) call :func:`run` with an :class:`Executor` that decides only how the task grid runs:
in this process one task after another (:class:`InProcess`, ``ploutos run``), as submitit jobs,
or as a Slurm array whose aggregation is a job of its own (:mod:`ploutos.launch`). Everything
else, and the order of the stages, is here once.

Progress goes through ``echo`` (one line at a time); the command line passes its printer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ploutos.config import Config, load
from ploutos.data.build import build_dataset
from ploutos.errors import PloutosError, first_line
from ploutos.pipeline.task import run_task
from ploutos.results.aggregate import Summary, aggregate, format_folds
from ploutos.results.layout import RunLayout
from ploutos.results.locks import TaskHeld
from ploutos.results.report import write_report
from ploutos.train.folds import Fold, format_plan, plan_for

Echo = Callable[[str], object]
"""Where progress lines go."""


def say(line: str) -> None:
    """The default ``echo``: print and flush, so that Slurm logs show progress as it happens."""
    print(line, flush=True)


@dataclass(frozen=True)
class RunPlan:
    """A run ready for its tasks: dataset built, folds planned, run folder prepared."""

    config: Config
    folds: list[Fold]

    @property
    def layout(self) -> RunLayout:
        return RunLayout.of(self.config)

    @property
    def grid(self) -> list[tuple[int, int]]:
        """Every (fold, member) task, fold by fold."""
        return [(fold.index, member) for fold in self.folds for member in range(self.config.ensemble.members)]


class Executor(Protocol):
    """How the task grid of a :class:`RunPlan` runs."""

    name: str
    """Shown in the progress line of the task stage."""
    aggregates_itself: bool
    """True when the executor runs the aggregation and report itself (a dependent Slurm job)."""

    def run_tasks(self, plan: RunPlan, echo: Echo) -> list[str]:
        """Run (or submit) every task of ``plan.grid``; return one line per failed task."""
        ...


def plan_run(config: Config, *, echo: Echo = say, progress: bool = True) -> RunPlan:
    """Stages 1 and 2: build the dataset, plan the folds, prepare the run folder and its ``plan.json``."""
    echo(f"[1/4] data: building {config.data.store} from {config.data.source}")
    echo(build_dataset(config.data, progress=progress).summary())
    echo("[2/4] walk-forward plan")
    folds = plan_for(config)
    echo(format_plan(folds, config.ensemble.members))
    layout = RunLayout.of(config)
    layout.prepare(config)
    layout.write_plan(len(folds), config.ensemble.members)
    return RunPlan(config, folds)


def aggregate_run(run_dir: Path) -> Summary:
    """``summary.h5`` of a run folder, for the task grid its config plans over its dataset.

    ``plan.json`` (what the launchers submitted) must agree with that plan: a damaged or foreign
    one is refused rather than trusted (a plan of 10^8 folds would aggregate for hours). Without
    the dataset, ``plan.json`` is taken as it is; without ``plan.json``, the config's plan is used.
    """
    layout = RunLayout(Path(run_dir))
    recorded = layout.read_plan()
    if not layout.config_file.is_file():
        return aggregate(layout.root, recorded)
    config = load(layout.config_file)
    try:
        planned: tuple[int, int] | None = len(plan_for(config)), config.ensemble.members
    except PloutosError as err:
        if recorded is None:
            raise PloutosError(
                f"{layout.plan_file}: missing, and planning the folds from {layout.config_file.name} failed: "
                f"{first_line(err)}"
            ) from err
        planned = None
    if recorded is not None and planned is not None and recorded != planned:
        raise PloutosError(
            f"{layout.plan_file}: {recorded[0]} fold(s) x {recorded[1]} member(s), but the run's config plans "
            f"{planned[0]} x {planned[1]} over its dataset; remove plan.json to use the config's plan"
        )
    return aggregate(layout.root, recorded or planned)


def finish_run(run_dir: Path, *, echo: Echo = say) -> Summary:
    """Stage 4: aggregate the task files, print the folds, write the report."""
    echo("[4/4] aggregate and report")
    summary = aggregate_run(run_dir)
    echo(summary.line())
    echo(format_folds(summary.path))
    report = write_report(summary.path.parent)
    echo(f"report: {report[-1]} ({len(report) - 2} figures and summary.md beside it)")
    echo(f"next: ploutos backtest --run {run_dir} (the latest fold on bars it never saw); in Python, "
         f"ploutos.load_run({str(run_dir)!r})")  # fmt: skip
    return summary


def run(config: Config, executor: Executor, *, echo: Echo = say, progress: bool = True) -> int:
    """The whole run of ``config``: 0 when every task and ensemble is in the summary, 1 when some are
    not (each is listed: failed, held by another process, or missing from the summary)."""
    plan = plan_run(config, echo=echo, progress=progress)
    echo(f"[3/4] train: {len(plan.grid)} task(s) into {config.run_dir} ({executor.name})")
    failures = executor.run_tasks(plan, echo)
    for line in failures:
        echo(f"failed: {line}")
    if executor.aggregates_itself:
        return 1 if failures else 0
    summary = finish_run(plan.layout.root, echo=echo)
    if summary.missing:
        echo(f"incomplete: {len(summary.missing)} task file(s) not in the summary; run the same command again")
    return 1 if failures or summary.missing else 0


@dataclass(frozen=True)
class InProcess:
    """Every task in this process, one after another, with progress bars (``ploutos run``)."""

    progress: bool = True
    name: str = "this process"
    aggregates_itself: bool = False

    def run_tasks(self, plan: RunPlan, echo: Echo) -> list[str]:
        grid, held = plan.grid, []
        for number, (fold, member) in enumerate(grid, 1):
            where = f"  task {number}/{len(grid)} fold {fold} member {member}"
            try:
                outcome = run_task(plan.config, fold, member, progress=self.progress)
            except TaskHeld as err:  # another process trains it: go on with the others
                echo(f"{where}: skipped, {err}")
                held.append(str(err))
                continue
            state = (
                "already done"
                if outcome.skipped
                else f"{outcome.timesteps} steps, task {outcome.task_seconds:.0f} s "
                f"(training alone {outcome.training_seconds:.0f} s)"
            )
            redone = f" (trained again: {outcome.redone})" if outcome.redone else ""
            rebuilt = ", its fold's ensemble rebuilt" if outcome.skipped and outcome.ensemble else ""
            echo(f"{where}: {state}{redone}{rebuilt}")
        return held
