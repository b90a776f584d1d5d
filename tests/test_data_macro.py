"""Macro series: publication times, the as-of alignment (no look-ahead), and loading."""

from __future__ import annotations

import sys
import types
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import polars as pl
import pytest

from ploutos.config.sections import DataConfig
from ploutos.data.calendar import apply_session
from ploutos.data.macro import align_macro, load_macro, macro_publication_times, read_macro_csv
from ploutos.errors import DataError

UTC = timezone.utc
NY = ZoneInfo("America/New_York")


def daily(start: date = date(2024, 2, 26), days: int = 60) -> pl.DataFrame:
    """A value per weekday equal to its date as yyyymmdd, so a bar's value tells its source date."""
    dates = [start + timedelta(days=i) for i in range(days)]
    dates = [d for d in dates if d.weekday() < 5]
    return pl.DataFrame({"date": dates, "close": [float(d.strftime("%Y%m%d")) for d in dates]})


def regular_bars(start: datetime, end: datetime, ticker: str = "SPY") -> pl.DataFrame:
    ts = pl.datetime_range(start, end, "1h", closed="left", eager=True, time_zone="UTC")
    frame = pl.DataFrame({"timestamp": ts, "ticker": ticker, "close": 1.0})
    return apply_session(frame, "regular", "XNYS")[0]


def value_date(value: float | None) -> date | None:
    return None if value is None else datetime.strptime(str(int(value)), "%Y%m%d").date()


def test_publication_time_is_the_close_in_new_york_plus_the_lag():
    published = macro_publication_times(daily(), "VIX", 15)
    by_date = dict(zip(published["date"], published["published_at"], strict=True))
    assert by_date[date(2024, 3, 1)] == datetime(2024, 3, 1, 21, 30, tzinfo=UTC)  # 16:15 EST + 15 min
    assert by_date[date(2024, 3, 11)] == datetime(2024, 3, 11, 20, 30, tzinfo=UTC)  # 16:15 EDT + 15 min
    assert published.schema["published_at"] == pl.Datetime("us", "UTC")
    tnx = macro_publication_times(daily(), "TNX", 0)
    dxy = macro_publication_times(daily(), "DXY", 0)
    assert tnx["published_at"][0].astimezone(NY).time().isoformat() == "16:00:00"
    assert dxy["published_at"][0].astimezone(NY).time().isoformat() == "17:00:00"


@pytest.mark.parametrize("series", ["VIX", "TNX", "DXY"])
def test_no_regular_bar_sees_its_own_days_close(series):
    bars = pl.concat(
        [
            regular_bars(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 20, tzinfo=UTC), ticker)
            for ticker in ("SPY", "QQQ")
        ]
    )
    lag = DataConfig().macro_lag_minutes  # the default 15 min; with lag 0 TNX (16:00) reaches the 15:00 bar
    out = align_macro(bars, {series: macro_publication_times(daily(), series, lag)})
    column = f"macro_{series}"
    dated = out.with_columns(
        bar_date=pl.col("timestamp").dt.convert_time_zone("America/New_York").dt.date(),
        seen=pl.col(column).map_elements(value_date, return_dtype=pl.Date),
    )
    assert (dated["seen"] < dated["bar_date"]).all()
    # the first bar after the close does see it: each day's first bar sees the latest earlier date's value
    first_bars = dated.sort("timestamp").group_by("ticker", "bar_date").agg(pl.col("seen").first())
    known = daily().select(known=pl.col("date"), key=pl.col("date")).sort("key")
    latest = first_bars.with_columns(key=pl.col("bar_date") - timedelta(days=1)).sort("key")
    latest = latest.join_asof(known, on="key", strategy="backward")
    assert latest.height == 2 * 35 and (latest["seen"] == latest["known"]).all()


def test_bar_ending_exactly_at_publication_sees_the_value():
    published = pl.DataFrame(
        {"published_at": [datetime(2024, 3, 1, 21, tzinfo=UTC)], "value": [1.5], "date": [date(2024, 3, 1)]}
    )
    starts = [datetime(2024, 3, 1, 19, tzinfo=UTC), datetime(2024, 3, 1, 20, tzinfo=UTC)]
    bars = pl.DataFrame({"timestamp": starts, "ticker": "EURUSD"})
    assert align_macro(bars, {"X": published})["macro_X"].to_list() == [None, 1.5]


def test_row_order_and_columns_are_kept():
    bars = regular_bars(datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 9, tzinfo=UTC))
    shuffled = bars.sample(fraction=1.0, shuffle=True, seed=1)
    out = align_macro(shuffled, {"VIX": macro_publication_times(daily(), "VIX", 15)})
    assert out.drop("macro_VIX").equals(shuffled)


