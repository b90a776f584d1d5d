"""``ploutos aggregate RUN_DIR``: merge a run's task files into ``RUN_DIR/summary.h5``.

The expected tasks come from ``plan.json`` (written by the pipeline) or from the caller
(:func:`ploutos.pipeline.run.aggregate_run` plans the folds of ``config.yaml`` over its dataset
when the file is missing). Every expected (fold, member) task and
every fold's ensemble gets a status; a task that is not ``ok`` is data (NaN in the tables, a line
in ``/missing``), not an error. Task files are only read. The summary is written atomically, so
a failed aggregation leaves the previous ``summary.h5`` as it was. Layout: ``SUMMARY_SCHEMA``,
documented in ``results/README.md``.

Significance, per fold's ensemble: ``1 - PSR(0)`` of its net returns is the p-value of beating
flat; ``p_random`` (from its task file) that of beating random policies with its turnover; the
deflated Sharpe ratio counts every member and every ensemble of the run as a trial
(:func:`ploutos.analytics.metrics.deflated_sharpe`). :func:`verdict` says both in one sentence.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ploutos.analytics.evaluation import BENCHMARKS, COST_COMPONENTS, RANDOM, STITCHED
from ploutos.analytics.metrics import Metrics, compute_metrics, deflated_sharpe, expected_max_sharpe, returns_of
from ploutos.config import load
from ploutos.errors import PloutosError, first_line
from ploutos.files import atomic_path
from ploutos.results.hdf5 import TIME_UNIT, format_metric, task_file_problem
from ploutos.results.layout import RunLayout

SUMMARY_VERSION = 2
"""2: flat and random-turnover baselines, gross return, p_random, deflated Sharpe, cost breakdown."""
METRICS = tuple(f.name for f in fields(Metrics))
SIGNIFICANCE = 0.05
"""The level at which :func:`verdict` says an ensemble beats flat or the random policies."""
SUMMARY_SCHEMA: dict[str, str] = {
    "/": "attrs schema_version, run, config_hash, folds (F), members (M), complete (no expected task is not ok), "
    "created (ISO UTC)",
    "/config": "the run's config.yaml (string)",
    "/tasks": "group of (K,) datasets fold, member (-1 for the ensemble), status (ok, missing, unreadable, incomplete "
    "or foreign), reason (empty when ok): every expected task and every fold's ensemble",
    "/missing": "(n,) one line per task that is not ok, e.g. fold1_member0: missing (no task file); empty when none",
    "/metrics/<metric>": "(F, M) each member's policy metric (every metric of a task file), NaN where not ok",
    "/metrics/p_random": "(F, M) each member's share of its random-turnover paths whose net total return is at least "
    "its own, NaN where not ok",
    "/ensemble/<metric>": "(F,) the fold ensembles' policy metrics, NaN where not ok",
    "/ensemble/p_random": "(F,) share of the random-turnover paths (the ensemble's turnover) whose net total return is "
    "at least the ensemble's; the ensemble beats them at p < 0.05 when this is below 0.05",
    "/ensemble/deflated_sharpe": "(F,) deflated Sharpe ratio of the ensemble's test returns: its PSR against the "
    "expected maximum Sharpe of N trials, N = every ok member and ensemble of the run (attrs n_trials, "
    "sharpe_variance and expected_max_sharpe, both per bar)",
    "/ensemble/costs/<component>": "(F,) the ensemble's annualized share of equity paid in commission, spread, "
    "slippage, impact, financing and fees; they sum to its cost_drag",
    "/benchmarks/<name>/<metric>": "(F,) buy_and_hold, equal_weight and flat metrics from an ok file of the fold "
    "(the ensemble first, else a member), NaN if none",
    "/benchmarks/random_turnover/<metric>": "(F,) the median over seeds of the random policies with the ensemble's "
    "turnover (from the ensemble's file only), NaN where it is not ok",
    "/benchmarks/random_turnover/seed_returns": "(F, S) each seed's net total return, NaN where not ok",
    "/oos": "attrs gaps: folds whose ensemble is not ok, left out of the stitched curves",
    "/oos/timestamps": "(N,) int64 (attribute unit) of the stitched out-of-sample curves",
    "/oos/fold": "(N,) int64 fold of each point",
    "/oos/ensemble": "(N,) the ok folds' ensemble test equity in fold order, each divided by its first value and "
    "chained from 1.0; a later fold's first mark (the previous fold's last bar) is dropped; flat across a gap",
    "/oos/buy_and_hold": "(N,) the same for the fold's buy-and-hold equity",
    "/oos/equal_weight": "(N,) the same for the fold's equal-weight equity",
    "/oos/metrics": "attrs: the metrics of the stitched ensemble curve (bars per year of the run's config)",
    "/oos/benchmark_metrics/<name>": "attrs: the metrics of each stitched benchmark curve (buy_and_hold, equal_weight)",
}
"""Every object ``summary.h5`` holds, with what it is."""


@dataclass(frozen=True)
class Summary:
    """What an aggregation found; ``missing`` holds one line per task that is not ok."""

    path: Path
    folds: int
    members: int
    members_ok: int
    ensembles_ok: int
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def any_ok(self) -> bool:
        return self.members_ok + self.ensembles_ok > 0

    def line(self) -> str:
        """``PATH: 5 of 6 member task(s) and 2 of 3 ensemble(s) ok; missing: fold1_member0 (no task file)``."""
        head = (
            f"{self.path}: {self.members_ok} of {self.folds * self.members} member task(s) and "
            f"{self.ensembles_ok} of {self.folds} ensemble(s) ok"
        )
        if self.complete:
            return head + "; complete"
        shown = [_short(line) for line in self.missing[:10]]
        more = f", and {len(self.missing) - 10} more (see /missing)" if len(self.missing) > 10 else ""
        return f"{head}; missing: {', '.join(shown)}{more}"


@dataclass(frozen=True)
class _Task:
    fold: int
    member: int
    """-1 for the fold's ensemble."""
    status: str
    reason: str
    data: dict[str, Any] | None = None
    """metrics (name -> dict), and for an ensemble the test curves (name -> timestamps, equity, turnover, costs)."""

    @property
    def name(self) -> str:
        return f"fold{self.fold}_ensemble" if self.member < 0 else f"fold{self.fold}_member{self.member}"

    def line(self) -> str:
        return f"{self.name}: {self.status} ({self.reason})"


