"""The engine's fast path: the registry's features as compiled passes over numpy columns.

Why: evaluated as Polars expressions, the 118 features took 2-2.5 x TA-Lib's time for its 91
outputs (issue 17): ~90 kernels and ~30 logarithms each crossed into Python and back, and every
intermediate became a column. Here every per-ticker feature of the registry, the clock's and the
cross-asset ones is written straight into its row of one ``(features, bars)`` array by the
compiled families of :mod:`.families`, on a pool of threads (numba releases the GIL), and the
rows become Arrow arrays over that memory with a validity bitmap of the finite values: no copy.

The registry stays the definition of each feature (its expression, evaluated alone, is what
``tests/test_features_fused.py`` compares every column with); this module is how the engine
computes it. A feature the compiled path does not know (a macro series') goes through Polars.

Phases, each waiting for the one before: (1) shared inputs (logs of the prices, true range...)
in cuts of rows, and the timestamps' order; (2) the families per run of tickers (longest first),
the clock, and the cross-section per run of timestamps; (3) the ratios of two windows' SMAs;
(4) the validity bitmaps.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
from numba import njit

from ploutos.features import families as fam
from ploutos.features.clock import CLOCK_FEATURES, clock_features
from ploutos.features.cross import cross_sections
from ploutos.features.registry import (
    CROSS_HORIZONS,
    FLOW_WINDOWS,
    LEVEL_WINDOWS,
    RETURN_HORIZONS,
    ROC_WINDOWS,
    RSI_WINDOWS,
)

GROUP_BARS = 100_000
"""Bars per family task (a group of whole tickers; more when one ticker has more)."""


@dataclass(frozen=True)
class FusedSet:
    """Which features :func:`run` writes: a value, so the engine's plan can cache it."""

    windows: tuple[int, ...]
    """The trend and volatility windows, sorted and distinct."""
    zone: str | None = None
    """The clock's features on this zone's clock; None: not computed here."""
    cross: bool = False
    """The cross-asset features (2+ tickers)."""

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        """Every output row's name, in order."""
        names = [*fam.RAW, *fam.CANDLE, *fam.RETURNS, *fam.MOMENTUM, *fam.TREND, *fam.RANGE, *fam.FLOW]
        names += [f"{name}_{n}" for n in self.windows for name in fam.WINDOW_OUTPUTS]
        names += [f"sma_{fast}_{slow}" for fast, slow in zip(self.windows, self.windows[1:], strict=False)]
        if self.zone is not None:
            names += CLOCK_FEATURES
        if self.cross:
            names += [f"{kind}_ret_{n}" for n in CROSS_HORIZONS for kind in ("excess", "rank")]
        return tuple(names)

    def row(self, name: str) -> int:
        """Where ``name`` is in the output."""
        return self.names.index(name)


@dataclass(frozen=True)
class Columns:
    """:func:`run`'s output: a row per name, NaN where not finite, and the Arrow validity of each row."""

    names: tuple[str, ...]
    values: np.ndarray
    bits: np.ndarray
    """A bit per value, set where finite (least significant bit first)."""
    missing: np.ndarray
    """Non-finite values per row."""

    def frame(self, names: Sequence[str]) -> pl.DataFrame:
        """The rows ``names``, in that order, as a Polars frame over this memory (Polars keeps a
        reference): no copy, no pass for the nulls, one hand-over for every column."""
        size, arrays, where = self.values.shape[1], [], {name: j for j, name in enumerate(self.names)}
        for name in names:
            j = where[name]
            nulls = int(self.missing[j])
            validity = pa.py_buffer(self.bits[j]) if nulls else None
            data = pa.py_buffer(self.values[j])
            arrays.append(pa.Array.from_buffers(pa.float64(), size, [validity, data], null_count=nulls))
        batch = pa.RecordBatch.from_arrays(arrays, names=list(names))
        return pl.DataFrame(pl.from_arrow(batch, rechunk=False))


PRICE_CEILING = 1e100
"""Prices and volumes below this (and prices above 0, volumes at or above it) keep every sum and
square of the compiled features finite."""


@njit(cache=True, nogil=True)
def regular_bars(bars: tuple[np.ndarray, ...], r0: int, r1: int) -> bool:
    """Whether rows ``r0..r1`` of the bars are all finite, with prices in (0, :data:`PRICE_CEILING`)
    and volumes in [0, :data:`PRICE_CEILING`): then every compiled feature, once a ticker's first
    value of it is finite, stays finite (each division by something that can be 0 is guarded, each
    log is of a positive ratio), and its nulls are its warm-up."""
    o, h, lo, c, v = bars
    for i in range(r0, r1):
        prices = (0.0 < o[i] < PRICE_CEILING) and (0.0 < h[i] < PRICE_CEILING)  # NaN never is
        prices = prices and (0.0 < lo[i] < PRICE_CEILING) and (0.0 < c[i] < PRICE_CEILING)
        if not (prices and 0.0 <= v[i] < PRICE_CEILING):
            return False
    return True


