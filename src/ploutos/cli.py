"""The ``ploutos`` command.

Every subcommand takes ``--config`` (a YAML file or an embedded config name; default the
embedded quickstart) and any number of ``--set section.key=value`` overrides. A user error
prints one line ``ploutos: error: ...`` and exits 2; an interrupt exits 130.

The command only parses arguments, calls the package and prints. Each command loads and checks
its config first and imports its modules afterwards (the lines marked ``# lazy``): ``ploutos
--help``, ``config show`` and a misspelt key answer in a fraction of a second instead of paying
for torch. ``tests/test_cli_help.py`` holds that.
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
from ploutos.commandline import Parser, examples
from ploutos.config import Config, config_hash, dump, load, starter_config
from ploutos.errors import PloutosError
from ploutos.files import atomic_path

EXIT_USER_ERROR = 2
EXIT_PROBLEMS_FOUND = 1
EXIT_INTERRUPTED = 130
EXIT_PREEMPTED = 3
"""A task checkpointed after SIGUSR2/SIGTERM; the same command resumes it (Slurm requeues on this)."""

BENCHMARKS = ("features", "memory", "env", "vecenv", "train")

FEATURE_FORMATS = {
    ".parquet": "Parquet",
    ".pq": "Parquet",
    ".csv": "CSV",
    ".arrow": "Arrow IPC",
    ".feather": "Arrow IPC",
}
"""What ``features compute --out`` writes, by the file's extension."""


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


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 100 else f"{value:.0f} s"


def cmd_config_show(args: argparse.Namespace) -> int:
    config = _load(args)
    print(dump(config, with_docs=args.docs), end="")
    print(f"# config hash: {config_hash(config)}")
    return 0


def cmd_config_init(args: argparse.Namespace) -> int:
    config = starter_config(args.hardware)
    base = "the quickstart" + (f" on the hardware profile {args.hardware}" if args.hardware else "")
    text = (
        f"# A Ploutos config: {base}, every key with its documentation.\n"
        "# Edit the values; 'ploutos config show -c FILE --docs' prints it resolved, and any command\n"
        "# takes it with -c FILE. A key left out takes its default.\n"
        f"{dump(config, with_docs=True)}"
    )
    if args.out is None:
        print(text, end="")
        return 0
    out = Path(args.out)
    if out.is_dir():
        raise PloutosError(f"config init: --out {out}: is a folder; give a file name, e.g. {out / 'mine.yaml'}")
    if out.exists() and not args.force:
        raise PloutosError(f"config init: --out {out}: exists; --force overwrites it")
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"{out}: {base} (config hash {config_hash(config)})")
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:
    config = _load(args)
    from ploutos.data.build import build_dataset  # lazy: a config error before the data stack loads

    report = build_dataset(config.data, progress=not args.no_progress)
    print(report.summary())
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    config = _load(args)
    from ploutos.data.inspect import check_path  # lazy: a config error before the data stack loads

    problems = check_path(Path(args.path), config.data)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {args.path}", file=sys.stderr)
        return EXIT_PROBLEMS_FOUND
    print(f"{args.path}: no problems")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    config = _load(args)
    from ploutos.data.inspect import describe_path  # lazy: a config error before the data stack loads

    info = describe_path(Path(args.path), config.data)
    print(json.dumps(info, indent=2, default=str) if args.json else _format_info(info))
    return 0


def _format_info(info: dict) -> str:
    lines = [f"{key}: {value}" for key, value in info.items() if not isinstance(value, (list, dict))]
    for ticker in info.get("tickers_detail", []):
        lines.append(f"  {ticker['ticker']:<8} {ticker['rows']:>8} bars  {ticker['first']}  ->  {ticker['last']}")
    return "\n".join(lines)


