"""The ``ploutos`` command.

Every subcommand takes ``--config`` (a YAML file or an embedded config name; default the
embedded quickstart) and any number of ``--set section.key=value`` overrides. A user error
prints one line ``ploutos: error: ...`` and exits 2; an interrupt exits 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ploutos import __version__
from ploutos.errors import PloutosError

EXIT_USER_ERROR = 2
EXIT_PROBLEMS_FOUND = 1
EXIT_INTERRUPTED = 130
EXIT_PREEMPTED = 3
"""A task checkpointed after SIGUSR2/SIGTERM; the same command resumes it (Slurm requeues on this)."""


def _config_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default=None, help="config YAML file or embedded name (default: quickstart)")
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set data.session=extended",
    )
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    return common


def _load(args: argparse.Namespace):
    from ploutos.config import load

    return load(args.config, args.overrides)


def cmd_config_show(args: argparse.Namespace) -> int:
    from ploutos.config import config_hash, dump

    config = _load(args)
    print(dump(config, with_docs=args.docs), end="")
    print(f"# config hash: {config_hash(config)}")
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:
    from ploutos.data.build import build_dataset

    config = _load(args)
    report = build_dataset(config.data, progress=not args.no_progress)
    print(report.summary())
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from ploutos.data.inspect import check_path

    config = _load(args)
    problems = check_path(Path(args.path), config.data)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {args.path}", file=sys.stderr)
        return EXIT_PROBLEMS_FOUND
    print(f"{args.path}: no problems")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from ploutos.data.inspect import describe_path

    info = describe_path(Path(args.path), _load(args).data)
    print(json.dumps(info, indent=2, default=str) if args.json else _format_info(info))
    return 0


def _format_info(info: dict) -> str:
    lines = [f"{key}: {value}" for key, value in info.items() if not isinstance(value, (list, dict))]
    for ticker in info.get("tickers_detail", []):
        lines.append(f"  {ticker['ticker']:<8} {ticker['rows']:>8} bars  {ticker['first']}  ->  {ticker['last']}")
    return "\n".join(lines)


def cmd_features_list(args: argparse.Namespace) -> int:
    from ploutos.features import all_specs

    config = _load(args)
    macro = [f"macro_{name}" for name in config.data.macro]
    specs = all_specs(config.features, n_tickers=len(config.data.tickers), macro_columns=macro)
    if args.markdown:
        print("| feature | kind | warm-up | definition |\n| --- | --- | ---: | --- |")
        for spec in specs:
            print(f"| `{spec.name}` | {spec.kind} | {spec.warmup} | {spec.definition} |")
    else:
        width = max(len(spec.name) for spec in specs)
        for spec in specs:
            print(f"{spec.name:<{width}}  {spec.kind:<11}  warm-up {spec.warmup:>3}  {spec.definition}")
    counts = {kind: sum(s.kind == kind for s in specs) for kind in ("raw", "observation", "macro", "cross")}
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    separator = "\n" if args.markdown else ""
    print(f"{separator}{len(specs)} features ({summary}) for {len(config.data.tickers)} ticker(s)")
    return 0


def cmd_features_compute(args: argparse.Namespace) -> int:
    from ploutos.data.inspect import read_bars_path
    from ploutos.data.store import read_dataset
    from ploutos.data.validate import check
    from ploutos.features import compute
    from ploutos.results.files import atomic_path

    config = _load(args)
    source, out = Path(args.input), Path(args.out)
    if not out.parent.is_dir():  # before the work, not after it
        raise PloutosError(f"{out}: the folder {out.parent} does not exist")
    if source.is_dir():
        bars = read_dataset(source)
    else:
        bars, _ = check(
            read_bars_path(source, config.data),
            config.data.on_invalid,
            path=str(source),
            max_gap_bars=None,
        )
    features = compute(bars, config.features)
    with atomic_path(out) as tmp:
        features.write_parquet(tmp)
    tickers = features["ticker"].n_unique()
    print(f"{args.out}: {features.height} rows x {features.width - 2} features for {tickers} ticker(s)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Benchmarks print their figures and ratios against a baseline measured in the same run."""
    from ploutos.bench import env as bench_env
    from ploutos.bench import features as bench_features
    from ploutos.bench import memory as bench_memory
    from ploutos.bench import train as bench_train
    from ploutos.bench import vecenv as bench_vecenv

    benches = {
        "features": bench_features.main,
        "memory": bench_memory.main,
        "env": bench_env.main,
        "vecenv": bench_vecenv.main,
        "train": bench_train.main,
    }
    return benches[args.bench](args.rest)


def cmd_hardware(args: argparse.Namespace) -> int:
    from ploutos.hardware import cli_hardware

    return cli_hardware(_load(args))


def cmd_shm_list(args: argparse.Namespace) -> int:
    from ploutos.shm import cli_list

    return cli_list(args)


