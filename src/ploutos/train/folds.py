"""The walk-forward plan: which time rows each fold trains on and which it is tested on.

Fold boundaries are whole calendar months counted from an anchor, the first timestamp floored to
its UTC day. Fold k's test window starts ``k * step + train_months`` months after the anchor and
lasts ``test_months``; its training window ends where the test window starts and begins
``train_months`` earlier (rolling) or at the anchor (expanding). With ``step == test_months`` the
test windows tile without gaps, so the out-of-sample curves of consecutive folds can be stitched.
The last ``embargo_bars`` rows before each test window are dropped from training, so that no
feature or reward computed near the boundary lets the agent see into the test window.

With ``validation_months`` the last months of the training window are its validation window:
the agent never trains on them (``embargo_bars`` rows between its last training row and the
validation window are dropped too); they choose which checkpoint is kept, so that the test window
is evaluated once, at the end, and chooses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from ploutos.config import Config, WalkForwardConfig
from ploutos.errors import ConfigError, DataError
from ploutos.features.arrays import FeatureArrays
from ploutos.features.normalize import NormStats, normalize
from ploutos.features.pipeline import load_bars, months_after, observation_arrays

END_GRACE = np.timedelta64(7, "D")
"""A test window counts as covered if the data reaches this close to its end (weekends, holidays)."""
_MONTH = np.timedelta64(int(365.2425 / 12 * 86400), "s")


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold: training and out-of-sample rows of the aligned time axis."""

    index: int
    """Fold number, 0 for the earliest kept fold."""
    train: slice
    """Time rows [start, stop) the agent trains on, the embargo already removed from the end."""
    test: slice
    """Time rows [start, stop) of the out-of-sample window."""
    train_start: np.datetime64
    """Calendar start of the training window (inclusive), naive UTC."""
    train_end: np.datetime64
    """Calendar end of the training window (exclusive), before the embargo; equals ``test_start``."""
    test_start: np.datetime64
    """Calendar start of the test window (inclusive)."""
    test_end: np.datetime64
    """Calendar end of the test window (exclusive); may lie a few days past the last bar."""
    embargo: int
    """Rows dropped from the end of the training window (and before the validation window, if any)."""
    validation: slice = field(default_factory=lambda: slice(0, 0))
    """Time rows [start, stop) of the validation window (empty without ``validation_months``)."""
    validation_start: np.datetime64 | None = None
    """Calendar start of the validation window; None without one."""

    @property
    def train_bars(self) -> int:
        """Rows the agent trains on."""
        return self.train.stop - self.train.start

    @property
    def test_bars(self) -> int:
        """Rows in the out-of-sample window."""
        return self.test.stop - self.test.start

    @property
    def validation_bars(self) -> int:
        """Rows in the validation window."""
        return self.validation.stop - self.validation.start

    def validation_rows(self, lookback: int) -> slice:
        """Rows of the validation env: ``lookback`` rows of history, then the validation window."""
        return slice(self.validation.start - lookback, self.validation.stop)

    def eval_rows(self, lookback: int) -> slice:
        """Rows of the evaluation env: ``lookback`` rows of history, then the test window.

        Its first decision is taken on the last bar before the test window and filled at the open
        of ``test.start``, so the out-of-sample curve covers exactly the test window.
        """
        start = self.test.start - lookback
        if start < 0:
            raise ValueError(
                f"fold {self.index}: lookback {lookback} reaches before row 0 (test starts at row {self.test.start})"
            )
        return slice(start, self.test.stop)

    def bounds(self) -> dict[str, Any]:
        """Calendar bounds (ISO UTC), rows and embargo, as a task file records them."""

        def iso(moment: np.datetime64) -> str:
            return f"{np.datetime_as_string(moment, unit='s')}Z"

        validation = {
            "validation_start": iso(self.validation_start) if self.validation_start is not None else "",
            "validation_rows": [self.validation.start, self.validation.stop],
        }
        return validation | {
            "train_start": iso(self.train_start),
            "train_end": iso(self.train_end),
            "test_start": iso(self.test_start),
            "test_end": iso(self.test_end),
            "train_rows": [self.train.start, self.train.stop],
            "test_rows": [self.test.start, self.test.stop],
            "embargo_bars": self.embargo,
        }


