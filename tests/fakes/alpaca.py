"""A fake Alpaca market data API (``GET /v2/stocks/bars``) serving deterministic hourly bars.

It answers the way Alpaca's v2 API does for the requests alpaca-py 0.44 sends:
``symbols``, ``timeframe=1Hour``, ``start``/``end`` as RFC 3339 (``end`` inclusive), ``limit``,
``feed``, ``adjustment`` and ``page_token``; the body is
``{"bars": {"SPY": [{"t", "o", "h", "l", "c", "v", "n", "vw"}, ...]}, "next_page_token": ...}``.
``page_size`` is small on purpose so that tests exercise pagination.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .server import FakeServer, Reply, Request

BARS_PATH = "/v2/stocks/bars"
FIRST_HOUR_UTC, LAST_HOUR_UTC = 13, 20
"""Bars exist on weekdays from 13:00 to 20:00 UTC (start times), like a US session plus a bit."""


def bar_times(start: datetime, end: datetime) -> list[datetime]:
    """The fake's bar start times ``t`` with ``start <= t <= end`` (Alpaca's end is inclusive)."""
    t = start.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
    if t < start:
        t += timedelta(hours=1)
    out = []
    while t <= end:
        if t.weekday() < 5 and FIRST_HOUR_UTC <= t.hour <= LAST_HOUR_UTC:
            out.append(t)
        t += timedelta(hours=1)
    return out


def bar_values(symbol: str, t: datetime) -> dict[str, float]:
    """Deterministic OHLCV for ``symbol`` at ``t``; every value is exact in JSON and float64."""
    k = int(t.timestamp()) // 3600
    base = 100.0 + (sum(map(ord, symbol)) % 50) + (k % 89) * 0.25
    return {"o": base, "h": base + 1.5, "l": base - 1.25, "c": base + 0.5, "v": float(1000 + k % 997)}


def raw_bar(symbol: str, t: datetime) -> dict:
    values = bar_values(symbol, t)
    return {"t": t.strftime("%Y-%m-%dT%H:%M:%SZ"), **values, "n": 42, "vw": values["c"]}


class FakeAlpaca(FakeServer):
    """Fake data API; ``api_key`` is the key it expects in ``APCA-API-KEY-ID`` (else 401)."""

    def __init__(self, *, api_key: str, page_size: int = 50) -> None:
        self.api_key = api_key
        self.page_size = page_size
        super().__init__(self._route)

    def bar_requests(self) -> list[Request]:
        return self.matching(lambda r: r.path == BARS_PATH)

    def _route(self, request: Request) -> Reply:
        if request.path != BARS_PATH:
            return Reply(404, {"code": 40410000, "message": "endpoint not found"})
        if request.headers.get("APCA-API-KEY-ID") != self.api_key or not request.headers.get("APCA-API-SECRET-KEY"):
            return Reply(401, {"code": 40110000, "message": "request is not authorized"})
        q = request.query
        if q.get("timeframe") != "1Hour":
            return Reply(422, {"code": 42210000, "message": f"unsupported timeframe {q.get('timeframe')}"})
        start = datetime.fromisoformat(q["start"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(q["end"].replace("Z", "+00:00"))
        offset = int(q.get("page_token") or 0)
        size = min(int(q.get("limit") or 10_000), self.page_size)
        bars: dict[str, list[dict]] = {}
        token = None
        for symbol in q["symbols"].split(","):
            times = bar_times(start, end)
            page = times[offset : offset + size]
            if page:
                bars[symbol] = [raw_bar(symbol, t) for t in page]
            if offset + size < len(times):
                token = str(offset + size)
        return Reply(200, {"bars": bars, "next_page_token": token})
