"""The per-fold views: each fold's test equity with its members, metrics across members, training curves.

Members keep one colour and line style each (:func:`~ploutos.results.report.style.member_style`)
in every figure, and every figure says which is which in a legend.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from ploutos.results.report.data import Summary, Tasks
from ploutos.results.report.style import (
    ENSEMBLE,
    FLAT,
    HOLD,
    RANDOM_COLOR,
    benchmark_lines,
    dates,
    fold_color,
    member_style,
    no_data,
)

BOXPLOT_FROM = 5
"""Fewer members than this are drawn as points only: a box drawn from two points says nothing."""
DISTRIBUTIONS = (
    ("sharpe", "Sharpe ratio"),
    ("total_return", "total return"),
    ("max_drawdown", "max drawdown"),
    ("psr", "PSR (probability that Sharpe > 0)"),
)
TRAINING_PANELS = ("ep_rew_mean", "value_loss", "validation_score")
"""The training plot's panels, top to bottom: two of SB3's training curves, then the validation curve."""
TRAINING_STYLES = ("-", "--", ":", "-.")
"""Line style of each member in the training plot, where colour tells the fold."""
RANDOM_RANGE = (5, 50, 95)
"""Percentiles of the random-turnover seeds' final equity drawn at the end of each fold."""


def _unit(curve: np.ndarray) -> np.ndarray:
    return curve / curve[0]  # every curve starts at 1, so members, ensemble and benchmarks compare directly


