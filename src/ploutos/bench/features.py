"""``ploutos bench features``: the feature engine against TA-Lib, on one ticker and on a hundred.

In one run, on the same machine and the same synthetic bars, three shapes (:data:`SHAPES`):
1 ticker x 100k bars, 15 x 50k and 100 x 10k. At each, the full feature set
(:func:`ploutos.features.compute`, one call over every ticker) against TA-Lib computing the
equivalent set (:func:`talib_equivalent`) looped over the tickers, and the line
``N x Bk: ratio R`` (ploutos time / TA-Lib time, target <= 1.0) with both times and both output
counts. The bars are split into per-ticker numpy arrays before TA-Lib's clock starts (that favours
TA-Lib); each side is timed in a row of calls (taken in turn, the sides fragment each other's
heap and both slow down: ploutos by 10-100%). The issue's target compares with TA-Lib on one
thread; the line below it, ``N x Bk same threads: ratio R``, gives TA-Lib the threads ploutos
uses (:func:`talib_threaded`: its wrapper releases the GIL), so neither side has cores the other
lacks. Then ``ta.add_all_ta_features``
(pandas) on the 1-ticker bars, timed once because it is slow.

Benchmarks report; they never fail: a missed target prints ``MISS`` and the exit code stays 0.
The CLI calls :func:`main` with its arguments (``[--quick] [--repeats N]``).
"""

from __future__ import annotations

import os
import platform
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from ploutos.bench.timing import Timing, format_ms, time_call
from ploutos.commandline import Parser, examples
from ploutos.config import DataConfig
from ploutos.data.sources.synthetic import SyntheticSource
from ploutos.features import compute
from ploutos.node.allocator import keep_freed_memory

WINDOWS = (5, 10, 20, 50, 100, 200)
"""Windows of the SMA/EMA/std/z-score outputs (the default ``FeaturesConfig.windows``)."""
RETURN_HORIZONS = (1, 2, 4, 8, 16, 32, 64)
LEVEL_WINDOWS = (20, 50, 100, 200)
FLOW_WINDOWS = (20, 100)
RSI_WINDOWS = (7, 14, 28)
ROC_WINDOWS = (5, 10, 20)

SHAPES = ((1, 100_000), (15, 50_000), (100, 10_000))
"""(tickers, bars per ticker) of the three ratio lines."""
TALIB_RATIO_TARGET = 1.0
"""ploutos time / TA-Lib time (looped over the tickers) must be at or below this at every shape."""
PANDAS_QUICK_BARS = 20_000
"""With ``--quick``, pandas ``ta`` runs on this many bars and its time is scaled up linearly."""


@dataclass(frozen=True)
class BenchResult:
    """One line of the report."""

    label: str
    """What was measured, e.g. ``features 1 x 100k bars``."""
    subject: str
    """Who was timed: ``ploutos`` or ``pandas ta``."""
    timing: Timing
    outputs: int
    """Columns produced (features for ploutos, outputs for the baselines)."""
    baseline: str | None = None
    """Name of what this is compared with in the same run (``TA-Lib``)."""
    baseline_timing: Timing | None = None
    baseline_outputs: int | None = None
    target: str = ""
    """Human-readable target, e.g. ``ratio <= 1.0``."""
    passed: bool | None = None
    """Whether the target was met (None: no target)."""
    scale: float = 1.0
    """Factor applied to the measured times (``--quick`` pandas runs on fewer bars)."""
    note: str = ""
    same_threads_timing: Timing | None = None
    """The baseline again on the same threads as ploutos (:func:`talib_threaded`)."""
    threads: int = 1

    @property
    def ms(self) -> float:
        """Median time in ms, scaled."""
        return self.timing.median_ms * self.scale

    @property
    def ratio(self) -> float | None:
        """Median time over the baseline's median time, both from this run."""
        if self.baseline_timing is None:
            return None
        return self.ms / self.baseline_timing.median_ms

    @property
    def same_threads_ratio(self) -> float | None:
        """Median time over the baseline's on the same threads, both from this run."""
        if self.same_threads_timing is None:
            return None
        return self.ms / self.same_threads_timing.median_ms


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def synthetic_bars(n_tickers: int, n_bars: int) -> pl.DataFrame:
    """``n_tickers`` synthetic tickers (``T00``, ``T01``...) of ``n_bars`` hourly 24x7 bars each, stacked."""

    tickers = tuple(f"T{i:02d}" for i in range(n_tickers))
    cfg = replace(DataConfig(), source="synthetic", session="24x7", tickers=tickers, synthetic_bars=n_bars)
    source = SyntheticSource(cfg)
    return pl.concat([source.fetch(t, None, None) for t in tickers], how="vertical")


