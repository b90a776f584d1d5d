"""Compiled rolling and recursive kernels behind the indicators' windows.

Why compiled: Polars' own ``rolling_mean``, ``rolling_std`` and ``ewm_mean`` take 5-8 times TA-Lib's
time for the same windows (measured in ``ploutos bench features``), and the feature set runs about
ninety of them. Each kernel here is one pass over a float64 column, in numba, with the GIL
released, so Polars' threads run the columns of a stage side by side. The column may hold many
tickers one after another: a ``rows`` input numbers each bar inside its ticker, and every kernel
starts afresh where it is 0 (:func:`_starts`), so one call serves every ticker.

Conventions, the same for every kernel:

- a missing input is ``NaN`` (a Polars null arrives as ``NaN``; see :func:`as_expr`), and so is a
  non-finite one: an ``inf`` inside a running sum would poison every later window;
- a window's output is ``NaN`` unless all its ``n`` inputs are present, so the warm-up is ``n - 1``
  rows after the input's own, as in TA-Lib; back in Polars a ``NaN`` becomes a null, except
  inside the feature engine, which nulls every non-finite output once, at the end;
- everything depends on earlier rows only, and on the row's position from its ticker's first row
  (the running sums are recomputed from scratch at fixed positions, every :data:`RESYNC` rows, so
  rounding cannot drift across a long column): a prefix of the bars gives bit-identical values.

``cache=True``: the machine code is kept next to this file (or in numba's user cache), so only the
first process on a machine pays the compile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from numba import njit

RESYNC = 4096
"""Running sums are recomputed exactly from their window every this many rows (or every window)."""
STD_RESYNC_WINDOWS = 4
"""The rolling std's reference value and sums are renewed every this many windows (a quarter of the
rows then pays for one extra pass over its window)."""


@njit(cache=True, nogil=True)
def _rolling_mean(x: np.ndarray, out: np.ndarray, n: int, scale: float, root: bool) -> None:
    """``scale * sum(x[i-n+1..i])``: the window's sum (``scale = 1``) or mean (``scale = 1 / n``);
    with ``root``, the square root of that, 0 where it is negative (a root-mean-square volatility).

    A running sum, as TA-Lib keeps one, summed afresh from the window every :data:`RESYNC` rows
    and set to ``n x`` on a window of equal values.
    """
    size = x.shape[0]
    total, last_missing, last_change, countdown, previous = 0.0, -1, 0, max(RESYNC, n), np.nan
    for i in range(size):
        v = x[i]
        present = v - v == 0.0  # finite
        if not present:
            last_missing = i
        last_change = i if previous != v else last_change
        previous = v
        first = i - n + 1
        # What enters minus what leaves, missing as 0: one addition on the running sum per row.
        leaving = x[first - 1] if first > 0 else 0.0
        total += (v if present else 0.0) - (leaving if leaving - leaving == 0.0 else 0.0)
        countdown -= 1
        if first < 0 or last_missing >= first:
            out[i] = np.nan
            continue
        if last_change <= first:  # a constant window, exactly (flat bars: a sum of zeros must be 0, not -1e-20)
            total = v * n
        elif countdown <= 0:  # at fixed rows (the window is full and present): a prefix resyncs alike
            countdown = max(RESYNC, n)
            total = 0.0
            for j in range(first, i + 1):
                total += x[j]
        out[i] = math.sqrt(max(total * scale, 0.0)) if root else total * scale
    return


@njit(cache=True, nogil=True)
def _finite(x: np.ndarray, start: int, stop: int) -> bool:
    """Whether ``x[start:stop]`` is all finite: ``x * 0`` is 0 for a finite x, NaN otherwise, summed
    four at a time (one running sum would wait on each addition)."""
    s0, s1, s2, s3 = 0.0, 0.0, 0.0, 0.0
    i = start
    while i + 4 <= stop:
        s0 += x[i] * 0.0
        s1 += x[i + 1] * 0.0
        s2 += x[i + 2] * 0.0
        s3 += x[i + 3] * 0.0
        i += 4
    while i < stop:
        s0 += x[i] * 0.0
        i += 1
    return (s0 + s1) + (s2 + s3) == 0.0


@njit(cache=True, nogil=True, inline="always")
def _resummed(x: np.ndarray, first: int, last: int, ref: float) -> tuple[float, float]:
    """The sums of ``x - ref`` and of its square over ``x[first..last]``, afresh."""
    s1, s2 = 0.0, 0.0
    for j in range(first, last + 1):
        d = x[j] - ref
        s1 += d
        s2 += d * d
    return s1, s2


@njit(cache=True, nogil=True, inline="always")
def _std_or_zscore(  # noqa: PLR0913 - flat, as a compiled kernel takes them
    v: float, ref: float, s1: float, s2: float, inv_n: float, inv_dof: float, zscore: bool
) -> float:
    """The window's std from its shifted sums, or ``v``'s z-score in it (0 where the std is 0)."""
    std = math.sqrt(max(s2 - s1 * s1 * inv_n, 0.0) * inv_dof)
    if not zscore:
        return std
    return 0.0 if std == 0.0 else (v - ref - s1 * inv_n) / std


@njit(cache=True, nogil=True)
def _present_std(  # noqa: PLR0913 - flat, as a compiled kernel takes them
    x: np.ndarray, out: np.ndarray, n: int, inv_n: float, inv_dof: float, zscore: bool, period: int, countdown: int
) -> None:
    """:func:`_rolling_std` of an all-finite ``x``: the same operations in the same order (so the same
    bits), without the tests for missing values; ``countdown`` says where the first resync falls."""
    size = x.shape[0]
    ref, s1, s2, last_change, previous = x[0] if size else np.nan, 0.0, 0.0, 0, np.nan
    for i in range(size):
        v = x[i]
        last_change = i if previous != v else last_change
        previous = v
        first = i - n + 1
        d = v - ref
        e = x[first - 1] - ref if first > 0 else 0.0
        s1 += d - e
        s2 += d * d - e * e
        countdown -= 1
        if first < 0:
            out[i] = np.nan
            continue
        if last_change <= first:
            out[i] = 0.0
            continue
        if countdown <= 0:
            countdown, ref = period, v
            s1, s2 = _resummed(x, first, i, ref)
        out[i] = _std_or_zscore(v, ref, s1, s2, inv_n, inv_dof, zscore)
    return


@njit(cache=True, nogil=True)
def _rolling_std(x: np.ndarray, out: np.ndarray, n: int, ddof: int, zscore: bool) -> None:
    """Standard deviation of ``x[i-n+1..i]`` with ``ddof``: 0 exactly when the window is constant;
    or, with ``zscore``, ``(x_i - mean) / std`` of that window, 0 where the std is 0.

    Running sums of ``x - ref`` and its square, where ``ref`` is a recent value: the shift keeps
    the sums near the window's spread, so ``sum d^2 - (sum d)^2 / n`` cancels few digits (TA-Lib
    sums ``x`` and ``x^2`` unshifted). Every :data:`STD_RESYNC_WINDOWS` windows (16 rows at least)
    ``ref`` moves to the current value and the sums are taken afresh, so ``x - ref`` stays within a
    few windows' drift: the error relative to the window's variance is about ``eps (drift / std)^2``,
    which matters only for a window of nearly equal values. A window of equal values gives exactly
    0 (indicators test ``std == 0``), not the residue a difference of sums leaves.
    """
    size = x.shape[0]
    if n <= ddof:
        out[:] = np.nan
        return
    inv_n, inv_dof = 1.0 / n, 1.0 / (n - ddof)
    period = max(STD_RESYNC_WINDOWS * n, 16)
    lead = 0
    while lead < size and x[lead] - x[lead] != 0.0:
        lead += 1
    if _finite(x, lead, size):  # the usual case: missing values only ahead (a return's first row)
        out[:lead] = np.nan
        _present_std(x[lead:], out[lead:], n, inv_n, inv_dof, zscore, period, period - lead)
        return
    ref, s1, s2, last_missing, last_change, countdown, previous = np.nan, 0.0, 0.0, -1, 0, period, np.nan
    for i in range(size):
        v = x[i]
        present = v - v == 0.0  # finite
        if not present:
            last_missing = i
        elif ref != ref:  # the first present value
            ref = v
        last_change = i if previous != v else last_change
        previous = v
        first = i - n + 1
        # What enters and what leaves, missing as 0: one addition per running sum and row.
        d = v - ref if present else 0.0
        e = x[first - 1] - ref if first > 0 else 0.0
        e = e if e - e == 0.0 else 0.0
        s1 += d - e
        s2 += d * d - e * e
        countdown -= 1
        if first < 0 or last_missing >= first:
            out[i] = np.nan
            continue
        if last_change <= first:  # every value of the window equals the first
            out[i] = 0.0
            continue
        if countdown <= 0:
            countdown, ref = period, v
            s1, s2 = _resummed(x, first, i, ref)
        out[i] = _std_or_zscore(v, ref, s1, s2, inv_n, inv_dof, zscore)
    return


@njit(cache=True, nogil=True)
def _rolling_extreme(x: np.ndarray, out: np.ndarray, n: int, sign: float) -> None:
    """``max(x[i-n+1..i])`` (``sign = 1``) or its ``min`` (``sign = -1``).

    Van Herk / Gil-Werman: in blocks of ``n`` rows, each row's best value to its block's end
    (one backward pass) and from its block's start (carried forward); a window spans at most two
    blocks, so its best is the better of the two. Three reads per row whatever ``n``, no
    data-dependent rescans (TA-Lib rescans the window whenever its best row leaves it), and
    selects instead of branches (a new high is a coin flip on prices: 4 x faster than branching).
    """
    size = x.shape[0]
    to_end = np.empty(size)
    for start in range(0, size, n):
        best = -np.inf
        for i in range(min(start + n, size) - 1, start - 1, -1):
            v = sign * x[i]
            best = v if v > best else best  # NaN never is
            to_end[i] = best
    since_start, last_missing, block_left = -np.inf, -1, 0
    for i in range(size):
        v = sign * x[i]
        if v - v != 0.0:  # not finite (NaN minus itself is NaN, infinity too)
            last_missing = i
        if block_left == 0:  # row i starts a block (a counter: an integer modulo costs more than the rest)
            since_start, block_left = -np.inf, n
        block_left -= 1
        since_start = v if v > since_start else since_start
        first = i - n + 1
        if first < 0 or last_missing >= first:
            out[i] = np.nan
        else:
            earlier = to_end[first]
            out[i] = sign * (earlier if earlier > since_start else since_start)
    return


@njit(cache=True, nogil=True)
def _seeded_ewm(  # noqa: PLR0913 - the seed's parameters, flat, as a compiled kernel takes them
    x: np.ndarray, out: np.ndarray, alpha: float, offset: int, n: int, seed_row: int, divisor: float
) -> None:
    """EWM (``adjust=False``) seeded like TA-Lib: NaN before ``seed_row``, the seed there, then
    ``y_t = (1 - alpha) y_{t-1} + alpha x_t``.

    The seed is the sum of the present values of ``x[offset : offset + n]`` over ``divisor``, or
    their mean when ``divisor`` is 0. A missing ``x_t`` after the seed gives a missing ``y_t`` and
    leaves the average where it was.
    """
    size = x.shape[0]
    out[:] = np.nan
    if seed_row >= size:
        return
    total, present = 0.0, 0
    for j in range(offset, min(offset + n, size)):
        if math.isfinite(x[j]):
            total += x[j]
            present += 1
    if present == 0:
        return
    y = total / divisor if divisor > 0 else total / present
    out[seed_row] = y
    keep = 1.0 - alpha
    for t in range(seed_row + 1, size):
        v = x[t]
        if math.isfinite(v):
            y = keep * y + alpha * v
            out[t] = y
    return


@njit(cache=True, nogil=True)
def _mean_abs_deviation(x: np.ndarray, center: np.ndarray, out: np.ndarray, n: int) -> None:
    """``mean_k |x[i-k] - center[i]|`` over the last ``n`` rows: CCI's deviation around the current mean."""
    size = x.shape[0]
    out[:] = np.nan
    for i in range(n - 1, size):
        c = center[i]
        if not math.isfinite(c):
            continue
        # Four partial sums: one chain of n additions per row would bound the loop by their latency.
        s0, s1, s2, s3 = 0.0, 0.0, 0.0, 0.0
        j = i - n + 1
        while j + 4 <= i + 1:
            s0 += abs(x[j] - c)
            s1 += abs(x[j + 1] - c)
            s2 += abs(x[j + 2] - c)
            s3 += abs(x[j + 3] - c)
            j += 4
        while j <= i:
            s0 += abs(x[j] - c)
            j += 1
        total = (s0 + s1) + (s2 + s3)
        if math.isfinite(total):
            out[i] = total / n
    return


