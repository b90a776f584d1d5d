"""Where a run's outputs live (see results/README.md), and the guard that keeps runs apart.

A run folder belongs to one resolved config: ``config.yaml`` is written by the first task and
every later task checks its hash, so results of two different configs never mix in one
``summary.h5``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ploutos.config import Config, config_hash, dump
from ploutos.errors import ConfigError
from ploutos.results.files import atomic_path

HASH_LINE = "# config hash: "


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run's outputs."""

    root: Path

    @staticmethod
    def of(config: Config) -> RunLayout:
        return RunLayout(Path(config.run_dir))

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def tasks(self) -> Path:
        return self.root / "tasks"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def summary(self) -> Path:
        return self.root / "summary.h5"

    def task_name(self, fold: int, member: int | None) -> str:
        """``fold<F>_member<M>``, or ``fold<F>_ensemble`` for the fold's ensemble (``member`` None)."""
        return f"fold{fold}_ensemble" if member is None else f"fold{fold}_member{member}"

    def result(self, fold: int, member: int | None) -> Path:
        return self.tasks / f"{self.task_name(fold, member)}.h5"

    def checkpoint(self, fold: int, member: int) -> Path:
        return self.checkpoints / f"{self.task_name(fold, member)}.ckpt"

    def model(self, fold: int, member: int) -> Path:
        return self.models / f"{self.task_name(fold, member)}.zip"

    def tensorboard(self, fold: int, member: int) -> Path:
        return self.logs / "tensorboard" / self.task_name(fold, member)

    def prepare(self, config: Config) -> None:
        """Create the folders and record the config; refuse a folder that holds another config's run."""
        fingerprint = config_hash(config)
        recorded = self.recorded_hash()
        if recorded is not None and recorded != fingerprint:
            raise ConfigError(
                f"{self.root}: holds a run of another config (hash {recorded}, this one is {fingerprint}); "
                "give this run another name (--set name=...) or remove the folder"
            )
        for folder in (self.tasks, self.checkpoints, self.models, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        if recorded is None:
            with atomic_path(self.config_file) as tmp:
                tmp.write_text(dump(config) + f"{HASH_LINE}{fingerprint}\n")

    def recorded_hash(self) -> str | None:
        """The hash in ``config.yaml``, or None when the run has not started."""
        if not self.config_file.exists():
            return None
        for line in self.config_file.read_text().splitlines():
            if line.startswith(HASH_LINE):
                return line[len(HASH_LINE) :].strip()
        raise ConfigError(f"{self.config_file}: no '{HASH_LINE.strip()}' line; it was not written by Ploutos")