def _short(line: str) -> str:
    """``fold1_member0: missing (no task file)`` -> ``fold1_member0 (no task file)``; other states keep their name."""
    name, _, rest = line.partition(": ")
    status, _, reason = rest.partition(" (")
    return f"{name} ({reason}" if status == "missing" else f"{name} ({status}: {reason}"


def _read_curve(h5: h5py.File, group: str) -> dict[str, np.ndarray]:
    return {key: h5[f"{group}/{key}"][()] for key in ("timestamps", "equity", "turnover", "costs")}


def _inspect(path: Path, fold: int, member: int, run_hash: str) -> _Task:
    """The status of one expected task file and, when ok, what the summary needs from it."""
    problem = task_file_problem(path, fold, member, run_hash)
    if problem is not None:
        return _Task(fold, member, *problem)
    try:
        with h5py.File(path, "r", locking=False) as h5:
            metrics = {name: {k: float(v) for k, v in group.attrs.items()} for name, group in h5["metrics"].items()}
            random = h5[f"benchmarks/{RANDOM}"]
            data: dict[str, Any] = {"metrics": metrics, "p_random": float(random.attrs["p_random"])}
            if member < 0:
                data["curves"] = {"ensemble": _read_curve(h5, "test")}
                data["curves"].update({name: _read_curve(h5, f"benchmarks/{name}") for name in STITCHED})
                data["costs"] = {k: float(v) for k, v in h5["cost_breakdown"].attrs.items()}
                data["seed_returns"] = np.asarray(random["total_return"][()], dtype=np.float64)
    except (OSError, KeyError, ValueError, TypeError) as err:
        return _Task(fold, member, "unreadable", first_line(err).replace(f"{path}: ", ""))
    return _Task(fold, member, "ok", "", data)