def folds_figure(s: Summary, tasks: Tasks, assets: int) -> Figure:
    """One panel per fold: each member's and the ensemble's test equity, the benchmarks, and where the
    random policies with the ensemble's turnover ended (median and 5-95% range of their seeds)."""
    cols = min(max(s.folds, 1), 3)
    rows = -(-max(s.folds, 1) // cols)
    fig = Figure(figsize=(11, 1.2 + 3.3 * rows))
    handles: dict[str, object] = {}
    for fold in range(s.folds):
        ax = fig.add_subplot(rows, cols, fold + 1)
        ens, members = tasks.get((fold, -1)), [tasks.get((fold, m)) for m in range(s.members)]
        absent = ["ensemble"] * (ens is None) + [f"member {m}" for m, t in enumerate(members) if t is None]
        ax.set_title(f"fold {fold}" + (f" (absent: {', '.join(absent)})" if absent else ""), fontsize=9)
        present = [t for t in members if t is not None]
        if ens is None and not present:
            no_data(ax, "no task files")
            continue
        for t in present:
            handles[f"member {t.member}"] = ax.plot(t.time, _unit(t.equity), lw=0.9, alpha=0.9,
                                                    label=f"member {t.member}", gid=f"member{t.member}",
                                                    **member_style(t.member))[0]  # fmt: skip
        source = next((t for t in [ens, *present] if t is not None and t.benchmarks), None)
        if source is not None:
            curves = {key: _unit(curve) for key, curve in source.benchmarks.items() if curve.size}
            for key, label, color in benchmark_lines(curves.get("buy_and_hold"), curves.get("equal_weight"), assets):
                handles[label] = ax.plot(source.time, curves[key], color=color, lw=1.0, ls="--", label=label,
                                         gid=key)[0]  # fmt: skip
        handles["flat"] = ax.axhline(1.0, color=FLAT, lw=0.8, ls=(0, (1, 2)), label="flat", gid="flat")
        if ens is not None:
            handles["ensemble"] = ax.plot(ens.time, _unit(ens.equity), color=ENSEMBLE, lw=1.7, label="ensemble",
                                          gid="ensemble", zorder=3)[0]  # fmt: skip
            if ens.random_returns.size:
                low, mid, high = 1.0 + np.percentile(ens.random_returns, RANDOM_RANGE)
                label = "random, same turnover (median, 5-95%)"
                handles[label] = ax.errorbar([ens.time[-1]], [mid], yerr=[[mid - low], [high - mid]], fmt="o",
                                             color=RANDOM_COLOR, ms=4, capsize=3, label=label)  # fmt: skip
        ax.tick_params(labelsize=7)
        times = (ens or present[0]).time
        dates(ax, times, fontsize=7)
        ax.set_xlim(times[0], times[-1] + (times[-1] - times[0]) * 0.04)  # room for the random range at the end
    legend_rows = 0
    if handles:
        order = sorted(handles, key=lambda k: (not k.startswith("member"), k != "ensemble", k))
        ncols = len(order) if len(order) <= 6 else 4
        legend_rows = -(-len(order) // ncols)
        fig.legend([handles[k] for k in order], order, loc="lower center", ncols=ncols, fontsize=8, frameon=False)
    fig.suptitle(f"{s.run}: test equity per fold (each curve starts at 1)", fontsize=11)
    height = fig.get_figheight()  # margins in inches: the legend and the last row's date label need their room
    fig.subplots_adjust(left=0.06, right=0.98, top=1 - 0.6 / height, bottom=(0.55 + 0.22 * legend_rows) / height,
                        hspace=0.55, wspace=0.2)  # fmt: skip
    return fig


def distributions_figure(s: Summary, tasks: Tasks) -> Figure:
    """Four metrics per fold: every member as a point in its colour (and a box from five members on),
    the ensemble with its 95% bootstrap interval, and buy and hold."""
    fig = Figure(figsize=(10, 6.5))
    nan, folds = np.full(s.folds, np.nan), np.arange(s.folds)
    offsets = (np.arange(s.members) - (s.members - 1) / 2) * min(0.1, 0.5 / max(s.members, 1)) - 0.12
    handles: dict[str, object] = {}
    for i, (key, label) in enumerate(DISTRIBUTIONS):
        ax = fig.add_subplot(2, 2, i + 1)
        values = s.metrics.get(key, np.full((s.folds, s.members), np.nan))
        if s.members >= BOXPLOT_FROM:
            data = [(f, row[np.isfinite(row)]) for f, row in enumerate(values) if np.isfinite(row).any()]
            if data:  # manage_ticks off: the fold ticks must stay where the folds are
                ax.boxplot([row for _, row in data], positions=[f - 0.12 for f, _ in data], widths=0.4,
                           showfliers=False, manage_ticks=False, medianprops={"color": "0.2"})  # fmt: skip
        for m in range(s.members):
            handles[f"member {m}"] = ax.scatter(folds + offsets[m], values[:, m], s=16, zorder=3,
                                                color=member_style(m)["color"], label=f"member {m}",
                                                gid=f"member{m}")  # fmt: skip
        for f in folds[~np.isfinite(values).any(axis=1)] if values.size else folds:
            ax.text(f, 0.5, "no data", transform=ax.get_xaxis_transform(), ha="center", color="red", fontsize=8)
        ens = s.ensemble.get(key, nan)
        low, high = nan.copy(), nan.copy()
        for f in folds:
            task = tasks.get((int(f), -1))
            if task is not None and key in task.bootstrap:
                low[f], high[f] = task.bootstrap[key]
        has = np.isfinite(low) & np.isfinite(ens)
        ax.errorbar(folds[has] + 0.22, ens[has], yerr=[ens[has] - low[has], high[has] - ens[has]], fmt="none",
                    ecolor=ENSEMBLE, elinewidth=1.0, capsize=3, label="_bootstrap")  # fmt: skip
        handles["ensemble (95% bootstrap interval)"] = ax.scatter(
            folds + 0.22, ens, marker="D", s=28, color=ENSEMBLE, zorder=4, gid="ensemble",
            label="ensemble (95% bootstrap interval)")  # fmt: skip
        hold = s.benchmarks.get("buy_and_hold", {}).get(key, nan)
        handles["buy and hold"] = ax.scatter(folds + 0.22, hold, marker="_", s=220, color=HOLD, zorder=4,
                                             gid="buy_and_hold", label="buy and hold")  # fmt: skip
        ax.set_xticks(folds, [str(f) for f in folds])
        ax.set_xlim(-0.6, s.folds - 0.4)
        ax.set_title(label, fontsize=10)
        ax.tick_params(labelsize=8)
        if key in ("total_return", "max_drawdown"):
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncols=min(len(handles), 5), fontsize=8)
    fig.supxlabel("fold", fontsize=9, y=0.085)
    shown = "points" if s.members < BOXPLOT_FROM else "a box and points"
    fig.suptitle(f"{s.run}: metrics of each fold's {s.members} member(s) ({shown}) and ensemble", fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.91, bottom=0.16, hspace=0.32, wspace=0.2)
    return fig


def training_figure(s: Summary, tasks: Tasks) -> Figure:
    """SB3's mean episode reward and value loss, then the validation score at every checkpoint (the kept
    one circled): colour by fold, line style by member, one legend for each."""
    fig = Figure(figsize=(10, 8.5))
    axes = fig.subplots(3, 1, sharex=True)
    folds, members = set(), set()
    for (fold, member), t in sorted(tasks.items()):
        if member < 0 or t is None:
            continue
        for ax, key in zip(axes, TRAINING_PANELS, strict=True):
            curve = t.validation if key == "validation_score" else t.training
            steps, values = curve.get("timesteps"), curve.get("score" if key == "validation_score" else key)
            if steps is None or values is None or len(values) != len(steps) or not len(steps):
                continue
            ax.plot(steps, values, color=fold_color(fold), ls=TRAINING_STYLES[member % len(TRAINING_STYLES)], lw=0.9,
                    marker="." if key == "validation_score" else None, gid=f"fold{fold}_member{member}")  # fmt: skip
            folds.add(fold)
            members.add(member)
            if key == "validation_score" and t.chosen_timesteps is not None:
                kept = np.flatnonzero(steps == t.chosen_timesteps)
                ax.scatter(steps[kept], values[kept], s=50, facecolors="none", edgecolors=fold_color(fold), zorder=3)
    for ax, key in zip(axes, TRAINING_PANELS, strict=True):
        ax.set_ylabel("validation score\n(kept: circled)" if key == "validation_score" else key, fontsize=9)
    if folds:
        handles = [Line2D([], [], color=fold_color(f), lw=1.5) for f in sorted(folds)]
        handles += [
            Line2D([], [], color="0.3", ls=TRAINING_STYLES[m % len(TRAINING_STYLES)], lw=1.2) for m in sorted(members)
        ]
        labels = [f"fold {f}" for f in sorted(folds)] + [f"member {m}" for m in sorted(members)]
        fig.legend(handles, labels, loc="lower center", ncols=min(len(labels), 8), fontsize=8)
    else:
        axes[0].text(0.5, 0.5, "no member task files with a training curve", transform=axes[0].transAxes,
                     ha="center")  # fmt: skip
    axes[0].set_title(f"{s.run}: training and validation curves of every member task file present", fontsize=11)
    axes[2].set_xlabel("timesteps")
    fig.subplots_adjust(left=0.1, right=0.97, top=0.95, bottom=0.11, hspace=0.12)
    return fig
