"""Walk-forward folds: calendar windows, embargo, coverage of the last window, refusals, the quickstart plan."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ploutos.cli import main
from ploutos.config import WalkForwardConfig
from ploutos.config import load as load_config
from ploutos.errors import ConfigError, DataError
from ploutos.features.pipeline import load_bars
from ploutos.train.folds import Fold, format_plan, plan_folds


def hourly(start: str, end: str, *, weekdays_only: bool = False) -> np.ndarray:
    """Hourly bar starts in [start, end), naive UTC datetime64[us]."""
    times = np.arange(np.datetime64(start, "h"), np.datetime64(end, "h"), np.timedelta64(1, "h"))
    if weekdays_only:
        # 1970-01-01 was a Thursday: weekday (Monday 0) = (days since epoch + 3) % 7
        times = times[(times.astype("datetime64[D]").astype(np.int64) + 3) % 7 < 5]
    return times.astype("datetime64[us]")


def day(text: str) -> np.datetime64:
    return np.datetime64(text, "us")


def test_rolling_folds_tile_test_windows_and_train_strictly_before_them():
    times = hourly("2020-01-01T22", "2021-01-01T00", weekdays_only=True)
    folds = plan_folds(
        times, WalkForwardConfig(validation_months=0, mode="rolling", train_months=6, test_months=2, embargo_bars=24)
    )
    assert [f.index for f in folds] == [0, 1, 2]
    # the anchor is the first bar's UTC day, not the bar itself
    assert [f.train_start for f in folds] == [day("2020-01-01"), day("2020-03-01"), day("2020-05-01")]
    assert [f.test_start for f in folds] == [day("2020-07-01"), day("2020-09-01"), day("2020-11-01")]
    assert folds[-1].test_end == day("2021-01-01")
    for f in folds:
        assert f.train_end == f.test_start
        assert f.train.stop <= f.test.start
        assert times[f.train.start] >= f.train_start
        assert f.train.start == 0 or times[f.train.start - 1] < f.train_start
        assert times[f.train.stop - 1] < f.test_start  # no training row at or after the test start
        assert times[f.test.start] >= f.test_start and times[f.test.start - 1] < f.test_start
        assert times[f.test.stop - 1] < f.test_end
        assert f.train_bars == f.train.stop - f.train.start and f.test_bars == f.test.stop - f.test.start
    for before, after in zip(folds, folds[1:], strict=False):
        assert before.test_end == after.test_start and before.test.stop == after.test.start
    assert folds[-1].test.stop == len(times)


def test_expanding_folds_all_start_at_the_anchor_and_grow():
    times = hourly("2020-01-01", "2021-01-01")
    folds = plan_folds(
        times, WalkForwardConfig(validation_months=0, mode="expanding", train_months=3, test_months=1, embargo_bars=0)
    )
    assert len(folds) == 9  # tests Apr..Dec
    assert all(f.train.start == 0 and f.train_start == day("2020-01-01") for f in folds)
    assert [f.test_start for f in folds] == [day(f"2020-{m:02d}-01") for m in range(4, 13)]
    assert all(a.train_bars < b.train_bars for a, b in zip(folds, folds[1:], strict=False))
    assert all(f.train.stop == f.test.start for f in folds)  # no embargo: train runs up to the test window


def test_step_shorter_than_test_overlaps_test_windows():
    times = hourly("2020-01-01", "2021-01-01")
    folds = plan_folds(
        times, WalkForwardConfig(validation_months=0, train_months=6, test_months=2, step_months=1, embargo_bars=0)
    )
    assert [f.test_start for f in folds] == [day(f"2020-{m:02d}-01") for m in range(7, 12)]


@pytest.mark.parametrize("embargo", [0, 1, 24, 500])
def test_embargo_removes_exactly_that_many_rows_from_the_end_of_training(embargo: int):
    times = hourly("2020-01-01", "2020-09-01", weekdays_only=True)
    wf = WalkForwardConfig(validation_months=0, train_months=6, test_months=2, embargo_bars=embargo)
    window = np.searchsorted(times, [day("2020-01-01"), day("2020-07-01")])
    (fold,) = plan_folds(times, wf)
    assert fold.embargo == embargo
    assert fold.train == slice(int(window[0]), int(window[1]) - embargo)
    assert fold.test.start == int(window[1])  # nothing is taken from the test window
    assert fold.test.start - fold.train.stop == embargo


def test_max_folds_keeps_the_latest_renumbered_from_zero():
    times = hourly("2020-01-01", "2021-01-01")
    every = plan_folds(times, WalkForwardConfig(validation_months=0, train_months=3, test_months=1))
    latest = plan_folds(times, WalkForwardConfig(validation_months=0, train_months=3, test_months=1, max_folds=2))
    assert [f.index for f in latest] == [0, 1]
    assert [(f.train, f.test, f.test_start) for f in latest] == [(f.train, f.test, f.test_start) for f in every[-2:]]
    assert (
        plan_folds(times, WalkForwardConfig(validation_months=0, train_months=3, test_months=1, max_folds=50)) == every
    )


@pytest.mark.parametrize(("days_short", "folds"), [(3, 2), (7, 2), (10, 1)])
def test_last_test_window_counts_if_the_data_reaches_within_a_week_of_its_end(days_short: int, folds: int):
    # fold 1 tests Sep-Oct 2020: it is kept when the data ends less than a week before 2020-11-01
    end = day("2020-11-01") - np.timedelta64(days_short, "D")
    times = hourly("2020-01-01", "2020-11-01")
    times = times[times <= end]
    plan = plan_folds(times, WalkForwardConfig(validation_months=0, train_months=6, test_months=2))
    assert len(plan) == folds
    if folds == 2:  # the kept window simply runs to the last bar
        assert plan[-1].test_end == day("2020-11-01") and plan[-1].test.stop == len(times)


def test_no_fold_fits_names_the_months_and_the_dataset_span():
    times = hourly("2021-01-01", "2021-07-01")
    with pytest.raises(ConfigError) as err:
        plan_folds(times, WalkForwardConfig(validation_months=0, train_months=6, test_months=2))
    message = str(err.value)
    assert "\n" not in message
    for fragment in ("train 6 + test 2 months", "2021-01-01 to 2021-09-01", "2021-01-01 .. 2021-06-30", "(5.9 months)"):
        assert fragment in message, (fragment, message)


def test_too_few_training_rows_names_the_fold_the_counts_and_the_keys():
    times = hourly("2020-01-01", "2021-01-01")
    wf = WalkForwardConfig(validation_months=0, train_months=1, test_months=1, embargo_bars=700)  # January has 744 rows
    with pytest.raises(ConfigError) as err:
        plan_folds(times, wf, lookback=64)
    message = str(err.value)
    for fragment in ("fold 0", "44 rows", "744", "walkforward.embargo_bars 700", ">= 65", "env.lookback 64"):
        assert fragment in message, (fragment, message)
    # max_folds leaves out the early folds; the later (expanding) ones have enough rows
    expanding = plan_folds(
        times,
        WalkForwardConfig(
            validation_months=0, mode="expanding", train_months=1, test_months=1, embargo_bars=700, max_folds=3
        ),
        lookback=64,
    )
    assert len(expanding) == 3


def test_test_window_with_fewer_than_two_rows_is_refused():
    times = np.concatenate([hourly("2020-01-01", "2020-07-01"), [day("2020-08-30T12:00")]])
    with pytest.raises(ConfigError, match=r"fold 0 test window 2020-07-01 \.\. 2020-09-01 holds 1 row;"):
        plan_folds(times, WalkForwardConfig(validation_months=0, train_months=6, test_months=2))


def test_eval_rows_start_lookback_rows_before_the_test_window():
    times = hourly("2020-01-01", "2020-09-01")
    (fold,) = plan_folds(times, WalkForwardConfig(validation_months=0, train_months=6, test_months=2), lookback=32)
    rows = fold.eval_rows(32)
    assert rows == slice(fold.test.start - 32, fold.test.stop)
    # the evaluation env's first decision is on the last bar before the test window
    assert times[rows.start + 32 - 1] < fold.test_start <= times[rows.start + 32]
    assert fold.eval_rows(0) == fold.test
    with pytest.raises(ValueError, match="lookback"):
        fold.eval_rows(fold.test.start + 1)


def test_month_end_anchor_clamps_to_the_last_day_of_shorter_months():
    times = hourly("2020-01-31T05", "2020-05-01")
    folds = plan_folds(times, WalkForwardConfig(validation_months=0, train_months=1, test_months=1, embargo_bars=0))
    assert [(f.train_start, f.test_start, f.test_end) for f in folds[:2]] == [
        (day("2020-01-31"), day("2020-02-29"), day("2020-03-31")),
        (day("2020-02-29"), day("2020-03-31"), day("2020-04-30")),
    ]


def test_other_datetime_units_are_accepted():
    times = hourly("2020-01-01", "2020-09-01")
    hours, microseconds = (
        plan_folds(times.astype("datetime64[h]"), WalkForwardConfig(validation_months=0)),
        plan_folds(times, WalkForwardConfig(validation_months=0)),
    )
    assert hours == microseconds and hours[0].test_start.dtype == np.dtype("datetime64[us]")


@pytest.mark.parametrize(
    ("times", "error", "fragment"),
    [
        (np.array([], dtype="datetime64[us]"), DataError, "no timestamps"),
        (hourly("2020-01-01", "2020-09-01")[::-1], DataError, "not sorted and unique: row 1"),
        (np.repeat(hourly("2020-01-01", "2020-09-01"), 2), DataError, "not sorted and unique: row 1"),
        (np.arange(10), ValueError, "datetime64"),
    ],
)
def test_bad_timestamps_are_refused(times: np.ndarray, error: type[Exception], fragment: str):
    with pytest.raises(error, match=fragment):
        plan_folds(times, WalkForwardConfig(validation_months=0))


def test_format_plan_is_a_table_and_counts_tasks():
    times = hourly("2020-01-01", "2021-01-01")
    text = format_plan(plan_folds(times, WalkForwardConfig(validation_months=0, embargo_bars=24)), members=2)
    lines = text.splitlines()
    assert lines[0].split() == [
        "fold",
        "train",
        "start",
        "->",
        "end",
        "train",
        "bars",
        "validation",
        "bars",
        "embargo",
        "bars",
        "test",
        "start",
        "->",
        "end",
        "test",
        "bars",
    ]
    assert lines[1].split()[:9] == [
        "0", "2020-01-01", "->", "2020-07-01", str(182 * 24 - 24), "0", "24", "2020-07-01", "->"
    ]  # fmt: skip
    assert lines[-1] == "3 folds x 2 members = 6 tasks"
    one = Fold(
        0, slice(0, 10), slice(10, 20), day("2020-01-01"), day("2020-02-01"), day("2020-02-01"), day("2020-03-01"), 0
    )
    assert format_plan([one], members=1).splitlines()[-1] == "1 fold x 1 member = 1 task"


def test_quickstart_dataset_gives_three_two_month_test_windows(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from ploutos.data.build import build_dataset

    config = load_config("quickstart", [f"data.store={tmp_path}/q"])
    build_dataset(config.data, progress=False)
    times = load_bars(config)["timestamp"].unique().sort().dt.replace_time_zone(None).to_numpy()
    folds = plan_folds(times, config.walkforward, lookback=config.env.lookback)
    assert [(f.test_start, f.test_end) for f in folds] == [
        (day("2017-07-01"), day("2017-09-01")),
        (day("2017-09-01"), day("2017-11-01")),
        (day("2017-11-01"), day("2018-01-01")),
    ]
    assert folds[-1].test.stop == len(times) == 6225
    assert all(f.embargo == 24 and f.train_bars > 2400 and f.test_bars > 1000 for f in folds)
    assert all(f.validation_bars > 400 and f.validation.stop == f.test.start - 24 for f in folds)
    assert main(["folds", "--config", "quickstart", "--set", f"data.store={tmp_path}/q"]) == 0
    out = capsys.readouterr().out
    assert "2017-11-01 -> 2018-01-01" in out and out.strip().endswith("3 folds x 2 members = 6 tasks")


def test_validation_window_is_the_end_of_training_embargoed_on_both_sides():
    times = hourly("2020-01-01", "2021-01-01")
    wf = WalkForwardConfig(train_months=6, test_months=2, embargo_bars=24, validation_months=1)
    folds = plan_folds(times, wf, lookback=8)
    plain = plan_folds(times, replace(wf, validation_months=0), lookback=8)
    for fold, without in zip(folds, plain, strict=True):
        assert fold.test == without.test and fold.train.start == without.train.start
        assert times[fold.validation.start] == fold.validation_start  # one calendar month before the test
        assert fold.validation_start.astype("datetime64[M]") == fold.test_start.astype("datetime64[M]") - 1
        assert fold.train.stop == fold.validation.start - 24  # nothing trained on within 24 bars of it
        assert fold.validation.stop == fold.test.start - 24
        assert fold.validation_rows(8) == slice(fold.validation.start - 8, fold.validation.stop)
        assert fold.bounds()["validation_rows"] == [fold.validation.start, fold.validation.stop]
    with pytest.raises(ConfigError, match="validation"):
        plan_folds(times, WalkForwardConfig(train_months=2, test_months=1, validation_months=1, embargo_bars=700))
