"""What paper trading remembers across restarts: ``RUN_DIR/paper/state.json``, written atomically.

The state is rewritten after every order, so a process killed in the middle of a rebalance leaves
a file that lists every order it sent; a new process re-processes the same bar and skips those
(their ``client_order_id`` is recorded), so nothing is sent twice. ``orders.log`` next to it is an
append-only JSON-lines journal of every order event, for people. Neither ever holds an API key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ploutos.errors import PloutosError
from ploutos.files import atomic_path

FINAL = frozenset({"filled", "canceled", "expired", "rejected", "done_for_day", "replaced", "stopped"})
"""Order statuses after which nothing more fills."""

VERSION = 1


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
    version: int = VERSION

    @staticmethod
    def load(path: Path, config_hash: str) -> PaperState:
        """The saved state, or a fresh one when there is none; another run's state is refused."""
        if not path.exists():
            return PaperState(config_hash=config_hash)
        try:
            data = json.loads(path.read_text())
            state = PaperState(**data)
        except (OSError, ValueError, TypeError) as err:
            raise PloutosError(f"{path}: not a paper-trading state ({type(err).__name__}); move it away") from None
        if state.config_hash != config_hash:
            raise PloutosError(
                f"{path}: belongs to config {state.config_hash[:8]}, this run is {config_hash[:8]}; move it away"
            )
        return state

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")

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


def log_event(path: Path, event: str, **fields: Any) -> None:
    """Append one JSON line ``{"at", "event", ...}`` to the orders journal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "event": event, **fields}
    with open(path, "a") as handle:
        handle.write(json.dumps(line, sort_keys=True, default=str) + "\n")
