"""The walk-forward on a real Slurm: the local cluster of slurm/local/ (slurmctld, three slurmd on
this host, munge; no accounting, so sacct fails as on many small clusters).

- ``sbatch --wait slurm/train_array.sh`` runs every task and the aggregation;
- the submitit Slurm path (jobs/walkforward.py) does the same from Python;
- a task signalled before its time limit checkpoints, is requeued and resumes to its total, while
  a task that crashes is listed as missing by the aggregation and the others stay intact.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from conftest import REPO

pytestmark = pytest.mark.cluster
SLURM_DIR = Path(os.environ.get("PLOUTOS_SLURM_DIR", "/tmp/ploutos-slurm"))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The local cluster (started here if it is not up) and the environment that reaches it."""
    started = subprocess.run(
        ["bash", str(REPO / "slurm" / "local" / "start.sh")], capture_output=True, text=True, timeout=900
    )
    if started.returncode != 0:
        pytest.fail(f"the local Slurm did not start (run scripts/setup.sh as root):\n{started.stdout}{started.stderr}")
    env = {
        **os.environ,
        "SLURM_CONF": str(SLURM_DIR / "slurm.conf"),
        "PLOUTOS_PYTHON": sys.executable,
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    yield env


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("data") / "quickstart"
    command = [sys.executable, "-m", "ploutos", "data", "build", "--no-progress", "--set", f"data.store={store}"]
    assert subprocess.run(command, capture_output=True, text=True, timeout=120).returncode == 0
    return store


def _settings(dataset: Path, results: Path, **extra: object) -> list[str]:
    values = {
        "data.store": dataset,
        "results_dir": results,
        "ppo.total_timesteps": 512,
        "hardware.n_envs": 2,
        "hardware.envs_per_worker": 2,
        **extra,
    }
    return [part for key, value in values.items() for part in ("--set", f"{key}={value}")]


def _summary(run: Path) -> dict:
    with h5py.File(run / "summary.h5", "r", locking=False) as h5:
        tasks = h5["tasks"]
        status = {
            (int(f), int(m)): s.decode() if isinstance(s, bytes) else str(s)
            for f, m, s in zip(tasks["fold"][:], tasks["member"][:], tasks["status"][:], strict=True)
        }
        return {"complete": bool(h5.attrs["complete"]), "status": status, "oos": len(h5["oos/ensemble"][:])}


def _wait_gone(job: str, env: dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], env=env, capture_output=True, text=True).stdout
        if not any(line.split("_")[0] == job for line in out.split()):
            return
        time.sleep(2)
    subprocess.run(["scancel", job], env=env)
    pytest.fail(f"job {job} still queued after {timeout:.0f} s")


def _job_of(array_job: str, index: int, env: dict[str, str]) -> str:
    """The job id of a running array task: its training step is ``<id>.0``. (Signalling the job
    itself goes through slurmctld, which answers "try again later" for minutes while the task
    requeues; the step is signalled by its slurmd at once.)"""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %A"], env=env, capture_output=True, text=True).stdout
    ids = dict(line.split() for line in out.splitlines())
    return ids[f"{array_job}_{index}"]


def test_sbatch_wait_runs_every_task_and_the_aggregation(slurm, dataset, tmp_path):
    results = tmp_path / "results"
    command = ["sbatch", "--wait", str(REPO / "slurm" / "train_array.sh"), str(REPO / "configs" / "quickstart.yaml")]
    proc = subprocess.run(
        [*command, *_settings(dataset, results)], cwd=tmp_path, env=slurm, capture_output=True, text=True, timeout=900
    )
    submit_log = next(tmp_path.glob("ploutos-submit-*.log"), None)
    log = submit_log.read_text() if submit_log else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    assert "submitted array job" in log and "6/6 task(s) done" in log
    run = results / "quickstart"
    summary = _summary(run)
    assert summary["complete"] and summary["oos"] > 2000
    assert sorted(summary["status"]) == sorted([(f, m) for f in range(3) for m in (-1, 0, 1)])
    assert set(summary["status"].values()) == {"ok"}
    assert sorted(p.name for p in (run / "logs" / "slurm").glob("task-*.log")) == [f"task-{i}.log" for i in range(6)]
    assert (run / "report" / "summary.md").exists() and (run / "report" / "oos_equity.png").exists()


