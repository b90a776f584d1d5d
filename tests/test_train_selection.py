"""Model selection on the validation window: the best validated weights are kept, flat beats losing, patience
stops training, and nothing of the test window is read."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from ploutos.bench.env import synthetic_arrays
from ploutos.config import load
from ploutos.train.folds import Fold
from ploutos.train.selection import Selection, Validator, score_of

ARRAYS = synthetic_arrays(600, 2, 3, seed=3)
DAY = np.datetime64("2020-01-01T00:00:00", "us")
FOLD = Fold(0, slice(0, 300), slice(400, 600), DAY, DAY, DAY, DAY, 24, slice(324, 376), DAY)


class FixedPolicy(torch.nn.Module):
    """A model whose deterministic action is a constant weight vector (its one parameter)."""

    def __init__(self, weights: list[float]) -> None:
        super().__init__()
        self.weights = torch.nn.Parameter(torch.tensor(weights))

    @property
    def policy(self) -> FixedPolicy:
        return self

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        return self.weights.detach().numpy().copy(), state


def config(**walkforward):
    base = load("quickstart", ["env.lookback=8", "env.cost_profile=equity"])
    return replace(base, walkforward=replace(base.walkforward, validate_every=1, **walkforward))


def test_flat_scores_zero_and_a_losing_policy_below_it():
    assert score_of({"sharpe": math.nan, "total_return": 0.0}, "sharpe") == 0.0
    assert score_of({"sharpe": -1.5, "total_return": -0.01}, "sharpe") == -1.5
    assert score_of({"sharpe": -1.5, "total_return": -0.01}, "total_return") == -0.01


def test_the_best_validated_weights_are_kept_and_recorded():
    validator = Validator(config(), FOLD, ARRAYS)
    model = FixedPolicy([0.0, 0.0])
    candidates = {1: [0.5, -0.5], 2: [0.0, 0.0], 3: [-0.5, 0.5], 4: [0.3, 0.3]}
    for timesteps, weights in candidates.items():
        model.weights.data = torch.tensor(weights)
        validator.validate(model, timesteps)
    curve = validator.selection.curve
    best = int(np.argmax(curve["score"]))
    assert validator.selection.best_timesteps == curve["timesteps"][best] == best + 1
    validator.keep_best(model)
    assert model.weights.tolist() == pytest.approx(candidates[best + 1])
    record = validator.record()
    assert record["chosen_timesteps"] == best + 1 and record["metric"] == "sharpe"
    assert record["timesteps"] == [1.0, 2.0, 3.0, 4.0] and record["validation_rows"] == [324, 376]
    assert curve["turnover"][1] == 0.0  # flat never trades


def test_patience_runs_out_after_that_many_validations_without_improvement():
    validator = Validator(config(patience=2), FOLD, ARRAYS)
    model = FixedPolicy([0.0, 0.0])  # flat: the same score every time, never better
    for timesteps in range(1, 4):
        assert not validator.exhausted
        validator.validate(model, timesteps)
    assert validator.exhausted and validator.selection.best_timesteps == 1


def test_validation_reads_nothing_of_the_test_window():
    poisoned = ARRAYS.prices.copy()
    poisoned[FOLD.test.start :] *= np.linspace(0.5, 3.0, poisoned.shape[0] - FOLD.test.start)[:, None, None]
    values = ARRAYS.values.copy()
    values[FOLD.test.start :] = np.nan
    records = []
    for arrays in (ARRAYS, replace(ARRAYS, prices=poisoned, values=values)):
        validator = Validator(config(), FOLD, arrays)
        validator.validate(FixedPolicy([0.7, -0.2]), 1)
        records.append(validator.record())
    assert records[0] == records[1]


def test_selection_survives_a_checkpoint_round_trip():
    validator = Validator(config(), FOLD, ARRAYS)
    validator.validate(FixedPolicy([0.4, 0.1]), 5)
    state = validator.selection.state()
    again = Selection.from_state(state, validator.selection.best_policy)
    assert again.state() == state and again.best_policy is validator.selection.best_policy
    assert Validator(config(), FOLD, ARRAYS, again).last == 5
