"""Processes on one node: thread pinning, the MPI node communicator, and the node's one feature store.

Threads: :func:`pin_threads` is the one place that caps BLAS/OpenMP/torch/Polars threads in this
process; :func:`worker_environment` (or :func:`worker_env`) gives child processes the same caps
from their first instruction, which is the only way to cap libraries that read their variables
once at load. ``env/threads.sh`` does the same for shell jobs.

MPI is optional and imported lazily: :func:`node_context` imports ``mpi4py`` only when this
process was launched as an MPI rank (``mpirun``, ``srun`` with PMI) and is not an env worker;
otherwise it returns a single-process context. Importing this module never imports mpi4py, so
env workers may import it: an env worker that initializes MPI under ``mpirun`` hangs the job.

:func:`node_feature_store`: node rank 0 builds the features and creates the /dev/shm segment,
broadcasts its name (or its error) on the node communicator, and every local rank attaches
read-only; env workers map the same segment with :func:`worker_attach`.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from threadpoolctl import threadpool_info, threadpool_limits

from ploutos.errors import PloutosError, first_line
from ploutos.features.arrays import FeatureArrays
from ploutos.node.store import FeatureStore, attach, create

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "POLARS_MAX_THREADS",
)
"""Environment variables that cap the thread pools of OpenMP, BLAS flavours, numexpr and Polars."""

WORKER_VARIABLE = "PLOUTOS_ENV_WORKER"
"""Set in env workers: :func:`node_context` then never touches MPI."""

MPI_LAUNCH_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
"""Set by Open MPI, MPICH/Hydra/Intel MPI and PMIx launchers (including ``srun --mpi=...``) in each rank."""


class NodeStoreError(PloutosError):
    """The node's feature store could not be built or attached on some rank."""


# ---------------------------------------------------------------- threads


def thread_environment(threads: int = 1) -> dict[str, str]:
    """Only the thread-cap variables, each set to ``threads``."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return dict.fromkeys(THREAD_VARIABLES, str(threads))


def worker_environment(threads: int = 1, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A full environment for a child process (``subprocess``'s ``env=``): ``base`` (default
    ``os.environ``) with every thread cap at ``threads`` and the env-worker mark set."""
    return {**(os.environ if base is None else base), **thread_environment(threads), WORKER_VARIABLE: "1"}


