"""Bars from users' CSV files, whatever their column names and time format.

Column names are normalized (``Date``, ``Datetime``, ``Time``, ``timestamp``, ``o``, ``Close``,
``Vol`` ...). Timestamps with a UTC offset keep it; naive ones are read in ``csv_timezone``.
The file's format is detected (ISO 8601, ``dd.mm.yyyy HH:MM:SS``, epoch seconds, milliseconds,
microseconds or nanoseconds, told apart by magnitude) unless ``csv_time_format`` gives it.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import ClassVar

import polars as pl

from ploutos.config import DataConfig
from ploutos.data.bars import PRICE_COLUMNS, canonical, check_tickers, clip_to_range, to_utc
from ploutos.data.sources.base import BarSource
from ploutos.errors import DataError, first_line, place

COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "timestamp": ("timestamp", "time", "date", "datetime", "date_time", "gmt_time", "local_time", "t", "index"),
    "ticker": ("ticker", "symbol", "asset", "instrument"),
    "open": ("open", "o", "open_price"),
    "high": ("high", "h", "high_price"),
    "low": ("low", "l", "low_price"),
    "close": ("close", "c", "last", "price", "close_price"),
    "volume": ("volume", "v", "vol", "qty"),
}
"""Accepted spellings of each bar column, after lower-casing and turning spaces into ``_``."""

TIME_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%d %H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%M%z",
    "%Y-%m-%d %H:%M%z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%d.%m.%Y %H:%M:%S%.f",
    "%d.%m.%Y %H:%M",
    "%Y-%m-%d",
)
"""Formats tried in order when the config gives none; the first that parses every row wins."""


def normalize_columns(frame: pl.DataFrame, path: str) -> pl.DataFrame:
    """Rename recognised columns to the canonical names and drop the rest."""
    renames: dict[str, str] = {}
    for column in frame.columns:
        key = re.sub(r"[\s\-]+", "_", column.strip().lower())
        for canonical_name, aliases in COLUMN_ALIASES.items():
            if key in aliases and canonical_name not in renames.values():
                renames[column] = canonical_name
                break
    frame = frame.rename(renames).select(list(dict.fromkeys(renames.values())))
    missing = [c for c in ("timestamp", *PRICE_COLUMNS) if c not in frame.columns]
    if missing:
        raise DataError(
            f"no column for {', '.join(missing)}; the file has {', '.join(renames) or 'no recognised columns'}",
            path=path,
            rule="schema",
        )
    return frame


def parse_timestamps(frame: pl.DataFrame, *, path: str, timezone: str, time_format: str | None) -> pl.DataFrame:
    """Turn the ``timestamp`` column into UTC datetimes, detecting the format unless one is given."""
    column = frame["timestamp"]
    if column.dtype.is_integer() or column.dtype.is_float():
        return frame.with_columns(epoch_timestamps(column, path=path).alias("timestamp"))
    if isinstance(column.dtype, (pl.Datetime, pl.Date)):
        return to_utc(frame, assume_tz=timezone, path=path)
    text = column.cast(pl.String).str.strip_chars().str.replace(r"Z$", "+00:00")
    formats = (time_format,) if time_format else TIME_FORMATS
    best: tuple[int, str, pl.Series] | None = None
    for fmt in formats:
        parsed = text.str.to_datetime(fmt, strict=False, time_unit="us")
        failures = parsed.is_null().sum() - text.is_null().sum()
        if failures == 0:
            return to_utc(frame.with_columns(parsed.alias("timestamp")), assume_tz=timezone, path=path)
        if best is None or failures < best[0]:
            best = (failures, fmt, parsed)
    assert best is not None
    failures, fmt, parsed = best
    bad_row = int((parsed.is_null() & text.is_not_null()).arg_max() or 0)
    hint = "" if time_format else "; set data.csv_time_format to its strftime format"
    raise DataError(
        f"cannot read timestamp {text[bad_row]!r} ({failures} unreadable value(s){hint})",
        path=path,
        row=bad_row,
        rule="timestamp",
    )


EPOCH_UNITS = (("s", 10**11, 1_000_000), ("ms", 10**14, 1_000), ("us", 10**17, 1), ("ns", None, 0.001))
"""(unit, values below this are in it, factor to microseconds): the magnitude of an epoch number tells
its unit; 10**11 s, 10**14 ms and 10**17 us all lie in the year 5138, far beyond any bar."""


def epoch_timestamps(column: pl.Series, *, path: str) -> pl.Series:
    """Numbers since 1970-01-01 UTC as UTC datetimes, the unit (s, ms, us or ns) told by their magnitude.

    Every number of a column must be in the same unit; a file mixing them is refused at the first
    row that differs, and so is a number no unit can make a time of (NaN, beyond 2262 in ns).
    """
    numbers = column.cast(pl.Float64)
    magnitude = numbers.abs()
    unit_index = pl.repeat(0, len(numbers), dtype=pl.Int8, eager=True)  # 0 s, 1 ms, 2 us, 3 ns
    for _, limit, _ in EPOCH_UNITS[:-1]:  # one unit finer for every threshold passed
        unit_index = unit_index + (magnitude >= limit).fill_null(False).cast(pl.Int8)
    present = numbers.is_not_null() & numbers.is_finite()
    if not present.any():
        return pl.Series(column.name, [None] * len(column), dtype=pl.Datetime("us", "UTC"))
    first = int(present.arg_max() or 0)
    unit, _, factor = EPOCH_UNITS[int(unit_index[first])]
    mixed = present & (unit_index != unit_index[first])
    if mixed.any():
        row = int(mixed.arg_max() or 0)
        other = EPOCH_UNITS[int(unit_index[row])][0]
        raise DataError(
            f"epoch time {column[row]} reads as {other} but {place(path, first)} ({column[first]}) as {unit}; "
            "use one unit for the whole time column",
            path=path,
            row=row,
            rule="timestamp",
        )
    if column.dtype.is_integer() and unit != "ns":
        micros = column.cast(pl.Int64, strict=False) * int(factor)
    elif column.dtype.is_integer():
        micros = column.cast(pl.Int64, strict=False) // 1000
    else:
        micros = (numbers * factor).round().cast(pl.Int64, strict=False)
    unreadable = column.is_not_null() & micros.is_null()
    if unreadable.any():
        row = int(unreadable.arg_max() or 0)
        raise DataError(f"epoch time {column[row]} is not a time", path=path, row=row, rule="timestamp")
    return micros.cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias(column.name)


def read_csv_bars(
    path: str | Path,
    *,
    timezone: str = "UTC",
    time_format: str | None = None,
    ticker: str | None = None,
) -> pl.DataFrame:
    """Read one CSV file of bars into the canonical schema (unsorted, unvalidated).

    ``ticker`` names the bars of a file without a ticker column, and selects them in a file with one.
    """
    name = str(path)
    try:
        raw = pl.read_csv(path, infer_schema_length=10_000, try_parse_dates=False)
    except FileNotFoundError:
        raise DataError("no such file", path=name, rule="file") from None
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError, OSError) as err:
        raise DataError(f"not a readable CSV file ({first_line(err)})", path=name, rule="file") from None
    if raw.height == 0:
        raise DataError("the file has no rows", path=name, rule="file")
    frame = normalize_columns(raw, name)
    if "ticker" not in frame.columns:
        frame = frame.with_columns(pl.lit(ticker or Path(name).name.split(".")[0].upper()).alias("ticker"))
    elif ticker is not None:
        frame = frame.filter(pl.col("ticker").cast(pl.String) == ticker)
        if frame.height == 0:
            raise DataError("no rows for this ticker", path=name, ticker=ticker, rule="file")
    check_tickers(frame, path=name)
    if "volume" not in frame.columns:
        frame = frame.with_columns(pl.lit(0.0).alias("volume"))
    for column in (*PRICE_COLUMNS, "volume"):
        numbers = frame[column].cast(pl.Float64, strict=False)
        bad = numbers.is_null() & frame[column].is_not_null()
        if bad.any():
            row = int(bad.arg_max() or 0)
            raise DataError(
                f"column '{column}' holds {frame[column][row]!r}, not a number",
                path=name,
                ticker=str(frame["ticker"][row]),
                row=row,
                rule="schema",
            )
        frame = frame.with_columns(numbers.alias(column))
    frame = parse_timestamps(frame, path=name, timezone=timezone, time_format=time_format)
    return canonical(frame, path=name)


class CsvSource(BarSource):
    """Bars from ``data.csv_path``: one file, or a directory of ``<TICKER>.csv`` files."""

    name: ClassVar[str] = "csv"

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg

    def fetch(self, ticker: str, start: datetime | None, end: datetime | None) -> pl.DataFrame:
        path = self._file_for(ticker)
        frame = read_csv_bars(
            path,
            timezone=self.cfg.csv_timezone,
            time_format=self.cfg.csv_time_format,
            ticker=ticker,
        )
        return clip_to_range(frame, start, end)

    def _file_for(self, ticker: str) -> Path:
        root = Path(self.cfg.csv_path or "")
        if not root.is_dir():
            return root
        candidates = {p.name.split(".")[0].upper(): p for p in root.iterdir() if ".csv" in p.name.lower()}
        if ticker.upper() not in candidates:
            raise DataError(f"no {ticker}.csv in the directory (found {len(candidates)} CSV files)", path=str(root))
        return candidates[ticker.upper()]


__all__ = ["COLUMN_ALIASES", "CsvSource", "normalize_columns", "parse_timestamps", "read_csv_bars"]
