"""Picklable env factories: how a worker process builds a :class:`TradingEnv` over the node store.

A factory carries only the segment's name and small settings; the worker maps the store
read-only by name (never importing mpi4py) and builds the env on those views, so every env of
every worker reads the node's one copy of the features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ploutos.config import EnvConfig
from ploutos.env.trading import TradingEnv
from ploutos.node.context import worker_attach


@dataclass(frozen=True)
class StoreEnvFactory:
    """Builds one :class:`~ploutos.env.trading.TradingEnv` on the store named ``store``."""

    store: str
    """Name of the /dev/shm segment (``ploutos_<job>_<tag>``)."""
    config_hash: str
    """The config hash the store must carry; a stale segment is refused."""
    env: EnvConfig
    """Env settings."""
    rows: tuple[int, int]
    """Time rows ``[start, stop)`` of the window the env trades."""
    bars_per_year: int
    """Annualization of the session policy."""
    evaluation: bool = False
    """Fixed start at the window's first full lookback instead of random starts."""

    def __call__(self) -> Any:

        arrays = worker_attach(self.store, expect_config_hash=self.config_hash).to_arrays()
        return TradingEnv(
            arrays, self.env, rows=slice(*self.rows), bars_per_year=self.bars_per_year, evaluation=self.evaluation
        )
