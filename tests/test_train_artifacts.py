"""Model files: the saved policy acts exactly as the trained model, and loading a file runs no code."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

from ploutos.bench.env import synthetic_arrays
from ploutos.config import config_hash, load
from ploutos.env.trading import TradingEnv
from ploutos.node.hardware import plan
from ploutos.train.artifacts import (
    ArtifactError,
    load_policy,
    save_policy,
    space_from_json,
    space_to_json,
)
from ploutos.train.model import build_model

ARRAYS = synthetic_arrays(400, 2, 5)


def _model(algo: str, obs_layout: str = "flat", action_mode: str = "continuous", encoder: str = "flat"):
    config = load(
        "quickstart",
        [
            f"ppo.algo={algo}",
            f"env.obs_layout={obs_layout}",
            f"env.action_mode={action_mode}",
            f"ppo.encoder={encoder}",
        ],
    )
    config = replace(config, env=replace(config.env, lookback=8))
    venv = DummyVecEnv([lambda: TradingEnv(ARRAYS, config.env, rows=slice(0, 400), bars_per_year=24 * 365)] * 2)
    layout = replace(plan(config), n_steps=32, batch_size=32, device="cpu")
    model = build_model(config, venv, layout, seed=3, values=ARRAYS.values)
    model.learn(64)  # weights that differ from the initialization
    return config, venv, model


@pytest.mark.parametrize(
    ("algo", "obs_layout", "action_mode", "encoder"),
    [
        ("ppo", "flat", "continuous", "flat"),
        ("ppo", "asset_lookback_feature", "discrete", "flat"),
        ("recurrent_ppo", "flat", "continuous", "flat"),
        ("ppo", "reference", "continuous", "shared"),
        ("ppo", "reference", "discrete", "attention"),
        ("recurrent_ppo", "reference", "continuous", "attention"),
        ("recurrent_ppo", "reference", "discrete", "flat"),
    ],
)
def test_a_saved_policy_acts_as_the_model(tmp_path: Path, algo: str, obs_layout: str, action_mode: str, encoder: str):
    config, venv, model = _model(algo, obs_layout, action_mode, encoder)
    path = tmp_path / "models" / "fold0_member0.zip"
    save_policy(model, path, config)
    if obs_layout == "reference":  # the store is data, not model: the file holds none of it
        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read("ploutos.json"))
            tensors = torch.load(io.BytesIO(archive.read("tensors.pt")), weights_only=True)
        assert all(t.shape != ARRAYS.values.shape for t in tensors["policy"].values())
        assert meta["policy_kwargs"]["encoder"] == encoder and "values" not in meta["policy_kwargs"]["encoder_kwargs"]
        assert "features_extractor_class" not in meta["policy_kwargs"]
    policy = load_policy(path, config_hash(config), values=ARRAYS.values)
    observation = venv.reset()
    state_a = state_b = None
    starts = np.ones(venv.num_envs, dtype=bool)
    for _ in range(20):
        action_a, state_a = model.predict(observation, state_a, starts, deterministic=True)
        action_b, state_b = policy.predict(observation, state_b, starts, deterministic=True)
        np.testing.assert_array_equal(action_a, action_b)
        observation, _, dones, _ = venv.step(action_a)
        starts = dones
    venv.close()


def test_spaces_round_trip_through_json():
    for space in (
        spaces.Box(-np.inf, np.inf, (3, 4), np.float32),
        spaces.Box(np.array([0.0, -1.0]), np.array([1.0, 1.0]), dtype=np.float64),
        spaces.Discrete(5),
        spaces.MultiDiscrete([3, 3, 3]),
        spaces.Dict({"window": spaces.Box(-1, 1, (2, 2), np.float32), "portfolio": spaces.Box(0, 1, (3,), np.float32)}),
    ):
        data = json.loads(json.dumps(space_to_json(space)))
        assert space_from_json(data) == space


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_model_file_runs_no_code_and_an_sb3_zip_is_refused(tmp_path: Path):
    config, venv, model = _model("ppo")
    venv.close()
    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.zip"
    save_policy(model, crafted, config)
    with zipfile.ZipFile(crafted) as archive:
        meta = archive.read("ploutos.json")
    with zipfile.ZipFile(crafted, "w") as archive:
        archive.writestr("ploutos.json", meta)
        archive.writestr("tensors.pt", pickle.dumps(_RunsCode(marker)))
    sb3_zip = tmp_path / "sb3.zip"
    model.save(sb3_zip)  # SB3's own format: cloudpickled parts, refused before anything is unpickled
    for path in (crafted, sb3_zip, tmp_path / "absent.zip"):
        with pytest.raises(ArtifactError) as info:
            load_policy(path, config_hash(config))
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_a_model_of_another_config_is_refused(tmp_path: Path):
    config, venv, model = _model("ppo")
    venv.close()
    save_policy(model, tmp_path / "m.zip", config)
    with pytest.raises(ArtifactError, match="not of this run's config 0000"):
        load_policy(tmp_path / "m.zip", "0000")
