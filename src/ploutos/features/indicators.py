"""Technical indicators as pure, causal Polars expressions (``pl.Expr -> pl.Expr``).

Every function takes column expressions of **one** ticker's bars, sorted by time, and returns an
expression (or a tuple of them) to be evaluated in a single lazy ``select``; none of them knows
about tickers or uses ``.over``. Lags and windows count rows through :func:`row`, so the feature
engine can evaluate them over many tickers' bars in one frame (:func:`rows_from`). All are causal:
the value at row ``i`` depends only on rows ``<= i``, so appending bars never changes a past value.

The raw indicators match TA-Lib (the ``talib`` package, default settings) after the warm-up, and
have the same warm-up: rows before TA-Lib's lookback are null (TA-Lib's NaN). Where a formula
divides by something that can be zero (flat bars ``high == low``, zero volume, zero variance) the
result is the constant TA-Lib uses, documented per function, never ``inf``/``NaN``; TA-Lib tests
some of these denominators against small thresholds (``1e-8``, or ``< 1`` for MFI), we test
``== 0`` exactly, so only prices or volumes that tiny behave differently.

Windows, recursive smoothers and running sums are compiled kernels (:mod:`.kernels`, numba, one
call per column, not per row); the rest is Polars' element-wise arithmetic. Intermediate results
used more than once go through a ``bind`` argument (see :data:`Bind`): alone, an indicator is one
self-contained expression; in the feature engine every distinct intermediate becomes one shared
column.

Nulls are expected only as a leading warm-up; outputs keep the name of their first input, so
alias them. Recursive smoothers (:func:`ema`, :func:`wilder`) are seeded like TA-Lib: the SMA of
the first ``n`` values of the input after its own warm-up of ``offset`` rows, placed on row
``offset + n - 1``, then an EWM with ``adjust=False``. Bars are assumed valid (``low <= open, close
<= high``, prices > 0, volume >= 0), as the data layer guarantees.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import polars as pl

from ploutos.features import kernels

__all__ = [
    "Bind",
    "ad",
    "atr",
    "bbands",
    "change",
    "cci",
    "dmi",
    "ema",
    "garman_klass_vol",
    "highest",
    "inline",
    "lag",
    "log",
    "log1p",
    "log_dist_max",
    "log_dist_min",
    "log_return",
    "lowest",
    "macd",
    "mfi",
    "mom",
    "natr",
    "obv",
    "parkinson_vol",
    "range_position",
    "realized_vol",
    "roc",
    "rolling_percentile",
    "row",
    "rows_from",
    "rsi",
    "safe_div",
    "sma",
    "stoch",
    "true_range",
    "typical_price",
    "wilder",
    "willr",
    "zscore",
]

_F64 = pl.Float64


def _period(n: int, minimum: int = 1, name: str = "n") -> int:
    """Validate a window length: an int ``>= minimum``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n!r}")
    return n


_NULL = pl.lit(pl.Series("null", [None], dtype=_F64))
"""A Float64 null. ``pl.lit(None)`` (a cast null) stops Polars from sharing the expressions above it."""

_ROWS: ContextVar[pl.Expr | None] = ContextVar("rows", default=None)


def row() -> pl.Expr:
    """Each bar's row number inside its ticker's bars: the frame's row number, unless :func:`rows_from`
    says otherwise while the expressions are built."""
    rows = _ROWS.get()
    return pl.int_range(pl.len()) if rows is None else rows


@contextmanager
def rows_from(rows: pl.Expr) -> Iterator[None]:
    """Build indicators over many tickers' bars in one frame: ``rows`` numbers each ticker's bars
    from 0, in time order, and every lag, sum and window restarts where it is 0.

    The feature engine evaluates one query over all tickers this way (a query per ticker costs
    a fixed ~40 ms of planning and calls); alone, an indicator sees one ticker's frame. Inside,
    the compiled kernels and logs leave a missing value as ``NaN`` instead of a null (the engine
    nulls every non-finite output once, at the end).
    """
    token = _ROWS.set(rows)
    try:
        yield
    finally:
        _ROWS.reset(token)


