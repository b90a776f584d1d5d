"""Hourly bars from Alpaca's market data API through the official alpaca-py client.

Why it is built this way:

* **One retry loop, ours.** alpaca-py's ``RESTClient._request`` retries 429/504 itself, three times
  with a fixed 3 s wait, and the data client does not let us configure that. Around our own
  exponential backoff that would compound to minutes of waiting, so the client's loop is switched
  off (:func:`_disable_builtin_retry`) and :func:`ploutos.data.sources.retry.retry_call` owns every
  wait: ``cfg.max_retries`` attempts, jittered waits under a ``cfg.retry_backoff_s`` doubling
  ceiling, on 429, 5xx and dropped connections (see that module for the deadline).
* **Chunks of about a year.** Each request covers at most :data:`CHUNK` so that a failure late in a
  five-year download repeats one chunk, not everything, and the progress bar moves. Inside a chunk
  alpaca-py follows ``next_page_token`` itself.
* **Keys from the environment, read in ``fetch``.** They live only in a local variable and the
  client; they are masked out of every message and never stored on the source.
* Alpaca's ``end`` is inclusive; bars are filtered to ``timestamp < end`` per chunk so that chunks
  do not overlap and the result honours the ``[start, end)`` contract.
"""

from __future__ import annotations

import functools
import os
import threading
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import polars as pl
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.enums import Adjustment, DataFeed
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame

from ploutos.config.sections import DataConfig
from ploutos.data.bars import canonical, empty_bars, to_utc, utc_datetime
from ploutos.data.sources.base import BarSource
from ploutos.data.sources.retry import Transient, one_line, retry_call, scrub
from ploutos.errors import DataError, SourceError, first_line
from ploutos.progress import progress_bar

if TYPE_CHECKING:
    import pandas as pd

KEY_VAR = "ALPACA_API_KEY"
SECRET_VAR = "ALPACA_SECRET_KEY"
EARLIEST = datetime(2016, 1, 1, tzinfo=timezone.utc)
"""Alpaca's stock history starts in 2016; an open start means from here."""
CHUNK = timedelta(days=365)
"""Span of one request; alpaca-py pages within it."""

_FATAL_HINTS = {
    401: f"check {KEY_VAR} and {SECRET_VAR}",
    403: f"check {KEY_VAR}/{SECRET_VAR} and that your plan covers the feed (sip needs a subscription; try iex)",
    404: "check the symbol and data.alpaca_url",
    422: "check the symbol, the dates and data.alpaca_feed / data.alpaca_adjustment",
}


