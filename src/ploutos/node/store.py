"""One read-only copy of the feature arrays in /dev/shm, shared zero-copy by every env worker on a node.

Why not :mod:`multiprocessing.shared_memory`: in Python 3.11 its resource tracker unlinks a segment
when any *attaching* process exits, so one finished worker would delete the store under the others.
We use the tmpfs file directly: the owner creates it with ``O_CREAT|O_EXCL`` (two jobs can never
silently share a name), workers open it ``O_RDONLY`` and map it ``PROT_READ``, so every view is
read-only by construction and no attaching process can damage or unlink it.

File layout: a fixed prefix (magic ``PLOUTOS\\0``, format version, JSON length, data offset, total
size, CRC-32 of prefix and JSON), the JSON header (shapes, dtypes, offsets, tickers, feature names,
config hash, job, creator, CRC-32 of the data), then the arrays at 64-byte aligned offsets from a
page-aligned data start. The magic is written last, so a half-written file is never accepted.

Lifetime: the owner unlinks the file on :meth:`FeatureStore.close`, at exit (atexit), on
SIGTERM/SIGINT (then chains to the previous handler or dies by the default action) and on SIGUSR2
when that would terminate the process (a Python SIGUSR2 handler, e.g. a Slurm checkpoint, keeps the
process and the store alive). Against SIGKILL and crashes a tiny reaper process (no numpy) holds the
read end of a pipe and unlinks the file when the pipe closes without the owner's "done" byte. The
owner also holds an ``flock`` on the file, which is how :func:`list_segments` tells live from orphaned.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import mmap
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from ploutos.errors import PloutosError
from ploutos.features.arrays import FeatureArrays

MAGIC = b"PLOUTOS\x00"
VERSION = 1
PREFIX = struct.Struct("<8sIIQQI")  # magic, version, json length, data offset, total size, header crc
PREFIX_SIZE = 64
ALIGN = 64
SHM_DIR = Path(os.environ.get("PLOUTOS_SHM_DIR", "/dev/shm"))
"""Where segments live; ``PLOUTOS_SHM_DIR`` overrides it (e.g. on a system without /dev/shm)."""
FIELDS = ("timestamps", "values", "valid", "present", "prices")
_NAME = re.compile(r"^ploutos_(?P<job>[A-Za-z0-9_.-]+)_(?P<tag>[A-Za-z0-9.-]+)$")
_CREATING_GRACE_S = 5.0
"""A file without a header younger than this may be one being created right now: never cleaned."""

_REAPER = """\
import os, signal, sys
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(s, signal.SIG_IGN)
path, ino, got = sys.argv[1], int(sys.argv[2]), b""
while True:
    try:
        chunk = os.read(0, 64)
    except InterruptedError:
        continue
    if not chunk:
        break
    got += chunk
if b"x" not in got:
    try:
        if os.stat(path).st_ino == ino:
            os.unlink(path)
    except OSError:
        pass
"""


class StoreError(PloutosError):
    """A shared-memory feature store cannot be created or attached; names the segment and the problem."""


def job_id() -> str:
    """``<SLURM_JOB_ID>[_<SLURM_ARRAY_TASK_ID>]`` under Slurm, else ``local<pid>``: jobs on a node never collide."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return f"local{os.getpid()}"
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if task else job


def segment_name(tag: str, job: str | None = None) -> str:
    """``ploutos_<job>_<tag>``; the tag may not contain ``_`` so that the job can be read back from the name."""
    name = f"ploutos_{job or job_id()}_{tag}"
    if not _NAME.match(name) or "_" in tag:
        raise StoreError(f"bad segment name {name!r}: job must be [A-Za-z0-9_.-]+ and tag [A-Za-z0-9.-]+")
    return name