# One small driver per kernel, the same loop each: a generic driver taking the kernel as an argument
# is recompiled in every process (numba does not reuse its cached code for a function argument:
# measured, 1.6 s per process for a toy one), which would undo ``cache=True``.


@njit(cache=True, nogil=True)
def _starts(rows: np.ndarray) -> np.ndarray:
    """Where each ticker's bars begin: the rows numbered 0 (and the first row), then the end."""
    count = 1
    for i in range(1, rows.shape[0]):
        if rows[i] == 0:
            count += 1
    bounds = np.empty(count + 1, np.int64)
    bounds[0], k = 0, 1
    for i in range(1, rows.shape[0]):
        if rows[i] == 0:
            bounds[k] = i
            k += 1
    bounds[count] = rows.shape[0]
    return bounds


@njit(cache=True, nogil=True)
def rolling_mean(x: np.ndarray, rows: np.ndarray, n: int, scale: float, root: bool) -> np.ndarray:
    """:func:`_rolling_mean` per ticker (``rows``: each bar's row number inside its ticker)."""
    out, bounds = np.empty(x.shape[0]), _starts(rows)
    for k in range(bounds.shape[0] - 1):
        _rolling_mean(x[bounds[k] : bounds[k + 1]], out[bounds[k] : bounds[k + 1]], n, scale, root)
    return out


