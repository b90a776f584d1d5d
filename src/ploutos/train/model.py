"""The learner of one member: which SB3 algorithm and policy a config asks for, built with its
hyperparameters, and the member's seed."""

from __future__ import annotations

from typing import Any

import numpy as np
from sb3_contrib import RecurrentPPO

from ploutos.config import Config
from ploutos.node.hardware import HardwarePlan
from ploutos.train import encoders
from ploutos.train.policies import POLICIES
from ploutos.train.ppo import PPO

OPTIMIZER_KWARGS = {"eps": 1e-5, "foreach": True}
"""Adam's settings: SB3's ``eps``; one multi-tensor step for all parameters (``foreach``), which on the
CPU gives the per-parameter loop's results bitwise in 70-78 % of its time (torch picks it by default
only on GPUs)."""


def member_seed(base: int, fold: int, member: int) -> int:
    """A member's seed: independent streams for every (fold, member) of a base seed."""
    return int(np.random.SeedSequence([base, fold, member]).generate_state(1)[0] & 0x7FFFFFFF)


ALGORITHMS: dict[str, type[PPO] | type[RecurrentPPO]] = {"ppo": PPO, "recurrent_ppo": RecurrentPPO}
"""The SB3 class of each ``ppo.algo`` (PPO: :class:`ploutos.train.ppo.PPO`, SB3's with array rollouts)."""


def algorithm(config: Config) -> type[PPO] | type[RecurrentPPO]:
    """The SB3 class of ``ppo.algo``."""
    return ALGORITHMS[config.ppo.algo]


def policy_name(config: Config) -> str:
    """The policy class name for ``ppo.algo``, ``env.obs_layout`` (a Dict space takes MultiInput) and
    ``ppo.asset_heads``: an SB3 alias or one of :data:`ploutos.train.policies.POLICIES`."""
    if config.ppo.per_asset_heads:
        return "AssetHeadsPolicy"
    base = "MultiInput" if config.env.obs_layout == "asset_lookback_feature" else "Mlp"
    return f"{base}LstmPolicy" if config.ppo.algo == "recurrent_ppo" else f"{base}Policy"


def policy_class(algo: str, name: str) -> Any:
    """The policy class a model file names: one of ploutos's, or an alias of the SB3 algorithm ``algo``."""
    return POLICIES.get(name) or ALGORITHMS[algo].policy_aliases[name]


def policy_kwargs(config: Config, values: np.ndarray | None = None) -> dict[str, Any]:
    """The SB3 policy's keyword arguments; with ``env.obs_layout: reference`` its encoder
    (:mod:`ploutos.train.encoders`, ``ppo.encoder``) reads windows from ``values``, the store the
    envs' rows index (``(T, A, F)``)."""
    ppo = config.ppo
    arch = list(ppo.net_arch)
    kwargs: dict[str, Any] = {
        "net_arch": {"pi": arch, "vf": arch},
        "log_std_init": ppo.log_std_init,
        "optimizer_kwargs": dict(OPTIMIZER_KWARGS),
    }
    if ppo.algo == "recurrent_ppo":
        kwargs["lstm_hidden_size"] = ppo.lstm_hidden
    if config.env.obs_layout == "reference":
        if values is None:
            raise ValueError("env.obs_layout reference: the policy's encoder needs the store's values")
        encoder = encoders.encoder_kwargs(
            ppo.encoder, config.env.lookback, values.shape[2], ppo.encoder_embed, ppo.encoder_heads
        )
        kwargs["features_extractor_class"] = encoders.CLASSES[ppo.encoder]
        kwargs["features_extractor_kwargs"] = {**encoder, "values": values}
    if ppo.per_asset_heads:
        kwargs["head_width"] = ppo.asset_head_width
    return kwargs


def build_model(
    config: Config, venv: Any, layout: HardwarePlan, seed: int | None, values: np.ndarray | None = None,
    algorithm_class: type | None = None,
) -> Any:  # fmt: skip
    """A fresh PPO / RecurrentPPO with the config's hyperparameters on ``venv``; ``values`` is the
    store the envs trade (``arrays.values``), which the encoder of reference observations reads;
    ``algorithm_class`` replaces :func:`algorithm`'s (the benchmarks' plain SB3, which keeps SB3's
    own optimizer settings)."""
    ppo = config.ppo
    kwargs = policy_kwargs(config, values)
    if algorithm_class is not None:
        del kwargs["optimizer_kwargs"]
    return (algorithm_class or algorithm(config))(
        policy_class(ppo.algo, policy_name(config)),
        venv,
        n_steps=ppo.n_steps,
        batch_size=layout.batch_size,
        n_epochs=ppo.n_epochs,
        learning_rate=ppo.learning_rate,
        gamma=ppo.gamma,
        gae_lambda=ppo.gae_lambda,
        clip_range=ppo.clip_range,
        ent_coef=ppo.ent_coef,
        vf_coef=ppo.vf_coef,
        max_grad_norm=ppo.max_grad_norm,
        policy_kwargs=kwargs,
        seed=seed,
        device=layout.device,
        verbose=0,
    )
