"""Model and checkpoint files that load without running code.

SB3's own zip stores parts of a model with cloudpickle, and a pickle runs whatever code it names
when it is loaded: a results folder someone else wrote could take over the process that reads
it. Ploutos' files are zips of two members instead:

- ``ploutos.json``: plain JSON (format, kind, config hash, the policy's class name, keyword
  arguments and spaces, counters, RNG states, curves);
- ``tensors.pt``: ``torch.save`` of state dicts and tensors, read back with
  ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.

A model file (``models/fold<F>_member<M>.zip``) holds the policy only: enough to act
(:func:`load_policy` rebuilds the SB3 policy class from the JSON and loads its weights). A
checkpoint holds the policy and optimizer states and the learner's counters: enough to continue
training a fresh model built from the same config (see :mod:`ploutos.train.checkpoint`).

A policy that reads its windows from the store (``env.obs_layout: reference``,
:mod:`ploutos.train.encoders`) is stored with its encoder by name and without the store: the
store is the data, not the model. Whoever loads it passes the arrays its env will trade
(``load_policy(..., values=arrays.values)``) or binds them later (:func:`~ploutos.train.encoders.bind_store`).
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from ploutos.config import Config, config_hash
from ploutos.errors import PloutosError
from ploutos.files import atomic_path
from ploutos.train.encoders import kwargs_from_json, kwargs_to_json
from ploutos.train.model import policy_class, policy_name

META = "ploutos.json"
TENSORS = "tensors.pt"
MODEL_FORMAT = 1


class ArtifactError(PloutosError):
    """A model or checkpoint file that cannot be used: not ours, damaged, of another format or config."""


def write_artifact(path: Path, meta: dict[str, Any], tensors: dict[str, Any]) -> None:
    """``meta`` (plain JSON) and ``tensors`` (tensors in plain containers) as one zip, written atomically."""
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        archive.writestr(META, json.dumps(meta))
        archive.writestr(TENSORS, buffer.getvalue())


def read_artifact(path: Path, kind: str, version: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``meta`` and ``tensors`` of a file of ``kind``, or an :class:`ArtifactError` naming what is wrong."""
    try:
        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read(META))
            blob = archive.read(TENSORS)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as err:
        raise ArtifactError(f"{path}: not a Ploutos {kind} file ({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict) or meta.get("kind") != kind or meta.get("format") != version:
        found = f"{meta.get('kind')} format {meta.get('format')}" if isinstance(meta, dict) else type(meta).__name__
        raise ArtifactError(f"{path}: not a Ploutos {kind} of format {version} (found {found}); train it again")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning: the error below says it all
            warnings.simplefilter("ignore")
            tensors = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as err:  # the weights-only unpickler refuses code with UnpicklingError, damage with others
        raise ArtifactError(f"{path}: unreadable tensors ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(tensors, dict):
        raise ArtifactError(f"{path}: unreadable tensors (a {type(tensors).__name__}, not a mapping)")
    return meta, tensors


# ------------------------------------------------------------------------------ spaces as JSON


def space_to_json(space: spaces.Space) -> dict[str, Any]:
    """A gymnasium space as plain JSON (Box, Discrete, MultiDiscrete and Dict of those)."""
    if isinstance(space, spaces.Box):
        low, high = np.unique(space.low), np.unique(space.high)
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": float(low[0]) if len(low) == 1 else space.low.tolist(),
            "high": float(high[0]) if len(high) == 1 else space.high.tolist(),
        }
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist()}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {key: space_to_json(sub) for key, sub in space.spaces.items()}}
    raise TypeError(f"no JSON form for {type(space).__name__}")


def space_from_json(data: dict[str, Any]) -> spaces.Space:
    kind = data["type"]
    if kind == "Box":
        dtype = np.dtype(data["dtype"])
        low = np.broadcast_to(np.asarray(data["low"], dtype=dtype), data["shape"])
        high = np.broadcast_to(np.asarray(data["high"], dtype=dtype), data["shape"])
        return spaces.Box(low=low.copy(), high=high.copy(), dtype=dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(data["n"]))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(np.asarray(data["nvec"], dtype=np.int64))
    if kind == "Dict":
        return spaces.Dict({key: space_from_json(sub) for key, sub in data["spaces"].items()})
    raise ValueError(f"unknown space type {kind!r}")


# ------------------------------------------------------------------------------ models


def policy_meta(model: Any, config: Config) -> dict[str, Any]:
    """What rebuilds ``model``'s policy: class, keyword arguments and spaces, as plain JSON."""
    return {
        "config_hash": config_hash(config),
        "algo": config.ppo.algo,
        "policy": policy_name(config),
        "policy_kwargs": json.loads(json.dumps(kwargs_to_json(model.policy_kwargs))),
        "observation_space": space_to_json(model.observation_space),
        "action_space": space_to_json(model.action_space),
    }


def save_policy(model: Any, path: Path, config: Config) -> None:
    """``model``'s policy as a model file: what acting needs, nothing that runs code on load."""
    meta = {"kind": "model", "format": MODEL_FORMAT, **policy_meta(model, config)}
    write_artifact(path, meta, {"policy": model.policy.state_dict()})


def build_policy(meta: dict[str, Any], state: dict[str, Any], values: np.ndarray | None = None) -> Any:
    """The SB3 policy described by ``meta`` with the weights ``state``, on the CPU, in evaluation mode;
    a store encoder reads ``values`` (or what :func:`~ploutos.train.encoders.bind_store` gives it later)."""
    cls = policy_class(meta["algo"], meta["policy"])
    policy = cls(
        space_from_json(meta["observation_space"]),
        space_from_json(meta["action_space"]),
        lambda _progress: 0.0,  # the learning rate schedule: acting never steps the optimizer
        **kwargs_from_json(meta["policy_kwargs"], values),
    )
    policy.load_state_dict(state)
    policy.set_training_mode(False)
    return policy


def load_policy(path: Path, run_hash: str, values: np.ndarray | None = None) -> Any:
    """The policy of a model file of the run whose config hash is ``run_hash``, ready to ``predict``
    like an SB3 model (same signature); ``values``: the store a reference policy's rows index."""
    meta, tensors = read_artifact(path, "model", MODEL_FORMAT)
    if meta.get("config_hash") != run_hash:
        raise ArtifactError(f"{path}: model of config {meta.get('config_hash')}, not of this run's config {run_hash}")
    try:
        return build_policy(meta, tensors["policy"], values)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ArtifactError(f"{path}: the policy does not load ({type(err).__name__}: {err})") from None
