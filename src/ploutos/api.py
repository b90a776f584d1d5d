"""The Python API: what a research session imports from ``ploutos``.

    import ploutos
    run = ploutos.load_run("results/quickstart")      # config, folds, metrics, curves as DataFrames
    env = ploutos.make_env(run.config, fold=0, split="test")
    run.policy(fold=0)                                 # the fold's ensemble, with SB3's predict()

Names are imported by ``ploutos.__getattr__`` when first used, so ``import ploutos`` (and the
``ploutos`` command's startup) does not pay for torch, polars or matplotlib; ``load_run`` and its
tables need pandas and h5py only, torch loads when a model is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ploutos.config import Config, load
from ploutos.errors import ConfigError
from ploutos.results.run import RunResults, read_run

if TYPE_CHECKING:
    from ploutos.results.backtest import Backtest

SPLITS = ("train", "validation", "test")

__all__ = ["Run", "backtest", "load_config", "load_run", "make_env"]


class Run(RunResults):
    """A run folder's results (:class:`~ploutos.results.run.RunResults`: config, folds, metrics and
    curves as DataFrames) and its models."""

    def policy(self, fold: int | None = None, member: int | None = None) -> Any:
        """Fold ``fold``'s ensemble (default: the latest fold), or one member: an object with SB3's
        ``predict(observation, state=None, deterministic=True)`` taking :func:`make_env` observations."""
        from ploutos.pipeline.policy import load_policy  # lazy: torch, only when a model is asked for

        return load_policy(self.path, fold=fold, member=member).actor

    def backtest(self, **options: Any) -> Backtest:
        """:func:`backtest` of this run (the same keyword options)."""
        return backtest(self.path, **options)


def backtest(run_dir: str | Path, **options: Any) -> Backtest:
    """:func:`ploutos.pipeline.backtest.backtest`: a fold's models on new bars (``fold``, ``member``,
    ``data``, ``start``, ``end``, ``allow_in_sample``, ``name``, ``echo``)."""
    from ploutos.pipeline.backtest import backtest as run_backtest  # lazy: torch, only when a model trades

    return run_backtest(Path(run_dir), **options)


def load_run(path: str | Path) -> Run:
    """The run folder ``path`` (e.g. ``results/quickstart``): its ``config.yaml`` must be the one the run wrote;
    missing or damaged task files are rows of :attr:`Run.tasks`, not errors."""
    found = read_run(path)
    return Run(found.path, found.config, found.run_hash, found._files)


def load_config(config: Config | str | Path | None = None, overrides: tuple[str, ...] = ()) -> Config:
    """A config: as given, or read from a YAML file or embedded name (default: the quickstart)."""
    return config if isinstance(config, Config) and not overrides else load(config, overrides)  # type: ignore[arg-type]


def make_env(
    config: Config | str | Path | None = None, fold: int = 0, split: Literal["train", "validation", "test"] = "train"
):  # noqa: ANN201 - gymnasium.Env, imported lazily
    """The :class:`~ploutos.env.trading.TradingEnv` the run trains (``train``), selects checkpoints
    (``validation``) or is tested (``test``) on, for fold ``fold`` of ``config``'s walk-forward plan.

    Features come from the built dataset (``ploutos data build``) by the training code path,
    normalized on the fold's training window; ``validation`` and ``test`` envs start at their
    window's first bar, as evaluation does, instead of random starts.
    """
    from ploutos.env.trading import TradingEnv  # lazy: gymnasium
    from ploutos.train.folds import fold_features  # lazy: polars, the features

    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: one of {', '.join(SPLITS)}")
    cfg = load_config(config)
    arrays, window, _ = fold_features(cfg, fold)
    lookback = cfg.env.lookback
    if split == "train":
        rows = window.train
    elif split == "validation":
        if not window.validation_bars:
            raise ConfigError(f"fold {fold} has no validation window (walkforward.validation_months is 0)")
        rows = window.validation_rows(lookback)
    else:
        rows = window.eval_rows(lookback)
    return TradingEnv(arrays, cfg.env, rows=rows, bars_per_year=cfg.data.bars_per_year, evaluation=split != "train")
