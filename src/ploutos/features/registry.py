"""Every feature by name: its expression, a one-line definition and its warm-up.

Features come in two kinds. **Raw** indicators carry TA-Lib's names and definitions (``sma_20``,
``rsi_14``, ``obv`` ...); they are price-level quantities for people and tests, and never reach
the agent. **Observation** features are stationary (log returns, ratios, z-scores, bounded
oscillators rescaled around 0): they are what the env shows. Each expression refers to the bar
columns and to the raw columns by name, so a quantity is computed once and shared.

A feature's warm-up is the number of leading bars of a ticker for which it is undefined (null).

These expressions define the features: an indicator alone, ``ploutos features list`` and the
tests evaluate them. The engine computes the per-ticker, clock and cross-asset ones in compiled
families instead (:mod:`.fused`), checked against these column by column; a feature added here
and not there runs through Polars.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import polars as pl

from ploutos.config import FeaturesConfig
from ploutos.features import indicators as ind
from ploutos.features.clock import LocalClock
from ploutos.features.cross import CrossSection
from ploutos.features.indicators import Bind, inline

Kind = Literal["raw", "observation", "cross", "macro"]

c, o, h, lo, v = (pl.col(name) for name in ("close", "open", "high", "low", "volume"))

RETURN_HORIZONS = (1, 2, 4, 8, 16, 32, 64)
"""Bars over which log returns are observed."""
RSI_WINDOWS = (7, 14, 28)
"""RSI lookbacks observed (14 is TA-Lib's default)."""
ROC_WINDOWS = (5, 10, 20)
"""Rate-of-change lookbacks observed."""
LEVEL_WINDOWS = (20, 50, 100, 200)
"""Windows of the support/resistance distances."""
FLOW_WINDOWS = (20, 100)
"""Windows of the OBV and A/D z-scores."""
CROSS_HORIZONS = (1, 8, 32)
"""Return horizons compared across the universe."""
MACRO_CHANGE_BARS = 24
"""Bars over which a macro series' change is observed."""
LOCAL_TZ = "America/New_York"
"""Clock of the time-of-day and day-of-week features."""


@dataclass(frozen=True)
class FeatureSpec:
    """One output column of the engine."""

    name: str
    kind: Kind
    definition: str
    warmup: int
    expr: Callable[[Bind], pl.Expr]
    """Builds the expression; intermediates used more than once go through the given ``bind``."""

    def build(self, bind: Bind = inline) -> pl.Expr:
        """The feature as one expression (``bind`` as in :mod:`ploutos.features.indicators`)."""
        return self.expr(bind).alias(self.name)


def _spec(name: str, kind: Kind, definition: str, warmup: int, expr: Callable[[Bind], pl.Expr]) -> FeatureSpec:
    return FeatureSpec(name, kind, definition, warmup, expr)


def raw_specs() -> list[FeatureSpec]:
    """TA-Lib-named indicators with their classical definitions and default parameters."""

    def macd_part(i: int) -> Callable[[Bind], pl.Expr]:
        return lambda b: ind.macd(c, 12, 26, 9, bind=b)[i]

    def bb_part(i: int) -> Callable[[Bind], pl.Expr]:
        return lambda b: ind.bbands(c, 20, 2.0, bind=b)[i]

    def dmi_part(i: int) -> Callable[[Bind], pl.Expr]:
        return lambda b: ind.dmi(h, lo, c, 14, bind=b)[i]

    def stoch_part(i: int) -> Callable[[Bind], pl.Expr]:
        return lambda b: ind.stoch(h, lo, c, 14, 3, 3, bind=b)[i]

    return [
        _spec("sma_20", "raw", "simple moving average of close, 20 bars", 19, lambda b: ind.sma(c, 20)),
        _spec(
            "ema_20",
            "raw",
            "exponential moving average of close, alpha 2/21, SMA-seeded",
            19,
            lambda b: ind.ema(c, 20, bind=b),
        ),
        _spec("rsi_14", "raw", "Wilder's relative strength index, 14 bars", 14, lambda b: ind.rsi(c, 14, bind=b)),
        _spec("macd", "raw", "EMA12(close) - EMA26(close)", 33, macd_part(0)),
        _spec("macd_signal", "raw", "EMA9 of macd", 33, macd_part(1)),
        _spec("macd_hist", "raw", "macd - macd_signal", 33, macd_part(2)),
        _spec("bb_upper_20", "raw", "SMA20 + 2 population std of close over 20 bars", 19, bb_part(0)),
        _spec("bb_middle_20", "raw", "SMA20 of close", 19, bb_part(1)),
        _spec("bb_lower_20", "raw", "SMA20 - 2 population std of close over 20 bars", 19, bb_part(2)),
        _spec("atr_14", "raw", "Wilder average of true range, 14 bars", 14, lambda b: ind.atr(h, lo, c, 14, bind=b)),
        _spec("natr_14", "raw", "100 * atr_14 / close", 14, lambda b: ind.natr(h, lo, c, 14, bind=b)),
        _spec("plus_di_14", "raw", "100 * Wilder(+DM) / Wilder(TR), 14 bars", 14, dmi_part(0)),
        _spec("minus_di_14", "raw", "100 * Wilder(-DM) / Wilder(TR), 14 bars", 14, dmi_part(1)),
        _spec("adx_14", "raw", "Wilder average of DX = 100 |+DI - -DI| / (+DI + -DI), 14 bars", 27, dmi_part(2)),
        _spec(
            "cci_20",
            "raw",
            "(TP - SMA20(TP)) / (0.015 mean abs deviation), TP = (h+l+c)/3",
            19,
            lambda b: ind.cci(h, lo, c, 20, bind=b),
        ),
        _spec(
            "willr_14",
            "raw",
            "-100 (highest high - close) / (highest high - lowest low), 14 bars",
            13,
            lambda b: ind.willr(h, lo, c, 14, bind=b),
        ),
        _spec(
            "mfi_14",
            "raw",
            "money flow index: 100 positive flow / total flow of TP*volume, 14 bars",
            14,
            lambda b: ind.mfi(h, lo, c, v, 14, bind=b),
        ),
        _spec("stoch_k", "raw", "slow %K: SMA3 of fast %K(14)", 17, stoch_part(0)),
        _spec("stoch_d", "raw", "slow %D: SMA3 of slow %K", 17, stoch_part(1)),
        _spec(
            "obv",
            "raw",
            "on-balance volume: running sum of volume signed by the close's move",
            0,
            lambda b: ind.obv(c, v),
        ),
        _spec(
            "ad",
            "raw",
            "Chaikin A/D line: running sum of ((c-l)-(h-c))/(h-l) * volume",
            0,
            lambda b: ind.ad(h, lo, c, v),
        ),
        _spec("roc_10", "raw", "100 (close / close 10 bars ago - 1)", 10, lambda b: ind.roc(c, 10)),
        _spec("mom_10", "raw", "close - close 10 bars ago", 10, lambda b: ind.mom(c, 10)),
    ]


def observation_specs(cfg: FeaturesConfig) -> list[FeatureSpec]:
    """The stationary per-ticker features the agent sees (they may read raw columns by name)."""
    windows = sorted(set(cfg.windows))
    specs: list[FeatureSpec] = []
    add = specs.append

    for n in RETURN_HORIZONS:
        add(
            _spec(
                f"ret_{n}", "observation", f"log return over {n} bar(s)", n, lambda b, n=n: ind.log_return(c, n, bind=b)
            )
        )
    for n in windows:
        add(
            _spec(
                f"rvol_{n}",
                "observation",
                f"std of 1-bar log returns over {n} bars",
                n,
                lambda b, n=n: ind.realized_vol(c, n, bind=b),
            )
        )
        add(
            _spec(
                f"parkinson_{n}",
                "observation",
                f"Parkinson high-low volatility over {n} bars",
                n - 1,
                lambda b, n=n: ind.parkinson_vol(h, lo, n, bind=b),
            )
        )
        add(
            _spec(
                f"garman_klass_{n}",
                "observation",
                f"Garman-Klass OHLC volatility over {n} bars",
                n - 1,
                lambda b, n=n: ind.garman_klass_vol(o, h, lo, c, n, bind=b),
            )
        )
        add(
            _spec(
                f"close_sma_{n}",
                "observation",
                f"log(close / SMA{n})",
                n - 1,
                lambda b, n=n: ind.log(c / b(ind.sma(c, n))),
            )
        )
        add(
            _spec(
                f"close_ema_{n}",
                "observation",
                f"log(close / EMA{n})",
                n - 1,
                lambda b, n=n: ind.log(c / b(ind.ema(c, n, bind=b))),
            )
        )
        add(
            _spec(
                f"close_z_{n}",
                "observation",
                f"z-score of close in its last {n} bars",
                n - 1,
                lambda b, n=n: ind.zscore(c, n, bind=b),
            )
        )
        add(
            _spec(
                f"volume_z_{n}",
                "observation",
                f"z-score of log(1 + volume) in its last {n} bars",
                n - 1,
                lambda b, n=n: ind.zscore(ind.log1p(v), n, bind=b),
            )
        )
    for fast, slow in zip(windows, windows[1:], strict=False):
        add(
            _spec(
                f"sma_{fast}_{slow}",
                "observation",
                f"log(SMA{fast} / SMA{slow})",
                slow - 1,
                lambda b, f=fast, s=slow: ind.log(b(ind.sma(c, f)) / b(ind.sma(c, s))),
            )
        )
    for n in RSI_WINDOWS:
        add(
            _spec(
                f"rsi_{n}_c",
                "observation",
                f"RSI{n} / 100 - 0.5",
                n,
                lambda b, n=n: b(ind.rsi(c, n, bind=b)) / 100 - 0.5,
            )
        )
    add(_spec("macd_c", "observation", "macd / close", 33, lambda b: b(ind.macd(c, bind=b)[0]) / c))
    add(_spec("macd_signal_c", "observation", "macd_signal / close", 33, lambda b: b(ind.macd(c, bind=b)[1]) / c))
    add(_spec("macd_hist_c", "observation", "macd_hist / close", 33, lambda b: b(ind.macd(c, bind=b)[2]) / c))
    add(
        _spec(
            "bb_pctb_20",
            "observation",
            "(close - lower band) / (upper - lower), 20 bars, 2 std",
            19,
            lambda b: _band_position(b),
        )
    )
    add(_spec("bb_width_20", "observation", "(upper - lower band) / middle band", 19, lambda b: _band_width(b)))
    add(_spec("natr_14_c", "observation", "atr_14 / close", 14, lambda b: b(ind.natr(h, lo, c, 14, bind=b)) / 100))
    add(_spec("adx_14_c", "observation", "adx_14 / 100", 27, lambda b: b(ind.dmi(h, lo, c, 14, bind=b)[2]) / 100))
    add(
        _spec(
            "di_spread_14",
            "observation",
            "(+DI - -DI) / 100",
            14,
            lambda b: (b(ind.dmi(h, lo, c, 14, bind=b)[0]) - b(ind.dmi(h, lo, c, 14, bind=b)[1])) / 100,
        )
    )
    add(_spec("cci_20_c", "observation", "cci_20 / 100", 19, lambda b: b(ind.cci(h, lo, c, 20, bind=b)) / 100))
    add(
        _spec(
            "willr_14_c",
            "observation",
            "willr_14 / 100 + 0.5",
            13,
            lambda b: b(ind.willr(h, lo, c, 14, bind=b)) / 100 + 0.5,
        )
    )
    add(
        _spec(
            "mfi_14_c",
            "observation",
            "mfi_14 / 100 - 0.5",
            14,
            lambda b: b(ind.mfi(h, lo, c, v, 14, bind=b)) / 100 - 0.5,
        )
    )
    add(
        _spec(
            "stoch_k_c",
            "observation",
            "stoch_k / 100 - 0.5",
            17,
            lambda b: b(ind.stoch(h, lo, c, bind=b)[0]) / 100 - 0.5,
        )
    )
    add(
        _spec(
            "stoch_d_c",
            "observation",
            "stoch_d / 100 - 0.5",
            17,
            lambda b: b(ind.stoch(h, lo, c, bind=b)[1]) / 100 - 0.5,
        )
    )
    for n in ROC_WINDOWS:
        add(
            _spec(
                f"roc_{n}_c", "observation", f"close / close {n} bars ago - 1", n, lambda b, n=n: b(ind.roc(c, n)) / 100
            )
        )
    add(_spec("mom_10_c", "observation", "mom_10 / close", 10, lambda b: b(ind.mom(c, 10)) / c))
    for n in FLOW_WINDOWS:
        add(
            _spec(
                f"obv_z_{n}",
                "observation",
                f"z-score of OBV in its last {n} bars",
                n - 1,
                lambda b, n=n: ind.zscore(b(ind.obv(c, v)), n, bind=b),
            )
        )
        add(
            _spec(
                f"ad_z_{n}",
                "observation",
                f"z-score of the A/D line in its last {n} bars",
                n - 1,
                lambda b, n=n: ind.zscore(b(ind.ad(h, lo, c, v)), n, bind=b),
            )
        )
    add(_spec("body", "observation", "(close - open) / (high - low)", 0, lambda b: _safe_ratio(c - o, h - lo, 0.0)))
    add(
        _spec(
            "upper_wick",
            "observation",
            "(high - max(open, close)) / (high - low)",
            0,
            lambda b: _safe_ratio(h - pl.max_horizontal(o, c), h - lo, 0.0),
        )
    )
    add(
        _spec(
            "lower_wick",
            "observation",
            "(min(open, close) - low) / (high - low)",
            0,
            lambda b: _safe_ratio(pl.min_horizontal(o, c) - lo, h - lo, 0.0),
        )
    )
    add(_spec("range", "observation", "log(high / low)", 0, lambda b: ind.log(h / lo)))
    add(_spec("gap", "observation", "log(open / previous close)", 1, lambda b: ind.log(o / ind.lag(c, 1))))
    for n in LEVEL_WINDOWS:
        add(
            _spec(
                f"to_high_{n}",
                "observation",
                f"log(close / highest high of {n} bars): distance to resistance",
                n - 1,
                lambda b, n=n: ind.log(c / b(ind.highest(h, n))),
            )
        )
        add(
            _spec(
                f"to_low_{n}",
                "observation",
                f"log(close / lowest low of {n} bars): distance to support",
                n - 1,
                lambda b, n=n: ind.log(c / b(ind.lowest(lo, n))),
            )
        )
    for part, period, weekday in (("hour", 24, False), ("dow", 7, True)):
        for function in ("sin", "cos"):
            add(
                _spec(
                    f"{part}_{function}",
                    "observation",
                    f"{function}(2 pi {'hour' if part == 'hour' else 'weekday'} / {period}), New York clock",
                    0,
                    lambda b, w=weekday, f=function: pl.col("timestamp").map_batches(
                        LocalClock(LOCAL_TZ, w, f), return_dtype=pl.Float64
                    ),
                )
            )
    return specs


def cross_specs(n_tickers: int, cfg: FeaturesConfig) -> list[FeatureSpec]:
    """Features comparing each ticker with the universe at the same timestamp (need 2+ tickers)."""
    if not cfg.cross_asset or n_tickers < 2:
        return []
    specs = []
    for n in CROSS_HORIZONS:
        ret = pl.col(f"ret_{n}")
        specs.append(
            _spec(
                f"excess_ret_{n}",
                "cross",
                f"ret_{n} minus its universe mean at the same bar",
                n,
                lambda b, ret=ret: _cross_section(b, ret, rank=False),
            )
        )
        specs.append(
            _spec(
                f"rank_ret_{n}",
                "cross",
                f"rank of ret_{n} in the universe at the same bar, in [-0.5, 0.5]",
                n,
                lambda b, ret=ret: _cross_section(b, ret, rank=True),
            )
        )
    return specs


def _cross_section(b: Bind, x: pl.Expr, *, rank: bool) -> pl.Expr:
    """``x`` against the universe at the same timestamp (:class:`~.kernels.CrossSection`); the
    timestamps' sort order is one shared intermediate."""
    stamp = pl.col("timestamp")
    return pl.map_batches([stamp, b(stamp.arg_sort()), x], CrossSection(rank), return_dtype=pl.Float64)


def macro_specs(macro_columns: Sequence[str]) -> list[FeatureSpec]:
    """Two features per aligned macro series: its z-score and its change."""
    specs = []
    for column in macro_columns:
        name = column.removeprefix("macro_").lower()
        x = pl.col(column)
        specs.append(
            _spec(
                f"macro_{name}_z",
                "macro",
                f"z-score of {name.upper()} (as published) in its last 200 bars",
                199,
                lambda b, x=x: ind.zscore(x, 200, bind=b),
            )
        )
        specs.append(
            _spec(
                f"macro_{name}_chg",
                "macro",
                f"log change of {name.upper()} over {MACRO_CHANGE_BARS} bars",
                MACRO_CHANGE_BARS,
                lambda b, x=x: ind.log(x / ind.lag(x, MACRO_CHANGE_BARS)),
            )
        )
    return specs


def all_specs(
    cfg: FeaturesConfig | None = None, *, n_tickers: int = 1, macro_columns: Sequence[str] = ()
) -> list[FeatureSpec]:
    """Raw, observation, cross-asset and macro features, in output order."""
    cfg = cfg or FeaturesConfig()
    return [*raw_specs(), *observation_specs(cfg), *macro_specs(macro_columns), *cross_specs(n_tickers, cfg)]


def _band_position(b: Bind) -> pl.Expr:
    upper, _, lower = (b(band) for band in ind.bbands(c, 20, 2.0, bind=b))
    return _safe_ratio(c - lower, upper - lower, 0.5)


def _band_width(b: Bind) -> pl.Expr:
    upper, middle, lower = (b(band) for band in ind.bbands(c, 20, 2.0, bind=b))
    return (upper - lower) / middle


def _safe_ratio(numerator: pl.Expr, denominator: pl.Expr, flat: float) -> pl.Expr:
    """numerator / denominator, or ``flat`` where the denominator is 0 (a bar with no range)."""
    return pl.when(denominator == 0).then(flat).otherwise(numerator / denominator)
