"""The sbatch script renderer (golden files), the submitit pieces that need no cluster, and the
Python launcher on this machine. The real-Slurm runs are in tests/test_cluster.py."""

from __future__ import annotations

import os

import pytest

from conftest import REPO
from ploutos.config import load
from ploutos.launch import ArraySpec, TrainTask, render_array_script, squeue_watcher

GOLDEN = REPO / "tests" / "golden"
SPEC = ArraySpec(
    config_file="/runs/results/quickstart/config.yaml",
    tasks=6,
    workdir="/runs",
    python="/opt/venv/bin/python",
    repo="/opt/ploutos",
)


@pytest.mark.parametrize(
    ("name", "overrides", "tasks"),
    [
        ("quickstart", [], 6),
        ("full", ["slurm.partition=cpu", "slurm.account=quant", "slurm.extra_directives=[--constraint=amd]"], 40),
    ],
)
def test_array_script_matches_its_golden_file(name: str, overrides: list[str], tasks: int):
    config = load(name, overrides)
    spec = ArraySpec(**{**SPEC.__dict__, "tasks": tasks, "config_file": f"/runs/results/{name}/config.yaml"})
    text = render_array_script(config, spec)
    golden = GOLDEN / f"train_array_{name}.sbatch"
    if os.environ.get("PLOUTOS_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"rendered script differs from {golden} (PLOUTOS_UPDATE_GOLDEN=1 rewrites it)"


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


def test_train_task_resubmits_itself_with_the_same_arguments():
    config = load("quickstart")
    delayed = TrainTask().checkpoint(config, 2, 1)
    assert delayed.args == (config, 2, 1) and isinstance(delayed.function, TrainTask)


def test_the_sbatch_scripts_hold_no_site_specifics():
    for script in ("train_array.sh", "aggregate.sh"):
        text = (REPO / "slurm" / script).read_text()
        assert "--partition" not in text.replace("--set slurm.partition", "") and "--account" not in text
        assert text.startswith("#!/bin/bash")
