"""Risk limits between the policy's target weights and the orders (pure functions).

- **Action semantics** first, exactly as :class:`~ploutos.env.trading.TradingEnv` reads a
  continuous action: clipped to ``[-1, 1]`` (``[0, 1]`` long-only), NaN to 0, scaled down so that
  ``sum |w| <= 1``; a discrete action maps to ``-1/A, hold, +1/A``.
- **Max weight**: each target clipped to ``[-paper.max_weight, paper.max_weight]``.
- **Daily turnover**: the day's traded notional may not exceed ``paper.max_daily_turnover`` x
  equity; when a rebalance would pass it, all of its orders are scaled down by the same factor.
- **Drawdown halt**: at ``1 - equity / peak >= paper.drawdown_halt`` no new orders.
- **Live guard**: live trading needs both ``--live`` and ``PLOUTOS_LIVE_CONFIRM=yes``; without them
  orders go only to Alpaca's paper host or to a loopback address (:func:`check_urls`), and the keys
  never travel over plain ``http://`` except to loopback.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

import numpy as np

from ploutos.config import Config, EnvConfig, PaperConfig
from ploutos.errors import PloutosError

CONFIRM_VAR = "PLOUTOS_LIVE_CONFIRM"
PAPER_HOST = "paper-api.alpaca.markets"
PAPER_URL = f"https://{PAPER_HOST}"
LOOPBACK = "127.0.0.1, ::1, localhost"


def check_live(live: bool, environ: Mapping[str, str] | None = None) -> None:
    """Refuse ``--live`` unless the confirmation variable says ``yes`` (one-line error)."""
    env = os.environ if environ is None else environ
    if live and env.get(CONFIRM_VAR, "") != "yes":
        raise PloutosError(f"live trading refused: it needs both --live and {CONFIRM_VAR}=yes in the environment")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(key: str, url: str | None, *, live: bool, trading: bool) -> None:
    """Refuse a URL the API keys must not be sent to (one line naming the URL and the rule).

    Every URL: ``http(s)://`` with a host, plain ``http://`` only to a loopback address (the keys
    travel in every request's headers). A trading URL (``trading``) without ``live``: only Alpaca's
    paper host or a loopback address; alpaca-py's ``url_override`` beats ``paper=True``, so this
    check is what keeps a paper run off a live account. Empty: alpaca-py's own host (the paper host
    for trading unless ``live``).
    """
    if not url:
        return
    shown = f"{key}={url}"
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise PloutosError(f"{shown}: not a URL; expected https://HOST[:PORT]") from None
    if parts.scheme not in ("http", "https") or not host:
        raise PloutosError(f"{shown}: not an http(s) URL with a host; expected https://HOST[:PORT]")
    loopback = is_loopback(host)
    if parts.scheme == "http" and not loopback:
        raise PloutosError(
            f"{shown}: plain http:// is allowed only to a loopback address ({LOOPBACK}); "
            "the API keys travel with every request: use https://"
        )
    if trading and not live and not loopback and host != PAPER_HOST:
        raise PloutosError(
            f"{shown}: not the paper host; without --live orders go only to {PAPER_URL} or a loopback "
            f"address ({LOOPBACK}); any other host needs --live and {CONFIRM_VAR}=yes"
        )


def check_urls(config: Config, live: bool, environ: Mapping[str, str] | None = None) -> None:
    """The live guard and :func:`check_url` for the trading URL and the data URL that carries the keys."""
    check_live(live, environ)
    check_url("paper.trading_url", config.paper.trading_url, live=live, trading=True)
    check_url("data.alpaca_url", config.data.alpaca_url, live=live, trading=False)


def target_weights(action: np.ndarray, current: np.ndarray, env: EnvConfig) -> np.ndarray:
    """The env's reading of an action as target weights (``hold`` keeps ``current``)."""
    action = np.asarray(action).reshape(-1)
    n = len(current)
    low = 0.0 if env.long_only else -1.0
    if env.action_mode == "discrete":
        levels = np.array([low / n, 0.0, 1.0 / n])
        return np.where(action == 1, current, levels[np.clip(action.astype(int), 0, 2)])
    w = np.nan_to_num(np.asarray(action, dtype=np.float64), nan=0.0)
    w = np.clip(w, low, 1.0)
    gross = np.abs(w).sum()
    return w / gross if gross > 1.0 else w


def clip_weights(weights: np.ndarray, cfg: PaperConfig) -> np.ndarray:
    return np.clip(weights, -cfg.max_weight, cfg.max_weight)


def turnover_factor(planned_notional: float, equity: float, used: float, cfg: PaperConfig) -> float:
    """Share of the planned notional that fits in the day's remaining turnover budget (0..1)."""
    if planned_notional <= 0.0 or equity <= 0.0:
        return 1.0
    remaining = max(cfg.max_daily_turnover - used, 0.0) * equity
    return min(1.0, remaining / planned_notional)


def drawdown(equity: float, peak: float) -> float:
    return 1.0 - equity / peak if peak > 0 else 0.0


def halt_reason(equity: float, peak: float, cfg: PaperConfig) -> str:
    """Why trading must stop, or ``""``."""
    dd = drawdown(equity, peak)
    if dd >= cfg.drawdown_halt:
        return (
            f"drawdown halt: equity {equity:,.2f} is {dd:.1%} below its peak {peak:,.2f} "
            f"(paper.drawdown_halt {cfg.drawdown_halt:.1%}); no new orders"
        )
    return ""
