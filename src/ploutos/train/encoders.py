"""Policy encoders that read their feature windows from the store (observations by reference).

With ``env.obs_layout: reference`` an observation is the decision row ``t`` and the portfolio
state (:func:`ploutos.env.trading.reference_space`): the rollout buffer stores ``1 + A + 3``
floats per env step whatever the lookback, assets or features. The encoder holds the fold's store
``values`` (``(T, A, F)`` float32) and gathers the ``(lookback, asset, feature)`` windows of a whole
batch inside ``forward``, one ``index_select`` over the store's rows:

- on the CPU the store is the read-only mapping itself (``torch.from_numpy``, zero-copy);
- on a GPU it is copied to the device once, at the first forward pass there, and kept.

The store is a plain attribute, neither a parameter nor a buffer, so ``state_dict``, checkpoints,
model files, MPI broadcasts and replica digests never see it. A policy built without it (loaded
from a model file) acts only after :func:`bind_store` gives it the arrays its env trades: the row
in an observation is an index into those arrays. Features are 0 on bars that are not ``valid``
(the store's contract), so invalid bars reach the encoder masked already.

Encoders (``ppo.encoder``):

- ``flat``: the window flattened, then the portfolio: bitwise the input today's MLP gets from an
  ``obs_layout: flat`` observation, at the learner's cost (the baseline).
- ``shared``: one small MLP embeds each (asset, bar)'s ``F`` features, with the same weights for
  every asset and bar; a strided temporal convolution summarizes each asset by its mean over the
  lookback and its latest stride (so recent bars stand apart from old ones); the features are
  each asset's summary (a per-asset block), their mean over assets (the market) and the
  portfolio. Its cost grows with ``L * A * F * embed`` multiply-adds instead of
  ``L * A * F * net_arch[0]`` per network, and its parameters do not grow with assets or lookback.
- ``attention``: ``shared``'s per-asset summaries, each plus a learned embedding of its asset, then
  one pre-norm transformer encoder layer across the assets (self-attention, then a feed-forward
  layer, both residual), so each asset's features can depend on the others' (cross-asset
  structure that the mean over assets only averages away); the features are the attended
  per-asset blocks, their mean over assets and the portfolio, of ``shared``'s size. Its
  parameters grow with the assets only through the ``(A, 2 embed)`` identity embedding.

Under PPO the actor of ``shared`` and ``attention`` reads these features per asset
(:mod:`ploutos.train.policies`); :func:`join_features` and :func:`split_features` are the layout
both sides agree on.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from ploutos.env.core import PORTFOLIO_FIELDS
from ploutos.train.update import StridedSummaries, distinct_rows

CACHE_BYTES = 256 * 2**20
"""Largest per-row cache of the shared encoder (``T x A x E`` float32); a larger store computes afresh."""
NOT_SERIALIZED = ("values",)
"""Encoder keyword arguments a model file never stores (the store; :func:`bind_store` gives it back)."""


class StoreEncoder(BaseFeaturesExtractor):
    """Gathers ``(batch, lookback, asset, feature)`` windows from the store for reference observations."""

    def __init__(
        self, observation_space: spaces.Box, features_dim: int, *, lookback: int, n_features: int,
        values: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        super().__init__(observation_space, features_dim)
        shape = observation_space.shape or ()
        if len(shape) != 1 or shape[0] < 2 + PORTFOLIO_FIELDS:
            raise ValueError(f"a store encoder reads reference observations (row, portfolio), got shape {shape}")
        self.lookback, self.n_features = int(lookback), int(n_features)
        self.n_assets = shape[0] - 1 - PORTFOLIO_FIELDS
        self._store: torch.Tensor | None = None
        self._source: np.ndarray | None = None
        self._offsets = torch.arange(1 - self.lookback, 1)
        if values is not None:
            self.bind(values)

    def bind(self, values: np.ndarray) -> None:
        """Read windows from ``values`` (``(T, A, F)`` float32, only ever read) from now on."""
        if values is self._source:
            return
        if values.dtype != np.float32 or values.ndim != 3 or values.shape[1:] != (self.n_assets, self.n_features):
            raise ValueError(
                f"the store has shape {values.shape} of {values.dtype}; this encoder reads (T, {self.n_assets}, "
                f"{self.n_features}) float32"
            )
        with warnings.catch_warnings():  # a read-only mapping: torch warns that it cannot mark the tensor so
            warnings.simplefilter("ignore", UserWarning)
            self._store = torch.from_numpy(values)
        self._source = values

    def windows(self, observations: torch.Tensor) -> torch.Tensor:
        """The ``(B, L, A, F)`` windows ending at each observation's row (oldest bar first).

        Rows are clamped to ``[L - 1, T - 1]``: RecurrentPPO pads sequences with zero observations
        and SB3 may feed space samples; what they read is masked or discarded by the caller. The
        envs never emit a row outside it.
        """
        store = self.store_on(observations.device)
        index = self.window_rows(observations).reshape(-1)
        return store.index_select(0, index).view(len(observations), self.lookback, self.n_assets, self.n_features)

    def window_rows(self, observations: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` the store rows of each observation's window (see :meth:`windows` for the clamp)."""
        if self._offsets.device != observations.device:
            self._offsets = self._offsets.to(observations.device)
        return self.decision_rows(observations)[:, None] + self._offsets[None, :]

    def decision_rows(self, observations: torch.Tensor) -> torch.Tensor:
        """``(B,)`` each observation's decision row, clamped to ``[L - 1, T - 1]``."""
        store = self._store
        if store is None:
            raise RuntimeError("the encoder has no store: bind_store(policy, arrays.values) before acting")
        return observations[:, 0].round().long().clamp(self.lookback - 1, store.shape[0] - 1)

    def store_on(self, device: torch.device) -> torch.Tensor:
        """The store on ``device`` (a GPU learner: one copy per task, kept)."""
        store = self._store
        if store is None:
            raise RuntimeError("the encoder has no store: bind_store(policy, arrays.values) before acting")
        if store.device != device:
            store = self._store = store.to(device)
        return store

    @staticmethod
    def portfolio(observations: torch.Tensor) -> torch.Tensor:
        return observations[:, 1:]


