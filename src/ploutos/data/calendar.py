"""Session policy: which hourly bars belong to the trading hours a config asks for.

A bar is labelled by its *start* (UTC) and covers one hour. It is kept when that hour overlaps
a session of the policy, so with NYSE regular hours (09:30-16:00 America/New_York) the 09:00 ET
bar is kept (it holds 09:30-10:00) and so is the 15:00 ET bar: seven bars on a full day, four on
an early-close day. Policies:

- ``regular``: the exchange_calendars sessions of ``calendar`` (holidays, early closes).
- ``extended``: 04:00 ET to four hours after the regular close on the same trading days
  (20:00 ET, or 17:00 ET on early-close days, as NYSE Arca's late session).
- ``24h``: the FX week, Sunday 17:00 ET to Friday 17:00 ET, no holidays.
- ``24x7``: every hour.

Sessions are turned into sorted arrays of open/close instants once per (policy, calendar,
years) and cached; membership of a whole column is then one ``searchsorted``, so 15 tickers of
50k bars take milliseconds.
"""

from __future__ import annotations

import warnings
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache

import numpy as np
import polars as pl

from ploutos.errors import DataError

SESSIONS = ("regular", "extended", "24h", "24x7")
NEW_YORK = "America/New_York"
HOUR = timedelta(hours=1)
_US_PER_HOUR = 3_600_000_000
_UTC_US = pl.Datetime("us", "UTC")


def session_intervals(session: str, calendar: str, start: datetime, end: datetime) -> pl.DataFrame:
    """Sessions ``[open, close)`` (UTC) that touch ``[start, end)``, sorted and non-overlapping."""
    opens, closes = _bounds_for(session, calendar, _as_utc(start), _as_utc(end))
    frame = pl.DataFrame({"open": opens, "close": closes}).with_columns(pl.all().cast(pl.Datetime("us")))
    frame = frame.with_columns(pl.all().dt.replace_time_zone("UTC"))
    lo, hi = _as_utc(start), _as_utc(end)
    return frame.filter((pl.col("close") > lo) & (pl.col("open") < hi))


def session_mask(timestamps: pl.Series, session: str, calendar: str, *, bar: timedelta = HOUR) -> pl.Series:
    """True where the bar starting at ``timestamps`` overlaps a session; null timestamps are kept.

    Null timestamps are marked True so that validation, not the session filter, reports them.
    """
    _check_session(session)
    ts = _epoch_us(timestamps)
    if session == "24x7" or ts.null_count() == len(ts):
        return pl.Series(timestamps.name, np.ones(len(ts), dtype=bool))
    values = ts.fill_null(0).to_numpy()
    valid = ts.is_not_null().to_numpy()
    lo, hi = int(values[valid].min()), int(values[valid].max())
    opens, closes = _bounds_for(session, calendar, _from_us(lo) - bar, _from_us(hi) + 2 * bar)
    bar_us = int(bar / timedelta(microseconds=1))
    # The only session that can overlap a bar is the last one opening before the bar ends.
    idx = np.searchsorted(opens, values + bar_us, side="left") - 1
    hit = (idx >= 0) & (closes[np.clip(idx, 0, None)] > values)
    return pl.Series(timestamps.name, np.where(valid, hit, True))


def apply_session(bars: pl.DataFrame, session: str, calendar: str) -> tuple[pl.DataFrame, int]:
    """Keep the bars that overlap the session policy; return them and how many were dropped."""
    if bars.is_empty() or session == "24x7":
        _check_session(session)
        return bars, 0
    _require_utc(bars.schema["timestamp"])
    mask = session_mask(bars["timestamp"], session, calendar)
    kept = bars.filter(mask)
    return kept, bars.height - kept.height


def expected_timestamps(
    session: str, calendar: str, start: datetime, end: datetime, *, phase: timedelta = timedelta(0)
) -> pl.Series:
    """Hourly bar starts in ``[start, end)`` that the session expects, on the grid ``hh:00 + phase``.

    ``phase`` is the minute offset of the source's bars (Yahoo's US equity bars start at hh:30);
    gap detection infers it from the data so a 09:30-aligned feed is not a gap everywhere.
    """
    _check_session(session)
    lo, hi = _as_utc(start), _as_utc(end)
    if hi <= lo:
        return pl.Series("timestamp", [], dtype=_UTC_US)
    phase_us = int(phase / timedelta(microseconds=1)) % _US_PER_HOUR
    first = _ceil_us(_to_us(lo) - phase_us, _US_PER_HOUR) + phase_us
    last = _to_us(hi)
    if first >= last:
        return pl.Series("timestamp", [], dtype=_UTC_US)
    grid = pl.Series("timestamp", np.arange(first, last, _US_PER_HOUR, dtype=np.int64))
    grid = grid.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    return grid.filter(session_mask(grid, session, calendar))


