"""Picklable env factories: how a worker process builds a :class:`TradingEnv` over the node store.

A factory carries only the segment's name and small settings; the worker maps the store
read-only by name (never importing mpi4py) and builds the env on those views, so every env of
every worker reads the node's one copy of the features. A process maps each store once: its envs
share the arrays, which is what lets :class:`~ploutos.env.batch.EnvBatch` step them as one core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ploutos.config import EnvConfig
from ploutos.env.trading import TradingEnv
from ploutos.features.arrays import FeatureArrays
from ploutos.node.context import worker_attach

_attached: dict[tuple[str, str], FeatureArrays] = {}
"""The stores this process has mapped, by (name, config hash). A worker process lives as long as
its vec env, so the mappings go with it."""


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
        key = (self.store, self.config_hash)
        if key not in _attached:
            _attached[key] = worker_attach(self.store, expect_config_hash=self.config_hash).to_arrays()
        return TradingEnv(
            _attached[key], self.env, rows=slice(*self.rows), bars_per_year=self.bars_per_year,
            evaluation=self.evaluation,
        )  # fmt: skip
