"""The compiled families of the per-ticker features: what :mod:`.fused` runs on a pool of threads.

Each family is one compiled function over a run of tickers (``bounds[k0]..bounds[k1]``) that writes
its features into rows of one ``(features, bars)`` array: the same kernels as the indicators
(:mod:`.kernels`), and the registry's formulas operation for operation, but for a log ratio,
taken as a difference of logs (one log per window, not per ratio) and a division by a constant,
which Polars turns into a product by its inverse. Missing values are NaN; the driver nulls every
non-finite value at the end.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ploutos.features.kernels import (
    _mean_abs_deviation,
    _rolling_extreme,
    _rolling_mean,
    _rolling_std,
    _seeded_ewm,
)
from ploutos.features.registry import FLOW_WINDOWS, LEVEL_WINDOWS, RETURN_HORIZONS, ROC_WINDOWS, RSI_WINDOWS

NAN = np.nan
LN2 = math.log(2.0)

# Shared inputs, one row each of the ``base`` array (phase 1).
B_LOG_CLOSE, B_LOG_HIGH, B_LOG_LOW, B_RET1, B_LOG_VOLUME, B_HL2, B_GK, B_TRUE_RANGE, B_TYPICAL = range(9)
N_BASES = 9
CANDLE = ("body", "upper_wick", "lower_wick", "range", "gap")
"""Written by phase 1, in this order."""

RAW = (
    "sma_20",
    "ema_20",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_upper_20",
    "bb_middle_20",
    "bb_lower_20",
    "atr_14",
    "natr_14",
    "plus_di_14",
    "minus_di_14",
    "adx_14",
    "cci_20",
    "willr_14",
    "mfi_14",
    "stoch_k",
    "stoch_d",
    "obv",
    "ad",
    "roc_10",
    "mom_10",
)
# Rows of the raw indicators (:data:`RAW`) in the output.
R_SMA_20 = 0
R_EMA_20 = 1
R_RSI_14 = 2
R_MACD = 3
R_MACD_SIGNAL = 4
R_MACD_HIST = 5
R_BB_UPPER_20 = 6
R_BB_MIDDLE_20 = 7
R_BB_LOWER_20 = 8
R_ATR_14 = 9
R_NATR_14 = 10
R_PLUS_DI_14 = 11
R_MINUS_DI_14 = 12
R_ADX_14 = 13
R_CCI_20 = 14
R_WILLR_14 = 15
R_MFI_14 = 16
R_STOCH_K = 17
R_STOCH_D = 18
R_OBV = 19
R_AD = 20
R_ROC_10 = 21
R_MOM_10 = 22

# What each family writes besides its raw indicators, in its rows' order (the driver lays them out).
RETURNS = tuple(f"ret_{n}" for n in RETURN_HORIZONS)
MOMENTUM = (*(f"rsi_{n}_c" for n in RSI_WINDOWS), *(f"roc_{n}_c" for n in ROC_WINDOWS), "mom_10_c")
TREND = ("macd_c", "macd_signal_c", "macd_hist_c", "natr_14_c", "adx_14_c", "di_spread_14")
RANGE = (
    "bb_pctb_20",
    "bb_width_20",
    "cci_20_c",
    "willr_14_c",
    "stoch_k_c",
    "stoch_d_c",
    *(f"to_{side}_{n}" for n in LEVEL_WINDOWS for side in ("high", "low")),
)
FLOW = ("mfi_14_c", *(f"{name}_z_{n}" for n in FLOW_WINDOWS for name in ("obv", "ad")))
WINDOW_OUTPUTS = ("rvol", "parkinson", "garman_klass", "close_sma", "close_ema", "close_z", "volume_z")
"""Per window ``n``: ``{name}_{n}``, in this order."""


# --------------------------------------------------------------------------------------------
# Elementwise helpers (the engine's conventions: NaN for missing, nulled at the end)
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _log(x: float) -> float:
    """ln(x) where x > 0, else NaN (as :class:`~.kernels.Elementwise`)."""
    return math.log(x) if x > 0.0 else NAN


@njit(cache=True, nogil=True)
def _lagged_difference(x: np.ndarray, out: np.ndarray, k: int) -> None:
    for i in range(x.shape[0]):
        out[i] = x[i] - x[i - k] if i >= k else NAN


@njit(cache=True, nogil=True)
def _longest(bounds: np.ndarray, k0: int, k1: int) -> int:
    """The most bars any of tickers ``k0..k1`` has: the length of a family's scratch columns,
    which every ticker reuses (they stay in cache)."""
    return max([bounds[k + 1] - bounds[k] for k in range(k0, k1)])


# --------------------------------------------------------------------------------------------
# Phase 1: shared inputs
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def bases(
    bars: tuple[np.ndarray, ...], rows: np.ndarray, r0: int, r1: int, base: np.ndarray, candle: np.ndarray
) -> None:
    """Rows ``r0..r1`` (any cut: ``rows`` numbers each bar inside its ticker) of the shared inputs
    and of the candle's features (:data:`CANDLE`); ``bars``: open, high, low, close, volume."""
    o, h, lo, c, v = bars[0], bars[1], bars[2], bars[3], bars[4]
    gk_weight = 2.0 * LN2 - 1.0
    previous_log_close = NAN
    for i in range(r0, r1):
        lc, lh, ll, lo_ = _log(c[i]), _log(h[i]), _log(lo[i]), _log(o[i])
        base[B_LOG_CLOSE, i], base[B_LOG_HIGH, i], base[B_LOG_LOW, i] = lc, lh, ll
        base[B_LOG_VOLUME, i] = _log(1.0 + v[i])  # log1p costs twice as much; volumes are not tiny
        hl, co = lh - ll, lc - lo_
        base[B_HL2, i] = hl * hl
        base[B_GK, i] = 0.5 * (hl * hl) - gk_weight * (co * co)
        base[B_TYPICAL, i] = (h[i] + lo[i] + c[i]) / 3.0
        rng = h[i] - lo[i]
        if rng == 0:
            candle[0, i], candle[1, i], candle[2, i] = 0.0, 0.0, 0.0
        else:
            candle[0, i] = (c[i] - o[i]) / rng
            candle[1, i] = (h[i] - max(o[i], c[i])) / rng
            candle[2, i] = (min(o[i], c[i]) - lo[i]) / rng
        candle[3, i] = hl
        if rows[i] == 0:
            base[B_RET1, i], base[B_TRUE_RANGE, i], candle[4, i] = NAN, NAN, NAN
        else:
            if i == r0:  # the cut fell inside a ticker
                previous_log_close = _log(c[i - 1])
            base[B_RET1, i] = lc - previous_log_close
            candle[4, i] = lo_ - previous_log_close
            prev = c[i - 1]
            base[B_TRUE_RANGE, i] = max(h[i], prev) - min(lo[i], prev)
        previous_log_close = lc