def plan_folds(
    timestamps: np.ndarray, wf: WalkForwardConfig, *, lookback: int = 1, min_train_bars: int = 2
) -> list[Fold]:
    """The folds of ``wf`` over ``timestamps`` (sorted, unique, naive UTC), earliest first.

    Folds are generated until the first whose test window the data does not cover (the last
    timestamp is at or after ``test_end - 7 days``). ``max_folds`` keeps the latest ones, renumbered
    from 0 so that fold numbers always run 0..N-1 in the plan, the task grid and the results.
    A kept fold with too few training or test rows is refused with a :class:`ConfigError`, rather
    than dropped, because a hole in the middle of the plan would break the stitched test curve.
    """
    times = _checked(timestamps)
    anchor = times[0].astype("datetime64[D]").astype("datetime64[us]")
    last = times[-1]
    windows: list[tuple[np.datetime64, np.datetime64, np.datetime64]] = []
    while True:
        k = len(windows)
        test_start = _months_from(anchor, k * wf.step + wf.train_months)
        test_end = _months_from(anchor, k * wf.step + wf.train_months + wf.test_months)
        if last < test_end - END_GRACE:
            break
        train_start = anchor if wf.mode == "expanding" else _months_from(anchor, k * wf.step)
        windows.append((train_start, test_start, test_end))
    if not windows:
        first_test_end = _months_from(anchor, wf.train_months + wf.test_months)
        span = (last - times[0]) / _MONTH
        raise ConfigError(
            f"walkforward: train {wf.train_months} + test {wf.test_months} months need data from {_day(anchor)} "
            f"to {_day(first_test_end)}; the dataset covers {_day(anchor)} .. {_day(last)} ({span:.1f} months); "
            "lower walkforward.train_months or walkforward.test_months, or extend the data"
        )
    if wf.max_folds is not None:
        windows = windows[-wf.max_folds :]
    need = max(min_train_bars, lookback + 1)
    why = f"env.lookback {lookback} + 1" if lookback + 1 >= min_train_bars else f"the minimum of {min_train_bars}"
    folds = []
    for index, (train_start, test_start, test_end) in enumerate(windows):
        lo, hi = (int(i) for i in np.searchsorted(times, [train_start, test_start], side="left"))
        validation, validation_start = slice(0, 0), None
        end = hi  # where the rows trained on end, before their embargo
        if wf.validation_months:
            validation_start = _months_from(test_start, -wf.validation_months)
            end = max(lo, int(np.searchsorted(times, validation_start, side="left")))
            validation = slice(end, max(end, hi - wf.embargo_bars))
        stop = max(lo, end - wf.embargo_bars)
        train, test = slice(lo, stop), slice(hi, int(np.searchsorted(times, test_end, side="left")))
        where = f"walkforward: fold {index} ({_day(train_start)} .. {_day(test_start)})"
        if stop - lo < need:
            held_out = f" and the validation's {wf.validation_months} month(s)" if wf.validation_months else ""
            raise ConfigError(
                f"{where} trains on {stop - lo} rows ({hi - lo} in the window minus walkforward.embargo_bars "
                f"{wf.embargo_bars}{held_out}) but needs >= {need} ({why})"
            )
        if wf.validation_months and validation.stop - validation.start < 2:
            raise ConfigError(
                f"{where}: the validation window ({wf.validation_months} month(s) minus walkforward.embargo_bars "
                f"{wf.embargo_bars}) holds {_count(validation.stop - validation.start, 'row')}; it needs >= 2"
            )
        if test.stop - test.start < 2:
            raise ConfigError(
                f"walkforward: fold {index} test window {_day(test_start)} .. {_day(test_end)} holds "
                f"{_count(test.stop - test.start, 'row')}; it needs >= 2 (a gap in the data?)"
            )
        if test.start - lookback < 0:  # implied by the training check; kept so eval_rows can never fail
            raise ConfigError(f"{where}: env.lookback {lookback} reaches before the first row")
        fold = Fold(index, train, test, train_start, test_start, test_start, test_end, wf.embargo_bars,
                    validation, validation_start)  # fmt: skip
        folds.append(fold if wf.validation_months else replace(fold, embargo=hi - stop))
    return folds


