"""Ploutos: reinforcement-learning trading agents trained walk-forward on Slurm clusters.

The Python API (:mod:`ploutos.api`): ``load_run``, ``make_env``, ``backtest``, ``load_config``;
features are ``ploutos.features.compute``.
"""

from typing import Any

__version__ = "0.1.0"

_API = ("Run", "backtest", "load_config", "load_run", "make_env")


def __getattr__(name: str) -> Any:
    # the API imports torch and polars: only when a name of it is used, so the command starts fast
    if name in _API:
        from ploutos import api  # the facade: the package root re-exports the API when a name of it is used

        return getattr(api, name)
    raise AttributeError(f"module 'ploutos' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