@njit(cache=True, nogil=True)
def _running_sum(x: np.ndarray, out: np.ndarray) -> None:
    """As :func:`~.kernels.cumulative_sum` over one ticker: a missing value is missing and adds nothing."""
    total = 0.0
    for i in range(x.shape[0]):
        if math.isfinite(x[i]):
            total += x[i]
            out[i] = total
        else:
            out[i] = NAN


# --------------------------------------------------------------------------------------------
# Phase 2: families, each over tickers k0..k1, writing rows of ``out`` from ``first``
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def window_family(  # noqa: PLR0913 - the family's inputs, flat, as a compiled kernel takes them
    bars: tuple[np.ndarray, ...],
    base: np.ndarray,
    bounds: np.ndarray,
    k0: int,
    k1: int,
    n: int,
    out: np.ndarray,
    first: int,
    log_sma: np.ndarray,
) -> None:
    """:data:`WINDOW_OUTPUTS` at window ``n``, and the log of the window's SMA of the close into
    ``log_sma`` (the SMA ratios' input). Log ratios are differences of logs: a log per window, not
    per ratio."""
    c = bars[3]
    lc = base[B_LOG_CLOSE]
    longest = _longest(bounds, k0, k1)
    sma, ema = np.empty(longest), np.empty(longest)
    park = 1.0 / (n * 4.0 * LN2)
    for k in range(k0, k1):
        a, b = bounds[k], bounds[k + 1]
        _rolling_std(base[B_RET1, a:b], out[first, a:b], n, 1, False)
        _rolling_mean(base[B_HL2, a:b], out[first + 1, a:b], n, park, True)
        _rolling_mean(base[B_GK, a:b], out[first + 2, a:b], n, 1.0 / n, True)
        _rolling_mean(c[a:b], sma[: b - a], n, 1.0 / n, False)
        _seeded_ewm(c[a:b], ema[: b - a], 2.0 / (n + 1), 0, n, n - 1, 0.0)
        for i in range(a, b):
            ls = _log(sma[i - a])
            log_sma[i] = ls
            out[first + 3, i] = lc[i] - ls
            out[first + 4, i] = lc[i] - _log(ema[i - a])
        _rolling_std(c[a:b], out[first + 5, a:b], n, 0, True)
        _rolling_std(base[B_LOG_VOLUME, a:b], out[first + 6, a:b], n, 0, True)


