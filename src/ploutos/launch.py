"""Launchers: the fold x member grid on Slurm (sbatch scripts or submitit), on this machine, or inline.

``ploutos launch --executor E`` (and the thin scripts in ``jobs/``) all come here:

- ``sbatch``: render the array script (:func:`render_array_script`, a pure function with a golden
  file test), submit it with ``sbatch``, then ``slurm/aggregate.sh`` with ``afterany`` so the
  aggregation runs even when tasks failed; optionally follow the run until the aggregation ends.
  This is what ``sbatch slurm/train_array.sh CONFIG`` runs.
- ``slurm``: submitit's ``AutoExecutor``, ``map_array`` over the grid; each task is a
  :class:`TrainTask` (a submitit ``Checkpointable``), so a time-limit signal checkpoints and
  requeues. Job state comes from ``squeue`` (:class:`SqueueWatcher`), which works on clusters
  without accounting, where ``sacct`` fails.
- ``local``: RunPod / single-node mode: the same tasks as subprocesses (submitit's local
  executor), one at a time, each with every core and the GPU of the machine.
- ``debug``: in this process, one after another (submitit's debug executor), for a debugger.

Every path ends with ``ploutos aggregate`` and ``ploutos report`` of the run folder.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ploutos.config import Config, config_hash
from ploutos.errors import ConfigError, PloutosError
from ploutos.results.files import atomic_path
from ploutos.results.layout import RunLayout

REPO = Path(__file__).resolve().parents[2]
"""The checkout (for env/threads.sh and slurm/aggregate.sh)."""
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
    repo: str
    """The checkout, for env/threads.sh."""


def _seconds_to_minutes(seconds: int) -> int:
    return max(1, seconds // 60)


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
        f"source {shlex.quote(spec.repo)}/env/threads.sh 1  # env workers: 1 thread; the learner sets its own",
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
        config_file=str(run.config_file.resolve()),
        tasks=tasks,
        workdir=str(workdir.resolve()),
        python=sys.executable,
        repo=str(REPO),
    )
    script = run.root / "slurm" / "train_array.sbatch"
    with atomic_path(script) as tmp:
        tmp.write_text(render_array_script(config, spec))
    array_job = _sbatch([str(script)])
    aggregate = [
        f"--dependency=afterany:{array_job}",
        "--kill-on-invalid-dep=no",
        f"--job-name=ploutos-{config.name}-aggregate",
        f"--chdir={spec.workdir}",
        f"--output={run.logs.resolve()}/slurm/aggregate.log",
        f"--export=ALL,PLOUTOS_PYTHON={sys.executable}",
    ]
    for key in ("partition", "account", "qos"):
        value = getattr(config.slurm, key)
        if value:
            aggregate.append(f"--{key}={value}")
    aggregate_job = _sbatch([*aggregate, str(REPO / "slurm" / "aggregate.sh"), str(run.root.resolve())])
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
        from ploutos.train.trainer import Preempted, train_task

        try:
            outcome = train_task(config, fold, member, progress=False)
        except Preempted as stop:
            handler = signal.getsignal(stop.signum)
            if stop.signum == signal.SIGUSR2 and callable(handler):
                handler(stop.signum, None)  # submitit: checkpoint() below, requeue, exit
            raise
        return str(outcome.result or "")

    def checkpoint(self, config: Config, fold: int, member: int) -> Any:
        """The trainer has written its checkpoint already; the resubmitted call resumes from it."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, config, fold, member)


_watcher: Any = None


def squeue_watcher() -> Any:
    """A submitit job-state watcher that asks ``squeue``: a job no longer queued has ended (its
    result pickle, or its absence, tells how), so clusters without accounting work."""
    global _watcher
    if _watcher is not None:
        return _watcher
    from submitit.slurm import slurm

    class SqueueWatcher(slurm.SlurmInfoWatcher):
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

    _watcher = SqueueWatcher(delay_s=5)
    return _watcher


def watch_with_squeue(jobs: list[Any]) -> None:
    """Make submitit's Slurm jobs (array tasks included) ask ``squeue`` instead of ``sacct``."""
    watcher = squeue_watcher()
    for job in jobs:
        job.watcher = watcher  # the class-level sacct watcher stays untouched for other code
        watcher.register_job(job.job_id)


def make_executor(config: Config, kind: str, folder: Path) -> Any:
    """A submitit ``AutoExecutor`` for ``kind`` (slurm, local, debug) with the config's resources."""
    import submitit

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
                f"source {shlex.quote(str(REPO))}/env/threads.sh 1",
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


def launch(config: Config, executor_kind: str, *, wait: bool = True, workdir: Path | None = None) -> int:
    """Run the whole walk-forward of ``config`` with ``executor_kind``; aggregate and report."""
    from ploutos.data.build import build_dataset
    from ploutos.train.folds import format_plan, plan_for

    if executor_kind not in EXECUTORS:
        raise ConfigError(f"executor {executor_kind!r} is not one of {', '.join(EXECUTORS)}")
    print(build_dataset(config.data, progress=False).summary(), flush=True)
    folds = plan_for(config)
    print(format_plan(folds, config.ensemble.members), flush=True)
    run = RunLayout.of(config)
    run.prepare(config)
    run.write_plan(len(folds), config.ensemble.members)
    grid = [(fold.index, member) for fold in folds for member in range(config.ensemble.members)]
    if executor_kind == "sbatch":
        submission = submit_sbatch(config, len(grid), workdir=workdir or Path.cwd())
        print(
            f"submitted array job {submission.array_job} ({len(grid)} tasks, script {submission.script}) and "
            f"aggregation job {submission.aggregate_job} (afterany)",
            flush=True,
        )
        if wait:
            follow(config, submission, len(grid))
            print(f"{run.summary}: written; report in {run.root / 'report'}")
        return 0
    return _run_submitit(config, executor_kind, grid, run)


def _run_submitit(config: Config, kind: str, grid: list[tuple[int, int]], run: RunLayout) -> int:
    from ploutos.progress import progress_bar
    from ploutos.results.aggregate import aggregate
    from ploutos.results.report import write_report

    executor = make_executor(config, kind, run.logs / "submitit")
    task = TrainTask()
    failures: list[str] = []
    # local: one task at a time, each with the whole machine (RunPod); slurm: the whole array at once
    waves = [grid] if kind == "slurm" else [[item] for item in grid]
    bar = progress_bar(total=len(grid), desc=f"{config.name} ({kind})", unit="task")
    for wave in waves:
        folds, members = [f for f, _ in wave], [m for _, m in wave]
        jobs = executor.map_array(task, [config] * len(wave), folds, members)
        if kind == "slurm":
            watch_with_squeue(jobs)
        for (fold, member), job in zip(wave, jobs, strict=True):
            try:
                job.result()
            except Exception as err:  # the aggregation lists it as missing; the others go on
                failures.append(f"fold{fold}_member{member} (job {job.job_id}): {str(err).strip().splitlines()[-1]}")
            bar.update(1)
    bar.close()
    for line in failures:
        print(f"failed: {line}", file=sys.stderr)
    summary = aggregate(run.root)
    print(summary.line(), flush=True)
    for path in write_report(run.root):
        print(f"report: {path}")
    return 0 if not failures else 1