def _stitch(ensembles: list[_Task], bars_per_year: int) -> dict[str, Any]:
    """Chain the ok folds' test curves (each starting at its predecessor's end) and measure them."""
    names = ("ensemble", *STITCHED)
    parts: dict[str, list[np.ndarray]] = {key: [] for key in ("timestamps", "fold", *names)}
    steps: dict[str, dict[str, list[np.ndarray]]] = {name: {"turnover": [], "costs": []} for name in names}
    level = dict.fromkeys(names, 1.0)
    for i, task in enumerate(ensembles):
        curves = task.data["curves"]  # type: ignore[index]
        start = 0 if i == 0 else 1  # a later fold's first mark is the previous fold's last bar
        stamps = np.asarray(curves["ensemble"]["timestamps"], dtype=np.int64)
        parts["timestamps"].append(stamps[start:])
        parts["fold"].append(np.full(stamps.size - start, task.fold, dtype=np.int64))
        for name in names:
            curve = curves[name]
            factor = level[name] / float(curve["equity"][0])
            chained = np.asarray(curve["equity"], dtype=np.float64) * factor
            level[name] = float(chained[-1])
            parts[name].append(chained[start:])
            steps[name]["turnover"].append(np.asarray(curve["turnover"], dtype=np.float64))
            steps[name]["costs"].append(np.asarray(curve["costs"], dtype=np.float64) * factor)
    out: dict[str, Any] = {
        key: np.concatenate(values) if values else np.zeros(0, np.int64 if key in ("timestamps", "fold") else float)
        for key, values in parts.items()
    }
    out["metrics"] = {}
    for name in names:
        equity = out[name]
        if equity.size < 2:
            out["metrics"][name] = {key: math.nan for key in METRICS} | {"n_bars": 0}
            continue
        turnover, costs = (np.concatenate(steps[name][key]) for key in ("turnover", "costs"))
        measured = compute_metrics(equity, bars_per_year, turnover=turnover, costs=costs)
        out["metrics"][name] = measured.as_dict()
    return out


def _tables(tasks: list[_Task], folds: int, members: int, bars_per_year: int) -> dict[str, Any]:
    """Every table of the summary by its path, NaN where a task is not ok; a ``(values, attrs)`` pair
    when the dataset carries attributes."""
    by_key = {(task.fold, task.member): task for task in tasks}

    def data(key: tuple[int, int]) -> dict[str, Any]:
        task = by_key.get(key)
        return task.data if task is not None and task.data else {}

    def table(shape: tuple[int, ...], keys: list[tuple[int, int]], source: str) -> dict[str, np.ndarray]:
        values = {metric: np.full(shape, np.nan) for metric in METRICS}
        for index, key in zip(np.ndindex(shape), keys, strict=True):
            found = data(key).get("metrics", {}).get(source, {})
            for metric in METRICS:
                values[metric][index] = found.get(metric, np.nan)
        return values

    out: dict[str, Any] = {}
    grid = [(f, m) for f in range(folds) for m in range(members)]
    ensembles = [(f, -1) for f in range(folds)]
    out.update({f"metrics/{k}": v for k, v in table((folds, members), grid, "policy").items()})
    out["metrics/p_random"] = np.array([data(key).get("p_random", np.nan) for key in grid]).reshape(folds, members)
    out.update({f"ensemble/{k}": v for k, v in table((folds,), ensembles, "policy").items()})
    out["ensemble/p_random"] = np.array([data(key).get("p_random", np.nan) for key in ensembles], dtype=np.float64)
    out["ensemble/deflated_sharpe"] = _deflated(tasks, folds, bars_per_year)
    for component in COST_COMPONENTS:
        out[f"ensemble/costs/{component}"] = np.array(
            [data(key).get("costs", {}).get(component, np.nan) for key in ensembles], dtype=np.float64
        )
    for name in BENCHMARKS:
        sources = []
        for f in range(folds):  # the ensemble's file first, else the first ok member's
            ok = [m for m in (-1, *range(members)) if by_key[(f, m)].status == "ok"]
            sources.append((f, ok[0] if ok else -2))
        out.update({f"benchmarks/{name}/{k}": v for k, v in table((folds,), sources, name).items()})
    # the random policies trade with the ensemble's own turnover: a member's would be another baseline
    out.update({f"benchmarks/{RANDOM}/{k}": v for k, v in table((folds,), ensembles, RANDOM).items()})
    seeds = [data(key).get("seed_returns", np.zeros(0)) for key in ensembles]
    returns = np.full((folds, max((r.size for r in seeds), default=0)), np.nan)
    for f, r in enumerate(seeds):
        returns[f, : r.size] = r
    out[f"benchmarks/{RANDOM}/seed_returns"] = returns
    return out