def cmd_features_list(args: argparse.Namespace) -> int:
    config = _load(args)
    from ploutos.features import all_specs  # lazy: a config error before the feature stack loads

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
    config = _load(args)
    source, out = Path(args.input), Path(args.out)
    # Every check on --out before the work, not after it.
    if not out.parent.is_dir():
        raise PloutosError(f"{out}: the folder {out.parent} does not exist")
    if out.is_dir():
        raise PloutosError(f"{out}: is a folder; --out takes a file name ({', '.join(FEATURE_FORMATS)})")
    suffix = out.suffix.lower()
    if suffix not in FEATURE_FORMATS:
        known = ", ".join(FEATURE_FORMATS)
        raise PloutosError(f"{out}: --out writes {known} (by extension), not {out.suffix or 'a name without one'}")
    from ploutos.data.inspect import read_bars_path  # lazy: a config error before the data stack loads
    from ploutos.data.store import read_dataset  # lazy: as above
    from ploutos.data.validate import check  # lazy: as above
    from ploutos.features import compute  # lazy: as above

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
        if FEATURE_FORMATS[suffix] == "CSV":
            features.write_csv(tmp)
        elif FEATURE_FORMATS[suffix] == "Arrow IPC":
            features.write_ipc(tmp)
        else:
            features.write_parquet(tmp)
    tickers = features["ticker"].n_unique()
    print(
        f"{args.out}: {FEATURE_FORMATS[suffix]}, {features.height} rows x {features.width - 2} features "
        f"(and timestamp, ticker) for {tickers} ticker(s)"
    )
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
    config = _load(args)
    from ploutos.node.hardware import format_plan, plan  # lazy: a config error before the node stack loads

    hardware_plan = plan(config)
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
    config = _load(args)
    from ploutos.train.folds import format_plan, plan_for  # lazy: a config error before torch loads

    print(format_plan(plan_for(config), config.ensemble.members))
    return 0


def _preempted(stop: Exception) -> int:
    print(f"ploutos: {stop}", file=sys.stderr)
    return EXIT_PREEMPTED


def cmd_train(args: argparse.Namespace) -> int:
    config = _load(args)
    from ploutos.pipeline.task import run_task  # lazy: a config error before torch loads
    from ploutos.results.hdf5 import format_metrics  # lazy: as above
    from ploutos.train.trainer import Preempted  # lazy: as above

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
    print(
        f"{outcome.result}: {outcome.timesteps} steps{resumed}; the task took {_seconds(outcome.task_seconds)} "
        f"(data, features, training, evaluation), of which training {_seconds(outcome.training_seconds)}{redone}"
    )
    print(format_metrics(outcome.result))
    if outcome.ensemble is not None:
        print(f"{outcome.ensemble}: the fold's {config.ensemble.members} members as one ensemble")
        print(format_metrics(outcome.ensemble))
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    config = _load(args)
    from ploutos.launch import launch  # lazy: a config error before torch loads

    return launch(config, args.executor, wait=not args.no_wait, echo=_say)


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

    for path in write_report(Path(args.run_dir), echo=lambda line: _say(f"  {line}")):  # progress indented
        print(path)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args)
    from ploutos.pipeline.validate import validate  # lazy: a config error before torch loads

    validate(config, echo=_say)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The main job on one machine: data, the walk-forward plan, every (fold, member), the results.

    Tasks already done are skipped and interrupted ones resume from their checkpoints, so running
    it again continues where it stopped.
    """
    config = _load(args)
    from ploutos.pipeline.run import InProcess, run  # lazy: a config error before torch loads
    from ploutos.train.trainer import Preempted  # lazy: as above

    progress = not args.no_progress
    try:
        return run(config, InProcess(progress=progress), echo=_say, progress=progress)
    except Preempted as stop:
        return _preempted(stop)


def cmd_paper(args: argparse.Namespace) -> int:
    from ploutos.paper.runconfig import check_run  # lazy: fast startup

    check_run(Path(args.run), args.overrides, live=args.live)
    from ploutos.paper.command import cli_paper  # lazy: a config error before torch loads

    return cli_paper(
        Path(args.run),
        args.overrides,
        loop=args.loop,
        dry=args.dry_run,
        live=args.live,
        adopt=args.adopt_positions,
        progress=not args.no_progress,
        ignore_drift=args.ignore_drift,
    )


DESCRIPTION = """\
Ploutos trains reinforcement-learning trading agents on hourly market bars and validates them
walk-forward, on a laptop, one GPU box or a Slurm cluster.

