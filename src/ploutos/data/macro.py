"""Macro series (VIX, TNX, DXY) aligned to bars as of the time they were *published*.

A daily close is only known after the close, so each value gets a publication instant: its
series' official close on that date in America/New_York plus ``macro_lag_minutes``. Bars see a
value only if they *end* (start + 1 h) at or after that instant; an as-of join, never a join on
the date, so no bar sees its own day's close before it happened.

Close times (America/New_York), chosen as the latest plausible print, since a late time costs
at most an hour of staleness while an early one leaks the future:

- VIX (``^VIX``): 16:15, the end of Cboe's VIX calculation for the regular session.
- TNX (``^TNX``): 16:00. Cboe's 10-year yield index is disseminated through Cboe's trading day; the
  Treasury cash market's customary close is 15:00, so 16:00 is the safe bound.
- DXY (``DX-Y.NYB``): 17:00, the ICE US Dollar Index (and FX) trading day's end.
"""

from __future__ import annotations

import os
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from ploutos.config.sections import YEARS
from ploutos.data.bars import to_utc
from ploutos.errors import DataError

NEW_YORK = "America/New_York"
SERIES: dict[str, dict[str, Any]] = {
    "VIX": {"symbol": "^VIX", "close": time(16, 15)},
    "TNX": {"symbol": "^TNX", "close": time(16, 0)},
    "DXY": {"symbol": "DX-Y.NYB", "close": time(17, 0)},
}
"""Known series: Yahoo symbol and official close time in America/New_York."""

_UTC_US = pl.Datetime("us", "UTC")
PUBLISHED_SCHEMA = {"date": pl.Date(), "value": pl.Float64(), "published_at": _UTC_US}


def macro_publication_times(daily: pl.DataFrame, series: str, lag_minutes: int) -> pl.DataFrame:
    """``date, value, published_at`` (UTC) for daily closes of ``series``, sorted by date.

    ``daily`` has a ``date`` column (Date, or datetimes of any unit; aware ones are read on the
    New York calendar) and a ``close`` (or ``value``) column.
    """
    close_time = _series(series)["close"]
    frame = _daily_frame(daily, series)
    local = pl.col("date").cast(pl.Datetime("us")) + pl.duration(hours=close_time.hour, minutes=close_time.minute)
    published = local.dt.replace_time_zone(NEW_YORK, ambiguous="latest", non_existent="null").dt.convert_time_zone(
        "UTC"
    )
    return frame.with_columns(published_at=published + pl.duration(minutes=lag_minutes)).select(
        pl.col(name).cast(dtype) for name, dtype in PUBLISHED_SCHEMA.items()
    )


def align_macro(
    bars: pl.DataFrame, macro: dict[str, pl.DataFrame], *, bar: timedelta = timedelta(hours=1)
) -> pl.DataFrame:
    """``bars`` plus one column ``macro_<NAME>`` per series: the latest value published by the bar's end.

    Bar timestamps and ``published_at`` may be naive (read as UTC) or aware, in any unit; the
    result has the canonical UTC microsecond timestamps and the input's row order.
    """
    frame = to_utc(bars).with_row_index("__row").with_columns(__end=pl.col("timestamp") + bar)
    ordered = frame.sort("__end")
    for name, published in macro.items():
        values = (
            to_utc(published.select("published_at", "value"), "published_at")
            .drop_nulls()
            .sort("published_at")
            .unique("published_at", keep="last", maintain_order=True)
            .rename({"value": f"macro_{name}"})
        )
        ordered = ordered.join_asof(values, left_on="__end", right_on="published_at", strategy="backward").drop(
            "published_at"
        )
    return ordered.sort("__row").drop("__row", "__end")


def load_macro(cfg: Any, *, start: datetime | None = None, end: datetime | None = None) -> dict[str, pl.DataFrame]:
    """Published frames for ``cfg.macro`` from Yahoo or ``<macro_csv_dir>/<NAME>.csv``.

    ``start``/``end`` bound the Yahoo request (CSV files are read whole); by default ten days
    before ``cfg.start`` (so the first bars see the previous close) to ``cfg.end``.
    """
    if start is None and cfg.start_utc is not None:
        start = cfg.start_utc - timedelta(days=10)
    end = end if end is not None else cfg.end_utc
    out: dict[str, pl.DataFrame] = {}
    for name in cfg.macro:
        if cfg.macro_source == "csv":
            daily = read_macro_csv(macro_csv_path(cfg.macro_csv_dir, name), name)
        else:
            from ploutos.data.sources.yahoo import fetch_daily_closes  # network code only when used

            daily = fetch_daily_closes(_series(name)["symbol"], start, end, cfg=cfg)
        out[name] = macro_publication_times(daily, name, cfg.macro_lag_minutes)
    return out


