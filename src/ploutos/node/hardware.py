"""What this node has and how a run uses it: cores, memory, GPUs -> ranks, envs, workers, threads, batch.

:func:`detect` reads the machine (CPU affinity mask, ``/proc/meminfo``, the cgroup memory limit,
GPUs); :func:`plan` turns that, the Slurm variables in ``environ`` and the config into a frozen
:class:`HardwarePlan` whose ``reasons`` say why each number is what it is. ``plan`` is pure given
its inputs (pass ``environ``, ``cpus`` and ``machine`` to test it). Every explicit
``hardware.*`` setting wins over what is derived; only PPO's batch size is adjusted, because it
must divide the rollout (``n_steps * n_envs``).

Unit of the plan: one array task = one node; ``ranks`` learner processes on it, each with
``n_envs`` environments stepped as one batch in the learner's process (``workers == 0``, the
usual choice: a batched env step costs microseconds against the learner's milliseconds) or by
``workers`` processes of ``envs_per_worker`` envs each.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ploutos.config.sections import Config
from ploutos.errors import ConfigError
from ploutos.features.pipeline import OBSERVATION_KINDS
from ploutos.features.registry import all_specs

WORKER_MEMORY_GB = 0.5
"""Resident memory budgeted per env worker process (Python, numpy, gymnasium; features are shared)."""
LEARNER_MEMORY_GB = 2.0
"""Resident memory budgeted per learner rank (torch, rollout buffer, model)."""
MAX_CPU_LEARNER_THREADS = 8
"""A PPO update of a small MLP/LSTM stops getting faster beyond about this many threads."""

# Measured rates (2-core VM, numpy 2.4, torch 2.13 CPU; ploutos bench env and bench train): what the
# plan weighs to put the envs in the learner's process or in worker processes.
ENV_STEP_S = 1.5e-6
"""One env step of the batched core (64 envs x 15 assets: about 90 us per vec step)."""
WINDOW_BYTES_PER_S = 3.4e9
"""Filling observation windows from the store (a gather and a copy)."""
LEARNER_STEP_S = 0.78e-3
"""PPO's forward and update per env step with a small observation (lookback 1: 984 steps/s)."""
LEARNER_S_PER_FLOAT = 0.156e-6
"""... and per observation float on top (45,618 floats: 126 steps/s)."""
STORE_ENCODER_S_PER_FLOAT = 0.014e-6
"""The same with observations by reference and a ``shared`` or ``attention`` encoder, per window float
(45,618 floats: about 690 steps/s at 2 envs, 1,180 at 8; ploutos bench train, encoder lines)."""
MPI_RANK_EFFICIENCY = 0.965
"""Steps per second of 2 ranks over twice 1 rank's (measured 1.93 x on 2 cores; ploutos bench train)."""
GPU_LEARNER_SPEEDUP = 10.0
"""Assumed, not measured here (no GPU on the machines this was measured on): a GPU learner's speedup."""
PIPE_ROUNDTRIP_S = 500e-6
"""A vec step through worker processes: the wake-ups of a pipe round trip."""
MIN_CORES_FOR_WORKERS = 4
"""Below this many cores per rank workers would share the learner's cores."""
WORKER_SHARE = 0.25
"""Env workers pay for their pipes when env steps would take at least this share of the time."""


class PlanWarning(UserWarning):
    """Something in the plan for this node looks wrong (printed by ``ploutos train`` and ``run``)."""


@dataclass(frozen=True)
class Machine:
    """Facts read from the machine by :func:`detect`."""

    affinity_cpus: int
    """Cores in this process's CPU affinity mask."""
    memory_gb: float | None
    """Memory available: MemAvailable, bounded by the cgroup limit; None when unknown."""
    gpus: int
    """Visible CUDA devices."""
    gpu_source: str = "detected"
    """How ``gpus`` was found."""


