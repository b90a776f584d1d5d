"""``ploutos backtest``: a trained fold on bars it has not trained on, through the training path."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest
from tests.conftest import assert_one_line_error


def _test_window(run: Path) -> tuple[np.ndarray, dict]:
    with h5py.File(run / "tasks" / "fold0_ensemble.h5", "r") as h5:
        return h5["test/equity"][()], {k: float(v) for k, v in h5["metrics/policy"].attrs.items()}


def test_the_folds_own_test_window_is_its_test_curve(trained_run: Path) -> None:
    """Without --start a dataset backtest starts at the fold's test window: same features, normalization,
    simulator, costs and seeds as the fold's evaluation, so the same curve and metrics, bit for bit."""
    from ploutos.pipeline.backtest import backtest
    from ploutos.results.hdf5 import missing_fields

    done = backtest(trained_run, name="own_test_window")
    equity, metrics = _test_window(trained_run)
    assert done.ensemble and done.members == (0, 1) and done.window.in_sample is None
    np.testing.assert_array_equal(done.evaluation.policy.equity, equity)
    assert done.metrics["policy"] == metrics
    assert missing_fields(done.result) == []  # the task-file schema: the same tools read it
    with h5py.File(done.result, "r") as h5:
        assert h5["fold"].attrs["in_sample_bars"] == 0
        assert h5["fold"].attrs["backtest_bars"] == len(equity) - 1
    report = done.report.read_text()
    assert "every bar is out-of-sample" in report and f"{metrics['total_return']:.2%}" in report
    assert (done.result.parent / "equity.png").stat().st_size > 10_000
    page = (done.result.parent / "report.html").read_text()
    assert "data:image/png;base64," in page and "http" not in page  # one self-contained file


def test_in_sample_bars_are_refused_then_marked(trained_run: Path, ploutos) -> None:
    refused = ploutos("backtest", "--run", str(trained_run), "--start", "2017-10-01")
    assert_one_line_error(refused, "lie in fold 0's training window", "--allow-in-sample")
    assert not (trained_run / "backtests" / "fold0_ensemble_2017-10-01_2017-12-29").exists()

    allowed = ploutos("backtest", "--run", str(trained_run), "--start", "2017-10-01", "--member", "1",
                      "--allow-in-sample", "--name", "in_sample")  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    with h5py.File(trained_run / "backtests" / "in_sample" / "backtest.h5", "r") as h5:
        fold = dict(h5["fold"].attrs)
        times = h5["test/timestamps"][()].astype("datetime64[us]")[1:]  # the traded bars
        assert h5.attrs["member"] == 1
    inside = (times >= np.datetime64(fold["train_start"].rstrip("Z"))) & (times < np.datetime64("2017-11-01"))
    assert fold["in_sample_bars"] == inside.sum() > 0
    assert np.datetime64(fold["in_sample_end"].rstrip("Z")) == times[inside][-1]
    assert f"{inside.sum()} in-sample" in allowed.stdout
    assert (
        f"{inside.sum()} of the {len(times)} bars are in-sample"
        in (trained_run / "backtests" / "in_sample" / "report.md").read_text()
    )


def test_a_bars_file_warms_its_own_features_up(trained_run: Path, tmp_path: Path, ploutos) -> None:
    """Bars from a CSV that starts in September: its first bars warm the features up, the traded window is
    what --start/--end ask for."""
    from ploutos.data.store import read_dataset

    bars = read_dataset(trained_run.parents[1] / "data").filter(
        pl.col("timestamp") >= pl.datetime(2017, 9, 1, time_zone="UTC")
    )
    file = tmp_path / "new_bars.csv"
    bars.write_csv(file)
    done = ploutos("backtest", "--run", str(trained_run), "--data", str(file), "--start", "2017-11-06",
                   "--end", "2017-12-01", "--name", "from_file")  # fmt: skip
    assert done.returncode == 0, done.stderr
    with h5py.File(trained_run / "backtests" / "from_file" / "backtest.h5", "r") as h5:
        traded = h5["test/timestamps"][()].astype("datetime64[us]")[1:]
        assert h5["provenance"].attrs["backtest_source"] == str(file)
    expected = bars.filter((pl.col("timestamp") >= pl.datetime(2017, 11, 6, time_zone="UTC"))
                           & (pl.col("timestamp") < pl.datetime(2017, 12, 1, time_zone="UTC")))  # fmt: skip
    assert len(traded) == expected.height
    assert traded[0] == np.datetime64(expected["timestamp"][0].replace(tzinfo=None))

    early = ploutos("backtest", "--run", str(trained_run), "--data", str(file), "--start", "2017-09-02")
    assert_one_line_error(early, "inside the features' warm-up", "first bar a backtest can trade")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--fold", "3"], ("fold 3 has no trained model", "folds with models: [0]")),
        (["--member", "5"], ("no model of member 5",)),
        (["--start", "2017-11-31"], ("--start 2017-11-31: not a date",)),
        (["--start", "2017-12-01", "--end", "2017-11-01"], ("is not after --start",)),
        (["--data", "nowhere.csv"], ("--data nowhere.csv: no such file",)),
        (["--fold", "0", "--latest"], ("not allowed with argument",)),
    ],
)
def test_impossible_backtests_are_one_line(trained_run: Path, ploutos, args: list[str], fragments: tuple) -> None:
    assert_one_line_error(ploutos("backtest", "--run", str(trained_run), *args), *fragments)


def test_the_figure_draws_the_paths(trained_run: Path) -> None:
    """Lines are the model's and the baselines' equity from 1; the drawdown panel is the model's."""
    from ploutos.pipeline.backtest import backtest
    from ploutos.results.backtest import figure

    done = backtest(trained_run, start="2017-11-15", name="figure")
    fig = figure(done)
    top, bottom = fig.axes
    lines = {line.get_label(): line.get_ydata() for line in top.get_lines()}
    policy = done.evaluation.policy.equity
    hold, equal = (done.evaluation.benchmarks[name].equity for name in ("buy_and_hold", "equal_weight"))
    np.testing.assert_allclose(lines["model"], policy / policy[0])
    # this run caps a weight change at 0.5: buy and hold stays half invested, equal weight gets to 1
    assert not np.allclose(hold, equal)
    np.testing.assert_allclose(lines["buy and hold"], hold / hold[0])
    np.testing.assert_allclose(lines["equal weight"], equal / equal[0])
    legend = [t.get_text() for t in top.get_legend().get_texts()]
    assert legend == ["model", "buy and hold", "equal weight", "flat"]
    drawdown = bottom.collections[0].get_paths()[0].vertices[:, 1]
    assert drawdown.min() == pytest.approx((policy / np.maximum.accumulate(policy) - 1).min())
