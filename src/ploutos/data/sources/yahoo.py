"""Hourly bars and daily macro closes from Yahoo Finance through the real yfinance client.

Why it is built this way:

* **A session, not patched constants, redirects yfinance.** yfinance hardcodes its hosts
  (``query2.finance.yahoo.com`` for charts, ``fc.yahoo.com`` and ``/v1/test/getcrumb`` for its
  cookie and crumb, ``guce.yahoo.com`` for consent). When ``cfg.yahoo_url`` is set we hand yfinance
  a session (:class:`_CurlSession` or :class:`_RequestsSession`, the same backends yfinance itself
  uses) that rewrites every ``*.yahoo.com`` URL onto that base, so a proxy or a local fake server
  sees all of yfinance's traffic and nothing leaks to the internet.
* **The session also observes.** yfinance turns HTTP failures into empty frames or its own
  exceptions; the session records the status of every chart request and any dropped connection,
  so we can tell "429/5xx, worth a retry" from "unknown symbol" and raise a precise
  :class:`SourceError`.
* **One retry loop, ours.** yfinance re-sends a failed request once, at once, with a fresh crumb,
  and its network retries are off by default (``YfConfig.network.retries = 0``), so nothing
  compounds with our jittered exponential backoff. yfinance caches responses to past ranges in-process,
  failed ones included; the cache is cleared before every attempt so that a retry really asks again.
* **The 730-day limit is checked before any request.** Yahoo serves 1h bars only for the last 730
  days; an older start is refused with a clear error instead of being silently truncated.
* Prices are split- and dividend-adjusted (``auto_adjust=True``); macro closes are raw.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import polars as pl
import requests
import yfinance as yf
from yfinance import _http as yf_http
from yfinance.config import YfConfig
from yfinance.data import YfData
from yfinance.exceptions import YFRateLimitError, YFTickerMissingError

from ploutos.config.sections import DataConfig
from ploutos.data.bars import canonical, to_utc, utc_datetime
from ploutos.data.sources.base import BarSource
from ploutos.data.sources.retry import Transient, one_line, retry_call
from ploutos.errors import DataError, SourceError

HOURLY_LIMIT = timedelta(days=730)
"""How far back Yahoo serves 1h bars."""
_MARGIN = timedelta(hours=1)
"""An open start asks for a little less than the limit, so the request cannot race Yahoo's clock."""
_CHART_PATH = "/v8/finance/chart/"
_LOCK = threading.RLock()
"""yfinance keeps one global session and config; our calls into it take turns."""


