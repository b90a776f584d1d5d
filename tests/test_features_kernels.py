"""The compiled window kernels against plain numpy and Polars, and their per-ticker restarts."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from ploutos.features import kernels
from ploutos.features.clock import LocalClock
from ploutos.features.cross import cross_section

N = 10_000  # more than kernels.RESYNC, so the running sums are resynced inside the series


@pytest.fixture(scope="module")
def walk() -> np.ndarray:
    rng = np.random.default_rng(3)
    x = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, N)))
    x[5000:5300] = x[4999]  # a flat stretch: exact zeros expected
    x[7000] = np.nan  # a missing value: every window holding it is missing
    return x


def _one_ticker(x: np.ndarray) -> np.ndarray:
    return np.arange(len(x), dtype=np.int64)


def _windows(x: np.ndarray, n: int) -> np.ndarray:
    """``(len(x), n)``: each row's window, NaN-padded at the start."""
    return sliding_window_view(np.r_[np.full(n - 1, np.nan), x], n)


@pytest.mark.parametrize("n", [2, 20, 200])
def test_rolling_kernels_match_numpy(walk: np.ndarray, n: int) -> None:
    rows, windows = _one_ticker(walk), _windows(walk, n)
    with np.errstate(invalid="ignore"):
        expected = {
            "mean": windows.mean(axis=1),
            "std": windows.std(axis=1, ddof=1),
            "max": windows.max(axis=1),
            "min": windows.min(axis=1),
        }
    with np.errstate(invalid="ignore", divide="ignore"):
        constant = np.ptp(windows, axis=1) == 0  # numpy's std there is a rounding residue, not 0
        expected["zscore"] = np.where(constant, 0.0, (walk - expected["mean"]) / expected["std"])
        expected["rms"] = np.sqrt((windows * windows).mean(axis=1))
    got = {
        "mean": kernels.rolling_mean(walk, rows, n, 1.0 / n, False),
        "zscore": kernels.rolling_std(walk, rows, n, 1, True),
        "rms": kernels.rolling_mean(walk * walk, rows, n, 1.0 / n, True),
        "std": kernels.rolling_std(walk, rows, n, 1, False),
        "max": kernels.rolling_extreme(walk, rows, n, 1.0),
        "min": kernels.rolling_extreme(walk, rows, n, -1.0),
    }
    for name in expected:
        np.testing.assert_array_equal(np.isnan(got[name]), np.isnan(expected[name]), err_msg=name)
        # From running sums: std to 1e-9 absolute on prices near 100; a z-score is ill-conditioned on a
        # window of nearly equal prices (2 bars that differ by 1e-4): 1e-5 relative there.
        atol, rtol = {"std": (1e-9, 1e-10), "zscore": (1e-9, 1e-5)}.get(name, (1e-10, 1e-10))
        np.testing.assert_allclose(got[name], expected[name], rtol=rtol, atol=atol, equal_nan=True, err_msg=name)
    flat = slice(5000 + n - 1, 5300)
    assert (got["std"][flat] == 0.0).all() and (got["mean"][flat] == walk[5000]).all()


def test_a_prefix_gives_the_same_bits(walk: np.ndarray) -> None:
    head = walk[:6123]
    for full, prefix in [
        (
            kernels.rolling_std(walk, _one_ticker(walk), 50, 0, True),
            kernels.rolling_std(head, _one_ticker(head), 50, 0, True),
        ),
        (
            kernels.rolling_mean(walk, _one_ticker(walk), 50, 1.0, False),
            kernels.rolling_mean(head, _one_ticker(head), 50, 1.0, False),
        ),
    ]:
        np.testing.assert_array_equal(full[: len(head)], prefix)


def test_every_kernel_restarts_at_each_tickers_first_row(walk: np.ndarray) -> None:
    a, b = walk[:3000], walk[3000:4500]
    both = np.r_[a, b]
    rows = np.r_[np.arange(len(a)), np.arange(len(b))].astype(np.int64)
    calls = {
        "rolling_mean": lambda x, r: kernels.rolling_mean(x, r, 20, 0.05, True),
        "rolling_std": lambda x, r: kernels.rolling_std(x, r, 20, 0, True),
        "rolling_extreme": lambda x, r: kernels.rolling_extreme(x, r, 20, 1.0),
        "seeded_ewm": lambda x, r: kernels.seeded_ewm(x, r, 0.1, 0, 20, 19, 0.0),
        "mean_abs_deviation": lambda x, r: kernels.mean_abs_deviation(x, x * 0.99, r, 20),
        "cumulative_sum": lambda x, r: kernels.cumulative_sum(x, r),
        "difference": lambda x, r: kernels.difference(x, r, 3),
    }
    for name, call in calls.items():
        together = call(both, rows)
        alone = np.r_[call(a, _one_ticker(a)), call(b, _one_ticker(b))]
        np.testing.assert_array_equal(together, alone, err_msg=name)


@pytest.mark.parametrize("tickers", [7, 300])  # an insertion sort per timestamp, then numpy's sort
def test_cross_section_matches_polars_rank_and_mean(tickers: int) -> None:
    rng = np.random.default_rng(0)
    stamps = np.repeat(np.arange(400 if tickers < 100 else 20), tickers)
    x = rng.integers(-3, 4, len(stamps)).astype(float)  # many ties
    x[rng.random(len(x)) < 0.1] = np.nan
    frame = pl.DataFrame({"t": stamps, "x": x}, nan_to_null=True)
    expected = frame.select(
        rank=(pl.col("x").rank() - 1).over("t") / (pl.col("x").count().over("t") - 1).clip(1) - 0.5,
        excess=pl.col("x") - pl.col("x").mean().over("t"),
    )
    order = np.argsort(stamps[::-1], kind="stable")  # any order of the rows works
    shuffled = stamps[::-1].copy(), x[::-1].copy()
    rank = cross_section(shuffled[0], order, shuffled[1], True)[::-1]
    excess = cross_section(shuffled[0], order, shuffled[1], False)[::-1]
    np.testing.assert_allclose(rank, expected["rank"].to_numpy(), rtol=0, atol=1e-15)
    np.testing.assert_allclose(excess, expected["excess"].to_numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("zone", ["America/New_York", "Europe/London", "Australia/Lord_Howe"])
def test_the_local_clock_matches_polars_across_daylight_saving(zone: str) -> None:
    stamps = pl.datetime_range(
        pl.datetime(2019, 1, 1, time_zone="UTC"), pl.datetime(2024, 12, 31, time_zone="UTC"), "37m", eager=True
    )
    local = stamps.dt.convert_time_zone(zone)
    hours = local.dt.hour().cast(pl.Float64) + local.dt.minute().cast(pl.Float64) / 60
    weekdays = local.dt.weekday().cast(pl.Float64) - 1
    for weekday, period, part in ((False, 24, hours), (True, 7, weekdays)):
        for function in ("sin", "cos"):
            got = LocalClock(zone, weekday, function)(stamps).to_numpy()
            expected = getattr(np, function)(2 * np.pi * part.to_numpy() / period)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12, err_msg=f"{zone} {function} {period}")
