"""Where a run's outputs live (see results/README.md), and the guard that keeps runs apart.

A run folder belongs to one resolved config: ``config.yaml`` is written by the first task and
every later task checks its hash, so results of two different configs never mix in one
``summary.h5``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ploutos.config import Config, config_hash, dump
from ploutos.errors import ConfigError
from ploutos.files import atomic_path

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

    @property
    def plan_file(self) -> Path:
        """``plan.json``: ``{"folds": F, "members": M}``, the task grid the launchers submitted."""
        return self.root / "plan.json"

    def task_name(self, fold: int, member: int | None) -> str:
        """``fold<F>_member<M>``, or ``fold<F>_ensemble`` for the fold's ensemble (``member`` None)."""
        return f"fold{fold}_ensemble" if member is None else f"fold{fold}_member{member}"

    def result(self, fold: int, member: int | None) -> Path:
        return self.tasks / f"{self.task_name(fold, member)}.h5"

    def checkpoint(self, fold: int, member: int) -> Path:
        return self.checkpoints / f"{self.task_name(fold, member)}.ckpt"

    def model(self, fold: int, member: int) -> Path:
        return self.models / f"{self.task_name(fold, member)}.zip"

    def lock(self, fold: int, member: int) -> Path:
        """The task's lock (:mod:`ploutos.results.locks`): who trains it now."""
        return self.root / "locks" / f"{self.task_name(fold, member)}.lock"

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
        for folder in (self.root, self.tasks, self.checkpoints, self.models, self.logs):
            if folder.exists() and not folder.is_dir():
                raise ConfigError(f"{folder}: a file where the run folder needs a folder; move it away")
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

    def write_plan(self, folds: int, members: int) -> None:
        """Record the task grid (``folds`` x ``members``) in ``plan.json``, atomically."""
        for key, value in (("folds", folds), ("members", members)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"plan: {key} must be an int >= 1, got {value!r}")
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.plan_file) as tmp:
            tmp.write_text(json.dumps({"folds": folds, "members": members}) + "\n")

    def read_plan(self) -> tuple[int, int] | None:
        """``(folds, members)`` from ``plan.json``, or None when the file does not exist."""
        if not self.plan_file.exists():
            return None
        try:
            data = json.loads(self.plan_file.read_text())
            folds, members = data["folds"], data["members"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(
                f'{self.plan_file}: not a plan ({type(err).__name__}: {err}); expected {{"folds": F, "members": M}}'
            ) from None
        for key, value in (("folds", folds), ("members", members)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{self.plan_file}: {key} must be an int >= 1, got {value!r}")
        return folds, members
