"""Orders through alpaca-py's ``TradingClient``, sent at most once each.

Every order carries a deterministic ``client_order_id`` (:func:`client_order_id`), and the broker
never submits an order twice without first asking the server whether it already has it:

* a dropped connection, a timeout, a 429 or a 5xx may have happened after Alpaca accepted the
  order, so before each retry the order is looked up with ``get_order_by_client_id``; if it is
  there, that is the answer;
* a 422 ``client_order_id must be unique`` means an earlier attempt (or an earlier process) was
  accepted: the order is looked up and returned;
* any other 4xx (insufficient buying power, a bad symbol) is a rejection: reported once, never
  retried;
* a reply that is not what Alpaca sends (not JSON, JSON of the wrong shape) is never retried: for a
  read it is a :class:`BrokerError`; for an order the outcome is unknown (the server may have
  accepted it), so the order is looked up by its id and :class:`OrderUnknown` carries what is
  known, for the runner to journal before the error reaches the user.

A :class:`BrokerError` says whether waiting may help (:attr:`BrokerError.transient`: connection
failures, timeouts, 429 and 5xx after the retries) or not (bad keys, unusable replies).

As in :mod:`ploutos.data.sources.alpaca`, alpaca-py's own fixed-wait retry is switched off (our
backoff owns every wait: full jitter from :func:`ploutos.data.sources.retry.jittered_delays`, so
many processes do not retry in lockstep), every request has a timeout, and the keys live only in
the client: they are masked out of every message.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pydantic
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest

from ploutos.data.sources.retry import jittered_delays, one_line, scrub
from ploutos.errors import PloutosError
from ploutos.paper import risk
from ploutos.paper.state import FINAL

log = logging.getLogger(__name__)

DUPLICATE = "client_order_id must be unique"


_BAD_URL = (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema)
_DROPPED = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
_UNUSABLE = (ValueError, TypeError, AttributeError, KeyError, IndexError)
"""What parsing a reply that is not Alpaca's raises (requests' JSONDecodeError, pydantic's
ValidationError, ``Order(**None)``, our own conversions)."""


class BrokerError(PloutosError):
    """The broker could not be reached or answered something unusable (message free of secrets).

    ``transient``: waiting may help (the server was unreachable, timed out or said 429/5xx through
    every retry); ``--loop`` waits such errors out and stops on every other one.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class OrderUnknown(BrokerError):
    """An order that may or may not have been accepted; ``result`` is what is known about it.

    Its status is the server's when the lookup by client order id found the order, else
    ``unknown``. The runner journals it before the error goes on, so a restart never sends it again.
    """

    def __init__(self, message: str, result: OrderResult, *, transient: bool = False) -> None:
        super().__init__(message, transient=transient)
        self.result = result


def client_order_id(config_hash: str, bar: Any, ticker: str) -> str:
    """``ploutos-<hash[:8]>-<bar time YYYYmmddHH>-<ticker>``: the same order always gets the same id."""
    return f"ploutos-{config_hash[:8]}-{bar:%Y%m%d%H}-{ticker}"


@dataclass(frozen=True)
class Account:
    equity: float
    cash: float


@dataclass(frozen=True)
class Clock:
    is_open: bool
    next_open: str


@dataclass(frozen=True)
class OrderResult:
    """What the broker knows about one order."""

    client_order_id: str
    ticker: str
    qty: float
    """Signed: positive buys."""
    status: str
    """Alpaca's status (``new``, ``filled``, ``partially_filled``, ...) or ``rejected``."""
    filled_qty: float = 0.0
    """Signed like ``qty``."""
    filled_price: float | None = None
    reason: str = ""
    """Why it was rejected (one line, no secrets)."""

    @property
    def open_qty(self) -> float:
        """Signed quantity that may still fill."""
        return 0.0 if self.status in FINAL else self.qty - self.filled_qty

    def as_dict(self) -> dict[str, Any]:
        return {
            "ticker": self.ticker,
            "qty": self.qty,
            "status": self.status,
            "filled_qty": self.filled_qty,
            "filled_price": self.filled_price,
            "reason": self.reason,
        }


