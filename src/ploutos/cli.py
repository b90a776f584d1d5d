"""The ``ploutos`` command.

Every subcommand takes ``--config`` (a YAML file or an embedded config name; default the
embedded quickstart) and any number of ``--set section.key=value`` overrides. A user error
prints one line ``ploutos: error: ...`` and exits 2; an interrupt exits 130.

The command only parses arguments, calls the package and prints. Each command imports its
modules when it runs (the lines marked ``# lazy``): ``ploutos --help`` and ``config show`` start
in a fraction of a second instead of paying for torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from ploutos import __version__
from ploutos.commandline import Parser
from ploutos.config import Config, config_hash, dump, load
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


def _load(args: argparse.Namespace) -> Config:
    return load(args.config, args.overrides)


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_config_show(args: argparse.Namespace) -> int:
    config = _load(args)
    print(dump(config, with_docs=args.docs), end="")
    print(f"# config hash: {config_hash(config)}")
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:
    from ploutos.data.build import build_dataset  # lazy: fast startup

    config = _load(args)
    report = build_dataset(config.data, progress=not args.no_progress)
    print(report.summary())
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from ploutos.data.inspect import check_path  # lazy: fast startup

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
    from ploutos.data.inspect import describe_path  # lazy: fast startup

    info = describe_path(Path(args.path), _load(args).data)
    print(json.dumps(info, indent=2, default=str) if args.json else _format_info(info))
    return 0


def _format_info(info: dict) -> str:
    lines = [f"{key}: {value}" for key, value in info.items() if not isinstance(value, (list, dict))]
    for ticker in info.get("tickers_detail", []):
        lines.append(f"  {ticker['ticker']:<8} {ticker['rows']:>8} bars  {ticker['first']}  ->  {ticker['last']}")
    return "\n".join(lines)


def cmd_features_list(args: argparse.Namespace) -> int:
    from ploutos.features import all_specs  # lazy: fast startup

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
    from ploutos.data.inspect import read_bars_path  # lazy: fast startup
    from ploutos.data.store import read_dataset  # lazy: fast startup
    from ploutos.data.validate import check  # lazy: fast startup
    from ploutos.features import compute  # lazy: fast startup
    from ploutos.files import atomic_path  # lazy: fast startup

    config = _load(args)
    source, out = Path(args.input), Path(args.out)
    if not out.parent.is_dir():  # before the work, not after it
        raise PloutosError(f"{out}: the folder {out.parent} does not exist")
    if out.is_dir():
        raise PloutosError(f"{out}: is a folder; --out takes a file name (.parquet or .csv)")
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise PloutosError(f"{out}: --out writes .parquet or .csv, not {out.suffix or 'a name without a suffix'}")
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
        if out.suffix.lower() == ".csv":
            features.write_csv(tmp)
        else:
            features.write_parquet(tmp)
    tickers = features["ticker"].n_unique()
    print(f"{args.out}: {features.height} rows x {features.width - 2} features for {tickers} ticker(s)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Benchmarks print their figures and ratios against a baseline measured in the same run."""
    if args.bench == "features":
        from ploutos.bench.features import main as bench  # lazy: fast startup
    elif args.bench == "memory":
        from ploutos.bench.memory import main as bench  # lazy: fast startup
    elif args.bench == "env":
        from ploutos.bench.env import main as bench  # lazy: fast startup
    elif args.bench == "vecenv":
        from ploutos.bench.vecenv import main as bench  # lazy: fast startup
    else:
        from ploutos.bench.train import main as bench  # lazy: fast startup
    return bench(args.rest)


def cmd_hardware(args: argparse.Namespace) -> int:
    from ploutos.node.hardware import format_plan, plan  # lazy: fast startup

    hardware_plan = plan(_load(args))
    print(format_plan(hardware_plan))
    hardware_plan.require()
    return 0