def _alone() -> bool:
    """Whether the expressions are built for an indicator on its own (outside :func:`rows_from`):
    then kernels return nulls; inside the engine they leave ``NaN``, nulled once at the end."""
    return _ROWS.get() is None


def _kernel(name: str, inputs: list[pl.Expr], *args: object) -> pl.Expr:
    """Compiled kernel ``name`` per ticker (missing values as :func:`_alone` says)."""
    return kernels.as_expr(name, inputs, row(), *args, nulls=_alone())


def log(x: pl.Expr) -> pl.Expr:
    """ln(x) where x > 0, else null (numpy's log: Polars' costs 6 x as much)."""
    return kernels.elementwise("log", x, nulls=_alone())


def log1p(x: pl.Expr) -> pl.Expr:
    """ln(1 + x) where x > -1, else null."""
    return kernels.elementwise("log1p", x, nulls=_alone())


def lag(x: pl.Expr, k: int) -> pl.Expr:
    """x ``k`` bars earlier in the same ticker; null for its first ``k`` bars."""
    return pl.when(row() >= k).then(x.shift(k)).otherwise(_NULL)


def change(x: pl.Expr) -> pl.Expr:
    """x minus x one bar earlier in the same ticker; null on its first bar."""
    return x - lag(x, 1)


Bind = Callable[[pl.Expr], pl.Expr]
"""Turns an intermediate result into something cheap to reference more than once."""


def inline(expr: pl.Expr) -> pl.Expr:
    """The default :data:`Bind`: keep everything in one expression (simple; fine for one indicator)."""
    return expr


# Why ``bind``: Polars' common-subexpression elimination never looks inside ``rolling_*`` windows
# and is one level deep, so an indicator that uses an intermediate result twice (a band's mean, a
# Wilder sum inside a ratio) would recompute it, and nested indicators (ADX of DIs of Wilder sums)
# grow exponentially. Every intermediate that is used more than once goes through ``bind``. Called
# alone, an indicator inlines them; the feature engine passes a ``bind`` that materializes each
# distinct intermediate once as a column of an earlier ``with_columns`` stage and returns a
# reference to it, so the whole feature set costs one kernel per distinct intermediate.


def _rmean(x: pl.Expr, n: int) -> pl.Expr:
    """mean(x[i-n+1..i]), null unless all n values are non-null."""
    return _kernel("rolling_mean", [x], n, 1.0 / n, False)


def _rsum(x: pl.Expr, n: int) -> pl.Expr:
    """sum(x[i-n+1..i]), null unless all n values are non-null."""
    return _kernel("rolling_mean", [x], n, 1.0, False)


def _rstd(x: pl.Expr, n: int, ddof: int) -> pl.Expr:
    """std(x[i-n+1..i], ddof), null unless all n values are non-null; exactly 0 on a constant window."""
    return _kernel("rolling_std", [x], n, ddof, False)


def _rmax(x: pl.Expr, n: int) -> pl.Expr:
    """max(x[i-n+1..i]), null unless all n values are non-null."""
    return _kernel("rolling_extreme", [x], n, 1.0)


def _rmin(x: pl.Expr, n: int) -> pl.Expr:
    """min(x[i-n+1..i]), null unless all n values are non-null."""
    return _kernel("rolling_extreme", [x], n, -1.0)


def _seeded_ewm(
    x: pl.Expr,
    n: int,
    alpha: float,
    offset: int = 0,
    *,
    seed_row: int | None = None,
    divisor: int | None = None,
    bind: Bind = inline,
) -> pl.Expr:
    """EWM (adjust=False) of x seeded like TA-Lib, at static positions.

    Null before ``seed_row`` (default ``offset + n - 1``); there, sum(x[offset:offset+n]) / divisor
    (default: the mean of the non-null values in that slice); then y_t = (1 - alpha) y_{t-1} + alpha x_t.
    """
    r = offset + n - 1 if seed_row is None else seed_row
    return _kernel("seeded_ewm", [bind(x)], float(alpha), offset, n, r, float(divisor or 0))


