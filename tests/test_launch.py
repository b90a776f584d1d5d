"""The sbatch script renderer (golden files), the submitit pieces that need no cluster, and the
Python launcher on this machine. The real-Slurm runs are in tests/test_cluster.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import REPO
from ploutos.config import load
from ploutos.launch import (
    ArraySpec,
    SqueueWatcher,
    TrainTask,
    render_aggregate_script,
    render_array_script,
    squeue_watcher,
)

GOLDEN = REPO / "tests" / "golden"
SPEC = ArraySpec(
    config_file="/runs/results/quickstart/config.yaml",
    tasks=6,
    workdir="/runs",
    python="/opt/venv/bin/python",
)


@pytest.mark.parametrize(
    ("name", "overrides", "tasks"),
    [
        ("quickstart", [], 6),
        ("full", ["slurm.partition=cpu", "slurm.account=quant", "slurm.extra_directives=[--constraint=amd]"], 40),
    ],
)
@pytest.mark.parametrize(
    ("script", "render"), [("train_array", render_array_script), ("aggregate", render_aggregate_script)]
)
def test_scripts_match_their_golden_files(name: str, overrides: list[str], tasks: int, script: str, render):
    config = load(name, overrides)
    spec = ArraySpec(**{**SPEC.__dict__, "tasks": tasks, "config_file": f"/runs/results/{name}/config.yaml"})
    text = render(config, spec)
    golden = GOLDEN / f"{script}_{name}.sbatch"
    if os.environ.get("PLOUTOS_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"rendered script differs from {golden} (PLOUTOS_UPDATE_GOLDEN=1 rewrites it)"


def test_scripts_need_nothing_from_a_source_checkout():
    config = load("quickstart")
    for text in (render_array_script(config, SPEC), render_aggregate_script(config, SPEC)):
        assert "source " not in text and "env/threads.sh" not in text and "slurm/aggregate.sh" not in text
        assert "OMP_NUM_THREADS=1" in text and "POLARS_MAX_THREADS=1" in text  # the thread caps, rendered
        assert "/opt/venv/bin/python -m ploutos " in text


def test_array_script_follows_the_config():
    config = load("full", ["slurm.exclusive=false", "slurm.mem_gb=64", "slurm.array_parallelism=3"])
    text = render_array_script(config, SPEC)
    assert "#SBATCH --array=0-5%3" in text and "#SBATCH --mem=64G" in text
    assert "--exclusive" not in text
    ranks = config.hardware.mpi_ranks
    assert f"#SBATCH --ntasks-per-node={ranks}" in text and f"--ntasks={ranks}" in text
    assert ("--mpi=pmix" in text) == (ranks > 1)
    assert f"/ {config.ensemble.members} ))" in text  # fold from the array index
    assert "SRUN_CPUS_PER_TASK" in text and "scontrol requeue" in text
    assert "partition" not in text and "account" not in text  # nothing site-specific unless configured


def test_squeue_watcher_reads_states_and_treats_vanished_jobs_as_ended():
    watcher = squeue_watcher()
    watcher.register_job("41_0")
    watcher.register_job("41_1")
    states = watcher.read_info("41_0|RUNNING|ploutos-n1\n41_2|PENDING|\n")
    assert states["41_0"]["State"] == "RUNNING"
    assert states["41_1"]["State"] == "COMPLETED"  # gone from the queue: its result pickle decides


def test_submitit_still_asks_our_watcher_for_its_command(tmp_path: Path, monkeypatch):
    """The private contract SqueueWatcher relies on: ``update()`` runs ``_make_command()``'s command and
    hands its output to ``read_info``. A submitit release that changes this fails here, not on a cluster."""
    squeue = tmp_path / "squeue"
    squeue.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\nprintf \'41_0|RUNNING|n1\\n41_2|PENDING|\\n\'\n')
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    watcher = SqueueWatcher(delay_s=0)
    for job in ("41_0", "41_1", "41_2"):
        watcher.register_job(job)
    watcher.update()
    assert (tmp_path / "args").read_text().split()[:2] == ["-h", "-r"]  # our command ran, not sacct
    assert watcher.get_state("41_0", mode="cache") == "RUNNING"
    assert watcher.get_state("41_2", mode="cache") == "PENDING"
    assert watcher.is_done("41_1", mode="cache")  # left the queue: ended


def test_train_task_resubmits_itself_with_the_same_arguments():
    config = load("quickstart")
    delayed = TrainTask().checkpoint(config, 2, 1)
    assert delayed.args == (config, 2, 1) and isinstance(delayed.function, TrainTask)


def test_the_sbatch_scripts_hold_no_site_specifics():
    for script in ("train_array.sh",):
        text = (REPO / "slurm" / script).read_text()
        assert "--partition" not in text.replace("--set slurm.partition", "") and "--account" not in text
        assert text.startswith("#!/bin/bash")
