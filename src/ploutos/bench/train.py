"""``ploutos bench train``: end-to-end env steps per second of PPO training, ploutos against plain SB3.

Both setups train the same PPO (:func:`ploutos.train.model.build_model`: same network, same
hyperparameters, same seed) on the same env: a :class:`~ploutos.env.trading.TradingEnv` over
fold 0's training rows of the config's normalized features (default: the embedded quickstart;
its dataset is built first when it is missing). In the same run, with repeats interleaved:

- **ploutos**, the trainer's setup (:func:`ploutos.train.trainer.make_venv`): the envs where the
  hardware plan puts them (as one batch in the learner's process, or in worker processes mapping
  the node's /dev/shm store), ``VecMonitor``;
- **plain SB3**, as a user would write it on the same machine: ``DummyVecEnv`` (the fastest of
  SB3's vec envs on few cores) over the same number of envs, ``VecMonitor``,
  ``PPO("MlpPolicy", ...)`` with the same arguments.

Both get the same torch threads (the plan's learner threads, pinned), the same envs and the same
network: the ratio measures the vectorization, not a thread setting. Only ``model.learn(timesteps)``
is timed (rollouts and updates): worker start-up, imports and one warm-up rollout and update per
setup come before. Throughput is env steps per second over all envs (best repeat). The learner
dominates either way (SB3's forward and update), so a ratio near 1 is what an honest baseline
gives; the policies of the next issues (observations by reference) are what change it.

Then the encoder lines (:mod:`ploutos.bench.encoders`): the same PPO on 15 synthetic assets x 95
features x lookback 32 with flat windows, by reference with the ``flat`` and the ``shared``
encoder, and plain SB3, with the line ``encoder shared by reference / flat: R x`` and the bytes per
stored env-step of each (``--encoders-only`` skips the lines above, ``--no-encoders`` these).

Benchmarks report; they never fail. The CLI calls :func:`main` with its arguments.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO as SB3PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor
from threadpoolctl import threadpool_info, threadpool_limits

from ploutos.bench.encoders import format_encoders, measure_encoders
from ploutos.bench.ranks import format_ranks, measure_ranks
from ploutos.bench.timing import time_learning
from ploutos.commandline import Parser, examples
from ploutos.config import config_hash, load
from ploutos.data.build import build_dataset
from ploutos.env.trading import TradingEnv
from ploutos.node.allocator import keep_freed_memory
from ploutos.node.context import THREAD_VARIABLES, node_feature_store, pin_threads
from ploutos.node.hardware import plan
from ploutos.train.folds import fold_features
from ploutos.train.model import build_model, member_seed, policy_name
from ploutos.train.trainer import make_venv

"""ploutos steps/s over plain SB3 steps/s must be at or above this."""
FOLD = 0
"""The walk-forward fold whose training rows the envs trade."""


@dataclass(frozen=True)
class TrainBench:
    """Both setups at one env count."""

    n_envs: int
    workers: int
    """Env worker processes of the ploutos setup (0: the envs step in the learner's process)."""
    envs_per_worker: int
    batch_size: int
    learner_threads: int
    """Torch threads of both learners (pinned)."""
    ploutos_steps: int
    ploutos_seconds: tuple[float, ...]
    sb3_steps: int
    sb3_seconds: tuple[float, ...]

    @property
    def ploutos_rate(self) -> float:
        """Env steps per second of the best ploutos repeat."""
        return self.ploutos_steps / min(self.ploutos_seconds)

    @property
    def sb3_rate(self) -> float:
        """Env steps per second of the best plain SB3 repeat."""
        return self.sb3_steps / min(self.sb3_seconds)

    @property
    def ratio(self) -> float:
        return self.ploutos_rate / self.sb3_rate

    @property
    def passed(self) -> bool:
        """Both setups were measured (there is no speed target: the learner dominates both)."""
        return self.ploutos_rate > 0 and self.sb3_rate > 0


class _Threads:
    """Switches this process between the plan's pinned learner threads and the defaults it started with."""

    def __init__(self) -> None:

        self.torch = torch
        self.default = torch.get_num_threads()
        self.environ = {key: os.environ.get(key) for key in THREAD_VARIABLES}
        self.pools: dict[str, int] = {}
        for pool in threadpool_info():
            api = pool["user_api"]
            self.pools[api] = max(self.pools.get(api, 1), int(pool["num_threads"]))

    def pinned(self, threads: int) -> None:
        """The trainer's learner: ``pin_threads`` and ``torch.set_num_threads`` at the plan's count."""

        pin_threads(threads)
        self.torch.set_num_threads(threads)

    def use(self, pinned: int | None) -> None:
        """Pinned at ``pinned`` threads, or the defaults when it is None."""
        if pinned is None:
            self.defaults()
        else:
            self.pinned(pinned)

    def defaults(self) -> None:
        """What a plain SB3 script has: the thread counts and variables this process started with."""

        for key, value in self.environ.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self.pools:
            threadpool_limits(limits=dict(self.pools))
        self.torch.set_num_threads(self.default)


def _plan_for(config: Any, n_envs: int | None) -> Any:

    if n_envs is not None:
        config = replace(config, hardware=replace(config.hardware, n_envs=n_envs))
    return plan(config)


def plain_env_fn(arrays: Any, config: Any, rows: slice) -> Callable[[], Any]:
    """An env function as a user would write it: the arrays travel (pickled) into each worker."""

    def make() -> Any:

        return TradingEnv(arrays, config.env, rows=rows, bars_per_year=config.data.bars_per_year)

    return make


@contextmanager
def _setups(
    config: Any, arrays: Any, fold: Any, store_name: str, store_hash: str, layout: Any, seed: int
) -> Iterator[tuple[Any, Any]]:
    """The ploutos and the plain SB3 models at ``layout.n_envs`` envs; every vec env is closed on exit."""

    rows = (fold.train.start, fold.train.stop)
    venvs: list[Any] = []
    try:
        ours = VecMonitor(make_venv(config, fold, layout, arrays, store_name, store_hash))
        venvs.append(ours)
        plain = VecMonitor(DummyVecEnv([plain_env_fn(arrays, config, slice(*rows))] * layout.n_envs))
        venvs.append(plain)
        models = []
        for venv, cls in ((ours, None), (plain, SB3PPO if config.ppo.algo == "ppo" else RecurrentPPO)):
            model = build_model(config, venv, layout, seed, values=arrays.values, algorithm_class=cls)
            venv.seed(seed)
            models.append(model)
        yield models[0], models[1]
    finally:
        for venv in venvs:
            venv.close()


def measure(
    config: Any,
    arrays: Any,
    fold: Any,
    store_name: str,
    store_hash: str,
    *,
    n_envs: int | None,
    timesteps: int,
    repeats: int,
    threads: _Threads,
    seed: int,
) -> TrainBench:
    """Warm both setups up with one rollout and update each, then time ``learn(timesteps)`` in turn."""
    layout = _plan_for(config, n_envs)
    threads.defaults()
    with _setups(config, arrays, fold, store_name, store_hash, layout, seed) as (ours, theirs):
        threads.use(layout.learner_threads)  # both setups: the same pinned threads
        seconds, steps = time_learning(
            {"ploutos": ours, "sb3": theirs}, warmup_steps=layout.rollout, timesteps=timesteps, repeats=repeats
        )
        threads.defaults()
    return TrainBench(
        n_envs=layout.n_envs,
        workers=layout.workers,
        envs_per_worker=layout.envs_per_worker,
        batch_size=layout.batch_size,
        learner_threads=layout.learner_threads,
        ploutos_steps=steps["ploutos"],
        ploutos_seconds=seconds["ploutos"],
        sb3_steps=steps["sb3"],
        sb3_seconds=seconds["sb3"],
    )


def obs_description(arrays: Any, config: Any) -> str:
    n_time, n_asset, n_feat = arrays.values.shape
    lookback = config.env.lookback
    size = lookback * n_asset * n_feat + n_asset + 3
    return f"{size:,} float32 (lookback {lookback} x {n_asset} asset(s) x {n_feat} features + {n_asset + 3} portfolio)"


def network_description(config: Any) -> str:

    ppo = config.ppo
    policy = policy_name(config)
    arch = list(ppo.net_arch)
    return (
        f"{ppo.algo} {policy} pi {arch} vf {arch}, n_steps {ppo.n_steps}, n_epochs {ppo.n_epochs}, "
        f"lr {ppo.learning_rate:g}"
    )


def format_result(r: TrainBench) -> list[str]:
    def runs(seconds: tuple[float, ...]) -> str:
        return ", ".join(f"{s:.2f} s" for s in seconds)

    return [
        f"ploutos    {r.ploutos_rate:>9,.0f} steps/s  (best of {len(r.ploutos_seconds)}: {runs(r.ploutos_seconds)} "
        f"for {r.ploutos_steps:,} steps)",
        f"plain SB3  {r.sb3_rate:>9,.0f} steps/s  (best of {len(r.sb3_seconds)}: {runs(r.sb3_seconds)} "
        f"for {r.sb3_steps:,} steps)",
        f"ratio ploutos / plain SB3: {r.ratio:.2f}x (same torch threads, envs and network)",
    ]


def format_table(results: Sequence[TrainBench]) -> list[str]:
    lines = [
        f"{'n_envs':>6} {'workers':>7} {'batch':>5} {'threads':>7} {'ploutos steps/s':>16} "
        f"{'plain SB3 steps/s':>18} {'ratio':>7}",
    ]
    for r in results:
        lines.append(
            f"{r.n_envs:>6} {r.workers:>7} {r.batch_size:>5} {r.learner_threads:>7} "
            f"{r.ploutos_rate:>16,.0f} {r.sb3_rate:>18,.0f} {r.ratio:>6.2f}x"
        )
    best = max(results, key=lambda r: r.ratio)
    lines.append(
        f"best ratio ploutos / plain SB3: {best.ratio:.2f}x at {best.n_envs} envs (same threads, envs and network)"
    )
    return lines


def _env_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated env counts like 2,4,8, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"env counts must be >= 1, got {text!r}")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    return _run(parser, args)


