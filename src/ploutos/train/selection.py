"""Model selection on the validation window: which of a member's checkpoints is kept.

Every ``walkforward.validate_every`` steps the policy trades the fold's validation window (the
last ``validation_months`` of its training window, never trained on) deterministically, through
the same env and costs as the test; the checkpoint with the best ``walkforward.select_by`` metric
is kept. A policy that never trades scores Sharpe 0 (flat), so a policy that loses after costs
is not preferred to doing nothing. With ``patience`` the training stops after that many
validations without improvement. The test window is evaluated once, on the kept checkpoint, by
the task's record step; nothing here reads it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ploutos.config import Config
from ploutos.features.arrays import FeatureArrays
from ploutos.train.evaluate import run_policy
from ploutos.train.folds import Fold

CURVE_COLUMNS = ("timesteps", "score", "sharpe", "total_return", "turnover", "cost_drag")
"""Columns of the validation curve: ``score`` is the metric that selects (see :func:`score_of`)."""


def score_of(metrics: dict[str, float], select_by: str) -> float:
    """The selection score of validation metrics: NaN Sharpe (no variance: flat) counts as 0."""
    value = metrics["total_return"] if select_by == "total_return" else metrics["sharpe"]
    return 0.0 if math.isnan(value) else float(value)


@dataclass
class Selection:
    """The validation curve so far and the best checkpoint's policy weights."""

    curve: dict[str, list[float]] = field(default_factory=lambda: {column: [] for column in CURVE_COLUMNS})
    best_timesteps: int = -1
    """Timesteps of the kept checkpoint; -1 before the first validation."""
    best_score: float = -math.inf
    since_best: int = 0
    """Validations since the best one."""
    best_policy: dict[str, torch.Tensor] | None = None

    def state(self) -> dict[str, Any]:
        """Everything but the weights, as JSON (for checkpoints and the task file)."""
        return {
            "curve": self.curve,
            "best_timesteps": self.best_timesteps,
            "best_score": self.best_score if math.isfinite(self.best_score) else None,
            "since_best": self.since_best,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], best_policy: dict[str, torch.Tensor] | None) -> Selection:
        score = state.get("best_score")
        return cls(
            curve={column: [float(v) for v in state["curve"][column]] for column in CURVE_COLUMNS},
            best_timesteps=int(state["best_timesteps"]),
            best_score=-math.inf if score is None else float(score),
            since_best=int(state["since_best"]),
            best_policy=best_policy,
        )


class Validator:
    """Validates a member's policy on its fold's validation window and keeps the best weights."""

    def __init__(self, config: Config, fold: Fold, arrays: FeatureArrays, selection: Selection | None = None) -> None:
        self.config, self.fold, self.arrays = config, fold, arrays
        self.wf = config.walkforward
        self.enabled = fold.validation_bars >= 2
        self.selection = selection or Selection()
        self.last = self.selection.curve["timesteps"][-1] if self.selection.curve["timesteps"] else 0

    def due(self, timesteps: int) -> bool:
        return self.enabled and timesteps > 0 and timesteps - self.last >= self.wf.validate_every

    def validate(self, model: Any, timesteps: int) -> None:
        """Trade the validation window with ``model`` and keep its weights if they score best."""
        self.last = timesteps
        rows = self.fold.validation_rows(self.config.env.lookback)
        path = run_policy(model, self.arrays, self.config.env, rows, self.config.data.bars_per_year)
        metrics = path.metrics(self.config.data.bars_per_year).as_dict()
        score = score_of(metrics, self.wf.select_by)
        selection = self.selection
        row = {"timesteps": float(timesteps), "score": score, **{k: float(metrics[k]) for k in CURVE_COLUMNS[2:]}}
        for column in CURVE_COLUMNS:
            selection.curve[column].append(row[column])
        if self.wf.select_by == "last" or score > selection.best_score:
            selection.best_score, selection.best_timesteps, selection.since_best = score, timesteps, 0
            selection.best_policy = copy.deepcopy(model.policy.state_dict())
        else:
            selection.since_best += 1

    @property
    def exhausted(self) -> bool:
        """Patience ran out: no better validation for ``patience`` validations."""
        return self.enabled and self.wf.patience > 0 and self.selection.since_best >= self.wf.patience

    def keep_best(self, model: Any) -> None:
        """Load the best validated weights into ``model`` (nothing without a validation)."""
        if self.selection.best_policy is not None:
            model.policy.load_state_dict(self.selection.best_policy)

    def record(self) -> dict[str, Any]:
        """The validation curve and the choice, for the task file (empty without a validation window)."""
        if not self.enabled:
            return {}
        selection = self.selection
        return {
            **{column: list(values) for column, values in selection.curve.items()},
            "chosen_timesteps": selection.best_timesteps,
            "chosen_score": selection.best_score if math.isfinite(selection.best_score) else math.nan,
            "metric": self.wf.select_by,
            "validation_start": self.fold.bounds()["validation_start"],
            "validation_rows": [self.fold.validation.start, self.fold.validation.stop],
            "stopped_early": bool(self.exhausted),
        }
