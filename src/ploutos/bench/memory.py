"""``ploutos bench memory``: one /dev/shm feature store shared by N env workers against a copy per worker.

Three measurements in one run, on a synthetic store of ``--size-mb``:

* launch: ``--workers-launch`` workers (64) started from scratch, attached by name and stepped
  once, timed from the first start to the last report (cold: includes starting the forkserver);
  target under 5 s;
* shared store: ``--workers`` workers (16) attach, touch every page of the feature values once
  (the worst case: training eventually reads every bar), then take ``--steps`` steps, each
  summing a random ``--window``-bar window of all assets and features. While they are all attached
  we sum the PSS (``/proc/<pid>/smaps_rollup``) of the parent and every worker: the store is
  counted once, split among its mappers. "Extra per worker" is that total minus the store and the
  parent's own PSS before launch, over N (so it includes each worker's Python and numpy); target
  under 5% of the store. Page tables (``VmPTE``) are not in PSS and are printed beside it;
* copy per worker: workers that copy the attached arrays into private memory and unmap the store,
  as if each loaded its own copy. Only as many run as fit in half the available memory; with fewer
  than N, the total is the parent plus N times their mean PSS (linear extrapolation, said so).

Workers start from the ``forkserver`` context with numpy and ploutos.node.store preloaded: a fork of a
small, clean server is fast (which the launch target needs), whereas ``fork`` from this process
would copy-on-write share its multi-GB heap (and its store-owner pipe and lock, delaying cleanup
after a crash) and ``spawn`` would import numpy afresh in every worker. Benchmarks report; they
never fail: a missed target prints ``MISS`` and the exit code stays 0.
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ploutos.commandline import Parser, examples
from ploutos.features.arrays import FeatureArrays
from ploutos.node import store as shm

N_ASSETS, N_FEATURES = 64, 128
EXTRA_TARGET = 0.05
"""Memory a shared-store worker adds, as a fraction of the store, must stay below this."""
LAUNCH_TARGET_S = 5.0
"""Starting ``--workers-launch`` workers until all have attached and stepped once must take less than this."""
COPY_MEMORY_SHARE = 0.5
"""The copy-per-worker baseline may use at most this share of MemAvailable."""


def synthetic_arrays(size_mb: float, *, n_asset: int = N_ASSETS, n_feat: int = N_FEATURES, seed: int = 0):
    """A random :class:`~ploutos.features.arrays.FeatureArrays` of about ``size_mb`` MB (hourly bars)."""

    per_bar = n_asset * n_feat * 4 + n_asset * 5 * 8 + 2 * n_asset + 8
    n_time = max(64, int(size_mb * 2**20) // per_bar)
    rng = np.random.default_rng(seed)
    values = np.empty((n_time, n_asset, n_feat), np.float32)
    for lo in range(0, n_time, 4096):
        rng.random(out=values[lo : lo + 4096], dtype=np.float32)
    return FeatureArrays(
        timestamps=np.datetime64("2015-01-01T00:00", "us") + np.arange(n_time) * np.timedelta64(1, "h"),
        tickers=tuple(f"S{i:03d}" for i in range(n_asset)),
        names=tuple(f"f{i:03d}" for i in range(n_feat)),
        values=values,
        valid=np.ones((n_time, n_asset), bool),
        present=np.ones((n_time, n_asset), bool),
        prices=100.0 + rng.random((n_time, n_asset, 5)),
    )


def _proc_field(path: str, field: str) -> float:
    """A ``<field>: <n> kB`` line of a /proc file, in MB (0.0 if the process is gone)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def pss_mb(pid: int) -> float:
    """Proportional set size of ``pid`` in MB (shared pages split among the processes mapping them)."""
    return _proc_field(f"/proc/{pid}/smaps_rollup", "Pss")


def _worker(name: str, mode: str, steps: int, window: int, seed: int, conn: Connection) -> None:
    """Attach, (copy,) touch, step, report ``(pid, checksum, seconds per step)``, then wait to be released."""
    store = shm.attach(name)
    arrays = {field: getattr(store, field) for field in shm.FIELDS}
    if mode == "copy":  # private copies, then unmap: what a worker loading its own copy would hold
        arrays = {field: np.array(view) for field, view in arrays.items()}
        store.close()
    if mode != "launch":  # read one byte per page of every array: every page of the store gets mapped
        sum(int(a.reshape(-1).view(np.uint8)[:: mmap.PAGESIZE].sum()) for a in arrays.values())
    values = arrays["values"]
    rng = np.random.default_rng(seed)
    n_time, total = values.shape[0], 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t = int(rng.integers(0, max(1, n_time - window)))
        total += float(values[t : t + window].sum(dtype=np.float64))
    conn.send((os.getpid(), total, (time.perf_counter() - start) / max(1, steps)))
    conn.recv()  # stay attached until the parent has measured
    conn.close()


@dataclass(frozen=True)
class Run:
    """One group of workers, measured while all of them were attached."""

    workers: int
    seconds: float
    """From the first start to the last report."""
    parent_pss_mb: float
    worker_pss_mb: tuple[float, ...]
    worker_pte_mb: tuple[float, ...]
    step_s: float
    """Median seconds per step across workers."""

    @property
    def total_pss_mb(self) -> float:
        return self.parent_pss_mb + sum(self.worker_pss_mb)