def safe_div(num: pl.Expr, den: pl.Expr, default: float | None = None) -> pl.Expr:
    """num / den, or ``default`` (null if None) where den == 0; null where either side is null."""
    return pl.when(den == 0).then(_NULL if default is None else pl.lit(default, dtype=_F64)).otherwise(num / den)


# --------------------------------------------------------------------------------------------
# Moving averages
# --------------------------------------------------------------------------------------------


def sma(x: pl.Expr, n: int) -> pl.Expr:
    """Simple moving average: mean(x[i-n+1..i]); null for the first n-1 rows (TA-Lib SMA)."""
    return _rmean(x, _period(n))


def highest(x: pl.Expr, n: int) -> pl.Expr:
    """Highest value of the last n: max(x[i-n+1..i]); null for the first n-1 rows (TA-Lib MAX)."""
    return _rmax(x, _period(n))


def lowest(x: pl.Expr, n: int) -> pl.Expr:
    """Lowest value of the last n: min(x[i-n+1..i]); null for the first n-1 rows (TA-Lib MIN)."""
    return _rmin(x, _period(n))


def ema(x: pl.Expr, n: int, offset: int = 0, *, bind: Bind = inline) -> pl.Expr:
    """TA-Lib EMA: y = mean(x[offset:offset+n]) at row offset+n-1, then y_t = y_{t-1} + 2/(n+1) (x_t - y_{t-1}).

    ``offset`` is the length of x's own warm-up (its leading nulls), 0 for a raw column.
    """
    return _seeded_ewm(x, _period(n), 2.0 / (n + 1), offset, bind=bind)


def wilder(x: pl.Expr, n: int, offset: int = 0, *, bind: Bind = inline) -> pl.Expr:
    """Wilder smoothing (RMA), TA-Lib seeding: mean(x[offset:offset+n]) at row offset+n-1, then alpha = 1/n.

    ``offset`` is the length of x's own warm-up (its leading nulls), e.g. 1 for a true range or a diff.
    """
    return _seeded_ewm(x, _period(n), 1.0 / n, offset, bind=bind)


# --------------------------------------------------------------------------------------------
# Momentum / oscillators
# --------------------------------------------------------------------------------------------


def rsi(close: pl.Expr, n: int = 14, *, bind: Bind = inline) -> pl.Expr:
    """RSI = 100 * wilder(gain, n) / (wilder(gain, n) + wilder(loss, n)) of 1-bar changes; 0 if both are 0."""
    d = bind(change(close))
    gain = bind(wilder(d.clip(lower_bound=0.0), n, 1, bind=bind))
    loss = bind(wilder((-d).clip(lower_bound=0.0), n, 1, bind=bind))
    total = gain + loss
    return pl.when(total == 0).then(0.0).otherwise(100.0 * (gain / total))


