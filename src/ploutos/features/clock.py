"""The New York clock of the time-of-day and weekday features, without Polars' time-zone conversion.

Polars converts every timestamp through the time-zone database (17 ms per 100k bars for the hour,
then 2 ms per sine). A zone's offset from UTC changes twice a year: the offsets are looked up once
per span of years (:func:`utc_offsets`), applied in a compiled loop, and the 1,440 minutes of a
day (or 7 days) are a table of sines and cosines.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
from numba import njit

from ploutos.features.kernels import to_series


@njit(cache=True, nogil=True, inline="always")
def _span(t: int, starts: np.ndarray, k: int) -> int:
    """The span of ``starts`` holding ``t``, looked up only when ``t`` left span ``k``."""
    if k + 1 < starts.shape[0] and t >= starts[k + 1] or t < starts[k]:
        return np.searchsorted(starts, t, side="right") - 1
    return k


@njit(cache=True, nogil=True)
def local_cycle(
    seconds: np.ndarray, starts: np.ndarray, offsets: np.ndarray, table: np.ndarray, weekday: bool
) -> np.ndarray:
    """``table[minute of the day]`` (or ``table[weekday]``, Monday 0) of UTC epoch ``seconds`` on a
    local clock ``offsets[k]`` seconds ahead of UTC from ``starts[k]`` on (``starts`` sorted)."""
    out = np.empty(seconds.shape[0])
    k = 0
    for i in range(seconds.shape[0]):
        k = _span(seconds[i], starts, k)
        local = seconds[i] + offsets[k]
        if weekday:
            out[i] = table[(local // 86400 + 3) % 7]  # 1970-01-01 was a Thursday
        else:
            out[i] = table[local % 86400 // 60]
    return out


@njit(cache=True, nogil=True)
def local_cycles(  # noqa: PLR0913 - flat, as a compiled kernel takes them
    seconds: np.ndarray, starts: np.ndarray, offsets: np.ndarray, day: np.ndarray, week: np.ndarray, out: np.ndarray
) -> None:
    """:func:`local_cycle` of every row of the tables ``day`` (by minute of the day) and ``week`` (by
    weekday) at once: ``out`` gets ``len(day)`` rows, then ``len(week)`` rows."""
    k = 0
    for i in range(seconds.shape[0]):
        k = _span(seconds[i], starts, k)
        local = seconds[i] + offsets[k]
        minute, weekday = local % 86400 // 60, (local // 86400 + 3) % 7  # 1970-01-01 was a Thursday
        for j in range(day.shape[0]):
            out[j, i] = day[j, minute]
        for j in range(week.shape[0]):
            out[day.shape[0] + j, i] = week[j, weekday]


@functools.lru_cache(maxsize=64)
def utc_offsets(zone: str, first_year: int, last_year: int) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, offsets)`` of :func:`local_clock` for ``zone`` over these years (daily scan, then a
    bisection to the second at each change of offset)."""
    tz = ZoneInfo(zone)

    def offset(t: int) -> int:
        return int(datetime.fromtimestamp(t, tz).utcoffset().total_seconds())  # type: ignore[union-attr]

    first = int(datetime(first_year, 1, 1, tzinfo=timezone.utc).timestamp())
    last = int(datetime(last_year + 1, 1, 1, tzinfo=timezone.utc).timestamp())
    starts, offsets = [np.iinfo(np.int64).min], [offset(first)]
    for day in range(first + 86400, last + 86400, 86400):
        found = offset(day)
        if found != offsets[-1]:
            low, high = day - 86400, day  # offset(low) is the old one, offset(high) the new
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if offset(middle) == offsets[-1] else (low, middle)
            starts.append(high)
            offsets.append(found)
    return np.array(starts, np.int64), np.array(offsets, np.int64)


@dataclass(frozen=True)
class LocalClock:
    """Polars' batch function for a cyclic encoding of the time of day or of the weekday.

    ``function(2 pi part / period)`` of a UTC ``timestamp`` column on the clock of ``zone``, where
    ``part`` is the hour (plus minutes / 60; period 24) or the weekday (Monday 0; period 7) and
    ``function`` is ``sin`` or ``cos``. Polars converts every timestamp through the time-zone
    database (17 ms per 100k bars for the hour, then 2 ms per sine): the offsets change twice a
    year, so they are looked up once, and the 1,440 minutes of a day (or 7 days) are a table.
    """

    zone: str
    weekday: bool
    function: str

    def __call__(self, column: pl.Series) -> pl.Series:
        per_second = {"ns": 10**9, "us": 10**6, "ms": 10**3}[column.dtype.time_unit]  # type: ignore[attr-defined]
        present = column.is_not_null().to_numpy() if column.null_count() else None
        ticks = column.cast(pl.Int64).to_numpy()
        found = np.ascontiguousarray((ticks if present is None else ticks[present]) // per_second, dtype=np.int64)
        if len(found) == 0:
            return pl.Series(column.name, np.full(len(column), np.nan)).fill_nan(None)
        years = [datetime.fromtimestamp(int(t), timezone.utc).year for t in (found.min(), found.max())]
        starts, offsets = utc_offsets(self.zone, years[0] - 1, years[1] + 1)
        parts = np.arange(7.0) / 7 if self.weekday else (np.arange(1440) // 60 + np.arange(1440) % 60 / 60.0) / 24
        cycle = local_cycle(found, starts, offsets, getattr(np, self.function)(2 * np.pi * parts), self.weekday)
        if present is None:
            return pl.Series(column.name, cycle)
        out = np.full(len(column), np.nan)
        out[present] = cycle
        return to_series(column.name, out, True)


CLOCK_FEATURES = ("hour_sin", "hour_cos", "dow_sin", "dow_cos")
"""The clock's features, in the registry's order."""


def clock_tables() -> tuple[np.ndarray, np.ndarray]:
    """Sine and cosine of the hour (plus minutes / 60) over 24, by minute of the day; of the weekday over 7."""
    hours = (np.arange(1440) // 60 + np.arange(1440) % 60 / 60.0) / 24
    days = np.arange(7.0) / 7
    return np.stack([np.sin(2 * np.pi * hours), np.cos(2 * np.pi * hours)]), np.stack(
        [np.sin(2 * np.pi * days), np.cos(2 * np.pi * days)]
    )


def clock_features(seconds: np.ndarray, zone: str, out: np.ndarray) -> None:
    """:data:`CLOCK_FEATURES` of UTC epoch ``seconds`` (int64) on the clock of ``zone``, into the 4
    rows of ``out``: the values :class:`LocalClock` gives, in one pass."""
    if seconds.shape[0] == 0:
        return
    years = [datetime.fromtimestamp(int(t), timezone.utc).year for t in (seconds.min(), seconds.max())]
    starts, offsets = utc_offsets(zone, years[0] - 1, years[1] + 1)
    day, week = clock_tables()
    local_cycles(seconds, starts, offsets, day, week, out)