@contextlib.contextmanager
def worker_env(threads: int = 1) -> Iterator[None]:
    """Apply :func:`worker_environment` to ``os.environ`` while child processes are started
    (``multiprocessing`` has no ``env=``): ``with worker_env(1): process.start()``."""
    saved = {key: os.environ.get(key) for key in (*THREAD_VARIABLES, WORKER_VARIABLE)}
    os.environ.update({**thread_environment(threads), WORKER_VARIABLE: "1"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def pin_threads(n: int) -> None:
    """Cap this process at ``n`` threads per pool: the variables (read by libraries loaded later),
    threadpoolctl for BLAS/OpenMP already loaded, and torch if it is imported. Call it before
    numpy, torch and polars are imported to cap everything; Polars' pool is fixed at its import."""
    os.environ.update(thread_environment(n))
    threadpool_limits(limits=n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def thread_report() -> list[dict[str, Any]]:
    """threadpoolctl's view of the loaded thread pools (BLAS, OpenMP) with their thread counts."""

    return threadpool_info()


def blas_threads() -> int:
    """Threads of the loaded BLAS (the largest, if several are loaded); loads numpy's if none is."""
    counts = [pool["num_threads"] for pool in thread_report() if pool.get("user_api") == "blas"]
    return max(counts) if counts else 1


# ---------------------------------------------------------------- MPI


def launched_under_mpi(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is an MPI rank (by its launcher's variables; nothing is imported)."""
    if environ.get(WORKER_VARIABLE):
        return False
    if any(environ.get(key) for key in MPI_LAUNCH_VARIABLES):
        return True
    tasks = environ.get("SLURM_STEP_NUM_TASKS", "")
    return tasks.isdigit() and int(tasks) > 1


@dataclass(frozen=True)
class NodeContext:
    """Where this process sits: its rank in the job and on its node; communicators when under MPI."""

    world_rank: int = 0
    world_size: int = 1
    node_rank: int = 0
    node_size: int = 1
    world: Any = field(default=None, repr=False, compare=False)
    """``MPI.COMM_WORLD``, or None without MPI."""
    node: Any = field(default=None, repr=False, compare=False)
    """The node's shared-memory communicator (``Split_type(COMM_TYPE_SHARED)``), or None."""

    @property
    def is_node_leader(self) -> bool:
        return self.node_rank == 0

    @property
    def is_mpi(self) -> bool:
        return self.world is not None

    def node_barrier(self) -> None:
        if self.node is not None:
            self.node.Barrier()


SINGLE = NodeContext()
"""The context of a process without MPI."""

_context: NodeContext | None = None


def node_context() -> NodeContext:
    """This process's :class:`NodeContext` (cached). Imports mpi4py only when launched as an MPI
    rank; falls back to a single process, with a warning if mpi4py is missing under a launcher."""
    global _context
    if _context is not None:
        return _context
    if not launched_under_mpi():
        _context = SINGLE
        return _context
    try:
        from mpi4py import MPI  # only as an MPI rank: an env worker that loads it under mpirun hangs the job
    except ImportError:
        warnings.warn(
            "launched as an MPI rank but mpi4py is not installed (pip install 'ploutos[mpi]'); "
            "every rank runs alone and builds its own feature store",
            RuntimeWarning,
            stacklevel=2,
        )
        _context = SINGLE
        return _context
    world = MPI.COMM_WORLD
    node = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.Get_rank())
    _context = NodeContext(world.Get_rank(), world.Get_size(), node.Get_rank(), node.Get_size(), world, node)
    return _context


# ---------------------------------------------------------------- the node's feature store


def node_feature_store(
    build: Callable[[], FeatureArrays],
    *,
    config_hash: str,
    ctx: NodeContext | None = None,
    tag: str = "features",
    job: str | None = None,
) -> FeatureStore:
    """One feature store per node: node rank 0 runs ``build()`` and owns the segment (it is
    unlinked when rank 0 exits, is signalled or crashes); the other local ranks attach read-only.
    A failure on rank 0 reaches every rank as an error naming it, instead of a hang."""
    ctx = ctx or node_context()
    if ctx.node is None or ctx.node_size == 1:
        return create(build(), tag=tag, job=job, config_hash=config_hash)

    store: FeatureStore | None = None
    detail = ""
    if ctx.is_node_leader:
        try:
            store = create(build(), tag=tag, job=job, config_hash=config_hash)
        except BaseException as err:
            ctx.node.bcast(("error", f"{type(err).__name__}: {first_line(err)}"), root=0)
            raise
        ctx.node.bcast(("ok", store.name), root=0)
    else:
        status, detail = ctx.node.bcast(None, root=0)
        if status == "error":
            raise NodeStoreError(f"node rank 0 failed to build the feature store: {detail}")
    failure: Exception | None = None
    if store is None:
        try:
            store = attach(detail, expect_config_hash=config_hash)
        except Exception as err:
            failure = err
    # a barrier that carries news: every rank learns whether every rank holds the store
    problems = ctx.node.allgather(None if failure is None else f"{type(failure).__name__}: {first_line(failure)}")
    if failure is not None:
        raise failure
    assert store is not None
    failed = [f"node rank {rank}: {text}" for rank, text in enumerate(problems) if text]
    if failed:
        store.close()
        raise NodeStoreError("feature store not attached on every rank: " + "; ".join(failed))
    return store


def worker_attach(name: str, *, expect_config_hash: str | None = None) -> FeatureStore:
    """Map the node's store in an env worker: imports only :mod:`ploutos.node.store` (numpy), never mpi4py,
    and marks this process as a worker so that :func:`node_context` stays away from MPI here."""
    os.environ[WORKER_VARIABLE] = "1"
    return attach(name, expect_config_hash=expect_config_hash)


def _worker_digest(name: str, config_hash: str, results: Any) -> None:

    store = worker_attach(name, expect_config_hash=config_hash)
    try:
        results.put(hashlib.sha256(store.values.tobytes()).hexdigest())
    finally:
        store.close()


def digest_from_worker(name: str, config_hash: str, *, timeout_s: float = 120.0) -> str:
    """The sha256 of the store's values as an env worker (a spawned process, one thread) sees them."""

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    with worker_env(1):
        process = context.Process(target=_worker_digest, args=(name, config_hash, results), daemon=True)
        process.start()
    process.join(timeout_s)
    if process.is_alive():
        process.kill()
        raise NodeStoreError(f"env worker did not read segment {name} within {timeout_s:.0f} s")
    if process.exitcode != 0 or results.empty():
        raise NodeStoreError(f"env worker failed to read segment {name} (exit code {process.exitcode})")
    return str(results.get())
