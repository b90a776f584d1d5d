"""Risk limits between the policy's target weights and the orders (pure functions).

- **Action semantics** first, exactly as :class:`~ploutos.env.trading.TradingEnv` reads a
  continuous action: clipped to ``[-1, 1]`` (``[0, 1]`` long-only), NaN to 0, scaled down so that
  ``sum |w| <= 1``; a discrete action maps to ``-1/A, hold, +1/A``.
- **Max weight**: each target clipped to ``[-paper.max_weight, paper.max_weight]``.
- **Daily turnover**: the day's traded notional may not exceed ``paper.max_daily_turnover`` x
  equity; when a rebalance would pass it, all of its orders are scaled down by the same factor.
- **Drawdown halt**: at ``1 - equity / peak >= paper.drawdown_halt`` no new orders.
- **Live guard**: live trading needs both ``--live`` and ``PLOUTOS_LIVE_CONFIRM=yes``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ploutos.config import EnvConfig, PaperConfig
from ploutos.errors import PloutosError

CONFIRM_VAR = "PLOUTOS_LIVE_CONFIRM"


def check_live(live: bool, environ: Mapping[str, str] | None = None) -> None:
    """Refuse ``--live`` unless the confirmation variable says ``yes`` (one-line error)."""
    env = os.environ if environ is None else environ
    if live and env.get(CONFIRM_VAR, "") != "yes":
        raise PloutosError(f"live trading refused: it needs both --live and {CONFIRM_VAR}=yes in the environment")


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
