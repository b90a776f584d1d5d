"""AlpacaSource: the REAL alpaca-py ``StockHistoricalDataClient`` against a local fake server.

Nothing is mocked inside alpaca-py: the client sends real HTTP requests to a fake Alpaca data API
on 127.0.0.1 (``tests/fakes/alpaca.py``), which serves deterministic hourly bars in Alpaca's v2 JSON
shape, pages them with ``next_page_token`` and can be scripted to fail (429, 5xx, 403, dropped
connections). Backoff values are a few hundredths of a second so the tests stay fast.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime, timezone

import polars as pl
import pytest

from conftest import assert_one_line_error
from fakes.alpaca import FakeAlpaca, bar_times, bar_values
from fakes.server import DROP, STALL, STALL_SECONDS, Reply
from ploutos.config.sections import DataConfig
from ploutos.data.bars import BAR_SCHEMA
from ploutos.data.sources.alpaca import CHUNK, AlpacaSource, chunks
from ploutos.errors import SourceError

KEY, SECRET = "PKTESTKEY123", "s3cr3t-do-not-leak-9f8e7d"
START = datetime(2024, 3, 4, tzinfo=timezone.utc)  # a Monday
END = datetime(2024, 3, 9, tzinfo=timezone.utc)


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPACA_API_KEY", KEY)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)


@pytest.fixture
def fake(keys: None):
    with FakeAlpaca(api_key=KEY, page_size=7) as server:
        yield server


def source(fake: FakeAlpaca, **overrides: object) -> AlpacaSource:
    cfg = replace(DataConfig(), alpaca_url=fake.url, max_retries=4, retry_backoff_s=0.02, **overrides)
    return AlpacaSource(cfg, progress=False)


def expected(symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
    times = [t for t in bar_times(start, end) if t < end]
    rows = [{"timestamp": t, "ticker": symbol, **bar_values(symbol, t)} for t in times]
    frame = pl.DataFrame(rows).rename({"o": "open", "h": "high", "l": "low", "c": "close", "v": "volume"})
    return frame.select(pl.col(name).cast(dtype) for name, dtype in BAR_SCHEMA.items())


def test_bars_round_trip_exactly_in_utc_with_canonical_dtypes(fake: FakeAlpaca) -> None:
    bars = source(fake).fetch("SPY", START, END)
    assert bars.schema == pl.Schema(BAR_SCHEMA)
    assert bars.sort("timestamp").equals(expected("SPY", START, END))
    assert bars["timestamp"].min() == datetime(2024, 3, 4, 13, tzinfo=timezone.utc)
    request = fake.bar_requests()[0]
    assert request.query["timeframe"] == "1Hour"
    assert request.query["feed"] == "iex" and request.query["adjustment"] == "all"
    assert request.headers["APCA-API-KEY-ID"] == KEY


def test_feed_and_adjustment_come_from_the_config(fake: FakeAlpaca) -> None:
    source(fake, alpaca_feed="sip", alpaca_adjustment="raw").fetch("QQQ", START, END)
    assert {(r.query["feed"], r.query["adjustment"]) for r in fake.bar_requests()} == {("sip", "raw")}


def test_pagination_follows_next_page_token(fake: FakeAlpaca) -> None:
    bars = source(fake).fetch("SPY", START, END)
    assert bars.height == 5 * 8  # 5 weekdays x 8 hourly bars, in pages of 7
    tokens = [r.query.get("page_token") for r in fake.bar_requests()]
    assert tokens[0] is None and tokens[1:] == [str(7 * i) for i in range(1, len(tokens))]


def test_end_is_exclusive_and_long_ranges_are_chunked(fake: FakeAlpaca) -> None:
    fake.page_size = 10_000
    start, end = datetime(2023, 1, 2, tzinfo=timezone.utc), datetime(2024, 3, 5, 13, tzinfo=timezone.utc)
    bars = source(fake).fetch("SPY", start, end)
    assert bars["timestamp"].max() < end
    assert bars["timestamp"].is_unique().all()
    assert bars.sort("timestamp").equals(expected("SPY", start, end))
    assert len({r.query["start"] for r in fake.bar_requests()}) == len(chunks(start, end, CHUNK)) == 2


def test_429_is_retried_with_our_backoff_only(fake: FakeAlpaca, caplog: pytest.LogCaptureFixture) -> None:
    fake.fail([429, 429])
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="ploutos.data.sources.retry"):
        bars = source(fake).fetch("SPY", START, END)
    elapsed = time.monotonic() - began
    assert bars.height == 40
    assert len(fake.bar_requests()) >= 3
    waits = [float(m.rsplit(" in ", 1)[1].rstrip("s")) for m in caplog.messages if "retry" in m]
    assert len(waits) == 2  # full jitter: each wait is drawn under a doubling ceiling (0.02 s, 0.04 s)
    assert 0 <= waits[0] <= 0.02 + 1e-9 and 0 <= waits[1] <= 0.04 + 1e-9
    assert elapsed < 2.0  # alpaca-py's own fixed 3 s retry wait did not kick in


def test_dropped_connection_is_retried(fake: FakeAlpaca) -> None:
    fake.fail([DROP])
    assert source(fake).fetch("SPY", START, END).height == 40


def test_a_stalled_server_times_out_and_is_retried(fake: FakeAlpaca) -> None:
    fake.fail([STALL])
    started = time.monotonic()
    assert source(fake, request_timeout_s=0.3).fetch("SPY", START, END).height == 40
    assert time.monotonic() - started < STALL_SECONDS  # the timeout, not the stall, ended the first attempt


def test_5xx_exhausts_retries_into_one_line_source_error(fake: FakeAlpaca) -> None:
    fake.fail([500] * 10)
    with pytest.raises(SourceError) as err:
        source(fake).fetch("SPY", START, END)
    message = str(err.value)
    assert len(fake.bar_requests()) == 4
    assert "\n" not in message and "HTTP 500" in message and "SPY" in message and "4 attempt" in message


def test_403_fails_at_once_without_retry(fake: FakeAlpaca) -> None:
    fake.fail([403])
    with pytest.raises(SourceError, match=r"HTTP 403.*feed") as err:
        source(fake).fetch("SPY", START, END)
    assert len(fake.bar_requests()) == 1
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("missing", ["ALPACA_API_KEY", "ALPACA_SECRET_KEY"])
def test_missing_key_names_the_variable(fake: FakeAlpaca, monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.delenv(missing)
    with pytest.raises(SourceError, match=missing) as err:
        source(fake).fetch("SPY", START, END)
    assert "\n" not in str(err.value)
    assert fake.requests == []


def test_constructor_does_no_io_and_reads_no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALPACA_API_KEY", raising=False)
    AlpacaSource(DataConfig(alpaca_url="http://127.0.0.1:9"), progress=False)


def test_empty_response_names_the_ticker(fake: FakeAlpaca) -> None:
    saturday = datetime(2024, 3, 9, tzinfo=timezone.utc)
    with pytest.raises(SourceError, match="no bars.*NOPE|NOPE.*no bars"):
        source(fake).fetch("NOPE", saturday, datetime(2024, 3, 10, tzinfo=timezone.utc))


def test_secret_never_appears_in_errors_logs_or_repr(
    fake: FakeAlpaca, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    leaky = f"bad key {KEY} with secret {SECRET}"
    texts = []
    for status in (403, 500):
        fake.route = lambda request, status=status: _reply(status, leaky)
        with pytest.raises(SourceError) as err:
            source(fake).fetch("SPY", START, END)
        texts.append(str(err.value))
    texts += [repr(source(fake)), caplog.text]
    for text in texts:
        assert SECRET not in text and KEY not in text


def _reply(status: int, message: str) -> Reply:
    return Reply(status, {"code": status, "message": message})


# --- answers of the wrong shape: a SourceError naming source, ticker and what was wrong -----------


def _malformed(fake: FakeAlpaca, body: bytes | str | dict | list) -> None:
    """From now on the fake answers every bar request 200 with ``body``."""
    fake.route = lambda request: Reply(200, body, {"Content-Type": "application/json"})


def _bar(**changes: object) -> dict:
    return {"t": "2024-03-04T13:00:00Z", "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 1.0, "n": 1, "vw": 1.0, **changes}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json at all", "the answer is not JSON"),
        ("<html>proxy error</html>", "the answer is not JSON"),
        ([], "does not have the shape of Alpaca's bars"),
        ({"nothing": 1}, "does not have the shape of Alpaca's bars"),
        ({"bars": []}, "does not have the shape of Alpaca's bars (AttributeError"),
        ({"bars": None}, "does not have the shape of Alpaca's bars"),
        ({"bars": {"SPY": {"t": 1}}}, "does not have the shape of Alpaca's bars"),
        ({"bars": {"SPY": [1, 2]}}, "does not have the shape of Alpaca's bars"),
        ({"bars": {"SPY": [{"x": 1}]}}, "bar field timestamp: Field required"),
        ({"bars": {"SPY": [_bar(o="abc")]}}, "bar field open: Input should be a valid number"),
        ({"bars": {"SPY": [_bar(t="9999-03-04T13:00:00Z")]}}, "outside the years 1900..2199"),
        ({"bars": {"QQQ": [_bar()]}}, "the answer holds bars of QQQ, not only SPY"),
        ({"bars": {"SPY": [_bar()]}, "next_page_token": "again"}, "next_page_token 'again' twice"),
    ],
)
def test_an_answer_of_the_wrong_shape_is_one_source_error(fake: FakeAlpaca, body, fragment: str) -> None:
    _malformed(fake, body)
    with pytest.raises(SourceError) as err:
        source(fake).fetch("SPY", START, END)
    message = str(err.value)
    assert "\n" not in message and message.startswith("alpaca SPY"), message
    assert fragment in message, (fragment, message)
    assert len(fake.bar_requests()) <= 2  # refused at once: a wrong shape is not retried, a paging loop is cut


def test_a_wrong_shape_through_the_cli_is_one_line(ploutos, fake: FakeAlpaca) -> None:
    _malformed(fake, {"bars": {"SPY": [{"x": 1}]}})
    result = ploutos(
        "data", "build", "--no-progress", "--set", "data.source=alpaca", "--set", f"data.alpaca_url={fake.url}",
        "--set", "data.tickers=[SPY]", "--set", "data.start=2024-03-04", "--set", "data.end=2024-12-09",
        "--set", "data.session=regular",
        env={"ALPACA_API_KEY": KEY, "ALPACA_SECRET_KEY": SECRET},
    )  # fmt: skip
    assert_one_line_error(result, "alpaca SPY", "bar field timestamp")
