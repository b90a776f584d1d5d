"""Orders through alpaca-py's ``TradingClient``, sent at most once each.

Every order carries a deterministic ``client_order_id`` (:func:`client_order_id`), and the broker
never submits an order twice without first asking the server whether it already has it:

* a dropped connection, a timeout, a 429 or a 5xx may have happened after Alpaca accepted the
  order, so before each retry the order is looked up with ``get_order_by_client_id``; if it is
  there, that is the answer;
* a 422 ``client_order_id must be unique`` means an earlier attempt (or an earlier process) was
  accepted: the order is looked up and returned;
* any other 4xx (insufficient buying power, a bad symbol) is a rejection: reported once, never
  retried.

As in :mod:`ploutos.data.sources.alpaca`, alpaca-py's own fixed-wait retry is switched off (our
backoff owns every wait: full jitter from :func:`ploutos.data.sources.retry.jittered_delays`, so
many processes do not retry in lockstep), every request has a timeout, and the keys live only in
the client: they are masked out of every message.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest

from ploutos.data.sources.retry import jittered_delays, one_line, scrub
from ploutos.errors import PloutosError
from ploutos.paper.state import FINAL

log = logging.getLogger(__name__)

DUPLICATE = "client_order_id must be unique"


class BrokerError(PloutosError):
    """The broker could not be reached or answered something unusable (message free of secrets)."""


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
        self._secrets = (key, secret)
        self.client = TradingClient(api_key=key, secret_key=secret, paper=not live, url_override=url or None)
        if not hasattr(self.client, "_retry") or getattr(self.client, "_session", None) is None:
            raise BrokerError("alpaca: this alpaca-py version has no _retry/_session; pin alpaca-py < 1 (0.44 tested)")
        self.client._retry, self.client._retry_codes = 0, []
        self.client._session.request = functools.partial(self.client._session.request, timeout=timeout_s)
        self.attempts, self.backoff_s, self.sleep = max(int(attempts), 1), backoff_s, sleep

    # -- reads (retried: they have no side effects) -------------------------------------------

    def account(self) -> Account:
        raw = self._read(self.client.get_account, "account")
        return Account(equity=float(raw.equity), cash=float(raw.cash))

    def positions(self) -> dict[str, float]:
        """Signed quantity per symbol."""
        raw = self._read(self.client.get_all_positions, "positions")
        return {
            p.symbol: float(p.qty) * (-1.0 if str(p.side.value) == "short" and float(p.qty) > 0 else 1.0) for p in raw
        }

    def clock(self) -> Clock:
        raw = self._read(self.client.get_clock, "clock")
        return Clock(is_open=bool(raw.is_open), next_open=f"{raw.next_open:%Y-%m-%d %H:%M %Z}")

    def lookup(self, coid: str, ticker: str, qty: float) -> OrderResult | None:
        """The order with this client id, or None when the server has none."""
        try:
            order = self._read(lambda: self.client.get_order_by_client_id(coid), f"order {coid}", missing_ok=True)
        except _NotFound:
            return None
        return _result(order, coid, ticker, qty)

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
                known = self.lookup(coid, ticker, qty)
                if known is not None:
                    return known
            try:
                return _result(self.client.submit_order(request), coid, ticker, qty)
            except APIError as err:
                status, detail = err.status_code, scrub(one_line(_message(err)), self._secrets)
                if status == 422 and DUPLICATE in detail:
                    known = self.lookup(coid, ticker, qty)
                    if known is not None:
                        return known
                    raise BrokerError(f"order {coid}: server says it exists but cannot find it") from None
                if status is not None and status != 429 and status < 500:
                    return OrderResult(coid, ticker, qty, "rejected", reason=f"HTTP {status}: {detail}")
                reason = f"HTTP {status}"
            except (requests.ConnectionError, requests.Timeout) as err:
                reason = f"connection failed ({type(err).__name__})"
            if attempt < self.attempts:
                log.warning("order %s: %s; retry %d/%d", coid, reason, attempt, self.attempts - 1)
                self.sleep(delays[attempt - 1])
        known = self.lookup(coid, ticker, qty)
        if known is not None:
            return known
        raise BrokerError(f"order {coid}: {reason}, gave up after {self.attempts} attempt(s); not sent")

    # -- internals ------------------------------------------------------------------------------

    def _read(self, call: Callable[[], Any], what: str, missing_ok: bool = False) -> Any:
        delays = jittered_delays(self.attempts, self.backoff_s)
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except APIError as err:
                status = err.status_code
                if missing_ok and status == 404:
                    raise _NotFound from None
                detail = scrub(one_line(_message(err)), self._secrets)
                if status is not None and status != 429 and status < 500:
                    hint = " (check ALPACA_API_KEY / ALPACA_SECRET_KEY)" if status in (401, 403) else ""
                    raise BrokerError(f"alpaca {what}: HTTP {status}: {detail}{hint}") from None
                reason = f"HTTP {status}"
            except (requests.ConnectionError, requests.Timeout) as err:
                reason = f"connection failed ({type(err).__name__})"
            if attempt < self.attempts:
                log.warning("alpaca %s: %s; retry %d/%d", what, reason, attempt, self.attempts - 1)
                self.sleep(delays[attempt - 1])
        raise BrokerError(f"alpaca {what}: {reason}, gave up after {self.attempts} attempt(s)")


class _NotFound(Exception):
    pass


def _result(order: Any, coid: str, ticker: str, qty: float) -> OrderResult:
    sign = 1.0 if qty > 0 else -1.0
    price = getattr(order, "filled_avg_price", None)
    return OrderResult(
        client_order_id=coid,
        ticker=ticker,
        qty=qty,
        status=str(getattr(order.status, "value", order.status)),
        filled_qty=sign * float(order.filled_qty or 0.0),
        filled_price=float(price) if price not in (None, "") else None,
    )


def _message(err: APIError) -> str:
    try:
        return str(err.message)
    except Exception:  # not Alpaca's JSON error shape
        return str(err)
