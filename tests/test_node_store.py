"""The /dev/shm feature store: round trip, read-only zero-copy views, refusals, owner lifetime, orphans."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ploutos.errors import PloutosError
from ploutos.node import store as shm

pytestmark = pytest.mark.skipif(not shm.SHM_DIR.is_dir(), reason="no /dev/shm")


def _arrays(n_time: int = 50, n_asset: int = 3, n_feat: int = 7, seed: int = 0) -> SimpleNamespace:
    """Duck-typed FeatureArrays (create reads attributes), so that child processes need not import polars."""
    rng = np.random.default_rng(seed)
    return SimpleNamespace(
        timestamps=np.datetime64("2024-01-01T00:00", "us") + np.arange(n_time) * np.timedelta64(1, "h"),
        tickers=tuple(f"T{i}" for i in range(n_asset)),
        names=tuple(f"f{i}" for i in range(n_feat)),
        values=rng.standard_normal((n_time, n_asset, n_feat)).astype(np.float32),
        valid=rng.random((n_time, n_asset)) > 0.1,
        present=rng.random((n_time, n_asset)) > 0.2,
        prices=rng.random((n_time, n_asset, 5)) * 100,
    )


def _files(job: str) -> list[str]:
    return sorted(p.name for p in shm.SHM_DIR.glob(f"ploutos_{job}_*"))


def _gone(path: Path, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not path.exists()


@pytest.fixture
def job():
    """A job id of this test alone; afterwards no segment of it may be left in /dev/shm."""
    name = f"test{uuid.uuid4().hex[:10]}"
    yield name
    left = _files(name)
    for leftover in left:
        (shm.SHM_DIR / leftover).unlink()
    assert left == [], f"segments left behind: {left}"


def _digest(store: shm.FeatureStore) -> str:
    h = hashlib.sha256()
    for field in shm.FIELDS:
        h.update(np.ascontiguousarray(getattr(store, field)).tobytes())
    return h.hexdigest()


def _child_read(name: str) -> str:
    with shm.attach(name, verify_data=True) as store:
        return _digest(store)


def test_round_trip_read_only_zero_copy_aligned(job):
    data = _arrays()
    with shm.create(data, job=job, config_hash="abc") as store:
        assert store.name == f"ploutos_{job}_features" and store.owner
        with shm.attach(store.name, expect_config_hash="abc", verify_data=True) as other:
            for field in shm.FIELDS:
                view = getattr(other, field)
                np.testing.assert_array_equal(view, getattr(data, field))
                assert view.dtype == getattr(data, field).dtype
                assert view.flags.writeable is False
                assert view.ctypes.data % shm.ALIGN == 0
                with pytest.raises(ValueError):
                    view.flat[0] = view.flat[0]
                base = view
                while isinstance(base, np.ndarray):
                    base = base.base
                base = base.obj if isinstance(base, memoryview) else base
                assert type(base).__name__ == "mmap"  # a view straight on the mapping, no copy
            assert other.tickers == data.tickers and other.names == data.names
            assert other.header["job"] == job and other.header["pid"] == os.getpid()
            arrays = other.to_arrays()
            assert np.shares_memory(arrays.values, other.values)
            assert store.values.flags.writeable is False  # the owner's views are read-only too
            assert other.nbytes == (shm.SHM_DIR / store.name).stat().st_size
    assert _files(job) == []


def test_spawned_child_reads_same_bytes_and_segment_survives_its_exit(job):
    with shm.create(_arrays(), job=job) as store:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            assert pool.apply(_child_read, (store.name,)) == _digest(store)
        time.sleep(0.1)
        assert (shm.SHM_DIR / store.name).exists()  # the 3.11 resource-tracker bug does not bite
        with shm.attach(store.name) as again:
            assert _digest(again) == _digest(store)


def _copy_with(src: Path, dst: Path, patch) -> None:
    raw = bytearray(src.read_bytes())
    dst.write_bytes(bytes(patch(raw)))


def _refused(name: str, *words: str, **kwargs) -> str:
    with pytest.raises(shm.StoreError) as info:
        shm.attach(name, **kwargs)
    message = str(info.value)
    assert isinstance(info.value, PloutosError) and "\n" not in message and name in message
    for word in words:
        assert word in message, message
    return message


def test_refuses_bad_segments(job):
    with shm.create(_arrays(), job=job, config_hash="h1") as store:
        src = shm.SHM_DIR / store.name
        _refused(store.name, "config hash", "h1", "h2", expect_config_hash="h2")
        _refused(shm.segment_name("missing", job), "does not exist", store.name)

        def flip(offset: int):
            def patch(raw: bytearray) -> bytearray:
                raw[offset] ^= 0xFF
                return raw

            return patch

        cases = {
            "foreign": (lambda raw: bytearray(b"NOTOURS!") + raw[8:], ("not a ploutos", "foreign")),
            "stale": (lambda raw: raw[:8] + struct.pack("<I", 99) + raw[12:], ("version 99", "stale")),
            "truncated": (lambda raw: raw[: len(raw) // 2], ("truncated",)),
            "tiny": (lambda raw: raw[:10], ("truncated",)),
            "corrupt": (flip(shm.PREFIX_SIZE + 5), ("corrupt", "checksum")),
            "data": (flip(len(src.read_bytes()) - 1), ("corrupt", "data checksum")),
        }
        for tag, (patch, words) in cases.items():
            dst = shm.SHM_DIR / shm.segment_name(tag, job)
            _copy_with(src, dst, patch)
            try:
                _refused(dst.name, *words, verify_data=tag == "data")
            finally:
                dst.unlink()
        with pytest.raises(shm.StoreError, match="already exists"):
            shm.create(_arrays(), job=job)


_OWNER = """
import os, signal, sys, time
sys.path[:0] = {paths!r}
from types import SimpleNamespace
import numpy as np
from ploutos.node import store as shm
a = SimpleNamespace(timestamps=np.zeros(4, "datetime64[us]"), tickers=("A",), names=("f",),
    values=np.ones((4, 1, 1), np.float32), valid=np.ones((4, 1), bool), present=np.ones((4, 1), bool),
    prices=np.ones((4, 1, 5)))
