"""A fake Yahoo Finance chart API serving deterministic bars in the v8 chart JSON format.

It answers what yfinance 1.7 asks for when its hosts are rewritten to this server:
``/v8/finance/chart/<SYMBOL>`` (``period1``/``period2`` or ``range``, ``interval`` 1h or 1d), the
cookie request to ``fc.yahoo.com`` (``/``) and the crumb (``/v1/test/getcrumb``). Bodies follow
Yahoo's shape: ``chart.result[0]`` with ``meta`` (``exchangeTimezoneName``, ``gmtoffset``,
``tradingPeriods`` for intraday, ...), ``timestamp`` (UTC epoch seconds of bar starts) and
``indicators.quote`` / ``indicators.adjclose``. Unknown symbols get Yahoo's 404 chart error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from .server import FakeServer, Reply, Request

CHART_PREFIX = "/v8/finance/chart/"


@dataclass(frozen=True)
class Listing:
    tz: str
    open: time
    close: time
    instrument: str = "ETF"


LISTINGS = {
    "SPY": Listing("America/New_York", time(9, 30), time(16, 0)),
    "^VIX": Listing("America/Chicago", time(8, 30), time(15, 15), "INDEX"),
    "^TNX": Listing("America/Chicago", time(7, 0), time(14, 0), "INDEX"),
    "^AXJO": Listing("Australia/Sydney", time(10, 0), time(16, 0), "INDEX"),  # opens the UTC day before
}


def hourly_bars(symbol: str, start: datetime, end: datetime) -> list[datetime]:
    """UTC start times of the fake's 1h bars in ``[start, end)``: on the half hour, within the session."""
    listing, out = LISTINGS[symbol], []
    for day in _weekdays(start, end):
        zone = ZoneInfo(listing.tz)
        t = datetime.combine(day, listing.open, zone)
        close = datetime.combine(day, listing.close, zone)
        while t < close:
            if start <= t < end:
                out.append(t.astimezone(timezone.utc))
            t += timedelta(hours=1)
    return out


def daily_bars(symbol: str, start: datetime, end: datetime) -> list[datetime]:
    """UTC times of the fake's daily bars (stamped at the session open, as Yahoo does) in ``[start, end)``."""
    listing = LISTINGS[symbol]
    times = [datetime.combine(d, listing.open, ZoneInfo(listing.tz)) for d in _weekdays(start, end)]
    return [t.astimezone(timezone.utc) for t in times if start <= t < end]


def price(symbol: str, t: datetime) -> float:
    """Deterministic price, exact in JSON and float64."""
    k = int(t.timestamp()) // 1800
    return 50.0 + (sum(map(ord, symbol)) % 40) + (k % 83) * 0.125


def ohlcv(symbol: str, t: datetime) -> dict[str, float]:
    p = price(symbol, t)
    return {"open": p, "high": p + 0.5, "low": p - 0.25, "close": p + 0.125, "volume": float(int(t.timestamp()) % 9973)}


def _weekdays(start: datetime, end: datetime) -> list[date]:
    day, out = (start - timedelta(days=1)).date(), []
    while day <= (end + timedelta(days=1)).date():
        if day.weekday() < 5:
            out.append(day)
        day += timedelta(days=1)
    return out


class FakeYahoo(FakeServer):
    """Fake Yahoo endpoints; ``fake.url`` goes into ``DataConfig.yahoo_url``."""

    def __init__(self) -> None:
        super().__init__(self._route)

    def chart_requests(self, *, data_only: bool = True) -> list[Request]:
        """Chart requests; ``data_only`` leaves out yfinance's timezone look-ups (``range=1d``)."""
        return self.matching(lambda r: r.path.startswith(CHART_PREFIX) and not (data_only and "range" in r.query))

    def _route(self, request: Request) -> Reply:
        if request.path == "/v1/test/getcrumb":
            return Reply(200, "fake-crumb")
        if request.path == "/":
            return Reply(200, "<html>cookie</html>", {"Content-Type": "text/html"})
        if not request.path.startswith(CHART_PREFIX):
            return Reply(404, "not found")
        symbol = request.path[len(CHART_PREFIX) :]
        if symbol not in LISTINGS:
            error = {"code": "Not Found", "description": "No data found, symbol may be delisted"}
            return Reply(404, {"chart": {"result": None, "error": error}})
        return Reply(200, {"chart": {"result": [self._result(symbol, request.query)], "error": None}})

    def _result(self, symbol: str, q: dict[str, str]) -> dict:
        interval = q.get("interval", "1d")
        if "period1" in q:
            start = datetime.fromtimestamp(int(q["period1"]), timezone.utc)
            end = datetime.fromtimestamp(int(q["period2"]), timezone.utc)
        else:  # range=1d: the timezone look-up
            end = datetime(2024, 3, 9, tzinfo=timezone.utc)
            start = end - timedelta(days=5)
        times = hourly_bars(symbol, start, end) if interval == "1h" else daily_bars(symbol, start, end)
        result: dict = {"meta": self._meta(symbol, interval, start, end)}
        if not times:
            result["indicators"] = {"quote": [{}]}
            return result
        rows = [ohlcv(symbol, t) for t in times]
        result["timestamp"] = [int(t.timestamp()) for t in times]
        result["indicators"] = {
            "quote": [{k: [r[k] for r in rows] for k in ("open", "high", "low", "close", "volume")}]
        }
        if interval == "1d":
            result["indicators"]["adjclose"] = [{"adjclose": [r["close"] for r in rows]}]
        return result

    def _meta(self, symbol: str, interval: str, start: datetime, end: datetime) -> dict:
        listing = LISTINGS[symbol]
        zone = ZoneInfo(listing.tz)
        offset = int(end.astimezone(zone).utcoffset().total_seconds())
        meta = {
            "currency": "USD",
            "symbol": symbol,
            "exchangeName": "PCX",
            "instrumentType": listing.instrument,
            "firstTradeDate": 728317800,
            "regularMarketTime": int(end.timestamp()),
            "gmtoffset": offset,
            "timezone": end.astimezone(zone).tzname(),
            "exchangeTimezoneName": listing.tz,
            "regularMarketPrice": 100.0,
            "chartPreviousClose": 99.0,
            "priceHint": 2,
            "dataGranularity": interval,
            "validRanges": ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"],
        }
        if interval.endswith(("m", "h")):
            meta["tradingPeriods"] = [[self._period(listing, zone, day)] for day in _weekdays(start, end)]
        return meta

    @staticmethod
    def _period(listing: Listing, zone: ZoneInfo, day: date) -> dict:
        opens, closes = datetime.combine(day, listing.open, zone), datetime.combine(day, listing.close, zone)
        return {
            "timezone": opens.tzname(),
            "start": int(opens.timestamp()),
            "end": int(closes.timestamp()),
            "gmtoffset": int(opens.utcoffset().total_seconds()),
        }


def isolate_yfinance_caches(directory: str) -> None:
    """Point yfinance's on-disk timezone and cookie caches at ``directory`` (not the user's cache)."""
    import yfinance as yf

    yf.set_tz_cache_location(directory)
