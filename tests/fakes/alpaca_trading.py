"""A fake Alpaca trading API for the real alpaca-py ``TradingClient`` (0.44), on loopback.

Endpoints (what ``TradingClient`` calls with ``url_override=fake.url``):

- ``GET /v2/account``: equity = cash + positions marked at :attr:`FakeTrading.prices`;
- ``GET /v2/positions``: one entry per non-zero position;
- ``GET /v2/clock``: ``is_open`` from :attr:`FakeTrading.is_open`;
- ``POST /v2/orders``: market orders, deduplicated by ``client_order_id`` (a duplicate is answered
  422 ``client_order_id must be unique``, as Alpaca does); filled at once at the symbol's price;
- ``GET /v2/orders:by_client_order_id?client_order_id=...``: the order, or 404.

Switches for the next order(s): :attr:`reject_next` (403 insufficient buying power, nothing
recorded), :attr:`partial_next` (half the quantity fills, status ``partially_filled``) and
:attr:`drop_next` (the order is recorded and filled, then the connection is closed without an
answer: the client sees a dropped connection after the server accepted the order).
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from datetime import datetime, timedelta, timezone

from .server import FakeServer, Reply, Request

NOW = "2024-03-05T15:00:00Z"


class _Drop(Exception):
    """Raised by the route: close the connection without an answer (after the side effects)."""


class FakeTrading(FakeServer):
    def __init__(self, *, api_key: str, cash: float = 100_000.0, prices: dict[str, float] | None = None) -> None:
        self.api_key = api_key
        self.cash = cash
        self.prices: dict[str, float] = dict(prices or {})
        self.positions: dict[str, float] = {}
        self.orders: dict[str, dict] = {}
        """Accepted orders by client_order_id, in arrival order."""
        self.is_open = True
        self.reject_next = 0
        self.partial_next = 0
        self.drop_next = 0
        self._body = threading.local()
        super().__init__(self._route)

    # -- what tests look at -------------------------------------------------------------------

    def order_posts(self) -> list[Request]:
        return self.matching(lambda r: r.method == "POST" and r.path == "/v2/orders")

    def equity(self) -> float:
        return self.cash + sum(q * self.prices.get(s, 0.0) for s, q in self.positions.items())

    def cancel_open(self) -> None:
        """End every working order (a DAY order expiring): what is unfilled is canceled."""
        for order in self.orders.values():
            if order["status"] in ("new", "accepted", "partially_filled"):
                order["status"] = "canceled"

    # -- the API ------------------------------------------------------------------------------

    def _route(self, request: Request) -> Reply:
        if request.headers.get("APCA-API-KEY-ID") != self.api_key or not request.headers.get("APCA-API-SECRET-KEY"):
            return Reply(401, {"code": 40110000, "message": "request is not authorized"})
        path = request.path
        if request.method == "GET" and path == "/v2/account":
            return Reply(200, self._account())
        if request.method == "GET" and path == "/v2/positions":
            return Reply(200, [self._position(s, q) for s, q in self.positions.items() if q])
        if request.method == "GET" and path == "/v2/clock":
            now = datetime.fromisoformat(NOW.replace("Z", "+00:00"))
            return Reply(
                200,
                {
                    "timestamp": NOW,
                    "is_open": self.is_open,
                    "next_open": (now + timedelta(hours=18)).isoformat(),
                    "next_close": (now + timedelta(hours=5)).isoformat(),
                },
            )
        if request.method == "POST" and path == "/v2/orders":
            return self._submit(json.loads(getattr(self._body, "value", b"") or b"{}"))
        if request.method == "GET" and path == "/v2/orders:by_client_order_id":
            order = self.orders.get(request.query.get("client_order_id", ""))
            if order is None:
                return Reply(404, {"code": 40410000, "message": "order not found"})
            return Reply(200, order)
        return Reply(404, {"code": 40410000, "message": f"endpoint not found: {request.method} {path}"})

    def _submit(self, body: dict) -> Reply:
        coid = body.get("client_order_id") or str(uuid.uuid4())
        if coid in self.orders:
            return Reply(422, {"code": 40010001, "message": "client_order_id must be unique"})
        if self.reject_next:
            self.reject_next -= 1
            return Reply(403, {"code": 40310000, "message": "insufficient buying power"})
        symbol, qty, side = body["symbol"], float(body["qty"]), body["side"]
        filled = qty
        status = "filled"
        if self.partial_next:
            self.partial_next -= 1
            filled, status = float(int(qty // 2)), "partially_filled"
        price = self.prices.get(symbol, 100.0)
        signed = filled if side == "buy" else -filled
        self.positions[symbol] = self.positions.get(symbol, 0.0) + signed
        self.cash -= signed * price
        stamp = NOW
        order = {
            "id": str(uuid.uuid4()),
            "client_order_id": coid,
            "created_at": stamp,
            "updated_at": stamp,
            "submitted_at": stamp,
            "filled_at": stamp if status == "filled" else None,
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, symbol)),
            "symbol": symbol,
            "asset_class": "us_equity",
            "qty": _num(qty),
            "filled_qty": _num(filled),
            "filled_avg_price": _num(price) if filled else None,
            "order_class": "simple",
            "order_type": "market",
            "type": "market",
            "side": side,
            "time_in_force": body.get("time_in_force", "day"),
            "status": status,
            "extended_hours": False,
        }
        self.orders[coid] = order
        if self.drop_next:
            self.drop_next -= 1
            raise _Drop
        return Reply(200, order)

    def _account(self) -> dict:
        equity = self.equity()
        return {
            "id": "11111111-2222-3333-4444-555555555555",
            "account_number": "PA0FAKE",
            "status": "ACTIVE",
            "currency": "USD",
            "cash": _num(self.cash),
            "equity": _num(equity),
            "last_equity": _num(equity),
            "buying_power": _num(2 * equity),
            "portfolio_value": _num(equity),
        }

    def _position(self, symbol: str, qty: float) -> dict:
        price = self.prices.get(symbol, 100.0)
        return {
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, symbol)),
            "symbol": symbol,
            "exchange": "ARCA",
            "asset_class": "us_equity",
            "avg_entry_price": _num(price),
            "qty": _num(qty),
            "side": "long" if qty > 0 else "short",
            "market_value": _num(qty * price),
            "cost_basis": _num(qty * price),
            "current_price": _num(price),
        }

    # -- the handler: keep the POST body for the route, and drop after the route's side effects --

    def _handler_class(self):  # type: ignore[override]
        base = super()._handler_class()
        fake = self

        class Handler(base):  # type: ignore[valid-type, misc]
            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile
                body = raw.read(length) if length else b""
                fake._body.value = body
                self.rfile = io.BytesIO(body)  # the base handler reads (and ignores) it again
                try:
                    super()._serve(method)
                except _Drop:
                    self.close_connection = True
                    self.connection.close()
                finally:
                    self.rfile = raw

        return Handler


def _num(value: float) -> str:
    return repr(float(value))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