class YahooSource(BarSource):
    """Hourly bars of one symbol from Yahoo (``data.source: yahoo``), only for the last 730 days."""

    name = "yahoo"

    def __init__(self, cfg: DataConfig, *, progress: bool = True, now: Callable[[], datetime] | None = None) -> None:
        self.cfg = cfg
        self.progress = progress  # one request per ticker: nothing to show a bar for
        self.now = now or (lambda: datetime.now(timezone.utc))

    def __repr__(self) -> str:
        return f"YahooSource(url={self.cfg.yahoo_url or 'yahoo'!r})"

    def fetch(self, ticker: str, start: datetime | None, end: datetime | None) -> pl.DataFrame:
        """Bars of ``ticker`` with ``start <= timestamp < end``; raises :class:`SourceError` on failure."""
        lo, hi = self.window(ticker, start, end)
        what = f"yahoo {ticker} 1h {lo:%Y-%m-%d %H:%M}..{hi:%Y-%m-%d %H:%M} UTC"
        frame = _history(
            self.cfg, ticker, what, interval="1h", start=lo, end=hi, auto_adjust=True, prepost=self._prepost()
        )
        try:
            bars = _to_bars(frame, ticker)
        except DataError as err:
            raise SourceError(f"{what}: Yahoo's bars are unusable: {err}") from None
        except (KeyError, IndexError, TypeError, ValueError, pl.exceptions.PolarsError) as err:
            raise SourceError(f"{what}: the answer does not have the shape of a Yahoo chart ({_brief(err)})") from None
        return bars.filter((pl.col("timestamp") >= lo) & (pl.col("timestamp") < hi))

    def window(self, ticker: str, start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
        """The UTC ``[start, end)`` to request; a start beyond Yahoo's 730-day limit is a :class:`SourceError`."""
        now = utc_datetime(self.now())
        oldest = now - HOURLY_LIMIT
        lo = utc_datetime(start) or oldest + _MARGIN
        hi = min(utc_datetime(end) or now, now)
        if lo < oldest:
            raise SourceError(
                f"yahoo {ticker}: Yahoo serves 1h bars only for the last 730 days, but data.start is "
                f"{lo:%Y-%m-%d}, before {oldest:%Y-%m-%d}; move data.start later or use source alpaca or csv"
            )
        if lo >= hi:
            raise SourceError(f"yahoo {ticker}: empty range {lo:%Y-%m-%d %H:%M} .. {hi:%Y-%m-%d %H:%M} UTC")
        return lo, hi

    def _prepost(self) -> bool:
        return self.cfg.session != "regular"


def fetch_daily_closes(symbol: str, start: datetime | None, end: datetime | None, *, cfg: DataConfig) -> pl.DataFrame:
    """Daily closes of a macro series (``^VIX``, ``^TNX``, ``DX-Y.NYB``): columns ``date``, ``close``.

    ``date`` is the exchange-local trading date (``pl.Date``) of each close, sorted and unique, in
    ``[start, end)``; turning it into a publication time is the caller's job. Closes are raw
    (not adjusted): they are what was published that day.
    """
    lo, hi = utc_datetime(start), utc_datetime(end)
    what = f"yahoo {symbol} 1d {_day(lo, 'earliest')}..{_day(hi, 'now')}"
    frame = _history(cfg, symbol, what, interval="1d", start=lo, end=hi, auto_adjust=False, prepost=False)
    try:
        flat = pl.from_pandas(frame.reset_index())
        # the index is midnight in the exchange's timezone; .dt.date() reads the date in that timezone
        closes = flat.select(
            pl.col(flat.columns[0]).dt.date().alias("date"), pl.col("Close").cast(pl.Float64).alias("close")
        )
    except (KeyError, IndexError, TypeError, ValueError, pl.exceptions.PolarsError) as err:
        raise SourceError(f"{what}: the answer does not have the shape of a Yahoo chart ({_brief(err)})") from None
    return closes.drop_nulls().filter(pl.col("close").is_not_nan()).unique("date", keep="last").sort("date")


def _brief(err: Exception) -> str:
    return f"{type(err).__name__}: {one_line(str(err), 120)}"


def _day(value: datetime | None, default: str) -> str:
    return f"{value:%Y-%m-%d}" if value is not None else default


def _history(cfg: DataConfig, symbol: str, what: str, **kwargs: Any) -> pd.DataFrame:
    """``yf.Ticker(symbol).history(**kwargs)`` with our retries; a non-empty frame or a :class:`SourceError`."""
    session = make_session(cfg.yahoo_url)
    kwargs["timeout"] = cfg.request_timeout_s
    if kwargs.get("start") is None:
        kwargs.pop("start", None)
        kwargs["period"] = "max"
    return retry_call(
        lambda: _attempt(session, symbol, what, kwargs),
        attempts=cfg.max_retries,
        backoff_s=cfg.retry_backoff_s,
        what=what,
        timeout_s=cfg.request_timeout_s,
    )


def _attempt(session: _Observing, symbol: str, what: str, kwargs: dict[str, Any]) -> pd.DataFrame:
    """One try; yfinance's failures become :class:`Transient` or :class:`SourceError` by what the session saw."""
    session.seen.clear()
    try:
        with _yfinance(session):
            frame = yf.Ticker(symbol, session=session).history(**kwargs)
    except YFRateLimitError:
        raise Transient("HTTP 429 rate limited", hint="wait a few minutes; Yahoo limits request rates") from None
    except Exception as err:
        raise _classify(session, symbol, what, err) from None
    if frame is None or frame.empty:
        raise _classify(session, symbol, what, None)
    return frame


def _classify(session: _Observing, symbol: str, what: str, err: Exception | None) -> Exception:
    status = session.last_status()
    if status == 429:
        return Transient("HTTP 429 rate limited", hint="wait a few minutes; Yahoo limits request rates")
    if status is not None and status >= 500:
        return Transient(f"HTTP {status} server error", hint="Yahoo is having trouble; try again later")
    if session.dropped is not None:
        return Transient(f"connection failed ({session.dropped})", hint="check the network and data.yahoo_url")
    if session.malformed is not None:
        return SourceError(f"{what}: the answer is not a Yahoo chart ({session.malformed}); check data.yahoo_url")
    detail = f": {one_line(_reason(err))}" if err is not None else ""
    if status in (401, 403):
        return SourceError(f"{what}: HTTP {status}; Yahoo refused the request (blocked or rate limited), try later")
    if err is None or status == 404 or isinstance(err, YFTickerMissingError):
        return SourceError(f"{what}: no data for {symbol} (delisted or wrong symbol?){detail}")
    if status is not None and status < 400:  # a successful answer yfinance could not take apart
        return SourceError(
            f"{what}: the answer does not have the shape of a Yahoo chart ({type(err).__name__}{detail}); "
            "check data.yahoo_url"
        )
    prefix = f"HTTP {status}" if status and status >= 400 else type(err).__name__
    return SourceError(f"{what}: {prefix}{detail}")


def _reason(err: Exception | None) -> str:
    text = str(err).strip() if err is not None else ""
    return text.split(": ", 1)[-1] if text.startswith("$") else text or type(err).__name__


def _to_bars(frame: pd.DataFrame, ticker: str) -> pl.DataFrame:
    """yfinance's frame (tz-aware exchange-time index, any unit) as canonical UTC bars."""
    flat = pl.from_pandas(frame.reset_index())
    time_column = flat.columns[0]
    flat = flat.rename({time_column: "timestamp", **{c: c.lower() for c in ("Open", "High", "Low", "Close", "Volume")}})
    return canonical(to_utc(flat.with_columns(pl.lit(ticker).alias("ticker"))))


@contextmanager
def _yfinance(session: _Observing) -> Iterator[None]:
    """yfinance set up for one of our calls, and put back as it was afterwards.

    Exceptions are raised rather than logged-and-swallowed (we classify them), the response cache
    is emptied (it keeps failures), and the global session is ours for the duration.
    """
    with _LOCK:
        data = YfData()
        previous_session = getattr(data, "_session", None)
        previous_hide = YfConfig.debug.hide_exceptions
        YfConfig.debug.hide_exceptions = False
        YfData.cache_get.cache_clear()
        try:
            yield
        finally:
            YfConfig.debug.hide_exceptions = previous_hide
            if previous_session is not None and previous_session is not session:
                YfData(session=previous_session)


class _Observing:
    """Mixin for a yfinance-compatible session: rewrites Yahoo hosts, records chart statuses and drops."""

    base_url: str | None
    seen: list[int]
    dropped: str | None
    malformed: str | None

    def _observe_init(self, base_url: str | None) -> None:
        self.base_url = base_url.rstrip("/") if base_url else None
        self.seen = []
        self.dropped = None
        self.malformed = None

    def last_status(self) -> int | None:
        return self.seen[-1] if self.seen else None

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        url = self._rewrite(url)
        is_chart = _CHART_PATH in url
        if is_chart:
            self.dropped = None
            self.malformed = None
        try:
            response = super().request(method, url, *args, **kwargs)  # type: ignore[misc]
        except OSError as err:  # both backends' connection errors derive from OSError
            if is_chart:
                self.dropped = type(err).__name__
            raise
        if is_chart:
            self.seen.append(int(response.status_code))
            if 200 <= int(response.status_code) < 300:
                self.malformed = _chart_problem(response.content)
        return response

    def _rewrite(self, url: str) -> str:
        if not self.base_url:
            return url
        parts = urlsplit(url)
        if not (parts.hostname or "").endswith("yahoo.com"):
            return url
        return f"{self.base_url}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")


