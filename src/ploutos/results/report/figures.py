"""The stitched out-of-sample views: equity with its drawdown, rolling Sharpe ratio, positions and trading.

Each function builds and returns a ``Figure`` (the tests read its axes' lines and legends); the
caller saves it with :func:`ploutos.results.report.style.save`. Lines carry a ``gid`` naming the
series they draw (``ensemble``, ``buy_and_hold``, ...), so that a reader of the figure finds them
without relying on drawing order.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from ploutos.results.report.data import Exposure, Summary, rolling_sharpe, stitched_returns, underwater
from ploutos.results.report.style import (
    ENSEMBLE,
    FLAT,
    benchmark_lines,
    broken,
    dates,
    fold_marks,
    no_data,
)


def _missing(s: Summary) -> str:
    return f"; missing folds {', '.join(map(str, s.gaps))}" if s.gaps else ""


def oos_figure(s: Summary, assets: int) -> Figure:
    """Stitched out-of-sample equity of the ensemble and the baselines (top) and the ensemble's drawdown
    from its running peak (bottom), with the folds marked on both."""
    fig = Figure(figsize=(10, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    present = s.folds_present
    fig.suptitle(f"{s.run}: stitched out-of-sample equity, {len(present)}/{s.folds} folds{_missing(s)}", fontsize=11)
    if not present:
        no_data(top, "no out-of-sample data")
        no_data(bottom, "")
        return fig
    x, y = broken(s.oos_time, s.oos["ensemble"], s.oos_fold)
    top.plot(x, y, color=ENSEMBLE, lw=1.6, label="ensemble", gid="ensemble", zorder=3)
    for key, label, color in benchmark_lines(s.oos.get("buy_and_hold"), s.oos.get("equal_weight"), assets):
        x, y = broken(s.oos_time, s.oos[key], s.oos_fold)
        top.plot(x, y, color=color, lw=1.0, label=label, gid=key)
    top.axhline(1.0, color=FLAT, lw=0.9, ls=(0, (1, 2)), label="flat (never trades)", gid="flat")
    top.set_ylabel("equity (start = 1)")
    # above the axes, where no curve can run under it; the drawdown panel's lines share these colours
    top.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=4, fontsize=8, frameon=False)
    fold_marks(top, s)
    drawdown = underwater(s.oos["ensemble"])
    x, y = broken(s.oos_time, drawdown, s.oos_fold)
    bottom.fill_between(x, y, 0.0, color=ENSEMBLE, alpha=0.3, lw=0)
    bottom.plot(x, y, color=ENSEMBLE, lw=0.9, label="ensemble", gid="underwater")
    hold = benchmark_lines(s.oos.get("buy_and_hold"), None, assets)
    for key, label, color in hold:
        x, y = broken(s.oos_time, underwater(s.oos[key]), s.oos_fold)
        bottom.plot(x, y, color=color, lw=0.8, alpha=0.8, label=label, gid=f"underwater_{key}")
    bottom.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    bottom.set_ylabel("drawdown", fontsize=9)
    fold_marks(bottom, s, labels=False)
    dates(bottom, s.oos_time, fontsize=9)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.9, bottom=0.09, hspace=0.06)
    return fig


def rolling_figure(s: Summary, window: int, assets: int) -> Figure:
    """The annualized Sharpe ratio of the last ``window`` bars of the stitched ensemble and of buy and hold,
    with the ensemble's whole-period Sharpe ratio for reference."""
    fig = Figure(figsize=(10, 4.2))
    ax = fig.add_subplot()
    bars = s.bars_per_year
    months = window / bars * 12
    ax.set_title(
        f"rolling Sharpe ratio, {window:,}-bar window (about {months:.1f} months), annualized with {bars:,} bars "
        "a year", fontsize=10, pad=24,
    )  # fmt: skip
    if not s.folds_present:
        no_data(ax, "no out-of-sample data")
        return fig
    hold = benchmark_lines(s.oos.get("buy_and_hold"), s.oos.get("equal_weight"), assets)[0]
    for key, label, color, lw in (("ensemble", "ensemble", ENSEMBLE, 1.4), (*hold, 0.9)):
        r = stitched_returns(s, key)
        x, y = broken(r.time, rolling_sharpe(r, window, bars), r.fold)
        ax.plot(x, y, color=color, lw=lw, label=label, gid=key)
    whole = s.oos_metrics.get("ensemble", {}).get("sharpe", math.nan)
    if math.isfinite(whole):
        ax.axhline(whole, color=ENSEMBLE, lw=0.8, ls="--", label=f"ensemble, whole period ({whole:.2f})", gid="whole")
    ax.axhline(0.0, color="0.5", lw=0.6)
    ax.set_ylabel("Sharpe ratio (annualized)", fontsize=9)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=3, fontsize=8, frameon=False)
    fold_marks(ax, s)
    ax.set_xlim(s.oos_time[0], s.oos_time[-1])  # the first window's bars stay in view, empty until it fills
    dates(ax, s.oos_time, fontsize=9)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.83, bottom=0.16)
    return fig


def exposure_figure(s: Summary, ex: Exposure) -> Figure:
    """Each fold ensemble's weight per asset (and gross exposure with several assets), its turnover and
    the share of equity it paid in costs, both summed from the first test bar on."""
    fig = Figure(figsize=(10, 7))
    axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1.6, 1, 1]})
    fig.suptitle(f"{s.run}: the ensembles' positions, turnover and costs over the test windows", fontsize=11)
    if not ex.folds:
        for ax in axes:
            no_data(ax, "no ensemble task file")
        return fig
    weights, turnover, costs = axes
    several = len(ex.tickers) > 1
    for i, (time, w) in enumerate(zip(ex.time, ex.weights, strict=True)):
        first = i == 0
        for a, ticker in enumerate(ex.tickers):
            weights.plot(time, w[:, a], drawstyle="steps-post", color=f"C{a % 10}", lw=1.0,
                         label=ticker if first else None, gid=f"weight_{ticker}")  # fmt: skip
        if several:
            weights.plot(time, np.abs(w).sum(axis=1), drawstyle="steps-post", color="k", lw=0.8, ls="--",
                         label="gross (sum of |weight|)" if first else None, gid="gross")  # fmt: skip
        turnover.plot(ex.step_time[i], ex.turnover[i], color=ENSEMBLE, lw=1.2, gid="turnover")
        costs.plot(ex.step_time[i], ex.cost_share[i], color="C3", lw=1.2, gid="costs")
    weights.axhline(0.0, color="0.5", lw=0.6)
    weights.set_ylabel("weight of equity", fontsize=9)
    weights.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=min(len(ex.tickers) + several, 8), fontsize=8,
                   frameon=False)  # fmt: skip
    turnover.set_ylabel("turnover, summed\n(x equity)", fontsize=9)
    costs.set_ylabel("costs, summed\n(share of equity)", fontsize=9)
    costs.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=2))
    for ax in axes:
        fold_marks(ax, s, labels=ax is weights)
    dates(costs, np.concatenate(ex.time), fontsize=9)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.91, bottom=0.08, hspace=0.08)
    return fig
