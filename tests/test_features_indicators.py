"""Indicators against TA-Lib, causality, and flat-bar / zero-volume edge cases."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import talib

from ploutos.features import indicators as ind

N_BARS = 3000
WARMUP = 300
RTOL = 1e-9  # measured worst case is ~1e-11 (CCI, MFI: different summation order); TA-Lib itself is exact

OPEN, HIGH, LOW, CLOSE, VOL = (pl.col(name) for name in ("open", "high", "low", "close", "volume"))


def _bars(n: int, seed: int = 7) -> pl.DataFrame:
    """Random-walk OHLCV with low <= open, close <= high and positive volume."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0.0, 0.002, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.005, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.005, n)))
    volume = rng.lognormal(10.0, 1.0, n)
    return pl.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume})


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    return _bars(N_BARS)


# name -> (polars expression, function of numpy arrays giving the TA-Lib output)
CASES = {
    "sma_20": (ind.sma(CLOSE, 20), lambda a: talib.SMA(a["close"], 20)),
    "max_20": (ind.highest(HIGH, 20), lambda a: talib.MAX(a["high"], 20)),
    "min_20": (ind.lowest(LOW, 20), lambda a: talib.MIN(a["low"], 20)),
    "ema_20": (ind.ema(CLOSE, 20), lambda a: talib.EMA(a["close"], 20)),
    "rsi_14": (ind.rsi(CLOSE, 14), lambda a: talib.RSI(a["close"], 14)),
    "macd": (ind.macd(CLOSE)[0], lambda a: talib.MACD(a["close"], 12, 26, 9)[0]),
    "macd_signal": (ind.macd(CLOSE)[1], lambda a: talib.MACD(a["close"], 12, 26, 9)[1]),
    "macd_hist": (ind.macd(CLOSE)[2], lambda a: talib.MACD(a["close"], 12, 26, 9)[2]),
    "bb_upper_20": (ind.bbands(CLOSE, 20, 2.0)[0], lambda a: talib.BBANDS(a["close"], 20, 2.0, 2.0, 0)[0]),
    "bb_middle_20": (ind.bbands(CLOSE, 20, 2.0)[1], lambda a: talib.BBANDS(a["close"], 20, 2.0, 2.0, 0)[1]),
    "bb_lower_20": (ind.bbands(CLOSE, 20, 2.0)[2], lambda a: talib.BBANDS(a["close"], 20, 2.0, 2.0, 0)[2]),
    "true_range": (ind.true_range(HIGH, LOW, CLOSE), lambda a: talib.TRANGE(a["high"], a["low"], a["close"])),
    "atr_14": (ind.atr(HIGH, LOW, CLOSE, 14), lambda a: talib.ATR(a["high"], a["low"], a["close"], 14)),
    "natr_14": (ind.natr(HIGH, LOW, CLOSE, 14), lambda a: talib.NATR(a["high"], a["low"], a["close"], 14)),
    "plus_di_14": (ind.dmi(HIGH, LOW, CLOSE, 14)[0], lambda a: talib.PLUS_DI(a["high"], a["low"], a["close"], 14)),
    "minus_di_14": (ind.dmi(HIGH, LOW, CLOSE, 14)[1], lambda a: talib.MINUS_DI(a["high"], a["low"], a["close"], 14)),
    "adx_14": (ind.dmi(HIGH, LOW, CLOSE, 14)[2], lambda a: talib.ADX(a["high"], a["low"], a["close"], 14)),
    "cci_20": (ind.cci(HIGH, LOW, CLOSE, 20), lambda a: talib.CCI(a["high"], a["low"], a["close"], 20)),
    "willr_14": (ind.willr(HIGH, LOW, CLOSE, 14), lambda a: talib.WILLR(a["high"], a["low"], a["close"], 14)),
    "mfi_14": (
        ind.mfi(HIGH, LOW, CLOSE, VOL, 14),
        lambda a: talib.MFI(a["high"], a["low"], a["close"], a["volume"], 14),
    ),
    "stoch_k": (
        ind.stoch(HIGH, LOW, CLOSE)[0],
        lambda a: talib.STOCH(a["high"], a["low"], a["close"], 14, 3, 0, 3, 0)[0],
    ),
    "stoch_d": (
        ind.stoch(HIGH, LOW, CLOSE)[1],
        lambda a: talib.STOCH(a["high"], a["low"], a["close"], 14, 3, 0, 3, 0)[1],
    ),
    "obv": (ind.obv(CLOSE, VOL), lambda a: talib.OBV(a["close"], a["volume"])),
    "ad": (ind.ad(HIGH, LOW, CLOSE, VOL), lambda a: talib.AD(a["high"], a["low"], a["close"], a["volume"])),
    "roc_10": (ind.roc(CLOSE, 10), lambda a: talib.ROC(a["close"], 10)),
    "mom_10": (ind.mom(CLOSE, 10), lambda a: talib.MOM(a["close"], 10)),
}