def macro_csv_path(directory: str | os.PathLike[str], name: str) -> Path:
    """``<directory>/<NAME>.csv``, matching the file name case-insensitively."""
    folder = Path(directory)
    if not folder.is_dir():
        raise DataError("macro_csv_dir is not a directory", path=str(folder), rule="macro")
    for candidate in sorted(folder.iterdir()):
        if candidate.suffix.lower() == ".csv" and candidate.stem.lower() == name.lower():
            return candidate
    raise DataError(f"no {name}.csv for macro series {name}", path=str(folder), rule="macro")


def read_macro_csv(path: str | os.PathLike[str], name: str) -> pl.DataFrame:
    """``date, close`` from a CSV with date and close columns (any case); empty or 'null' closes are skipped."""
    where = str(path)
    try:
        raw = pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.ComputeError, pl.exceptions.NoDataError) as err:
        raise DataError(f"cannot read CSV: {str(err).splitlines()[0]}", path=where, rule="macro") from None
    columns = {c.strip().lower(): c for c in raw.columns}
    missing = [c for c in ("date", "close") if c not in columns]
    if missing:
        raise DataError(
            f"macro {name} CSV needs columns date and close; missing {', '.join(missing)} "
            f"(found {', '.join(raw.columns)})",
            path=where,
            rule="schema",
        )
    text = raw.select(date=pl.col(columns["date"]).str.strip_chars(), close=pl.col(columns["close"]).str.strip_chars())
    text = text.with_columns(pl.col("close").replace({"": None, "null": None, "NaN": None, "nan": None}))
    parsed = text.with_columns(
        date=pl.coalesce(
            pl.col("date").str.to_date("%Y-%m-%d", strict=False),
            pl.col("date").str.to_datetime(strict=False).dt.date(),
        ),
        close=pl.col("close").cast(pl.Float64, strict=False),
    ).with_row_index("row")
    _refuse_rows(parsed, text, where, name)
    return parsed.drop_nulls("close").select("date", "close")


def _refuse_rows(parsed: pl.DataFrame, text: pl.DataFrame, where: str, name: str) -> None:
    """Raise on the first unparseable date or close, non-positive close, or repeated date."""
    checks = [
        (pl.col("date").is_null(), "date", "is not a date (YYYY-MM-DD)"),
        (~pl.col("date").dt.year().is_between(*YEARS), "date", f"is outside the years {YEARS[0]}..{YEARS[1]}"),
        (text["close"].is_not_null() & parsed["close"].is_null(), "close", "is not a number"),
        (parsed["close"] <= 0, "close", "is not positive"),
        (pl.col("date").is_duplicated() & pl.col("date").is_not_null(), "date", "appears twice"),
    ]
    for mask, column, what in checks:
        bad = parsed.filter(mask)
        if not bad.is_empty():
            row = int(bad["row"][0])
            value = text[column][row]
            raise DataError(
                f"macro {name} {column} '{value}' {what} ({bad.height} such row(s))", path=where, row=row, rule="macro"
            )


def _daily_frame(daily: pl.DataFrame, series: str) -> pl.DataFrame:
    """``date`` (Date) and ``value`` (Float64) from a daily frame, sorted, nulls dropped."""
    value_col = "close" if "close" in daily.columns else "value" if "value" in daily.columns else None
    if "date" not in daily.columns or value_col is None:
        raise DataError(f"macro {series} needs columns date and close, found {', '.join(daily.columns)}", rule="schema")
    dtype = daily.schema["date"]
    date = pl.col("date")
    if isinstance(dtype, pl.Datetime):
        date = (date.dt.convert_time_zone(NEW_YORK) if dtype.time_zone else date).dt.date()
    elif dtype != pl.Date:
        date = date.cast(pl.String).str.to_date(strict=False)
    frame = daily.select(date=date, value=pl.col(value_col).cast(pl.Float64, strict=False))
    frame = frame.drop_nulls().filter(pl.col("value").is_finite()).sort("date")
    if frame["date"].is_duplicated().any():
        first = frame.filter(pl.col("date").is_duplicated())["date"][0]
        raise DataError(f"macro {series} has two values for {first}", rule="macro")
    return frame


def _series(name: str) -> dict[str, Any]:
    try:
        return SERIES[name]
    except KeyError:
        raise DataError(f"unknown macro series '{name}'; known: {', '.join(SERIES)}", rule="macro") from None
