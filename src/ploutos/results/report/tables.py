"""Every table of the report, built once as cells and rendered both to summary.md and to report.html.

Returns are percent, ratios two decimals, probabilities three; NaN prints ``n/a``. An interval
``[low, high]`` beside a value is the 95% circular block bootstrap of the task's test returns
(the task file's ``/bootstrap`` attrs): how far the figure could move on another draw of the same
market.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from ploutos.analytics.evaluation import COST_COMPONENTS, RANDOM
from ploutos.results.report.data import Returns, Summary, TaskData, Tasks, monthly_returns
from ploutos.results.report.style import benchmark_lines, span

OOS_ROWS = (  # (metric, label, format) of the out-of-sample table
    ("total_return", "total return", "pct"),
    ("annual_return", "annual return", "pct"),
    ("volatility", "volatility (annual)", "pct"),
    ("sharpe", "Sharpe", "num"),
    ("sortino", "Sortino", "num"),
    ("calmar", "Calmar", "num"),
    ("max_drawdown", "max drawdown", "pct"),
    ("psr", "PSR", "prob"),
    ("gross_return", "return before costs", "pct"),
    ("turnover", "turnover (annual, x equity)", "num"),
    ("cost_drag", "cost drag (annual)", "pct"),
)
HYPERPARAMETER_SECTIONS = ("ppo", "env", "walkforward", "ensemble", "features", "data")
"""The config sections the hyperparameter table shows, in this order (hardware, slurm and paper do not
change what is learned)."""


@dataclass(frozen=True)
class Table:
    """Formatted cells; ``align`` has one ``l`` or ``r`` per column; ``shade`` (same shape as ``rows``)
    holds the numbers the HTML colours a cell by, None for a plain cell."""

    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    align: str
    shade: list[tuple[float | None, ...]] | None = field(default=None)


def fmt(value: Any, kind: str = "num") -> str:
    """One number as the report shows it; None or NaN is ``n/a``."""
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    value = float(value)
    return f"{value:.2%}" if kind == "pct" else f"{value:.3f}" if kind == "prob" else f"{value:.2f}"


def interval(value: float, task: TaskData | None, stat: str, kind: str) -> str:
    """``value [low, high]`` with the task's bootstrap interval of ``stat``, or the value alone."""
    bounds = task.bootstrap.get(stat) if task is not None else None
    if bounds is None or not math.isfinite(float(value)):
        return fmt(value, kind)
    return f"{fmt(value, kind)} [{fmt(bounds[0], kind)}, {fmt(bounds[1], kind)}]"


def oos_table(s: Summary, assets: int) -> Table:
    """The stitched curves' metrics: ensemble against buy and hold and equal weight (one column when
    they are the same curve)."""
    shown = benchmark_lines(s.oos.get("buy_and_hold"), s.oos.get("equal_weight"), assets)
    names = ["ensemble", *[key for key, _, _ in shown]]
    rows = [(label, *[fmt(s.oos_metrics.get(n, {}).get(key), kind) for n in names]) for key, label, kind in OOS_ROWS]
    return Table(("metric", "ensemble", *[label for _, label, _ in shown]), rows, "l" + "r" * len(names))


def _test_window(task: TaskData | None) -> str:
    return span(task.time[1:]) if task is not None and task.time.size > 1 else "n/a"


def folds_table(s: Summary, tasks: Tasks) -> Table:
    """Each fold's ensemble: its test window and metrics with their bootstrap intervals, significance."""
    nan = np.full(s.folds, np.nan)
    e = {key: s.ensemble.get(key, nan) for key in ("sharpe", "total_return", "max_drawdown", "turnover", "cost_drag",
                                                  "psr", "p_random", "deflated_sharpe")}  # fmt: skip
    rows = []
    for f in range(s.folds):
        t = tasks.get((f, -1))
        rows.append((
            str(f), _test_window(t), interval(e["sharpe"][f], t, "sharpe", "num"),
            interval(e["total_return"][f], t, "total_return", "pct"),
            interval(e["max_drawdown"][f], t, "max_drawdown", "pct"), fmt(e["turnover"][f]),
            fmt(e["cost_drag"][f], "pct"), fmt(1.0 - e["psr"][f], "prob"), fmt(e["p_random"][f], "prob"),
            fmt(e["deflated_sharpe"][f], "prob"), f"{s.members_ok[f]}/{s.members}",
        ))  # fmt: skip
    columns = ("fold", "test window", "Sharpe [95%]", "total return [95%]", "max drawdown [95%]", "turnover",
               "cost drag", "p (flat)", "p (random)", "deflated Sharpe", "members ok")  # fmt: skip
    return Table(columns, rows, "rl" + "r" * 9)


def members_table(s: Summary, tasks: Tasks) -> Table:
    """Every member of every fold: metrics with their bootstrap intervals, turnover, costs, significance."""
    blank = np.full((s.folds, s.members), np.nan)
    m = {key: s.metrics.get(key, blank) for key in ("sharpe", "total_return", "max_drawdown", "turnover", "cost_drag",
                                                   "psr", "p_random")}  # fmt: skip
    rows = []
    for f in range(s.folds):
        for j in range(s.members):
            t = tasks.get((f, j))
            rows.append((
                str(f), str(j), interval(m["sharpe"][f, j], t, "sharpe", "num"),
                interval(m["total_return"][f, j], t, "total_return", "pct"),
                interval(m["max_drawdown"][f, j], t, "max_drawdown", "pct"), fmt(m["turnover"][f, j]),
                fmt(m["cost_drag"][f, j], "pct"), fmt(1.0 - m["psr"][f, j], "prob"), fmt(m["p_random"][f, j], "prob"),
            ))  # fmt: skip
    columns = ("fold", "member", "Sharpe [95%]", "total return [95%]", "max drawdown [95%]", "turnover", "cost drag",
               "p (flat)", "p (random)")  # fmt: skip
    return Table(columns, rows, "rr" + "r" * 7)