def cmd_shm_clean(args: argparse.Namespace) -> int:
    from ploutos.shm import cli_clean

    return cli_clean(args)


def cmd_folds(args: argparse.Namespace) -> int:
    from ploutos.train.folds import cli_folds

    return cli_folds(_load(args))


def cmd_train(args: argparse.Namespace) -> int:
    from ploutos.train.trainer import Preempted, train_task

    config = _load(args)
    try:
        outcome = train_task(config, args.fold, args.member, progress=not args.no_progress, force=args.force)
    except Preempted as stop:
        print(f"ploutos: {stop}", file=sys.stderr)
        return EXIT_PREEMPTED
    if outcome.result is None:  # a rank other than 0: rank 0 reports
        return 0
    if outcome.skipped:
        print(f"{outcome.result}: already done (--force trains it again)")
        return 0
    resumed = f", resumed {outcome.resumed} time(s)" if outcome.resumed else ""
    print(f"{outcome.result}: {outcome.timesteps} steps in {outcome.wall_seconds:.1f} s{resumed}")
    from ploutos.results.hdf5 import format_metrics

    print(format_metrics(outcome.result))
    if outcome.ensemble is not None:
        print(f"{outcome.ensemble}: the fold's {config.ensemble.members} members as one ensemble")
        print(format_metrics(outcome.ensemble))
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from ploutos.launch import launch

    return launch(_load(args), args.executor, wait=not args.no_wait)


def cmd_aggregate(args: argparse.Namespace) -> int:
    from ploutos.results.aggregate import cli_aggregate

    return cli_aggregate(Path(args.run_dir))


def cmd_report(args: argparse.Namespace) -> int:
    from ploutos.results.report import cli_report

    return cli_report(Path(args.run_dir))


