"""Task locks: one holder at a time; a holder that is provably gone is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from ploutos.results import locks
from ploutos.results.locks import Holder, TaskHeld, TaskLock


def _write(path: Path, holder: Holder) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(holder)))


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_one_holder_at_a_time_and_release_frees_it(tmp_path: Path):
    path = tmp_path / "locks" / "fold0_member0.lock"
    first = TaskLock(path, "fold0_member0")
    first.acquire()
    assert first.read() == first.holder and first.holder.pid == os.getpid()
    with pytest.raises(TaskHeld, match=r"fold0_member0 is being trained by host .* pid \d+"):
        TaskLock(path, "fold0_member0").acquire()
    first.release()
    assert not path.exists()
    with TaskLock(path, "fold0_member0") as again:
        assert again.holder is not None


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"pid": None}, id="dead-process-on-this-host"),
        pytest.param({"host": "elsewhere", "heartbeat": time.time() - locks.STALE_S - 5}, id="stale-heartbeat"),
        pytest.param({"host": "elsewhere", "job": "4242_3"}, id="same-slurm-job-requeued"),
    ],
)
def test_a_gone_holder_is_taken_over(tmp_path: Path, monkeypatch, change: dict):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    path = tmp_path / "t.lock"
    gone = replace(Holder.me(), host=socket.gethostname(), job="99_1")
    gone = replace(gone, **{**change, "pid": _dead_pid()} if "pid" in change else change)
    _write(path, gone)
    with TaskLock(path, "t") as lock:
        assert lock.read() == lock.holder != gone


def test_a_live_holder_elsewhere_is_respected_and_a_damaged_lock_is_not(tmp_path: Path):
    path = tmp_path / "t.lock"
    _write(path, replace(Holder.me(), host="other-node", job="77", pid=1))
    with pytest.raises(TaskHeld, match="host other-node pid 1 .job 77"):
        TaskLock(path, "t").acquire()
    path.write_text("{not json")
    with TaskLock(path, "t") as lock:
        assert lock.read() == lock.holder


def test_the_heartbeat_moves_while_held(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(locks, "HEARTBEAT_S", 0.05)
    with TaskLock(tmp_path / "t.lock", "t") as lock:
        first = lock.read().heartbeat
        time.sleep(0.5)
        assert lock.read().heartbeat > first
