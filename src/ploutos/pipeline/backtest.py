"""``ploutos backtest``: a trained fold's ensemble (or one member) on bars it has not trained on.

The model decides on features computed by the training code path
(:func:`ploutos.pipeline.policy.normalized_features`: the run's feature config, scaled with the fold's
own statistics from its task file, never refitted) and trades through the simulator, costs and
baselines that evaluated it (:func:`ploutos.train.evaluate.evaluate`), so a backtest over a fold's
own test window reproduces that fold's test curve exactly.

Bars come from the run's dataset (``data.store``, e.g. after ``ploutos data build`` fetched newer
bars) or from a file (``--data``: CSV, Parquet or a dataset folder; its first bars warm the
features up). Bars the model trained or validated on (its fold's ``[train_start, test_start)``) are
in-sample: a window that reaches them is refused unless ``allow_in_sample``, and the result says
which bars they were.

The result is a task file (the same schema, read by the same tools) and a short report in
``RUN_DIR/backtests/<name>/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl

from ploutos.analytics.evaluation import FoldEvaluation
from ploutos.config import Config, dump
from ploutos.data.inspect import read_bars_path
from ploutos.data.macro import align_macro
from ploutos.data.store import read_dataset, read_macro
from ploutos.data.validate import check
from ploutos.errors import PloutosError
from ploutos.features.arrays import FeatureArrays
from ploutos.features.pipeline import load_bars
from ploutos.pipeline.policy import Policy, load_policy, normalized_features
from ploutos.results.backtest import Backtest, Window, write_backtest_report
from ploutos.results.hdf5 import TaskResult, read_attrs, write_task_result
from ploutos.results.layout import RunLayout
from ploutos.results.provenance import provenance
from ploutos.train.evaluate import evaluate
from ploutos.train.model import member_seed

Echo = Callable[[str], None]


def parse_moment(text: str, flag: str) -> np.datetime64:
    """A date or ISO time as naive UTC (an explicit offset is converted); a typo is one line."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise PloutosError(f"{flag} {text}: not a date (use YYYY-MM-DD or YYYY-MM-DDTHH:MM, UTC)") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return np.datetime64(moment, "us")


def read_bars(path: Path, config: Config) -> pl.DataFrame:
    """Bars of ``path`` (a CSV/Parquet file or a dataset folder), validated as ``data build`` would,
    with the run's macro series aligned as published."""
    if path.is_dir():
        bars = read_dataset(path)
    else:
        bars, _ = check(read_bars_path(path, config.data), "refuse", path=str(path), max_gap_bars=None)
    if config.data.macro:
        try:
            series = read_macro(path if path.is_dir() else config.data.store, config.data.macro)
        except PloutosError as err:
            raise PloutosError(f"{path}: the model reads macro series {list(config.data.macro)}: {err}") from None
        bars = align_macro(bars, series)
    return bars


def choose_window(
    arrays: FeatureArrays, lookback: int, start: np.datetime64 | None, end: np.datetime64 | None,
    trained: tuple[np.datetime64, np.datetime64], *, where: str,
) -> Window:  # fmt: skip
    """The traded bars in ``[start, end)``, after the features' warm-up and ``lookback`` bars of history.

    ``trained`` is the fold's ``[train_start, test_start)``: traded bars inside it are in-sample.
    """
    ready = np.flatnonzero(arrays.valid.all(axis=1))
    if not len(ready):
        raise PloutosError(f"{where}: no bar where every feature of every ticker is defined (too few bars?)")
    earliest = int(ready[0]) + lookback  # the first decision needs lookback bars of defined features
    wanted = arrays.rows_between(start, end)
    first = max(wanted.start, earliest)
    if start is not None and wanted.start < earliest and earliest < len(arrays.timestamps):
        raise PloutosError(
            f"{where}: --start {np.datetime_as_string(start, 'm')} is inside the features' warm-up; the first bar "
            f"a backtest can trade is {np.datetime_as_string(arrays.timestamps[earliest], 'm')} (give more history "
            "before --start, or start later)"
        )
    if wanted.stop - first < 2:
        span = f"[{_day(start)}, {_day(end)})"
        raise PloutosError(f"{where}: fewer than 2 bars to trade in {span} after the features' warm-up")
    traded = arrays.timestamps[first : wanted.stop]
    inside = (traded >= trained[0]) & (traded < trained[1])
    in_sample = (traded[inside][0], traded[inside][-1]) if inside.any() else None
    return Window(
        slice(first - lookback, wanted.stop), traded[0], traded[-1], len(traded), in_sample, int(inside.sum())
    )


def _day(moment: np.datetime64 | None) -> str:
    return "..." if moment is None else str(np.datetime64(moment, "D"))


def _minute(moment: np.datetime64) -> str:
    return np.datetime_as_string(moment, unit="m").replace("T", " ")