if sys.argv[2] == "usr2-handled":
    signal.signal(signal.SIGUSR2, lambda *_: print("checkpoint", flush=True))
store = shm.create(a, job=sys.argv[1])
print(store.name, store.reaper_pid, flush=True)
if sys.argv[2] == "exit":
    sys.exit(0)
while True:
    time.sleep(0.05)
"""


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (an exited reaper waits to be reaped by whoever adopted it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _owner(job: str, mode: str) -> tuple[subprocess.Popen[str], Path, int]:
    code = _OWNER.format(paths=[p for p in sys.path if p])
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), job, mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    name, reaper = proc.stdout.readline().split()
    return proc, shm.SHM_DIR / name, int(reaper)


@pytest.mark.parametrize("how", ["exit", "SIGTERM", "SIGINT", "SIGUSR2", "SIGKILL"])
def test_owner_removes_segment_however_it_ends(job, how):
    proc, path, reaper = _owner(job, how)
    if how != "exit":
        assert path.exists()
        proc.send_signal(getattr(signal, how))
    proc.wait(timeout=10)
    if how in ("SIGTERM", "SIGUSR2", "SIGKILL"):
        assert proc.returncode == -getattr(signal, how)
    assert _gone(path), f"{path.name} still there after {how}"
    deadline = time.monotonic() + 2.0
    while _running(reaper) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _running(reaper), "reaper did not exit"


def test_handled_sigusr2_keeps_store_and_process(job):
    proc, path, _ = _owner(job, "usr2-handled")
    try:
        proc.send_signal(signal.SIGUSR2)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "checkpoint"
        assert proc.poll() is None and path.exists()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert _gone(path)


def test_list_and_clean_remove_only_orphans(job):
    proc, orphan, reaper = _owner(job, "sleep")
    os.kill(reaper, signal.SIGKILL)
    time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=10)
    foreign = shm.SHM_DIR / shm.segment_name("foreign", job)
    foreign.write_bytes(b"somebody else's data")
    try:
        with shm.create(_arrays(), job=job, tag="live") as live:
            infos = {s.name: s for s in shm.list_segments() if s.job == job}
            assert set(infos) == {orphan.name, live.name}  # the foreign file is not ours, not listed
            assert infos[orphan.name].alive is False and infos[orphan.name].pid == proc.pid
            assert infos[live.name].alive is True and infos[live.name].pid == os.getpid()
            assert shm.clean(job="someone-else") == ([], []) and orphan.exists()
            assert shm.clean(job=job) == ([orphan.name], [])
            assert not orphan.exists() and (shm.SHM_DIR / live.name).exists() and foreign.exists()
            with pytest.raises(shm.StoreError, match=f"segments of job {job}: {live.name}"):
                shm.attach(orphan.name)
    finally:
        foreign.unlink()


def test_names():
    assert shm.segment_name("features", "123_4") == "ploutos_123_4_features"
    with pytest.raises(shm.StoreError):
        shm.segment_name("bad_tag", "1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    run = [sys.executable, "-c", "from ploutos.node import store; print(store.job_id())"]
    assert subprocess.run(run, env={**env, "SLURM_JOB_ID": "77"}, capture_output=True, text=True).stdout == "77\n"
    both = {**env, "SLURM_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3"}
    assert subprocess.run(run, env=both, capture_output=True, text=True).stdout == "77_3\n"
    assert subprocess.run(run, env=env, capture_output=True, text=True).stdout.startswith("local")


def test_clean_reports_orphans_it_may_not_remove(monkeypatch):
    """Another user's orphan: listed as not removed, no PermissionError (root may remove anything, so faked)."""
    info = shm.SegmentInfo(
        name="ploutos_99999_x", job="99999", size=1, created=0.0, pid=1, host="h", alive=False, problem=""
    )
    monkeypatch.setattr(shm, "list_segments", lambda: [info])
    monkeypatch.setattr(shm.os, "unlink", lambda path: (_ for _ in ()).throw(PermissionError(1, "denied")))
    assert shm.clean() == ([], ["ploutos_99999_x: not removed, it belongs to another user (ask them or root)"])
