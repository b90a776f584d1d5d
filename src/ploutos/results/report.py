"""``ploutos report RUN_DIR``: PNG plots and a markdown summary of an aggregated run.

Reads ``RUN_DIR/summary.h5`` (written by ``ploutos aggregate``) and, for the per-fold and
training plots, the task files under ``RUN_DIR/tasks``; writes ``RUN_DIR/report/``. Every file
is written atomically, so a rerun replaces the old report file by file and a crash leaves the
previous version. A run with missing or damaged tasks still gets a report: they are listed, not
fatal, because the report is how a user finds out what failed.

Plots use matplotlib's object API (``Figure``) and never pyplot: pyplot keeps global figure state
and picks a GUI backend, while ``Figure.savefig`` renders PNG with Agg and needs no display.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from ploutos.analytics.evaluation import COST_COMPONENTS, RANDOM
from ploutos.errors import PloutosError
from ploutos.files import atomic_path
from ploutos.results.aggregate import SIGNIFICANCE, verdicts
from ploutos.results.layout import RunLayout

DPI = 100
CURVES = {
    "ensemble": ("ensemble", "C0"),
    "buy_and_hold": ("buy and hold", "C1"),
    "equal_weight": ("equal weight", "C2"),
}
OOS_ROWS = (  # (metric, label, format) of the out-of-sample table
    ("total_return", "total return", "pct"),
    ("annual_return", "annual return", "pct"),
    ("sharpe", "Sharpe", "num"),
    ("sortino", "Sortino", "num"),
    ("max_drawdown", "max drawdown", "pct"),
    ("psr", "PSR", "prob"),
    ("gross_return", "return before costs", "pct"),
    ("turnover", "turnover (annual, x equity)", "num"),
    ("cost_drag", "cost drag (annual)", "pct"),
)
DISTRIBUTIONS = (
    ("sharpe", "Sharpe"),
    ("total_return", "total return"),
    ("max_drawdown", "max drawdown"),
    ("psr", "PSR"),
)


@dataclass(frozen=True)
class Summary:
    """What the report needs from ``summary.h5``."""

    run: str
    config_hash: str
    folds: int
    members: int
    complete: bool
    created: str
    members_ok: np.ndarray  # (F,) member tasks with status ok
    missing: list[str]
    metrics: dict[str, np.ndarray]  # (F, M) per member
    ensemble: dict[str, np.ndarray]  # (F,), with p_random and deflated_sharpe when the summary has them
    costs: dict[str, np.ndarray]  # component -> (F,) the ensemble's annualized cost share; empty in older summaries
    benchmarks: dict[str, dict[str, np.ndarray]]  # name -> metric -> (F,)
    oos_time: np.ndarray  # (N,) datetime64[us]
    oos_fold: np.ndarray
    oos: dict[str, np.ndarray]  # ensemble, buy_and_hold, equal_weight
    gaps: list[int]
    oos_metrics: dict[str, dict[str, float]]  # ensemble and the benchmarks


def _text(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(values)]


def _floats(group: h5py.Group) -> dict[str, np.ndarray]:
    return {key: np.asarray(ds[()], dtype=np.float64) for key, ds in group.items() if isinstance(ds, h5py.Dataset)}


def read_summary(path: Path) -> Summary:
    """Load ``summary.h5``; a damaged file is one-line PloutosError, not a traceback."""
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
                members_ok=np.array([int(np.sum(ok & (task_fold == f))) for f in range(folds)]),
                missing=_text(h5["missing"][()]) if "missing" in h5 else [],
                metrics=_floats(h5["metrics"]),
                ensemble=_floats(h5["ensemble"]),
                costs=_floats(h5["ensemble/costs"]) if "ensemble/costs" in h5 else {},
                benchmarks={name: _floats(group) for name, group in h5["benchmarks"].items()},
                oos_time=oos["timestamps"][()].astype("datetime64[us]"),
                oos_fold=oos["fold"][()].astype(np.int64),
                oos={name: oos[name][()].astype(np.float64) for name in CURVES},
                gaps=[int(g) for g in np.atleast_1d(oos.attrs.get("gaps", []))],
                oos_metrics={name: {k: float(v) for k, v in m.items()} for name, m in oos_metrics.items()},
            )
    except (OSError, KeyError, ValueError) as err:
        raise PloutosError(f"{path}: not a readable summary ({err}); run `ploutos aggregate` again") from None


def _read_task(path: Path) -> dict[str, np.ndarray] | None:
    """The curves of a task file, or None when it is absent or unreadable (the report goes on)."""
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r", locking=False) as h5:
            out = {"time": h5["test/timestamps"][()].astype("datetime64[us]"), "equity": h5["test/equity"][()]}
            optional = {"buy_and_hold": "benchmarks/buy_and_hold/equity"}
            optional.update({key: f"training/{key}" for key in ("timesteps", "ep_rew_mean", "value_loss")})
            optional.update({f"validation_{key}": f"validation/{key}" for key in ("timesteps", "score")})
            found = out | {key: h5[where][()] for key, where in optional.items() if where in h5}
            if "validation" in h5 and "chosen_timesteps" in h5["validation"].attrs:
                found["chosen_timesteps"] = np.asarray(h5["validation"].attrs["chosen_timesteps"])
            return found
    except (OSError, KeyError):
        return None


def _dates(ax: Axes) -> None:
    locator = AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)  # format given: the temporary name has no .png suffix
    return path


def plot_oos(s: Summary, path: Path) -> Path:
    fig = Figure(figsize=(10, 5))
    ax = fig.add_subplot()
    present = [int(f) for f in np.unique(s.oos_fold)]
    for name, (label, color) in CURVES.items():
        for i, fold in enumerate(present):  # one line per fold, so a missing fold is a break, not a fake line
            sel = s.oos_fold == fold
            ax.plot(s.oos_time[sel], s.oos[name][sel], color=color, lw=1.6 if name == "ensemble" else 1.0,
                    label=label if i == 0 else None)  # fmt: skip
    starts = {f: s.oos_time[s.oos_fold == f][0] for f in present}
    ends = {f: s.oos_time[s.oos_fold == f][-1] for f in present}
    for fold in present[1:]:
        ax.axvline(starts[fold], color="0.5", lw=0.8, ls=":")
    for fold in present:
        ax.text(starts[fold], 1.0, f" fold {fold}", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    for gap in s.gaps:  # shade the hole left by a missing fold where neighbours bound it
        before, after = [f for f in present if f < gap], [f for f in present if f > gap]
        if before and after:
            ax.axvspan(ends[before[-1]], starts[after[0]], color="red", alpha=0.12, lw=0)
            y = 0.5 - 0.06 * (gap - before[-1] - 1)  # consecutive missing folds share a span: stack their labels
            ax.text(ends[before[-1]], y, f" fold {gap} missing", transform=ax.get_xaxis_transform(), color="red")
    if present:
        ax.legend(loc="best")
        _dates(ax)
    else:
        ax.text(0.5, 0.5, "no out-of-sample data", transform=ax.transAxes, ha="center", color="red")
    missing = f"; missing folds {', '.join(map(str, s.gaps))}" if s.gaps else ""
    ax.set_title(f"{s.run}: stitched out-of-sample equity, {len(present)}/{s.folds} folds{missing}")
    ax.set_ylabel("equity (start = 1)")
    fig.subplots_adjust(left=0.08, right=0.97, top=0.92, bottom=0.1)
    return _save(fig, path)


def _unit(curve: np.ndarray) -> np.ndarray:
    return curve / curve[0]  # every curve starts at 1, so members, ensemble and benchmark compare directly


def plot_folds(s: Summary, tasks: dict[tuple[int, int], dict[str, np.ndarray] | None], path: Path) -> Path:
    cols = min(max(s.folds, 1), 3)
    rows = -(-max(s.folds, 1) // cols)
    fig = Figure(figsize=(10, max(5.0, 2.6 * rows)))
    legend = False
    for fold in range(s.folds):
        ax = fig.add_subplot(rows, cols, fold + 1)
        ens, members = tasks[(fold, -1)], [tasks[(fold, m)] for m in range(s.members)]
        absent = ["ensemble"] * (ens is None) + [f"m{m}" for m, t in enumerate(members) if t is None]
        ax.set_title(f"fold {fold}" + (f" (absent: {', '.join(absent)})" if absent else ""), fontsize=9)
        present = [t for t in members if t is not None]
        for i, t in enumerate(present):
            ax.plot(t["time"], _unit(t["equity"]), color="0.6", lw=0.7, label="members" if i == 0 else None)
        if (hold := next((t for t in [ens, *present] if t and "buy_and_hold" in t), None)) is not None:
            ax.plot(hold["time"], _unit(hold["buy_and_hold"]), color="C1", lw=1.0, ls="--", label="buy and hold")
        if ens is not None:
            ax.plot(ens["time"], _unit(ens["equity"]), color="C0", lw=1.5, label="ensemble")
        if ens is None and not present:  # say so rather than draw an empty axis dated 1970
            ax.text(0.5, 0.5, "no task files", transform=ax.transAxes, ha="center", color="red")
            ax.set(xticks=[], yticks=[])
            continue
        ax.tick_params(labelsize=7)
        _dates(ax)
        if not legend:
            ax.legend(fontsize=7)
            legend = True
    fig.subplots_adjust(left=0.06, right=0.98, top=0.94, bottom=0.08, hspace=0.4, wspace=0.2)
    return _save(fig, path)


def plot_distributions(s: Summary, path: Path) -> Path:
    fig = Figure(figsize=(10, 6))
    rng = np.random.default_rng(0)  # fixed jitter: a rerun draws the same picture
    nan, folds = np.full(s.folds, np.nan), np.arange(s.folds)
    for i, (key, label) in enumerate(DISTRIBUTIONS):
        ax = fig.add_subplot(2, 2, i + 1)
        values = s.metrics.get(key, np.full((s.folds, s.members), np.nan))
        data = [(f, row[np.isfinite(row)]) for f, row in enumerate(values) if np.isfinite(row).any()]
        if data:  # manage_ticks off: the fold ticks below must stay where the folds are, with or without a box
            ax.boxplot([row for _, row in data], positions=[f for f, _ in data], widths=0.5, showfliers=False,
                       manage_ticks=False, medianprops={"color": "0.2"})  # fmt: skip
        for j, (f, row) in enumerate(data):
            ax.scatter(f + rng.uniform(-0.12, 0.12, row.size), row, s=12, color="0.4", zorder=3,
                       label="members" if j == 0 else None)  # fmt: skip
        for f in sorted(set(folds) - {f for f, _ in data}):
            ax.text(f, 0.5, "no data", transform=ax.get_xaxis_transform(), ha="center", color="red", fontsize=8)
        ax.scatter(folds, s.ensemble.get(key, nan), marker="D", color="C3", zorder=4, label="ensemble")
        ax.scatter(folds, s.benchmarks.get("buy_and_hold", {}).get(key, nan), marker="_", s=200, color="C1",
                   zorder=4, label="buy and hold")  # fmt: skip
        ax.set_xticks(folds)
        ax.set_xlim(-0.6, s.folds - 0.4)
        ax.set_title(label, fontsize=10)
        if key in ("total_return", "max_drawdown"):
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        if i == 0:
            ax.legend(fontsize=7)
    fig.supxlabel("fold", fontsize=9)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.94, bottom=0.1, hspace=0.3, wspace=0.2)
    return _save(fig, path)


TRAINING_PANELS = ("ep_rew_mean", "value_loss", "validation_score")
"""The training plot's panels, top to bottom: two of SB3's training curves, then the validation curve."""


def plot_training(s: Summary, tasks: dict[tuple[int, int], dict[str, np.ndarray] | None], path: Path) -> Path:
    fig = Figure(figsize=(10, 8))
    axes = fig.subplots(3, 1, sharex=True)
    drawn: set[int] = set()
    for (fold, member), t in sorted(tasks.items()):
        if member < 0 or t is None:
            continue
        for ax, key in zip(axes, TRAINING_PANELS, strict=True):
            steps = t.get("validation_timesteps" if key == "validation_score" else "timesteps")
            if steps is None or key not in t or len(t[key]) != len(steps) or not len(steps):
                continue
            label = None if fold in drawn else f"fold {fold}"  # colour by fold: members of a fold overlap
            ax.plot(steps, t[key], color=f"C{fold % 10}", lw=0.9, marker="." if key == "validation_score" else None,
                    label=label)  # fmt: skip
            drawn.add(fold)
            if key == "validation_score" and "chosen_timesteps" in t:
                kept = np.flatnonzero(steps == t["chosen_timesteps"])
                ax.scatter(steps[kept], t[key][kept], s=40, facecolors="none", edgecolors=f"C{fold % 10}", zorder=3)
    for ax, key in zip(axes, TRAINING_PANELS, strict=True):
        ax.set_ylabel("validation score (kept: circled)" if key == "validation_score" else key, fontsize=8)
    if drawn:
        axes[0].legend(fontsize=7, ncols=min(len(drawn), 6))
    else:
        axes[0].text(0.5, 0.5, "no member task files with a training curve", transform=axes[0].transAxes, ha="center")
    axes[0].set_title(f"{s.run}: training and validation curves of every member task file present")
    axes[2].set_xlabel("timesteps")
    fig.subplots_adjust(left=0.08, right=0.97, top=0.94, bottom=0.07, hspace=0.12)
    return _save(fig, path)


def validation_markdown(tasks: dict[tuple[int, int], dict[str, np.ndarray] | None]) -> list[str]:
    """The validation curves: the mean score over each fold's members at every validation, and the
    checkpoint each member kept. Empty when no task file has a validation curve."""
    curves = {
        key: (t["validation_timesteps"], t["validation_score"], t.get("chosen_timesteps"))
        for key, t in tasks.items()
        if key[1] >= 0 and t is not None and len(t.get("validation_timesteps", ())) and "validation_score" in t
    }
    if not curves:
        return []
    steps = sorted({int(x) for found, _, _ in curves.values() for x in found})
    folds = sorted({fold for fold, _ in curves})
    lines = [
        "", "## Validation", "",
        "Each member traded its fold's validation window (the end of its training window, never trained on) at every "
        "checkpoint below and kept the best one; the test window was traded once, by the kept checkpoint. Mean "
        "validation score over each fold's members:", "",
        "| timesteps | " + " | ".join(f"fold {f}" for f in folds) + " | all |",
        "| ---: |" + " ---: |" * (len(folds) + 1),
    ]  # fmt: skip
    for step in steps:
        cells, everyone = [], []
        for fold in folds:
            values = [float(v[x == step][0]) for (f, _), (x, v, _) in curves.items() if f == fold and step in x]
            everyone += values
            cells.append(_fmt(float(np.mean(values))) if values else "")
        lines.append(f"| {step:,} | {' | '.join(cells)} | {_fmt(float(np.mean(everyone)))} |")
    kept = [
        f"fold {f} member {m}: {int(chosen):,}"
        for (f, m), (_, _, chosen) in sorted(curves.items())
        if chosen is not None
    ]
    if kept:
        lines += ["", "Kept checkpoints (timesteps): " + "; ".join(kept) + "."]
    return lines


def _fmt(value: float | None, kind: str = "num") -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.2%}" if kind == "pct" else f"{value:.3f}" if kind == "prob" else f"{value:.2f}"


def summary_markdown(s: Summary, tasks: dict[tuple[int, int], dict[str, np.ndarray] | None] | None = None) -> str:
    present = s.folds - len(s.gaps)
    lines = [
        f"# Ploutos report: {s.run}",
        "",
        f"Config hash `{s.config_hash}`; {s.folds} fold(s) x {s.members} member(s); "
        f"aggregated {s.created or 'n/a'}; complete: {'yes' if s.complete else 'no'}.",
        "",
        "## Out-of-sample (stitched)",
        "",
        f"The out-of-sample curve is stitched from the test windows only of {present} of {s.folds} fold(s): "
        "every point was traded by models trained on earlier data, so there is no look-ahead."
        + (f" Missing fold(s) {', '.join(map(str, s.gaps))} are left out of it." if s.gaps else ""),
        "",
        "| metric | ensemble | buy and hold | equal weight |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, label, kind in OOS_ROWS:
        cells = [_fmt(s.oos_metrics.get(name, {}).get(key), kind) for name in CURVES]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines += ["", "![Out-of-sample equity](oos_equity.png)", "", "## Per fold", ""]
    lines += ["| fold | ensemble return | Sharpe | max dd | buy-and-hold return | members ok |"]
    lines += ["| ---: | ---: | ---: | ---: | ---: | ---: |"]
    nan = np.full(s.folds, np.nan)
    hold = s.benchmarks.get("buy_and_hold", {}).get("total_return", nan)
    for f in range(s.folds):
        ens = {key: s.ensemble.get(key, nan)[f] for key in ("total_return", "sharpe", "max_drawdown")}
        lines.append(
            f"| {f} | {_fmt(ens['total_return'], 'pct')} | {_fmt(ens['sharpe'])} | "
            f"{_fmt(ens['max_drawdown'], 'pct')} | {_fmt(hold[f], 'pct')} | {s.members_ok[f]}/{s.members} |"
        )
    lines += ["", "![Test equity per fold](fold_equity.png)", "", "![Metrics across members](metric_distributions.png)"]
    lines += significance_markdown(s)
    lines += ["", "## Missing or failed tasks", ""]
    lines += [f"- {line}" for line in s.missing] or ["none"]
    lines += validation_markdown(tasks or {})
    lines += ["", "## Training", "", "![Training and validation curves](training_curves.png)", ""]
    return "\n".join(lines)


def significance_markdown(s: Summary) -> list[str]:
    """The baselines section: the verdicts, the numbers behind them, and where the costs went."""
    nan = np.full(s.folds, np.nan)
    random = s.benchmarks.get(RANDOM, {})
    flat = s.benchmarks.get("flat", {})
    lines = [
        "", "## Baselines and significance", "",
        f"The ensemble beats flat at p < {SIGNIFICANCE:g} when 1 - PSR(0) of its net returns is below "
        f"{SIGNIFICANCE:g}, and beats chance when fewer than {SIGNIFICANCE:.0%} of the random policies that "
        "trade as much as it does (same env, same costs) made at least its net return (p_random). The deflated "
        "Sharpe ratio is the PSR against the best Sharpe ratio expected from as many trials without skill as the "
        "run evaluated (every member and ensemble).", "",
    ]  # fmt: skip
    sharpe, psr, p_random = (s.ensemble.get(key, nan) for key in ("sharpe", "psr", "p_random"))
    lines += [f"- {line}" for line in verdicts(sharpe, psr, p_random, s.gaps)]
    lines += ["", "| fold | net return | gross return | flat return | random median return | p (flat) | p (random) "
              "| deflated Sharpe |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    ens = {key: s.ensemble.get(key, nan) for key in ("total_return", "gross_return", "psr", "p_random")}
    dsr = s.ensemble.get("deflated_sharpe", nan)
    for f in range(s.folds):
        lines.append(
            f"| {f} | {_fmt(ens['total_return'][f], 'pct')} | {_fmt(ens['gross_return'][f], 'pct')} | "
            f"{_fmt(flat.get('total_return', nan)[f], 'pct')} | {_fmt(random.get('total_return', nan)[f], 'pct')} | "
            f"{_fmt(1.0 - ens['psr'][f], 'prob')} | {_fmt(ens['p_random'][f], 'prob')} | {_fmt(dsr[f], 'prob')} |"
        )
    if s.costs:
        names = [name for name in COST_COMPONENTS if name in s.costs]
        lines += ["", "Costs of the ensemble, annualized share of equity (they sum to the cost drag):", ""]
        lines += ["| fold | " + " | ".join(names) + " | cost drag | turnover |"]
        lines += ["| ---: |" + " ---: |" * (len(names) + 2)]
        drag, turnover = s.ensemble.get("cost_drag", nan), s.ensemble.get("turnover", nan)
        for f in range(s.folds):
            cells = [_fmt(s.costs[name][f], "pct") for name in names]
            lines.append(f"| {f} | {' | '.join(cells)} | {_fmt(drag[f], 'pct')} | {_fmt(turnover[f])} |")
    return lines


def write_report(run_dir: Path) -> list[Path]:
    """Write the plots and ``summary.md`` under ``run_dir/report``; return their paths."""
    layout = RunLayout(Path(run_dir))
    if not layout.summary.exists():
        raise PloutosError(f"{layout.summary} not found; run `ploutos aggregate {layout.root}` first")
    s = read_summary(layout.summary)
    tasks = {
        (f, m): _read_task(layout.result(f, None if m < 0 else m)) for f in range(s.folds) for m in range(-1, s.members)
    }
    out = layout.root / "report"
    out.mkdir(exist_ok=True)
    paths = [
        plot_oos(s, out / "oos_equity.png"),
        plot_folds(s, tasks, out / "fold_equity.png"),
        plot_distributions(s, out / "metric_distributions.png"),
        plot_training(s, tasks, out / "training_curves.png"),
    ]
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(s, tasks))
    return [*paths, out / "summary.md"]
