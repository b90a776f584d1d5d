"""Launchers: executors of the pipeline's task grid on Slurm (sbatch scripts or submitit), on this
machine, or inline.

``ploutos launch --executor E`` (and the thin scripts in ``jobs/``) all come here, and hand the
chosen executor to :func:`ploutos.pipeline.run.run`, which owns the stages:

- ``sbatch``: render the array script and the aggregation script (:func:`render_array_script`,
  :func:`render_aggregate_script`: pure functions with golden file tests; everything a job runs
  is in them or in the installed package, never in a source checkout), submit the array with
  ``sbatch``, then the aggregation with ``afterany`` so that it runs even when tasks failed;
  optionally follow the run until the aggregation ends. This is what
  ``sbatch slurm/train_array.sh CONFIG`` runs.
- ``slurm``: submitit's ``AutoExecutor``, ``map_array`` over the grid; each task is a
  :class:`TrainTask` (a submitit ``Checkpointable``), so a time-limit signal checkpoints and
  requeues. Job state comes from ``squeue`` (:class:`SqueueWatcher`), which works on clusters
  without accounting, where ``sacct`` fails. submitit has no public hook for this: the watcher
  overrides its private ``_make_command``, so submitit's version is bounded in pyproject.toml and
  a test fails if that method stops being called.
- ``local``: RunPod / single-node mode: the same tasks as subprocesses (submitit's local
  executor), one at a time, each with every core and the GPU of the machine.
- ``debug``: in this process, one after another (submitit's debug executor), for a debugger.

Every path ends with the aggregation and the report of the run folder.
"""

from __future__ import annotations

import functools
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import SlurmInfoWatcher

from ploutos.config import Config, config_hash
from ploutos.errors import ConfigError, PloutosError
from ploutos.files import atomic_path
from ploutos.node.context import thread_environment
from ploutos.pipeline.run import Echo, RunPlan, run, say
from ploutos.pipeline.task import run_task
from ploutos.progress import progress_bar
from ploutos.results.layout import RunLayout
from ploutos.train.trainer import Preempted

EXECUTORS = ("sbatch", "slurm", "local", "debug")


class LaunchError(PloutosError):
    """Submission failed: sbatch refused, a job vanished, or no result came back."""


# ------------------------------------------------------------------------------ sbatch scripts


@dataclass(frozen=True)
class ArraySpec:
    """What the array script needs besides the config."""

    config_file: str
    """The run's resolved config (``RUN_DIR/config.yaml``), absolute."""
    tasks: int
    """Folds x members."""
    workdir: str
    """Absolute directory the tasks run in (relative paths of the config resolve from it)."""
    python: str
    """Interpreter with ploutos installed."""


def thread_caps(threads: int = 1) -> str:
    """One shell line capping every BLAS/OpenMP/Polars pool (what ``env/threads.sh`` does, rendered)."""
    caps = {**thread_environment(threads), "PLOUTOS_THREADS": str(threads)}
    return "export " + " ".join(f"{key}={value}" for key, value in caps.items())


