"""Drift scores: a quantile sketch of the training window against recent rows (analytics.drift)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest

from fakes.alpaca import FakeAlpaca
from ploutos.analytics.drift import (
    EPSILON,
    PROBABILITIES,
    PSI_THRESHOLD,
    compare,
    drift_table,
    psi_ks,
    reference_sketch,
)
from ploutos.data.store import read_dataset
from ploutos.results.hdf5 import read_drift


def _window(seed: int = 0, rows: int = 2000, assets: int = 2, features: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """AR(1) features (autocorrelated, as rolling indicators are), all rows valid."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((rows, assets, features))
    values = np.empty_like(noise)
    values[0] = noise[0]
    for t in range(1, rows):
        values[t] = 0.5 * values[t - 1] + noise[t]
    return values, np.ones((rows, assets), dtype=bool)


def test_sketch_is_per_asset_quantiles_of_valid_rows() -> None:
    values, valid = _window(rows=101, assets=2, features=1)
    valid[:50, 1] = False
    values[:50, 1] = 0.0  # what invalid entries hold
    sketch, cdf, rows = reference_sketch(values, valid)
    assert sketch.shape == cdf.shape == (2, 1, len(PROBABILITIES)) and rows.tolist() == [101, 51]
    np.testing.assert_allclose(sketch[1, 0], np.quantile(values[50:, 1, 0], PROBABILITIES))
    np.testing.assert_allclose(cdf[0, 0], (np.round(PROBABILITIES * 100) + 1) / 101)  # q_p is the value ranked 100 p
    assert (np.abs(cdf - PROBABILITIES) <= 1 / 51 + 1e-9).all()  # continuous: p within one value
    empty, _, none = reference_sketch(values, np.zeros_like(valid))
    assert np.isnan(empty).all() and none.tolist() == [0, 0]


def test_no_drift_on_a_shuffled_copy_of_the_training_window() -> None:
    values, valid = _window()
    sketch, cdf, rows = reference_sketch(values, valid)
    recent = np.random.default_rng(1).permutation(values)[:250]  # rows shuffled, a recent-sized sample
    report = compare(sketch, cdf, rows, recent, valid[:250])
    assert report.scored == 6 and report.drifting.sum() == 0 and report.share == 0.0
    assert np.nanmax(report.psi) < PSI_THRESHOLD  # sampling noise alone: about (bins - 1) / n = 19 / 250


@pytest.mark.parametrize("shift", ["volatility", "level"])
def test_drift_found_on_a_regime_shifted_series(shift: str) -> None:
    values, valid = _window()
    sketch, cdf, rows = reference_sketch(values, valid)
    recent, _ = _window(seed=7, rows=250)
    recent[:, 0, 1] = recent[:, 0, 1] * 3.0 if shift == "volatility" else recent[:, 0, 1] + 1.5
    report = compare(sketch, cdf, rows, recent, valid[:250])
    assert report.drifting.tolist() == [[False, True, False], [False, False, False]]
    assert report.share == pytest.approx(1 / 6)
    assert report.psi[0, 1] > PSI_THRESHOLD and report.ks[0, 1] > report.critical[0]
    table = drift_table(report, ("AAA", "BBB"), ("ret", "vol", "rsi"))
    assert table.splitlines()[1].split()[:2] == ["vol", "AAA"]
    assert table.splitlines()[-1].startswith("1 of 6 (feature, asset) pairs drift (16.7%)")


def test_psi_and_ks_by_hand() -> None:
    quantiles, cdf = np.array([0.0, 1.0, 2.0]), np.array([0.0, 0.5, 1.0])
    recent = np.array([0.5, 1.5, 1.5, 1.5])  # 1/4 in (0, 1], 3/4 in (1, 2]
    psi, ks = psi_ks(quantiles, cdf, recent)
    # bins (-inf, 0], (0, 1], (1, 2], (2, inf): reference 0, .5, .5, 0; recent 0, .25, .75, 0
    expected = (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.75 - 0.5) * np.log(0.75 / 0.5)
    assert psi == pytest.approx(expected) and ks == pytest.approx(0.25)
    # a point mass (a feature clipped at -1 for 60 % of its values): one cut point holding its known share
    psi, ks = psi_ks(
        np.array([-1.0, -1.0, -1.0, 0.0, 1.0]), np.array([0.6, 0.6, 0.6, 0.75, 1.0]), np.array([-1.0, 0.5])
    )
    # bins (-inf, -1] .6, (-1, 0] .15, (0, 1] .25, (1, inf) 0; recent .5, 0, .5, 0
    expected = (0.5 - 0.6) * np.log(0.5 / 0.6) + (EPSILON - 0.15) * np.log(EPSILON / 0.15) + 0.25 * np.log(0.5 / 0.25)
    assert psi == pytest.approx(expected) and ks == pytest.approx(0.25)


@pytest.mark.parametrize("kind", ["clipped", "discrete"])
def test_the_training_window_against_its_own_sketch_scores_about_0(kind: str) -> None:
    rng = np.random.default_rng(5)
    if kind == "clipped":  # 30 % at the lower bound, and the rest continuous
        values = np.clip(rng.standard_normal(10_000), -0.5244, None)
    else:  # 24 values, as the hour of day
        values = np.sin(2 * np.pi * rng.integers(0, 24, 10_000) / 24)
    sketch, cdf, _ = reference_sketch(values[:, None, None], np.ones((len(values), 1), dtype=bool))
    psi, ks = psi_ks(sketch[0, 0], cdf[0, 0], values)
    assert psi < 1e-9 and ks < 1e-9
    psi, ks = psi_ks(sketch[0, 0], cdf[0, 0], rng.permutation(values)[:1000])  # a sample: noise only
    assert psi < 0.05 and ks < 1.36 / np.sqrt(1000)