def backtest(
    run_dir: Path, *, fold: int | None = None, member: int | None = None, data: Path | None = None,
    start: str | None = None, end: str | None = None, allow_in_sample: bool = False, name: str | None = None,
    echo: Echo | None = None,
) -> Backtest:  # fmt: skip
    """Trade fold ``fold`` (default: the latest trained) of the run in ``run_dir`` on new bars.

    ``member`` picks one member instead of the fold's ensemble. Without ``data`` the bars are the
    run's dataset; without ``start`` a dataset backtest starts at the fold's test window (the first
    bar the model never saw) and a file backtest at the first bar its own warm-up allows.
    """
    say = echo or (lambda _line: None)
    began = time.perf_counter()
    begin, stop = (parse_moment(text, flag) if text else None for text, flag in ((start, "--start"), (end, "--end")))
    if begin is not None and stop is not None and stop <= begin:
        raise PloutosError(f"--end {end} is not after --start {start}")
    if data is not None and not Path(data).exists():
        raise PloutosError(f"--data {data}: no such file or dataset folder")
    layout = RunLayout(Path(run_dir))
    policy = load_policy(layout.root, fold=fold, member=member)
    config = policy.config
    what = f"fold {policy.fold} " + (f"member {member}" if member is not None else "ensemble")
    say(f"{what}: members {', '.join(map(str, policy.members))} of {layout.root}")
    bounds = read_attrs(layout.result(policy.fold, policy.members[0]), "fold")
    trained = (parse_moment(str(bounds["train_start"]), "train_start"), policy.test_start)
    if data is None:
        source = f"the run's dataset {config.data.store}"
        say(f"reading bars from {source}")
        bars = load_bars(config)
        begin = policy.test_start if begin is None else begin
    else:
        source = str(data)
        say(f"reading bars from {source}")
        bars = read_bars(Path(data), config)
    say(f"computing features of {bars.height:,} bars (the training path, fold {policy.fold}'s normalization)")
    arrays = normalized_features(bars, policy)
    window = choose_window(arrays, config.env.lookback, begin, stop, trained, where=source)
    if window.in_sample is not None and not allow_in_sample:
        raise PloutosError(
            f"{window.in_sample_bars} of the {window.bars} bars to trade ({_minute(window.in_sample[0])} to "
            f"{_minute(window.in_sample[1])}) lie in fold {policy.fold}'s training window [{_day(trained[0])}, "
            f"{_day(trained[1])}) (training and validation): an in-sample backtest; start at {_day(trained[1])} "
            "or later, or pass --allow-in-sample"
        )
    say(f"trading {window.bars:,} bars, {_minute(window.first)} to {_minute(window.last)} UTC, and the baselines")
    seed = config.seed if member is None else member_seed(config.seed, policy.fold, member)
    evaluation = evaluate(policy.actor, arrays, config.env, window.rows, config.data.bars_per_year, seed=seed)
    label = name or f"fold{policy.fold}_{'ensemble' if member is None else f'member{member}'}_{_stamp(window)}"
    out = layout.root / "backtests" / label
    out.mkdir(parents=True, exist_ok=True)
    result = out / "backtest.h5"
    record = provenance(config.data.store) | {
        "backtest_source": source,
        "members": list(policy.members),
        "combine": config.ensemble.combine,
        "seconds": time.perf_counter() - began,
    }
    write_task_result(result, _task(config, policy, member, arrays, evaluation, record, bounds, window))
    say(f"writing {out}")
    done = Backtest(
        fold=policy.fold,
        members=tuple(policy.members),
        ensemble=member is None,
        window=window,
        evaluation=evaluation,
        result=result,
        report=out / "report.md",
        source=source,
        seconds=time.perf_counter() - began,
    )
    write_backtest_report(done, config)
    return done


def _stamp(window: Window) -> str:
    return f"{np.datetime64(window.first, 'D')}_{np.datetime64(window.last, 'D')}"


def _iso(moment: np.datetime64) -> str:
    return f"{np.datetime_as_string(moment, unit='s')}Z"


def _task(
    config: Config, policy: Policy, member: int | None, arrays: FeatureArrays, evaluation: FoldEvaluation,
    record: dict, bounds: dict, window: Window,
) -> TaskResult:  # fmt: skip
    extra = {
        "backtest_start": _iso(window.first),
        "backtest_end": _iso(window.last),
        "backtest_bars": window.bars,
        "in_sample_bars": window.in_sample_bars,
        "in_sample_start": _iso(window.in_sample[0]) if window.in_sample else "",
        "in_sample_end": _iso(window.in_sample[1]) if window.in_sample else "",
    }
    return TaskResult(
        fold=policy.fold,
        member=member,
        run=config.name,
        config_hash=policy.run_hash,
        config_yaml=dump(config),
        provenance=record,
        fold_bounds={**bounds, **extra},
        tickers=tuple(arrays.tickers),
        feature_names=tuple(arrays.names),
        norm_center=policy.stats.center,
        norm_scale=policy.stats.scale,
        evaluation=evaluation,
    )