Commands that read a config take --config FILE (a YAML file or an embedded name; default: the
embedded quickstart) and any number of --set SECTION.KEY=VALUE. A user error is one line
"ploutos: error: ..." and exit code 2; an interrupt exits 130. "ploutos COMMAND --help" shows a
command's options and an example.

In Python: run = ploutos.load_run("results/quickstart") reads a run (tables, models);
ploutos.make_env(run.config, fold=0, split="test") builds a fold's env."""

TYPICAL = """\
typical use:
  ploutos run                                  the whole quickstart: data, training, results, report
  ploutos config show --docs                   the resolved config, every key documented
  ploutos config init --hardware node-256 --out mine.yaml    a commented starter config
  ploutos validate -c mine.yaml                every stage once on a tiny budget
  ploutos folds -c mine.yaml                   the walk-forward plan
  ploutos train -c mine.yaml --fold 0 --member 1             one task, as one Slurm array task runs it
  ploutos aggregate results/quickstart         the task files into summary.h5
  ploutos report results/quickstart            the tear sheet: results/quickstart/report/report.html
  ploutos backtest --run results/quickstart --fold 0         a fold's models on bars they never saw
  ploutos importance --run results/quickstart                which inputs each fold's policy relies on
  ploutos paper --run results/quickstart --dry-run           replay the latest test window locally
  ploutos drift --run results/quickstart --data data/quickstart     recent features against training's"""