def run_workers(ctx: Any, name: str, n: int, mode: str, *, steps: int, window: int) -> Run:
    """Start ``n`` workers in ``mode`` (shared, copy, launch), wait for all reports, measure, release them."""
    procs, conns = [], []
    start = time.perf_counter()
    try:
        for i in range(n):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(name, mode, steps, window, i, child_end), daemon=True)
            proc.start()
            child_end.close()
            procs.append(proc)
            conns.append(parent_end)
        reports = []
        for proc, conn in zip(procs, conns, strict=True):
            try:
                reports.append(conn.recv())
            except EOFError:
                proc.join(5)
                raise RuntimeError(f"{mode} worker {proc.pid} died (exit code {proc.exitcode})") from None
        seconds = time.perf_counter() - start
        pids = [pid for pid, _, _ in reports]
        run = Run(
            n,
            seconds,
            pss_mb(os.getpid()),
            tuple(pss_mb(pid) for pid in pids),
            tuple(_proc_field(f"/proc/{pid}/status", "VmPTE") for pid in pids),
            float(np.median([s for _, _, s in reports])),
        )
        for conn in conns:
            conn.send("exit")
        return run
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _available_mb() -> float:
    return _proc_field("/proc/meminfo", "MemAvailable")


def main(argv: Sequence[str] | None = None) -> int:
    """``ploutos bench memory [--workers N] [--size-mb MB] [--workers-launch N] ...``: run and print; returns 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.workers, args.workers_launch, args.steps, args.window) < 1 or args.size_mb <= 0:
        parser.error("--workers, --workers-launch, --steps, --window and --size-mb must be positive")
    return _run(args)


def build_parser() -> Parser:
    parser = Parser(
        prog="ploutos bench memory",
        description="Memory of one /dev/shm feature store shared by N env worker processes against a copy per\n"
        "worker, on a synthetic store of --size-mb: launch time of --workers-launch workers, the PSS\n"
        "of every process while they step, and the extra memory per worker. Prints figures and\n"
        "targets; writes nothing but the store, removed at the end.",
        epilog=examples("ploutos bench memory --size-mb 256 --workers 4 --workers-launch 8"),
    )
    parser.add_argument("--workers", type=int, default=16, help="workers sharing the store (default 16)")
    parser.add_argument("--size-mb", type=float, default=2048.0, help="store size in MB (default 2048)")
    parser.add_argument("--workers-launch", type=int, default=64, help="workers of the launch test (default 64)")
    parser.add_argument("--steps", type=int, default=1000, help="steps per worker (default 1000)")
    parser.add_argument("--window", type=int, default=32, help="bars read per step (default 32)")
    parser.add_argument("--copy-workers", type=int, default=None, help="copy-per-worker workers (default: what fits)")
    return parser


def _run(args: argparse.Namespace) -> int:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "ploutos.node.store", "ploutos.bench.memory"])
    print(
        f"cores: {len(os.sched_getaffinity(0))} | memory available {_available_mb() / 1024:.1f} GB | "
        f"workers from the forkserver context (numpy and ploutos.node.store preloaded)",
        flush=True,
    )
    start = time.perf_counter()
    arrays = synthetic_arrays(args.size_mb)
    generated = time.perf_counter()
    store = shm.create(arrays, tag="benchmemory")
    created = time.perf_counter()
    shape = arrays.shape
    del arrays
    with store:
        size_mb = store.nbytes / 2**20
        print(
            f"store {store.name}: {size_mb:.0f} MB ({shape[0]} bars x {shape[1]} assets x {shape[2]} features), "
            f"generated in {generated - start:.1f} s, store created (copy + CRC-32) in {created - generated:.1f} s",
            flush=True,
        )
        launch = run_workers(ctx, store.name, args.workers_launch, "launch", steps=1, window=args.window)
        ok = launch.seconds < LAUNCH_TARGET_S
        print(
            f"launch: {launch.workers} workers started, attached and stepped once in {launch.seconds:.2f} s "
            f"(cold forkserver) {'PASS' if ok else 'MISS'} (target < {LAUNCH_TARGET_S:.0f} s)",
            flush=True,
        )

        parent_before = pss_mb(os.getpid())
        shared = run_workers(ctx, store.name, args.workers, "shared", steps=args.steps, window=args.window)
        extra = (shared.total_pss_mb - parent_before - size_mb) / shared.workers
        ok = extra < EXTRA_TARGET * size_mb
        print(
            f"shared store: {shared.workers} workers, store {size_mb:.0f} MB, total PSS {shared.total_pss_mb:.0f} MB "
            f"(parent {shared.parent_pss_mb:.0f} MB), extra per worker {extra:.1f} MB "
            f"({100 * extra / size_mb:.1f}% of store) {'PASS' if ok else 'MISS'} (target < {100 * EXTRA_TARGET:.0f}%)"
            f"; page tables {np.mean(shared.worker_pte_mb):.1f} MB/worker (not in PSS); "
            f"step {1e6 * shared.step_s:.0f} us ({args.window}-bar window, wall time, {shared.workers} workers on "
            f"{len(os.sched_getaffinity(0))} cores)",
            flush=True,
        )

        per_copy = size_mb * 1.05 + 64
        fits = int(COPY_MEMORY_SHARE * _available_mb() // per_copy)
        k = min(args.workers, args.copy_workers or fits, fits)
        if k < 1:
            print(f"copy per worker: not measured, one {size_mb:.0f} MB copy does not fit in memory safely")
            return 0
        copy = run_workers(ctx, store.name, k, "copy", steps=args.steps, window=args.window)
        if k == args.workers:
            total, note = copy.total_pss_mb, "measured"
        else:
            total = copy.parent_pss_mb + args.workers * float(np.mean(copy.worker_pss_mb))
            note = (
                f"measured with {k} workers (total {copy.total_pss_mb:.0f} MB, {np.mean(copy.worker_pss_mb):.0f} "
                f"MB each), extrapolated linearly to {args.workers} to stay within memory"
            )
        print(
            f"copy per worker: {args.workers} workers, total PSS {total:.0f} MB "
            f"({total / shared.total_pss_mb:.1f}x the shared store) [{note}]",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
