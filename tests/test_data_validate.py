"""Validation rules (each names rule, ticker and row), repairs, and the refuse/repair policy."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ploutos.data.validate import RULES, Problem, check, repair, validate
from ploutos.errors import DataError

UTC = timezone.utc
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def bars(n: int = 10, ticker: str = "SPY", start: datetime = T0, step: timedelta = timedelta(hours=1)) -> pl.DataFrame:
    """``n`` clean hourly bars."""
    close = 100.0 + np.arange(n, dtype=float)
    return pl.DataFrame(
        {
            "timestamp": pl.datetime_range(start, start + (n - 1) * step, step, eager=True, time_zone="UTC"),
            "ticker": [ticker] * n,
            "open": close - 0.5,
            "high": close + 1.0,
            "low": close - 1.0,
            "close": close,
            "volume": np.full(n, 1000.0),
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )


def set_cell(frame: pl.DataFrame, row: int, **values: object) -> pl.DataFrame:
    index = pl.int_range(pl.len())
    return frame.with_columns(
        pl.when(index == row).then(pl.lit(v, dtype=frame.schema[k])).otherwise(pl.col(k)).alias(k)
        for k, v in values.items()
    )


def only(problems: list[Problem], rule: str) -> list[tuple[str | None, int | None]]:
    return [(p.ticker, p.row) for p in problems if p.rule == rule]


def test_clean_bars_have_no_problems():
    assert validate(pl.concat([bars(), bars(ticker="QQQ")])) == []


def test_schema_missing_column():
    problems = validate(bars().drop("volume"), path="x.csv")
    assert [(p.rule, p.row, p.path) for p in problems] == [("schema", None, "x.csv")]
    assert "volume" in problems[0].message


def test_schema_wrong_type():
    frame = bars().with_columns(pl.col("close").cast(pl.String))
    problems = validate(frame)
    assert [(p.rule, p.ticker, p.row) for p in problems] == [("schema", None, None)]
    assert "close is String" in problems[0].message


def test_timezone_naive_timestamps():
    frame = bars().with_columns(pl.col("timestamp").dt.replace_time_zone(None))
    problems = validate(frame, path="x.csv")
    assert [(p.rule, p.ticker, p.row, p.path) for p in problems] == [("timezone", None, None, "x.csv")]


def test_aware_non_utc_is_converted_not_refused():
    frame = bars().with_columns(
        pl.col("timestamp").dt.convert_time_zone("America/New_York").cast(pl.Datetime("ns", "America/New_York"))
    )
    out, repairs = check(frame)
    assert repairs == [] and out.schema["timestamp"] == pl.Datetime("us", "UTC")
    assert out["timestamp"].to_list() == bars()["timestamp"].to_list()


def test_missing_nan_and_null():
    frame = set_cell(bars(), 3, close=float("nan"))
    frame = set_cell(frame, 6, volume=None)
    problems = validate(frame)
    assert only(problems, "missing") == [("SPY", 3), ("SPY", 6)]
    assert "close" in problems[0].message


def test_duplicate_timestamps_report_the_rows_repair_drops():
    frame = pl.concat([bars(5), bars(5).slice(2, 1)])  # row 5 repeats row 2
    problems = validate(frame)
    assert only(problems, "duplicate") == [("SPY", 2)]
    assert "also at row 6" in problems[0].message  # rows as a user counts them, from 1
    in_csv = validate(frame, path="bars.csv")
    assert str(in_csv[0]).startswith("bars.csv ticker SPY line 4 [duplicate]")  # header: line 1
    assert "also at line 7" in in_csv[0].message


def test_unsorted():
    frame = bars(6)
    frame = pl.concat([frame.slice(0, 3), frame.slice(4, 2), frame.slice(3, 1)])  # rows: 0 1 2 4 5 3
    assert only(validate(frame), "unsorted") == [("SPY", 5)]


def test_interleaved_tickers_are_sorted_per_ticker():
    frame = pl.concat([bars(4), bars(4, ticker="QQQ")]).sort("timestamp", "ticker")
    assert validate(frame) == []


@pytest.mark.parametrize(
    "cells",
    [{"high": 99.0}, {"low": 104.0}, {"low": 102.0, "high": 101.0, "open": 101.5, "close": 101.5}],
    ids=["high-below-body", "low-above-body", "low-above-high"],
)
def test_ohlc(cells):
    frame = set_cell(bars(), 2, **cells)  # row 2: open 101.5, close 102
    problems = validate(frame)
    assert only(problems, "ohlc") == [("SPY", 2)]


@pytest.mark.parametrize("value", [0.0, -5.0])
def test_non_positive_price(value):
    problems = validate(set_cell(bars(), 4, open=value, low=value))
    assert only(problems, "price") == [("SPY", 4)]
    assert only(problems, "ohlc") == []  # one problem per row: the worse one


def test_negative_volume():
    assert only(validate(set_cell(bars(), 7, volume=-1.0)), "volume") == [("SPY", 7)]


def test_gap_beyond_max_gap_bars():
    frame = bars(12).filter(~pl.int_range(pl.len()).is_in([4, 5]))  # two missing; row 4 now is 6 o'clock
    problems = validate(frame, session="24x7", max_gap_bars=1)
    assert only(problems, "gap") == [("SPY", 4)]
    assert "2 expected bar(s) missing from 2024-01-01T04:00:00Z to 2024-01-01T05:00:00Z" in problems[0].message
    assert validate(frame, session="24x7", max_gap_bars=2) == []
    assert validate(frame, session="24x7", max_gap_bars=None) == []


def test_no_gap_over_nights_weekends_and_holidays_in_regular_session():
    start = datetime(2024, 11, 25, tzinfo=UTC)
    grid = [start + timedelta(hours=h) for h in range(24 * 8)]
    frame = pl.concat([bars(len(grid)).with_columns(timestamp=pl.Series(grid, dtype=pl.Datetime("us", "UTC")))])
    from ploutos.data.calendar import apply_session

    kept, _ = apply_session(frame, "regular", "XNYS")
    assert validate(kept, session="regular", calendar="XNYS") == []
    missing_one = kept.filter(pl.int_range(pl.len()) != 10)
    assert only(validate(missing_one, session="regular", calendar="XNYS"), "gap") == [("SPY", 10)]


def test_half_hour_aligned_bars_are_not_all_gaps():
    start = datetime(2024, 11, 25, 14, 30, tzinfo=UTC)  # 09:30 New York
    days = [start + timedelta(days=d, hours=h) for d in range(2) for h in range(7)]
    frame = bars(len(days)).with_columns(timestamp=pl.Series(days, dtype=pl.Datetime("us", "UTC")))
    assert validate(frame, session="regular", calendar="XNYS") == []


def test_row_index_reports_rows_of_an_earlier_frame():
    frame = set_cell(bars(), 3, volume=-1.0).with_row_index("orig", offset=100)
    assert only(validate(frame, row_index="orig"), "volume") == [("SPY", 103)]


def test_refuse_names_first_problem_and_counts_the_rest(tmp_path):
    path = tmp_path / "bars.parquet"
    path.touch()
    frame = set_cell(set_cell(bars(), 5, volume=-1.0), 2, high=50.0)
    with pytest.raises(DataError) as info:
        check(frame, "refuse", path=str(path))
    message = str(info.value)
    assert message.startswith(f"{path} ticker SPY row 3 [ohlc]: high/low do not cover open/close")  # from 1
    assert message.endswith(f"... and 1 more; `ploutos data check {path}` lists them all")
    assert "\n" not in message
    assert (info.value.ticker, info.value.row, info.value.rule) == ("SPY", 2, "ohlc")


def test_repair_fixes_everything_but_gaps():
    frame = bars(12)
    frame = set_cell(frame, 1, high=50.0)  # ohlc -> clamped
    frame = set_cell(frame, 3, close=float("nan"))  # missing -> dropped
    frame = set_cell(frame, 4, low=-1.0)  # price -> dropped
    frame = set_cell(frame, 6, volume=-3.0)  # volume -> 0
    frame = pl.concat([frame, set_cell(bars(12), 8, close=150.0).slice(8, 1)])  # duplicate -> keep the last
    frame = pl.concat([frame.slice(0, 9), frame.slice(10, 3), frame.slice(9, 1)])  # unsorted
    out, repairs = check(frame, "repair", session="24x7", max_gap_bars=0)
    assert {r.rule for r in repairs} == {"ohlc", "missing", "price", "volume", "duplicate", "unsorted", "gap"}
    assert [p.rule for p in validate(out, session="24x7")] == ["gap"]
    assert out.height == 10 and out["timestamp"].is_sorted()
    assert out.filter(pl.col("timestamp") == T0 + timedelta(hours=8))["close"].to_list() == [150.0]
    assert out.filter(pl.col("timestamp") == T0 + timedelta(hours=6))["volume"].to_list() == [0.0]
    assert out.filter(pl.col("timestamp") == T0 + timedelta(hours=1))["high"].to_list() == [101.0]
    assert all(r.action for r in repairs)


def test_repair_cannot_fix_schema_or_timezone():
    frame = bars().with_columns(pl.col("timestamp").dt.replace_time_zone(None))
    with pytest.raises(DataError, match=r"\[timezone\]"):
        repair(frame, validate(frame))


def test_rule_names_are_short_and_known():
    assert set(RULES) == {"schema", "timezone", "missing", "duplicate", "unsorted", "price", "ohlc", "volume", "gap"}


def test_fast_on_750k_rows():
    frame = pl.concat([bars(50_000, ticker=f"T{i}") for i in range(15)])
    frame = set_cell(frame, 1234, high=1.0)
    started = time.perf_counter()
    problems = validate(frame, session="24x7", max_gap_bars=0)
    out, _ = repair(frame, problems)
    assert time.perf_counter() - started < 5.0
    assert only(problems, "ohlc") == [("T0", 1234)] and out.height == frame.height


corruption = st.sampled_from(["nan", "zero", "high", "low", "volume", "dup", "swap"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(corruption, st.integers(0, 29)), max_size=8))
def test_repaired_bars_always_validate(edits):
    frame = pl.concat([bars(30), bars(30, ticker="QQQ")])
    for kind, row in edits:
        if kind == "nan":
            frame = set_cell(frame, row, open=float("nan"))
        elif kind == "zero":
            frame = set_cell(frame, row, close=0.0)
        elif kind == "high":
            frame = set_cell(frame, row, high=1.0)
        elif kind == "low":
            frame = set_cell(frame, row, low=1e6)
        elif kind == "volume":
            frame = set_cell(frame, row, volume=-2.0)
        elif kind == "dup":
            frame = pl.concat([frame, frame.slice(row, 1)])
        else:
            frame = pl.concat([frame.slice(row, 1), frame.slice(0, row), frame.slice(row + 1)])
    problems = validate(frame, session="24x7", max_gap_bars=0)
    out, repairs = repair(frame, problems)
    assert len(repairs) == len(problems)
    assert {p.rule for p in validate(out, session="24x7", max_gap_bars=0)} <= {"gap"}
