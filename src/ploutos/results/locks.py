"""One holder per task: ``RUN_DIR/locks/<task>.lock``, so that two processes never train the same task.

The lock is a small JSON file (host, pid, process start time, Slurm job, when taken, last
heartbeat) created with ``O_CREAT | O_EXCL``; while it is held a thread rewrites the heartbeat
every :data:`HEARTBEAT_S` seconds. It survives the crash of its holder, so a lock is taken over
when its holder is provably gone:

- on this host, when its process no longer exists (pid and start time, against pid reuse);
- anywhere, when its heartbeat is older than :data:`STALE_S` (a crashed or unreachable node);
- when it belongs to the same Slurm job (a requeued array task keeps its job id).

Otherwise the task is held and :class:`TaskHeld` names the holder. Works on shared filesystems:
only ``O_EXCL`` creation and ``rename`` are relied on, no ``flock``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ploutos.errors import PloutosError
from ploutos.node.store import job_id, process_start_time

HEARTBEAT_S = 15.0
"""How often a held lock's heartbeat is rewritten."""
STALE_S = 120.0
"""A heartbeat older than this means the holder is gone (its node crashed, or it was SIGKILLed)."""


class TaskHeld(PloutosError):
    """Another live process holds the task."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    start_time: int | None
    """Process start time in clock ticks (pid reuse guard), None where /proc is missing."""
    job: str
    """Slurm job (``<job>[_<array task>]``) or ``local<pid>``."""
    taken: float
    heartbeat: float

    @staticmethod
    def me() -> Holder:
        now = time.time()
        return Holder(socket.gethostname(), os.getpid(), process_start_time(os.getpid()), job_id(), now, now)

    def describe(self, now: float | None = None) -> str:
        age = (now or time.time()) - self.heartbeat
        return f"host {self.host} pid {self.pid} (job {self.job}, heartbeat {age:.0f} s ago)"

    def gone(self, now: float | None = None) -> str:
        """Why this holder is provably gone, or ``""`` when it may still be working."""
        now = now or time.time()
        if now - self.heartbeat > STALE_S:
            return f"its heartbeat stopped {now - self.heartbeat:.0f} s ago"
        if self.host == socket.gethostname():
            alive = process_start_time(self.pid)
            if alive is None or (self.start_time is not None and alive != self.start_time):
                return f"process {self.pid} no longer runs"
        if self.job == job_id() and not self.job.startswith("local"):
            return f"it was an earlier run of this Slurm job {self.job}"
        return ""


class TaskLock:
    """The lock of one task file; :meth:`acquire` or :class:`TaskHeld`, then :meth:`release`."""

    def __init__(self, path: Path, task: str) -> None:
        self.path, self.task = Path(path), task
        self.holder: Holder | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def read(self) -> Holder | None:
        """The current holder, None when unlocked; a damaged lock file reads as a holder long gone."""
        try:
            data = json.loads(self.path.read_text())
            return Holder(**{key: data[key] for key in Holder.__dataclass_fields__})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError):
            return Holder("?", -1, None, "?", 0.0, 0.0)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a takeover races with at most a few others
            me = Holder.me()
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self.read()
                if held is None:
                    continue
                if not held.gone():
                    raise TaskHeld(
                        f"{self.task} is being trained by {held.describe()}; wait for it, or remove {self.path} "
                        "if that process is gone"
                    ) from None
                self._take_over(held)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(asdict(me)))
            self.holder = me
            self._beat = threading.Thread(target=self._heartbeat, name=f"lock {self.task}", daemon=True)
            self._beat.start()
            return
        raise TaskHeld(f"{self.task}: could not take {self.path} (other processes keep taking it)")

    def _take_over(self, gone: Holder) -> None:
        """Move a dead holder's lock aside, unless it changed since it was read (someone else took it)."""
        aside = self.path.with_name(f".{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if TaskLock(aside, self.task).read() != gone:
            os.replace(aside, self.path)  # a live holder's fresh lock: put it back, and find it held next round
            return
        aside.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if self.holder is None or self.read() != self.holder:
                return  # taken over: its new holder owns the file now
            beat = Holder(**{**asdict(self.holder), "heartbeat": time.time()})
            tmp = self.path.with_name(f".{self.path.name}.beat-{os.getpid()}")
            try:
                tmp.write_text(json.dumps(asdict(beat)))
                os.replace(tmp, self.path)
                self.holder = beat
            except OSError:
                tmp.unlink(missing_ok=True)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if self.holder is not None and self.read() == self.holder:
            self.path.unlink(missing_ok=True)
        self.holder = None

    def __enter__(self) -> TaskLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
