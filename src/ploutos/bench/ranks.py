"""The MPI line of ``ploutos bench train``: one member trained by 1 and by 2 data-parallel ranks.

Each count runs under ``mpirun -n K`` (:func:`measure_ranks` launches it; :func:`rank_main` is
what every rank runs). Every rank trains the same PPO by reference with the ``shared`` encoder on
the encoder lines' synthetic arrays (15 assets x 95 features, lookback 32), on its own envs
stepped in its process, with one torch thread, gradients averaged before every optimizer step
(:class:`ploutos.train.distributed.RankGroup`, as ``ploutos train`` under ``mpirun``). After one
warm-up rollout and update, ``learn(timesteps)`` is timed between two barriers; the rate counts
the env steps of every rank. The scaling ratio (K ranks / 1 rank) is what a node plan with many
ranks rests on; the replicas' parameter digests are compared so a broken average shows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ploutos.bench.encoders import ASSETS, FEATURES, ROWS, bench_config, synthetic_env
from ploutos.bench.env import synthetic_arrays
from ploutos.config import load
from ploutos.env.batched import BatchedVecEnv
from ploutos.node.allocator import keep_freed_memory
from ploutos.node.context import node_context, pin_threads
from ploutos.node.hardware import plan
from ploutos.train.distributed import RankGroup
from ploutos.train.model import build_model

RESULT_PREFIX = "PLOUTOS_RANKS_RESULT "
"""Rank 0 prints its result on one line after this prefix."""


@dataclass(frozen=True)
class RanksBench:
    """One ``mpirun -n ranks`` measurement."""

    ranks: int
    steps: int
    """Env steps of every rank in the timed learn."""
    seconds: float
    replicas_equal: bool

    @property
    def rate(self) -> float:
        return self.steps / self.seconds


def measure_ranks(
    counts: Sequence[int], *, timesteps: int, n_envs: int, config_name: str = "quickstart",
    overrides: Sequence[str] = (), timeout_s: float = 900.0,
) -> list[RanksBench] | str:  # fmt: skip
    """Run the bench under ``mpirun -n K`` for each count; a sentence instead when MPI is missing."""
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        return "mpirun not found (Debian: apt-get install openmpi-bin libopenmpi-dev; pip install mpi4py)"
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    found = []
    for count in counts:
        command = [
            mpirun, "-n", str(count), "--bind-to", "none", sys.executable, "-m", "ploutos.bench.ranks",
            "--timesteps", str(timesteps), "--n-envs", str(n_envs), "--config", config_name,
            *(f"--set={override}" for override in overrides),
        ]  # fmt: skip
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if result.returncode != 0 or not lines:
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            return f"mpirun -n {count} failed (exit {result.returncode}): {tail}"
        data = json.loads(lines[-1][len(RESULT_PREFIX) :])
        found.append(RanksBench(count, int(data["steps"]), float(data["seconds"]), bool(data["replicas_equal"])))
    return found


def format_ranks(found: list[RanksBench] | str, *, n_envs: int) -> list[str]:
    """The MPI lines; ``MPI ranks 2 / 1: S x`` is the one scripts read."""
    if isinstance(found, str):
        return [f"MPI ranks: not measured: {found}"]
    lines = [
        f"MPI ranks, shared by reference (15 assets x 95 features x lookback 32), {n_envs} envs and 1 torch thread per "
        "rank, gradients averaged every step:"
    ]
    for bench in found:
        same = "replicas identical" if bench.replicas_equal else "REPLICAS DIFFER"
        lines.append(
            f"  {bench.ranks} rank(s) {bench.rate:>9,.0f} steps/s  ({bench.steps:,} steps in {bench.seconds:.2f} s; "
            f"{same})"
        )
    base = found[0]
    for bench in found[1:]:
        lines.append(
            f"MPI ranks {bench.ranks} / {base.ranks}: {bench.rate / base.rate:.2f} x "
            f"(ideal {bench.ranks / base.ranks:g} x; {os.cpu_count()} cpus)"
        )
    return lines


def rank_main(argv: Sequence[str] | None = None) -> int:
    """What each rank runs (``python -m ploutos.bench.ranks`` under ``mpirun``)."""
    parser = argparse.ArgumentParser(prog="python -m ploutos.bench.ranks")
    parser.add_argument("--timesteps", type=int, required=True)
    parser.add_argument("--n-envs", type=int, required=True)
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)

    ranks = RankGroup(node_context())
    pin_threads(1)
    config = bench_config(load(args.config, [*args.overrides, "env.obs_layout=reference", "ppo.encoder=shared"]))
    if config.hardware.keep_freed_memory:
        keep_freed_memory()
    config = replace(config, hardware=replace(config.hardware, n_envs=args.n_envs))
    layout = replace(plan(config), n_envs=args.n_envs, learner_threads=1, workers=0)
    arrays = synthetic_arrays(ROWS, ASSETS, FEATURES, seed=0)
    venv = BatchedVecEnv([lambda: synthetic_env(arrays, config)] * args.n_envs, copy_obs=False)
    venv.seed(1000 + ranks.rank)
    model = build_model(config, venv, layout, seed=1000 + ranks.rank, values=arrays.values)
    ranks.broadcast_parameters(model.policy)
    ranks.average_before_step(model.policy.optimizer, list(model.policy.parameters()))
    model.learn(layout.rollout)
    ranks.barrier()
    start = time.perf_counter()
    model.learn(args.timesteps, reset_num_timesteps=True)
    ranks.barrier()
    seconds = time.perf_counter() - start
    digests = ranks.gather(ranks.parameter_digest(model.policy))
    venv.close()
    if ranks.is_root:
        assert digests is not None
        result = {"steps": args.timesteps * ranks.size, "seconds": seconds, "replicas_equal": len(set(digests)) == 1}
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(rank_main())