# Everything public, for causality and edge cases (tuple outputs flattened).
ALL = {
    **{name: expr for name, (expr, _) in CASES.items()},
    "wilder_14": ind.wilder(CLOSE, 14),
    "log_return_5": ind.log_return(CLOSE, 5),
    "realized_vol_20": ind.realized_vol(CLOSE, 20),
    "parkinson_vol_20": ind.parkinson_vol(HIGH, LOW, 20),
    "garman_klass_vol_20": ind.garman_klass_vol(OPEN, HIGH, LOW, CLOSE, 20),
    "zscore_20": ind.zscore(CLOSE, 20),
    "zscore_volume_20": ind.zscore(VOL, 20),
    "rolling_percentile_20": ind.rolling_percentile(CLOSE, 20),
    "range_position_14": ind.range_position(HIGH, LOW, CLOSE, 14),
    "log_dist_max_20": ind.log_dist_max(CLOSE, 20),
    "log_dist_min_20": ind.log_dist_min(CLOSE, 20),
    "safe_div": ind.safe_div(CLOSE - OPEN, HIGH - LOW),
}


def _arrays(df: pl.DataFrame) -> dict[str, np.ndarray]:
    return {name: df[name].to_numpy() for name in df.columns}


def _select(df: pl.DataFrame, exprs: dict[str, pl.Expr]) -> pl.DataFrame:
    return df.lazy().select([e.alias(n) for n, e in exprs.items()]).collect()


@pytest.fixture(scope="module")
def ours(bars: pl.DataFrame) -> pl.DataFrame:
    return _select(bars, ALL)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_talib(name: str, bars: pl.DataFrame, ours: pl.DataFrame) -> None:
    expected = CASES[name][1](_arrays(bars))
    got = ours[name].to_numpy().astype(float)
    # Same warm-up as TA-Lib (null where it gives NaN) ...
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    # ... and the same values after it.
    np.testing.assert_allclose(got[WARMUP:], expected[WARMUP:], rtol=RTOL, atol=1e-9)


@pytest.fixture(scope="module")
def engine_output(bars: pl.DataFrame) -> pl.DataFrame:
    """The feature engine's columns: the same indicators, their intermediates shared as columns."""
    from datetime import datetime, timedelta, timezone

    from ploutos.features import compute

    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    stamps = [start + timedelta(hours=i) for i in range(bars.height)]
    return compute(bars.with_columns(timestamp=pl.Series(stamps), ticker=pl.lit("T")), kinds=("raw",))


@pytest.mark.parametrize("name", [name for name in CASES if name not in ("true_range", "max_20", "min_20")])
def test_engine_columns_match_talib(name: str, bars: pl.DataFrame, engine_output: pl.DataFrame) -> None:
    expected = CASES[name][1](_arrays(bars))
    got = engine_output[name].to_numpy().astype(float)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got[WARMUP:], expected[WARMUP:], rtol=RTOL, atol=1e-9)


@pytest.mark.parametrize("k", [1, 2, 15, 40, 301, 1234])
def test_causal(k: int, bars: pl.DataFrame, ours: pl.DataFrame) -> None:
    # Polars' rolling kernels restart their running sums at data-dependent points, so a prefix can
    # differ from the full run by an ulp (observed 2e-16 relative); nulls must match exactly.
    prefix = _select(bars.head(k), ALL)
    for name in ALL:
        got, full = prefix[name].to_numpy().astype(float), ours[name].head(k).to_numpy().astype(float)
        np.testing.assert_allclose(got, full, rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=name)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(full), err_msg=name)