def format_plan(folds: list[Fold], members: int) -> str:
    """A plain-text table of the folds, then the number of training tasks (fold x member)."""
    header = ("fold", "train start -> end", "train bars", "validation bars", "embargo bars", "test start -> end",
              "test bars")  # fmt: skip
    rows = [
        (
            str(f.index),
            f"{_day(f.train_start)} -> {_day(f.train_end)}",
            str(f.train_bars),
            str(f.validation_bars),
            str(f.embargo),
            f"{_day(f.test_start)} -> {_day(f.test_end)}",
            str(f.test_bars),
        )
        for f in folds
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    # numbers right-aligned, date ranges left-aligned, as a reader scans them
    align = ("r", "l", "r", "r", "r", "l", "r")
    lines = [
        "  ".join(
            cell.rjust(w) if a == "r" else cell.ljust(w) for cell, w, a in zip(row, widths, align, strict=True)
        ).rstrip()
        for row in (header, *rows)
    ]
    tasks = len(folds) * members
    lines.append(f"{_count(len(folds), 'fold')} x {_count(members, 'member')} = {_count(tasks, 'task')}")
    return "\n".join(lines)


def dataset_timestamps(config: Config) -> np.ndarray:
    """The time axis of the built dataset as the aligned arrays get it (see
    :func:`ploutos.features.grid.align`): the sorted union of bar timestamps, naive UTC, so that
    fold rows index the feature store directly."""
    bars = load_bars(config)
    column = bars.select(pl.col("timestamp").unique().sort())["timestamp"]
    return column.dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")


def plan_for(config: Config) -> list[Fold]:
    """The walk-forward plan of ``config`` over its built dataset."""
    return plan_folds(dataset_timestamps(config), config.walkforward, lookback=config.env.lookback)


def select_fold(timestamps: np.ndarray, config: Config, fold_index: int) -> Fold:
    """Fold ``fold_index`` of the plan over ``timestamps``; a fold the plan lacks is refused in one line."""
    folds = plan_folds(timestamps, config.walkforward, lookback=config.env.lookback)
    if not 0 <= fold_index < len(folds):
        raise ConfigError(
            f"fold {fold_index} does not exist: the walk-forward plan has {len(folds)} fold(s), 0..{len(folds) - 1} "
            "(see `ploutos folds`)"
        )
    return folds[fold_index]


def fold_features(config: Config, fold_index: int) -> tuple[FeatureArrays, Fold, NormStats]:
    """The fold's observation arrays normalized on its training window, the fold, and the statistics."""
    arrays = observation_arrays(load_bars(config), config)
    fold = select_fold(arrays.timestamps, config, fold_index)
    normalized, stats = normalize(arrays, fold.train, config.features)
    return normalized, fold, stats


def _checked(timestamps: np.ndarray) -> np.ndarray:
    times = np.asarray(timestamps)
    if times.ndim != 1 or not np.issubdtype(times.dtype, np.datetime64):
        raise ValueError(f"timestamps must be a 1-D datetime64 array, got {times.dtype} with shape {times.shape}")
    if len(times) == 0:
        raise DataError("no timestamps to plan walk-forward folds on (is the dataset empty?)", rule="walkforward")
    times = times.astype("datetime64[us]")
    if np.isnat(times).any():
        raise DataError(f"timestamp row {int(np.isnat(times).argmax())} is NaT", rule="walkforward")
    bad = np.flatnonzero(np.diff(times) <= np.timedelta64(0, "us"))
    if len(bad):
        raise DataError(
            f"timestamps are not sorted and unique: row {bad[0] + 1} ({times[bad[0] + 1]}) is not after row "
            f"{bad[0]} ({times[bad[0]]})",
            rule="walkforward",
        )
    return times


def _months_from(anchor: np.datetime64, months: int) -> np.datetime64:
    """``anchor`` + ``months`` calendar months; a day the month lacks (Jan 31 + 1) becomes its last day."""
    # months_after keeps the day of month and so fails on Feb 30; step from the 1st and add the days back
    first = anchor.astype("datetime64[M]").astype("datetime64[us]")
    month_start = months_after(first, months)
    next_month = months_after(first, months + 1)
    return min(month_start + (anchor - first), next_month - np.timedelta64(1, "D"))


def _day(moment: np.datetime64) -> str:
    return str(moment.astype("datetime64[D]"))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
