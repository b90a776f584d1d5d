"""Session policies: which hourly bars (labelled by start, UTC) each policy keeps."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ploutos.data.calendar import apply_session, expected_timestamps, session_intervals, session_mask
from ploutos.errors import DataError

UTC = timezone.utc


def hours(start: datetime, end: datetime) -> pl.Series:
    return pl.datetime_range(start, end, "1h", closed="left", eager=True, time_zone="UTC").alias("timestamp")


def ny_labels(ts: pl.Series) -> list[str]:
    return ts.dt.convert_time_zone("America/New_York").dt.strftime("%a %H:%M").to_list()


def day(y: int, m: int, d: int) -> tuple[datetime, datetime]:
    """One New York calendar day, as UTC bounds."""
    start = datetime(y, m, d, tzinfo=ZoneInfo("America/New_York"))
    return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)


def test_regular_keeps_bars_overlapping_0930_to_1600_new_york():
    kept = expected_timestamps("regular", "XNYS", *day(2024, 11, 26))
    assert ny_labels(kept) == [f"Tue {h:02d}:00" for h in range(9, 16)]


def test_regular_follows_daylight_saving_in_utc():
    winter = expected_timestamps("regular", "XNYS", *day(2024, 1, 9))
    summer = expected_timestamps("regular", "XNYS", *day(2024, 7, 9))
    assert winter.dt.hour().to_list() == list(range(14, 21))
    assert summer.dt.hour().to_list() == list(range(13, 20))


def test_regular_early_close_and_holiday():
    assert len(expected_timestamps("regular", "XNYS", *day(2024, 11, 29))) == 4  # closes 13:00
    assert len(expected_timestamps("regular", "XNYS", *day(2024, 11, 28))) == 0  # Thanksgiving
    assert len(expected_timestamps("regular", "XNYS", *day(2024, 11, 30))) == 0  # Saturday


def test_extended_is_0400_to_2000_and_four_hours_after_an_early_close():
    normal = expected_timestamps("extended", "XNYS", *day(2024, 11, 26))
    assert ny_labels(normal) == [f"Tue {h:02d}:00" for h in range(4, 20)]
    early = expected_timestamps("extended", "XNYS", *day(2024, 11, 29))
    assert ny_labels(early) == [f"Fri {h:02d}:00" for h in range(4, 17)]


def test_24h_is_the_fx_week():
    week = expected_timestamps("24h", "XNYS", datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 20, tzinfo=UTC))
    labels = ny_labels(week)
    assert "Sun 17:00" in labels and "Sun 16:00" not in labels
    assert "Fri 16:00" in labels and "Fri 17:00" not in labels
    assert not any(label.startswith("Sat") for label in labels)
    whole = expected_timestamps("24h", "XNYS", datetime(2024, 3, 3, 12, tzinfo=UTC), datetime(2024, 3, 9, tzinfo=UTC))
    assert len(whole) == 120  # Sunday 17:00 to Friday 17:00 New York


def test_24x7_keeps_everything():
    ts = hours(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 8, tzinfo=UTC))
    assert session_mask(ts, "24x7", "XNYS").all()
    assert (
        len(expected_timestamps("24x7", "XNYS", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 8, tzinfo=UTC)))
        == 168
    )


def test_phase_for_half_hour_aligned_feeds():
    ts = expected_timestamps("regular", "XNYS", *day(2024, 11, 26), phase=timedelta(minutes=30))
    assert ny_labels(ts) == [f"Tue {h:02d}:30" for h in range(9, 16)]


def test_apply_session_counts_dropped_rows_and_keeps_other_columns():
    ts = hours(*day(2024, 11, 26))
    bars = pl.DataFrame({"timestamp": ts, "ticker": "SPY", "close": 1.0})
    kept, dropped = apply_session(bars, "regular", "XNYS")
    assert (kept.height, dropped) == (7, 17)
    assert kept.columns == bars.columns


def test_null_timestamps_are_left_for_validation():
    ts = pl.Series("timestamp", [datetime(2024, 11, 30, 12, tzinfo=UTC), None], dtype=pl.Datetime("us", "UTC"))
    assert session_mask(ts, "regular", "XNYS").to_list() == [False, True]


def test_session_intervals_are_sorted_and_clipped():
    frame = session_intervals("regular", "XNYS", *day(2024, 11, 29))
    assert frame.height == 1
    assert frame["close"][0] == datetime(2024, 11, 29, 18, tzinfo=UTC)


def test_errors_name_the_rule():
    ts = hours(*day(2024, 1, 2))
    with pytest.raises(DataError, match=r"\[calendar\].*unknown exchange calendar 'NOPE'|unknown exchange calendar"):
        session_mask(ts, "regular", "NOPE")
    with pytest.raises(DataError, match="unknown session policy"):
        session_mask(ts, "weekends", "XNYS")
    naive = pl.DataFrame({"timestamp": ts.dt.replace_time_zone(None)})
    with pytest.raises(DataError, match=r"\[timezone\]"):
        apply_session(naive, "regular", "XNYS")


def test_fast_on_fifteen_tickers_of_fifty_thousand_bars():
    ts = hours(datetime(2015, 1, 1, tzinfo=UTC), datetime(2015, 1, 1, tzinfo=UTC) + timedelta(hours=50_000))
    bars = pl.concat([pl.DataFrame({"timestamp": ts, "ticker": f"T{i}"}) for i in range(15)])
    apply_session(bars.head(10), "regular", "XNYS")  # warm the calendar cache
    started = time.perf_counter()
    kept, dropped = apply_session(bars, "regular", "XNYS")
    assert time.perf_counter() - started < 2.0
    assert kept.height + dropped == bars.height and 0.2 < kept.height / bars.height < 0.22


@settings(max_examples=60, deadline=None)
@given(
    st.datetimes(min_value=datetime(2019, 1, 1), max_value=datetime(2025, 12, 31)),
    st.sampled_from(["regular", "extended", "24h"]),
)
def test_mask_matches_brute_force_overlap(start: datetime, session: str):
    start = start.replace(tzinfo=UTC)
    ts = pl.Series("timestamp", [start + timedelta(minutes=37 * i) for i in range(40)], dtype=pl.Datetime("us", "UTC"))
    intervals = session_intervals(session, "XNYS", start - timedelta(days=10), start + timedelta(days=10))
    pairs = list(zip(intervals["open"], intervals["close"], strict=True))
    expected = [any(o < t + timedelta(hours=1) and c > t for o, c in pairs) for t in ts]
    assert session_mask(ts, session, "XNYS").to_list() == expected