def test_signalled_task_requeues_and_resumes_while_a_crashed_task_is_reported(slurm, dataset, tmp_path):
    results = tmp_path / "results"
    steps = 16384  # long enough to be signalled while it runs
    settings = _settings(
        dataset,
        results,
        **{
            "ppo.total_timesteps": steps,
            "ppo.checkpoint_every": 512,
            "slurm.array_parallelism": 2,
            "walkforward.max_folds": 2,
        },
    )
    launch = [sys.executable, "-m", "ploutos", "launch", "--executor", "sbatch", "--no-wait", "--config", "quickstart"]
    proc = subprocess.run([*launch, *settings], cwd=tmp_path, env=slurm, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array_job = re.search(r"submitted array job (\d+)", proc.stdout).group(1)
    aggregate_job = re.search(r"aggregation job (\d+)", proc.stdout).group(1)
    run = results / "quickstart"
    try:
        checkpoints = [run / "checkpoints" / f"fold0_member{m}.ckpt" for m in (0, 1)]
        deadline = time.monotonic() + 300
        while not all(c.exists() for c in checkpoints) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(c.exists() for c in checkpoints), "tasks 0 and 1 wrote no checkpoint"
        # task 0: the time-limit warning, early; task 1: its training process crashes
        subprocess.run(["scancel", "--signal=USR2", f"{_job_of(array_job, 0, slurm)}.0"], env=slurm, check=True)
        subprocess.run(["scancel", "--signal=KILL", f"{_job_of(array_job, 1, slurm)}.0"], env=slurm, check=True)
        _wait_gone(aggregate_job, slurm, timeout=900)
    finally:
        subprocess.run(["scancel", array_job, aggregate_job], env=slurm)

    summary = _summary(run)
    assert not summary["complete"]
    status = summary["status"]
    assert status[(0, 1)] == "missing" and status[(0, -1)] == "missing"  # the crash, and its fold's ensemble
    assert [state for key, state in sorted(status.items()) if key not in {(0, 1), (0, -1)}] == ["ok"] * 4
    with h5py.File(run / "tasks" / "fold0_member0.h5", "r", locking=False) as h5:
        provenance = dict(h5["provenance"].attrs)
    assert provenance["resumed"] == 1 and provenance["timesteps"] == steps
    assert str(provenance["slurm_restart_count"]) == "1"
    assert "requeueing" in (run / "logs" / "slurm" / "task-0.log").read_text()
    with h5py.File(run / "summary.h5", "r", locking=False) as h5:
        missing = [line.decode() if isinstance(line, bytes) else line for line in h5["missing"][:]]
    assert any(line.startswith("fold0_member1") for line in missing)


def test_submitit_slurm_path_from_python(slurm, dataset, tmp_path):
    settings = _settings(dataset, tmp_path / "results", **{"ensemble.members": 1, "walkforward.max_folds": 2})
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "walkforward.py"), "--config", "quickstart", "--executor", "slurm"]
        + settings,
        cwd=tmp_path,
        env=slurm,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = _summary(tmp_path / "results" / "quickstart")
    assert summary["complete"] and sorted(summary["status"]) == [(0, -1), (0, 0), (1, -1), (1, 0)]
    assert (tmp_path / "results" / "quickstart" / "report" / "summary.md").exists()


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the built wheel of this repository, and nothing from the checkout.

    The wheel is the real build; only its dependencies come from the test venv's site-packages (by
    path, so that its editable hook for the checkout is not loaded): installing torch and friends
    again would cost minutes and gigabytes for nothing this test looks at.
    """
    root = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(root), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next(root.glob("ploutos-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    dependencies = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "torch").is_dir())
    (Path(site) / "ploutos_test_dependencies.pth").write_text(f"{dependencies}\n")
    where = subprocess.run(
        [str(python), "-c", "import ploutos; print(ploutos.__file__)"], capture_output=True, text=True, cwd=root
    )
    assert where.stdout.startswith(site), where.stdout + where.stderr  # the wheel's package, not the checkout
    return python


def test_a_wheel_install_renders_submits_and_runs_without_the_checkout(slurm, dataset, wheel_python, tmp_path):
    """`ploutos launch --executor sbatch` from the installed wheel, in a folder outside the checkout:
    the scripts it renders name only the venv and the run folder, pass `bash -n`, and run on Slurm."""
    results = tmp_path / "results"
    settings = _settings(dataset, results, **{"ensemble.members": 1, "walkforward.max_folds": 1})
    env = {**slurm, "PLOUTOS_PYTHON": str(wheel_python), "PATH": f"{wheel_python.parent}:{slurm['PATH']}"}
    launch = [
        str(wheel_python.parent / "ploutos"),
        "launch",
        "--executor",
        "sbatch",
        "--no-wait",
        "--config",
        "quickstart",
    ]
    proc = subprocess.run([*launch, *settings], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array_job = re.search(r"submitted array job (\d+)", proc.stdout).group(1)
    aggregate_job = re.search(r"aggregation job (\d+)", proc.stdout).group(1)
    run = results / "quickstart"
    try:
        for script in ("train_array.sbatch", "aggregate.sbatch"):
            text = (run / "slurm" / script).read_text()
            assert str(REPO) not in text, f"{script} reaches into the source checkout"
            assert f"{wheel_python} -m ploutos " in text
            assert subprocess.run(["bash", "-n", str(run / "slurm" / script)]).returncode == 0
        _wait_gone(aggregate_job, slurm, timeout=600)
    finally:
        subprocess.run(["scancel", array_job, aggregate_job], env=slurm)
    summary = _summary(run)
    assert summary["complete"] and summary["status"] == {(0, 0): "ok", (0, -1): "ok"}
    assert (run / "report" / "summary.md").exists()
    with h5py.File(run / "tasks" / "fold0_member0.h5", "r", locking=False) as h5:
        assert h5["provenance"].attrs["git_revision"] == "unknown"  # ran from the wheel, not from git