def test_ks_is_a_lower_bound_of_the_two_sample_statistic() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    reference, recent = rng.standard_normal(20000), rng.standard_normal(300) * 1.5 + 0.3
    sketch, cdf, _ = reference_sketch(reference[:, None, None], np.ones((len(reference), 1), dtype=bool))
    _, ks = psi_ks(sketch[0, 0], cdf[0, 0], recent)
    exact = stats.ks_2samp(reference, recent).statistic
    assert ks <= exact + 1e-3 and ks == pytest.approx(exact, abs=0.05)


def test_too_few_recent_rows_are_not_scored() -> None:
    values, valid = _window()
    sketch, cdf, rows = reference_sketch(values, valid)
    recent_valid = valid[:30].copy()
    recent_valid[15:, 1] = False  # asset 1: 15 valid rows, under MIN_ROWS
    report = compare(sketch, cdf, rows, values[:30] * 5, recent_valid)
    assert np.isnan(report.psi[1]).all() and report.scored == 3 and report.drifting[1].sum() == 0
    with pytest.raises(ValueError, match="shape"):
        compare(sketch, cdf, rows, values[:30, :, :2], valid[:30])


# -- the task files of a real training, and the command --------------------------------------------


def _drift(run: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ploutos", "drift", "--run", str(run), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=run.parent.parent)


def _shifted(bars: pl.DataFrame, last: int, factor: float) -> pl.DataFrame:
    """``bars`` whose last ``last`` bars move ``factor`` times as much (every price scaled alike, per ticker)."""
    frames = []
    for _, frame in bars.sort("timestamp").group_by("ticker", maintain_order=True):
        close = frame["close"].to_numpy()
        step = np.diff(np.log(close), prepend=np.log(close[0]))
        step[: len(close) - last] = 0.0
        ratio = np.exp(np.cumsum(step * (factor - 1.0)))  # 1 before the shift
        frames.append(frame.with_columns(*(pl.col(c) * ratio for c in ("open", "high", "low", "close"))))
    return pl.concat(frames)


def test_a_real_training_writes_the_sketch_and_the_command_finds_a_regime_shift(trained_run: Path, tmp_path: Path):
    task = trained_run / "tasks" / "fold0_member0.h5"
    reference = read_drift(task)
    with h5py.File(task, "r") as h5:
        names, tickers = h5["normalization/names"].asstr()[()], h5["tickers"].asstr()[()]
    assert reference.quantiles.shape == (len(tickers), len(names), len(PROBABILITIES)) and (reference.rows > 100).all()
    assert reference.cdf.shape == reference.quantiles.shape and (reference.cdf >= PROBABILITIES - 0.01).all()
    assert (np.diff(reference.quantiles, axis=2) >= 0).all() and np.isfinite(reference.quantiles).all()
    assert read_drift(trained_run / "tasks" / "fold0_ensemble.h5").quantiles.shape == reference.quantiles.shape

    data = trained_run.parent.parent / "data"  # the fixture's data.store
    plain = _drift(trained_run, "--data", str(data), "--bars", "300")
    assert plain.returncode in (0, 1), plain.stderr
    assert plain.stdout.startswith("fold 0: bars ") and "(feature, asset) pairs drift" in plain.stdout
    shifted = tmp_path / "shifted.csv"
    _shifted(read_dataset(data), 300, 4.0).write_csv(shifted)
    found = _drift(trained_run, "--data", str(shifted), "--bars", "300")
    assert found.returncode == 1, found.stdout + found.stderr  # past paper.drift_halt
    header, *rows = found.stdout.splitlines()[1:-2]
    assert header.split() == ["feature", "asset", "PSI", "KS", "KS", "crit"] and rows
    assert "past paper.drift_halt 50%: paper trading would halt" in found.stdout
    share = [float(line.split("(")[2].split("%")[0]) for line in (plain.stdout, found.stdout) for line in
             line.splitlines() if "pairs drift" in line]  # fmt: skip
    assert share[1] > share[0] and share[1] >= 50

    old = tmp_path / "old" / "results" / "quickstart"
    shutil.copytree(trained_run, old)
    for path in (old / "tasks").glob("*.h5"):
        with h5py.File(path, "a") as h5:
            del h5["drift"]
    refused = _drift(old, "--data", str(data))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "trained before drift references; train the run again" in refused.stderr
    usage = _drift(trained_run)  # --data or --live
    assert usage.returncode == 2 and "one of the arguments --data --live is required" in usage.stderr


def test_live_scores_recent_bars_from_the_data_api(trained_run: Path) -> None:
    key, secret = "PKDRIFTKEY1234", "drift-s3cr3t-never-printed"
    env = {**os.environ, "ALPACA_API_KEY": key, "ALPACA_SECRET_KEY": secret}
    with FakeAlpaca(api_key=key, page_size=10_000) as data:
        sets = ["data.source=alpaca", f"data.alpaca_url={data.url}", "data.tickers=[SPY]", "data.retry_backoff_s=0.01"]
        args = [sys.executable, "-m", "ploutos", "drift", "--run", str(trained_run), "--live", "--bars", "200"]
        done = subprocess.run([*args, *(f"--set={s}" for s in sets)], capture_output=True, text=True, timeout=300,
                              env=env)  # fmt: skip
    assert data.bar_requests(), done.stderr
    # the EURUSD model's features on the fake's SPY bars: far from its training window
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        done.stdout.startswith("fold 0: bars ") and " SPY " in done.stdout and "paper trading would halt" in done.stdout
    )
    assert key not in done.stdout + done.stderr and secret not in done.stdout + done.stderr