def cmd_shm_list(args: argparse.Namespace) -> int:
    from ploutos.node.store import SHM_DIR, list_segments  # lazy: fast startup

    segments = list_segments()
    for s in segments:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created)) if s.created else "?"
        state = "alive" if s.alive else "ORPHAN"
        extra = f" ({s.problem})" if s.problem else ""
        print(f"{s.name}  {s.size / 2**20:.1f} MB  job {s.job}  pid {s.pid}  host {s.host}  {created}  {state}{extra}")
    if not segments:
        print(f"no ploutos segments in {SHM_DIR}")
    return 0


def cmd_shm_clean(args: argparse.Namespace) -> int:
    from ploutos.node.store import SHM_DIR, clean  # lazy: fast startup

    removed, refused = clean(args.job)
    for name in removed:
        print(f"removed {name}")
    for line in refused:
        print(line, file=sys.stderr)
    print(f"{len(removed)} orphaned segment(s) removed from {SHM_DIR}")
    return EXIT_PROBLEMS_FOUND if refused else 0


def cmd_folds(args: argparse.Namespace) -> int:
    from ploutos.train.folds import format_plan, plan_for  # lazy: fast startup

    config = _load(args)
    print(format_plan(plan_for(config), config.ensemble.members))
    return 0


def _preempted(stop: Exception) -> int:
    print(f"ploutos: {stop}", file=sys.stderr)
    return EXIT_PREEMPTED


def cmd_train(args: argparse.Namespace) -> int:
    from ploutos.pipeline.task import run_task  # lazy: fast startup
    from ploutos.results.hdf5 import format_metrics  # lazy: fast startup
    from ploutos.train.trainer import Preempted  # lazy: fast startup

    config = _load(args)
    try:
        outcome = run_task(config, args.fold, args.member, progress=not args.no_progress, force=args.force)
    except Preempted as stop:
        return _preempted(stop)
    if outcome.result is None:  # a rank other than 0: rank 0 reports
        return 0
    if outcome.skipped:
        print(f"{outcome.result}: already done (--force trains it again)")
        if outcome.ensemble is not None:
            print(f"{outcome.ensemble}: the fold's ensemble, rebuilt (it was missing or damaged)")
        return 0
    resumed = f", resumed {outcome.resumed} time(s)" if outcome.resumed else ""
    redone = f" (trained again: {outcome.redone})" if outcome.redone else ""
    print(f"{outcome.result}: {outcome.timesteps} steps in {outcome.wall_seconds:.1f} s{resumed}{redone}")
    print(format_metrics(outcome.result))
    if outcome.ensemble is not None:
        print(f"{outcome.ensemble}: the fold's {config.ensemble.members} members as one ensemble")
        print(format_metrics(outcome.ensemble))
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from ploutos.launch import launch  # lazy: fast startup

    return launch(_load(args), args.executor, wait=not args.no_wait, echo=_say)