def _chart_problem(body: bytes) -> str | None:
    """What makes a successful chart answer unusable (not JSON, not ``{"chart": {"result": [...]}}``), or None."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return "not JSON"
    chart = data.get("chart") if isinstance(data, dict) else None
    if not isinstance(chart, dict):
        return "no chart object"
    result = chart.get("result")
    if result is None:
        return None if chart.get("error") else "chart.result is missing"
    if not isinstance(result, list) or not all(isinstance(item, dict) for item in result):
        return "chart.result is not a list of objects"
    for item in result:
        stamps = item.get("timestamp", [])
        if not isinstance(stamps, list) or not all(isinstance(t, (int, float)) for t in stamps):
            return "chart.result[].timestamp is not a list of epoch seconds"
        if stamps and not isinstance(item.get("indicators"), dict):
            return "chart.result[].indicators is missing"
    return None


class _RequestsSession(_Observing, requests.Session):
    def __init__(self, base_url: str | None) -> None:
        requests.Session.__init__(self)
        self.headers.update({"User-Agent": getattr(yf_http, "_FALLBACK_USER_AGENT", "Mozilla/5.0")})
        self._observe_init(base_url)


if yf_http.HAS_CURL_CFFI:
    from curl_cffi import requests as curl_requests  # yfinance's own HTTP backend, when it has one

    class _CurlSession(_Observing, curl_requests.Session):
        def __init__(self, base_url: str | None) -> None:
            curl_requests.Session.__init__(self, impersonate="chrome")
            self._observe_init(base_url)


def make_session(base_url: str | None) -> _Observing:
    """A session of the backend yfinance prefers (curl_cffi, else requests) that we can observe."""
    if yf_http.HAS_CURL_CFFI:
        return _CurlSession(base_url)
    return _RequestsSession(base_url)