@njit(cache=True, nogil=True)
def sma_ratios(log_sma: np.ndarray, r0: int, r1: int, out: np.ndarray, first: int) -> None:
    """``log(SMA_fast / SMA_slow)`` for each adjacent pair of windows, rows ``r0..r1`` (phase 3)."""
    for j in range(log_sma.shape[0] - 1):
        for i in range(r0, r1):
            out[first + j, i] = log_sma[j, i] - log_sma[j + 1, i]


@njit(cache=True, nogil=True)
def returns_family(
    base: np.ndarray, bounds: np.ndarray, k0: int, k1: int, horizons: np.ndarray, out: np.ndarray
) -> None:
    """``ret_n`` per horizon."""
    lc = base[B_LOG_CLOSE]
    for k in range(k0, k1):
        a, b = bounds[k], bounds[k + 1]
        for j in range(horizons.shape[0]):
            _lagged_difference(lc[a:b], out[j, a:b], horizons[j])


@njit(cache=True, nogil=True)
def momentum_family(  # noqa: PLR0913 - the family's inputs, flat, as a compiled kernel takes them
    bars: tuple[np.ndarray, ...],
    bounds: np.ndarray,
    k0: int,
    k1: int,
    rsi_windows: np.ndarray,
    roc_windows: np.ndarray,
    out: np.ndarray,
    raw: np.ndarray,
) -> None:
    """``rsi_{n}_c`` per RSI window, ``roc_{n}_c`` per ROC window, ``mom_10_c`` into ``out``; the raw
    ``rsi_14``, ``roc_10``, ``mom_10``, ``ema_20`` into ``raw`` (rows of :data:`RAW`)."""
    c = bars[3]
    longest = _longest(bounds, k0, k1)
    gain, loss, up, down = np.empty(longest), np.empty(longest), np.empty(longest), np.empty(longest)
    nr, no = rsi_windows.shape[0], roc_windows.shape[0]
    for k in range(k0, k1):
        a, b = bounds[k], bounds[k + 1]
        up[0], down[0] = NAN, NAN
        for i in range(a + 1, b):
            d = c[i] - c[i - 1]
            up[i - a], down[i - a] = max(d, 0.0), max(-d, 0.0)
        for j in range(nr):
            n = rsi_windows[j]
            _seeded_ewm(up[: b - a], gain[: b - a], 1.0 / n, 1, n, n, 0.0)
            _seeded_ewm(down[: b - a], loss[: b - a], 1.0 / n, 1, n, n, 0.0)
            for i in range(a, b):
                total = gain[i - a] + loss[i - a]
                rsi = 0.0 if total == 0 else 100.0 * (gain[i - a] / total)
                out[j, i] = rsi / 100 - 0.5
                if n == 14:
                    raw[R_RSI_14, i] = rsi
        for j in range(no):
            n = roc_windows[j]
            for i in range(a, b):
                prev = c[i - n] if i - a >= n else NAN
                roc = 0.0 if prev == 0 else (c[i] / prev - 1.0) * 100.0
                out[nr + j, i] = roc / 100
                if n == 10:
                    raw[R_ROC_10, i] = roc
        _lagged_difference(c[a:b], raw[R_MOM_10, a:b], 10)
        for i in range(a, b):
            out[nr + no, i] = raw[R_MOM_10, i] / c[i]
        _seeded_ewm(c[a:b], raw[R_EMA_20, a:b], 2.0 / 21, 0, 20, 19, 0.0)