def _ohlcv(bars: pl.DataFrame) -> tuple[np.ndarray, ...]:
    return tuple(bars[name].to_numpy() for name in ("open", "high", "low", "close", "volume"))


# --------------------------------------------------------------------------------------------
# TA-Lib baseline
# --------------------------------------------------------------------------------------------


def talib_equivalent(bars_one_ticker: pl.DataFrame, part: int | None = None) -> dict[str, np.ndarray]:
    """TA-Lib (plus the numpy arithmetic it needs) computing the equivalent of our feature set.

    On numpy float64 arrays of one ticker, no guards against 0/0 beyond what TA-Lib does itself:

    * TA-Lib indicators (37): SMA and EMA at the 6 windows, RSI 7/14/28, MACD (3), BBANDS (3),
      ATR, NATR, ADX, PLUS_DI, MINUS_DI, CCI, WILLR, MFI, STOCH (2), OBV, AD, ROC 5/10/20, MOM;
    * realized volatility (6): STDDEV of 1-bar log returns at the 6 windows (rescaled to ddof=1);
    * z-scores (12): ``(x - SMA) / STDDEV`` at the 6 windows, for close and log(1 + volume);
    * distances to support/resistance (8): log(close / MAX(high)) and log(close / MIN(low)) at
      20/50/100/200;
    * numpy ratios of the above (24): log returns at 7 horizons, log(close / SMA) and
      log(close / EMA) at the 6 windows, log(SMA_fast / SMA_slow) for the 5 adjacent pairs;
    * flow z-scores (4): OBV and A/D z-scores at 20 and 100 bars.

    Ours computes more (Parkinson and Garman-Klass volatility, candle shape, clock features, and
    the rescaled oscillators); those are left out here, which favours TA-Lib. ``part`` 0 or 1
    computes one of two halves of about equal time (the second recomputes the SMAs and log returns
    it needs), for two threads on one ticker; None computes everything once.
    """
    import talib  # the baseline, from the dev extra: only this benchmark needs it

    o, h, lo, c, v = _ohlcv(bars_one_ticker)
    first, second = part in (None, 0), part in (None, 1)
    out: dict[str, np.ndarray] = {}
    sma = {n: talib.SMA(c, n) for n in WINDOWS}
    with np.errstate(divide="ignore", invalid="ignore"):
        log_c = np.log(c)
        ret_1 = np.full_like(c, np.nan)
        ret_1[1:] = log_c[1:] - log_c[:-1]
        if first:
            ema = {n: talib.EMA(c, n) for n in WINDOWS}
            out.update({f"sma_{n}": x for n, x in sma.items()})
            out.update({f"ema_{n}": x for n, x in ema.items()})
            for n in RSI_WINDOWS:
                out[f"rsi_{n}"] = talib.RSI(c, n)
            out["macd"], out["macd_signal"], out["macd_hist"] = talib.MACD(c, 12, 26, 9)
            out["bb_upper_20"], out["bb_middle_20"], out["bb_lower_20"] = talib.BBANDS(c, 20, 2.0, 2.0)
            out["atr_14"] = talib.ATR(h, lo, c, 14)
            out["natr_14"] = talib.NATR(h, lo, c, 14)
            out["adx_14"] = talib.ADX(h, lo, c, 14)
            out["plus_di_14"] = talib.PLUS_DI(h, lo, c, 14)
            out["minus_di_14"] = talib.MINUS_DI(h, lo, c, 14)
            for n in ROC_WINDOWS:
                out[f"roc_{n}"] = talib.ROC(c, n)
            out["mom_10"] = talib.MOM(c, 10)
            for n in RETURN_HORIZONS:
                ret = np.full_like(c, np.nan)
                ret[n:] = log_c[n:] - log_c[:-n]
                out[f"ret_{n}"] = ret
            for n in WINDOWS:
                out[f"close_sma_{n}"] = log_c - np.log(sma[n])
                out[f"close_ema_{n}"] = log_c - np.log(ema[n])
            for fast, slow in zip(WINDOWS, WINDOWS[1:], strict=False):
                out[f"sma_{fast}_{slow}"] = np.log(sma[fast] / sma[slow])
        if second:
            out["cci_20"] = talib.CCI(h, lo, c, 20)
            out["willr_14"] = talib.WILLR(h, lo, c, 14)
            out["mfi_14"] = talib.MFI(h, lo, c, v, 14)
            out["stoch_k"], out["stoch_d"] = talib.STOCH(h, lo, c, 14, 3, 0, 3, 0)
            obv, ad = talib.OBV(c, v), talib.AD(h, lo, c, v)
            out["obv"], out["ad"] = obv, ad
            log_v = np.log1p(v)
            for n in WINDOWS:
                out[f"rvol_{n}"] = talib.STDDEV(ret_1, n, 1.0) * np.sqrt(n / (n - 1))
                out[f"close_z_{n}"] = (c - sma[n]) / talib.STDDEV(c, n, 1.0)
                out[f"volume_z_{n}"] = (log_v - talib.SMA(log_v, n)) / talib.STDDEV(log_v, n, 1.0)
            for n in LEVEL_WINDOWS:
                out[f"to_high_{n}"] = log_c - np.log(talib.MAX(h, n))
                out[f"to_low_{n}"] = log_c - np.log(talib.MIN(lo, n))
            for n in FLOW_WINDOWS:
                for name, x in (("obv", obv), ("ad", ad)):
                    out[f"{name}_z_{n}"] = (x - talib.SMA(x, n)) / talib.STDDEV(x, n, 1.0)
    return out