class AlpacaSource(BarSource):
    """Hourly bars of one US stock or ETF from Alpaca (``data.source: alpaca``)."""

    name = "alpaca"

    def __init__(self, cfg: DataConfig, *, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress

    def __repr__(self) -> str:
        return f"AlpacaSource(feed={self.cfg.alpaca_feed!r}, adjustment={self.cfg.alpaca_adjustment!r})"

    def fetch(self, ticker: str, start: datetime | None, end: datetime | None) -> pl.DataFrame:
        """Bars of ``ticker`` with ``start <= timestamp < end``; raises :class:`SourceError` on failure."""
        key, secret = api_keys()
        client = _client(key, secret, self.cfg.alpaca_url, self.cfg.request_timeout_s)
        lo = utc_datetime(start) or EARLIEST
        hi = utc_datetime(end) or datetime.now(timezone.utc)
        if lo >= hi:
            raise SourceError(f"alpaca {ticker}: empty range {lo:%Y-%m-%d %H:%M} .. {hi:%Y-%m-%d %H:%M} UTC")
        windows = chunks(lo, hi, CHUNK)
        frames = []
        bar = progress_bar(total=len(windows), desc=f"alpaca {ticker}", unit="chunk", enabled=self.progress)
        with bar:
            for a, b in windows:
                what = f"alpaca {ticker} {a:%Y-%m-%d %H:%M}..{b:%Y-%m-%d %H:%M} UTC"
                frame = retry_call(
                    lambda a=a, b=b, what=what: self._fetch_chunk(client, ticker, a, b, what, (key, secret)),
                    attempts=self.cfg.max_retries,
                    backoff_s=self.cfg.retry_backoff_s,
                    what=what,
                    timeout_s=self.cfg.request_timeout_s,
                    secrets=(key, secret),
                )
                frames.append(frame)
                bar.update(1)
        bars = pl.concat(frames, how="vertical") if frames else empty_bars()
        if bars.is_empty():
            raise SourceError(
                f"alpaca {ticker}: no bars between {lo:%Y-%m-%d} and {hi:%Y-%m-%d} on feed "
                f"{self.cfg.alpaca_feed}; check the symbol and the date range"
            )
        return bars.unique(subset=["timestamp"], keep="first", maintain_order=True)

    def _fetch_chunk(
        self,
        client: StockHistoricalDataClient,
        ticker: str,
        a: datetime,
        b: datetime,
        what: str,
        secrets: tuple[str, str],
    ) -> pl.DataFrame:
        """One chunk as canonical bars; library failures become :class:`Transient` or :class:`SourceError`."""
        request = StockBarsRequest(
            symbol_or_symbols=ticker,
            timeframe=TimeFrame.Hour,
            start=a,
            end=b,
            feed=DataFeed(self.cfg.alpaca_feed),
            adjustment=Adjustment(self.cfg.alpaca_adjustment),
        )
        _PAGE_TOKENS.seen = set()
        try:
            barset = client.get_stock_bars(request)
        except APIError as err:
            raise _classify_api_error(err, what, secrets) from None
        except _PagingLoop as err:
            raise SourceError(f"{what}: {err}; its paging never ends (check data.alpaca_url)") from None
        except (requests.ConnectionError, requests.Timeout) as err:
            raise Transient(f"connection failed ({type(err).__name__})", hint="check the network") from None
        except requests.JSONDecodeError:
            raise SourceError(f"{what}: the answer is not JSON; check data.alpaca_url") from None
        except requests.RequestException as err:
            raise SourceError(f"{what}: request failed: {scrub(one_line(str(err)), secrets)}") from None
        except (ValueError, TypeError, AttributeError, KeyError, IndexError) as err:  # pydantic's are ValueErrors
            raise _malformed(what, err, secrets) from None
        try:
            frame = barset_to_bars(barset.df, ticker)
        except DataError as err:
            raise SourceError(f"{what}: Alpaca's bars are unusable: {scrub(str(err), secrets)}") from None
        except (ValueError, TypeError, AttributeError, KeyError, pl.exceptions.PolarsError) as err:
            raise _malformed(what, err, secrets) from None
        return frame.filter((pl.col("timestamp") >= a) & (pl.col("timestamp") < b))


def _malformed(what: str, err: Exception, secrets: tuple[str, str]) -> SourceError:
    """A :class:`SourceError` for an answer of the wrong shape: valid JSON, but not Alpaca's bars."""
    errors = getattr(err, "errors", None)  # pydantic's ValidationError (alpaca-py's models), without importing it
    problems = errors() if callable(errors) else None
    if problems and isinstance(problems[0], dict):
        field = ".".join(str(part) for part in problems[0].get("loc", ())) or "?"
        detail = f"bar field {field}: {problems[0].get('msg', 'invalid')} ({len(problems)} problem(s))"
    else:
        detail = f"{type(err).__name__}: {first_line(err)}"
    return SourceError(
        f"{what}: the answer does not have the shape of Alpaca's bars ({scrub(one_line(detail), secrets)}); "
        "check data.alpaca_url"
    )


def barset_to_bars(df: pd.DataFrame | None, ticker: str) -> pl.DataFrame:
    """alpaca-py's ``BarSet.df`` ((symbol, timestamp) MultiIndex, UTC) as canonical bars of ``ticker``."""
    if df is None or len(df) == 0:
        return empty_bars()
    flat = pl.from_pandas(df.reset_index())
    if "symbol" in flat.columns:
        others = sorted(set(flat["symbol"].cast(pl.String).drop_nulls()) - {ticker})
        if others:
            raise SourceError(f"alpaca {ticker}: the answer holds bars of {', '.join(others[:3])}, not only {ticker}")
    flat = flat.with_columns(pl.lit(ticker).alias("ticker"))
    return canonical(to_utc(flat, "timestamp"))


def chunks(start: datetime, end: datetime, size: timedelta) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` cut into consecutive half-open windows of at most ``size``."""
    out, a = [], start
    while a < end:
        b = min(a + size, end)
        out.append((a, b))
        a = b
    return out


def api_keys() -> tuple[str, str]:
    """The API key and secret from the environment; a :class:`SourceError` names what is missing."""
    key, secret = os.environ.get(KEY_VAR, "").strip(), os.environ.get(SECRET_VAR, "").strip()
    missing = [name for name, value in ((KEY_VAR, key), (SECRET_VAR, secret)) if not value]
    if missing:
        raise SourceError(
            f"alpaca: environment variable {' and '.join(missing)} is not set; export your Alpaca API keys"
        )
    return key, secret


def _client(key: str, secret: str, url: str | None, timeout_s: float) -> StockHistoricalDataClient:
    client = StockHistoricalDataClient(api_key=key, secret_key=secret, url_override=url or None)
    _disable_builtin_retry(client)
    _set_timeout(client, timeout_s)
    return client


class _PagingLoop(Exception):
    """The server repeated a page token: following it would never end."""


class _PageTokens(threading.local):
    """Page tokens already asked for in the current chunk (reset by each chunk)."""

    seen: set[str]

    def __init__(self) -> None:
        self.seen = set()


_PAGE_TOKENS = _PageTokens()


def _set_timeout(client: StockHistoricalDataClient, timeout_s: float) -> None:
    """Give every request a timeout: alpaca-py sets none, so a server that stalls would hang the build.

    The same wrapper refuses a ``next_page_token`` the server already sent in this chunk: alpaca-py
    follows page tokens until there is none, so a server repeating one would loop forever.
    """
    session = getattr(client, "_session", None)
    if session is None:
        raise SourceError("alpaca: this alpaca-py version has no _session; pin alpaca-py < 1 (tested with 0.44)")
    send = functools.partial(session.request, timeout=timeout_s)

    def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        token = (kwargs.get("params") or {}).get("page_token")
        if token is not None:
            if token in _PAGE_TOKENS.seen:
                raise _PagingLoop(f"the server sent next_page_token {one_line(str(token), 40)!r} twice")
            _PAGE_TOKENS.seen.add(token)
        return send(method, url, *args, **kwargs)

    session.request = request


def _disable_builtin_retry(client: StockHistoricalDataClient) -> None:
    """Turn off alpaca-py's fixed-wait 429/504 retry so that only our backoff waits.

    ``RESTClient`` keeps the retry count in ``_retry`` (0 means: raise on the first error) and the data
    client has no constructor argument for it. Should a future alpaca-py rename it, we fail loudly
    here rather than silently compounding waits.
    """
    if not hasattr(client, "_retry") or not hasattr(client, "_retry_codes"):
        raise SourceError("alpaca: this alpaca-py version has no _retry setting; pin alpaca-py < 1 (tested with 0.44)")
    client._retry = 0
    client._retry_codes = []


def _classify_api_error(err: APIError, what: str, secrets: tuple[str, str]) -> Exception:
    """A :class:`Transient` for 429/5xx, else a one-line :class:`SourceError` with what to do."""
    status = err.status_code
    detail = scrub(one_line(_api_message(err)), secrets)
    if status == 429:
        return Transient("HTTP 429 rate limited", hint="wait a minute; Alpaca allows 200 requests/min on the free plan")
    if status is not None and status >= 500:
        return Transient(f"HTTP {status} server error", hint="Alpaca is having trouble; try again later")
    hint = _FATAL_HINTS.get(status or 0, "check the request")
    return SourceError(f"{what}: HTTP {status}: {detail}; {hint}")


def _api_message(err: APIError) -> str:
    try:
        return str(err.message)
    except Exception:  # the body was not Alpaca's JSON error shape
        return str(err)
