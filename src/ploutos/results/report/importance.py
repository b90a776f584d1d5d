"""Permutation importance in the report: a ranked chart per fold and a rank map across folds.

Drawn when ``RUN_DIR/importance.h5`` exists (``ploutos importance``); the layout is
:mod:`ploutos.results.importance`.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ploutos.results.importance import FoldImportance
from ploutos.results.report.document import Bullets, Image, Paragraph, Section

TOP = 20
"""Inputs drawn per fold in the ranked chart."""
STABLE_TOP = 10
"""The stability map shows every input in some fold's top ``STABLE_TOP``."""
KIND_COLORS = {"feature": "C0", "asset": "C1", "portfolio": "C2"}


def ranked_figure(folds: list[FoldImportance], top: int = TOP) -> Figure:
    """Per fold, the ``top`` inputs by return drop (mean and 5-95% interval over repeats) beside their
    action change, one row of two panels per fold."""
    rows = max(len(folds), 1)
    height = min(top, max((len(f.names) for f in folds), default=1))
    fig = Figure(figsize=(11, 0.22 * height * rows + 1.2 * rows), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False, sharey="row")
    for (left, right), result in zip(axes, folds, strict=False):
        ranked = result.ranked()[:top]
        names = [name for name, *_ in ranked]
        at = np.arange(len(names))[::-1]
        index = [result.names.index(n) for n in names]
        colors = [KIND_COLORS.get(result.kinds[i], "C7") for i in index]
        mean = np.array([m for _, m, _, _ in ranked]) * 100
        lo = np.array([v for _, _, v, _ in ranked]) * 100
        hi = np.array([v for _, _, _, v in ranked]) * 100
        left.barh(at, mean, color=colors, alpha=0.8)
        left.errorbar(mean, at, xerr=[mean - lo, hi - mean], fmt="none", ecolor="0.2", capsize=2, lw=0.8)
        left.axvline(0, color="0.3", lw=0.6)
        if not np.any(result.return_drop):
            left.text(0.5, 0.5, "no permutation changed the validation return", transform=left.transAxes,
                      ha="center", va="center", fontsize=8, color="0.3")  # fmt: skip
        left.set_yticks(at, names, fontsize=7)
        left.set_xlabel("validation return drop (% points)", fontsize=8)
        left.set_title(
            f"fold {result.fold}: baseline return {result.baseline_return:+.2%}, {result.repeats} repeats, "
            f"block {result.block} bars",
            fontsize=9,
        )
        change = result.action_change[index]
        c_mean = change.mean(axis=1)
        c_lo, c_hi = np.percentile(change, 5, axis=1), np.percentile(change, 95, axis=1)
        right.barh(at, c_mean, color=colors, alpha=0.8)
        right.errorbar(c_mean, at, xerr=[c_mean - c_lo, c_hi - c_mean], fmt="none", ecolor="0.2", capsize=2, lw=0.8)
        right.set_xlabel("action change (mean sum |dw| per step)", fontsize=8)
        right.set_title("change of the target weights", fontsize=9)
        for ax in (left, right):
            ax.tick_params(labelsize=7)
            ax.grid(axis="x", alpha=0.3)
    if folds:
        kinds = [k for k in KIND_COLORS if any(k in r.kinds for r in folds)]
        patches = [Patch(color=KIND_COLORS[k], alpha=0.8, label=k) for k in kinds]
        axes[0][1].legend(handles=patches, fontsize=7, loc="lower right")
    return fig


def stability_figure(folds: list[FoldImportance], top: int = STABLE_TOP) -> Figure:
    """Rank (1 = most important by return drop) of every input in some fold's top ``top``, per fold."""
    chosen: list[str] = []
    for result in folds:
        for name, *_ in result.ranked()[:top]:
            if name not in chosen:
                chosen.append(name)
    ranks = np.full((len(chosen), len(folds)), np.nan)
    for j, result in enumerate(folds):
        order = [name for name, *_ in result.ranked()]
        for i, name in enumerate(chosen):
            if name in order:
                ranks[i, j] = order.index(name) + 1
    mean_rank = np.nanmean(np.where(np.isnan(ranks), np.nanmax(ranks, initial=1) + 1, ranks), axis=1)
    order = np.argsort(mean_rank, kind="stable")
    ranks, chosen = ranks[order], [chosen[i] for i in order]
    fig = Figure(figsize=(max(5.5, 2.2 + 0.9 * len(folds)), 0.25 * len(chosen) + 1.4), layout="constrained")
    ax = fig.subplots()
    shown = np.minimum(ranks, 3 * top)
    image = ax.imshow(shown, cmap="viridis_r", aspect="auto", vmin=1, vmax=3 * top)
    for i in range(len(chosen)):
        for j in range(len(folds)):
            if np.isfinite(ranks[i, j]):
                ax.text(j, i, f"{int(ranks[i, j])}", ha="center", va="center", fontsize=7,
                        color="black" if ranks[i, j] <= top else "white")  # fmt: skip
    ax.set_xticks(range(len(folds)), [f"fold {r.fold}" for r in folds], fontsize=8)
    ax.set_yticks(range(len(chosen)), chosen, fontsize=7)
    ax.set_title(f"Rank by return drop (ties: action change) of any fold's top {top}", fontsize=9)
    fig.colorbar(image, ax=ax, label=f"rank (capped at {3 * top})", shrink=0.8)
    return fig


def importance_section(folds: list[FoldImportance]) -> Section:
    """The report's importance section: what was permuted, the time per fold, the two figures."""
    lines = [
        f"fold {r.fold}: {r.paths} paths over {r.rows[1] - r.rows[0]:,} validation bars in {r.seconds:.1f} s; top by "
        "return drop: "
        + ", ".join(f"`{name}` {mean:+.2%} [{lo:+.2%}, {hi:+.2%}]" for name, mean, lo, hi in r.ranked()[:3])
        for r in folds
    ]
    text = (
        "Permutation importance on each fold's validation window (`ploutos importance`): every observation feature "
        "(all assets at once), every asset (all its features) and every portfolio-state input is permuted in time by "
        "circular blocks, and the ensemble trades the window again. Return drop: the baseline's total return minus "
        "the permuted path's (bars: mean over repeats, whiskers: 5-95%); action change: the mean per step of "
        "sum |dw| between the target weights asked for."
    )
    return Section(
        "Feature importance",
        "importance",
        [
            Paragraph(text),
            Bullets(lines),
            Image("importance.png", "Permutation importance per fold"),
            Image("importance_stability.png", "Rank of the top inputs across folds"),
        ],
    )
