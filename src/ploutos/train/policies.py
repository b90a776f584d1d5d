"""Per-asset action heads: the actor of PPO on the ``shared`` and ``attention`` encoders.

SB3's ``MlpPolicy`` maps the encoder's features through one MLP to all ``A`` action outputs, so
asset ``a``'s action depends on asset ``b``'s summary through weights learned for that pair: the
actor's parameters grow with the assets and what it learns about one asset never transfers to
another. :class:`AssetHeadsPolicy` keeps SB3's policy (distribution, critic, optimizer, PPO's
loss) and replaces only the actor: one small network, the same for every asset, reads

====================  =====  ===============================================================
input                 width  the encoder's features (:func:`~ploutos.train.encoders.split_features`)
====================  =====  ===============================================================
the asset's summary   2E     its block of per-asset features (attended, with ``attention``)
the market            2E     the mean of the per-asset blocks
the asset's weight    1      the portfolio state
the portfolio         3      cash share, log return, drawdown
====================  =====  ===============================================================

through one hidden layer (``width``, the policy's activation), then one linear output per asset:
its Gaussian mean (continuous actions) or its 3 logits (discrete). The critic is SB3's MLP over
all the features (``net_arch["vf"]``). The actor's parameters do not grow with the assets.

RecurrentPPO keeps SB3's actor: its LSTM mixes the assets before the actor sees them, so there
is no per-asset input left for a head to read.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import MlpExtractor
from torch import nn

from ploutos.env.core import PORTFOLIO_FIELDS
from ploutos.train.encoders import CACHE_BYTES, SharedStoreEncoder, split_features
from ploutos.train.rollout import LOG_SQRT_2PI, CompiledHeads
from ploutos.train.update import AssetHeadsPass


class AssetHeads(nn.Module):
    """The actor's per-asset hidden layer and the critic's MLP (SB3's ``mlp_extractor`` contract)."""

    def __init__(
        self, encoder: SharedStoreEncoder, width: int, value_arch: list[int], activation: type[nn.Module],
        device: torch.device | str,
    ) -> None:  # fmt: skip
        super().__init__()
        self.n_assets, self.summary, self.width = encoder.n_assets, encoder.summary_dim, int(width)
        self.head = nn.Sequential(nn.Linear(2 * self.summary + 1 + PORTFOLIO_FIELDS, self.width), activation())
        self.critic = MlpExtractor(encoder.features_dim, {"pi": [], "vf": value_arch}, activation, device)
        self.latent_dim_pi = self.n_assets * self.width
        self.latent_dim_vf = self.critic.latent_dim_vf
        self.to(device)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, A * width)``: each asset's hidden layer, asset-major."""
        assets, market, portfolio = split_features(features, self.n_assets, self.summary)
        batch, n_assets = len(features), self.n_assets
        weights = portfolio[:, :n_assets, None]
        context = torch.cat([market, portfolio[:, n_assets:]], dim=1)[:, None, :].expand(batch, n_assets, -1)
        return self.head(torch.cat([assets, context, weights], dim=2)).reshape(batch, n_assets * self.width)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.critic.forward_critic(features)


class AssetOutputs(nn.Module):
    """One ``Linear(width, outputs)`` applied to every asset's hidden layer: ``(B, A * outputs)``, asset-major."""

    def __init__(self, n_assets: int, width: int, outputs: int) -> None:
        super().__init__()
        self.n_assets, self.width = int(n_assets), int(width)
        self.linear = nn.Linear(self.width, int(outputs))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.linear(latent.view(len(latent), self.n_assets, self.width)).reshape(len(latent), -1)