def _add(
    commands: argparse._SubParsersAction,
    name: str,
    summary: str,
    description: str,
    example: Sequence[str],
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary (in the parent's list), a description and examples."""
    return commands.add_parser(
        name, parents=list(parents), help=summary, description=description, epilog=examples(*example)
    )


def cmd_backtest(args: argparse.Namespace) -> int:
    from ploutos.results.recorded import run_config  # lazy: fast startup

    run_config(Path(args.run))  # a bad run folder is refused before torch loads
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


def cmd_importance(args: argparse.Namespace) -> int:
    from ploutos.results.recorded import run_config  # lazy: fast startup

    run_config(Path(args.run))  # a bad run folder is refused before torch loads
    from ploutos.pipeline.importance import importance  # lazy: fast startup

    importance(Path(args.run), fold=args.fold, repeats=args.repeats, block=args.block, echo=_say, top=args.top)
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from ploutos.results.recorded import run_config  # lazy: fast startup

    config = run_config(Path(args.run), args.overrides).config  # a bad run folder is refused before torch loads
    if args.bars is not None and args.bars < 1:
        raise PloutosError(f"--bars {args.bars}: must be >= 1")
    from ploutos.analytics.drift import drift_table  # lazy: fast startup
    from ploutos.pipeline.drift import check_drift, reference_of  # lazy: torch, the features
    from ploutos.pipeline.policy import load_policy  # lazy: torch

    policy = load_policy(Path(args.run), args.overrides, fold=args.fold)
    reference = reference_of(Path(args.run), policy)  # before the bars: a file without a sketch fails fast
    if args.live:
        from datetime import datetime, timezone  # lazy: only --live asks for the clock

        from ploutos.paper.runner import fetch_bars  # lazy: the Alpaca client

        bars = fetch_bars(policy.config, datetime.now(timezone.utc), extra=args.bars or config.paper.drift_bars)
    else:
        from ploutos.pipeline.backtest import read_bars  # lazy: polars

        bars = read_bars(Path(args.data), policy.config)
    checked = check_drift(bars, policy, reference, args.bars or config.paper.drift_bars)
    report = checked.report
    print(f"fold {policy.fold}: {checked.span} against its training window's sketch")
    print(drift_table(report, checked.tickers, checked.names))
    halt = config.paper.drift_halt
    if halt and report.share >= halt:
        print(f"past paper.drift_halt {halt:.0%}: paper trading would halt")
        return EXIT_PROBLEMS_FOUND
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = _config_options()
    parser = Parser(prog="ploutos", description=DESCRIPTION, epilog=TYPICAL)
    parser.add_argument("--version", action="version", version=f"ploutos {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = _add(
        commands, "run", "run the whole pipeline on a config",
        "The main job on one machine: builds the dataset (data.store), plans the folds, trains and\n"
        "evaluates every (fold, member) in this process, then aggregates the run into\n"
        "RUN_DIR/summary.h5 and writes RUN_DIR/report/. Run again, it skips finished tasks and\n"
        "resumes interrupted ones; it exits 1, naming them, when the summary still lacks a task.",
        ["ploutos run", "ploutos run -c configs/full.yaml --set ensemble.members=3"],
        [common],
    )  # fmt: skip
    run.set_defaults(handler=cmd_run)

    folds = _add(
        commands, "folds", "the walk-forward plan on the built dataset",
        "Prints the walk-forward plan of the config over its built dataset (data.store): each fold's\n"
        "train, validation and test ranges and bar counts. Reads the dataset; writes nothing.",
        ["ploutos folds --set walkforward.test_months=1"],
        [common],
    )  # fmt: skip
    folds.set_defaults(handler=cmd_folds)

    train = _add(
        commands, "train", "train, evaluate and record one (fold, member); resumes from its checkpoint",
        "Trains one (fold, member) task, as one Slurm array task does: features of the fold into the\n"
        "node's /dev/shm store, PPO with checkpoints in RUN_DIR/checkpoints, evaluation on the fold's\n"
        "test window, and the task file RUN_DIR/tasks/*.h5 (plus the fold's ensemble file once every\n"
        "member is done). Reads the built dataset; resumes from the task's checkpoint.",
        ["ploutos train --fold 0 --member 1", "mpirun -n 4 ploutos train --fold 0"],
        [common],
    )  # fmt: skip
    train.add_argument("--fold", type=int, required=True, help="walk-forward fold (see: ploutos folds)")
    train.add_argument("--member", type=int, default=0, help="ensemble member (default 0)")
    train.add_argument("--force", action="store_true", help="train again even if the task's result exists")
    train.set_defaults(handler=cmd_train)

    launch = _add(
        commands, "launch", "run the whole walk-forward: on Slurm, on this machine, or inline",
        "Runs the same pipeline as 'ploutos run' with another executor: sbatch renders and submits the\n"
        "array scripts (RUN_DIR/slurm/), slurm submits each task through submitit, local runs each\n"
        "task in its own process with every core (RunPod mode), debug runs them in this process.",
        ["ploutos launch -c configs/full.yaml --executor slurm", "ploutos launch --executor local"],
        [common],
    )  # fmt: skip
    launch.add_argument(
        "--executor",
        choices=["sbatch", "slurm", "local", "debug"],
        default="local",
        help="sbatch: the array scripts; slurm: submitit; local: this machine, all cores, one task at a time "
        "(RunPod); debug: in this process (default: local)",
    )
    launch.add_argument("--no-wait", action="store_true", help="sbatch: submit and return without following")
    launch.set_defaults(handler=cmd_launch)

    aggregate = _add(
        commands, "aggregate", "merge a run's task files into RUN_DIR/summary.h5",
        "Reads every task file of a run folder (RUN_DIR/tasks/*.h5) and writes RUN_DIR/summary.h5:\n"
        "metrics per fold and member, each fold's ensemble, the stitched out-of-sample curve and the\n"
        "benchmarks. Missing or failed tasks are listed, never dropped; prints the folds' table.",
        ["ploutos aggregate results/quickstart"],
    )  # fmt: skip
    aggregate.add_argument("run_dir", help="the run folder, e.g. results/quickstart")
    aggregate.set_defaults(handler=cmd_aggregate)

    report = _add(
        commands, "report", "the tear sheet of an aggregated run (report.html, plots, summary.md)",
        "Reads RUN_DIR/summary.h5 and the task files and writes the tear sheet to RUN_DIR/report/:\n"
        "report.html (one self-contained file: every figure and table), summary.md and the PNGs;\n"
        "prints each step, then the paths written.",
        ["ploutos report results/quickstart"],
    )  # fmt: skip
    report.add_argument("run_dir", help="the run folder, e.g. results/quickstart")
    report.set_defaults(handler=cmd_report)

    check_run = _add(
        commands, "validate", "run every stage of the pipeline on a tiny budget and report each",
        "Runs every stage once on a tiny budget before cluster hours are spent: data, the plan, the\n"
        "first fold's features, two rollouts per member, evaluation, the ensemble and the task files\n"
        "against their schema. Prints each stage as it starts and its result with its time. Writes\n"
        "RESULTS_DIR/NAME-validate (replaced on every run); a real run is never touched.",
        ["ploutos validate -c configs/full.yaml"],
        [common],
    )  # fmt: skip
    check_run.set_defaults(handler=cmd_validate)

    paper = _add(
        commands, "paper", "trade the latest fold's ensemble on Alpaca paper, or replay it (--dry-run)",
        "Trades the ensemble of a run's latest fold through Alpaca's paper API (keys from\n"
        "ALPACA_API_KEY and ALPACA_SECRET_KEY), keeping RUN_DIR/paper/state.json and orders.log.\n"
        "--dry-run needs no keys: it replays the run's dataset over that fold's test window through\n"
        "the same decision path and writes RUN_DIR/paper/dry_run_orders.csv and dry_run_equity.csv.",
        ["ploutos paper --run results/quickstart --dry-run", "ploutos paper --run results/quickstart --once",
         "ploutos paper --run results/quickstart --loop --set paper.max_weight=0.2"],
    )  # fmt: skip
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
    paper.add_argument(
        "--ignore-drift", action="store_true",
        help="trade even when past paper.drift_halt (a one-line warning instead of the halt)",
    )  # fmt: skip
    paper.add_argument("--no-progress", action="store_true", help="no progress bars")
    paper.set_defaults(handler=cmd_paper)

    backtest = _add(
        commands, "backtest", "trade a trained fold's ensemble (or a member) on bars it has not trained on",
        "Trades fold K's ensemble (default: the latest fold; --member M for one member) on new bars:\n"
        "the run's dataset from the fold's test window on (or --start/--end), or a bars file (--data).\n"
        "Features come from the training code path with the fold's normalization; fills, costs and\n"
        "baselines from the simulator that evaluated it. Bars the model trained or validated on are\n"
        "refused unless --allow-in-sample (then counted and shaded). Writes RUN_DIR/backtests/NAME/:\n"
        "backtest.h5 (the task-file schema), report.html, report.md and equity.png.",
        ["ploutos backtest --run results/quickstart --fold 0",
         "ploutos backtest --run results/quickstart --latest --data new_bars.csv --start 2018-01-02",
         "ploutos backtest --run results/quickstart --fold 2 --member 1 --start 2017-10-15 --allow-in-sample"],
    )  # fmt: skip
    backtest.add_argument("--run", required=True, metavar="RUN_DIR", help="a trained run folder (results/NAME)")
    which = backtest.add_mutually_exclusive_group()
    which.add_argument("--fold", type=int, default=None, help="the fold whose models trade (default: the latest)")
    which.add_argument("--latest", action="store_true", help="the latest fold with trained models (the default)")
    backtest.add_argument("--member", type=int, default=None, help="one member instead of the fold's ensemble")
    backtest.add_argument("--data", default=None, metavar="FILE", help="bars: CSV, Parquet or a dataset folder "
                          "(default: the run's dataset)")  # fmt: skip
    backtest.add_argument("--start", default=None, metavar="DATE", help="first bar to trade, UTC (YYYY-MM-DD[THH:MM])")
    backtest.add_argument("--end", default=None, metavar="DATE", help="trade bars before this time, UTC")
    backtest.add_argument(
        "--allow-in-sample", action="store_true", help="trade bars of the fold's training window too (marked)"
    )
    backtest.add_argument("--name", default=None, help="folder name under RUN_DIR/backtests (default: from the window)")
    backtest.set_defaults(handler=cmd_backtest)

    importance = _add(
        commands, "importance", "permutation importance of a trained fold's inputs on its validation window",
        "For each trained fold (or --fold K) the fold's ensemble trades its validation window once as\n"
        "it is and once per (input, repeat) with that input block-permuted in time (circular blocks of\n"
        "--block bars, default a day): each observation feature, each asset and each portfolio-state\n"
        "input. Measures: the drop in validation total return and the change of the target weights\n"
        "(mean over steps of sum |dw|), with 5-95% intervals over repeats. The permuted paths run as\n"
        "envs of one simulator core. Writes RUN_DIR/importance.h5; `ploutos report` then charts it.",
        ["ploutos importance --run results/quickstart",
         "ploutos importance --run results/quickstart --fold 2 --repeats 20 --block 48"],
    )  # fmt: skip
    importance.add_argument("--run", required=True, metavar="RUN_DIR", help="a trained run folder (results/NAME)")
    importance.add_argument("--fold", type=int, default=None, help="one fold (default: every trained fold)")
    importance.add_argument("--repeats", type=int, default=10, help="permutations per input (default: 10)")
    importance.add_argument("--block", type=int, default=None, help="block length in bars (default: bars per day)")
    importance.add_argument("--top", type=int, default=8, help="inputs printed per fold (default: 8)")
    importance.set_defaults(handler=cmd_importance)

    drift = _add(
        commands, "drift", "compare recent bars' features with a fold's training window (PSI, KS)",
        "Scores the last N bars (--bars, default paper.drift_bars) of a bars file (--data) or of Alpaca\n"
        "(--live, keys from ALPACA_API_KEY and ALPACA_SECRET_KEY) against the quantile sketch of every\n"
        "observation feature that training stored in the fold's task file: PSI over the sketch's 5% bins\n"
        "and a KS statistic per (feature, asset). Prints the pairs past both thresholds (PSI >= 0.25, KS\n"
        "past its 5% critical value) and the share drifting. Exit 0; 1 when that share reaches\n"
        "paper.drift_halt (paper trading would halt); 2 on a user error.",
        ["ploutos drift --run results/quickstart --data data/quickstart",
         "ploutos drift --run results/quickstart --fold 0 --data new_bars.csv --bars 500",
         "ploutos drift --run results/quickstart --live"],
    )  # fmt: skip
    drift.add_argument("--run", required=True, metavar="RUN_DIR", help="a trained run folder (results/NAME)")
    drift.add_argument("--fold", type=int, default=None, help="the fold whose training window is the reference "
                       "(default: the latest fold with models)")  # fmt: skip
    source = drift.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", default=None, metavar="FILE", help="bars: CSV, Parquet or a dataset folder")
    source.add_argument("--live", action="store_true", help="recent bars from Alpaca's data API")
    drift.add_argument("--bars", type=int, default=None, metavar="N", help="recent bars scored "
                       "(default: paper.drift_bars)")  # fmt: skip
    drift.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override paper.* or data.* of the run's config",
    )  # fmt: skip
    drift.set_defaults(handler=cmd_drift)

    config = _add(
        commands, "config", "show the resolved config, or write a starter one",
        "Prints the resolved config (show) or writes a commented starter config (init).",
        ["ploutos config show --docs", "ploutos config init --hardware node-256 --out mine.yaml"],
    )  # fmt: skip
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    show = _add(
        config_commands, "show", "print the resolved config as YAML",
        "Prints the config as the commands resolve it (the file, what it extends, the --set\n"
        "overrides) as YAML, then its hash. With --docs each key carries its documentation and, for\n"
        "keys with a fixed set of values, the values allowed. Reads only the config.",
        ["ploutos config show -c configs/full.yaml --set ppo.learning_rate=1e-4 --docs"],
        [common],
    )  # fmt: skip
    show.add_argument("--docs", action="store_true", help="add each key's documentation as a comment")
    show.set_defaults(handler=cmd_config_show)
    init = _add(
        config_commands, "init", "write a commented starter config",
        "Writes the resolved quickstart config, or the quickstart on a shipped hardware profile\n"
        "(configs/hardware/NAME.yaml, in place of the quickstart's laptop profile), with every key and\n"
        "its documentation as a comment: to stdout, or atomically to --out FILE (an existing file is\n"
        "kept unless --force). The file loads back as the same config (the same config hash).",
        ["ploutos config init --hardware node-256 --out mine.yaml", "ploutos config init > mine.yaml"],
    )  # fmt: skip
    init.add_argument("--hardware", metavar="NAME", default=None, help="a hardware profile, e.g. node-256")
    init.add_argument("--out", metavar="FILE", default=None, help="write here instead of stdout")
    init.add_argument("--force", action="store_true", help="overwrite --out when it exists")
    init.set_defaults(handler=cmd_config_init)

    data = _add(
        commands, "data", "build, check and describe bar datasets",
        "Builds a dataset of bars from data.source into data.store, checks bars files and datasets\n"
        "against the validation rules, and describes what a dataset or file holds.",
        ["ploutos data build", "ploutos data check my_bars.csv", "ploutos data info data/quickstart"],
    )  # fmt: skip
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    build = _add(
        data_commands, "build", "download/validate bars into the store",
        "Fetches bars from data.source, keeps the hours of data.session, validates them per\n"
        "data.on_invalid and writes the dataset to data.store (Parquet per ticker and manifest.json),\n"
        "atomically. A second build of the same config fetches only what is missing.",
        ["ploutos data build -c configs/full.yaml"],
        [common],
    )  # fmt: skip
    build.set_defaults(handler=cmd_data_build)
    check = _add(
        data_commands, "check", "validate a CSV, a Parquet file or a dataset; list every problem",
        "Reads a bars file as a build would (data.session, data.csv_timezone, the validation rules)\n"
        "or a dataset folder (checksums, then its rules) and prints every problem, one per line,\n"
        "naming the file, ticker, place and rule. A place in a CSV is its line (the header is line 1);\n"
        "in a Parquet file or a dataset it is the row, counting from 1. Exit 1 if any. Writes nothing.",
        ["ploutos data check my_bars.csv --set data.session=24x7"],
        [common],
    )  # fmt: skip
    check.add_argument("path", help="CSV file, Parquet file or dataset directory")
    check.set_defaults(handler=cmd_data_check)
    info = _add(
        data_commands, "info", "describe a dataset or bars file",
        "Prints what a dataset (from its manifest) or a bars file (from its rows) holds: source,\n"
        "session, tickers, bars per ticker and their first and last times. Writes nothing.",
        ["ploutos data info data/quickstart", "ploutos data info my_bars.csv --json"],
        [common],
    )  # fmt: skip
    info.add_argument("path", help="dataset directory, Parquet or CSV file")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(handler=cmd_data_info)

    features = _add(
        commands, "features", "list and compute features",
        "Lists the features of a config with their definitions, or computes them for a bars file.",
        ["ploutos features list", "ploutos features compute my_bars.csv --out features.parquet"],
    )  # fmt: skip
    feature_commands = features.add_subparsers(dest="features_command", metavar="SUBCOMMAND", required=True)
    listing = _add(
        feature_commands, "list", "every feature with definition and warm-up",
        "Prints every feature the config computes for its tickers: name, kind (raw, observation,\n"
        "macro, cross), warm-up in bars and definition. Reads only the config.",
        ["ploutos features list --markdown"],
        [common],
    )  # fmt: skip
    listing.add_argument("--markdown", action="store_true", help="as a markdown table")
    listing.set_defaults(handler=cmd_features_list)
    compute = _add(
        feature_commands, "compute", "compute every feature of a bars file into a file",
        "Reads bars (a CSV or Parquet file, validated as 'data check' does, or a dataset folder) and\n"
        "writes one row per bar: the timestamp and ticker columns, then every feature of 'ploutos\n"
        "features list' for these bars: raw and observation kinds, cross-asset ones when there are 2\n"
        "or more tickers (features.cross_asset), macro ones when the bars carry macro_* columns.\n"
        "Values are unnormalized (training scales them per fold); null during a feature's warm-up.\n"
        "The format follows --out's extension: "
        + ", ".join(FEATURE_FORMATS)
        + ".",
        ["ploutos features compute my_bars.csv --out features.parquet",
         "ploutos features compute data/quickstart --out features.csv"],
        [common],
    )  # fmt: skip
    compute.add_argument("input", help="CSV or Parquet bars, or a dataset directory")
    compute.add_argument("--out", required=True, help=f"output file: {', '.join(FEATURE_FORMATS)}")
    compute.set_defaults(handler=cmd_features_compute)

    bench = _add(
        commands, "bench", "benchmarks: speed against a baseline measured in the same run",
        "Runs one benchmark and prints its figures beside a baseline measured in the same run.\n"
        "Benchmarks report; they never fail on a missed target. Everything after NAME goes to the\n"
        "benchmark: 'ploutos bench NAME --help' lists its options.",
        ["ploutos bench features --quick", "ploutos bench train --encoders-only --n-envs 8"],
    )  # fmt: skip
    bench.add_argument("bench", metavar="NAME", choices=BENCHMARKS, help=f"what to benchmark: {', '.join(BENCHMARKS)}")
    bench.add_argument("rest", nargs=argparse.REMAINDER, metavar="OPTIONS", help="the options of that benchmark")
    bench.set_defaults(handler=cmd_bench)

    hardware = _add(
        commands, "hardware", "the plan for this machine and why",
        "Prints the hardware plan of the config on this machine: cores, GPUs, ranks, envs, env\n"
        "workers, threads and memory of the rollout buffers, each with the reason. Exit 2 when the\n"
        "plan does not fit the node's memory. Reads only the config and the machine.",
        ["ploutos hardware -c configs/full.yaml"],
        [common],
    )  # fmt: skip
    hardware.set_defaults(handler=cmd_hardware)

    shm = _add(
        commands, "shm", "shared-memory feature stores in /dev/shm",
        "Lists or removes the feature stores training tasks keep in /dev/shm.",
        ["ploutos shm list", "ploutos shm clean --job 123456"],
    )  # fmt: skip
    shm_commands = shm.add_subparsers(dest="shm_command", metavar="SUBCOMMAND", required=True)
    _add(
        shm_commands, "list", "every Ploutos segment, its job and whether it is alive",
        "Lists every Ploutos segment in /dev/shm: size, job, owner process, host, creation time and\n"
        "whether its owner is alive. Writes nothing.",
        ["ploutos shm list"],
    ).set_defaults(handler=cmd_shm_list)  # fmt: skip
    clean = _add(
        shm_commands, "clean", "remove segments left by dead jobs (never a live one)",
        "Removes the /dev/shm segments whose owner is gone (a crashed or killed task); a segment whose\n"
        "owner is alive is never removed. Exit 1 when a segment could not be removed.",
        ["ploutos shm clean", "ploutos shm clean --job 123456"],
    )  # fmt: skip
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