class FlatStoreEncoder(StoreEncoder):
    """The window flattened (time, asset, feature) then the portfolio: today's MLP input, gathered."""

    def __init__(
        self, observation_space: spaces.Box, *, lookback: int, n_features: int, values: np.ndarray | None = None
    ) -> None:
        n_assets = observation_space.shape[0] - 1 - PORTFOLIO_FIELDS
        size = lookback * n_assets * n_features + n_assets + PORTFOLIO_FIELDS
        super().__init__(observation_space, size, lookback=lookback, n_features=n_features, values=values)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        windows = self.windows(observations)
        return torch.cat([windows.reshape(len(windows), -1), self.portfolio(observations)], dim=1)


class SharedStoreEncoder(StoreEncoder):
    """One embedding per (asset, bar) shared across assets and bars; time, then assets, pooled.

    ``embed``: width ``E`` of the per-(asset, bar) embedding (``Linear(F, E)``, ReLU) and of the
    temporal convolution; ``kernel``: the convolution's kernel and stride over the lookback (the
    largest divisor of the lookback at most this). The convolution (``E -> E`` over ``kernel``
    bars, ReLU; a ``Linear(kernel * E, E)`` applied to each stride of each asset) gives one output
    per stride. Each asset's summary (``2 E``) is their mean over the lookback, then the latest
    stride's output: the convolution is the same at every stride, so a mean alone could not tell
    the latest bars from the oldest, and it varies little from one decision to the next (a policy
    reading it barely changes its action across states).

    With gradients (PPO's update) everything runs on the batch's distinct store rows, as one
    autograd node whose backward is written out (:class:`ploutos.train.update.StridedSummaries`): a
    minibatch of 256 windows of 32 bars names about 8k rows, 580 of them distinct at 2 envs. Each
    row is embedded once; the convolution runs at stride 1 along the sorted distinct rows (a
    window's bars are consecutive rows, all present, so the ``kernel`` positions ending at a
    stride's last bar hold exactly that stride's bars) and each window reads its strides by
    position. Without gradients (a rollout, an evaluation) stride outputs are kept per store row
    (:meth:`_summaries_from_cache`).
    """

    def __init__(
        self, observation_space: spaces.Box, *, lookback: int, n_features: int, embed: int = 16, kernel: int = 4,
        values: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        n_assets = observation_space.shape[0] - 1 - PORTFOLIO_FIELDS
        size = n_assets * 2 * embed + 2 * embed + n_assets + PORTFOLIO_FIELDS
        super().__init__(observation_space, size, lookback=lookback, n_features=n_features, values=values)
        self.embed_dim = int(embed)
        self.summary_dim = 2 * self.embed_dim
        """Width of each asset's summary: the window's mean stride output, then the latest stride's."""
        self.kernel = max(d for d in range(1, max(1, min(int(kernel), lookback)) + 1) if lookback % d == 0)
        self.embed = nn.Sequential(nn.Linear(n_features, embed), nn.ReLU())
        self.temporal = nn.Linear(self.kernel * embed, embed)
        """The strided convolution: input ``i * E + e`` is embedding ``e`` of the stride's ``i``-th bar
        (``Conv1d.weight[o, e, i] == temporal.weight[o, i * E + e]``; same initialization)."""
        self._ends = self._offsets[self.kernel - 1 :: self.kernel].clone()
        """Offsets from the decision row of each stride's last bar."""
        self._stride = self._offsets[-self.kernel :].clone()
        """Offsets from a stride's last bar of its bars, oldest first."""
        self._cache: tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor] | None = None
        """(store, the weights it was computed with, convolution output per store row, which rows are known)."""

    def bind(self, values: np.ndarray) -> None:
        if values is not self._source:
            self._cache = None
        super().bind(values)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return join_features(self.asset_blocks(observations), self.portfolio(observations))

    def asset_blocks(self, observations: torch.Tensor) -> torch.Tensor:
        """``(B, A, 2 E)``: the per-asset blocks of the features (:func:`join_features`)."""
        return self.asset_summaries(observations)

    def asset_summaries(self, observations: torch.Tensor) -> torch.Tensor:
        """``(B, A, 2 E)``: each asset's summary (:meth:`_pooled`)."""
        if not torch.is_grad_enabled() and self._cacheable():
            return self._summaries_from_cache(observations)
        store = self.store_on(observations.device)
        places, runs = distinct_rows(self.decision_rows(observations), self.lookback)
        return StridedSummaries.apply(
            store, runs, places, self.embed[0].weight, self.embed[0].bias, self.temporal.weight, self.temporal.bias,
            self.kernel, self.lookback,
        )  # fmt: skip

    @staticmethod
    def _pooled(strides: torch.Tensor) -> torch.Tensor:
        """``(B, A, 2 E)``: the ``(B, L / kernel, A, E)`` stride outputs' mean, then the latest's."""
        mean = strides.sum(dim=1) / strides.shape[1]  # a mean whose backward expands, not divides, B x L/k x A x E
        return torch.cat([mean, strides[:, -1]], dim=-1)

    def _cacheable(self) -> bool:
        """Whether the per-row cache fits :data:`CACHE_BYTES` for this store."""
        store = self._store
        return store is not None and store.shape[0] * self.n_assets * self.embed_dim * 4 <= CACHE_BYTES

    def _summaries_from_cache(self, observations: torch.Tensor) -> torch.Tensor:
        """The summaries without gradients, from convolution outputs kept per store row.

        A rollout or an evaluation steps each env one row at a time with fixed weights: of a
        window's ``L / kernel`` stride outputs all but one were computed at earlier steps. They are
        kept per store row (``T x A x E`` floats, allocated at the first call) and forgotten whenever
        the embedding's or convolution's weights (compared in full, however they were changed:
        optimizer, MPI broadcast, load) or the store change.
        """
        store = self.store_on(observations.device)
        cache = self._cache
        cached = [*self.embed.parameters(), *self.temporal.parameters()]  # what the stride outputs depend on
        if cache is None or cache[0] is not store or not all(map(torch.equal, cached, cache[1])):
            weights = [p.detach().clone() for p in cached]
            outputs = torch.empty((store.shape[0], self.n_assets, self.embed_dim), device=store.device)
            known = torch.zeros(store.shape[0], dtype=torch.bool, device=store.device)
            cache = self._cache = (store, weights, outputs, known)
        _, _, outputs, known = cache
        kernel, n_assets, width = self.kernel, self.n_assets, self.embed_dim
        if self._ends.device != store.device:
            self._ends, self._stride = self._ends.to(store.device), self._stride.to(store.device)
        rows = self.decision_rows(observations)
        ends = (rows[:, None] + self._ends[None, :]).reshape(-1)  # (B * L / kernel,): each stride's last bar
        missing = torch.masked_select(ends, known.index_select(0, ends).logical_not())
        if len(missing):
            missing = torch.unique(missing)
            bars = (missing[:, None] + self._stride[None, :]).reshape(-1)  # (M * kernel,), oldest first per stride
            embedded = self.embed(store.index_select(0, bars)).view(len(missing), kernel, n_assets, width)
            strides = embedded.transpose(1, 2).reshape(len(missing), n_assets, kernel * width)
            outputs.index_copy_(0, missing, torch.relu(self.temporal(strides)))
            known.index_fill_(0, missing, True)
        return self._pooled(outputs.index_select(0, ends).view(len(rows), -1, n_assets, width))