@dataclass(frozen=True)
class HardwarePlan:
    """How one node is used; ``reasons`` explains every number, ``warnings`` what looks wrong."""

    cpus: int
    gpus: int
    memory_gb: float | None
    ranks: int
    cpus_per_rank: int
    n_envs: int
    """Environments per rank."""
    envs_per_worker: int
    workers: int
    """Env worker processes per rank."""
    learner_threads: int
    batch_size: int
    n_steps: int
    device: str
    rollout_gb: float = 0.0
    """Observations the rollout buffers of every rank of the node hold, in GB (float32)."""
    reasons: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())
    refusal: str | None = None
    """Why this node cannot run the plan (rollout buffers above half its memory); None when it can."""

    def require(self) -> None:
        """Raise :class:`ConfigError` with :attr:`refusal` when the node cannot run this plan."""
        if self.refusal is not None:
            raise ConfigError(self.refusal)

    @property
    def rollout(self) -> int:
        """Transitions collected per rank between updates."""
        return self.n_steps * self.n_envs


def _int(environ: Mapping[str, str], key: str) -> int | None:
    """A positive integer Slurm variable; values like ``32(x8)`` or ``32,32`` count their first number."""
    raw = environ.get(key, "").strip()
    digits = ""
    for char in raw:
        if not char.isdigit():
            break
        digits += char
    return int(digits) if digits and int(digits) > 0 else None


def _memory_gb() -> float | None:
    limits: list[float] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) / 2**20)
    except OSError:
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit.isdigit() and int(limit) < 2**60:
                usage = Path(usage_file).read_text().strip()
                limits.append((int(limit) - (int(usage) if usage.isdigit() else 0)) / 2**30)
        except OSError:
            continue
    return round(min(limits), 1) if limits else None


def _gpus(environ: Mapping[str, str]) -> tuple[int, str]:
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d for d in visible.split(",") if d.strip() and d.strip() != "-1"]
        return len(devices), "CUDA_VISIBLE_DEVICES"
    if "torch" in sys.modules:  # only when already loaded: importing torch costs seconds
        torch = sys.modules["torch"]
        return int(torch.cuda.device_count()), "torch.cuda"
    if shutil.which("nvidia-smi") is None:
        return 0, "no nvidia-smi"
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0, "nvidia-smi failed"
    return sum(1 for line in listing.splitlines() if line.startswith("GPU ")), "nvidia-smi"


def detect(environ: Mapping[str, str] = os.environ) -> Machine:
    """Read cores (affinity mask), memory (MemAvailable, cgroup limit) and GPUs of this machine."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        affinity = os.cpu_count() or 1
    gpus, source = _gpus(environ)
    return Machine(affinity_cpus=affinity, memory_gb=_memory_gb(), gpus=gpus, gpu_source=source)


def _launched_local_ranks(environ: Mapping[str, str]) -> int | None:
    """Ranks on this node when this process is itself an MPI rank (Open MPI, MPICH/Hydra, srun)."""
    for key in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"):
        if _int(environ, key):
            return _int(environ, key)
    if _int(environ, "SLURM_STEP_NUM_TASKS") and (_int(environ, "SLURM_STEP_NUM_TASKS") or 0) > 1:
        return _int(environ, "SLURM_STEP_TASKS_PER_NODE") or _int(environ, "SLURM_NTASKS_PER_NODE")
    return None


def _largest_divisor_at_most(number: int, limit: int) -> int:
    best = 1
    for candidate in range(1, math.isqrt(number) + 1):
        if number % candidate == 0:
            for divisor in (candidate, number // candidate):
                if divisor <= limit:
                    best = max(best, divisor)
    return best


def env_step_seconds(floats: int) -> float:
    """One env step in the learner's process: the core, and the observation window filled."""
    return ENV_STEP_S + 4 * floats / WINDOW_BYTES_PER_S


def learner_step_seconds(floats: int, device: str, encoder: str = "flat") -> float:
    """The learner's time per env step (forward pass and its share of the update) for an observation
    window of ``floats``: the flat MLP's rate, or a store encoder's (``shared``, ``attention``)."""
    per_float = LEARNER_S_PER_FLOAT if encoder == "flat" else STORE_ENCODER_S_PER_FLOAT
    cpu = LEARNER_STEP_S + per_float * floats
    return cpu / GPU_LEARNER_SPEEDUP if device == "cuda" else cpu


def observation_floats(config: Config) -> int:
    """Floats in one observation: the (lookback, asset, feature) window and the portfolio state."""
    n_assets = len(config.data.tickers)
    macro = [f"macro_{name}" for name in config.data.macro]
    specs = all_specs(config.features, n_tickers=n_assets, macro_columns=macro)
    n_features = sum(spec.kind in OBSERVATION_KINDS for spec in specs)
    return config.env.lookback * n_assets * n_features + n_assets + 3


