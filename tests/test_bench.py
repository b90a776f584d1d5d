"""The benchmarks' harness and their output contract: every figure and its same-run baseline are
measured and printed in the documented line format, which scripts read (no speed assertions)."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from ploutos.bench import env as bench_env
from ploutos.bench import features as bench
from ploutos.bench import vecenv as bench_vecenv
from ploutos.bench.timing import Timing, format_ms, time_call

RATE = r"[\d,]+"


def test_time_call_counts_repeats_and_keeps_the_result():
    calls = []
    timing = time_call(lambda: calls.append(1) or len(calls), repeats=3, warmup=2)
    assert len(calls) == 5
    assert timing.repeats == 3
    assert timing.result == 5
    assert 0 <= timing.min_ms <= timing.median_ms
    with pytest.raises(ValueError):
        time_call(lambda: None, repeats=0)


def test_format_ms():
    assert format_ms(9600.0) == "9.6 s"
    assert format_ms(412.3) == "412 ms"
    assert format_ms(31.24) == "31.2 ms"
    assert format_ms(3.141) == "3.14 ms"
    assert "median" in str(Timing((1.0, 2.0, 3.0)))


def test_talib_equivalent_outputs_match_the_bars():
    bars = bench.synthetic_bars(1, 3_000)
    out = bench.talib_equivalent(bars)
    assert len(out) >= 85
    for name, values in out.items():
        assert values.shape == (3_000,), name
        assert np.isfinite(values[-1]), name  # every output is defined after the longest warm-up


def test_run_small_reports_a_ratio_line_per_shape():
    results = bench.run(quick=True, repeats=1, warmup=0, shapes=((1, 5_000), (3, 2_000)), pandas=False)
    assert [r.subject for r in results] == ["ploutos", "ploutos"]
    single, multi = results
    for r in results:
        assert r.baseline == "TA-Lib" and r.baseline_outputs >= 85
        assert r.ms > 0 and r.timing.repeats == 1 and r.baseline_timing.median_ms > 0 and r.ratio > 0
        assert r.passed in (True, False)
    assert single.outputs > 100 and multi.outputs >= single.outputs
    assert len(multi.baseline_timing.result) == 3  # TA-Lib ran once per ticker
    lines = bench.format_results(results)
    number = r"[\d.]+ m?s"
    assert re.fullmatch(
        rf"1 x 5k: ratio \d+\.\d\d \| ploutos {number} \(\d+ features\) \| TA-Lib {number} \(\d+ outputs per "
        r"ticker, looped over 1 ticker\) \| target <= 1\.0: (PASS|MISS)",
        lines[0],
    )
    threads = pl.thread_pool_size()
    if threads > 1:  # TA-Lib again on the same threads, on the line under each target line
        assert re.fullmatch(
            rf"1 x 5k same threads: ratio \d+\.\d\d \| ploutos {number} \| TA-Lib on {threads} threads {number} "
            r"\(two halves of the set side by side\)",
            lines[1],
        )
        assert len(multi.same_threads_timing.result) == 3 and single.same_threads_ratio > 0
        lines = [line for line in lines if " same threads: " not in line]
    assert lines[1].startswith("3 x 2k: ratio ") and "looped over 3 tickers" in lines[1]


def test_talib_halves_make_the_whole_set():
    bars = bench.synthetic_bars(1, 600)
    whole, first, second = (bench.talib_equivalent(bars, part) for part in (None, 0, 1))
    assert set(first) | set(second) == set(whole) and not set(first) & set(second)
    for name, values in {**first, **second}.items():
        np.testing.assert_array_equal(values, whole[name], err_msg=name)


def test_pandas_ta_line_is_scaled_in_quick_mode():
    results = bench.run(quick=True, repeats=1, warmup=0, shapes=((1, 2_000), (2, 500)), pandas_bars=1_000)
    pandas_line = results[-1]
    assert pandas_line.subject == "pandas ta"
    assert pandas_line.scale == 2.0 and "scaled x2" in pandas_line.note
    assert pandas_line.outputs > 50
    assert "x faster (1 x 2k)" in bench.format_results(results)[-1]


def test_main_prints_and_returns_zero(monkeypatch, capsys):
    small = bench.run

    def tiny(quick=False, repeats=5, **kwargs):
        return small(quick, repeats, warmup=0, shapes=((1, 1_000), (2, 500)), pandas=False, log=kwargs.get("log"))

    monkeypatch.setattr(bench, "run", tiny)
    assert bench.main(["--quick", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "threads" in out and "cores" in out
    assert "1 x 1k: ratio " in out and "2 x 500: ratio " in out


def test_bench_env_lines_follow_the_format():
    results = bench_env.run(steps=2_000, repeats=1, warmup=0, n_time=1_024)
    lines = bench_env.format_results(results)
    batched, windows, *single = lines
    assert re.fullmatch(
        rf"batched 64 envs x 15 assets \(row indices \+ portfolio\): {RATE} env-steps/s; single TradingEnv {RATE} "
        r"steps/s; ratio \d+\.\d\d; target >= 300,000 env-steps/s: (PASS|MISS)",
        batched,
    ), batched
    assert re.fullmatch(
        rf"batched 64 envs x 15 assets \(flat windows\): {RATE} env-steps/s; single TradingEnv {RATE} steps/s; "
        r"ratio \d+\.\d\d",
        windows,
    ), windows
    assert len(single) == 3
    for line in single:
        assert re.fullmatch(
            rf"single TradingEnv 15 assets x 95 features x lookback 32, \w+, \w+: {RATE} steps/s; gym-anytrading "
            rf"StocksEnv {RATE} steps/s; ratio \d+\.\d\d",
            line,
        ), line
    assert all(r.rate > 0 and r.baseline_rate > 0 for r in results)  # each figure and its baseline measured
    assert results[0].steps == 2_000 // 64 * 64 and results[0].baseline_steps == 2_000


def test_bench_vecenv_lines_follow_the_format():
    rates = bench_vecenv.measure(2, 2, steps=5, repeats=1)
    assert set(rates) == {"DummyVecEnv", "BatchedVecEnv (in process)", "ShmVecEnv (2 workers, no copy)",
                          "SubprocVecEnv (2 processes)"} and all(rate > 0 for rate in rates.values())  # fmt: skip
    lines = bench_vecenv.format_rates(2, rates)
    assert len(lines) == 3
    for line in lines:
        assert re.fullmatch(
            rf"vecenv 2 envs x 15 assets, [^:]+: {RATE} env-steps/s; DummyVecEnv {RATE} env-steps/s; ratio \d+\.\d\d",
            line,
        ), line


@pytest.mark.slow
def test_bench_train_quick_reports_both_setups_and_the_ratio(ploutos, tmp_path):
    store = tmp_path / "quickstart"
    result = ploutos("bench", "train", "--quick", "--no-encoders", "--set", f"data.store={store}", timeout=600)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    rates = {
        label: float(match.group(1).replace(",", ""))
        for label in ("ploutos", "plain SB3")
        if (match := re.search(rf"^{label} +([\d,]+) steps/s", out, re.MULTILINE))
    }
    assert set(rates) == {"ploutos", "plain SB3"}, out
    assert all(rate > 0 for rate in rates.values()), rates
    assert re.search(r"^ratio ploutos / plain SB3: \d+\.\d\dx \(same torch threads, envs and network\)$", out,
                     re.MULTILINE), out  # fmt: skip
    assert "warm-up" in out and "plain SB3: DummyVecEnv" in out and out.count(" (pinned)") == 2  # same threads
    assert (store / "manifest.json").exists()  # the dataset was built in tmp_path, not in the repo


class _NoThreads:
    def use(self, pinned: int | None) -> None:
        self.pinned = pinned

    def defaults(self) -> None:
        pass


def test_bench_encoder_lines_follow_the_format():
    from dataclasses import replace

    from ploutos.bench import encoders as bench_encoders
    from ploutos.config import load

    config = load("quickstart")
    config = replace(config, ppo=replace(config.ppo, n_steps=16, batch_size=32, n_epochs=1))
    threads = _NoThreads()
    found = bench_encoders.measure_encoders(
        config, timesteps=32, repeats=1, threads=threads, seed=0, n_envs=2, rows=300
    )
    assert threads.pinned == found.learner_threads  # every setup under the same pinned threads
    assert set(found.steps) == set(bench_encoders.SETUPS) and all(found.rate(s) > 0 for s in bench_encoders.SETUPS)
    assert found.observation_bytes["shared by reference"] == 4 * (1 + 15 + 3)  # row and portfolio only
    assert found.observation_bytes["flat"] == 4 * (32 * 15 * 95 + 15 + 3)
    lines = bench_encoders.format_encoders(found)
    assert re.search(
        r"^encoder shared by reference / flat: \d+\.\d\d x \(same envs, threads and PPO; target >= 8: (PASS|MISS)\); "
        r"attention by reference / flat: \d+\.\d\d x; flat by reference / flat: \d+\.\d\d x; "
        r"flat / plain SB3: \d+\.\d\d x$",
        "\n".join(lines),
        re.MULTILINE,
    ), lines
    assert re.search(rf"^bytes per stored env-step: shared by reference {RATE}, flat {RATE} \({RATE} x\)$",
                     "\n".join(lines), re.MULTILINE), lines  # fmt: skip


def test_bench_mpi_ranks_train_one_member_on_1_and_2_ranks_with_identical_replicas():
    from ploutos.bench.ranks import format_ranks, measure_ranks

    found = measure_ranks(
        (1, 2), timesteps=64, n_envs=2, overrides=("ppo.n_steps=16", "ppo.batch_size=32", "ppo.n_epochs=1"),
        timeout_s=300,
    )  # fmt: skip
    assert not isinstance(found, str), found  # CI installs Open MPI and mpi4py: a missing mpirun is a failure
    assert [b.ranks for b in found] == [1, 2] and all(b.replicas_equal and b.rate > 0 for b in found)
    assert found[1].steps == 2 * found[0].steps  # the rate counts every rank's env steps
    lines = format_ranks(found, n_envs=2)
    assert re.search(r"^MPI ranks 2 / 1: \d+\.\d\d x \(ideal 2 x; \d+ cpus\)$", "\n".join(lines), re.MULTILINE), lines
