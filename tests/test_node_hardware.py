"""The hardware plan: cores from the affinity mask and Slurm, GPUs, memory -> ranks, envs, workers, batch."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ploutos.cli import main
from ploutos.config import load
from ploutos.errors import ConfigError
from ploutos.node import hardware
from ploutos.node.hardware import Machine, detect, format_plan, plan

NO_GPU = Machine(affinity_cpus=1, memory_gb=64.0, gpus=0, gpu_source="test")


def _reason(p, prefix: str) -> str:
    matches = [r for r in p.reasons if r.startswith(prefix)]
    assert len(matches) == 1, (prefix, p.reasons)
    return matches[0]


def test_a_256_core_slurm_node_runs_8_ranks_of_31_envs():
    config = load("full", [])
    environ = {"SLURM_JOB_ID": "42", "SLURM_CPUS_ON_NODE": "256"}
    p = plan(config, environ=environ, machine=Machine(256, 900.0, 0, "test"))
    assert (p.cpus, p.ranks, p.cpus_per_rank, p.n_envs, p.workers) == (256, 8, 32, 31, 0)
    assert "the envs step in the learner's process" in _reason(p, "workers 0")  # microseconds vs milliseconds
    assert p.device == "cpu" and p.learner_threads == 8 and p.n_steps == 1024
    assert p.batch_size == 7936 and (p.n_steps * p.n_envs) % p.batch_size == 0
    assert "SLURM_CPUS_ON_NODE=256" in _reason(p, "cpus 256")
    assert _reason(p, "n_envs 31") == "n_envs 31: 32 cpus per rank minus 1 for the learner"
    assert "must divide n_steps * n_envs = 1024 * 31 = 31744" in _reason(p, "batch_size 8192 -> 7936")
    assert p.warnings == ()


def test_an_srun_launched_rank_plans_for_the_whole_node():
    config = load("full", [])
    environ = {
        "SLURM_CPUS_ON_NODE": "256",
        "SLURM_CPUS_PER_TASK": "32",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_STEP_TASKS_PER_NODE": "8",
    }
    p = plan(config, environ=environ, cpus=32, machine=NO_GPU)  # this rank's mask: its 32 cores
    assert (p.cpus, p.ranks, p.cpus_per_rank, p.n_envs) == (256, 8, 32, 31)


def test_slurm_cpus_per_task_when_cpus_on_node_is_missing():
    p = plan(load("quickstart", []), environ={"SLURM_CPUS_PER_TASK": "16"}, cpus=64, machine=NO_GPU)
    assert p.cpus == 16 and "SLURM_CPUS_PER_TASK=16" in _reason(p, "cpus 16")
    p = plan(load("quickstart", []), environ={"SLURM_CPUS_PER_TASK": "4", "SLURM_NTASKS_PER_NODE": "2(x3)"}, cpus=8)
    assert p.cpus == 8


def test_a_laptop_with_2_cores():
    p = plan(load("quickstart", []), environ={}, cpus=2, machine=Machine(2, 8.0, 0, "test"))
    assert (p.cpus, p.gpus, p.ranks, p.n_envs, p.workers, p.device) == (2, 0, 1, 2, 0, "cpu")
    assert "share a core with the learner" in _reason(p, "workers 0")
    assert p.batch_size == 256 and (p.n_steps * p.n_envs) % p.batch_size == 0
    assert "learner shares a core" in _reason(p, "n_envs 2")
    assert _reason(p, "cpus 2") == "cpus 2: 2 in the affinity mask"


def test_the_affinity_mask_bounds_a_larger_slurm_allocation():
    p = plan(load("quickstart", []), environ={"SLURM_CPUS_ON_NODE": "16"}, cpus=4, machine=NO_GPU)
    assert p.cpus == 4 and "fewer than the Slurm allocation" in _reason(p, "cpus 4")
    assert p.n_envs == 3  # 4 cores, one for the learner


def test_ranks_are_capped_by_cores_and_follow_the_launch():
    laptop = plan(load("full", []), environ={}, cpus=2, machine=NO_GPU)
    assert laptop.ranks == 2 and "capped at one per core" in _reason(laptop, "ranks 2")
    launched = plan(load("full", []), environ={"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, cpus=16, machine=NO_GPU)
    assert launched.ranks == 4 and launched.cpus == 64
    assert any("4 local ranks were launched" in w for w in launched.warnings)


def test_a_gpu_from_the_overrides_takes_the_learner():
    config = load("quickstart", ["hardware.gpus=1", "ppo.device=auto"])
    p = plan(config, environ={}, cpus=16, machine=NO_GPU)
    assert (p.gpus, p.device, p.learner_threads, p.n_envs) == (1, "cuda", 2, 15)
    assert _reason(p, "gpus 1") == "gpus 1: hardware.gpus"
    assert "GPU" in _reason(p, "learner_threads 2")


def test_cuda_without_a_gpu_is_a_warning():
    config = load("quickstart", ["hardware.gpus=0", "ppo.device=cuda"])
    p = plan(config, environ={}, cpus=4, machine=NO_GPU)
    assert p.device == "cuda" and any("no GPU" in w for w in p.warnings)
    assert "warnings:" in format_plan(p)


def test_gpus_are_detected_from_cuda_visible_devices():
    assert detect({"CUDA_VISIBLE_DEVICES": "0,1"}).gpus == 2
    assert detect({"CUDA_VISIBLE_DEVICES": ""}).gpus == 0
    assert detect({"CUDA_VISIBLE_DEVICES": "-1"}).gpus == 0
    machine = detect({})
    assert machine.affinity_cpus >= 1 and (machine.memory_gb is None or machine.memory_gb > 0)


def test_hardware_overrides_win():
    overrides = [
        "hardware.cpus=64",
        "hardware.n_envs=10",
        "hardware.envs_per_worker=3",
        "hardware.learner_threads=5",
        "hardware.mpi_ranks=2",
        "ppo.n_steps=100",
        "ppo.batch_size=300",
    ]
    p = plan(load("quickstart", overrides), environ={"SLURM_CPUS_ON_NODE": "256"}, cpus=256, machine=NO_GPU)
    assert (p.cpus, p.ranks, p.cpus_per_rank, p.n_envs, p.envs_per_worker, p.workers) == (64, 2, 32, 10, 3, 4)
    assert p.learner_threads == 5
    assert p.batch_size == 250  # largest divisor of 100 * 10 not above 300
    for key in ("cpus 64", "n_envs 10", "learner_threads 5", "ranks 2"):
        assert _reason(p, key).endswith("hardware." + key.split()[0].replace("ranks", "mpi_ranks"))
    assert "hardware.envs_per_worker 3" in _reason(p, "workers 4")
    forced = plan(load("quickstart", ["hardware.env_workers=0", "hardware.n_envs=8"]), environ={}, cpus=2)
    assert (forced.workers, forced.envs_per_worker) == (0, 8) and _reason(forced, "workers 0").endswith("env_workers")


def test_memory_limits_worker_processes_not_envs(monkeypatch):
    # with the measured rates an env step never pays for a worker process; a machine where it does:
    monkeypatch.setattr(hardware, "WORKER_SHARE", 0.0)
    p = plan(load("quickstart", []), environ={}, cpus=64, machine=Machine(64, 4.0, 0, "test"))
    assert p.n_envs == 63 and p.workers == 4 and p.envs_per_worker == 16
    assert "4 GB" in _reason(p, "workers 4") and "worth moving off the learner" in _reason(p, "workers 4")


def test_a_batch_larger_than_the_rollout_becomes_the_rollout():
    p = plan(load("quickstart", ["ppo.n_steps=16", "ppo.batch_size=4096"]), environ={}, cpus=2, machine=NO_GPU)
    assert p.batch_size == 32 and "larger than the rollout" in _reason(p, "batch_size 4096 -> 32")


@settings(max_examples=60, deadline=None)
@given(
    cpus=st.integers(1, 512),
    ranks=st.integers(1, 16),
    n_steps=st.integers(1, 4096),
    batch=st.integers(1, 65536),
    memory=st.one_of(st.none(), st.floats(0.5, 2048)),
)
def test_every_plan_is_consistent(cpus, ranks, n_steps, batch, memory):
    config = load("quickstart", [f"hardware.mpi_ranks={ranks}", f"ppo.n_steps={n_steps}", f"ppo.batch_size={batch}"])
    p = plan(config, environ={}, cpus=cpus, machine=Machine(cpus, memory, 0, "test"))
    assert (p.n_steps * p.n_envs) % p.batch_size == 0 and 1 <= p.batch_size <= batch
    assert 1 <= p.ranks <= cpus and p.ranks * p.cpus_per_rank <= cpus
    if p.workers:
        assert p.workers * p.envs_per_worker >= p.n_envs > (p.workers - 1) * p.envs_per_worker
    else:
        assert p.envs_per_worker == p.n_envs
    assert p.learner_threads >= 1 and len(p.reasons) >= 9
    text = format_plan(p)
    assert all(reason in text for reason in p.reasons)


@pytest.mark.parametrize("name", ["quickstart", "full"])
def test_cli_handler_prints_the_plan(name, capsys):
    assert main(["hardware", "--config", name]) == 0
    out = capsys.readouterr().out
    assert out.startswith("node ") and "why:" in out and "batch_size" in out


def test_gpus_named_but_not_visible_warn_and_huge_rollouts_are_refused():
    config = load("quickstart", ["hardware.gpus=3", "hardware.n_envs=20000"])
    p = plan(config, environ={}, cpus=2, machine=Machine(2, 24.0, 0, "no nvidia-smi"))
    assert any("hardware.gpus 3 but 0 GPU(s) visible" in w for w in p.warnings)
    # 256 steps x 20000 envs x 3,044 floats x 4 bytes = 62 GB: more than half of 24 GB
    assert p.rollout_gb == pytest.approx(256 * 20000 * 3044 * 4 / 1e9)
    assert p.refusal and "rollout buffers need 62.3 GB" in p.refusal and "half of the 24 GB" in p.refusal
    assert "env.obs_layout reference" in p.refusal
    with pytest.raises(ConfigError, match="more than half"):
        p.require()
    by_reference = load("quickstart", ["hardware.n_envs=20000", "env.obs_layout=reference"])
    fits = plan(by_reference, environ={}, cpus=2, machine=Machine(2, 24.0, 0, "test"))
    assert fits.refusal is None and fits.rollout_gb < 0.5  # the same envs by reference: 19 floats a step
    ok = plan(load("quickstart", []), environ={}, cpus=2, machine=Machine(2, 24.0, 0, "test"))
    assert not ok.warnings and ok.refusal is None
    ok.require()


def test_hardware_and_train_refuse_a_plan_above_half_of_node_memory(ploutos):
    for command in (("hardware",), ("train", "--fold", "0")):
        result = ploutos(*command, "--set", "hardware.n_envs=60000", "--set", "ppo.batch_size=64")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("ploutos: error: hardware: the rollout buffers need") and "more than half" in last


def test_rollout_buffers_by_reference_do_not_grow_with_lookback():
    machine = Machine(256, 1024.0, 0, "test")
    sizes = {}
    for layout in ("flat", "reference"):
        for lookback in (16, 64):
            config = load("full", [f"env.obs_layout={layout}", f"env.lookback={lookback}"])
            sizes[layout, lookback] = plan(config, environ={}, cpus=256, machine=machine).rollout_gb
    assert sizes["reference", 16] == sizes["reference", 64] < sizes["flat", 16] / 1000
    assert sizes["flat", 64] > 3.9 * sizes["flat", 16]
    p = plan(load("full", ["env.obs_layout=reference"]), environ={}, cpus=256, machine=machine)
    assert p.rollout_gb == pytest.approx(p.n_steps * p.n_envs * p.ranks * (1 + 15 + 3) * 4 / 1e9)
    assert any("19 floats per observation (by reference: row and portfolio)" in r for r in p.reasons)


def test_train_shows_the_plan_warnings_in_one_line_each(ploutos):
    result = ploutos("train", "--fold", "0", "--set", "hardware.gpus=3", "--set", "data.store=nowhere")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert lines[0].startswith("ploutos: warning: hardware.gpus 3 but") and lines[-1].startswith("ploutos: error: ")
