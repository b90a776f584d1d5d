"""Run under ``mpirun -n N`` (or plain python) by tests/test_node_context.py: one feature store per node.

Every rank calls :func:`ploutos.node.context.node_feature_store` on small synthetic arrays, starts
``--workers`` env worker processes (spawn) that map the store with ``worker_attach``, and prints one
line ``RESULT {json}``: its ranks, the segment name, the sha256 of the values it sees, this job's
segments in /dev/shm, and each worker's checksum, BLAS threads and whether it imported mpi4py.

Modes: ``ok`` closes and exits; ``hang`` prints the result (its "ready" line) and sleeps, to be
killed; ``fail`` raises in node rank 0's build and ``mismatch`` gives node rank 1 another config
hash: then every rank prints ``RESULT {"error": ...}``.
Top-level imports stay light: spawned workers re-import this file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time

from ploutos.node.context import worker_env


def synthetic(n_time: int = 20_000, n_asset: int = 4, n_feature: int = 16, seed: int = 7):
    import numpy as np

    from ploutos.features.arrays import FeatureArrays

    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (n_time, n_asset)), axis=0))
    prices = np.stack([close, close * 1.01, close * 0.99, close, rng.integers(1, 1000, close.shape)], axis=-1)
    return FeatureArrays(
        timestamps=np.datetime64("2024-01-01T00:00", "us") + np.arange(n_time) * np.timedelta64(1, "h"),
        tickers=tuple(f"T{i}" for i in range(n_asset)),
        names=tuple(f"f{i}" for i in range(n_feature)),
        values=rng.standard_normal((n_time, n_asset, n_feature)).astype(np.float32),
        valid=np.ones((n_time, n_asset), bool),
        present=np.ones((n_time, n_asset), bool),
        prices=prices.astype(np.float64),
    )


def emit(result: dict) -> None:
    """One ``RESULT`` line in one write(2): ranks share mpirun's stdout pipe, and a line written in
    two calls (text, then newline) can interleave with another rank's line."""
    os.write(1, ("RESULT " + json.dumps(result) + "\n").encode())


def digest(store) -> str:
    return hashlib.sha256(store.values.tobytes()).hexdigest()


def job_segments(job: str) -> list[str]:
    from ploutos.node import store as shm

    return [info.name for info in shm.list_segments() if info.job == job]


def worker(name: str, queue) -> None:
    from ploutos.node.context import blas_threads, worker_attach

    store = worker_attach(name, expect_config_hash="test-config")
    result = {
        "pid": os.getpid(),
        "sha256": digest(store),
        "writeable": bool(store.values.flags.writeable),
        "mpi4py": "mpi4py" in sys.modules,
        "blas_threads": blas_threads(),
    }
    store.close()
    queue.put(result)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True)
    parser.add_argument("--mode", choices=("ok", "hang", "fail", "mismatch"), default="ok")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from ploutos.errors import PloutosError
    from ploutos.node.context import node_context, node_feature_store

    ctx = node_context()
    common = {"rank": ctx.world_rank, "size": ctx.world_size, "node_rank": ctx.node_rank, "node_size": ctx.node_size}

    def build():
        if args.mode == "fail":
            raise PloutosError("synthetic build failure for the test")
        return synthetic()

    try:
        wrong = args.mode == "mismatch" and ctx.node_rank == 1  # a rank that resolved another config
        config_hash = "other-config" if wrong else "test-config"
        store = node_feature_store(build, config_hash=config_hash, ctx=ctx, job=args.job)
    except PloutosError as err:
        emit({**common, "error": f"{type(err).__name__}: {err}"})
        return 3

    ctx.node_barrier()  # everyone attached: the listing below is the node's steady state
    workers = []
    if args.workers:
        spawn = mp.get_context("spawn")
        queue = spawn.Queue()
        procs = [spawn.Process(target=worker, args=(store.name, queue)) for _ in range(args.workers)]
        with worker_env(1):
            for proc in procs:
                proc.start()
        workers = [queue.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
    result = {
        **common,
        "pid": os.getpid(),
        "name": store.name,
        "owner": store.owner,
        "sha256": digest(store),
        "segments": job_segments(args.job),
        "workers": workers,
    }
    emit(result)
    if args.mode == "hang":
        time.sleep(120)
    ctx.node_barrier()  # nobody reads after the owner unlinks (their mappings would stay valid anyway)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
