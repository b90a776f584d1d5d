"""Cross-asset features: each row against the other tickers at its timestamp, in one compiled pass.

Why not ``.over("timestamp")``: with thousands of timestamps of a few tickers each, Polars' window
over the timestamp costs 0.8 s over 15 x 50k bars, more than TA-Lib needs for every ticker's
indicators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from numba import njit

from ploutos.features.kernels import floats, to_series

INSERTION_SORT_MAX = 32
"""Timestamps with up to this many tickers are sorted by insertion (no allocation), larger ones by numpy."""


@njit(cache=True, nogil=True)
def _sort_together(values: np.ndarray, rows: np.ndarray, count: int) -> None:
    """Sort ``values[:count]`` ascending, ``rows[:count]`` along with them."""
    if count > INSERTION_SORT_MAX:
        order = np.argsort(values[:count])
        sorted_values, sorted_rows = values[:count][order], rows[:count][order]
        values[:count], rows[:count] = sorted_values, sorted_rows
        return
    for i in range(1, count):
        v, row, k = values[i], rows[i], i
        while k > 0 and values[k - 1] > v:
            values[k], rows[k] = values[k - 1], rows[k - 1]
            k -= 1
        values[k], rows[k] = v, row


@njit(cache=True, nogil=True)
def _ranks_of_sorted(values: np.ndarray, rows: np.ndarray, count: int, out: np.ndarray) -> None:
    """``out[rows[k]]``: the average rank of sorted ``values[k]``, scaled to ``[-0.5, 0.5]``."""
    scale = 1.0 / max(count - 1, 1)
    k = 0
    while k < count:  # ties share the average of their ranks
        tie = k
        while tie + 1 < count and values[tie + 1] == values[k]:
            tie += 1
        position = (k + tie) / 2.0
        for j in range(k, tie + 1):
            out[rows[j]] = position * scale - 0.5
        k = tie + 1


@njit(cache=True, nogil=True)
def _excess(values: np.ndarray, rows: np.ndarray, count: int, out: np.ndarray) -> None:
    """``out[rows[k]]``: ``values[k]`` minus the mean of ``values[:count]``."""
    if count == 0:
        return
    mean = 0.0
    for k in range(count):
        mean += values[k]
    mean /= count
    for k in range(count):
        out[rows[k]] = values[k] - mean


@njit(cache=True, nogil=True)
def cross_section(stamps: np.ndarray, order: np.ndarray, x: np.ndarray, rank: bool) -> np.ndarray:
    """Each row's ``x`` against the rows at its timestamp (``order`` sorts ``stamps``).

    ``rank``: the average rank among the present values, scaled to ``[-0.5, 0.5]`` as
    ``(rank - 1) / max(count - 1, 1) - 0.5``; otherwise ``x`` minus their mean. Missing stays missing.
    """
    size = x.shape[0]
    out = np.full(size, np.nan)
    values = np.empty(size)  # one timestamp's present values and their rows, reused for every timestamp
    rows = np.empty(size, np.int64)
    first = 0
    while first < size:
        stamp = stamps[order[first]]
        count = 0
        last = first
        while last < size and stamps[order[last]] == stamp:
            row = order[last]
            if math.isfinite(x[row]):
                values[count], rows[count] = x[row], row
                count += 1
            last += 1
        if rank:
            _sort_together(values, rows, count)
            _ranks_of_sorted(values, rows, count, out)
        else:
            _excess(values, rows, count, out)
        first = last
    return out


@njit(cache=True, nogil=True)
def _merge_sort_together(
    values: np.ndarray, rows: np.ndarray, count: int, spare_values: np.ndarray, spare_rows: np.ndarray
) -> None:
    """Sort ``values[:count]`` ascending, ``rows[:count]`` along with them, stably, in ``spare_*``'s
    room (no allocation: a timestamp of a hundred tickers is sorted 30,000 times over 10k bars)."""
    src_v, src_r, dst_v, dst_r = values, rows, spare_values, spare_rows
    width, in_spare = 1, False
    while width < count:
        for low in range(0, count, 2 * width):
            middle, high = min(low + width, count), min(low + 2 * width, count)
            i, j = low, middle
            for k in range(low, high):
                if j < high and (i >= middle or src_v[j] < src_v[i]):
                    dst_v[k], dst_r[k] = src_v[j], src_r[j]
                    j += 1
                else:
                    dst_v[k], dst_r[k] = src_v[i], src_r[i]
                    i += 1
        src_v, src_r, dst_v, dst_r = dst_v, dst_r, src_v, src_r
        width, in_spare = width * 2, not in_spare
    if in_spare:
        values[:count], rows[:count] = src_v[:count], src_r[:count]


@njit(cache=True, nogil=True)
def _rank_and_excess(  # noqa: PLR0913 - flat, as a compiled kernel takes them
    values: np.ndarray,
    rows: np.ndarray,
    count: int,
    excess: np.ndarray,
    ranks: np.ndarray,
    spare_values: np.ndarray,
    spare_rows: np.ndarray,
) -> None:
    """One timestamp's ``count`` present values (at ``rows``): minus their mean, and their average rank."""
    _excess(values, rows, count, excess)
    scale = 1.0 / max(count - 1, 1)
    if count <= INSERTION_SORT_MAX:
        # The average rank of each value by counting (no sort: a sort's branches are coin flips here):
        # ``less`` values below it and ``equal`` ones tied with it put it at ``less + (equal - 1) / 2``.
        for k in range(count):
            v, less, equal = values[k], 0, 0
            for m in range(count):
                less += 1 if values[m] < v else 0
                equal += 1 if values[m] == v else 0
            ranks[rows[k]] = (2 * less + equal - 1) / 2.0 * scale - 0.5
        return
    _merge_sort_together(values, rows, count, spare_values, spare_rows)
    _ranks_of_sorted(values, rows, count, ranks)