class AttentionStoreEncoder(SharedStoreEncoder):
    """``shared``'s per-asset summaries, then one self-attention layer across the assets.

    ``heads``: attention heads (must divide ``embed``). The layer is
    ``nn.TransformerEncoderLayer(E, heads, dim_feedforward=2 * E, dropout=0, norm_first=True)``:
    pre-norm, so each asset's summary reaches the output through the residual path unnormalized
    (the usual stable choice for a layer trained from scratch); no dropout, because PPO's ratio
    compares log-probabilities of the same actions across forward passes and dropout would make
    them disagree for the same weights.

    Attention is permutation-equivariant across its tokens, and the summaries carry nothing that
    says which asset they came from (the embedding and convolution are shared across assets), so
    a learned ``(A, E)`` identity embedding is added to them first. The MLP after the encoder
    knows each block's position anyway; inside the layer, without it, an asset could attend to
    another only by what its summary looks like, never by which asset it is (a pair that moves
    together, a market that leads). It starts small (normal, std 0.02) so the summaries dominate
    at first.
    """

    def __init__(
        self, observation_space: spaces.Box, *, lookback: int, n_features: int, embed: int = 16, kernel: int = 4,
        heads: int = 2, values: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        if int(heads) < 1 or int(embed) % int(heads):
            raise ValueError(f"the attention encoder's heads ({heads}) must divide its embedding width ({embed})")
        super().__init__(
            observation_space, lookback=lookback, n_features=n_features, embed=embed, kernel=kernel, values=values
        )
        self.heads = int(heads)
        self.identity = nn.Parameter(torch.empty(self.n_assets, self.summary_dim))
        nn.init.normal_(self.identity, std=0.02)
        self.attention = nn.TransformerEncoderLayer(
            d_model=self.summary_dim, nhead=self.heads, dim_feedforward=2 * self.summary_dim, dropout=0.0,
            batch_first=True, norm_first=True,
        )  # fmt: skip

    def asset_blocks(self, observations: torch.Tensor) -> torch.Tensor:
        return self.attention(self.asset_summaries(observations) + self.identity)


def join_features(assets: torch.Tensor, portfolio: torch.Tensor) -> torch.Tensor:
    """The features of ``shared`` and ``attention``: the ``(B, A, W)`` per-asset blocks flattened,
    their mean over assets (the market), then the ``(B, A + 3)`` portfolio."""
    return torch.cat([assets.reshape(len(assets), -1), assets.mean(dim=1), portfolio], dim=1)


def split_features(
    features: torch.Tensor, n_assets: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of :func:`join_features`: per-asset blocks ``(B, A, W)``, market ``(B, W)``, portfolio."""
    blocks = n_assets * width
    assets = features[:, :blocks].view(len(features), n_assets, width)
    return assets, features[:, blocks : blocks + width], features[:, blocks + width :]


CLASSES: dict[str, type[StoreEncoder]] = {
    "flat": FlatStoreEncoder,
    "shared": SharedStoreEncoder,
    "attention": AttentionStoreEncoder,
}
"""The features extractor of each ``ppo.encoder`` for reference observations."""


def encoder_kwargs(name: str, lookback: int, n_features: int, embed: int, heads: int = 2) -> dict[str, Any]:
    """The JSON-safe keyword arguments of encoder ``name`` (without the store)."""
    kwargs: dict[str, Any] = {"lookback": int(lookback), "n_features": int(n_features)}
    if name in ("shared", "attention"):
        kwargs["embed"] = int(embed)
    if name == "attention":
        kwargs["heads"] = int(heads)
    return kwargs


def kwargs_to_json(policy_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``policy_kwargs`` with the encoder class by name and without the store, for a model file."""
    found = dict(policy_kwargs)
    cls = found.pop("features_extractor_class", None)
    if cls is not None:
        names = {klass: name for name, klass in CLASSES.items()}
        if cls not in names:
            raise TypeError(f"no JSON form for the features extractor {cls.__name__}")
        found["encoder"] = names[cls]
        extra = found.pop("features_extractor_kwargs", None) or {}
        found["encoder_kwargs"] = {k: v for k, v in extra.items() if k not in NOT_SERIALIZED}
    return found


def kwargs_from_json(data: dict[str, Any], values: np.ndarray | None = None) -> dict[str, Any]:
    """The policy keyword arguments a model file recorded, the encoder's store given back (or later)."""
    found = dict(data)
    name = found.pop("encoder", None)
    if name is not None:
        if name not in CLASSES:
            raise ValueError(f"unknown encoder {name!r}")
        found["features_extractor_class"] = CLASSES[name]
        found["features_extractor_kwargs"] = {**found.pop("encoder_kwargs", {}), "values": values}
    return found


def store_encoders(actor: Any) -> list[StoreEncoder]:
    """The store encoders of an SB3 model, a policy, or an ensemble of them (``members``)."""
    if hasattr(actor, "members"):
        return [encoder for member in actor.members for encoder in store_encoders(member)]
    policy = getattr(actor, "policy", actor)
    if not isinstance(policy, nn.Module):
        return []
    return [module for module in policy.modules() if isinstance(module, StoreEncoder)]


def bind_store(actor: Any, values: np.ndarray) -> None:
    """Make every store encoder of ``actor`` read ``values``: the arrays its observations' rows index."""
    for encoder in store_encoders(actor):
        encoder.bind(values)


@contextmanager
def reading(actor: Any, values: np.ndarray) -> Iterator[None]:
    """Every store encoder of ``actor`` reads ``values`` inside the block, and what it read before after.

    Evaluation trades arrays of its own (the fold's test window, a replay's features): the rows in
    its observations index those, whatever the policy trained on.
    """
    found = store_encoders(actor)
    before = [encoder._source for encoder in found]
    for encoder in found:
        encoder.bind(values)
    try:
        yield
    finally:
        for encoder, source in zip(found, before, strict=True):
            if source is not None:
                encoder.bind(source)
