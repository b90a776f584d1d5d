"""The sources that need no network: csv (users' files), sample (shipped EURUSD), synthetic."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ploutos.config import load
from ploutos.data.bars import BAR_SCHEMA
from ploutos.data.sources import make_source
from ploutos.data.sources.csv import read_csv_bars
from ploutos.data.sources.sample import SampleSource
from ploutos.data.sources.synthetic import SyntheticSource
from ploutos.errors import DataError, SourceError

UTC = timezone.utc


def _data(*overrides: str):
    return load(None, list(overrides)).data


# --- csv -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "rows"),
    [
        ("Date,Open,High,Low,Close,Volume", ["2024-01-02 15:00:00+00:00,1,2,0.5,1.5,10"]),
        ("timestamp,o,h,l,c,v", ["2024-01-02T15:00:00Z,1,2,0.5,1.5,10"]),
        ("Datetime,Open,High,Low,Close,Adj Close,Volume", ["2024-01-02 10:00:00-05:00,1,2,0.5,1.5,1.4,10"]),
        ("Gmt time,Open,High,Low,Close,Volume", ["02.01.2024 15:00:00.000,1,2,0.5,1.5,10"]),
        ("time,open,high,low,close,volume", ["1704207600,1,2,0.5,1.5,10"]),
        ("time,open,high,low,close,volume", ["1704207600000,1,2,0.5,1.5,10"]),
    ],
)
def test_csv_column_names_and_time_formats_are_normalized(tmp_path: Path, header: str, rows: list[str]):
    path = tmp_path / "spy.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    bars = read_csv_bars(path)
    assert bars.schema == pl.Schema(BAR_SCHEMA)
    assert bars["timestamp"][0] == datetime(2024, 1, 2, 15, tzinfo=UTC)
    assert bars["ticker"][0] == "SPY"
    assert bars.row(0)[2:] == (1.0, 2.0, 0.5, 1.5, 10.0)


def test_csv_naive_times_take_the_configured_timezone_across_dst(tmp_path: Path):
    path = tmp_path / "spy.csv"
    path.write_text("time,open,high,low,close,volume\n2024-03-08 09:00,1,1,1,1,1\n2024-03-11 09:00,1,1,1,1,1\n")
    bars = read_csv_bars(path, timezone="America/New_York")
    assert bars["timestamp"].to_list() == [
        datetime(2024, 3, 8, 14, tzinfo=UTC),  # EST, UTC-5
        datetime(2024, 3, 11, 13, tzinfo=UTC),  # EDT, UTC-4
    ]


def test_csv_ambiguous_naive_time_is_refused_not_guessed(tmp_path: Path):
    path = tmp_path / "spy.csv"
    path.write_text("time,open,high,low,close,volume\n2023-11-05 01:00,1,1,1,1,1\n")
    with pytest.raises(DataError, match=r"spy\.csv.*\[timezone\].*America/New_York"):
        read_csv_bars(path, timezone="America/New_York")


def test_csv_mixed_offsets_become_one_utc_column(tmp_path: Path):
    path = tmp_path / "spy.csv"
    path.write_text(
        "time,open,high,low,close,volume\n2024-03-08 09:00:00-05:00,1,1,1,1,1\n2024-03-11 09:00:00-04:00,1,1,1,1,1\n"
    )
    assert read_csv_bars(path)["timestamp"].dtype == pl.Datetime("us", "UTC")


def test_csv_with_a_ticker_column_serves_each_ticker(tmp_path: Path):
    path = tmp_path / "universe.csv"
    path.write_text(
        "symbol,timestamp,open,high,low,close,volume\n"
        "SPY,2024-01-02T15:00:00Z,1,1,1,1,1\nQQQ,2024-01-02T15:00:00Z,2,2,2,2,2\n"
    )
    source = make_source(_data("data.source=csv", f"data.csv_path={path}", "data.tickers=[SPY,QQQ]"))
    assert source.fetch("QQQ", None, None)["close"].to_list() == [2.0]
    with pytest.raises(DataError, match="ticker IWM"):
        source.fetch("IWM", None, None)


def test_csv_directory_of_files_and_range(tmp_path: Path):
    (tmp_path / "SPY.csv").write_text(
        "time,open,high,low,close,volume\n" + "".join(f"2024-01-02T{h:02d}:00:00Z,1,1,1,1,1\n" for h in range(14, 20))
    )
    source = make_source(_data("data.source=csv", f"data.csv_path={tmp_path}", "data.tickers=[SPY]"))
    bars = source.fetch("SPY", datetime(2024, 1, 2, 15, tzinfo=UTC), datetime(2024, 1, 2, 18, tzinfo=UTC))
    assert bars["timestamp"].dt.hour().to_list() == [15, 16, 17]
    with pytest.raises(DataError, match="no QQQ.csv"):
        source.fetch("QQQ", None, None)


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("", ["bad.csv", "[file]"]),
        ("time,open,high,low,close,volume\n", ["bad.csv", "no rows"]),
        ("when,price_open\n2024-01-01,1\n", ["bad.csv", "[schema]", "no column for"]),
        ("time,open,high,low,close,volume\n2024-01-02T15:00Z,1,1,1,abc,1\n", ["line 2", "[schema]", "'close'", "abc"]),
        (
            "time,open,high,low,close,volume\n2024-01-02T15:00Z,1,1,1,1,1\nyesterday,1,1,1,1,1\n",
            ["bad.csv", "line 3", "[timestamp]", "yesterday"],
        ),
        ('time,open,high\n"2024-01-02,1\n', ["bad.csv"]),
    ],
)
def test_malformed_csv_gives_one_line_naming_file_row_rule(tmp_path: Path, content: str, fragments: list[str]):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError) as caught:
        read_csv_bars(path)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_csv_file():
    with pytest.raises(DataError, match=r"nowhere\.csv.*no such file"):
        read_csv_bars("nowhere.csv")


# --- sample ----------------------------------------------------------------------------------


def test_sample_is_the_real_eurusd_file_in_utc():
    bars = SampleSource(_data()).fetch("EURUSD", None, None)
    assert bars.height == 6225
    assert bars.schema == pl.Schema(BAR_SCHEMA)
    assert bars["timestamp"][0] == datetime(2017, 1, 1, 22, tzinfo=UTC)  # FX opens Sunday 17:00 New York
    assert bars["timestamp"].is_sorted()
    assert (bars["low"] <= bars["high"]).all()


def test_sample_refuses_other_tickers():
    with pytest.raises(SourceError, match="sample: no shipped bars for SPY"):
        SampleSource(_data()).fetch("SPY", None, None)


# --- synthetic -------------------------------------------------------------------------------

UNIVERSE = [f"T{i:02d}" for i in range(15)]


def test_synthetic_scale_15_tickers_by_50k_bars_in_seconds():
    cfg = _data("data.source=synthetic", "data.session=24h", f"data.tickers=[{','.join(UNIVERSE)}]")
    started = time.perf_counter()
    source = SyntheticSource(cfg)
    frames = [source.fetch(t, None, None) for t in cfg.tickers]
    elapsed = time.perf_counter() - started
    assert all(f.height == 50_000 for f in frames)
    assert elapsed < 30  # generous: a guard against accidental per-row Python, not a benchmark


def test_synthetic_is_seeded_and_per_ticker_independent_of_the_universe():
    one = SyntheticSource(_data("data.source=synthetic", "data.tickers=[AAA]", "data.synthetic_bars=500"))
    two = SyntheticSource(_data("data.source=synthetic", "data.tickers=[ZZZ,AAA]", "data.synthetic_bars=500"))
    other_seed = SyntheticSource(
        _data("data.source=synthetic", "data.tickers=[AAA]", "data.synthetic_bars=500", "data.synthetic_seed=1")
    )
    assert one.fetch("AAA", None, None).equals(two.fetch("AAA", None, None))
    assert not one.fetch("AAA", None, None).equals(other_seed.fetch("AAA", None, None))


def test_synthetic_bars_are_valid_correlated_and_on_the_session():
    cfg = _data("data.source=synthetic", "data.session=regular", "data.tickers=[A,B,C]", "data.synthetic_bars=5000")
    source = SyntheticSource(cfg)
    frames = [source.fetch(t, None, None) for t in cfg.tickers]
    for bars in frames:
        assert bars.select((pl.col("low") <= pl.min_horizontal("open", "close")).all()).item()
        assert bars.select((pl.col("high") >= pl.max_horizontal("open", "close")).all()).item()
        assert (bars["low"] > 0).all() and (bars["volume"] >= 0).all()
        local = bars["timestamp"].dt.convert_time_zone("America/New_York")
        assert local.dt.hour().is_between(9, 15).all()  # bars that overlap 09:30-16:00
        assert local.dt.weekday().is_between(1, 5).all()
    returns = np.array([np.diff(np.log(f["close"].to_numpy())) for f in frames])
    correlations = np.corrcoef(returns)[np.triu_indices(3, 1)]
    assert (correlations > 0.1).all()  # the common factor makes them co-move


def test_synthetic_volume_has_an_intraday_u_shape():
    cfg = _data("data.source=synthetic", "data.session=regular", "data.tickers=[A]", "data.synthetic_bars=20000")
    bars = SyntheticSource(cfg).fetch("A", None, None)
    by_hour = (
        bars.with_columns(hour=pl.col("timestamp").dt.convert_time_zone("America/New_York").dt.hour())
        .group_by("hour")
        .agg(pl.col("volume").median())
        .sort("hour")
    )
    volume = dict(zip(by_hour["hour"], by_hour["volume"], strict=True))
    assert volume[9] > volume[12] < volume[15]


# --- epoch units, impossible years, unusable tickers (found by a hostile tester) -------------------

EPOCH_START = 1704207600  # 2024-01-02 15:00 UTC


@pytest.mark.parametrize(
    ("unit", "values"),
    [
        ("s", [EPOCH_START, EPOCH_START + 3600]),
        ("ms", [EPOCH_START * 1000, (EPOCH_START + 3600) * 1000]),
        ("us", [EPOCH_START * 10**6, (EPOCH_START + 3600) * 10**6]),
        ("ns", [EPOCH_START * 10**9, (EPOCH_START + 3600) * 10**9]),
        ("s as floats", [EPOCH_START + 0.0, EPOCH_START + 3600.0]),
        ("ms as floats", [EPOCH_START * 1000.0, (EPOCH_START + 3600) * 1000.0]),
    ],
)
def test_csv_epoch_times_are_read_in_the_unit_their_magnitude_tells(tmp_path: Path, unit: str, values: list):
    path = tmp_path / "spy.csv"
    path.write_text("time,open,high,low,close,volume\n" + "".join(f"{v},1,2,0.5,1.5,10\n" for v in values))
    bars = read_csv_bars(path)
    assert bars["timestamp"].to_list() == [datetime(2024, 1, 2, 15, tzinfo=UTC), datetime(2024, 1, 2, 16, tzinfo=UTC)]


def test_a_csv_source_build_reads_epoch_nanoseconds(tmp_path: Path):
    from ploutos.data.build import build_dataset
    from ploutos.data.store import read_dataset

    path = tmp_path / "SPY.csv"
    rows = "".join(f"{(EPOCH_START + 3600 * i) * 10**9},1,2,0.5,1.5,10\n" for i in range(5))
    path.write_text("time,open,high,low,close,volume\n" + rows)
    cfg = _data(
        "data.source=csv", f"data.csv_path={path}", "data.tickers=[SPY]", "data.session=24x7",
        f"data.store={tmp_path / 'store'}", "data.start=2024-01-01", "data.end=2025-01-01",
    )  # fmt: skip
    build_dataset(cfg, progress=False)
    assert read_dataset(cfg.store)["timestamp"][0] == datetime(2024, 1, 2, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("rows", "fragments"),
    [
        ([EPOCH_START, EPOCH_START * 1000], ["bad.csv", "line 3", "[timestamp]", "reads as ms", "as s", "one unit"]),
        (["nan", EPOCH_START + 0.5], ["bad.csv", "line 2", "[timestamp]", "'nan'"]),
        ([EPOCH_START, 99_999_999_999], ["bad.csv", "line 3", "[timestamp]", "outside the years 1900..2199"]),
        ([-3_000_000_000, -2_999_996_400], ["bad.csv", "line 2", "1874", "outside the years"]),
    ],
)
def test_csv_epoch_times_that_are_no_bar_time_are_refused(tmp_path: Path, rows: list, fragments: list[str]):
    path = tmp_path / "bad.csv"
    path.write_text("time,open,high,low,close,volume\n" + "".join(f"{v},1,2,0.5,1.5,10\n" for v in rows))
    with pytest.raises(DataError) as caught:
        read_csv_bars(path)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize(
    ("row", "fragments"),
    [
        ("9999-12-31 23:00:00", ["bad.csv", "line 3", "[timestamp]", "+10000-01-01T04:00:00Z", "outside the years"]),
        ("1800-01-01 00:00:00", ["bad.csv", "line 3", "[timestamp]", "1800-01-01", "outside the years"]),
    ],
)
def test_csv_rows_outside_the_supported_years_are_refused_by_row(tmp_path: Path, row: str, fragments: list[str]):
    path = tmp_path / "bad.csv"
    path.write_text(f"time,open,high,low,close,volume\n2024-01-02 15:00:00,1,2,0.5,1.5,10\n{row},1,2,0.5,1.5,10\n")
    with pytest.raises(DataError) as caught:
        read_csv_bars(path, timezone="America/New_York")
    for fragment in fragments:
        assert fragment in str(caught.value), (fragment, str(caught.value))


@pytest.mark.parametrize("ticker", ["A" * 300, "SPY QQQ", "SPY;QQQ", "a\tb", "$$$"])
def test_csv_ticker_column_values_must_be_ticker_symbols(tmp_path: Path, ticker: str):
    path = tmp_path / "bad.csv"
    rows = ["2024-01-02T15:00:00Z,SPY,1,2,0.5,1.5,10", f'2024-01-02T16:00:00Z,"{ticker}",1,2,0.5,1.5,10']
    path.write_text("time,ticker,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError) as caught:
        read_csv_bars(path)
    message = str(caught.value)
    assert "bad.csv" in message and "line 3" in message and "not a ticker symbol" in message, message
    assert "\n" not in message


def test_csv_ticker_column_accepts_usual_symbols(tmp_path: Path):
    path = tmp_path / "universe.csv"
    symbols = ["BRK.B", "BRK/B", "^VIX", "EURUSD=X", "DX-Y.NYB"]
    rows = "".join(f"2024-01-02T15:00:00Z,{s},1,2,0.5,1.5,10\n" for s in symbols)
    path.write_text("time,ticker,open,high,low,close,volume\n" + rows)
    assert read_csv_bars(path)["ticker"].to_list() == symbols


def test_epoch_floats_that_are_no_time_are_refused_by_line():
    from ploutos.data.sources.csv import epoch_timestamps

    with pytest.raises(DataError, match=r"x\.csv line 3 \[timestamp\]: epoch time nan is not a time"):
        epoch_timestamps(pl.Series("timestamp", [float(EPOCH_START), float("nan")]), path="x.csv")
    with pytest.raises(DataError, match=r"line 3 \[timestamp\]: epoch time inf is not a time"):
        epoch_timestamps(pl.Series("timestamp", [float(EPOCH_START), float("inf")]), path="x.csv")
