"""The engine's compiled features against the registry's expressions, evaluated alone by Polars.

The registry defines each feature; the engine computes the per-ticker, clock and cross-asset ones
in compiled families (``features/fused.py``). Here every such column is compared with its
definition on real bars (EURUSD hourly), on synthetic tickers of unequal lengths with flat bars
and zero volume, and on a universe larger than the small-count rank path; the nulls are checked
on regular and irregular bars; and the threads change no bit.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ploutos.config import DataConfig, FeaturesConfig
from ploutos.data.sources.sample import SampleSource
from ploutos.data.sources.synthetic import SyntheticSource
from ploutos.features import compute, feature_specs, fused
from ploutos.features.engine import _grouped, _plan, prepare_bars

RTOL, ATOL = 1e-9, 1e-12
"""Rounding only: a log ratio is taken as a difference of logs, a division by a constant stays a
division (Polars multiplies by the inverse)."""
ATOL_NEAR_ZERO = {"cci_20": 1e-9, "cci_20_c": 1e-11}
"""CCI is ``(tp - mean) / (0.015 mad)``: near its zero crossings an ulp of the typical price (divided
by 3, or multiplied by 1/3 in Polars) is 1e-10 of it."""


def synthetic(tickers: tuple[str, ...], bars: int, seed: int = 0) -> pl.DataFrame:
    cfg = replace(DataConfig(), source="synthetic", session="24x7", tickers=tickers, synthetic_bars=bars)
    source = SyntheticSource(replace(cfg, synthetic_seed=seed))
    return pl.concat([source.fetch(t, None, None) for t in tickers])


def with_flat_bars(bars: pl.DataFrame) -> pl.DataFrame:
    """Flat bars (open = high = low = close) with zero volume in the middle of every ticker."""
    middle = (pl.int_range(pl.len()).over("ticker") // 40) % 7 == 3
    return bars.with_columns(
        *(
            pl.when(middle).then(pl.col("close")).otherwise(pl.col(name)).alias(name)
            for name in ("open", "high", "low")
        ),
        volume=pl.when(middle).then(0.0).otherwise(pl.col("volume")),
    )


def reference(bars: pl.DataFrame, names: set[str]) -> dict[str, pl.DataFrame]:
    """Each ticker's features from the registry's expressions, one ticker at a time."""
    specs = [s for s in feature_specs(bars) if s.kind != "cross" and s.name in names]
    return {
        ticker: part.sort("timestamp").select("timestamp", *(s.build() for s in specs))
        for (ticker,), part in bars.group_by("ticker", maintain_order=True)
    }


def assert_columns_close(ours: pl.DataFrame, theirs: pl.DataFrame, names: list[str], label: str) -> None:
    for name in names:
        got = ours[name].to_numpy().astype(float)
        want = theirs[name].to_numpy().astype(float)
        want = np.where(np.isfinite(want), want, np.nan)  # the engine nulls what is not finite
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{label} {name}: nulls")
        atol = ATOL_NEAR_ZERO.get(name, ATOL)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol, equal_nan=True, err_msg=f"{label} {name}")


def compiled_names(bars: pl.DataFrame) -> list[str]:
    frame = prepare_bars(bars)
    _, bounds = _grouped(frame)
    wanted = _plan(None, bounds.shape[0] > 2, ()).fused
    return [name for name in wanted.names if not name.startswith(("excess_", "rank_"))]


@pytest.mark.parametrize("source", ["eurusd", "synthetic"])
def test_every_compiled_feature_is_its_registry_expression(source: str):
    if source == "eurusd":
        bars = SampleSource(DataConfig()).fetch("EURUSD", None, None)
    else:
        long, short = synthetic(("AAA",), 1500, seed=1), synthetic(("BBB",), 700, seed=2)
        bars = with_flat_bars(pl.concat([long, short]))
    names = compiled_names(bars)
    assert len(names) >= 100
    if source == "eurusd":
        # EURUSD has bars whose typical prices tie exactly: MFI classifies them by (h + l + c) / 3, which
        # the engine divides as TA-Lib does and Polars multiplies by 1/3, so a tie may fall either side.
        names = [name for name in names if not name.startswith("mfi_14")]
    features = compute(bars)
    for ticker, theirs in reference(bars, set(names)).items():
        ours = features.filter(pl.col("ticker") == ticker)
        assert ours["timestamp"].equals(theirs["timestamp"])
        assert_columns_close(ours, theirs, names, f"{source} {ticker}")


@pytest.mark.parametrize("tickers", [5, 40])  # small counts rank by counting, large ones by a merge sort
def test_cross_asset_features_are_their_registry_expressions(tickers: int):
    bars = synthetic(tuple(f"T{i:02d}" for i in range(tickers)), 300, seed=tickers)
    bars = bars.filter((pl.col("ticker") != "T01") | (pl.int_range(pl.len()).over("ticker") >= 50))  # T01 starts later
    features = compute(bars)
    cross = [s for s in feature_specs(bars) if s.kind == "cross"]
    assert len(cross) == 6
    theirs = features.select("timestamp", "ticker", *(s.build() for s in cross))
    assert_columns_close(features, theirs, [s.name for s in cross], "cross")


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=10_000),
    flat=st.booleans(),
    broken=st.sampled_from(["none", "nan_close", "zero_low", "negative_volume"]),
)
def test_nulls_are_exactly_the_values_that_are_not_finite(seed: int, flat: bool, broken: str):
    """Regular bars: a compiled feature's nulls are its warm-up, found without reading every value,
    and nothing after it is NaN. Irregular bars: every value is read."""
    bars = synthetic(("AAA", "BBB"), 400, seed=seed)
    if flat:
        bars = with_flat_bars(bars)
    row = pl.int_range(pl.len()) == 250
    if broken == "nan_close":
        bars = bars.with_columns(close=pl.when(row).then(float("nan")).otherwise(pl.col("close")))
    elif broken == "zero_low":
        bars = bars.with_columns(low=pl.when(row).then(0.0).otherwise(pl.col("low")))
    elif broken == "negative_volume":
        bars = bars.with_columns(volume=pl.when(row).then(-5.0).otherwise(pl.col("volume")))
    features = compute(bars)
    for name in compiled_names(bars):
        column = features[name]
        assert column.is_nan().sum() == 0, name  # not finite means null, never NaN
        values = column.to_numpy().astype(float)
        assert np.isfinite(values[~np.isnan(values)]).all(), name
    if broken == "none":  # regular bars: nulls only as a leading warm-up per ticker
        warmups = {s.name: s.warmup for s in feature_specs(bars)}
        for name in compiled_names(bars):
            for (ticker,), part in features.group_by("ticker", maintain_order=True):
                nulls = part[name].is_null().to_numpy()
                lead = int(np.argmin(nulls)) if not nulls.all() else len(nulls)
                assert not nulls[lead:].any(), f"{ticker} {name}: a null after the warm-up"
                assert lead <= warmups[name], f"{ticker} {name}: warm-up {lead} > {warmups[name]}"


def test_threads_and_task_sizes_change_no_bit(monkeypatch: pytest.MonkeyPatch):
    bars = synthetic(("AAA", "BBB", "CCC"), 2500, seed=4)
    frame = prepare_bars(bars)
    ordered, bounds = _grouped(frame)
    wanted = _plan(None, True, ()).fused
    rows = np.arange(ordered.height) - np.repeat(bounds[:-1], np.diff(bounds))
    ohlcv = tuple(ordered[name].to_numpy() for name in ("open", "high", "low", "close", "volume"))
    stamps = ordered["timestamp"].to_physical().to_numpy()
    one = fused.run(wanted, ohlcv, rows, bounds, stamps, threads=1)
    for threads, group_bars in ((2, fused.GROUP_BARS), (3, 1000)):
        monkeypatch.setattr(fused, "GROUP_BARS", group_bars)  # more groups than tickers' worth
        other = fused.run(wanted, ohlcv, rows, bounds, stamps, threads=threads)
        np.testing.assert_array_equal(one.values, other.values)
        np.testing.assert_array_equal(one.bits, other.bits)
        np.testing.assert_array_equal(one.missing, other.missing)


def test_the_compiled_set_is_in_the_registry_for_any_windows():
    for windows in ((5,), (3, 7, 400), (2, 10, 20, 50, 100, 200, 500)):
        cfg = FeaturesConfig(windows=windows)
        names = {s.name for s in feature_specs(synthetic(("AAA", "BBB"), 50), cfg)}
        wanted = fused.FusedSet(tuple(sorted(windows)), zone="America/New_York", cross=True)
        assert set(wanted.names) <= names


def _run_in_child(arguments: tuple) -> np.ndarray:
    return fused.run(*arguments, threads=2).values


def test_a_forked_child_runs_the_families_on_threads_of_its_own():
    """A process forked after the feature threads started gets a pool of its own: the parent's
    threads do not exist in the child, and a task handed to them would never run. (numpy only in
    the child: Polars itself does not survive a fork.)"""
    import multiprocessing

    bars = synthetic(("AAA", "BBB"), 300, seed=7)
    ordered, bounds = _grouped(prepare_bars(bars))
    wanted = _plan(None, True, ()).fused
    rows = np.arange(ordered.height) - np.repeat(bounds[:-1], np.diff(bounds))
    ohlcv = tuple(ordered[name].to_numpy().copy() for name in ("open", "high", "low", "close", "volume"))
    arguments = (wanted, ohlcv, rows, bounds, ordered["timestamp"].to_physical().to_numpy().copy())
    expected = fused.run(*arguments, threads=2).values  # the parent's pool now exists
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_run_in_child, (arguments,)).get(timeout=60)
    np.testing.assert_array_equal(got, expected)