def build_parser() -> Parser:
    parser = Parser(
        prog="ploutos bench train",
        description="End-to-end env steps per second of PPO training, Ploutos' trainer setup against plain SB3\n"
        "(DummyVecEnv, the same network, envs, threads and seed), on fold 0 of the config (default:\n"
        "the quickstart; its dataset is built first when missing). Then the encoder lines (flat, by\n"
        "reference, shared, attention, plain SB3) on synthetic arrays and the MPI ranks line. Prints\n"
        "figures and ratios; writes only the dataset when it had to be built.",
        epilog=examples("ploutos bench train --quick", "ploutos bench train --encoders-only --n-envs 8"),
    )
    parser.add_argument("--config", "-c", default=None, help="config YAML file or embedded name (default: quickstart)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set data.store=/tmp/quickstart",
    )  # fmt: skip
    parser.add_argument("--timesteps", type=int, default=8192, help="env steps per timed learn (default 8192)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats of each setup, interleaved (default 2)")
    parser.add_argument("--n-envs", type=int, default=None, help="envs of both setups (default: the hardware plan's)")
    parser.add_argument(
        "--n-envs-list", type=_env_counts, default=None, metavar="N,N,...",
        help="measure at each of these env counts and print a table (e.g. 2,4,8)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="1024 timesteps, 1 repeat")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--encoders-only", action="store_true", help="only the encoder lines (synthetic arrays)")
    which.add_argument("--no-encoders", action="store_true", help="skip the encoder lines")
    return parser