def macd(
    close: pl.Expr, fast: int = 12, slow: int = 26, signal: int = 9, *, bind: Bind = inline
) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(macd, signal, hist): EMA_fast - EMA_slow, EMA_signal of it, and their difference (TA-Lib MACD).

    As in TA-Lib both EMAs are seeded on the same row (the slow one's first), the fast one with the
    SMA of its last ``fast`` values there; all three outputs start with the signal line.
    """
    _period(fast, 1, "fast")
    _period(slow, 1, "slow")
    _period(signal, 1, "signal")
    if slow < fast:
        fast, slow = slow, fast
    fast_ema = _seeded_ewm(close, fast, 2.0 / (fast + 1), slow - fast, bind=bind)
    line = bind(fast_ema - _seeded_ewm(close, slow, 2.0 / (slow + 1), bind=bind))
    sig = bind(ema(line, signal, slow - 1, bind=bind))
    line_out = pl.when(row() >= slow + signal - 2).then(line).otherwise(_NULL)
    return line_out, sig, line - sig


def roc(x: pl.Expr, n: int = 10) -> pl.Expr:
    """Rate of change in percent: (x_t / x_{t-n} - 1) * 100; 0 where x_{t-n} == 0 (TA-Lib ROC)."""
    prev = lag(x, _period(n))
    return pl.when(prev == 0).then(0.0).otherwise((x / prev - 1.0) * 100.0)


def mom(x: pl.Expr, n: int = 10) -> pl.Expr:
    """Momentum: x_t - x_{t-n} (TA-Lib MOM)."""
    return _kernel("difference", [x], _period(n))


def willr(high: pl.Expr, low: pl.Expr, close: pl.Expr, n: int = 14, *, bind: Bind = inline) -> pl.Expr:
    """Williams %R = -100 * (HH_n - close) / (HH_n - LL_n); 0 where HH_n == LL_n (TA-Lib WILLR)."""
    hh = bind(_rmax(high, _period(n)))
    diff = bind((hh - bind(_rmin(low, n))) / -100.0)
    return pl.when(diff == 0).then(0.0).otherwise((hh - close) / diff)


def stoch(
    high: pl.Expr,
    low: pl.Expr,
    close: pl.Expr,
    fastk: int = 14,
    slowk: int = 3,
    slowd: int = 3,
    *,
    bind: Bind = inline,
) -> tuple[pl.Expr, pl.Expr]:
    """(slow %K, slow %D): SMA_slowk of 100 (close - LL_fastk) / (HH_fastk - LL_fastk), then SMA_slowd of it.

    Fast %K is 0 where HH == LL (TA-Lib STOCH with SMA smoothing); both outputs start with %D.
    """
    _period(fastk, 1, "fastk")
    _period(slowk, 1, "slowk")
    _period(slowd, 1, "slowd")
    ll = bind(_rmin(low, fastk))
    diff = bind((bind(_rmax(high, fastk)) - ll) / 100.0)
    k = bind(_rmean(pl.when(diff == 0).then(0.0).otherwise((close - ll) / diff), slowk))
    return pl.when(row() >= fastk + slowk + slowd - 3).then(k).otherwise(_NULL), _rmean(k, slowd)


def typical_price(high: pl.Expr, low: pl.Expr, close: pl.Expr) -> pl.Expr:
    """Typical price (high + low + close) / 3."""
    return (high + low + close) / 3.0


def cci(high: pl.Expr, low: pl.Expr, close: pl.Expr, n: int = 20, *, bind: Bind = inline) -> pl.Expr:
    """CCI = (tp - SMA_n(tp)) / (0.015 * mean_k |tp_{t-k} - SMA_n(tp)_t|), tp = (h+l+c)/3; 0 if the deviation is 0."""
    _period(n)
    tp = bind(typical_price(high, low, close))
    avg = bind(_rmean(tp, n))
    # Mean absolute deviation around the *current* average: not a sliding statistic, so sum the n lags.
    mad = bind(_kernel("mean_abs_deviation", [tp, avg], n))
    return pl.when(mad == 0).then(0.0).otherwise((tp - avg) / (0.015 * mad))


def mfi(high: pl.Expr, low: pl.Expr, close: pl.Expr, volume: pl.Expr, n: int = 14, *, bind: Bind = inline) -> pl.Expr:
    """MFI = 100 * sum_n(tp*v where tp rose) / sum_n(tp*v where tp changed); 0 if no money flowed (TA-Lib MFI)."""
    _period(n)
    tp = bind(typical_price(high, low, close))
    flow, dtp = bind(tp * volume), bind(change(tp))
    pos = bind(_rsum(flow * (dtp > 0), n))  # float * bool keeps the null of the first row
    neg = bind(_rsum(flow * (dtp < 0), n))
    total = pos + neg
    return pl.when(total == 0).then(0.0).otherwise(100.0 * (pos / total))


# --------------------------------------------------------------------------------------------
# Volatility / trend strength
# --------------------------------------------------------------------------------------------


def bbands(close: pl.Expr, n: int = 20, k: float = 2.0, *, bind: Bind = inline) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(upper, middle, lower) Bollinger bands: SMA_n +/- k * population std_n (ddof=0, TA-Lib BBANDS)."""
    _period(n)
    mid = bind(_rmean(close, n))
    width = bind(k * _rstd(close, n, 0))
    return mid + width, mid, mid - width


def true_range(high: pl.Expr, low: pl.Expr, close: pl.Expr) -> pl.Expr:
    """True range max(high, prev close) - min(low, prev close); null on the first row (TA-Lib TRANGE)."""
    prev = lag(close, 1)
    return pl.when(row() > 0).then(pl.max_horizontal(high, prev) - pl.min_horizontal(low, prev)).otherwise(_NULL)


def atr(high: pl.Expr, low: pl.Expr, close: pl.Expr, n: int = 14, *, bind: Bind = inline) -> pl.Expr:
    """Average true range: wilder(true_range, n), first value at row n (TA-Lib ATR)."""
    return wilder(bind(true_range(high, low, close)), n, 1, bind=bind)


def natr(high: pl.Expr, low: pl.Expr, close: pl.Expr, n: int = 14, *, bind: Bind = inline) -> pl.Expr:
    """Normalized ATR in percent: atr / close * 100; 0 where close == 0 (TA-Lib NATR)."""
    return pl.when(close == 0).then(0.0).otherwise(bind(atr(high, low, close, n, bind=bind)) / close * 100.0)


def dmi(
    high: pl.Expr, low: pl.Expr, close: pl.Expr, n: int = 14, *, bind: Bind = inline
) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(+DI, -DI, ADX): 100 wilder(+DM or -DM) / wilder(TR); ADX = wilder(DX), DX = 100 |+DI - -DI| / (+DI + -DI).

    Matches TA-Lib PLUS_DI / MINUS_DI (first value at row n; sums seeded with the first n-1 values)
    and ADX (first value at row 2n-1). A DI is 0 where the smoothed true range is 0, and DX is 0
    where both DIs are 0 (TA-Lib skips such bars when averaging DX: a difference on flat data only).
    """
    _period(n, 2)
    up, down = bind(change(high)), bind(lag(low, 1) - low)
    # TA-Lib keeps running sums S_t = S_{t-1} (1 - 1/n) + x_t seeded with the sum of rows 1..n-1 at
    # row n-1; S / n is an EWM seeded with that sum / n. Its first DI is at row n.
    plus_dm = up.clip(lower_bound=0.0) * (up > down)  # float * bool keeps the null of the first row
    minus_dm = down.clip(lower_bound=0.0) * (down > up)
    p = bind(_seeded_ewm(plus_dm, n - 1, 1.0 / n, 1, divisor=n, bind=bind))
    m = bind(_seeded_ewm(minus_dm, n - 1, 1.0 / n, 1, divisor=n, bind=bind))
    tr = bind(_seeded_ewm(bind(true_range(high, low, close)), n - 1, 1.0 / n, 1, divisor=n, bind=bind))
    first = row() >= n
    plus_di = bind(pl.when(~first).then(_NULL).when(tr == 0).then(0.0).otherwise(100.0 * (p / tr)))
    minus_di = bind(pl.when(~first).then(_NULL).when(tr == 0).then(0.0).otherwise(100.0 * (m / tr)))
    total = plus_di + minus_di
    dx = pl.when(total == 0).then(0.0).otherwise(100.0 * ((plus_di - minus_di).abs() / total))
    return plus_di, minus_di, wilder(dx, n, n, bind=bind)


# --------------------------------------------------------------------------------------------
# Volume
# --------------------------------------------------------------------------------------------


def obv(close: pl.Expr, volume: pl.Expr) -> pl.Expr:
    """On-balance volume: v_0, then cumulative +v if close rose, -v if it fell, 0 if unchanged (TA-Lib OBV)."""
    return _kernel("cumulative_sum", [(change(close).sign() * volume).fill_null(volume)])


def ad(high: pl.Expr, low: pl.Expr, close: pl.Expr, volume: pl.Expr) -> pl.Expr:
    """Chaikin A/D line: cumsum(((c - l) - (h - c)) / (h - l) * v); bars with h == l add 0 (TA-Lib AD)."""
    rng = high - low
    clv = ((close - low) - (high - close)) / rng
    return _kernel("cumulative_sum", [pl.when(rng > 0).then(clv * volume).otherwise(0.0)])


# --------------------------------------------------------------------------------------------
# Stationary helpers
# --------------------------------------------------------------------------------------------


def log_return(x: pl.Expr, n: int = 1, *, bind: Bind = inline) -> pl.Expr:
    """n-bar log return ln(x_t / x_{t-n}); null where a price is <= 0."""
    return _kernel("difference", [bind(log(x))], _period(n))


def realized_vol(close: pl.Expr, n: int = 20, ddof: int = 1, *, bind: Bind = inline) -> pl.Expr:
    """Rolling std (ddof=1 by default) of the last n 1-bar log returns; per bar, not annualized."""
    return _rstd(bind(log_return(close, 1, bind=bind)), _period(n, 2), ddof)


def parkinson_vol(high: pl.Expr, low: pl.Expr, n: int = 20, *, bind: Bind = inline) -> pl.Expr:
    """Parkinson volatility sqrt(mean_n(ln(h/l)^2) / (4 ln 2)); per bar, not annualized."""
    hl = bind(log(high) - log(low))
    return _kernel("rolling_mean", [bind(hl * hl)], _period(n), 1.0 / (n * 4.0 * math.log(2.0)), True)


def garman_klass_vol(
    open: pl.Expr, high: pl.Expr, low: pl.Expr, close: pl.Expr, n: int = 20, *, bind: Bind = inline
) -> pl.Expr:
    """Garman-Klass volatility sqrt(mean_n(0.5 ln(h/l)^2 - (2 ln 2 - 1) ln(c/o)^2)), clipped at 0; per bar."""
    hl = bind(log(high) - log(low))
    co = bind(log(close) - log(open))
    term = bind(0.5 * (hl * hl) - (2.0 * math.log(2.0) - 1.0) * (co * co))
    return _kernel("rolling_mean", [term], _period(n), 1.0 / n, True)


def zscore(x: pl.Expr, n: int, ddof: int = 0, *, bind: Bind = inline) -> pl.Expr:
    """Rolling z-score (x - SMA_n) / std_n (population std by default); 0 where the window is constant (std == 0)."""
    return _kernel("rolling_std", [bind(x)], _period(n, 2), ddof, True)


def rolling_percentile(x: pl.Expr, n: int) -> pl.Expr:
    """Percentile of x_t among the last n values, (rank - 1) / (n - 1) in [0, 1], ties averaged."""
    _period(n, 2)
    rank = (x.rolling_rank(n, method="average") - 1.0) / (n - 1)
    return pl.when(row() >= n - 1).then(rank).otherwise(_NULL)


def range_position(high: pl.Expr, low: pl.Expr, close: pl.Expr, n: int, *, bind: Bind = inline) -> pl.Expr:
    """Position of close in the n-bar range, (close - LL_n) / (HH_n - LL_n) in [0, 1]; 0.5 where HH_n == LL_n."""
    ll = bind(_rmin(low, _period(n)))
    rng = bind(bind(_rmax(high, n)) - ll)
    return pl.when(rng == 0).then(0.5).otherwise((close - ll) / rng)


def log_dist_max(x: pl.Expr, n: int, *, bind: Bind = inline) -> pl.Expr:
    """ln(x_t / max(x[t-n+1..t])) <= 0: log drawdown from the n-bar high; null where x <= 0."""
    lx = bind(log(x))
    return lx - _rmax(lx, _period(n))


def log_dist_min(x: pl.Expr, n: int, *, bind: Bind = inline) -> pl.Expr:
    """ln(x_t / min(x[t-n+1..t])) >= 0: log run-up from the n-bar low; null where x <= 0."""
    lx = bind(log(x))
    return lx - _rmin(lx, _period(n))