def render_array_script(config: Config, spec: ArraySpec) -> str:
    """The sbatch text of the training array: one task per (fold, member), one node each."""
    slurm, members = config.slurm, config.ensemble.members
    ranks = config.hardware.mpi_ranks
    run_dir = os.path.join(spec.workdir, config.run_dir) if not os.path.isabs(config.run_dir) else config.run_dir
    lines = [
        "#!/bin/bash",
        f"# Rendered by ploutos.launch.render_array_script: run {config.name}, config {config_hash(config)}.",
        f"#SBATCH --job-name=ploutos-{config.name}",
        f"#SBATCH --array=0-{spec.tasks - 1}%{slurm.array_parallelism}",
        "#SBATCH --nodes=1",
        f"#SBATCH --ntasks-per-node={ranks}",
    ]
    if config.hardware.cpus is not None:
        lines.append(f"#SBATCH --cpus-per-task={max(1, config.hardware.cpus // ranks)}")
    if slurm.exclusive:
        lines.append("#SBATCH --exclusive")
    if config.hardware.gpus:
        lines.append(f"#SBATCH --gpus-per-node={config.hardware.gpus}")
    lines += [
        f"#SBATCH --time={slurm.time_limit}",
        f"#SBATCH --signal=USR2@{slurm.signal_before_s}",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --chdir={spec.workdir}",
        f"#SBATCH --output={run_dir}/logs/slurm/task-%a.log",
    ]
    if slurm.mem_gb is not None:
        lines.append(f"#SBATCH --mem={slurm.mem_gb}G")
    elif slurm.exclusive:
        lines.append("#SBATCH --mem=0")
    for key in ("partition", "account", "qos"):
        value = getattr(slurm, key)
        if value:
            lines.append(f"#SBATCH --{key}={value}")
    lines += [f"#SBATCH {directive}" for directive in slurm.extra_directives]
    srun = ["srun", "--kill-on-bad-exit=1", "--cpu-bind=cores", f"--ntasks={ranks}"]
    if ranks > 1:
        srun.append("--mpi=pmix")
    command = [spec.python, "-m", "ploutos", "train", "--config", spec.config_file, "--no-progress"]
    lines += [
        "",
        "set -uo pipefail",
        f"fold=$(( SLURM_ARRAY_TASK_ID / {members} ))",
        f"member=$(( SLURM_ARRAY_TASK_ID % {members} ))",
        'echo "ploutos: task ${SLURM_ARRAY_TASK_ID}: fold ${fold} member ${member} on $(hostname)'
        ' (job ${SLURM_JOB_ID}, restart ${SLURM_RESTART_COUNT:-0})"',
        thread_caps(1) + "  # env workers: 1 thread; the learner sets its own",
        "# Slurm 22.05's srun does not inherit --cpus-per-task from the allocation",
        "export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-$(( ${SLURM_CPUS_ON_NODE:-1} / " + f"{ranks} ))" + "}",
        " ".join(shlex.quote(part) for part in srun + command) + ' --fold "$fold" --member "$member"',
        "code=$?",
        "# a crashed step's processes are SIGKILLed together, the store's reaper with them: clean up here",
        f"{shlex.quote(spec.python)} -m ploutos shm clean --job " + '"${SLURM_JOB_ID}_${SLURM_ARRAY_TASK_ID}" || true',
        "if [ $code -eq 3 ]; then  # checkpointed after the time-limit signal: come back and resume",
        '  echo "ploutos: task ${SLURM_ARRAY_TASK_ID} checkpointed; requeueing"',
        '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        "fi",
        "exit $code",
        "",
    ]
    return "\n".join(lines)