class AssetHeadsPolicy(ActorCriticPolicy):
    """SB3's actor-critic policy with per-asset action heads; ``head_width``: the heads' hidden width.

    Needs a ``shared`` or ``attention`` encoder (``features_extractor_class``) and an action space
    with the same number of outputs for every asset (``Box(A)``: 1, ``MultiDiscrete([3] * A)``: 3).
    """

    compiled_rollout = True
    """Whether the policy acts compiled where it can (:meth:`forward` without gradients, :meth:`act_arrays`)."""

    def __init__(self, *args: Any, head_width: int = 32, **kwargs: Any) -> None:
        self.head_width = int(head_width)
        self._critic_linears: list[nn.Linear] | None = None
        self._compiled: CompiledHeads | None = None
        self._compiled_source: tuple[object, bool] = (None, False)
        self._noise = torch.empty(0)
        super().__init__(*args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "head_width": self.head_width}

    def _build_mlp_extractor(self) -> None:
        encoder = self.features_extractor
        if not isinstance(encoder, SharedStoreEncoder):
            raise TypeError(f"per-asset heads read a shared or attention encoder, not {type(encoder).__name__}")
        value_arch = self.net_arch["vf"] if isinstance(self.net_arch, dict) else list(self.net_arch)
        self.mlp_extractor = AssetHeads(encoder, self.head_width, value_arch, self.activation_fn, self.device)

    def forward(
        self, obs: torch.Tensor, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SB3's forward (actions, values, log-probabilities), Gaussian actions in closed form.

        A rollout calls this once per vec-env step on a handful of rows, where each torch call
        costs more than its arithmetic: without ``torch.distributions.Normal`` (its object, its
        argument checks) this forward went from 1.34 to 1.20 ms at 2 envs on 2 cores. The
        same expressions on the same random draws give bitwise SB3's actions and log-probabilities
        (a test compares them); discrete actions and anything but a plain diagonal Gaussian go
        through SB3's path.

        Without gradients, on the CPU, on the ``shared`` encoder (a rollout), actions, values and
        log-probabilities come from one compiled pass on the same draws (:meth:`act_arrays`,
        :mod:`ploutos.train.rollout`: 1.2 -> 0.16 ms a call at 2 envs), equal to the torch path's
        to float32 rounding; ``compiled_rollout = False`` turns it off.
        """
        # exactly the plain Gaussian: a subclass (SB3's squashed one) transforms its samples
        if type(self.action_dist) is not DiagGaussianDistribution or not self.share_features_extractor:
            return super().forward(obs, deterministic)
        if not torch.is_grad_enabled() and self._compiled_applies(obs):
            return self._compiled_forward(obs, deterministic)
        latent_pi, latent_vf = self.mlp_extractor(self.extract_features(obs))
        values = self.value_net(latent_vf)
        mean = self.action_net(latent_pi)
        if torch.isnan(mean).any():  # what Normal's argument check would have caught
            raise ValueError("the policy's action means are NaN: its weights diverged (lower the learning rate)")
        scale = torch.ones_like(mean) * self.log_std.exp()
        actions = mean if deterministic else mean + torch.empty_like(mean).normal_() * scale
        log_prob = (-((actions - mean) ** 2) / (2 * scale**2) - scale.log() - LOG_SQRT_2PI).sum(dim=1)
        return actions.reshape((-1, *self.action_space.shape)), values, log_prob

    def evaluate_actions(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """SB3's ``evaluate_actions`` (values, log-probabilities, entropy), Gaussian in closed form.

        PPO's update calls this once per minibatch; ``torch.distributions.Normal`` validates its
        arguments and sample there (full passes over the batch, and their backward). The same
        expressions as ``Normal.log_prob`` and ``Normal.entropy``, summed over the action
        dimensions as SB3 sums them, give bitwise SB3's results (a test compares them).

        With a tanh critic and one output per asset, the heads and the critic run as one autograd
        node (:class:`ploutos.train.update.AssetHeadsPass`), as the ``shared`` encoder does: the
        same values and gradients to float32 rounding, in three quarters of the time (15 assets, 2 envs).
        """
        if type(self.action_dist) is not DiagGaussianDistribution or not self.share_features_extractor:
            return super().evaluate_actions(obs, actions)
        if self.update_written_out:  # one node for heads and critic (ploutos.train.update)
            encoder = self.features_extractor
            head, output = self.mlp_extractor.head[0], self.action_net.linear
            critic = [tensor for layer in self._critic_linears for tensor in (layer.weight, layer.bias)]
            mean, values = AssetHeadsPass.apply(
                encoder.asset_blocks(obs), encoder.portfolio(obs), head.weight, head.bias, output.weight, output.bias,
                *critic,
            )  # fmt: skip
        else:
            latent_pi, latent_vf = self.mlp_extractor(self.extract_features(obs))
            mean, values = self.action_net(latent_pi), self.value_net(latent_vf)
        scale = torch.ones_like(mean) * self.log_std.exp()
        log_scale = scale.log()
        log_prob = (-((actions - mean) ** 2) / (2 * scale**2) - log_scale - LOG_SQRT_2PI).sum(dim=1)
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + log_scale).sum(dim=1)
        return values, log_prob, entropy

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        n_assets = self.mlp_extractor.n_assets
        outputs, remainder = divmod(self.action_net.out_features, n_assets)
        if remainder:
            raise ValueError(f"{self.action_net.out_features} action outputs do not split over {n_assets} assets")
        self.action_net = AssetOutputs(n_assets, self.head_width, outputs).to(self.device)
        if self.ortho_init:  # SB3's gain for the action output: near-zero means, near-uniform logits at first
            self.action_net.apply(lambda module: self.init_weights(module, gain=0.01))
        # the optimizer super() built holds the replaced output layer's parameters
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)
        self._critic_linears = self._tanh_critic()

    @property
    def update_written_out(self) -> bool:
        """Whether PPO's update runs this policy's heads and critic as one written-out pass
        (:class:`~ploutos.train.update.AssetHeadsPass`; :meth:`_tanh_critic`)."""
        return self._critic_linears is not None

    def _tanh_critic(self) -> list[nn.Linear] | None:
        """The critic's linear layers then the value's, when what the written-out passes compute is
        this policy: tanh everywhere, one output per asset (Box actions) (else None)."""
        critic = self.mlp_extractor.critic.value_net
        layers = list(critic)
        alternating = (
            all(isinstance(layer, nn.Linear if i % 2 == 0 else nn.Tanh) for i, layer in enumerate(layers))
            and len(layers) % 2 == 0
        )
        compilable = self.activation_fn is nn.Tanh and self.action_net.linear.out_features == 1 and alternating
        return [*layers[::2], self.value_net] if compilable else None

    def _compiled_applies(self, obs: torch.Tensor) -> bool:
        return obs.device.type == "cpu" and obs.dtype == torch.float32 and self.compiled_arrays_apply()

    def compiled_arrays_apply(self) -> bool:
        """Whether :meth:`act_arrays` computes (this policy's layers, its store's size), given float32
        observations on the CPU; with ``compiled_rollout`` off, False."""
        if (
            self._critic_linears is None
            or type(self.features_extractor) is not SharedStoreEncoder
            or not self.compiled_rollout
            or type(self.action_dist) is not (DiagGaussianDistribution)
        ):
            return False
        source = self.features_extractor._source
        if source is not self._compiled_source[0]:  # the store's size decides; asked once per store
            fits = isinstance(source, np.ndarray) and (
                CompiledHeads.cache_bytes(source.shape, self.features_extractor.embed_dim) <= 2 * CACHE_BYTES
            )
            self._compiled_source = (source, fits)
        return self._compiled_source[1]

    def act_arrays(self, observations: np.ndarray, deterministic: bool = False) -> tuple[np.ndarray, ...]:
        """``(actions, values (B, 1), log-probabilities (B,))`` of float32 ``observations`` as numpy
        arrays, by :class:`ploutos.train.rollout.CompiledHeads` (when :meth:`compiled_arrays_apply`);
        the draws from torch's generator, as the torch path draws them."""
        if self._compiled is None:
            head, output = self.mlp_extractor.head[0], self.action_net.linear
            critic = self._critic_linears or []
            self._compiled = CompiledHeads(self.features_extractor, head, output, critic, self.log_std)
        shape = (len(observations), self.mlp_extractor.n_assets)
        if deterministic:
            noise = np.zeros(shape, dtype=np.float32)
        else:  # drawn into a kept tensor (the same draws as a new one's): a rollout asks at every step
            if self._noise.shape != shape:
                self._noise = torch.empty(shape)
            noise = self._noise.normal_().numpy()
        actions, values, log_prob, finite = self._compiled(observations, noise)
        if not finite:
            raise ValueError("the policy's action means are NaN: its weights diverged (lower the learning rate)")
        return actions.reshape((-1, *self.action_space.shape)), values, log_prob

    def _compiled_forward(
        self, obs: torch.Tensor, deterministic: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` by :meth:`act_arrays`."""
        actions, values, log_prob = self.act_arrays(obs.numpy(), deterministic)
        return torch.from_numpy(actions), torch.from_numpy(values), torch.from_numpy(log_prob)


POLICIES: dict[str, type[ActorCriticPolicy]] = {"AssetHeadsPolicy": AssetHeadsPolicy}
"""Ploutos's policy classes by the name a model file records (beside SB3's aliases)."""