@njit(cache=True, nogil=True)
def trend_family(  # noqa: PLR0913
    bars: tuple[np.ndarray, ...],
    base: np.ndarray,
    bounds: np.ndarray,
    k0: int,
    k1: int,
    out: np.ndarray,
    raw: np.ndarray,
) -> None:
    """MACD (12, 26, 9), ATR/NATR and the DMI (14) into ``raw``; ``macd_c``, ``macd_signal_c``,
    ``macd_hist_c``, ``natr_14_c``, ``adx_14_c``, ``di_spread_14`` into ``out``."""
    h, lo, c = bars[1], bars[2], bars[3]
    longest = _longest(bounds, k0, k1)
    scratch = np.empty((6, longest))
    n = 14
    for k in range(k0, k1):
        a, b = bounds[k], bounds[k + 1]
        m = b - a
        fast, slow, pdm, mdm, p, q = (
            scratch[0, :m],
            scratch[1, :m],
            scratch[2, :m],
            scratch[3, :m],
            scratch[4, :m],
            scratch[5, :m],
        )
        tr = base[B_TRUE_RANGE, a:b]
        _seeded_ewm(c[a:b], fast, 2.0 / 13, 14, 12, 25, 0.0)
        _seeded_ewm(c[a:b], slow, 2.0 / 27, 0, 26, 25, 0.0)
        line = fast  # the fast EMA is not needed once the line is known
        for i in range(m):
            line[i] = fast[i] - slow[i]
        _seeded_ewm(line, raw[R_MACD_SIGNAL, a:b], 2.0 / 10, 25, 9, 33, 0.0)
        for i in range(a, b):
            raw[R_MACD, i] = line[i - a] if i - a >= 33 else NAN
            raw[R_MACD_HIST, i] = line[i - a] - raw[R_MACD_SIGNAL, i]
            out[0, i] = raw[R_MACD, i] / c[i]
            out[1, i] = raw[R_MACD_SIGNAL, i] / c[i]
            out[2, i] = raw[R_MACD_HIST, i] / c[i]
        _seeded_ewm(tr, raw[R_ATR_14, a:b], 1.0 / n, 1, n, n, 0.0)
        pdm[0], mdm[0] = NAN, NAN
        for i in range(a, b):
            raw[R_NATR_14, i] = 0.0 if c[i] == 0 else raw[R_ATR_14, i] / c[i] * 100.0
            out[3, i] = raw[R_NATR_14, i] / 100
            if i > a:
                up, down = h[i] - h[i - 1], lo[i - 1] - lo[i]
                pdm[i - a] = max(up, 0.0) * (1.0 if up > down else 0.0)
                mdm[i - a] = max(down, 0.0) * (1.0 if down > up else 0.0)
        _seeded_ewm(pdm, p, 1.0 / n, 1, n - 1, n - 1, float(n))
        _seeded_ewm(mdm, q, 1.0 / n, 1, n - 1, n - 1, float(n))
        trs, dx = pdm, mdm  # free again
        _seeded_ewm(tr, trs, 1.0 / n, 1, n - 1, n - 1, float(n))
        for i in range(a, b):
            t = trs[i - a]
            if i - a < n:
                plus, minus = NAN, NAN
            elif t == 0:
                plus, minus = 0.0, 0.0
            else:
                plus, minus = 100.0 * (p[i - a] / t), 100.0 * (q[i - a] / t)
            raw[R_PLUS_DI_14, i], raw[R_MINUS_DI_14, i] = plus, minus
            total = plus + minus
            dx[i - a] = 0.0 if total == 0 else 100.0 * (abs(plus - minus) / total)
            out[5, i] = (plus - minus) / 100
        _seeded_ewm(dx, raw[R_ADX_14, a:b], 1.0 / n, n, n, 2 * n - 1, 0.0)
        for i in range(a, b):
            out[4, i] = raw[R_ADX_14, i] / 100


