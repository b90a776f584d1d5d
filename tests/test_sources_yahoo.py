"""YahooSource and fetch_daily_closes: the REAL yfinance client against a local fake server.

yfinance runs unmodified; ``DataConfig.yahoo_url`` makes the source hand it a session that rewrites
every ``*.yahoo.com`` URL onto a fake Yahoo on 127.0.0.1 (``tests/fakes/yahoo.py``). The fake builds
v8 chart JSON responses (meta with exchangeTimezoneName/gmtoffset/tradingPeriods, timestamp list,
indicators.quote, adjclose) from deterministic data, answers yfinance's cookie and crumb requests,
and can be scripted to fail. No recorded responses, no internet; yfinance's on-disk caches are
pointed at a temporary directory.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import polars as pl
import pytest

from fakes.server import DROP, Reply, Request
from fakes.yahoo import FakeYahoo, daily_bars, hourly_bars, isolate_yfinance_caches, ohlcv
from ploutos.config.sections import DataConfig
from ploutos.data.bars import BAR_SCHEMA
from ploutos.data.sources.yahoo import YahooSource, fetch_daily_closes
from ploutos.errors import SourceError

NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)
START = datetime(2024, 3, 4, tzinfo=timezone.utc)  # a Monday; US DST starts on the 10th
END = datetime(2024, 3, 16, tzinfo=timezone.utc)


@pytest.fixture(scope="module", autouse=True)
def _yfinance_caches():
    with tempfile.TemporaryDirectory() as directory:
        isolate_yfinance_caches(directory)
        yield


@pytest.fixture
def fake():
    with FakeYahoo() as server:
        yield server


def config(fake: FakeYahoo) -> DataConfig:
    return replace(DataConfig(), yahoo_url=fake.url, max_retries=4, retry_backoff_s=0.02)


def source(fake: FakeYahoo) -> YahooSource:
    return YahooSource(config(fake), progress=False, now=lambda: NOW)


def expected(symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
    rows = [{"timestamp": t, "ticker": symbol, **ohlcv(symbol, t)} for t in hourly_bars(symbol, start, end)]
    return pl.DataFrame(rows).select(pl.col(name).cast(dtype) for name, dtype in BAR_SCHEMA.items())


def test_hourly_bars_round_trip_to_utc(fake: FakeYahoo) -> None:
    bars = source(fake).fetch("SPY", START, END)
    assert bars.schema == pl.Schema(BAR_SCHEMA)
    assert bars.sort("timestamp").equals(expected("SPY", START, END))
    # 09:30 New York is 14:30 UTC before the DST change and 13:30 UTC after it
    firsts = (
        bars.group_by(pl.col("timestamp").dt.date().alias("day")).agg(pl.col("timestamp").min())["timestamp"].sort()
    )
    assert firsts[0] == datetime(2024, 3, 4, 14, 30, tzinfo=timezone.utc)
    assert firsts[-1] == datetime(2024, 3, 15, 13, 30, tzinfo=timezone.utc)
    request = fake.chart_requests()[0]
    assert request.query["interval"] == "1h"
    assert int(request.query["period1"]) == int(START.timestamp())


def test_start_older_than_730_days_is_refused_before_any_request(fake: FakeYahoo) -> None:
    old = NOW - timedelta(days=731)
    with pytest.raises(SourceError, match="730 days") as err:
        source(fake).fetch("SPY", old, END)
    assert "\n" not in str(err.value) and "SPY" in str(err.value)
    assert fake.requests == []


def test_open_start_reaches_back_just_inside_the_limit(fake: FakeYahoo) -> None:
    lo, hi = source(fake).window("SPY", None, None)
    assert NOW - timedelta(days=730) < lo < NOW - timedelta(days=729) and hi == NOW


def test_5xx_is_retried_then_succeeds(fake: FakeYahoo) -> None:
    is_data = lambda r: r.path.startswith("/v8/finance/chart/") and "period1" in r.query  # noqa: E731
    fake.fail([503, 502, 500], when=is_data)  # yfinance re-asks once per attempt, so this takes two of ours
    bars = source(fake).fetch("SPY", START, END)
    assert bars.sort("timestamp").equals(expected("SPY", START, END))
    assert len(fake.chart_requests()) == 4


def test_dropped_connection_is_retried(fake: FakeYahoo) -> None:
    fake.fail([DROP], when=lambda r: "period1" in r.query)
    assert source(fake).fetch("SPY", START, END).height == expected("SPY", START, END).height


def test_5xx_exhausts_retries_into_one_line_source_error(fake: FakeYahoo) -> None:
    fake.fail([500] * 20, when=lambda r: "period1" in r.query)
    with pytest.raises(SourceError) as err:
        source(fake).fetch("SPY", START, END)
    message = str(err.value)
    assert "\n" not in message and "HTTP 500" in message and "SPY" in message and "4 attempt" in message


def test_429_is_retried(fake: FakeYahoo) -> None:
    fake.fail([429, 429], when=lambda r: "period1" in r.query)
    assert source(fake).fetch("SPY", START, END).height > 0


def test_unknown_symbol_is_a_source_error_naming_it(fake: FakeYahoo) -> None:
    with pytest.raises(SourceError, match="NOSUCH") as err:
        source(fake).fetch("NOSUCH", START, END)
    assert "no data" in str(err.value) and "\n" not in str(err.value)


def test_empty_range_is_a_source_error(fake: FakeYahoo) -> None:
    saturday = datetime(2024, 3, 9, tzinfo=timezone.utc)
    with pytest.raises(SourceError, match="SPY.*no data"):
        source(fake).fetch("SPY", saturday, saturday + timedelta(days=1))


def test_daily_closes_have_exchange_local_dates(fake: FakeYahoo) -> None:
    closes = fetch_daily_closes("^VIX", START, END, cfg=config(fake))
    assert closes.schema == pl.Schema({"date": pl.Date, "close": pl.Float64})
    times = daily_bars("^VIX", START, END)
    assert closes["date"].to_list() == [date(2024, 3, d) for d in (4, 5, 6, 7, 8, 11, 12, 13, 14, 15)]
    assert closes["close"].to_list() == [ohlcv("^VIX", t)["close"] for t in times]
    request = fake.chart_requests()[0]
    assert request.query["interval"] == "1d"


def test_daily_closes_without_start_ask_for_everything(fake: FakeYahoo) -> None:
    closes = fetch_daily_closes("^TNX", None, END, cfg=config(fake))
    assert closes.height > 0 and closes["date"].max() == date(2024, 3, 15)


def test_daily_dates_are_local_even_when_the_utc_date_differs(fake: FakeYahoo) -> None:
    closes = fetch_daily_closes("^AXJO", START, END, cfg=config(fake))
    first_stamp = daily_bars("^AXJO", START, END)[0]
    assert first_stamp == datetime(2024, 3, 4, 23, tzinfo=timezone.utc)  # 10:00 on the 5th in Sydney
    assert closes["date"][0] == date(2024, 3, 5)


# --- answers of the wrong shape: a SourceError naming source, ticker and what was wrong -----------


def _malformed(fake: FakeYahoo, body: bytes | str | dict | list) -> None:
    """From now on chart data requests (not yfinance's timezone look-ups) get 200 with ``body``."""
    route = fake.route

    def malformed(request: Request) -> Reply:
        if "period1" in request.query:
            return Reply(200, body, {"Content-Type": "application/json"})
        return route(request)

    fake.route = malformed


def _chart(**result: object) -> dict:
    return {"chart": {"result": [result], "error": None}}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"garbage", "the answer is not a Yahoo chart (not JSON)"),
        ("<html>consent</html>", "the answer is not a Yahoo chart (not JSON)"),
        ([], "the answer is not a Yahoo chart (no chart object)"),
        ({"chart": None}, "the answer is not a Yahoo chart (no chart object)"),
        ({"chart": {"result": [1]}}, "chart.result is not a list of objects"),
        ({"chart": {"error": None}}, "chart.result is missing"),
        (_chart(timestamp=["a", "b"]), "timestamp is not a list of epoch seconds"),
        (_chart(timestamp=[1709560800], meta={}), "chart.result[].indicators is missing"),
        (_chart(timestamp=[1709560800], indicators={"quote": [{"close": [1.0, 2.0]}]}), "does not have the shape"),
    ],
)
def test_an_answer_of_the_wrong_shape_is_one_source_error(fake: FakeYahoo, body, fragment: str) -> None:
    _malformed(fake, body)
    fetches = (
        lambda: source(fake).fetch("SPY", START, END),
        lambda: fetch_daily_closes("^VIX", START, END, cfg=config(fake)),
    )
    for fetch in fetches:
        with pytest.raises(SourceError) as err:
            fetch()
        message = str(err.value)
        assert "\n" not in message and message.startswith("yahoo "), message
        assert fragment in message and ("SPY" in message or "^VIX" in message), (fragment, message)