def _align(n: int, to: int = ALIGN) -> int:
    return -(-n // to) * to


def process_start_time(pid: int) -> int | None:
    """Process start time in clock ticks (guards against pid reuse), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


# --------------------------------------------------------------------------------------------
# Owner bookkeeping: atexit and signal handlers unlink what this process created
# --------------------------------------------------------------------------------------------

_owned: dict[str, tuple[int, int]] = {}  # name -> (inode, owner pid)
_previous: dict[int, Any] = {}
_installed = False
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


def _unlink_owned() -> None:
    for name, (ino, pid) in list(_owned.items()):
        if pid == os.getpid():  # a forked child inherits _owned but does not own the segments
            _unlink_if(SHM_DIR / name, ino)
        _owned.pop(name, None)


def _unlink_if(path: Path, ino: int) -> bool:
    """Unlink ``path`` only if it is still the file with inode ``ino`` (not a newer one of the same name)."""
    try:
        if os.stat(path).st_ino == ino:
            os.unlink(path)
            return True
    except OSError:
        pass
    return False


def _on_signal(signum: int, frame: FrameType | None) -> None:
    prev = _previous.get(signum, signal.SIG_DFL)
    if prev is signal.SIG_IGN:
        return
    if callable(prev):
        if signum != signal.SIGUSR2:  # SIGUSR2 handled in Python = checkpoint and go on: keep the store
            _unlink_owned()
        prev(signum, frame)
        return
    _unlink_owned()  # default action (or a handler not set from Python): terminate as before
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    """Once per process: atexit, and signal handlers chained in front of the previous ones."""
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(_unlink_owned)
    for sig in _SIGNALS:
        try:
            _previous[sig] = signal.signal(sig, _on_signal)
        except ValueError:  # not the main thread: atexit and the reaper still cover us
            return


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class FeatureStore:
    """Read-only views of one segment; the owner (from :func:`create`) also unlinks it on close."""

    def __init__(self, name: str, mm: mmap.mmap, header: dict[str, Any], *, owner: bool = False) -> None:
        self.name, self.header, self.owner = name, header, owner
        self.nbytes: int = header["total_size"]
        self.tickers: tuple[str, ...] = tuple(header["tickers"])
        self.names: tuple[str, ...] = tuple(header["names"])
        self._mm: mmap.mmap | None = mm
        self._arrays: dict[str, np.ndarray] = {}
        for field in FIELDS:
            spec = header["arrays"][field]
            count = int(np.prod(spec["shape"], dtype=np.int64))
            arr = np.frombuffer(mm, np.dtype(spec["dtype"]), count, header["data_offset"] + spec["offset"])
            self._arrays[field] = arr.reshape(spec["shape"])
        self._fd: int | None = None
        self._reaper: subprocess.Popen[bytes] | None = None
        self._pipe: int | None = None
        self._ino = 0

    def _get(self, field: str) -> np.ndarray:
        if self._mm is None:
            raise StoreError(f"shared-memory segment {self.name}: store is closed")
        return self._arrays[field]

    @property
    def timestamps(self) -> np.ndarray:
        """(T,) datetime64[us], read-only view."""
        return self._get("timestamps")

    @property
    def values(self) -> np.ndarray:
        """(T, A, F) float32, read-only view."""
        return self._get("values")

    @property
    def valid(self) -> np.ndarray:
        """(T, A) bool, read-only view."""
        return self._get("valid")

    @property
    def present(self) -> np.ndarray:
        """(T, A) bool, read-only view."""
        return self._get("present")

    @property
    def prices(self) -> np.ndarray:
        """(T, A, 5) float64: open, high, low, close, volume, read-only view."""
        return self._get("prices")

    @property
    def reaper_pid(self) -> int | None:
        """Pid of the owner's reaper process (None when attached)."""
        return self._reaper.pid if self._reaper is not None else None

    def to_arrays(self) -> FeatureArrays:
        """The store as :class:`FeatureArrays` of read-only views (no copy)."""
        return FeatureArrays(self.timestamps, self.tickers, self.names, self.values, self.valid, self.present,
                             self.prices)  # fmt: skip

    def close(self) -> None:
        """Unmap (the owner first unlinks and dismisses its reaper). Views still held elsewhere stay valid
        until they are garbage-collected, which is when the mapping really goes away."""
        if self._mm is None:
            return
        mm, self._mm = self._mm, None
        self._arrays.clear()
        if self.owner:
            _unlink_if(SHM_DIR / self.name, self._ino)
            _owned.pop(self.name, None)
            if self._pipe is not None:
                os.write(self._pipe, b"x")
                os.close(self._pipe)
            if self._reaper is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._reaper.wait(timeout=2.0)
        if self._fd is not None:
            os.close(self._fd)  # also releases the owner's flock
        with contextlib.suppress(BufferError):  # someone still holds a view: unmapped when they drop it
            mm.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        shape = self.header["arrays"]["values"]["shape"]
        return f"FeatureStore({self.name!r}, values {tuple(shape)}, {self.nbytes / 2**20:.1f} MB, owner={self.owner})"


def _layout(arrays: dict[str, np.ndarray]) -> tuple[dict[str, dict[str, Any]], int]:
    specs, offset = {}, 0
    for field in FIELDS:
        arr = arrays[field]
        specs[field] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset, "nbytes": arr.nbytes}
        offset = _align(offset + arr.nbytes)
    return specs, offset


