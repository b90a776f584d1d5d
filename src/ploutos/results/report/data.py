"""What the report reads (``summary.h5`` and the task files) and the series it derives from them.

Every derived series is a pure function of arrays, so the tests compare the figures and tables
with it directly. Returns are per-bar simple returns, annualized with the run's bars per year
(:mod:`ploutos.analytics.metrics`' convention: the session's hourly bars, from the config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from ploutos.analytics.evaluation import RANDOM
from ploutos.config import DataConfig
from ploutos.config.sections import SESSION_BARS_PER_YEAR
from ploutos.errors import PloutosError

STITCHED_CURVES = ("ensemble", "buy_and_hold", "equal_weight")
BOOTSTRAPPED = ("sharpe", "total_return", "max_drawdown")
"""The statistics whose 95% block-bootstrap interval the tables show (each task file's /bootstrap attrs)."""
_NOISE = 1e-12  # a window's return std below this is a flat curve: its Sharpe ratio is undefined


@dataclass(frozen=True)
class Summary:
    """What the report needs from ``summary.h5``."""

    run: str
    config_hash: str
    folds: int
    members: int
    complete: bool
    created: str
    config: str
    """The run's config.yaml (empty when the summary holds none)."""
    members_ok: np.ndarray  # (F,) member tasks with status ok
    missing: list[str]
    metrics: dict[str, np.ndarray]  # (F, M) per member, p_random included
    ensemble: dict[str, np.ndarray]  # (F,), with p_random and deflated_sharpe when the summary has them
    costs: dict[str, np.ndarray]  # component -> (F,) the ensemble's annualized cost share; empty in older summaries
    benchmarks: dict[str, dict[str, np.ndarray]]  # name -> metric -> (F,); random_turnover/seed_returns is (F, S)
    oos_time: np.ndarray  # (N,) datetime64[us]
    oos_fold: np.ndarray
    oos: dict[str, np.ndarray]  # ensemble, buy_and_hold, equal_weight
    gaps: list[int]
    oos_metrics: dict[str, dict[str, float]]  # ensemble and the benchmarks

    @property
    def bars_per_year(self) -> int:
        """The session's bars per year from the run's config, as the metrics were annualized."""
        return bars_per_year(self.config)

    @property
    def folds_present(self) -> list[int]:
        """Folds in the stitched curve (their ensemble was ok), in order."""
        return [int(f) for f in np.unique(self.oos_fold)]


@dataclass(frozen=True)
class TaskData:
    """The curves and intervals of one task file; member -1 is the fold's ensemble."""

    fold: int
    member: int
    tickers: tuple[str, ...]
    time: np.ndarray  # (N+1,) datetime64[us]
    equity: np.ndarray  # (N+1,)
    weights: np.ndarray  # (N+1, A)
    turnover: np.ndarray  # (N,)
    costs: np.ndarray  # (N,) in cash
    benchmarks: dict[str, np.ndarray]  # name -> equity (N+1,)
    random_returns: np.ndarray  # (S,) each random-turnover seed's net total return; empty when absent
    bootstrap: dict[str, tuple[float, float]]  # statistic -> (low, high)
    confidence: float
    training: dict[str, np.ndarray] = field(default_factory=dict)
    validation: dict[str, np.ndarray] = field(default_factory=dict)  # timesteps, score
    chosen_timesteps: int | None = None


Tasks = dict[tuple[int, int], TaskData | None]
"""(fold, member) -> the task file's data, None when absent or unreadable; member -1 is the ensemble."""


def _text(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(values)]


def _floats(group: h5py.Group) -> dict[str, np.ndarray]:
    return {key: np.asarray(ds[()], dtype=np.float64) for key, ds in group.items() if isinstance(ds, h5py.Dataset)}


def assets(tasks: Tasks) -> int:
    """How many assets the run trades (from the first task file that names them; 0 when none does)."""
    return next((len(t.tickers) for t in tasks.values() if t is not None and t.tickers), 0)


def read_summary(path: Path) -> Summary:
    """Load ``summary.h5``; a damaged file is a one-line PloutosError, not a traceback."""
    try:
        with h5py.File(path, "r", locking=False) as h5:
            attrs, folds, members = h5.attrs, int(h5.attrs["folds"]), int(h5.attrs["members"])
            task_fold, task_member = h5["tasks/fold"][()], h5["tasks/member"][()]
            ok = (np.array(_text(h5["tasks/status"][()])) == "ok") & (task_member >= 0)
            oos = h5["oos"]
            oos_metrics = {"ensemble": dict(oos["metrics"].attrs)}
            oos_metrics.update({k: dict(g.attrs) for k, g in oos["benchmark_metrics"].items()})
            return Summary(
                run=_text(attrs["run"])[0],
                config_hash=_text(attrs["config_hash"])[0],
                folds=folds,
                members=members,
                complete=bool(attrs.get("complete", False)),
                created=_text(attrs.get("created", ""))[0],
                config=_text(h5["config"][()])[0] if "config" in h5 else "",
                members_ok=np.array([int(np.sum(ok & (task_fold == f))) for f in range(folds)]),
                missing=_text(h5["missing"][()]) if "missing" in h5 else [],
                metrics=_floats(h5["metrics"]),
                ensemble=_floats(h5["ensemble"]),
                costs=_floats(h5["ensemble/costs"]) if "ensemble/costs" in h5 else {},
                benchmarks={name: _floats(group) for name, group in h5["benchmarks"].items()},
                oos_time=oos["timestamps"][()].astype("datetime64[us]"),
                oos_fold=oos["fold"][()].astype(np.int64),
                oos={name: oos[name][()].astype(np.float64) for name in STITCHED_CURVES},
                gaps=[int(g) for g in np.atleast_1d(oos.attrs.get("gaps", []))],
                oos_metrics={name: {k: float(v) for k, v in m.items()} for name, m in oos_metrics.items()},
            )
    except (OSError, KeyError, ValueError) as err:
        raise PloutosError(f"{path}: not a readable summary ({err}); run `ploutos aggregate` again") from None


def read_task(path: Path, fold: int, member: int) -> TaskData | None:
    """The curves of a task file, or None when it is absent or unreadable: the report goes on without it."""
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r", locking=False) as h5:
            test = h5["test"]
            equity = np.asarray(test["equity"][()], dtype=np.float64)
            n = equity.size - 1
            boot = h5["bootstrap"].attrs if "bootstrap" in h5 else {}
            validation = h5.get("validation")
            chosen = validation.attrs.get("chosen_timesteps") if validation is not None else None
            return TaskData(
                fold=fold,
                member=member,
                tickers=tuple(_text(h5["tickers"][()])) if "tickers" in h5 else (),
                time=test["timestamps"][()].astype("datetime64[us]"),
                equity=equity,
                weights=np.asarray(test["weights"][()], dtype=np.float64)
                if "weights" in test
                else np.zeros((n + 1, 0)),
                turnover=np.asarray(test["turnover"][()], dtype=np.float64) if "turnover" in test else np.zeros(n),
                costs=np.asarray(test["costs"][()], dtype=np.float64) if "costs" in test else np.zeros(n),
                benchmarks={
                    name: np.asarray(group["equity"][()], dtype=np.float64)
                    for name, group in h5.get("benchmarks", {}).items()
                    if "equity" in group
                },
                random_returns=np.asarray(h5[f"benchmarks/{RANDOM}/total_return"][()], dtype=np.float64)
                if f"benchmarks/{RANDOM}/total_return" in h5
                else np.zeros(0),
                bootstrap={
                    stat: (float(boot[f"{stat}_low"]), float(boot[f"{stat}_high"]))
                    for stat in BOOTSTRAPPED
                    if f"{stat}_low" in boot and f"{stat}_high" in boot
                },
                confidence=float(boot.get("confidence", 0.95)),
                training={k: v[()] for k, v in h5["training"].items()} if "training" in h5 else {},
                validation={k: v[()] for k, v in (validation or {}).items() if k in ("timesteps", "score")},
                chosen_timesteps=None if chosen is None else int(chosen),
            )
    except (OSError, KeyError, ValueError, TypeError):
        return None


def bars_per_year(config_text: str) -> int:
    """Bars per year of the session in a config's YAML (the default session's when it names none)."""
    try:
        raw = yaml.safe_load(config_text) if config_text else {}
    except yaml.YAMLError:
        raw = {}
    data = raw.get("data") if isinstance(raw, dict) else None
    session = data.get("session") if isinstance(data, dict) else None
    return SESSION_BARS_PER_YEAR.get(str(session), SESSION_BARS_PER_YEAR[DataConfig.session])


@dataclass(frozen=True)
class Returns:
    """Per-bar returns of a stitched curve: bar ``i`` ends at ``time[i]`` in fold ``fold[i]``.

    A later fold's first stitched point is its first bar's close measured from its own first mark
    (aggregate drops that mark), so no return spans the hole of a missing fold: ``segment`` numbers
    runs of consecutive folds, and a rolling window never crosses from one run to the next.
    """

    time: np.ndarray
    values: np.ndarray
    fold: np.ndarray
    segment: np.ndarray


def stitched_returns(s: Summary, curve: str = "ensemble") -> Returns:
    """The per-bar returns of one stitched curve of the summary."""
    equity = s.oos[curve]
    if equity.size < 2:
        empty = np.zeros(0)
        return Returns(s.oos_time[:0], empty, empty.astype(np.int64), empty.astype(np.int64))
    fold = s.oos_fold[1:]
    jumps = np.diff(fold, prepend=fold[0]) > 1  # a missing fold between two bars
    return Returns(s.oos_time[1:], equity[1:] / equity[:-1] - 1.0, fold, np.cumsum(jumps))


def underwater(equity: np.ndarray) -> np.ndarray:
    """Drawdown from the running peak, ``equity / cummax(equity) - 1``: 0 at a peak, negative below it."""
    equity = np.asarray(equity, dtype=np.float64)
    return equity / np.maximum.accumulate(equity) - 1.0 if equity.size else equity


def rolling_window(bars_per_year: int, n_returns: int) -> int:
    """About one month of bars, but at most a third of the returns so that the line has a shape."""
    return max(2, min(bars_per_year // 12, n_returns // 3))


def rolling_sharpe(r: Returns, window: int, bars_per_year: int) -> np.ndarray:
    """Annualized Sharpe ratio of the last ``window`` returns at every bar, as
    :func:`ploutos.analytics.metrics.compute_metrics` computes it (mean over std with ddof 1, times
    sqrt(bars per year)); NaN until a window fills, where it would span a missing fold, and where the
    window's returns do not vary."""
    x = r.values
    out = np.full(x.size, np.nan)
    if x.size < window or window < 2:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(x, window)  # a view: no copy of the windows
    std = windows.std(axis=1, ddof=1)
    mean = windows.mean(axis=1)
    ok = (std > _NOISE) & (r.segment[window - 1 :] == r.segment[: x.size - window + 1])
    out[window - 1 :] = np.where(ok, mean / np.where(ok, std, 1.0) * math.sqrt(bars_per_year), np.nan)
    return out


def monthly_returns(r: Returns) -> dict[tuple[int, int], float]:
    """(year, month) -> the compounded return of the bars that end in that month; a month without a
    bar (a missing fold) is absent, never interpolated."""
    months = r.time.astype("datetime64[M]")
    out = {}
    for month in np.unique(months):
        stamp = month.astype(object)  # datetime.date
        out[(stamp.year, stamp.month)] = float(np.prod(1.0 + r.values[months == month]) - 1.0)
    return out


@dataclass(frozen=True)
class Exposure:
    """The ensembles' positions and trading over time, fold by fold in order."""

    tickers: tuple[str, ...]
    folds: list[int]
    time: list[np.ndarray]  # per fold (N+1,)
    weights: list[np.ndarray]  # per fold (N+1, A)
    step_time: list[np.ndarray]  # per fold (N,), the close of each step
    turnover: list[np.ndarray]  # per fold (N,), cumulative from the first fold on
    cost_share: list[np.ndarray]  # per fold (N,), cumulative costs / equity before each step


def exposure(tasks: Tasks, folds: int) -> Exposure:
    """Each present ensemble's weights, and its turnover and cost share summed over time across folds."""
    present = [t for f in range(folds) if (t := tasks.get((f, -1))) is not None and t.equity.size >= 2]
    tickers = next((t.tickers for t in present if t.tickers), ())
    if not tickers and present:
        tickers = tuple(f"asset {a}" for a in range(present[0].weights.shape[1]))
    out = Exposure(tickers, [], [], [], [], [], [])
    turnover_level = cost_level = 0.0
    for task in present:
        turnover = turnover_level + np.cumsum(task.turnover)
        share = cost_level + np.cumsum(task.costs / task.equity[:-1])
        turnover_level, cost_level = float(turnover[-1]), float(share[-1])
        out.folds.append(task.fold)
        out.time.append(task.time)
        out.weights.append(task.weights)
        out.step_time.append(task.time[1:])
        out.turnover.append(turnover)
        out.cost_share.append(share)
    return out