def _assert_finite_or_null(df: pl.DataFrame) -> None:
    for name in df.columns:
        values = df[name].drop_nulls().to_numpy().astype(float)
        assert np.isfinite(values).all(), name


def test_flat_bars_and_zero_volume() -> None:
    n = 400
    df = pl.DataFrame({name: np.full(n, 50.0) for name in ("open", "high", "low", "close")}).with_columns(
        volume=pl.lit(0.0)
    )
    out = _select(df, ALL)
    _assert_finite_or_null(out)
    last = out.row(-1, named=True)
    # Documented constants (TA-Lib's where it defines one).
    for name in ("rsi_14", "willr_14", "cci_20", "mfi_14", "stoch_k", "stoch_d", "plus_di_14", "minus_di_14"):
        assert last[name] == 0.0, name
    assert last["adx_14"] == 0.0
    assert last["zscore_20"] == 0.0
    assert last["range_position_14"] == 0.5
    assert last["safe_div"] is None
    assert last["atr_14"] == 0.0 and last["realized_vol_20"] == 0.0 and last["garman_klass_vol_20"] == 0.0


def test_mixed_flat_segments_no_inf(bars: pl.DataFrame) -> None:
    # A random walk that freezes for a while (flat bars, no volume), then moves again.
    df = bars.head(600).with_row_index("i")
    frozen = (pl.col("i") >= 200) & (pl.col("i") < 300)
    price = pl.col("close").gather(199)
    df = df.with_columns(
        [pl.when(frozen).then(price).otherwise(pl.col(c)).alias(c) for c in ("open", "high", "low", "close")]
        + [pl.when(frozen).then(0.0).otherwise(pl.col("volume")).alias("volume")]
    ).drop("i")
    out = _select(df, ALL)
    _assert_finite_or_null(out)
    # After the warm-up nothing is null again.
    assert out.slice(WARMUP).null_count().sum_horizontal().item() == 0
    arrays = _arrays(df)
    for name in ("rsi_14", "atr_14", "willr_14", "cci_20", "mfi_14", "obv", "ad", "stoch_k"):
        expected = CASES[name][1](arrays)
        np.testing.assert_allclose(out[name].to_numpy()[WARMUP:], expected[WARMUP:], rtol=RTOL, atol=1e-9)


def test_stationary_helpers_values(bars: pl.DataFrame, ours: pl.DataFrame) -> None:
    a = _arrays(bars)
    lr1 = np.diff(np.log(a["close"]), prepend=np.nan)
    np.testing.assert_allclose(ours["log_return_5"].to_numpy()[5:], np.log(a["close"][5:] / a["close"][:-5]))
    rv = np.array([np.std(lr1[i - 19 : i + 1], ddof=1) for i in range(20, N_BARS)])
    np.testing.assert_allclose(ours["realized_vol_20"].to_numpy()[20:], rv, rtol=1e-8)
    hl = np.log(a["high"] / a["low"])
    pk = np.sqrt(np.convolve(hl * hl, np.ones(20) / 20, "valid") / (4 * np.log(2)))
    np.testing.assert_allclose(ours["parkinson_vol_20"].to_numpy()[19:], pk, rtol=1e-8)
    z = (a["close"] - talib.SMA(a["close"], 20)) / talib.STDDEV(a["close"], 20)
    np.testing.assert_allclose(ours["zscore_20"].to_numpy()[19:], z[19:], rtol=1e-7)
    pct = ours["rolling_percentile_20"].to_numpy()
    assert np.nanmin(pct) >= 0.0 and np.nanmax(pct) <= 1.0
    assert (ours["log_dist_max_20"].drop_nulls() <= 0).all() and (ours["log_dist_min_20"].drop_nulls() >= 0).all()


def test_rejects_bad_periods() -> None:
    with pytest.raises(ValueError):
        ind.sma(CLOSE, 0)
    with pytest.raises(ValueError):
        ind.dmi(HIGH, LOW, CLOSE, 1)