def _allocate(name: str, fd: int, size: int) -> None:
    """Reserve the pages now: a full /dev/shm then fails here with a clear error, not with SIGBUS on first write."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate
            os.ftruncate(fd, size)
            return
        raise StoreError(
            f"shared-memory segment {name}: cannot allocate {size / 2**20:.0f} MB in {SHM_DIR}: {err.strerror}"
        ) from None


def create(
    arrays: FeatureArrays, *, tag: str = "features", job: str | None = None, config_hash: str = ""
) -> FeatureStore:
    """Copy ``arrays`` into a new segment ``ploutos_<job>_<tag>`` and return the owning store."""
    job = job or job_id()
    name = segment_name(tag, job)
    path = SHM_DIR / name
    data = {field: np.ascontiguousarray(getattr(arrays, field)) for field in FIELDS}
    specs, data_size = _layout(data)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except FileExistsError:
        raise StoreError(f"shared-memory segment {name} already exists; use another tag, or "
                         f"`ploutos shm clean` if it is an orphan") from None  # fmt: skip
    except OSError as err:
        raise StoreError(f"shared-memory segment {name}: cannot create in {SHM_DIR}: {err.strerror}") from None
    fcntl.flock(fd, fcntl.LOCK_SH)
    ino = os.fstat(fd).st_ino
    read_end, write_end = os.pipe()
    try:
        reaper = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _REAPER, str(path), str(ino)],
            stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    except BaseException:
        os.close(write_end)
        os.close(fd)
        os.unlink(path)
        raise
    finally:
        os.close(read_end)
    _owned[name] = (ino, os.getpid())
    _install_handlers()
    try:
        header = {
            "format": VERSION, "job": job, "tag": tag, "config_hash": config_hash, "pid": os.getpid(),
            "start_time": process_start_time(os.getpid()), "host": socket.gethostname(), "created": time.time(),
            "reaper_pid": reaper.pid, "tickers": list(arrays.tickers), "names": list(arrays.names), "arrays": specs,
        }  # fmt: skip
        json_len_guess = len(json.dumps(header)) + 256  # room for data_crc, offsets and total_size
        data_offset = _align(PREFIX_SIZE + json_len_guess, mmap.PAGESIZE)
        total = data_offset + data_size
        _allocate(name, fd, total)
        with mmap.mmap(fd, total, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)) as rw:
            for field, arr in data.items():
                dst = np.ndarray(arr.shape, arr.dtype, buffer=rw, offset=data_offset + specs[field]["offset"])
                dst[...] = arr
                del dst
            view = memoryview(rw)
            header.update(data_offset=data_offset, total_size=total, data_crc=zlib.crc32(view[data_offset:]))
            blob = json.dumps(header).encode()
            if PREFIX_SIZE + len(blob) > data_offset:
                raise StoreError(f"shared-memory segment {name}: header does not fit ({len(blob)} bytes)")
            view[PREFIX_SIZE : PREFIX_SIZE + len(blob)] = blob
            prefix = PREFIX.pack(MAGIC, VERSION, len(blob), data_offset, total, 0)
            crc = zlib.crc32(blob, zlib.crc32(prefix[:-4]))
            view[: PREFIX.size] = PREFIX.pack(b"\0" * 8, VERSION, len(blob), data_offset, total, crc)
            view[:8] = MAGIC  # last: a half-written file never looks valid
            view.release()
        mm = mmap.mmap(fd, total, prot=mmap.PROT_READ)
    except BaseException:
        _owned.pop(name, None)
        os.close(write_end)
        os.close(fd)
        _unlink_if(path, ino)
        reaper.wait()
        raise
    store = FeatureStore(name, mm, header, owner=True)
    store._fd, store._reaper, store._pipe, store._ino = fd, reaper, write_end, ino
    return store


def _read_header(name: str, fd: int, size: int) -> dict[str, Any]:
    """Parse and check the prefix and JSON header of an open segment; StoreError says what is wrong."""
    where = f"shared-memory segment {name}"
    raw = os.pread(fd, PREFIX.size, 0)
    if len(raw) < PREFIX.size:
        raise StoreError(f"{where} is truncated ({size} bytes, smaller than the header)")
    magic, version, json_len, data_offset, total, crc = PREFIX.unpack(raw)
    if magic != MAGIC:
        what = "still being created or its creator died" if magic == b"\0" * 8 else "foreign"
        raise StoreError(f"{where} is not a ploutos feature store ({what}: bad magic {magic!r})")
    if version != VERSION:
        raise StoreError(f"{where} has format version {version}, this ploutos reads {VERSION} "
                         f"(stale segment from another version; `ploutos shm clean` removes orphans)")  # fmt: skip
    if size < total or size < PREFIX_SIZE + json_len:
        raise StoreError(f"{where} is truncated: {size} bytes, header says {total}")
    blob = os.pread(fd, json_len, PREFIX_SIZE)
    if zlib.crc32(blob, zlib.crc32(raw[:-4])) != crc:
        raise StoreError(f"{where} is corrupt: header checksum mismatch")
    try:
        header = json.loads(blob)
    except ValueError:
        raise StoreError(f"{where} is corrupt: header is not JSON") from None
    for field in FIELDS:
        spec = header["arrays"].get(field)
        if spec is None or data_offset + spec["offset"] + spec["nbytes"] > total:
            raise StoreError(f"{where} is corrupt: array {field} lies outside the segment")
    return header


def attach(name: str, *, expect_config_hash: str | None = None, verify_data: bool = False) -> FeatureStore:
    """Map segment ``name`` read-only. Refuses (StoreError) missing, foreign, stale, truncated or corrupt
    segments and, given ``expect_config_hash``, one built from another config. ``verify_data`` re-checks
    the data CRC (reads every byte: for debugging, not for each worker)."""
    if "/" in name or not name:
        raise StoreError(f"bad segment name {name!r}")
    try:
        fd = os.open(SHM_DIR / name, os.O_RDONLY)
    except FileNotFoundError:
        match = _NAME.match(name)
        job = match["job"] if match else None
        others = sorted(s.name for s in list_segments() if s.job == job) if job else []
        which = f"segments of job {job}: {', '.join(others)}" if others else f"job {job} has no segments"
        raise StoreError(
            f"shared-memory segment {name} does not exist ({which if job else 'not a ploutos name'})"
        ) from None
    try:
        size = os.fstat(fd).st_size
        header = _read_header(name, fd, size)
        if expect_config_hash is not None and header["config_hash"] != expect_config_hash:
            raise StoreError(f"shared-memory segment {name} was built with config hash "
                             f"{header['config_hash']!r}, expected {expect_config_hash!r} (stale store)")  # fmt: skip
        mm = mmap.mmap(fd, header["total_size"], prot=mmap.PROT_READ)
    finally:
        os.close(fd)  # the mapping stays valid without the descriptor
    if verify_data and zlib.crc32(memoryview(mm)[header["data_offset"] :]) != header["data_crc"]:
        mm.close()
        raise StoreError(f"shared-memory segment {name} is corrupt: data checksum mismatch")
    return FeatureStore(name, mm, header)


# --------------------------------------------------------------------------------------------
# Listing and cleaning orphans
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentInfo:
    """One ploutos segment in /dev/shm as :func:`list_segments` sees it."""

    name: str
    size: int
    job: str
    pid: int | None
    host: str | None
    created: float | None
    """Unix time (from the header, else the file's mtime)."""
    alive: bool
    """Its owner still holds it (flock), or the creator process is alive on this host."""
    problem: str | None = None
    """Why the header could not be read (foreign, stale or half-written), else None."""


def _inspect(path: Path) -> SegmentInfo | None:
    match = _NAME.match(path.name)
    if match is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            locked = False
        except BlockingIOError:
            locked = True
        try:
            header: dict[str, Any] | None = _read_header(path.name, fd, st.st_size)
            problem = None
        except (StoreError, ValueError, KeyError, TypeError) as err:
            header, problem = None, str(err)
            magic = os.pread(fd, 8, 0)
            if magic.strip(b"\0") and magic != MAGIC:
                return None  # another program's file that happens to match our name: never ours to touch
    finally:
        os.close(fd)
    if header is None:
        young = time.time() - st.st_mtime < _CREATING_GRACE_S
        return SegmentInfo(path.name, st.st_size, match["job"], None, None, st.st_mtime, locked or young, problem)
    pid, host = header["pid"], header["host"]
    same_host = host == socket.gethostname()
    running = same_host and process_start_time(pid) is not None and process_start_time(pid) == header.get("start_time")
    alive = locked or running or not same_host  # another host's creator: cannot tell, so never clean it
    return SegmentInfo(path.name, st.st_size, header["job"], pid, host, header["created"], alive)


def list_segments() -> list[SegmentInfo]:
    """Every ploutos segment in :data:`SHM_DIR` (other files are ignored), by name."""
    try:
        paths = sorted(SHM_DIR.glob("ploutos_*"))
    except OSError:
        return []
    return [info for p in paths if (info := _inspect(p)) is not None]


def clean(job: str | None = None) -> tuple[list[str], list[str]]:
    """Remove orphaned segments (creator dead), only of ``job`` if given; live ones are never touched.

    Returns the names removed and, for orphans this user may not remove (another user's), one
    line each saying so.
    """
    removed, refused = [], []
    for info in list_segments():
        if info.alive or (job is not None and info.job != job):
            continue
        try:
            os.unlink(SHM_DIR / info.name)
            removed.append(info.name)
        except FileNotFoundError:
            pass
        except PermissionError:
            refused.append(f"{info.name}: not removed, it belongs to another user (ask them or root)")
    return removed, refused