def talib_threaded(per_ticker: Sequence[pl.DataFrame], pool: ThreadPoolExecutor) -> list[dict[str, np.ndarray]]:
    """TA-Lib on the same threads as ploutos (its wrapper releases the GIL): the tickers side by side,
    or the two halves of :func:`talib_equivalent` for one ticker."""
    if len(per_ticker) == 1:
        halves = [pool.submit(talib_equivalent, per_ticker[0], part) for part in (0, 1)]
        first, second = (half.result() for half in halves)
        return [{**first, **second}]
    return list(pool.map(talib_equivalent, per_ticker))


# --------------------------------------------------------------------------------------------
# pandas baseline
# --------------------------------------------------------------------------------------------


def pandas_ta_all(bars_one_ticker: pl.DataFrame):  # -> pandas.DataFrame
    """``ta.add_all_ta_features`` (the pandas ``ta`` library) on one ticker's bars."""
    import ta  # the pandas baseline, from the dev extra: only this benchmark needs it

    frame = bars_one_ticker.select("open", "high", "low", "close", "volume").to_pandas()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return ta.add_all_ta_features(frame, "open", "high", "low", "close", "volume", fillna=False)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _k(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _feature_count(frame: pl.DataFrame) -> int:
    return frame.width - 2  # timestamp, ticker


def talib_looped(per_ticker: Sequence[pl.DataFrame]) -> list[dict[str, np.ndarray]]:
    """:func:`talib_equivalent` on each ticker's bars in turn (TA-Lib has no notion of tickers)."""
    return [talib_equivalent(bars) for bars in per_ticker]


def run(
    quick: bool = False,
    repeats: int = 5,
    *,
    warmup: int = 1,
    shapes: Sequence[tuple[int, int]] = SHAPES,
    pandas: bool = True,
    pandas_bars: int | None = None,
    log: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Time ploutos against TA-Lib at each of ``shapes``, then (if ``pandas``) pandas ``ta`` on the
    first shape's first ticker; one :class:`BenchResult` per report line.

    ``quick`` runs pandas ``ta`` on :data:`PANDAS_QUICK_BARS` bars (or ``pandas_bars``) and scales
    its time linearly. Each ploutos and TA-Lib measurement starts with ``warmup`` untimed runs.
    ``log`` receives progress messages.
    """
    say = log or (lambda _msg: None)
    results = []
    threads = pl.thread_pool_size()
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
    for n_tickers, n_bars in shapes:
        bars = synthetic_bars(n_tickers, n_bars)
        per_ticker = bars.partition_by("ticker", maintain_order=True)
        label = f"{n_tickers} x {_k(n_bars)}"
        say(f"timing {label} bars ...")
        # One side after the other: taken in turn, each side's arrays fragment the other's heap (ploutos
        # writes one block of every feature, TA-Lib an array per output) and both slow down.
        ours = time_call(lambda bars=bars: compute(bars), repeats=repeats, warmup=warmup)
        theirs = time_call(lambda parts=per_ticker: talib_looped(parts), repeats=repeats, warmup=warmup)
        threaded = None
        if pool is not None:
            threaded = time_call(lambda parts=per_ticker: talib_threaded(parts, pool), repeats=repeats, warmup=warmup)
        ratio = ours.median_ms / theirs.median_ms
        results.append(
            BenchResult(
                label,
                "ploutos",
                ours,
                _feature_count(ours.result),
                baseline="TA-Lib",
                baseline_timing=theirs,
                baseline_outputs=len(theirs.result[0]),
                target=f"<= {TALIB_RATIO_TARGET:.1f}",
                passed=ratio <= TALIB_RATIO_TARGET,
                note=f"looped over {n_tickers} ticker{'s' if n_tickers > 1 else ''}",
                same_threads_timing=threaded,
                threads=threads,
            )
        )
    if pool is not None:
        pool.shutdown()

    if pandas:
        one = synthetic_bars(1, shapes[0][1])
        bars = one.height
        n = min(pandas_bars or (PANDAS_QUICK_BARS if quick else bars), bars)
        scale = bars / n
        note = f"measured on {_k(n)} bars, scaled x{scale:g}" if n < bars else ""
        say(f"timing pandas ta on {_k(n)} bars (once) ...")
        slow = time_call(lambda: pandas_ta_all(one.head(n)), repeats=1, warmup=0)
        added = slow.result.shape[1] - 5
        results.append(BenchResult(f"pandas ta 1 x {_k(bars)} bars", "pandas ta", slow, added, scale=scale, note=note))
    return results


def format_results(results: Sequence[BenchResult]) -> list[str]:
    """The report lines: ``N x Bk: ratio R | ...`` per shape (scripts read the ratio), then pandas."""
    lines = []
    ploutos_one = next((r for r in results if r.subject == "ploutos"), None)
    for r in results:
        if r.subject == "ploutos" and r.baseline_timing is not None:
            verdict = "PASS" if r.passed else "MISS"
            lines.append(
                f"{r.label}: ratio {r.ratio:.2f} | ploutos {format_ms(r.ms)} ({r.outputs} features) | "
                f"{r.baseline} {format_ms(r.baseline_timing.median_ms)} ({r.baseline_outputs} outputs per ticker, "
                f"{r.note}) | target {r.target}: {verdict}"
            )
            if r.same_threads_ratio is not None and r.same_threads_timing is not None:
                lines.append(
                    f"{r.label} same threads: ratio {r.same_threads_ratio:.2f} | ploutos {format_ms(r.ms)} | "
                    f"TA-Lib on {r.threads} threads {format_ms(r.same_threads_timing.median_ms)} "
                    f"({'two halves of the set side by side' if r.label.startswith('1 x') else 'tickers side by side'})"
                )
        else:
            line = f"{r.label}: {format_ms(r.ms)} ({r.outputs} outputs"
            line += f"; {r.note})" if r.note else ")"
            if ploutos_one is not None:
                line += f" | ploutos is {r.ms / ploutos_one.ms:.0f}x faster ({ploutos_one.label})"
            lines.append(line)
    return lines


def environment_line(repeats: int) -> str:
    """Machine, thread pool and timing method, printed above the results."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    import talib  # the baseline, from the dev extra: only this benchmark needs it

    return (
        f"cores: {usable} usable of {os.cpu_count()} | polars {pl.__version__} threads {pl.thread_pool_size()} "
        f"(ploutos' feature threads) | TA-Lib {talib.__version__} (single-threaded for the target, then on "
        f"the same threads) | {platform.python_implementation()} "
        f"{platform.python_version()} | median of {repeats} runs after 1 warm-up"
    )


def build_parser() -> Parser:
    parser = Parser(
        prog="ploutos bench features",
        description="The feature engine against TA-Lib on the same synthetic bars, in one run: the full feature\n"
        "set at 1 ticker x 100k bars, 15 x 50k and 100 x 10k, TA-Lib's equivalent set looped over the\n"
        "tickers (on one thread, then on as many as Ploutos uses), then pandas ta on one ticker.\n"
        "Prints each time and the ratio against its target; writes nothing.",
        epilog=examples("ploutos bench features --quick", "ploutos bench features --repeats 3"),
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"pandas ta on {_k(PANDAS_QUICK_BARS)} bars, time scaled up"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (default 5)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``ploutos bench features [--quick] [--repeats N]``: run and print; always returns 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    print(environment_line(args.repeats), flush=True)
    if keep_freed_memory():
        print("# both sides in this process: glibc keeps freed memory (hardware.keep_freed_memory), as a task does")
    results = run(quick=args.quick, repeats=args.repeats, log=lambda msg: print(msg, flush=True))
    for line in format_results(results):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
