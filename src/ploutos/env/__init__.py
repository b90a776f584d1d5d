"""Trading environments over in-memory feature arrays: :class:`TradingEnv`, its costs and rewards.

``TradingEnv`` is imported on first use, so that importing a submodule (a vectorized env's worker
module, say) does not pull in gymnasium.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ploutos.env.trading import TradingEnv

__all__ = ["TradingEnv"]


def __getattr__(name: str) -> Any:
    if name == "TradingEnv":
        from ploutos.env.trading import TradingEnv  # on first use: env workers of other envs skip gymnasium

        return TradingEnv
    raise AttributeError(f"module 'ploutos.env' has no attribute {name!r}")
