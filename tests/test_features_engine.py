"""The feature engine: coverage, stationarity, causality, alignment, normalization, pandas facade."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ploutos.config import DataConfig, FeaturesConfig
from ploutos.data.sources.sample import SampleSource
from ploutos.data.sources.synthetic import SyntheticSource
from ploutos.errors import DataError, FeatureError
from ploutos.features import FeatureEngineer, compute, feature_specs
from ploutos.features.grid import align
from ploutos.features.normalize import fit, normalize

TALIB_NAMES = [
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
    "adx_14",
    "plus_di_14",
    "minus_di_14",
    "cci_20",
    "willr_14",
    "mfi_14",
    "stoch_k",
    "stoch_d",
    "obv",
    "ad",
    "roc_10",
    "mom_10",
]


def synthetic(tickers: tuple[str, ...] = ("AAA",), bars: int = 1500, seed: int = 0) -> pl.DataFrame:
    cfg = replace(DataConfig(), source="synthetic", session="24x7", tickers=tickers, synthetic_bars=bars)
    source = SyntheticSource(replace(cfg, synthetic_seed=seed))
    return pl.concat([source.fetch(t, None, None) for t in tickers])


@pytest.fixture(scope="module")
def eurusd() -> pl.DataFrame:
    return SampleSource(DataConfig()).fetch("EURUSD", None, None)


@pytest.fixture(scope="module")
def universe() -> pl.DataFrame:
    return synthetic(("AAA", "BBB", "CCC"), bars=1200)


def test_at_least_85_features_per_ticker_plus_the_talib_names(eurusd: pl.DataFrame):
    features = compute(eurusd)
    specs = feature_specs(eurusd)
    per_ticker = [s for s in specs if s.kind == "observation"]
    assert len(per_ticker) >= 85
    assert set(TALIB_NAMES) <= set(features.columns)
    assert features.columns[:2] == ["timestamp", "ticker"]
    assert features.height == eurusd.height
    assert len(set(features.columns)) == features.width


def test_cross_asset_and_macro_features_appear_when_they_can(universe: pl.DataFrame):
    with_macro = universe.with_columns(macro_VIX=pl.lit(20.0) + pl.int_range(pl.len()).cast(pl.Float64).sin())
    names = compute(with_macro).columns
    assert {"excess_ret_1", "rank_ret_8", "macro_vix_z", "macro_vix_chg"} <= set(names)
    assert not any(n.startswith("excess_") for n in compute(universe.filter(pl.col("ticker") == "AAA")).columns)


def test_the_expressions_are_built_once_per_config_and_columns(universe: pl.DataFrame):
    from ploutos.features.engine import _plan  # the cache itself, to count its hits

    one = universe.filter(pl.col("ticker") == "AAA")
    narrow = FeaturesConfig(windows=(5, 10))
    _plan.cache_clear()
    first = compute(one)
    names = compute(one, narrow).columns
    assert "close_sma_10" in names and "close_sma_20" not in names
    assert compute(one).equals(first)  # another config in between changes nothing
    assert "excess_ret_1" in compute(universe).columns  # a universe gets its cross-asset plan
    info = _plan.cache_info()
    assert (info.misses, info.hits) == (3, 1)


def test_cross_asset_features_compare_tickers_at_the_same_bar(universe: pl.DataFrame):
    features = compute(universe)
    at_each_bar = features.group_by("timestamp").agg(pl.col("excess_ret_1").sum(), pl.col("rank_ret_1").sort())
    assert at_each_bar["excess_ret_1"].drop_nulls().abs().max() < 1e-12
    assert at_each_bar["rank_ret_1"].drop_nulls().list.get(0).max() == pytest.approx(-0.5)


def test_every_feature_is_defined_after_its_warmup(eurusd: pl.DataFrame):
    features = compute(eurusd)
    for spec in feature_specs(eurusd):
        column = features[spec.name]
        after = column.slice(spec.warmup + 1)
        assert after.null_count() == 0, (spec.name, after.null_count())
        assert column.slice(0, spec.warmup).null_count() == spec.warmup or spec.warmup == 0, spec.name


def test_observation_features_are_stationary_not_price_levels(eurusd: pl.DataFrame):
    """Scale the prices and the volume: no observation feature may move.

    The factors are powers of two, so the scaling itself is exact in floating point and ties
    (a typical price equal to the previous one) stay ties.
    """
    scaled = eurusd.with_columns(pl.col("open", "high", "low", "close") * 1024.0, pl.col("volume") * 8.0)
    kinds = ("observation",)
    base, moved = compute(eurusd, kinds=kinds), compute(scaled, kinds=kinds)
    for name in base.columns[2:]:
        np.testing.assert_allclose(
            base[name].to_numpy(), moved[name].to_numpy(), rtol=1e-6, atol=1e-8, err_msg=name, equal_nan=True
        )


@settings(max_examples=12, deadline=None)
@given(cut=st.integers(min_value=5, max_value=899), seed=st.integers(min_value=0, max_value=3))
def test_appending_future_bars_never_changes_a_past_value(cut: int, seed: int):
    bars = synthetic(("AAA", "BBB"), bars=900, seed=seed).with_columns(
        macro_VIX=(pl.int_range(pl.len()).cast(pl.Float64) / 50).sin() + 20.0
    )
    full = compute(bars)
    cut_time = bars.filter(pl.col("ticker") == "AAA")["timestamp"][cut]
    past = compute(bars.filter(pl.col("timestamp") < cut_time))
    same_rows = full.filter(pl.col("timestamp") < cut_time)
    assert past.shape == same_rows.shape
    for name in past.columns[2:]:
        # Rolling sums may be evaluated in different chunks for different lengths: allow rounding only.
        np.testing.assert_allclose(
            past[name].to_numpy(), same_rows[name].to_numpy(), rtol=1e-9, atol=1e-12, err_msg=name
        )


def test_align_masks_missing_bars_and_forward_fills_a_bounded_number(universe: pl.DataFrame):
    times = universe["timestamp"].unique().sort()
    hole = times.slice(600, 5)  # 5 missing bars of BBB
    bars = universe.filter(~((pl.col("ticker") == "BBB") & pl.col("timestamp").is_in(hole.implode())))
    features = compute(bars, kinds=("observation",))
    names = features.columns[2:]
    arrays = align(features, bars, names, max_ffill_bars=2)
    assert arrays.tickers == ("AAA", "BBB", "CCC")
    assert arrays.values.dtype == np.float32 and arrays.shape == (len(times), 3, len(names))
    b = 1
    assert not arrays.present[600:605, b].any() and arrays.present[599, b]
    assert arrays.valid[600:602, b].all() and not arrays.valid[602:605, b].any()
    np.testing.assert_array_equal(arrays.values[601, b], arrays.values[599, b])  # carried forward
    assert (arrays.values[602:605, b] == 0).all()
    assert arrays.prices[601, b, 4] == 0.0 and arrays.prices[601, b, 3] == arrays.prices[599, b, 3]
    assert not arrays.valid[:10].any()  # warm-up
    assert arrays.valid[300:600].all()


def test_normalization_is_fitted_on_the_training_window_only(universe: pl.DataFrame):
    features = compute(universe, kinds=("observation",))
    arrays = align(features, universe, features.columns[2:], max_ffill_bars=2)
    train = slice(0, 800)
    stats = fit(arrays, train, "zscore")
    poisoned = arrays.values.copy()
    poisoned[800:] += 1000.0  # the test window must not move the statistics
    stats_poisoned = fit(replace(arrays, values=poisoned), train, "zscore")
    np.testing.assert_allclose(stats.center, stats_poisoned.center)
    np.testing.assert_allclose(stats.scale, stats_poisoned.scale)

    scaled, _ = normalize(arrays, train, FeaturesConfig(clip=10.0, max_saturation=0.05))
    train_values = scaled.values[train][scaled.valid[train]]
    np.testing.assert_allclose(train_values.mean(axis=0), 0, atol=0.05)
    assert (np.abs(scaled.values) <= 10.0).all()


def test_a_saturating_feature_stops_the_build_and_is_named(universe: pl.DataFrame):
    features = compute(universe, kinds=("observation",))
    arrays = align(features, universe, features.columns[2:], max_ffill_bars=2)
    with pytest.raises(
        FeatureError, match=r"saturate at the clip bound ±0\.5 .*: \w+ \d+\.\d%.* more; raise features\.clip"
    ):
        normalize(arrays, slice(0, 800), FeaturesConfig(clip=0.5, max_saturation=0.02))


def test_pandas_facade_returns_the_same_numbers_in_the_input_order(eurusd: pl.DataFrame):
    frame = eurusd.to_pandas().drop(columns="ticker")
    frame.columns = ["Date", "Open", "High", "Low", "Close", "Volume"]
    frame = frame.set_index("Date")
    frame.index = frame.index.tz_convert(None)  # naive, as many pandas users have
    shuffled = frame.sample(frac=1.0, random_state=0)
    out = FeatureEngineer(ticker="EURUSD").transform(shuffled)
    assert isinstance(out, pd.DataFrame)
    assert out.index.equals(shuffled.index)
    reference = compute(eurusd).to_pandas()
    reference.index = frame.index
    pd.testing.assert_series_equal(out["rsi_14"], reference.loc[shuffled.index, "rsi_14"], check_names=False)


def test_bars_without_the_needed_columns_are_refused():
    bars = pl.DataFrame({"timestamp": [datetime(2024, 1, 1, tzinfo=timezone.utc)], "close": [1.0]})
    with pytest.raises(Exception, match="bars lack column"):
        compute(bars)


def test_a_bar_without_a_timestamp_is_refused_by_its_row():
    bars = synthetic(("AAA",), bars=50)
    bars = bars.with_columns(timestamp=pl.when(pl.int_range(pl.len()) == 7).then(None).otherwise(pl.col("timestamp")))
    with pytest.raises(DataError, match="bar 7 of 'AAA' has no timestamp"):
        compute(bars)


def test_unsorted_input_gives_the_same_features(universe: pl.DataFrame):
    shuffled = universe.sample(fraction=1.0, shuffle=True, seed=1)
    a = compute(universe).sort("ticker", "timestamp")
    b = compute(shuffled).sort("ticker", "timestamp")
    assert a.equals(b)


def test_one_query_over_many_tickers_is_each_ticker_alone():
    """Every lag, window and running sum restarts at a ticker's first bar: no value leaks across."""
    bars = synthetic(("AAA", "BBB", "CCC"), bars=700, seed=5).filter(
        (pl.col("ticker") != "BBB") | (pl.int_range(pl.len()).over("ticker") >= 250)  # BBB starts later
    )
    together = compute(bars, kinds=("raw", "observation"))
    for ticker in ("AAA", "BBB", "CCC"):
        alone = compute(bars.filter(pl.col("ticker") == ticker), kinds=("raw", "observation"))
        mine = together.filter(pl.col("ticker") == ticker)
        assert mine.columns == alone.columns
        for name in alone.columns[2:]:
            np.testing.assert_array_equal(mine[name].to_numpy(), alone[name].to_numpy(), err_msg=f"{ticker} {name}")
