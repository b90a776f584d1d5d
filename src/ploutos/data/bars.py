"""The canonical bar frame and the boundary where timestamps become UTC.

Every source returns bars in :data:`BAR_SCHEMA`: ``timestamp`` is ``Datetime("us", "UTC")``
(the bar's *start*), prices and volume are ``Float64``. Whatever a source or file gives —
naive or aware, seconds or nanoseconds, pandas or Polars — is reconciled here, once, so the
``Cannot compare dtypes datetime64[s] and datetime64[us, UTC]`` class of crash cannot happen
further down.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import polars as pl

from ploutos.config.sections import TICKER_PATTERN, YEARS, ticker_problem
from ploutos.errors import DataError, first_line

PRICE_COLUMNS = ("open", "high", "low", "close")
BAR_COLUMNS = ("timestamp", "ticker", *PRICE_COLUMNS, "volume")
BAR_SCHEMA: dict[str, pl.DataType] = {
    "timestamp": pl.Datetime("us", "UTC"),
    "ticker": pl.String(),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
}


EARLIEST = datetime(YEARS[0], 1, 1, tzinfo=timezone.utc)
"""No bar starts before this (see :data:`ploutos.config.sections.YEARS`)."""
LATEST = datetime(YEARS[1] + 1, 1, 1, tzinfo=timezone.utc)
"""Every bar starts before this."""


def empty_bars() -> pl.DataFrame:
    """A bar frame with no rows and the canonical schema."""
    return pl.DataFrame(schema=BAR_SCHEMA)


def to_utc(
    frame: pl.DataFrame, column: str = "timestamp", *, assume_tz: str = "UTC", path: str | None = None
) -> pl.DataFrame:
    """Cast ``column`` to ``Datetime("us", "UTC")``.

    Naive values are read as wall-clock time in ``assume_tz``; aware values are converted.
    A naive time that does not exist or is ambiguous in ``assume_tz`` (DST changes) is an error,
    because guessing would silently create or merge bars.
    """
    dtype = frame.schema[column]
    if not isinstance(dtype, pl.Datetime):
        if dtype == pl.Date:
            return frame.with_columns(
                pl.col(column).cast(pl.Datetime("us")).dt.replace_time_zone(assume_tz).dt.convert_time_zone("UTC")
            )
        raise DataError(f"column '{column}' has type {dtype}, expected a datetime", path=path, rule="schema")
    expr = pl.col(column).cast(pl.Datetime("us", dtype.time_zone))
    if dtype.time_zone is None:
        try:
            return frame.with_columns(
                expr.dt.replace_time_zone(assume_tz, ambiguous="raise", non_existent="raise").dt.convert_time_zone(
                    "UTC"
                )
            )
        except pl.exceptions.ComputeError as err:
            raise DataError(
                f"naive timestamps cannot be placed in {assume_tz} ({first_line(err)}); "
                "give timestamps with a UTC offset or set the timezone in the config",
                path=path,
                rule="timezone",
            ) from None
    return frame.with_columns(expr.dt.convert_time_zone("UTC"))


def canonical(frame: pl.DataFrame, *, path: str | None = None) -> pl.DataFrame:
    """Select and cast the bar columns into :data:`BAR_SCHEMA` order; timestamps must be UTC already."""
    missing = [c for c in BAR_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(missing)}; found {', '.join(frame.columns)}", path=path, rule="schema"
        )
    try:
        bars = frame.select(pl.col(name).cast(dtype) for name, dtype in BAR_SCHEMA.items())
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as err:
        raise DataError(f"cannot cast to the bar schema: {first_line(err)}", path=path, rule="schema") from None
    check_time_range(bars, path=path)
    return bars


def check_time_range(bars: pl.DataFrame, *, path: str | None = None, column: str = "timestamp") -> None:
    """Refuse a bar outside the years :data:`EARLIEST` .. :data:`LATEST` (a wrong epoch unit, year 9999).

    Later stages turn timestamps into Python datetimes and session calendars, which overflow or
    make no sense there; the row is the frame's 0-based row (the file's data row for a file).
    """
    stamps = bars[column]
    outside = (stamps < EARLIEST) | (stamps >= LATEST)
    if not outside.any():
        return
    row = int(outside.arg_max() or 0)
    shown = stamps.dt.strftime("%Y-%m-%dT%H:%M:%SZ")[row]
    ticker = bars["ticker"][row] if "ticker" in bars.columns else None
    raise DataError(
        f"timestamp {shown} is outside the years {YEARS[0]}..{YEARS[1]} ({int(outside.sum())} such row(s))",
        path=path,
        ticker=None if ticker is None else str(ticker),
        row=row,
        rule="timestamp",
    )


def check_tickers(frame: pl.DataFrame, *, path: str | None = None) -> None:
    """Refuse a value of the ``ticker`` column that is not a ticker symbol (it would name a store folder)."""
    if "ticker" not in frame.columns:
        return
    dtype = frame.schema["ticker"]
    if not (dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum) or dtype.is_integer()):
        raise DataError(f"column 'ticker' has type {dtype}, expected text", path=path, rule="schema")
    tickers = frame["ticker"].cast(pl.String)
    good = tickers.str.contains(f"^(?:{TICKER_PATTERN.pattern})$") & tickers.str.contains("[A-Za-z0-9]")
    bad = tickers.is_not_null() & ~good
    if bad.any():
        row = int(bad.arg_max() or 0)
        raise DataError(f"ticker column: {ticker_problem(tickers[row])}", path=path, row=row, rule="schema")


def clip_to_range(frame: pl.DataFrame, start: datetime | None, end: datetime | None) -> pl.DataFrame:
    """The bars with ``start <= timestamp < end``; ``None`` leaves that side open."""
    if start is not None:
        frame = frame.filter(pl.col("timestamp") >= start)
    if end is not None:
        frame = frame.filter(pl.col("timestamp") < end)
    return frame


def utc_datetime(value: Any) -> datetime | None:
    """A tz-aware UTC ``datetime`` from a date string, ``date``, naive (read as UTC) or aware datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):  # a date
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)