def stored_floats(config: Config) -> int:
    """Floats an env emits and a rollout buffer stores per env step: the observation, or with
    ``env.obs_layout: reference`` the decision row and the portfolio state (the policy's encoder reads
    the window from the store, so this does not grow with lookback or features)."""
    if config.env.obs_layout == "reference":
        return 1 + len(config.data.tickers) + 3
    return observation_floats(config)


def plan(
    config: Config,
    *,
    environ: Mapping[str, str] = os.environ,
    cpus: int | None = None,
    machine: Machine | None = None,
) -> HardwarePlan:
    """The plan for ``config`` on this node; ``cpus`` stands in for the affinity mask's core count."""
    hw, ppo = config.hardware, config.ppo
    if machine is None:
        machine = detect(environ)
    if cpus is not None:
        machine = replace(machine, affinity_cpus=cpus)
    reasons: list[str] = []
    warnings: list[str] = []

    # cores of the whole task on this node
    launched = _launched_local_ranks(environ)
    slurm_node = _int(environ, "SLURM_CPUS_ON_NODE")
    per_task, tasks = _int(environ, "SLURM_CPUS_PER_TASK"), _int(environ, "SLURM_NTASKS_PER_NODE")
    visible = machine.affinity_cpus * (launched or 1)
    visible_why = f"{machine.affinity_cpus} in the affinity mask" + (
        f" x {launched} launched local ranks" if launched else ""
    )
    if hw.cpus is not None:
        n_cpus = hw.cpus
        reasons.append(f"cpus {n_cpus}: hardware.cpus")
        if n_cpus > visible:
            warnings.append(f"hardware.cpus {n_cpus} is more than the {visible} cores visible ({visible_why})")
    else:
        slurm, slurm_why = None, ""
        if slurm_node:
            slurm, slurm_why = slurm_node, f"SLURM_CPUS_ON_NODE={slurm_node}"
        elif per_task:
            slurm = per_task * (tasks or 1)
            slurm_why = f"SLURM_CPUS_PER_TASK={per_task}" + (f" x SLURM_NTASKS_PER_NODE={tasks}" if tasks else "")
        if slurm is not None and slurm <= visible:
            n_cpus = slurm
            reasons.append(f"cpus {n_cpus}: Slurm allocation ({slurm_why})")
        elif slurm is not None:
            n_cpus = visible
            reasons.append(f"cpus {n_cpus}: {visible_why}, fewer than the Slurm allocation ({slurm_why})")
        else:
            n_cpus = visible
            reasons.append(f"cpus {n_cpus}: {visible_why}")

    # GPUs and device
    if hw.gpus is not None:
        n_gpus = hw.gpus
        reasons.append(f"gpus {n_gpus}: hardware.gpus")
        if n_gpus > machine.gpus:
            warnings.append(
                f"hardware.gpus {n_gpus} but {machine.gpus} GPU(s) visible ({machine.gpu_source}); "
                "the learner falls back to what is there"
            )
    else:
        n_gpus = machine.gpus
        reasons.append(f"gpus {n_gpus}: detected ({machine.gpu_source})")
    if ppo.device == "auto":
        device = "cuda" if n_gpus > 0 else "cpu"
        reasons.append(f"device {device}: ppo.device auto, {n_gpus} GPU(s)")
    else:
        device = ppo.device
        reasons.append(f"device {device}: ppo.device")
        if device == "cuda" and n_gpus == 0:
            warnings.append("ppo.device is cuda but no GPU is visible; training will fail (set ppo.device auto)")

    # ranks
    ranks = hw.mpi_ranks
    if launched and launched != ranks:
        warnings.append(f"hardware.mpi_ranks is {ranks} but {launched} local ranks were launched; planning for those")
        ranks = launched
        reasons.append(f"ranks {ranks}: launched local ranks")
    elif ranks > n_cpus:
        reasons.append(f"ranks {n_cpus}: hardware.mpi_ranks {ranks} capped at one per core")
        ranks = n_cpus
    else:
        reasons.append(f"ranks {ranks}: hardware.mpi_ranks")
    if ranks > 1:
        reasons.append(
            f"{ranks} data-parallel ranks train one member at about {ranks * MPI_RANK_EFFICIENCY:.3g} x one rank's "
            f"steps/s (measured: 2 ranks / 1 = {2 * MPI_RANK_EFFICIENCY:.2f} x on 2 cores; beyond 2, extrapolated)"
        )
    cpus_per_rank = max(1, n_cpus // ranks)
    if n_cpus % ranks:
        reasons.append(f"cpus per rank {cpus_per_rank}: {n_cpus} cpus / {ranks} ranks, {n_cpus % ranks} left idle")

    # envs per rank
    if hw.n_envs is not None:
        n_envs = hw.n_envs
        reasons.append(f"n_envs {n_envs}: hardware.n_envs")
    elif cpus_per_rank >= 4:
        n_envs = cpus_per_rank - 1
        reasons.append(f"n_envs {n_envs}: {cpus_per_rank} cpus per rank minus 1 for the learner")
    else:
        n_envs = cpus_per_rank
        reasons.append(f"n_envs {n_envs}: one per core; with {cpus_per_rank} cpus per rank the learner shares a core")

    # where the envs step: the learner's process, or worker processes (bounded by cores and memory)
    worker_cores = max(1, cpus_per_rank - 1) if cpus_per_rank >= 4 else cpus_per_rank
    max_workers, limit_why = worker_cores, f"{worker_cores} cores for env workers"
    if machine.memory_gb is not None:
        by_memory = int((machine.memory_gb / ranks - LEARNER_MEMORY_GB) // WORKER_MEMORY_GB)
        if by_memory < max_workers:
            max_workers = max(1, by_memory)
            limit_why = (
                f"{machine.memory_gb:g} GB / {ranks} ranks leaves room for {max_workers} workers "
                f"of {WORKER_MEMORY_GB:g} GB after {LEARNER_MEMORY_GB:g} GB for the learner"
            )
    # the learner reads every window either way; a store encoder at its own measured rate
    floats, stored = observation_floats(config), stored_floats(config)
    encoder = config.ppo.encoder if config.env.obs_layout == "reference" else "flat"
    env_s, learner_s = env_step_seconds(stored), learner_step_seconds(floats, device, encoder)
    share = env_s / (env_s + learner_s)
    rates = (
        f"an env step costs {env_s * 1e6:.1f} us against the learner's {learner_s * 1e3:.2f} ms per step "
        f"({share:.1%} of the time; measured rates, ploutos bench env and bench train)"
    )
    if hw.env_workers is not None:
        workers = min(hw.env_workers, n_envs)
        reasons.append(f"workers {workers}: hardware.env_workers")
    elif hw.envs_per_worker is not None:
        workers = math.ceil(n_envs / min(hw.envs_per_worker, n_envs))
        reasons.append(f"workers {workers}: hardware.envs_per_worker {hw.envs_per_worker} for {n_envs} envs")
    elif cpus_per_rank < MIN_CORES_FOR_WORKERS:
        workers = 0
        reasons.append(
            f"workers 0, the envs step in the learner's process: with {cpus_per_rank} cpu(s) per rank a worker "
            f"would share a core with the learner and add a pipe round trip (~{PIPE_ROUNDTRIP_S * 1e6:.0f} us) to "
            f"every vec step; {rates}"
        )
    elif share < WORKER_SHARE:
        workers = 0
        reasons.append(
            f"workers 0, the envs step in the learner's process: {rates}; less than the {WORKER_SHARE:.0%} that "
            "would pay for worker processes and their pipes"
        )
    else:
        workers = max(1, min(max_workers, n_envs))
        reasons.append(f"workers {workers}: {rates}; worth moving off the learner ({limit_why})")
    if workers:
        envs_per_worker = min(hw.envs_per_worker or math.ceil(n_envs / workers), n_envs)
        workers = math.ceil(n_envs / envs_per_worker)
        reasons.append(f"envs_per_worker {envs_per_worker}: {n_envs} envs over {workers} worker process(es)")
        if workers > worker_cores:
            warnings.append(f"{workers} env workers per rank on {worker_cores} cores: they will time-share")
    else:
        envs_per_worker = n_envs

    # learner threads
    if hw.learner_threads is not None:
        learner_threads = hw.learner_threads
        reasons.append(f"learner_threads {learner_threads}: hardware.learner_threads")
    elif device == "cuda":
        learner_threads = min(2, cpus_per_rank)
        reasons.append(f"learner_threads {learner_threads}: the GPU runs the update; the CPU only feeds it")
    elif cpus_per_rank <= 2:
        learner_threads = 1
        reasons.append(
            f"learner_threads 1: with {cpus_per_rank} cpu(s) per rank the learner shares its cores with the envs; "
            "a second thread spins against them (measured 6x slower updates on 2 cores)"
        )
    else:
        learner_threads = min(cpus_per_rank, MAX_CPU_LEARNER_THREADS)
        reasons.append(
            f"learner_threads {learner_threads}: updates alternate with rollouts, so the learner borrows the "
            f"{cpus_per_rank} cores of its rank (at most {MAX_CPU_LEARNER_THREADS}); env workers get 1 thread each"
        )

    # PPO: the minibatch must divide the rollout
    rollout = ppo.n_steps * n_envs
    batch_size = ppo.batch_size
    if batch_size > rollout:
        batch_size = rollout
        reasons.append(f"batch_size {ppo.batch_size} -> {batch_size}: larger than the rollout n_steps * n_envs")
    elif rollout % batch_size:
        batch_size = _largest_divisor_at_most(rollout, batch_size)
        reasons.append(
            f"batch_size {ppo.batch_size} -> {batch_size}: must divide n_steps * n_envs = "
            f"{ppo.n_steps} * {n_envs} = {rollout}"
        )
        if batch_size * 2 <= ppo.batch_size:
            warnings.append(
                f"batch_size fell from {ppo.batch_size} to {batch_size}; choose n_steps or n_envs so that "
                f"{ppo.n_steps} * n_envs has a divisor near {ppo.batch_size}"
            )
    else:
        reasons.append(f"batch_size {batch_size}: divides the rollout n_steps * n_envs = {rollout}")
    reasons.append(f"n_steps {ppo.n_steps}: ppo.n_steps")

    # memory of the rollout buffers: n_steps x n_envs observations per rank
    rollout_gb = ppo.n_steps * n_envs * ranks * stored * 4 / 1e9
    by_reference = " (by reference: row and portfolio)" if stored != floats else ""
    reasons.append(
        f"rollout buffers {rollout_gb:.3g} GB per node: {ppo.n_steps} steps x {n_envs} envs x {ranks} rank(s) x "
        f"{stored:,} floats per observation{by_reference}"
    )
    refusal = None
    if machine.memory_gb is not None and rollout_gb > machine.memory_gb / 2:
        fix = "lower hardware.n_envs or ppo.n_steps" + ("" if stored != floats else ", or set env.obs_layout reference")
        refusal = (
            f"hardware: the rollout buffers need {rollout_gb:.3g} GB per node, more than half of the "
            f"{machine.memory_gb:g} GB available; {fix}"
        )

    return HardwarePlan(
        cpus=n_cpus,
        gpus=n_gpus,
        memory_gb=machine.memory_gb,
        ranks=ranks,
        cpus_per_rank=cpus_per_rank,
        n_envs=n_envs,
        envs_per_worker=envs_per_worker,
        workers=workers,
        learner_threads=learner_threads,
        batch_size=batch_size,
        n_steps=ppo.n_steps,
        device=device,
        rollout_gb=rollout_gb,
        reasons=tuple(reasons),
        warnings=tuple(warnings),
        refusal=refusal,
    )


def format_plan(hardware_plan: HardwarePlan) -> str:
    """The plan as a short table followed by its reasons and warnings."""
    p = hardware_plan
    memory = "unknown" if p.memory_gb is None else f"{p.memory_gb:g} GB"
    lines = [
        f"node      {p.cpus} cpus, {p.gpus} gpu(s), {memory} available",
        f"ranks     {p.ranks} x {p.cpus_per_rank} cpus, learner on {p.device} with {p.learner_threads} thread(s)",
        f"envs      {p.n_envs} per rank, "
        + (
            f"in {p.workers} worker(s) of {p.envs_per_worker} env(s), 1 thread each"
            if p.workers
            else "stepped as one batch in the learner's process"
        ),
        f"ppo       n_steps {p.n_steps}, batch_size {p.batch_size}, rollout {p.rollout} per rank",
        "why:",
        *(f"  - {reason}" for reason in p.reasons),
    ]
    if p.warnings:
        lines += ["warnings:", *(f"  ! {warning}" for warning in p.warnings)]
    if p.refusal:
        lines += ["refused:", f"  ! {p.refusal}"]
    return "\n".join(lines)