def _run(parser: Parser, args: argparse.Namespace) -> int:
    timesteps, repeats = (1024, 1) if args.quick else (args.timesteps, args.repeats)
    if timesteps < 1 or repeats < 1:
        parser.error("--timesteps and --repeats must be >= 1")

    config = load(args.config or "quickstart", args.overrides)
    if config.hardware.keep_freed_memory and keep_freed_memory():
        print("# every setup in this process: glibc keeps freed memory (hardware.keep_freed_memory), as a task does")
    if not args.encoders_only:
        _bench_setups(config, args.n_envs_list, args.n_envs, timesteps, repeats)
    if not args.no_encoders:
        print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {_load()}")
        found = measure_encoders(
            config, timesteps=timesteps, repeats=repeats, threads=_Threads(), seed=member_seed(config.seed, FOLD, 0),
            n_envs=args.n_envs,
        )  # fmt: skip
        for line in format_encoders(found):
            print(line, flush=True)
        n_envs = found.n_envs
        ranks = measure_ranks((1, 2), timesteps=timesteps, n_envs=n_envs, config_name=args.config or "quickstart",
                              overrides=args.overrides)  # fmt: skip
        for line in format_ranks(ranks, n_envs=n_envs):
            print(line, flush=True)
        print(f"# load after: {_load()}")
    return 0