class AlpacaBroker:
    """The account, positions, clock and orders of one Alpaca (paper) account."""

    def __init__(
        self,
        key: str,
        secret: str,
        *,
        url: str | None,
        live: bool = False,
        attempts: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        risk.check_url("paper.trading_url", url, live=live, trading=True)  # also checked before keys are read
        self._secrets = (key, secret)
        self.client = TradingClient(api_key=key, secret_key=secret, paper=not live, url_override=url or None)
        if not hasattr(self.client, "_retry") or getattr(self.client, "_session", None) is None:
            raise BrokerError("alpaca: this alpaca-py version has no _retry/_session; pin alpaca-py < 1 (0.44 tested)")
        self.client._retry, self.client._retry_codes = 0, []
        self.client._session.request = functools.partial(self.client._session.request, timeout=timeout_s)
        self.attempts, self.backoff_s, self.sleep = max(int(attempts), 1), backoff_s, sleep

    # -- reads (retried: they have no side effects) -------------------------------------------

    def account(self) -> Account:
        return self._read(
            self.client.get_account,
            "account",
            lambda raw: Account(equity=_finite(raw.equity), cash=_finite(raw.cash)),
        )

    def positions(self) -> dict[str, float]:
        """Signed quantity per symbol."""
        return self._read(self.client.get_all_positions, "positions", _positions)

    def clock(self) -> Clock:
        return self._read(
            self.client.get_clock,
            "clock",
            lambda raw: Clock(is_open=_boolean(raw.is_open), next_open=f"{raw.next_open:%Y-%m-%d %H:%M %Z}"),
        )

    def lookup(self, coid: str, ticker: str, qty: float) -> OrderResult | None:
        """The order with this client id, or None when the server has none."""
        try:
            return self._read(
                lambda: self.client.get_order_by_client_id(coid),
                f"order {coid}",
                lambda order: _result(order, coid, ticker, qty),
                missing_ok=True,
            )
        except _NotFound:
            return None

    # -- the one write --------------------------------------------------------------------------

    def submit(self, coid: str, ticker: str, qty: float) -> OrderResult:
        """A market DAY order for ``qty`` (signed) units of ``ticker``, sent at most once."""
        request = MarketOrderRequest(
            symbol=ticker,
            qty=abs(qty),
            side=OrderSide.BUY if qty > 0 else OrderSide.SELL,
            time_in_force=TimeInForce.DAY,
            client_order_id=coid,
        )
        delays = jittered_delays(self.attempts, self.backoff_s)
        reason = ""
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:  # the last attempt may have reached the server: ask before sending again
                known = self._lookup_unknown(coid, ticker, qty, reason)
                if known is not None:
                    return known
            try:
                return _result(self.client.submit_order(request), coid, ticker, qty)
            except APIError as err:
                status, detail = err.status_code, scrub(one_line(_message(err)), self._secrets)
                if status == 422 and DUPLICATE in detail:
                    known = self._lookup_unknown(coid, ticker, qty, "the server says it already has it")
                    if known is not None:
                        return known
                    raise self._unknown(
                        coid, ticker, qty, "the server says it already has it, but cannot find it", "not found"
                    ) from None
                if status is not None and status != 429 and status < 500:
                    return OrderResult(coid, ticker, qty, "rejected", reason=f"HTTP {status}: {detail}")
                reason = f"HTTP {status}"
            except _BAD_URL as err:
                raise BrokerError(f"order {coid}: not sent, bad trading URL ({type(err).__name__})") from None
            except _UNUSABLE as err:  # the server may have accepted it: never guess, never resend
                why = f"the reply to the order was unusable ({scrub(_unusable(err), self._secrets)})"
                known = self._lookup_unknown(coid, ticker, qty, why)
                if known is None:
                    raise self._unknown(coid, ticker, qty, why, "not found") from None
                raise OrderUnknown(
                    f"order {coid}: {why}; the server has it ({known.status}); recorded in state.json, "
                    "not resent; check paper.trading_url",
                    replace(known, reason=why),
                ) from None
            except _DROPPED as err:
                reason = f"connection failed ({type(err).__name__})"
            except requests.RequestException as err:
                reason = f"request failed ({type(err).__name__})"
            if attempt < self.attempts:
                log.info("order %s: %s; retry %d/%d", coid, reason, attempt, self.attempts - 1)
                self.sleep(delays[attempt - 1])
        known = self._lookup_unknown(coid, ticker, qty, reason)
        if known is not None:
            return known
        raise BrokerError(f"order {coid}: {reason}, gave up after {self.attempts} attempt(s); not sent", transient=True)

    def _lookup_unknown(self, coid: str, ticker: str, qty: float, why: str) -> OrderResult | None:
        """:meth:`lookup` for an order that may have been accepted; a failed lookup is :class:`OrderUnknown`."""
        try:
            return self.lookup(coid, ticker, qty)
        except BrokerError as err:
            raise self._unknown(coid, ticker, qty, why, f"the lookup failed: {err}", transient=err.transient) from None

    def _unknown(
        self, coid: str, ticker: str, qty: float, why: str, lookup: str, *, transient: bool = False
    ) -> OrderUnknown:
        result = OrderResult(coid, ticker, qty, "unknown", reason=f"{why}; {lookup}")
        return OrderUnknown(
            f"order {coid}: {why}; {lookup}; recorded as 'unknown' in state.json and never resent "
            "(the next rebalance asks the server again)",
            result,
            transient=transient,
        )

    # -- internals ------------------------------------------------------------------------------

    def _read(self, call: Callable[[], Any], what: str, convert: Callable[[Any], Any], missing_ok: bool = False) -> Any:
        """``convert(call())``, retried on dropped connections, timeouts, 429 and 5xx; never on bad replies."""
        delays = jittered_delays(self.attempts, self.backoff_s)
        for attempt in range(1, self.attempts + 1):
            try:
                return convert(call())
            except _BAD_URL as err:
                raise BrokerError(f"alpaca {what}: bad trading URL ({type(err).__name__})") from None
            except _UNUSABLE as err:
                raise BrokerError(
                    f"alpaca {what}: the reply is not what Alpaca sends ({scrub(_unusable(err), self._secrets)}); "
                    "check paper.trading_url"
                ) from None
            except APIError as err:
                status = err.status_code
                if missing_ok and status == 404:
                    raise _NotFound from None
                detail = scrub(one_line(_message(err)), self._secrets)
                if status is not None and status != 429 and status < 500:
                    hint = " (check ALPACA_API_KEY / ALPACA_SECRET_KEY)" if status in (401, 403) else ""
                    raise BrokerError(f"alpaca {what}: HTTP {status}: {detail}{hint}") from None
                reason = f"HTTP {status}"
            except _DROPPED as err:
                reason = f"connection failed ({type(err).__name__})"
            except requests.RequestException as err:
                reason = f"request failed ({type(err).__name__})"
            if attempt < self.attempts:
                log.info("alpaca %s: %s; retry %d/%d", what, reason, attempt, self.attempts - 1)
                self.sleep(delays[attempt - 1])
        raise BrokerError(f"alpaca {what}: {reason}, gave up after {self.attempts} attempt(s)", transient=True)


class _NotFound(Exception):
    pass


def _result(order: Any, coid: str, ticker: str, qty: float) -> OrderResult:
    """Our record of alpaca-py's ``Order``; raises ValueError/TypeError/AttributeError on a bad one."""
    sign = 1.0 if qty > 0 else -1.0
    price = getattr(order, "filled_avg_price", None)
    status = getattr(order.status, "value", order.status)
    if not isinstance(status, str) or not status:
        raise TypeError("order status")
    return OrderResult(
        client_order_id=coid,
        ticker=ticker,
        qty=qty,
        status=status,
        filled_qty=sign * _finite(order.filled_qty or 0.0),
        filled_price=_finite(price) if price not in (None, "") else None,
    )


def _positions(raw: Any) -> dict[str, float]:
    if not isinstance(raw, list):
        raise TypeError("positions")
    out = {}
    for p in raw:
        qty = _finite(p.qty)
        out[str(p.symbol)] = -abs(qty) if str(p.side.value) == "short" else qty
    return out


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("not a boolean")
    return value


def _unusable(err: Exception) -> str:
    """What was wrong with a reply, without echoing its content (a reply may hold anything)."""
    if isinstance(err, json.JSONDecodeError):
        return "not JSON"
    if isinstance(err, pydantic.ValidationError):
        problems = err.errors(include_input=False, include_url=False)
        first = problems[0] if problems else {}
        where = ".".join(str(part) for part in first.get("loc", ())) or "the reply"
        return f"unexpected JSON: {where}: {one_line(str(first.get('msg', 'invalid')), 80)}"
    if isinstance(err, TypeError):
        return "unexpected JSON shape"
    return f"unexpected value ({type(err).__name__})"


def _message(err: APIError) -> str:
    try:
        return str(err.message)
    except Exception:  # not Alpaca's JSON error shape
        return str(err)