def cmd_validate(args: argparse.Namespace) -> int:
    from ploutos.train.validate import validate

    validate(_load(args))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The main job on one machine: data, the walk-forward plan, every (fold, member), the results.

    Tasks already done are skipped and interrupted ones resume from their checkpoints, so running
    it again continues where it stopped.
    """
    from ploutos.data.build import build_dataset
    from ploutos.results.layout import RunLayout
    from ploutos.train.folds import format_plan, plan_for
    from ploutos.train.trainer import Preempted, train_task

    config = _load(args)
    print(f"[1/4] data: building {config.data.store} from {config.data.source}", flush=True)
    print(build_dataset(config.data, progress=not args.no_progress).summary(), flush=True)
    print("[2/4] walk-forward plan", flush=True)
    folds = plan_for(config)
    print(format_plan(folds, config.ensemble.members), flush=True)
    RunLayout.of(config).prepare(config)
    RunLayout.of(config).write_plan(len(folds), config.ensemble.members)
    tasks = [(fold.index, member) for fold in folds for member in range(config.ensemble.members)]
    print(f"[3/4] train: {len(tasks)} task(s) into {config.run_dir}", flush=True)
    for number, (fold, member) in enumerate(tasks, 1):
        try:
            outcome = train_task(config, fold, member, progress=not args.no_progress)
        except Preempted as stop:
            print(f"ploutos: {stop}", file=sys.stderr)
            return EXIT_PREEMPTED
        state = "already done" if outcome.skipped else f"{outcome.timesteps} steps in {outcome.wall_seconds:.0f} s"
        print(f"  task {number}/{len(tasks)} fold {fold} member {member}: {state}", flush=True)
    print("[4/4] aggregate and report", flush=True)
    from ploutos.results.aggregate import aggregate, format_folds
    from ploutos.results.report import write_report

    summary = aggregate(RunLayout.of(config).root)
    print(summary.line())
    print(format_folds(summary.path))
    report = write_report(summary.path.parent)
    print(f"report: {report[-1]} (and {len(report) - 1} plots)")
    return 0


def cmd_paper(args: argparse.Namespace) -> int:
    from ploutos.paper.command import cli_paper

    return cli_paper(Path(args.run), args.overrides, loop=args.loop, dry=args.dry_run, live=args.live)


def build_parser() -> argparse.ArgumentParser:
    common = _config_options()
    parser = argparse.ArgumentParser(prog="ploutos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"ploutos {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", parents=[common], help="run the whole pipeline on a config")
    run.set_defaults(handler=cmd_run)

    folds = commands.add_parser("folds", parents=[common], help="the walk-forward plan on the built dataset")
    folds.set_defaults(handler=cmd_folds)

    train = commands.add_parser(
        "train", parents=[common], help="train, evaluate and record one (fold, member); resumes from its checkpoint"
    )
    train.add_argument("--fold", type=int, required=True, help="walk-forward fold (see `ploutos folds`)")
    train.add_argument("--member", type=int, default=0, help="ensemble member (default 0)")
    train.add_argument("--force", action="store_true", help="train again even if the task's result exists")
    train.set_defaults(handler=cmd_train)

    launch = commands.add_parser(
        "launch", parents=[common], help="run the whole walk-forward: on Slurm, on this machine, or inline"
    )
    launch.add_argument(
        "--executor",
        choices=["sbatch", "slurm", "local", "debug"],
        default="local",
        help="sbatch: the array scripts; slurm: submitit; local: this machine, all cores, one task at a time "
        "(RunPod); debug: in this process (default: local)",
    )
    launch.add_argument("--no-wait", action="store_true", help="sbatch: submit and return without following")
    launch.set_defaults(handler=cmd_launch)

    aggregate = commands.add_parser("aggregate", help="merge a run's task files into RUN_DIR/summary.h5")
    aggregate.add_argument("run_dir", help="the run folder, e.g. results/quickstart")
    aggregate.set_defaults(handler=cmd_aggregate)

    report = commands.add_parser("report", help="plots and a markdown summary of an aggregated run")
    report.add_argument("run_dir", help="the run folder, e.g. results/quickstart")
    report.set_defaults(handler=cmd_report)

    check_run = commands.add_parser(
        "validate", parents=[common], help="run every stage of the pipeline on a tiny budget and report each"
    )
    check_run.set_defaults(handler=cmd_validate)

    paper = commands.add_parser(
        "paper", help="trade the latest fold's ensemble on Alpaca paper, or replay it (--dry-run)"
    )
    paper.add_argument("--run", required=True, metavar="RUN_DIR", help="a trained run folder, e.g. results/quickstart")
    paper_mode = paper.add_mutually_exclusive_group()
    paper_mode.add_argument("--once", action="store_true", help="process the newest bar and exit (default)")
    paper_mode.add_argument("--loop", action="store_true", help="check for a new bar every paper.poll_seconds")
    paper.add_argument("--dry-run", action="store_true", help="replay the local dataset over the latest test window")
    paper.add_argument("--live", action="store_true", help="trade a live account (needs PLOUTOS_LIVE_CONFIRM=yes)")
    paper.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override paper.* or data.* (source, url, store, tickers) of the run's config",
    )  # fmt: skip
    paper.set_defaults(handler=cmd_paper)

    config = commands.add_parser("config", help="show the resolved config")
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    show = config_commands.add_parser("show", parents=[common], help="print the resolved config as YAML")
    show.add_argument("--docs", action="store_true", help="add each key's documentation as a comment")
    show.set_defaults(handler=cmd_config_show)

    data = commands.add_parser("data", help="build, check and describe bar datasets")
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    build = data_commands.add_parser("build", parents=[common], help="download/validate bars into the store")
    build.set_defaults(handler=cmd_data_build)
    check = data_commands.add_parser(
        "check", parents=[common], help="validate a CSV, a Parquet file or a dataset; list every problem"
    )
    check.add_argument("path", help="CSV file, Parquet file or dataset directory")
    check.set_defaults(handler=cmd_data_check)
    info = data_commands.add_parser("info", parents=[common], help="describe a dataset or bars file")
    info.add_argument("path", help="dataset directory, Parquet or CSV file")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(handler=cmd_data_info)

    features = commands.add_parser("features", help="list and compute features")
    feature_commands = features.add_subparsers(dest="features_command", metavar="SUBCOMMAND", required=True)
    listing = feature_commands.add_parser("list", parents=[common], help="every feature with definition and warm-up")
    listing.add_argument("--markdown", action="store_true", help="as a markdown table")
    listing.set_defaults(handler=cmd_features_list)
    compute = feature_commands.add_parser("compute", parents=[common], help="compute raw features of a bars file")
    compute.add_argument("input", help="CSV or Parquet bars, or a dataset directory")
    compute.add_argument("--out", required=True, help="output Parquet file")
    compute.set_defaults(handler=cmd_features_compute)

    bench = commands.add_parser("bench", help="benchmarks: speed against a baseline measured in the same run")
    bench.add_argument("bench", choices=["features", "memory", "env", "vecenv", "train"], help="what to benchmark")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark (see --help after its name)")
    bench.set_defaults(handler=cmd_bench)

    hardware = commands.add_parser("hardware", parents=[common], help="the plan for this machine and why")
    hardware.set_defaults(handler=cmd_hardware)

    shm = commands.add_parser("shm", help="shared-memory feature stores in /dev/shm")
    shm_commands = shm.add_subparsers(dest="shm_command", metavar="SUBCOMMAND", required=True)
    shm_commands.add_parser("list", help="every Ploutos segment, its job and whether it is alive").set_defaults(
        handler=cmd_shm_list
    )
    clean = shm_commands.add_parser("clean", help="remove segments left by dead jobs (never a live one)")
    clean.add_argument("--job", default=None, help="only this job's orphans")
    clean.set_defaults(handler=cmd_shm_clean)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except PloutosError as err:
        print(f"ploutos: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ploutos: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and friends
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