@njit(cache=True, nogil=True)
def rolling_std(x: np.ndarray, rows: np.ndarray, n: int, ddof: int, zscore: bool) -> np.ndarray:
    """:func:`_rolling_std` per ticker."""
    out, bounds = np.empty(x.shape[0]), _starts(rows)
    for k in range(bounds.shape[0] - 1):
        _rolling_std(x[bounds[k] : bounds[k + 1]], out[bounds[k] : bounds[k + 1]], n, ddof, zscore)
    return out


@njit(cache=True, nogil=True)
def rolling_extreme(x: np.ndarray, rows: np.ndarray, n: int, sign: float) -> np.ndarray:
    """:func:`_rolling_extreme` per ticker."""
    out, bounds = np.empty(x.shape[0]), _starts(rows)
    for k in range(bounds.shape[0] - 1):
        _rolling_extreme(x[bounds[k] : bounds[k + 1]], out[bounds[k] : bounds[k + 1]], n, sign)
    return out


@njit(cache=True, nogil=True)
def seeded_ewm(  # noqa: PLR0913 - the seed's parameters, flat, as a compiled kernel takes them
    x: np.ndarray, rows: np.ndarray, alpha: float, offset: int, n: int, seed_row: int, divisor: float
) -> np.ndarray:
    """:func:`_seeded_ewm` per ticker (``offset`` and ``seed_row`` count from each ticker's first bar)."""
    out, bounds = np.empty(x.shape[0]), _starts(rows)
    for k in range(bounds.shape[0] - 1):
        _seeded_ewm(x[bounds[k] : bounds[k + 1]], out[bounds[k] : bounds[k + 1]], alpha, offset, n, seed_row, divisor)
    return out


