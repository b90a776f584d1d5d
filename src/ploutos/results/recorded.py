"""A trained run's recorded config: ``config.yaml`` checked against its hash line, plus allowed ``--set``.

Backtests, paper trading and ``ploutos.load_run`` read a run's config through :func:`run_config`, so a
file edited after training (a changed ``paper.trading_url`` would slip past every other check) is
refused everywhere. It imports nothing heavy: ``ploutos paper`` refuses a bad run folder or a bad
override before it loads torch and the models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ploutos.config import Config, config_hash, load
from ploutos.errors import ConfigError, PloutosError
from ploutos.results.layout import HASH_LINE, RunLayout

OVERRIDABLE = (
    "paper.",
    "data.alpaca_url",
    "data.alpaca_feed",
    "data.store",
    "data.max_retries",
    "data.retry_backoff_s",
    "data.request_timeout_s",
    "data.source",
    "data.tickers",
)
"""``--set`` keys paper trading accepts on top of the run's config (the model fixes everything else)."""


@dataclass(frozen=True)
class RunConfig:
    """A run's recorded config (checked against its hash) and the same with paper's ``--set`` applied."""

    config: Config
    """With the overrides."""
    base: Config
    """As recorded in ``config.yaml``."""
    run_hash: str
    """The hash recorded in ``config.yaml`` (which ``base`` hashes to)."""


def run_config(run_dir: Path, overrides: Sequence[str] = ()) -> RunConfig:
    """The run's ``config.yaml``, refused when edited since training, then paper's ``--set`` overrides.

    ``config.yaml`` is ``dump(config)`` plus ``# config hash: <hash>``; a file whose content no longer
    hashes to that line was edited by hand (a changed ``paper.trading_url`` would slip past every
    other check). Overrides are allowed only on :data:`OVERRIDABLE` keys and are applied after the
    check; an override that breaks the config is named in the error.
    """
    layout = RunLayout(Path(run_dir))
    if not layout.config_file.exists():
        raise PloutosError(f"{run_dir}: no config.yaml; is this a run folder (results/<name>)?")
    for text in overrides:
        if not text.split("=", 1)[0].strip().startswith(OVERRIDABLE):
            raise ConfigError(
                f"--set {text}: paper trading only overrides {', '.join(OVERRIDABLE)} (the model fixes the rest)"
            )
    base = load(layout.config_file)
    try:
        recorded = layout.recorded_hash()
    except (OSError, ValueError) as err:
        raise ConfigError(f"{layout.config_file}: cannot read ({type(err).__name__})") from None
    actual = config_hash(base)
    if recorded != actual:
        raise ConfigError(
            f"{layout.config_file}: edited after training: its content hashes to {actual}, its "
            f"'{HASH_LINE.strip()}' line records {recorded}; restore the file "
            "(paper settings go in --set paper.KEY=VALUE)"
        )
    config = base
    for done in range(len(overrides)):  # one at a time, so that the error names the --set that broke it
        try:
            config = load(layout.config_file, overrides[: done + 1])
        except ConfigError as err:
            message = str(err)
            if message.startswith("--set "):
                raise
            origin, _, rest = message.partition(": ")
            raise ConfigError(
                f"--set {overrides[done]}: {rest if origin.endswith('config.yaml') else message}"
            ) from None
    return RunConfig(config, base, recorded or "")
