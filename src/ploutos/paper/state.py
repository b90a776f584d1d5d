"""What paper trading remembers across restarts: ``RUN_DIR/paper/state.json``, written atomically.

The state is rewritten after every order, so a process killed in the middle of a rebalance leaves
a file that lists every order it sent; a new process re-processes the same bar and skips those
(their ``client_order_id`` is recorded), so nothing is sent twice. ``orders.log`` next to it is an
append-only JSON-lines journal of every order event, for people. Neither ever holds an API key.

A state file is checked field by field when it is read; a damaged one is refused in one line naming
the file and the field, and never overwritten: the user restores it or moves it away.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ploutos.errors import PloutosError
from ploutos.files import atomic_path

FINAL = frozenset({"filled", "canceled", "expired", "rejected", "done_for_day", "replaced", "stopped", "not_found"})
"""Order statuses after which nothing more fills (``not_found``: an order recorded as ``unknown`` that
the server, asked again on a later rebalance, does not have)."""

UNKNOWN = "unknown"
"""Status of an order whose submit had no usable answer: it may have been accepted."""

VERSION = 1

RECOVER = (
    "restore it from a backup, or move it away and run again with --adopt-positions (orders.log lists every order sent)"
)


class StateError(PloutosError):
    """``state.json`` or ``orders.log`` cannot be read or written."""


@dataclass
class PaperState:
    config_hash: str
    last_bar: str | None = None
    """ISO time of the last bar whose rebalance finished."""
    initial_equity: float | None = None
    """Equity at the first rebalance (the observation's log return is measured from it)."""
    peak_equity: float | None = None
    day: str | None = None
    """UTC date the turnover budget belongs to."""
    turnover_used: float = 0.0
    """Traded notional sent today, as a share of equity."""
    positions: dict[str, float] = field(default_factory=dict)
    """Signed quantities last seen at the broker."""
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    """By client_order_id: ticker, qty, status, filled_qty, filled_price, reason, bar."""
    halted: str = ""
    """Why trading stopped (the drawdown limit), empty while trading."""
    bars_seen: int = 0
    """Bars processed; as in the backtest, every ``env.decide_every``-th of them (the first included) is a decision."""
    version: int = VERSION

    @staticmethod
    def load(path: Path, config_hash: str) -> PaperState:
        """The saved state, or a fresh one when there is none; a damaged or another run's state is refused."""
        if not path.exists() and not path.is_symlink():
            return PaperState(config_hash=config_hash)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise _damaged(path, "the file", "not UTF-8 text") from None
        except OSError as err:
            raise StateError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None
        try:
            data = json.loads(text)
        except RecursionError:
            raise _damaged(path, "the file", "nested too deeply") from None
        except ValueError as err:
            where = f" at line {err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
            raise _damaged(path, "the file", f"not JSON{where}") from None
        state = PaperState(**_checked(path, data))
        if state.config_hash != config_hash:
            raise StateError(
                f"{path}: belongs to config {state.config_hash[:8]}, this run is {config_hash[:8]}; move it away"
            )
        return state

    def save(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")
        except OSError as err:
            raise StateError(f"{path}: cannot write ({err.strerror or type(err).__name__})") from None

    def new_day(self, day: str) -> None:
        """Reset the turnover budget when the bar's UTC date changes."""
        if self.day != day:
            self.day, self.turnover_used = day, 0.0

    def open_qty(self, ticker: str) -> float:
        """Signed quantity of the ticker's orders that may still fill."""
        return sum(
            o["qty"] - o.get("filled_qty", 0.0)
            for o in self.orders.values()
            if o["ticker"] == ticker and o["status"] not in FINAL
        )


def log_event(path: Path, event: str, **values: Any) -> None:
    """Append one JSON line ``{"at", "event", ...}`` to the orders journal."""
    line = {"at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "event": event, **values}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            handle.write(json.dumps(line, sort_keys=True, default=str) + "\n")
    except OSError as err:
        raise StateError(f"{path}: cannot append ({err.strerror or type(err).__name__})") from None


# -- reading a state file: every field checked, named when wrong -----------------------------------


def _damaged(path: Path, where: str, problem: str) -> StateError:
    return StateError(f"{path}: {where}: {problem}; the state file is damaged: {RECOVER}")


def _kind(value: Any) -> str:
    return (
        "null"
        if value is None
        else {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)
    )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


Check = tuple[Callable[[Any], bool], str]

_NUMBER: Check = (_number, "a finite number")
_NON_NEGATIVE: Check = (lambda v: _number(v) and v >= 0, "a finite number >= 0")
_OPTIONAL_NON_NEGATIVE: Check = (lambda v: v is None or _NON_NEGATIVE[0](v), "null or a finite number >= 0")
_TEXT: Check = (lambda v: isinstance(v, str), "a string")
_OPTIONAL_TIME: Check = (lambda v: v is None or _time(v), "null or an ISO date/time")

_FIELDS: dict[str, Check] = {
    "config_hash": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "last_bar": _OPTIONAL_TIME,
    "initial_equity": _OPTIONAL_NON_NEGATIVE,
    "peak_equity": _OPTIONAL_NON_NEGATIVE,
    "day": _OPTIONAL_TIME,
    "turnover_used": _NON_NEGATIVE,
    "positions": (lambda v: isinstance(v, dict), "an object of quantities by symbol"),
    "orders": (lambda v: isinstance(v, dict), "an object of orders by client_order_id"),
    "halted": _TEXT,
    "bars_seen": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "version": (
        lambda v: v == VERSION and not isinstance(v, bool),
        f"{VERSION} (this Ploutos writes version {VERSION})",
    ),
}
_ORDER: dict[str, tuple[bool, Check]] = {  # name: (required, check)
    "ticker": (True, (lambda v: isinstance(v, str) and bool(v), "a non-empty string")),
    "qty": (True, _NUMBER),
    "status": (True, (lambda v: isinstance(v, str) and bool(v), "a non-empty string")),
    "filled_qty": (False, _NUMBER),
    "filled_price": (False, (lambda v: v is None or _number(v), "null or a finite number")),
    "reason": (False, _TEXT),
    "bar": (False, _OPTIONAL_TIME),
}


def _checked(path: Path, data: Any) -> dict[str, Any]:
    """``data`` if it has the shape :meth:`PaperState.save` writes; else a :class:`StateError` naming the field."""
    if not isinstance(data, dict):
        raise _damaged(path, "the file", f"expected a JSON object, got {_kind(data)}")
    known = {f.name for f in fields(PaperState)}
    for name in data:
        if name not in known:
            raise _damaged(path, _name(name), "unknown field")
    if "config_hash" not in data:
        raise _damaged(path, "config_hash", "missing")
    for name, value in data.items():
        ok, expected = _FIELDS[name]
        if not ok(value):
            raise _damaged(path, name, f"expected {expected}, got {_kind(value)} {_short(value)}")
    for symbol, qty in data.get("positions", {}).items():
        if not _number(qty):
            problem = f"expected a finite number, got {_kind(qty)} {_short(qty)}"
            raise _damaged(path, f"positions.{_name(symbol)}", problem)
    for coid, order in data.get("orders", {}).items():
        if not isinstance(order, dict):
            raise _damaged(path, f"orders.{_name(coid)}", f"expected an object, got {_kind(order)}")
        for name, value in order.items():
            if name not in _ORDER:
                raise _damaged(path, f"orders.{_name(coid)}.{_name(name)}", "unknown field")
            ok, expected = _ORDER[name][1]
            if not ok(value):
                problem = f"expected {expected}, got {_kind(value)} {_short(value)}"
                raise _damaged(path, f"orders.{_name(coid)}.{_name(name)}", problem)
        for name, (required, _) in _ORDER.items():
            if required and name not in order:
                raise _damaged(path, f"orders.{_name(coid)}.{_name(name)}", "missing")
    return data


def _name(key: str) -> str:
    """A key of the file, on one line and short, for a message."""
    text = " ".join(str(key).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _short(value: Any) -> str:
    text = " ".join(json.dumps(value, default=str).split())
    return text if len(text) <= 40 else text[:37] + "..."