@njit(cache=True, nogil=True)
def range_family(  # noqa: PLR0913
    bars: tuple[np.ndarray, ...],
    base: np.ndarray,
    bounds: np.ndarray,
    k0: int,
    k1: int,
    levels: np.ndarray,
    out: np.ndarray,
    raw: np.ndarray,
) -> None:
    """Bollinger bands (20, 2), CCI (20), Williams %R (14), stochastics (14, 3, 3) into ``raw``;
    ``bb_pctb_20``, ``bb_width_20``, ``cci_20_c``, ``willr_14_c``, ``stoch_k_c``, ``stoch_d_c``,
    then ``to_high_{n}``, ``to_low_{n}`` per level window into ``out``."""
    h, lo, c = bars[1], bars[2], bars[3]
    longest = _longest(bounds, k0, k1)
    scratch = np.empty((4, longest))
    for k in range(k0, k1):
        a, b = bounds[k], bounds[k + 1]
        m = b - a
        s0, hh, ll, s3 = scratch[0, :m], scratch[1, :m], scratch[2, :m], scratch[3, :m]
        tp = base[B_TYPICAL, a:b]
        _rolling_mean(c[a:b], raw[R_BB_MIDDLE_20, a:b], 20, 1.0 / 20, False)
        raw[R_SMA_20, a:b] = raw[R_BB_MIDDLE_20, a:b]  # the same SMA of the close, once
        _rolling_std(c[a:b], s0, 20, 0, False)
        for i in range(a, b):
            mid, width = raw[R_BB_MIDDLE_20, i], 2.0 * s0[i - a]
            upper, lower = mid + width, mid - width
            raw[R_BB_UPPER_20, i], raw[R_BB_LOWER_20, i] = upper, lower
            spread = upper - lower
            out[0, i] = 0.5 if spread == 0 else (c[i] - lower) / spread
            out[1, i] = spread / mid
        _rolling_mean(tp, s0, 20, 1.0 / 20, False)
        _mean_abs_deviation(tp, s0, s3, 20)
        for i in range(a, b):
            mad = s3[i - a]
            raw[R_CCI_20, i] = 0.0 if mad == 0 else (tp[i - a] - s0[i - a]) / (0.015 * mad)
            out[2, i] = raw[R_CCI_20, i] / 100
        _rolling_extreme(h[a:b], hh, 14, 1.0)
        _rolling_extreme(lo[a:b], ll, 14, -1.0)
        for i in range(a, b):
            top, bottom = hh[i - a], ll[i - a]
            diff = (top - bottom) / -100.0
            raw[R_WILLR_14, i] = 0.0 if diff == 0 else (top - c[i]) / diff
            out[3, i] = raw[R_WILLR_14, i] / 100 + 0.5
            diff = (top - bottom) / 100.0
            s0[i - a] = 0.0 if diff == 0 else (c[i] - bottom) / diff
        _rolling_mean(s0, s3, 3, 1.0 / 3, False)
        _rolling_mean(s3, raw[R_STOCH_D, a:b], 3, 1.0 / 3, False)
        for i in range(a, b):
            raw[R_STOCH_K, i] = s3[i - a] if i - a >= 17 else NAN
            out[4, i] = raw[R_STOCH_K, i] / 100 - 0.5
            out[5, i] = raw[R_STOCH_D, i] / 100 - 0.5
        for j in range(levels.shape[0]):
            n = levels[j]
            # The log is increasing: the log of the highest high is the highest log high.
            _rolling_extreme(base[B_LOG_HIGH, a:b], hh, n, 1.0)
            _rolling_extreme(base[B_LOG_LOW, a:b], ll, n, -1.0)
            for i in range(a, b):
                out[6 + 2 * j, i] = base[B_LOG_CLOSE, i] - hh[i - a]
                out[7 + 2 * j, i] = base[B_LOG_CLOSE, i] - ll[i - a]


@njit(cache=True, nogil=True)
def flow_family(  # noqa: PLR0913
    bars: tuple[np.ndarray, ...],
    base: np.ndarray,
    bounds: np.ndarray,
    k0: int,
    k1: int,
    flow_windows: np.ndarray,
    out: np.ndarray,
    raw: np.ndarray,
) -> None:
    """MFI (14), OBV and A/D into ``raw``; ``mfi_14_c``, then ``obv_z_{n}``, ``ad_z_{n}`` per flow window
    into ``out``."""
    h, lo, c, v = bars[1], bars[2], bars[3], bars[4]
    longest = _longest(bounds, k0, k1)
    scratch = np.empty((4, longest))
    for k in range(k0, k1):
        a, b = bounds[k], bounds[k + 1]
        m = b - a
        pos_flow, neg_flow, pos, neg = scratch[0, :m], scratch[1, :m], scratch[2, :m], scratch[3, :m]
        tp = base[B_TYPICAL, a:b]
        pos_flow[0], neg_flow[0] = NAN, NAN
        for i in range(1, m):
            flow, dtp = tp[i] * v[a + i], tp[i] - tp[i - 1]
            pos_flow[i] = flow * (1.0 if dtp > 0 else 0.0)
            neg_flow[i] = flow * (1.0 if dtp < 0 else 0.0)
        _rolling_mean(pos_flow, pos, 14, 1.0, False)
        _rolling_mean(neg_flow, neg, 14, 1.0, False)
        for i in range(a, b):
            total = pos[i - a] + neg[i - a]
            raw[R_MFI_14, i] = 0.0 if total == 0 else 100.0 * (pos[i - a] / total)
            out[0, i] = raw[R_MFI_14, i] / 100 - 0.5
        signed, flow = pos_flow, neg_flow  # free again
        signed[0] = v[a]
        for i in range(a, b):
            if i > a:
                move = c[i] - c[i - 1]
                signed[i - a] = (1.0 if move > 0 else (-1.0 if move < 0 else (0.0 if move == 0 else NAN))) * v[i]
            rng = h[i] - lo[i]
            flow[i - a] = (((c[i] - lo[i]) - (h[i] - c[i])) / rng) * v[i] if rng > 0 else 0.0
        _running_sum(signed, raw[R_OBV, a:b])
        _running_sum(flow, raw[R_AD, a:b])
        for j in range(flow_windows.shape[0]):
            n = flow_windows[j]
            _rolling_std(raw[R_OBV, a:b], out[1 + 2 * j, a:b], n, 0, True)
            _rolling_std(raw[R_AD, a:b], out[2 + 2 * j, a:b], n, 0, True)