def _load() -> str:
    """The 1, 5 and 15 minute load averages: a benchmark on a busy machine says so."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _bench_setups(config: Any, n_envs_list: list[int] | None, n_envs: int | None, timesteps: int, repeats: int) -> None:
    """The ploutos and plain SB3 setups on the config's fold 0 (the lines before the encoders')."""
    build_dataset(config.data, progress=False)  # a no-op when the dataset is built
    arrays, fold, _ = fold_features(config, FOLD)
    threads = _Threads()
    counts: list[int | None] = list(n_envs_list) if n_envs_list else [n_envs]
    first = _plan_for(config, counts[0])
    seed = member_seed(config.seed, FOLD, 0)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}")
    print(
        f"train throughput: {config.name}, fold {FOLD} training rows {fold.train.start}:{fold.train.stop} of "
        f"{len(arrays.timestamps):,}, {timesteps:,} timesteps x {repeats} repeat(s) per setup, interleaved, best "
        "(env steps/s over all envs; higher is better)"
    )
    print(
        "  timed: model.learn() only (rollouts + updates); worker start-up, imports and one warm-up "
        "rollout + update per setup are excluded"
    )
    print(f"  obs {obs_description(arrays, config)}, action {arrays.values.shape[1]} weight(s)")
    print(f"  network {network_description(config)}, device {first.device}")
    if len(counts) == 1:
        print(f"  n_envs {first.n_envs}, batch_size {first.batch_size}, rollout {first.rollout} per update")
        where = (
            f"ShmVecEnv, {first.workers} worker(s) x {first.envs_per_worker} env(s) over the /dev/shm store"
            if first.workers
            else "BatchedVecEnv, the envs stepped as one batch in the learner's process"
        )
        print(f"  ploutos:   {where}, copy_obs=False, VecMonitor; torch threads {first.learner_threads} (pinned)")
        print(
            f"  plain SB3: DummyVecEnv, {first.n_envs} envs, VecMonitor; torch threads {first.learner_threads} (pinned)"
        )
    else:
        print("  ploutos: the envs where the plan puts them; plain SB3: DummyVecEnv; both with the plan's threads")
    store_hash = f"{config_hash(config)}-bench-train"
    results = []
    with node_feature_store(lambda: arrays, config_hash=store_hash, tag="benchtrain") as store:
        for n_envs in counts:
            result = measure(
                config, arrays, fold, store.name, store_hash,
                n_envs=n_envs, timesteps=timesteps, repeats=repeats, threads=threads, seed=seed,
            )  # fmt: skip
            results.append(result)
            if len(counts) > 1:
                print(f"  measured {result.n_envs} envs: ratio {result.ratio:.2f}x", flush=True)
    lines = format_result(results[0]) if len(counts) == 1 else format_table(results)
    for line in lines:
        print(line)