@njit(cache=True, nogil=True)
def validity(  # noqa: PLR0913 - flat, as a compiled kernel takes them
    out: np.ndarray, j0: int, j1: int, bounds: np.ndarray, regular: bool, bits: np.ndarray, missing: np.ndarray
) -> None:
    """Rows ``j0..j1``: the Arrow validity bitmap of the finite values (least significant bit
    first) and the count of the others. From :func:`regular_bars` a row's nulls are each ticker's
    leading run of non-finite values, found without reading the rest (a pass over every value
    reads the array from memory again: 40 ms over 15 x 50k bars); otherwise every value is read."""
    size = out.shape[1]
    for j in range(j0, j1):
        row = out[j]
        if regular:
            bits[j, :] = 255
            count = 0
            for k in range(bounds.shape[0] - 1):
                i = bounds[k]
                while i < bounds[k + 1] and row[i] - row[i] != 0.0:  # x - x is NaN unless x is finite
                    bits[j, i >> 3] &= ~(1 << (i & 7))
                    i += 1
                count += i - bounds[k]
            missing[j] = count
            continue
        count = 0
        for byte in range(bits.shape[1]):
            value = 0
            for bit in range(min(8, size - byte * 8)):
                if row[byte * 8 + bit] - row[byte * 8 + bit] == 0.0:
                    value |= 1 << bit
                else:
                    count += 1
            bits[j, byte] = value
        missing[j] = count


def _pool(threads: int) -> ThreadPoolExecutor:
    """The feature threads, made once per process: a forked child inherits the pool's bookkeeping but
    not its threads, and would wait forever on its tasks."""
    return _pool_of(threads, os.getpid())