def _deflated(tasks: list[_Task], folds: int, bars_per_year: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Each fold ensemble's deflated Sharpe, the trials being every ok member and ensemble of the run."""
    scale = math.sqrt(bars_per_year)
    ok = [t for t in tasks if t.status == "ok" and t.data]
    trials = np.array([t.data["metrics"]["policy"].get("sharpe", np.nan) for t in ok], dtype=np.float64) / scale
    finite = trials[np.isfinite(trials)]
    variance = float(finite.var(ddof=1)) if finite.size > 1 else 0.0
    values = np.full(folds, np.nan)
    for task in ok:
        if task.member < 0:
            values[task.fold] = deflated_sharpe(returns_of(task.data["curves"]["ensemble"]["equity"]), trials)
    attrs = {
        "n_trials": int(finite.size),
        "sharpe_variance": variance,
        "expected_max_sharpe": expected_max_sharpe(variance, int(finite.size)),
    }
    return values, attrs


def _write(path: Path, head: dict[str, Any], config_text: str, tasks: list[_Task], tables: dict[str, Any],
           oos: dict[str, Any], gaps: list[int]) -> None:  # fmt: skip
    strings = h5py.string_dtype()
    with atomic_path(path) as tmp, h5py.File(tmp, "w", locking=False) as h5:
        for key, value in head.items():
            h5.attrs[key] = value
        h5.create_dataset("config", data=config_text, dtype=strings)
        group = h5.create_group("tasks")
        group.create_dataset("fold", data=np.array([t.fold for t in tasks], dtype=np.int64))
        group.create_dataset("member", data=np.array([t.member for t in tasks], dtype=np.int64))
        group.create_dataset("status", data=np.array([t.status for t in tasks], dtype=object), dtype=strings)
        group.create_dataset("reason", data=np.array([t.reason for t in tasks], dtype=object), dtype=strings)
        lines = [t.line() for t in tasks if t.status != "ok"]
        h5.create_dataset("missing", data=np.array(lines, dtype=object), shape=(len(lines),), dtype=strings)
        for key, value in tables.items():
            values, attrs = value if isinstance(value, tuple) else (value, {})
            h5.create_dataset(key, data=values).attrs.update(attrs)
        group = h5.create_group("oos")
        group.attrs["gaps"] = np.array(gaps, dtype=np.int64)
        group.create_dataset("timestamps", data=oos["timestamps"]).attrs["unit"] = TIME_UNIT
        group.create_dataset("fold", data=oos["fold"])
        for name in ("ensemble", *STITCHED):
            group.create_dataset(name, data=oos[name])
            target = group.create_group("metrics" if name == "ensemble" else f"benchmark_metrics/{name}")
            for key, value in oos["metrics"][name].items():
                target.attrs[key] = value


def aggregate(run_dir: Path, plan: tuple[int, int] | None = None) -> Summary:
    """Merge the task files of ``run_dir`` into ``run_dir/summary.h5`` (atomically) and say what was found.

    ``plan`` is the task grid ``(folds, members)``; by default it is read from ``plan.json``
    (:func:`ploutos.pipeline.run.aggregate_run` plans it from the dataset when that file is missing).
    """
    layout = RunLayout(Path(run_dir))
    if not layout.config_file.is_file():
        raise PloutosError(f"{run_dir}: not a run folder (no config.yaml)")
    run_hash = layout.recorded_hash() or ""
    config = load(layout.config_file)
    plan = plan or layout.read_plan()
    if plan is None:
        raise PloutosError(f"{layout.plan_file}: missing; the task grid of the run is unknown")
    folds, members = plan
    tasks = [
        _inspect(layout.result(f, None if m < 0 else m), f, m, run_hash)
        for f in range(folds)
        for m in (*range(members), -1)
    ]
    ensembles = [t for t in tasks if t.member < 0 and t.status == "ok"]
    gaps = [t.fold for t in tasks if t.member < 0 and t.status != "ok"]
    oos = _stitch(ensembles, config.data.bars_per_year)
    missing = tuple(t.line() for t in tasks if t.status != "ok")
    head = {
        "schema_version": SUMMARY_VERSION,
        "run": config.name,
        "config_hash": run_hash,
        "folds": folds,
        "members": members,
        "complete": not missing,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tables = _tables(tasks, folds, members, config.data.bars_per_year)
    _write(layout.summary, head, layout.config_file.read_text(), tasks, tables, oos, gaps)
    return Summary(
        path=layout.summary,
        folds=folds,
        members=members,
        members_ok=sum(t.member >= 0 and t.status == "ok" for t in tasks),
        ensembles_ok=len(ensembles),
        missing=missing,
    )


def verdict(fold: int, sharpe: float, psr: float, p_random: float, *, level: float = SIGNIFICANCE) -> str:
    """One sentence: whether fold ``fold``'s ensemble beats flat (``1 - psr < level``) and the random
    policies with its turnover (``p_random < level``); a NaN p-value never beats anything."""
    p_flat = 1.0 - psr
    if not math.isfinite(sharpe) and not math.isfinite(psr):
        return (
            f"fold {fold}: the ensemble's equity never moved (it held no position), so it beats neither flat nor a "
            "random policy with its turnover"
        )

    def shown(value: float, digits: int) -> str:
        return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"

    flat = f"flat (Sharpe {shown(sharpe, 2)}, p = {shown(p_flat, 3)})"
    random = f"a random policy with its turnover (p = {shown(p_random, 3)})"
    beats_flat, beats_random = bool(p_flat < level), bool(p_random < level)  # NaN compares False
    if beats_flat and beats_random:
        claim = f"beats {flat} and {random}"
    elif beats_flat:
        claim = f"beats {flat} but not {random}"
    elif beats_random:
        claim = f"does not beat {flat} but beats {random}"
    else:
        claim = f"does not beat {flat} nor {random}"
    return f"fold {fold}: the ensemble {claim} at p < {level:g}"


def verdicts(sharpe: np.ndarray, psr: np.ndarray, p_random: np.ndarray, gaps: list[int]) -> list[str]:
    """:func:`verdict` of every fold from the ensemble tables (F,); a fold in ``gaps`` (no ok
    ensemble) says so instead."""
    return [
        f"fold {f}: no ensemble result, nothing to test" if f in gaps
        else verdict(f, float(sharpe[f]), float(psr[f]), float(p_random[f]))
        for f in range(len(sharpe))
    ]  # fmt: skip


def format_folds(path: Path) -> str:
    """The ensemble of each fold in ``summary.h5`` and the stitched curve (net and gross return, Sharpe,
    deflated Sharpe, drawdown, buy-and-hold), then one sentence per fold on beating flat and chance."""
    with h5py.File(path, "r", locking=False) as h5:
        keys = ("total_return", "gross_return", "sharpe", "deflated_sharpe", "max_drawdown")
        rows = [(str(f), *(h5[f"ensemble/{k}"][f] for k in keys), h5["benchmarks/buy_and_hold/total_return"][f])
                for f in range(int(h5.attrs["folds"]))]  # fmt: skip
        oos, bench = h5["oos/metrics"].attrs, h5["oos/benchmark_metrics/buy_and_hold"].attrs
        stitched = ("stitched", *(oos.get(k, math.nan) for k in keys), bench["total_return"])
        gaps = [int(g) for g in h5["oos"].attrs["gaps"]]
        sentences = verdicts(*(h5[f"ensemble/{k}"][()] for k in ("sharpe", "psr", "p_random")), gaps)
    lines = [f"{'fold':>8} {'return':>10} {'gross':>10} {'sharpe':>10} {'dsr':>10} {'max dd':>10} {'b&h return':>11}"]
    for row in [*rows, stitched]:
        cells = [format_metric(key, float(value)) for key, value in zip((*keys, "total_return"), row[1:], strict=True)]
        lines.append(f"{row[0]:>8} " + " ".join(f"{cell:>10}" for cell in cells[:5]) + f" {cells[5]:>11}")
    if gaps:
        lines.append(f"stitched without fold(s) {', '.join(map(str, gaps))} (ensemble not ok)")
    return "\n".join([*lines, *sentences])