def _bounds_for(session: str, calendar: str, start: datetime, end: datetime) -> tuple[np.ndarray, np.ndarray]:
    """Session opens/closes (int64 µs UTC) covering ``[start, end)``, from the year-keyed cache."""
    _check_session(session)
    if session == "24x7":
        return np.array([np.iinfo(np.int64).min // 2]), np.array([np.iinfo(np.int64).max // 2])
    # Decade-aligned keys: any range inside the same decades reuses one calendar build (~0.4 s each).
    first_year = (start - timedelta(days=8)).year // 10 * 10
    last_year = (end + timedelta(days=8)).year // 10 * 10 + 9
    return _session_arrays(session, calendar if session != "24h" else "", first_year, last_year)


@lru_cache(maxsize=64)
def _session_arrays(session: str, calendar: str, first_year: int, last_year: int) -> tuple[np.ndarray, np.ndarray]:
    if session == "24h":
        frame = _fx_weeks(date(first_year, 1, 1), date(last_year, 12, 31))
    else:
        frame = _exchange_sessions(calendar, first_year, last_year, extended=session == "extended")
    opens = frame["open"].dt.epoch("us").to_numpy()
    closes = frame["close"].dt.epoch("us").to_numpy()
    opens.setflags(write=False)
    closes.setflags(write=False)
    return opens, closes


def _exchange_sessions(calendar: str, first_year: int, last_year: int, *, extended: bool) -> pl.DataFrame:
    """Regular (or extended) sessions of an exchange_calendars calendar, one row per trading day."""
    import exchange_calendars as xc  # slow import; only policies that need it pay for it

    try:
        with warnings.catch_warnings():  # exchange_calendars' own pandas deprecation noise, not ours to fix
            warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
            cal = xc.get_calendar(calendar, start=f"{first_year}-01-01", end=f"{last_year}-12-31")
    except xc.errors.InvalidCalendarName:
        raise DataError(
            f"unknown exchange calendar '{calendar}'; set data.calendar to an exchange_calendars code "
            "(e.g. XNYS, XNAS, XLON)",
            rule="calendar",
        ) from None
    except (ValueError, xc.errors.CalendarError) as err:
        raise DataError(
            f"calendar {calendar} cannot cover {first_year}-{last_year}: {err}".splitlines()[0], rule="calendar"
        ) from None
    schedule = pl.from_pandas(cal.schedule[["open", "close"]].reset_index(names="day"))
    frame = schedule.select(
        pl.col("day").cast(pl.Date),
        pl.col("open").dt.convert_time_zone("UTC").cast(_UTC_US),
        pl.col("close").dt.convert_time_zone("UTC").cast(_UTC_US),
    )
    if extended:
        four_am = (pl.col("day").cast(pl.Datetime("us")) + pl.duration(hours=4)).dt.replace_time_zone(NEW_YORK)
        frame = frame.with_columns(
            open=four_am.dt.convert_time_zone("UTC"), close=pl.col("close") + pl.duration(hours=4)
        )
    return frame.select("open", "close").sort("open")


def _fx_weeks(first: date, last: date) -> pl.DataFrame:
    """FX weeks: each Sunday 17:00 New York to the following Friday 17:00 New York."""
    days = pl.date_range(first - timedelta(days=7), last + timedelta(days=7), "1d", eager=True)
    sundays = days.filter(days.dt.weekday() == 7)
    at_five = sundays.cast(pl.Datetime("us")) + timedelta(hours=17)
    opens = at_five.dt.replace_time_zone(NEW_YORK).dt.convert_time_zone("UTC")
    closes = (at_five + timedelta(days=5)).dt.replace_time_zone(NEW_YORK).dt.convert_time_zone("UTC")
    return pl.DataFrame({"open": opens, "close": closes})


def _check_session(session: str) -> None:
    if session not in SESSIONS:
        raise DataError(f"unknown session policy '{session}'; known: {', '.join(SESSIONS)}", rule="session")


def _require_utc(dtype: pl.DataType) -> None:
    if not isinstance(dtype, pl.Datetime) or dtype.time_zone is None:
        raise DataError(f"timestamps must be timezone-aware datetimes, found {dtype}", rule="timezone")


def _epoch_us(timestamps: pl.Series) -> pl.Series:
    _require_utc(timestamps.dtype)
    return timestamps.dt.convert_time_zone("UTC").dt.epoch("us")


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _to_us(value: datetime) -> int:
    delta = _as_utc(value) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return delta // timedelta(microseconds=1)


def _from_us(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=value)


def _ceil_us(value: int, step: int) -> int:
    return -((-value) // step) * step