def test_naive_aware_and_unit_mixes_never_crash():
    starts = pd.date_range("2024-03-04 14:00", periods=30, freq="h")
    expected = align_macro(
        pl.DataFrame({"timestamp": starts.tz_localize("UTC").as_unit("us")}),
        {"VIX": macro_publication_times(daily(), "VIX", 15)},
    )["macro_VIX"]
    naive_seconds = pl.from_pandas(pd.DataFrame({"timestamp": starts.as_unit("s")}))
    aware_ns_other_zone = pl.DataFrame({"timestamp": starts.tz_localize("UTC").tz_convert("Asia/Tokyo").as_unit("ns")})
    published = macro_publication_times(daily(), "VIX", 15)
    published_variants = [
        published,
        published.with_columns(pl.col("published_at").cast(pl.Datetime("ns", "UTC"))),
        published.with_columns(pl.col("published_at").dt.replace_time_zone(None).cast(pl.Datetime("ms"))),
    ]
    for frame in (naive_seconds, aware_ns_other_zone):
        for variant in published_variants:
            out = align_macro(frame, {"VIX": variant})
            assert out["macro_VIX"].equals(expected)
            assert out.schema["timestamp"] == pl.Datetime("us", "UTC")


def test_daily_dates_may_be_datetimes_of_any_unit_and_zone():
    base = daily()
    expected = macro_publication_times(base, "VIX", 15)
    naive = base.with_columns(pl.col("date").cast(pl.Datetime("ns")))
    aware = base.with_columns(pl.col("date").cast(pl.Datetime("us")).dt.replace_time_zone("America/New_York"))
    text = base.with_columns(pl.col("date").cast(pl.String))
    for variant in (naive, aware, text):
        assert macro_publication_times(variant, "VIX", 15).equals(expected)


def test_unknown_series_is_an_error():
    with pytest.raises(DataError, match="unknown macro series 'GOLD'"):
        macro_publication_times(daily(), "GOLD", 0)


def cfg_csv(tmp_path, **kw) -> DataConfig:
    return DataConfig(macro=("VIX", "DXY"), macro_source="csv", macro_csv_dir=str(tmp_path), **kw)


def test_load_macro_from_csv_is_case_insensitive(tmp_path):
    (tmp_path / "vix.CSV").write_text("Date,Open,Close\n2024-03-01,1,13.5\n2024-03-04,1,null\n2024-03-05,1,14.0\n")
    (tmp_path / "DXY.csv").write_text("DATE,CLOSE\n2024-03-01 00:00:00,103.9\n")
    loaded = load_macro(cfg_csv(tmp_path))
    assert loaded["VIX"]["value"].to_list() == [13.5, 14.0]  # the 'null' close is skipped
    assert loaded["DXY"]["date"].to_list() == [date(2024, 3, 1)]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("day,close\n2024-03-01,1\n", r"needs columns date and close; missing date"),
        ("date,close\n2024-03-01,1\n2024-13-45,2\n", r"line 3 \[macro\]: macro VIX date '2024-13-45' is not a date"),
        ("date,close\n2024-03-01,abc\n", r"line 2 \[macro\]: macro VIX close 'abc' is not a number"),
        ("date,close\n2024-03-01,1\n2024-03-01,2\n", r"line 2 \[macro\]: macro VIX date '2024-03-01' appears twice"),
        ("date,close\n2024-03-01,-1\n", r"close '-1' is not positive"),
    ],
)
def test_malformed_csv_is_a_clear_error(tmp_path, text, match):
    path = tmp_path / "VIX.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as info:
        read_macro_csv(path, "VIX")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_csv_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no VIX.csv for macro series VIX"):
        load_macro(cfg_csv(tmp_path))


def test_load_macro_from_yahoo_uses_fetch_daily_closes(monkeypatch):
    calls = []

    def fetch_daily_closes(symbol, start, end, *, cfg):
        calls.append((symbol, start, end))
        return daily()

    fake = types.ModuleType("ploutos.data.sources.yahoo")
    fake.fetch_daily_closes = fetch_daily_closes  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ploutos.data.sources.yahoo", fake)
    cfg = DataConfig(macro=("VIX", "TNX", "DXY"), start="2024-03-11", end="2024-04-01")
    loaded = load_macro(cfg)
    assert [c[0] for c in calls] == ["^VIX", "^TNX", "DX-Y.NYB"]
    assert calls[0][1] == datetime(2024, 3, 1, tzinfo=UTC) and calls[0][2] == datetime(2024, 4, 1, tzinfo=UTC)
    assert set(loaded) == {"VIX", "TNX", "DXY"} and all(f.height == daily().height for f in loaded.values())


def test_nan_closes_from_a_source_are_dropped():
    frame = daily().with_columns(close=pl.when(pl.int_range(pl.len()) == 2).then(np.nan).otherwise(pl.col("close")))
    assert macro_publication_times(frame, "VIX", 0).height == daily().height - 1


@pytest.mark.parametrize("day", ["9999-12-31", "0001-01-01", "1850-06-01"])
def test_macro_csv_dates_outside_the_supported_years_are_refused(tmp_path, day):
    path = tmp_path / "VIX.csv"
    path.write_text(f"date,close\n2024-03-01,13.5\n{day},14\n")
    with pytest.raises(DataError, match=rf"line 3 \[macro\]: macro VIX date '{day}' is outside the years 1900\.\.2199"):
        read_macro_csv(path, "VIX")
