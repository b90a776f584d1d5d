"""Thread pinning, MPI detection and the node feature store, under a real ``mpirun -n 2``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from ploutos.node import store as shm
from ploutos.node.context import (
    SINGLE,
    NodeContext,
    launched_under_mpi,
    node_context,
    node_feature_store,
    worker_attach,
    worker_environment,
)

PROGRAM = REPO / "tests" / "mpi_programs" / "node_store.py"
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "PYTHONUNBUFFERED": "1"}


def _job() -> str:
    return f"pytest{uuid.uuid4().hex[:10]}"


def _segments(job: str) -> list[str]:
    return sorted(p.name for p in shm.SHM_DIR.glob(f"ploutos_{job}_*"))


def _mpirun(ranks: int, *args: str) -> list[str]:
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.fail("mpirun not found: run scripts/setup.sh (installs openmpi-bin and mpi4py)")
    return [mpirun, "-n", str(ranks), "--oversubscribe", sys.executable, str(PROGRAM), *args]


def _results(stdout: str) -> list[dict]:
    rows = [json.loads(line[len("RESULT ") :]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    return sorted(rows, key=lambda row: row["rank"])


def _wait_gone(job: str, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while _segments(job) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _segments(job)


@pytest.mark.cluster
def test_one_store_per_node_shared_by_ranks_and_their_workers():
    job = _job()
    env = {**os.environ, **MPI_ENV}
    proc = subprocess.run(_mpirun(2, "--job", job), env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = _results(proc.stdout)
    assert [r["rank"] for r in ranks] == [0, 1], proc.stdout
    assert all(r["size"] == 2 and r["node_size"] == 2 for r in ranks)
    assert [r["owner"] for r in ranks] == [True, False]
    assert ranks[0]["name"] == ranks[1]["name"] == f"ploutos_{job}_features"
    assert ranks[0]["segments"] == ranks[1]["segments"] == [ranks[0]["name"]]  # one copy on the node
    checksums = {r["sha256"] for r in ranks} | {w["sha256"] for r in ranks for w in r["workers"]}
    assert len(checksums) == 1
    workers = [w for r in ranks for w in r["workers"]]
    assert len(workers) == 4
    assert not any(w["mpi4py"] for w in workers), "an env worker imported mpi4py"
    assert all(w["blas_threads"] == 1 and not w["writeable"] for w in workers)
    assert _wait_gone(job, timeout=2) == []


@pytest.mark.cluster
def test_a_failed_build_on_rank_0_reaches_every_rank_instead_of_hanging():
    job = _job()
    env = {**os.environ, **MPI_ENV}
    proc = subprocess.run(
        _mpirun(2, "--job", job, "--mode", "fail"), env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    ranks = _results(proc.stdout)
    assert [r["rank"] for r in ranks] == [0, 1], proc.stdout + proc.stderr
    assert "synthetic build failure" in ranks[0]["error"]
    assert ranks[1]["error"].startswith("NodeStoreError: node rank 0 failed to build the feature store")
    assert "synthetic build failure" in ranks[1]["error"]
    assert _segments(job) == []


@pytest.mark.cluster
def test_a_rank_that_cannot_attach_fails_every_rank_and_the_segment_goes():
    job = _job()
    env = {**os.environ, **MPI_ENV}
    proc = subprocess.run(
        _mpirun(2, "--job", job, "--mode", "mismatch"), env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    ranks = _results(proc.stdout)
    assert [r["rank"] for r in ranks] == [0, 1], proc.stdout + proc.stderr
    assert "config" in ranks[1]["error"] and ranks[1]["error"].startswith("StoreError")
    assert ranks[0]["error"].startswith("NodeStoreError: feature store not attached on every rank: node rank 1: ")
    assert _wait_gone(job, timeout=2) == []


def _start_hanging_job(job: str) -> tuple[subprocess.Popen, list[dict]]:
    env = {**os.environ, **MPI_ENV}
    proc = subprocess.Popen(
        _mpirun(2, "--job", job, "--mode", "hang", "--workers", "0"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    ready: list[dict] = []
    timer = threading.Timer(45, proc.kill)  # never block the suite on a job that does not start
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("RESULT "):
                ready.append(json.loads(line[len("RESULT ") :]))
                if len(ready) == 2:
                    break
        assert len(ready) == 2, "the MPI job did not get ready"
    except BaseException:
        # a job that hangs by design must not outlive a failed test (nor keep its segment)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        raise
    finally:
        timer.cancel()
    return proc, sorted(ready, key=lambda row: row["rank"])


def _finish(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        pytest.fail("mpirun did not end after its job was killed")


@pytest.mark.cluster
def test_sigterm_to_mpirun_removes_the_segment():
    job = _job()
    proc, ready = _start_hanging_job(job)
    try:
        assert _segments(job) == [ready[0]["name"]]
        proc.send_signal(signal.SIGTERM)
        assert _wait_gone(job) == []
    finally:
        _finish(proc)


@pytest.mark.cluster
def test_sigkill_of_node_rank_0_removes_the_segment():
    job = _job()
    proc, ready = _start_hanging_job(job)
    try:
        assert ready[0]["owner"] and _segments(job) == [ready[0]["name"]]
        os.kill(ready[0]["pid"], signal.SIGKILL)
        assert _wait_gone(job) == []
    finally:
        _finish(proc)


def test_without_mpi_the_process_is_its_own_node():
    assert not launched_under_mpi({})
    assert launched_under_mpi({"OMPI_COMM_WORLD_SIZE": "2"})
    assert launched_under_mpi({"PMI_SIZE": "4"})
    assert launched_under_mpi({"SLURM_STEP_NUM_TASKS": "8"})
    assert not launched_under_mpi({"SLURM_STEP_NUM_TASKS": "1"})
    assert not launched_under_mpi({"OMPI_COMM_WORLD_SIZE": "2", "PLOUTOS_ENV_WORKER": "1"})
    assert node_context() == SINGLE and SINGLE.is_node_leader and not SINGLE.is_mpi
    assert isinstance(SINGLE, NodeContext)


def test_node_feature_store_without_mpi_is_a_single_process_store(tmp_path: Path):
    sys.path.insert(0, str(PROGRAM.parent))
    try:
        from node_store import synthetic
    finally:
        sys.path.remove(str(PROGRAM.parent))
    arrays = synthetic(n_time=500)
    job = _job()
    store = node_feature_store(lambda: arrays, config_hash="cfg", job=job)
    try:
        assert store.owner and _segments(job) == [store.name]
        np.testing.assert_array_equal(store.values, arrays.values)
        reader = worker_attach(store.name, expect_config_hash="cfg")
        np.testing.assert_array_equal(reader.prices, arrays.prices)
        assert not reader.owner
        reader.close()
    finally:
        store.close()
        os.environ.pop("PLOUTOS_ENV_WORKER", None)  # worker_attach marks the process as a worker
    assert _segments(job) == []


def _python(code: str, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_worker_environment_caps_blas_and_keeps_mpi_away():
    env = worker_environment(1, base={**os.environ, "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"})
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    code = (
        "import sys; from ploutos.node.context import blas_threads, node_context; "
        "ctx = node_context(); print(blas_threads(), ctx.world_size, 'mpi4py' in sys.modules)"
    )
    assert _python(code, env) == "1 1 False"


def test_pin_threads_after_numpy_is_loaded():
    env = {key: value for key, value in os.environ.items() if not key.endswith("_NUM_THREADS")}
    code = (
        "import numpy, sys; from ploutos.node.context import pin_threads, blas_threads; import os; "
        "pin_threads(1); import torch; torch.set_num_threads(3); pin_threads(1); "
        "print(blas_threads(), torch.get_num_threads(), os.environ['OMP_NUM_THREADS'], 'mpi4py' in sys.modules)"
    )
    assert _python(code, env) == "1 1 1 False"


def test_threads_sh_exports_the_same_variables():
    from ploutos.node.context import THREAD_VARIABLES

    script = REPO / "env" / "threads.sh"
    code = "import os, json; print(json.dumps({k: v for k, v in os.environ.items() if k.endswith('THREADS')}))"
    for args, expected in (("", "1"), ("4", "4")):
        out = subprocess.run(
            ["bash", "-c", f'source "{script}" {args} && "{sys.executable}" -c "{code}"'],
            env={"PATH": os.environ.get("PATH", "")},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        exported = json.loads(out)
        assert {key: exported.get(key) for key in THREAD_VARIABLES} == dict.fromkeys(THREAD_VARIABLES, expected)
    bad = subprocess.run(["bash", "-c", f'source "{script}" zero'], capture_output=True, text=True)
    assert bad.returncode == 2 and "positive integer" in bad.stderr