def render_aggregate_script(config: Config, spec: ArraySpec) -> str:
    """The sbatch text of the aggregation: ``summary.h5`` and the report, after every task has ended.

    Submitted with ``--dependency=afterany`` on the array; by hand, ``sbatch RUN_DIR/slurm/aggregate.sbatch``.
    """
    run_dir = os.path.join(spec.workdir, config.run_dir) if not os.path.isabs(config.run_dir) else config.run_dir
    lines = [
        "#!/bin/bash",
        f"# Rendered by ploutos.launch.render_aggregate_script: run {config.name}, config {config_hash(config)}.",
        f"#SBATCH --job-name=ploutos-{config.name}-aggregate",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --time=00:30:00",
        f"#SBATCH --chdir={spec.workdir}",
        f"#SBATCH --output={run_dir}/logs/slurm/aggregate.log",
    ]
    for key in ("partition", "account", "qos"):
        value = getattr(config.slurm, key)
        if value:
            lines.append(f"#SBATCH --{key}={value}")
    python, folder = shlex.quote(spec.python), shlex.quote(run_dir)
    lines += ["", "set -euo pipefail", thread_caps(1), f"{python} -m ploutos aggregate {folder}"]
    lines += [f"{python} -m ploutos report {folder}", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Submission:
    """Job ids of a submitted run."""

    array_job: str
    aggregate_job: str
    script: Path


def _sbatch(arguments: list[str]) -> str:
    try:
        proc = subprocess.run(["sbatch", "--parsable", *arguments], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise LaunchError(
            "sbatch not found: this is not a Slurm login node (start one with slurm/local/start.sh)"
        ) from None
    if proc.returncode != 0:
        raise LaunchError(f"sbatch refused the job: {proc.stderr.strip().splitlines()[-1] if proc.stderr else ''}")
    return proc.stdout.strip().split(";")[0]


def submit_sbatch(config: Config, tasks: int, *, workdir: Path) -> Submission:
    """Render and submit the array, then the aggregation with an ``afterany`` dependency."""
    run = RunLayout.of(config)
    (run.root / "slurm").mkdir(parents=True, exist_ok=True)
    (run.logs / "slurm").mkdir(parents=True, exist_ok=True)
    spec = ArraySpec(
        config_file=str(run.config_file.resolve()), tasks=tasks, workdir=str(workdir.resolve()), python=sys.executable
    )
    script, aggregation = run.root / "slurm" / "train_array.sbatch", run.root / "slurm" / "aggregate.sbatch"
    for path, render in ((script, render_array_script), (aggregation, render_aggregate_script)):
        with atomic_path(path) as tmp:
            tmp.write_text(render(config, spec))
    array_job = _sbatch([str(script)])
    aggregate_job = _sbatch([f"--dependency=afterany:{array_job}", "--kill-on-invalid-dep=no", str(aggregation)])
    return Submission(array_job, aggregate_job, script)


def queued(job_ids: list[str]) -> dict[str, str]:
    """State of every queued job or array task of ``job_ids`` (gone once finished): id -> state."""
    proc = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T", "-u", str(os.getuid())], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        raise LaunchError(f"squeue failed: {proc.stderr.strip()}")
    states = {}
    for line in proc.stdout.splitlines():
        job, state = line.split()
        if job.split("_")[0] in job_ids:
            states[job] = state
    return states


def follow(config: Config, submission: Submission, tasks: int, *, poll_s: float = 5.0) -> None:
    """Wait until the aggregation has run, printing task progress as result files appear."""
    run = RunLayout.of(config)
    jobs = [submission.array_job, submission.aggregate_job]
    seen = -1
    while True:
        states = queued(jobs)
        done = len(list(run.tasks.glob("fold*_member*.h5")))
        if done != seen:
            running = sum(state == "RUNNING" for job, state in states.items() if "_" in job)
            print(f"follow: {done}/{tasks} task(s) done, {running} running", flush=True)
            seen = done
        if not states:
            break
        time.sleep(poll_s)
    if not run.summary.exists():
        raise LaunchError(f"the aggregation job {submission.aggregate_job} ended without {run.summary}; see {run.logs}")


# ------------------------------------------------------------------------------ submitit


class TrainTask:
    """One (fold, member) as a submitit ``Checkpointable``: a time-limit signal checkpoints and requeues."""

    def __call__(self, config: Config, fold: int, member: int) -> str:
        try:
            outcome = run_task(config, fold, member, progress=False)
        except Preempted as stop:
            handler = signal.getsignal(stop.signum)
            if stop.signum == signal.SIGUSR2 and callable(handler):
                handler(stop.signum, None)  # submitit: checkpoint() below, requeue, exit
            raise
        return str(outcome.result or "")

    def checkpoint(self, config: Config, fold: int, member: int) -> Any:
        """The trainer has written its checkpoint already; the resubmitted call resumes from it."""
        return submitit.helpers.DelayedSubmission(self, config, fold, member)


class SqueueWatcher(SlurmInfoWatcher):
    """A submitit job-state watcher that asks ``squeue``: a job no longer queued has ended (its
    result pickle, or its absence, tells how), so clusters without accounting work.

    submitit offers no public hook for the command its watcher runs, so this overrides the private
    ``_make_command`` that ``InfoWatcher.update`` calls; pyproject.toml bounds submitit to the
    versions checked, and ``tests/test_launch.py`` runs ``update()`` against a fake ``squeue`` and
    fails if submitit stops calling this method.
    """

    def _make_command(self) -> list[str] | None:
        if not self._registered - self._finished:
            return None
        return ["squeue", "-h", "-r", "-o", "%i|%T|%N", "-u", str(os.getuid())]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        states: dict[str, dict[str, str]] = {}
        for line in text.splitlines():
            if line.count("|") == 2:
                job, state, nodes = line.split("|")
                states[job] = {"JobID": job, "State": state, "NodeList": nodes}
        for job in self._registered - self._finished:
            states.setdefault(job, {"JobID": job, "State": "COMPLETED", "NodeList": ""})
        return states


@functools.cache
def squeue_watcher() -> SqueueWatcher:
    """The one :class:`SqueueWatcher` of this process (submitit shares one watcher between jobs)."""
    return SqueueWatcher(delay_s=5)


def watch_with_squeue(jobs: list[Any]) -> None:
    """Make submitit's Slurm jobs (array tasks included) ask ``squeue`` instead of ``sacct``."""
    watcher = squeue_watcher()
    for job in jobs:
        job.watcher = watcher  # the class-level sacct watcher stays untouched for other code
        watcher.register_job(job.job_id)


def make_executor(config: Config, kind: str, folder: Path) -> Any:
    """A submitit ``AutoExecutor`` for ``kind`` (slurm, local, debug) with the config's resources."""
    hw, slurm = config.hardware, config.slurm
    executor = submitit.AutoExecutor(folder=folder, cluster=kind)
    executor.update_parameters(
        timeout_min=slurm.time_limit_minutes, nodes=1, tasks_per_node=hw.mpi_ranks, name=f"ploutos-{config.name}"
    )
    if kind == "slurm":
        additional: dict[str, Any] = {"requeue": True}
        if slurm.exclusive:
            additional["exclusive"] = True
        executor.update_parameters(
            slurm_partition=slurm.partition,
            slurm_account=slurm.account,
            slurm_qos=slurm.qos,
            slurm_array_parallelism=slurm.array_parallelism,
            slurm_signal_delay_s=slurm.signal_before_s,
            slurm_additional_parameters=additional,
            slurm_setup=[
                thread_caps(1),
                "export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}",
            ],
        )
        if hw.cpus is not None:
            executor.update_parameters(cpus_per_task=max(1, hw.cpus // hw.mpi_ranks))
        if slurm.mem_gb is not None:
            executor.update_parameters(mem_gb=slurm.mem_gb)
    elif kind == "local" and hw.gpus:
        executor.update_parameters(gpus_per_node=hw.gpus)
    return executor


@dataclass(frozen=True)
class SbatchArray:
    """The grid as one Slurm array plus a dependent aggregation job; optionally followed to the end."""

    workdir: Path
    wait: bool = True
    name: str = "sbatch array"
    aggregates_itself: bool = True

    def run_tasks(self, plan: RunPlan, echo: Echo) -> list[str]:
        submission = submit_sbatch(plan.config, len(plan.grid), workdir=self.workdir)
        echo(
            f"submitted array job {submission.array_job} ({len(plan.grid)} tasks, script {submission.script}) and "
            f"aggregation job {submission.aggregate_job} (afterany)"
        )
        if self.wait:
            follow(plan.config, submission, len(plan.grid))
            echo(f"{plan.layout.summary}: written; report in {plan.layout.root / 'report'}")
        return []


@dataclass(frozen=True)
class Submitit:
    """The grid through submitit: a Slurm job array (``slurm``), or one process per task on this
    machine, one after another, each with the whole machine (``local``, RunPod), or in this process
    (``debug``)."""

    kind: str
    aggregates_itself: bool = False

    @property
    def name(self) -> str:
        return f"submitit {self.kind}"

    def run_tasks(self, plan: RunPlan, echo: Echo) -> list[str]:
        config, grid = plan.config, plan.grid
        executor = make_executor(config, self.kind, plan.layout.logs / "submitit")
        task = TrainTask()
        failures: list[str] = []
        # local: one task at a time, each with the whole machine (RunPod); slurm: the whole array at once
        waves = [grid] if self.kind == "slurm" else [[item] for item in grid]
        bar = progress_bar(total=len(grid), desc=f"{config.name} ({self.kind})", unit="task")
        for wave in waves:
            folds, members = [f for f, _ in wave], [m for _, m in wave]
            jobs = executor.map_array(task, [config] * len(wave), folds, members)
            if self.kind == "slurm":
                watch_with_squeue(jobs)
            for (fold, member), job in zip(wave, jobs, strict=True):
                try:
                    job.result()
                except Exception as err:  # the aggregation lists it as missing; the others go on
                    failures.append(
                        f"fold{fold}_member{member} (job {job.job_id}): {str(err).strip().splitlines()[-1]}"
                    )
                bar.update(1)
        bar.close()
        return failures


def executor_for(kind: str, *, wait: bool = True, workdir: Path | None = None) -> SbatchArray | Submitit:
    """The executor called ``kind`` (one of :data:`EXECUTORS`)."""
    if kind not in EXECUTORS:
        raise ConfigError(f"executor {kind!r} is not one of {', '.join(EXECUTORS)}")
    if kind == "sbatch":
        return SbatchArray(workdir or Path.cwd(), wait=wait)
    return Submitit(kind)


def launch(
    config: Config, executor_kind: str, *, wait: bool = True, workdir: Path | None = None, echo: Echo = say
) -> int:
    """Run the whole walk-forward of ``config`` with ``executor_kind``; aggregate and report."""
    executor = executor_for(executor_kind, wait=wait, workdir=workdir)
    return run(config, executor, echo=echo, progress=False)