def baselines_table(s: Summary, assets: int) -> Table:
    """Each fold's ensemble against every baseline: net and gross return, flat, buy and hold, equal weight,
    the random policies with its turnover (median and 5-95% of their seeds), and the p-values."""
    nan = np.full(s.folds, np.nan)
    bench = {name: s.benchmarks.get(name, {}).get("total_return", nan) for name in ("flat", "buy_and_hold",
                                                                                   "equal_weight", RANDOM)}  # fmt: skip
    shown = benchmark_lines(1.0 + bench["buy_and_hold"], 1.0 + bench["equal_weight"], assets)
    seeds = s.benchmarks.get(RANDOM, {}).get("seed_returns", np.full((s.folds, 0), np.nan))
    e = {
        key: s.ensemble.get(key, nan) for key in ("total_return", "gross_return", "psr", "p_random", "deflated_sharpe")
    }
    rows = []
    for f in range(s.folds):
        finite = seeds[f][np.isfinite(seeds[f])] if f < len(seeds) else np.zeros(0)
        low, high = np.percentile(finite, (5, 95)) if finite.size else (math.nan, math.nan)
        spread = f" ({fmt(low, 'pct')} to {fmt(high, 'pct')})" if finite.size else ""
        rows.append((
            str(f), fmt(e["total_return"][f], "pct"), fmt(e["gross_return"][f], "pct"), fmt(bench["flat"][f], "pct"),
            *[fmt(bench[key][f], "pct") for key, _, _ in shown], fmt(bench[RANDOM][f], "pct") + spread,
            fmt(1.0 - e["psr"][f], "prob"), fmt(e["p_random"][f], "prob"), fmt(e["deflated_sharpe"][f], "prob"),
        ))  # fmt: skip
    columns = ("fold", "net return", "gross return", "flat", *[label for _, label, _ in shown],
               "random, same turnover: median (5% to 95%)", "p (flat)", "p (random)", "deflated Sharpe")  # fmt: skip
    return Table(columns, rows, "r" * len(columns))


def costs_table(s: Summary) -> Table | None:
    """The ensemble's annualized costs by component; None for a summary without the breakdown."""
    if not s.costs:
        return None
    nan = np.full(s.folds, np.nan)
    names = [name for name in COST_COMPONENTS if name in s.costs]
    drag, turnover = s.ensemble.get("cost_drag", nan), s.ensemble.get("turnover", nan)
    rows = [(str(f), *[fmt(s.costs[n][f], "pct") for n in names], fmt(drag[f], "pct"), fmt(turnover[f]))
            for f in range(s.folds)]  # fmt: skip
    return Table(("fold", *names, "cost drag", "turnover"), rows, "r" * (len(names) + 3))


def monthly_table(r: Returns) -> Table:
    """Year by month compounded returns of a stitched curve, and each year's; blank where no bar was traded."""
    months = monthly_returns(r)
    rows, shade = [], []
    for year in sorted({y for y, _ in months}):
        values = [months.get((year, m)) for m in range(1, 13)]
        held = [v for v in values if v is not None]
        total = float(np.prod([1.0 + v for v in held]) - 1.0)
        rows.append((str(year), *["" if v is None else fmt(v, "pct") for v in values], fmt(total, "pct")))
        shade.append((None, *values, None))
    return Table(("year", *calendar.month_abbr[1:], "year"), rows, "r" * 14, shade)


def validation_table(tasks: Tasks) -> tuple[Table, list[str]] | None:
    """The mean validation score over each fold's members at every checkpoint, and the checkpoint each
    member kept; None when no task file has a validation curve."""
    curves = {key: t for key, t in tasks.items() if key[1] >= 0 and t is not None and len(t.validation.get(
        "timesteps", ())) and "score" in t.validation}  # fmt: skip
    if not curves:
        return None
    steps = sorted({int(x) for t in curves.values() for x in t.validation["timesteps"]})
    folds = sorted({fold for fold, _ in curves})
    rows = []
    for step in steps:
        cells, everyone = [], []
        for fold in folds:
            values = [float(t.validation["score"][t.validation["timesteps"] == step][0])
                      for (f, _), t in curves.items() if f == fold and step in t.validation["timesteps"]]  # fmt: skip
            everyone += values
            cells.append(fmt(float(np.mean(values))) if values else "")
        rows.append((f"{step:,}", *cells, fmt(float(np.mean(everyone)))))
    kept = [f"fold {f} member {m}: {t.chosen_timesteps:,}" for (f, m), t in sorted(curves.items())
            if t.chosen_timesteps is not None]  # fmt: skip
    return Table(("timesteps", *[f"fold {f}" for f in folds], "all"), rows, "r" * (len(folds) + 2)), kept


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [row for key, v in value.items() for row in _flatten(v, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(value, list):
        return [(prefix, ", ".join(str(v) for v in value) if value else "[]")]
    return [(prefix, "null" if value is None else str(value))]


def hyperparameters_table(config: str) -> Table | None:
    """The run's config, the sections that shape what is learned, one key per row; None without a config."""
    try:
        raw = yaml.safe_load(config) if config else None
    except yaml.YAMLError:
        raw = None
    if not isinstance(raw, dict):
        return None
    sections = [name for name in HYPERPARAMETER_SECTIONS if isinstance(raw.get(name), dict)]
    rows = [(name, key, value) for name in sections for key, value in _flatten(raw[name])]
    head = [("run", key, str(raw[key])) for key in ("name", "seed") if key in raw]
    return Table(("section", "key", "value"), head + rows, "lll")