def cmd_aggregate(args: argparse.Namespace) -> int:
    """0 when written (missing tasks are data), 1 when no task at all is ok."""
    from ploutos.pipeline.run import aggregate_run  # lazy: fast startup
    from ploutos.results.aggregate import format_folds  # lazy: fast startup

    summary = aggregate_run(Path(args.run_dir))
    print(summary.line())
    print(format_folds(summary.path))
    if not summary.any_ok:
        print(f"ploutos: error: {args.run_dir}: no task file is ok; nothing to aggregate", file=sys.stderr)
        return EXIT_PROBLEMS_FOUND
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ploutos.results.report import write_report  # lazy: fast startup

    for path in write_report(Path(args.run_dir)):
        print(path)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from ploutos.pipeline.validate import validate  # lazy: fast startup

    validate(_load(args), echo=_say)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The main job on one machine: data, the walk-forward plan, every (fold, member), the results.

    Tasks already done are skipped and interrupted ones resume from their checkpoints, so running
    it again continues where it stopped.
    """
    from ploutos.pipeline.run import InProcess, run  # lazy: fast startup
    from ploutos.train.trainer import Preempted  # lazy: fast startup

    progress = not args.no_progress
    try:
        return run(_load(args), InProcess(progress=progress), echo=_say, progress=progress)
    except Preempted as stop:
        return _preempted(stop)


def cmd_paper(args: argparse.Namespace) -> int:
    from ploutos.paper.command import cli_paper  # lazy: fast startup

    return cli_paper(
        Path(args.run),
        args.overrides,
        loop=args.loop,
        dry=args.dry_run,
        live=args.live,
        adopt=args.adopt_positions,
    )


def cmd_backtest(args: argparse.Namespace) -> int:
    from ploutos.pipeline.backtest import backtest  # lazy: fast startup
    from ploutos.results.hdf5 import format_metrics  # lazy: fast startup

    done = backtest(
        Path(args.run), fold=args.fold, member=args.member, data=Path(args.data) if args.data else None,
        start=args.start, end=args.end, allow_in_sample=args.allow_in_sample, name=args.name, echo=_say,
    )  # fmt: skip
    window = done.window
    in_sample = f"{window.in_sample_bars} in-sample (--allow-in-sample)" if window.in_sample else "none in-sample"
    print(f"{done.result}: {window.bars:,} bars, {in_sample}, in {done.seconds:.1f} s")
    print(format_metrics(done.result))
    print(f"{done.report.with_suffix('.html')}: the report (report.md and equity.png beside it)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = _config_options()
    parser = Parser(prog="ploutos", description=__doc__.split("\n\n")[0])
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
        "--adopt-positions",
        action="store_true",
        help="on a first run, manage positions the account already holds in the traded symbols as this run's own",
    )
    paper.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override paper.* or data.* (source, url, store, tickers) of the run's config",
    )  # fmt: skip
    paper.set_defaults(handler=cmd_paper)

    backtest = commands.add_parser(
        "backtest",
        help="trade a trained fold's ensemble (or a member) on bars it has not trained on",
        description="Trade fold K's ensemble (default: the latest fold; --member M for one member) on new bars: the "
        "run's dataset from the fold's test window on (or --start/--end), or a bars file (--data). Features come "
        "from the training code path with the fold's normalization; fills, costs and baselines from the simulator "
        "that evaluated it. Bars the model trained or validated on are refused unless --allow-in-sample. Writes "
        "RUN_DIR/backtests/NAME/backtest.h5 (the task-file schema), report.md and equity.png.",
        epilog="examples:\n  ploutos backtest --run results/quickstart --fold 0\n"
        "  ploutos backtest --run results/quickstart --latest --data new_bars.csv --start 2018-01-02",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    backtest.add_argument(
        "--run", required=True, metavar="RUN_DIR", help="a trained run folder, e.g. results/quickstart"
    )
    which = backtest.add_mutually_exclusive_group()
    which.add_argument("--fold", type=int, default=None, help="the fold whose models trade (default: the latest)")
    which.add_argument("--latest", action="store_true", help="the latest fold with trained models (the default)")
    backtest.add_argument("--member", type=int, default=None, help="one member instead of the fold's ensemble")
    backtest.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="bars: CSV, Parquet or a dataset folder (default: the run's dataset)",
    )
    backtest.add_argument("--start", default=None, metavar="DATE", help="first bar to trade, UTC (YYYY-MM-DD[THH:MM])")
    backtest.add_argument("--end", default=None, metavar="DATE", help="trade bars before this time, UTC")
    backtest.add_argument(
        "--allow-in-sample", action="store_true", help="trade bars of the fold's training window too (marked)"
    )
    backtest.add_argument("--name", default=None, help="folder name under RUN_DIR/backtests (default: from the window)")
    backtest.set_defaults(handler=cmd_backtest)

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
    compute.add_argument("--out", required=True, help="output file: .parquet, or .csv")
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


def _one_line_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    print(f"ploutos: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warning
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except PloutosError as err:
        print(f"ploutos: error: {' '.join(str(err).split())}", file=sys.stderr)  # one line, always
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ploutos: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and friends
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