@njit(cache=True, nogil=True)
def mean_abs_deviation(x: np.ndarray, center: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """:func:`_mean_abs_deviation` per ticker."""
    out, bounds = np.empty(x.shape[0]), _starts(rows)
    for k in range(bounds.shape[0] - 1):
        a, b = bounds[k], bounds[k + 1]
        _mean_abs_deviation(x[a:b], center[a:b], out[a:b], n)
    return out


@njit(cache=True, nogil=True)
def difference(x: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """``x[i] - x[i - k]`` inside each ticker; missing for its first ``k`` bars."""
    out = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        out[i] = x[i] - x[i - k] if rows[i] >= k else np.nan
    return out


@njit(cache=True, nogil=True)
def cumulative_sum(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Running sum per ticker, in row order; a missing value is missing and adds nothing."""
    out, total = np.empty(x.shape[0]), 0.0
    for i in range(x.shape[0]):
        if rows[i] == 0:
            total = 0.0
        if math.isfinite(x[i]):
            total += x[i]
            out[i] = total
        else:
            out[i] = np.nan
    return out


@dataclass(frozen=True)
class _Call:
    """A kernel and its static arguments, as Polars calls it on each batch.

    A plain, comparable value (not a closure): the feature engine deduplicates intermediates by
    the expression's serialized form, which pickles this, so two features asking for the same
    window share one column. ``nulls``: missing values come back as nulls (an indicator on its
    own) or stay ``NaN`` (inside the engine, which nulls every non-finite output at the end and
    saves a pass per column).
    """

    kernel: str
    args: tuple[Any, ...]
    nulls: bool = True

    def __call__(self, columns: list[pl.Series]) -> pl.Series:
        *values, rows = columns
        arrays = [floats(column) for column in values]
        out = _KERNELS[self.kernel](*arrays, rows.cast(pl.Int64).to_numpy(), *self.args)
        return to_series(values[0].name, out, self.nulls)


LOG_DOMAINS = {"log": 0.0, "log1p": -1.0}
"""Each numpy logarithm :class:`Elementwise` applies, and the bound its argument must exceed."""


@dataclass(frozen=True)
class Elementwise:
    """A numpy logarithm of one column (:data:`LOG_DOMAINS`), as Polars calls it.

    Why: Polars' own ``log`` costs 19 ns a value here, numpy's 3. The result is ``NaN`` outside the
    domain (``log`` of 0 included, where numpy says ``-inf``).
    """

    function: str
    nulls: bool = True

    def __call__(self, column: pl.Series) -> pl.Series:
        x = floats(column)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = getattr(np, self.function)(x, out=np.full(x.shape, np.nan), where=x > LOG_DOMAINS[self.function])
        return to_series(column.name, out, self.nulls)


def to_series(name: str, values: np.ndarray, nulls: bool) -> pl.Series:
    """``values`` as a Float64 Series, null where NaN if ``nulls`` (``nan_to_null=True`` costs 4 x
    as much as ``fill_nan``)."""
    found = pl.Series(name, values)
    return found.fill_nan(None) if nulls else found


def floats(column: pl.Series) -> np.ndarray:
    """The column as contiguous float64, nulls as NaN (no copy when it is float64 without nulls)."""
    if column.dtype != pl.Float64:
        column = column.cast(pl.Float64)
    if column.null_count():
        column = column.fill_null(np.nan)  # a vectorized fill, then a view: to_numpy() with nulls is 3 x slower
    return np.ascontiguousarray(column.to_numpy(), dtype=np.float64)


_KERNELS = {
    "rolling_mean": rolling_mean,
    "rolling_std": rolling_std,
    "rolling_extreme": rolling_extreme,
    "seeded_ewm": seeded_ewm,
    "mean_abs_deviation": mean_abs_deviation,
    "cumulative_sum": cumulative_sum,
    "difference": difference,
}


def as_expr(kernel: str, inputs: list[pl.Expr], rows: pl.Expr, *args: Any, nulls: bool = True) -> pl.Expr:
    """``kernel`` over the input columns, per ticker as ``rows`` (each bar's row number inside its
    ticker) delimits them, as one Polars expression (Float64, missing values null if ``nulls``,
    else ``NaN``)."""
    return pl.map_batches([*inputs, rows], _Call(kernel, tuple(args), nulls), return_dtype=pl.Float64)


def elementwise(function: str, x: pl.Expr, *, nulls: bool = True) -> pl.Expr:
    """:class:`Elementwise` ``function`` of ``x`` as a Polars expression."""
    return x.map_batches(Elementwise(function, nulls), return_dtype=pl.Float64, is_elementwise=True)
