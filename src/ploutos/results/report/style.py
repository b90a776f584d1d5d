"""What every figure of the report shares: colours, date axes, fold markers, the benchmark lines, saving.

Figures use matplotlib's object API (``Figure``) and never pyplot: pyplot keeps global figure state
and picks a GUI backend, while ``Figure.savefig`` renders PNG with Agg and needs no display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from ploutos.files import atomic_path
from ploutos.results.report.data import Summary

DPI = 100
ENSEMBLE, HOLD, EQUAL, FLAT, RANDOM_COLOR = "C0", "C1", "C2", "0.35", "C7"
_MEMBER_COLORS = ("C4", "C5", "C6", "C8", "C9", "C3")
_MEMBER_STYLES = ("-", "--", ":", "-.")


def member_style(member: int) -> dict[str, str]:
    """Colour and line style of member ``member``, the same in every figure and every fold: six colours,
    then the line style changes, so that ten or twenty members stay apart."""
    return {
        "color": _MEMBER_COLORS[member % len(_MEMBER_COLORS)],
        "linestyle": _MEMBER_STYLES[(member // len(_MEMBER_COLORS)) % len(_MEMBER_STYLES)],
    }


def fold_color(fold: int) -> str:
    return f"C{fold % 10}"


def span(times: np.ndarray) -> str:
    """``2017-07-01 to 2017-09-01``: the dates an axis covers, so that no tick label has to carry the year."""
    first, last = (np.datetime_as_string(t, unit="D") for t in (times.min(), times.max()))
    return first if first == last else f"{first} to {last}"


def dates(ax: Axes, times: np.ndarray | None = None, *, fontsize: float = 8) -> None:
    """Concise date ticks without the offset text (it names the last tick's month: "2017-Sep" under a
    July-September panel); the span of ``times`` goes in the x label instead."""
    locator = AutoDateLocator(minticks=3, maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, show_offset=False))
    if times is not None and times.size:
        ax.set_xlabel(span(times), fontsize=fontsize)


def fold_marks(ax: Axes, s: Summary, *, labels: bool = True) -> None:
    """A dotted line where each fold's test window starts, its number at the top, and a red band over
    the hole a missing fold leaves between present ones."""
    present = s.folds_present
    starts = {f: s.oos_time[s.oos_fold == f][0] for f in present}
    ends = {f: s.oos_time[s.oos_fold == f][-1] for f in present}
    for fold in present[1:]:
        ax.axvline(starts[fold], color="0.5", lw=0.8, ls=":", gid="fold_start")
    if labels:
        for fold in present:
            ax.text(starts[fold], 0.98, f" fold {fold}", transform=ax.get_xaxis_transform(), va="top", fontsize=8,
                    color="0.3")  # fmt: skip
    for gap in s.gaps:
        before, after = [f for f in present if f < gap], [f for f in present if f > gap]
        if before and after:
            ax.axvspan(ends[before[-1]], starts[after[0]], color="red", alpha=0.12, lw=0, gid="gap")
            if labels:  # consecutive missing folds share a band: stack their labels
                y = 0.5 - 0.06 * (gap - before[-1] - 1)
                ax.text(ends[before[-1]], y, f" fold {gap} missing", transform=ax.get_xaxis_transform(), color="red",
                        fontsize=8)  # fmt: skip


SAME_CURVE = 1e-4
"""Curves that start at 1 and never differ by more than this are one line: a pixel of a typical plot is
more. (With one asset, equal weight trades only to restore a weight that costs nudged, ~1e-5.)"""


def benchmark_lines(hold: np.ndarray | None, equal: np.ndarray | None, assets: int) -> list[tuple[str, str, str]]:
    """(curve, label, colour) of the benchmark lines to draw, given buy-and-hold's and equal weight's
    values on a scale where 1 is the start (equity over its first value, or 1 + return). When they are
    the same curve (one asset), one line says so, rather than one line hiding the other under two legend
    entries."""
    if hold is None or equal is None:
        named = (("buy_and_hold", "buy and hold", HOLD, hold), ("equal_weight", "equal weight", EQUAL, equal))
        return [(key, label, color) for key, label, color, values in named if values is not None]
    if hold.shape == equal.shape and np.allclose(hold, equal, rtol=0.0, atol=SAME_CURVE, equal_nan=True):
        return [("buy_and_hold", "buy and hold = equal weight" + (" (one asset)" if assets == 1 else ""), HOLD)]
    return [("buy_and_hold", "buy and hold", HOLD), ("equal_weight", "equal weight", EQUAL)]


def broken(times: np.ndarray, values: np.ndarray, fold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``times`` and ``values`` with a NaN point inserted where a fold is missing between two bars, so that
    one line (one legend entry) breaks there instead of drawing across the hole."""
    cut = np.flatnonzero(np.diff(fold) > 1) + 1
    x = np.insert(times, cut, times[cut - 1]) if cut.size else times
    y = np.insert(values.astype(np.float64), cut, np.nan) if cut.size else values
    return x, y


def no_data(ax: Axes, text: str) -> None:
    """Say so, rather than draw an empty axis dated 1970."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="red")
    ax.set(xticks=[], yticks=[])


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG atomically (a rerun replaces the file; a crash leaves the old one)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)  # format given: the temporary name has no .png suffix
    return path