@functools.lru_cache(maxsize=4)
def _pool_of(threads: int, pid: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ploutos-features")


def _run_all(pool: ThreadPoolExecutor | None, calls: Sequence[Callable[[], object]]) -> list[object]:
    if pool is None:
        return [call() for call in calls]
    futures: list[Future[object]] = [pool.submit(call) for call in calls]
    return [future.result() for future in futures]


def _read_only(x: np.ndarray) -> np.ndarray:
    view = x.view()
    view.flags.writeable = False
    return view


def _cuts(size: int, parts: int) -> list[tuple[int, int]]:
    """``0..size`` in ``parts`` runs of about equal length."""
    edges = np.linspace(0, size, max(parts, 1) + 1).astype(np.int64)
    return [(int(r0), int(r1)) for r0, r1 in zip(edges, edges[1:], strict=False) if r1 > r0]


def _groups(bounds: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Tickers ``0..K`` cut into at most ``parts`` runs of about equal bars."""
    tickers = bounds.shape[0] - 1
    if parts <= 1 or tickers <= 1:
        return [(0, tickers)]
    cuts = np.searchsorted(bounds, np.linspace(0, bounds[-1], parts + 1)[1:-1])
    edges = sorted({0, tickers, *(int(k) for k in cuts if 0 < k < tickers)})
    return list(zip(edges, edges[1:], strict=False))


def run(  # noqa: PLR0913 - the bars as arrays, and what to compute
    wanted: FusedSet,
    bars: tuple[np.ndarray, ...],
    rows: np.ndarray,
    bounds: np.ndarray,
    stamps: np.ndarray | None = None,
    per_second: int = 10**6,
    threads: int = 1,
) -> Columns:
    """Every feature of ``wanted`` for tickers stored one after another.

    ``bars``: contiguous float64 arrays of open, high, low, close and volume, each ticker's bars
    in time order, ticker after ticker from the offsets ``bounds`` (``bounds[-1]`` is the end);
    ``rows`` each bar's number inside its ticker; ``stamps`` the UTC timestamps as integers,
    ``per_second`` of them a second (needed for the clock and the cross-section).
    """
    if stamps is None and (wanted.zone is not None or wanted.cross):
        raise ValueError("the clock's and the cross-asset features need the timestamps")
    # Read-only views: one compiled signature whatever the caller passes (Polars' arrays are read-only,
    # copies are not), so no process compiles a second one.
    bars = tuple(_read_only(np.ascontiguousarray(x, dtype=np.float64)) for x in bars)
    rows, bounds = _read_only(np.ascontiguousarray(rows, dtype=np.int64)), _read_only(np.asarray(bounds, np.int64))
    if stamps is not None:
        stamps = _read_only(np.ascontiguousarray(stamps, dtype=np.int64))
    size = bars[0].shape[0]
    names = wanted.names
    out = np.empty((len(names), size))
    raw = out[: len(fam.RAW)]
    base = np.empty((fam.N_BASES, size))
    log_sma = np.empty((len(wanted.windows), size))
    pool = _pool(threads) if threads > 1 else None
    parts = threads if pool else 1
    # Families run per group of tickers of about GROUP_BARS bars: the threads share the work evenly.
    row_cuts, groups = _cuts(size, parts), _groups(bounds, max(parts, round(size / GROUP_BARS)))

    def at(name: str) -> np.ndarray:
        return out[wanted.row(name) :]

    # Phase 1: shared inputs and whether the bars are regular (in the same pass over them), the
    # timestamps' order.
    candle = at(fam.CANDLE[0])

    def shared(r0: int, r1: int) -> bool:
        fam.bases(bars, rows, r0, r1, base, candle)
        return regular_bars(bars, r0, r1)

    calls: list[Callable[[], object]] = [lambda r0=r0, r1=r1: shared(r0, r1) for r0, r1 in row_cuts]
    if wanted.cross:
        calls.append(lambda: np.argsort(stamps, kind="stable"))  # numpy sorts without the GIL
    done = _run_all(pool, calls)
    regular = all(done[: len(row_cuts)])

    # Phase 2: the families per run of tickers, the clock, the cross-section per run of timestamps.
    horizons, rsi, roc = np.asarray(RETURN_HORIZONS), np.asarray(RSI_WINDOWS), np.asarray(ROC_WINDOWS)
    levels, flow_windows = np.asarray(LEVEL_WINDOWS), np.asarray(FLOW_WINDOWS)
    returns, momentum, trend = at(fam.RETURNS[0]), at(fam.MOMENTUM[0]), at(fam.TREND[0])
    ranges, flows = at(fam.RANGE[0]), at(fam.FLOW[0])
    calls = []
    for k0, k1 in groups:
        # The longest families first, the shortest last: the pool's threads end together.
        calls += [
            lambda k0=k0, k1=k1: fam.range_family(bars, base, bounds, k0, k1, levels, ranges, raw),
            lambda k0=k0, k1=k1: fam.flow_family(bars, base, bounds, k0, k1, flow_windows, flows, raw),
        ]
        calls += [
            lambda k0=k0, k1=k1, j=j, n=n: fam.window_family(
                bars, base, bounds, k0, k1, n, out, wanted.row(f"{fam.WINDOW_OUTPUTS[0]}_{n}"), log_sma[j]
            )
            for j, n in enumerate(wanted.windows)
        ]
        calls += [
            lambda k0=k0, k1=k1: fam.momentum_family(bars, bounds, k0, k1, rsi, roc, momentum, raw),
            lambda k0=k0, k1=k1: fam.trend_family(bars, base, bounds, k0, k1, trend, raw),
            lambda k0=k0, k1=k1: fam.returns_family(base, bounds, k0, k1, horizons, returns),
        ]
    if wanted.zone is not None:
        clock, zone = at(CLOCK_FEATURES[0]), wanted.zone
        calls.append(lambda: clock_features(stamps // per_second, zone, clock))
    if wanted.cross:
        order, cross_row = done[-1], wanted.row(f"excess_ret_{CROSS_HORIZONS[0]}")
        cross = out[cross_row : cross_row + 2 * len(CROSS_HORIZONS)]
        cross[:] = np.nan
        excess, ranks = cross[0::2], cross[1::2]
        log_close, cross_horizons = base[fam.B_LOG_CLOSE], np.asarray(CROSS_HORIZONS)
        calls += [
            lambda p0=p0, p1=p1: cross_sections(stamps, order, p0, p1, log_close, rows, cross_horizons, excess, ranks)
            for p0, p1 in row_cuts
        ]
    _run_all(pool, calls)

    # Phase 3: the ratios of two windows' SMAs.
    if len(wanted.windows) > 1:
        ratios = wanted.row(f"sma_{wanted.windows[0]}_{wanted.windows[1]}")
        _run_all(pool, [lambda r0=r0, r1=r1: fam.sma_ratios(log_sma, r0, r1, out, ratios) for r0, r1 in row_cuts])

    # Phase 4: the validity bitmaps.
    bits = np.empty((len(names), (size + 7) // 8), dtype=np.uint8)
    missing = np.empty(len(names), dtype=np.int64)
    _run_all(
        pool,
        [
            lambda j0=j0, j1=j1: validity(out, j0, j1, bounds, regular, bits, missing)
            for j0, j1 in _cuts(len(names), parts)
        ],
    )
    return Columns(names, out, bits, missing)