@njit(cache=True, nogil=True)
def cross_sections(  # noqa: PLR0913 - flat, as a compiled kernel takes them
    stamps: np.ndarray,
    order: np.ndarray,
    p0: int,
    p1: int,
    log_close: np.ndarray,
    rows: np.ndarray,
    horizons: np.ndarray,
    excess: np.ndarray,
    ranks: np.ndarray,
) -> None:
    """:func:`cross_section` of each ``horizons[j]``-bar log return (``log_close`` now minus then, in
    the same ticker: ``rows`` numbers each bar inside it), both kinds: ``excess[j]`` and ``ranks[j]``;
    for the timestamps that start at positions ``p0..p1`` of ``order`` (which sorts ``stamps``).
    The rows are grouped by timestamp once for every horizon, and calls over disjoint positions
    run side by side. Rows not written keep what ``excess`` and ``ranks`` held (NaN: missing)."""
    size = order.shape[0]
    values, spare_values = np.empty(64), np.empty(64)
    members, spare_members = np.empty(64, np.int64), np.empty(64, np.int64)
    first = p0
    if first > 0:  # start on a timestamp's first row
        while first < p1 and stamps[order[first]] == stamps[order[first - 1]]:
            first += 1
    while first < p1:
        stamp = stamps[order[first]]
        last = first
        while last < size and stamps[order[last]] == stamp:
            last += 1
        if last - first > values.shape[0]:
            values, spare_values = np.empty(last - first), np.empty(last - first)
            members, spare_members = np.empty(last - first, np.int64), np.empty(last - first, np.int64)
        for j in range(horizons.shape[0]):
            h, count = horizons[j], 0
            for position in range(first, last):
                row = order[position]
                if rows[row] >= h:
                    value = log_close[row] - log_close[row - h]
                    if math.isfinite(value):
                        values[count], members[count] = value, row
                        count += 1
            _rank_and_excess(values, members, count, excess[j], ranks[j], spare_values, spare_members)
        first = last


@dataclass(frozen=True)
class CrossSection:
    """Polars' batch function of :func:`cross_section` over ``[timestamp, order, x]``."""

    rank: bool

    def __call__(self, columns: list[pl.Series]) -> pl.Series:
        stamps, order, x = columns
        out = cross_section(stamps.cast(pl.Int64).to_numpy(), order.cast(pl.Int64).to_numpy(), floats(x), self.rank)
        return to_series(x.name, out, True)
