"""The rollout forward of per-asset heads on the ``shared`` encoder, compiled (numba).

A rollout asks the policy for the actions of a handful of observations at every vec-env step,
with fixed weights. In torch that forward is some sixty small calls (module dispatch, argument
checks, allocations): 1.2-1.5 ms at 2 envs on 2 cores, three quarters of a rollout step, whatever
the batch. The same arithmetic in one compiled pass takes tens of microseconds.

:class:`CompiledHeads` computes, for a batch of reference observations, what
:class:`~ploutos.train.policies.AssetHeadsPolicy` computes: each asset's action mean, the
critic's value, and the Gaussian action and its log-probability from standard normal draws it is
given (the policy draws them from torch's generator). Like the encoder's torch path it keeps the
convolution output of every stride it computed, per store row, and also each bar's embedding (a
rollout moves one row a step: one new bar to embed per env); it forgets them all when the
embedding or the convolution weights differ from the copy it kept (compared in full at each call,
as they may change in any way: optimizer, MPI broadcast, load) or when the store changes. Its
caches are its own: the torch path's validity rules stay untouched.

Products are summed in float32 in whatever order the compiler vectorizes them (``reassoc``), as
a BLAS does, so the results agree with torch's to float32 rounding, not bitwise (a test holds them
to 1e-5); no flag assumes finite values, so NaN weights still give NaN means, which the policy
refuses. Training never reads them: PPO's update recomputes everything in torch with gradients;
the rollout buffer keeps the values and log-probabilities computed from these, as it keeps torch's.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from torch import nn

LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))
"""The Gaussian log-density's constant, as ``torch.distributions.Normal.log_prob`` computes it."""
FASTMATH = {"reassoc", "contract"}
"""Reorder and fuse sums (vectorized dot products); nothing that assumes finite values."""


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _dot(weight: np.ndarray, row: int, values: np.ndarray) -> np.float32:
    total = np.float32(0.0)
    for j in range(values.shape[0]):
        total += weight[row, j] * values[j]
    return total


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _tanh_in_place(values: np.ndarray) -> None:
    """tanh of float32 ``values``, in place, by Eigen's rational approximation (``ptanh_float``):
    within 2.7e-7 of the exact value, vectorized (``np.tanh`` is a scalar call: 10 x slower here).
    NaN stays NaN (the clamp compares, it does not take a max)."""
    for i in range(values.shape[0]):
        v = values[i]
        if v > np.float32(7.90531110763549805):
            v = np.float32(7.90531110763549805)
        elif v < np.float32(-7.90531110763549805):
            v = np.float32(-7.90531110763549805)
        v2 = v * v
        p = np.float32(-2.76076847742355e-16)
        p = p * v2 + np.float32(2.00018790482477e-13)
        p = p * v2 + np.float32(-8.60467152213735e-11)
        p = p * v2 + np.float32(5.12229709037114e-08)
        p = p * v2 + np.float32(1.48572235717979e-05)
        p = p * v2 + np.float32(6.37261928875436e-04)
        p = p * v2 + np.float32(4.89352455891786e-03)
        q = np.float32(1.19825839466702e-06)
        q = q * v2 + np.float32(1.18534705686654e-04)
        q = q * v2 + np.float32(2.26843463243900e-03)
        q = q * v2 + np.float32(4.89352518554385e-03)
        values[i] = v * p / q


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _fill_strides(
    store: np.ndarray, ends: np.ndarray, outputs: np.ndarray, known: np.ndarray, embedded: np.ndarray,
    w_embed: np.ndarray, b_embed: np.ndarray, w_conv: np.ndarray, b_conv: np.ndarray,
) -> None:  # fmt: skip
    """Store the convolution output of every stride ending at a row of ``ends`` that ``known`` lacks.

    ``known`` ``(2, T)``: whether a row's stride output (0) and embedding (1) are in ``outputs``
    and ``embedded`` (``(T, A, E)`` each): a rollout moves one row a step, so each stride embeds
    one new bar and reads the others' embeddings. ``w_conv`` ``(E, kernel * E)``: input
    ``i * E + e`` is embedding ``e`` of the stride's ``i``-th bar.
    """
    n_assets = store.shape[1]
    width = w_embed.shape[0]
    kernel = w_conv.shape[1] // width
    bars = np.empty(kernel * width, dtype=np.float32)
    for end in ends:
        if known[0, end]:
            continue
        for bar in range(end - kernel + 1, end + 1):
            if not known[1, bar]:
                for a in range(n_assets):
                    for e in range(width):
                        embedded[bar, a, e] = max(b_embed[e] + _dot(store[bar], a, w_embed[e]), np.float32(0.0))
                known[1, bar] = True
        for a in range(n_assets):
            for i in range(kernel):
                bars[i * width : (i + 1) * width] = embedded[end - kernel + 1 + i, a]
            for o in range(width):
                outputs[end, a, o] = max(b_conv[o] + _dot(w_conv, o, bars), np.float32(0.0))
        known[0, end] = True


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _forget_if_changed(kept: tuple, weights: tuple, known: np.ndarray) -> None:  # type: ignore[type-arg]
    """Copy ``weights`` into ``kept`` and clear ``known`` when any differs (NaN counts as a change);
    both tuples of flat arrays."""
    changed = False
    for k in range(len(kept)):
        old, new = kept[k], weights[k]
        for j in range(new.shape[0]):  # no early exit: the loop vectorizes
            changed |= old[j] != new[j]  # NaN differs from everything, itself included
    if changed:
        for k in range(len(kept)):
            kept[k][:] = weights[k]
        known[...] = False


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def heads_forward(
    observations: np.ndarray, lookback: int, store: np.ndarray, outputs: np.ndarray, known: np.ndarray,
    embedded: np.ndarray, kept: tuple, flat_encoder: tuple, encoder: tuple, heads: tuple, critic_weights: tuple,  # type: ignore[type-arg]
    critic_biases: tuple, log_std: np.ndarray, noise: np.ndarray,  # type: ignore[type-arg]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:  # fmt: skip
    """``(actions (B, A), values (B, 1), log-probabilities (B,), whether every mean is a number)`` of
    reference ``observations`` ``(B, 1 + A + 3)``: Gaussian actions, the means plus ``noise`` (standard
    normal draws; zeros: the means) times ``exp(log_std)``.

    ``encoder``: embedding weight and bias, convolution weight and bias (``flat_encoder``: the same
    flattened; ``kept``: their copies the cached ``outputs`` and ``embedded`` were computed with;
    ``known``: see :func:`_fill_strides`); ``heads``: the
    per-asset hidden layer's weight and bias, the output's weight and bias; the critic: its linear
    layers' weights and biases, tanh between them. Rows are clamped to ``[lookback - 1, T - 1]`` as
    the torch path clamps them. The features are :func:`~ploutos.train.encoders.join_features`'
    (each asset's mean and latest stride output, their mean over assets, the portfolio); the heads
    read ``[asset summary, market, cash share, log return, drawdown, the asset's weight]``, the
    part shared by every asset summed once.
    """
    _forget_if_changed(kept, flat_encoder, known)
    w_embed, b_embed, w_conv, b_conv = encoder
    w_head, b_head, w_out, b_out = heads
    batch = observations.shape[0]
    n_rows, n_assets = store.shape[0], store.shape[1]
    width = w_embed.shape[0]
    kernel = w_conv.shape[1] // width
    n_strides = lookback // kernel
    summary = 2 * width
    n_portfolio = observations.shape[1] - 1
    n_state = n_portfolio - n_assets
    n_hidden = w_head.shape[0]
    features = np.empty(n_assets * summary + summary + n_portfolio, dtype=np.float32)
    actions = np.empty((batch, n_assets), dtype=np.float32)
    values = np.empty((batch, 1), dtype=np.float32)
    log_prob = np.empty(batch, dtype=np.float32)
    ends = np.empty(n_strides, dtype=np.int64)
    context = np.empty(summary + n_state, dtype=np.float32)
    shared = np.empty(n_hidden, dtype=np.float32)
    hidden = np.empty((n_assets, n_hidden), dtype=np.float32)
    sums = np.empty((n_assets, width), dtype=np.float32)
    w_asset = np.ascontiguousarray(w_head[:, :summary])
    w_context = np.ascontiguousarray(w_head[:, summary : 2 * summary + n_state])
    w_held = np.ascontiguousarray(w_head[:, 2 * summary + n_state])
    scale = np.exp(log_std)
    log_scale = np.log(scale) + np.float32(LOG_SQRT_2PI)
    finite = True
    market = features[n_assets * summary : n_assets * summary + summary]
    for b in range(batch):
        row = min(max(np.int64(round(observations[b, 0])), lookback - 1), n_rows - 1)
        for s in range(n_strides):
            ends[s] = row - lookback + (s + 1) * kernel
        _fill_strides(store, ends, outputs, known, embedded, w_embed, b_embed, w_conv, b_conv)
        sums[...] = 0.0
        for s in range(n_strides):
            sums += outputs[ends[s]]
        market[:] = 0.0
        for a in range(n_assets):
            block = features[a * summary : (a + 1) * summary]
            block[:width] = sums[a] / np.float32(n_strides)
            block[width:] = outputs[row, a]
            market += block
        market /= np.float32(n_assets)
        features[n_assets * summary + summary :] = observations[b, 1:]
        context[:summary] = market
        context[summary:] = observations[b, 1 + n_assets :]
        for h in range(n_hidden):
            shared[h] = b_head[h] + _dot(w_context, h, context)
        for a in range(n_assets):
            block = features[a * summary : (a + 1) * summary]
            held = observations[b, 1 + a]
            for h in range(n_hidden):
                hidden[a, h] = shared[h] + _dot(w_asset, h, block) + w_held[h] * held
        _tanh_in_place(hidden.reshape(-1))
        total_log_prob = np.float32(0.0)
        for a in range(n_assets):
            mean = b_out[0] + _dot(w_out, 0, hidden[a])
            finite = finite and mean == mean
            step = noise[b, a] * scale[a]
            actions[b, a] = mean + step
            total_log_prob -= step * step / (np.float32(2.0) * scale[a] * scale[a]) + log_scale[a]
        log_prob[b] = total_log_prob
        layer = features
        for k in range(len(critic_weights)):
            weight, bias = critic_weights[k], critic_biases[k]
            out = np.empty(weight.shape[0], dtype=np.float32)
            for h in range(weight.shape[0]):
                out[h] = bias[h] + _dot(weight, h, layer)
            if k < len(critic_weights) - 1:
                _tanh_in_place(out)
            layer = out
        values[b, 0] = layer[0]
    return actions, values, log_prob, finite


class CompiledHeads:
    """The compiled rollout forward of one policy: numpy views of its weights, its own caches.

    ``encoder``: the :class:`~ploutos.train.encoders.SharedStoreEncoder`; ``head`` and ``output``:
    the per-asset hidden and output layers; ``critic``: the critic's linear layers then the value's;
    ``log_std``: the Gaussian's log standard deviations. The caches (``2 x T x A x E`` float32)
    are allocated at the first call on a store.
    """

    def __init__(
        self, encoder: nn.Module, head: nn.Linear, output: nn.Linear, critic: list[nn.Linear], log_std: nn.Parameter
    ) -> None:
        self.encoder = encoder
        modules = (encoder.embed[0], encoder.temporal, head, output, *critic)
        self._params = [*(p for module in modules for p in (module.weight, module.bias)), log_std]
        self._pointers: list[int] = []
        self._arguments: tuple[tuple[np.ndarray, ...], ...] = ()
        self._log_std = np.empty(0, dtype=np.float32)
        self._store: np.ndarray | None = None
        self._read_only = np.empty((0, 0, 0), dtype=np.float32)
        """The store as a read-only view: one compiled variant of the kernel whatever the caller's flags."""
        self._caches: tuple[np.ndarray, ...] = ()

    def _weights(self) -> tuple[tuple[np.ndarray, ...], ...]:
        """The kernel's weight arguments (numpy views), made again when any parameter's memory moved
        (a load into new tensors, a ``to``)."""
        pointers = [p.data_ptr() for p in self._params]
        if pointers != self._pointers:
            views = [p.detach().numpy() for p in self._params]
            critic = views[8:-1]
            encoder = tuple(views[:4])
            flat = tuple(view.reshape(-1) for view in encoder)
            self._arguments = (flat, encoder, tuple(views[4:8]), tuple(critic[0::2]), tuple(critic[1::2]))
            self._log_std = views[-1]
            self._pointers = pointers
            self._store = None  # the kept weights are the old tensors' shapes
        return self._arguments

    def __call__(self, observations: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """:func:`heads_forward` of float32 ``observations`` with this policy's weights and caches."""
        store = self.encoder._source
        arguments = self._weights()
        if store is not self._store:
            shape = (store.shape[0], store.shape[1], self.encoder.embed_dim)
            outputs, embedded = np.empty(shape, dtype=np.float32), np.empty(shape, dtype=np.float32)
            known = np.zeros((2, store.shape[0]), dtype=np.bool_)
            kept = tuple(np.full_like(flat, np.nan) for flat in arguments[0])
            self._caches, self._store = (outputs, known, embedded, kept), store
            self._read_only = store.view()
            self._read_only.flags.writeable = False
        return heads_forward(  # type: ignore[no-any-return]
            observations, self.encoder.lookback, self._read_only, *self._caches, *arguments, self._log_std, noise
        )

    @staticmethod
    def cache_bytes(store_shape: tuple[int, ...], embed: int) -> int:
        """Bytes of the caches for a ``(T, A, F)`` store: stride outputs and embeddings, float32."""
        return 2 * store_shape[0] * store_shape[1] * embed * 4


def compile_kernels(critic_layers: int = 3) -> None:
    """Compile :func:`heads_forward` for the argument types a rollout passes (the store read-only, as
    :class:`CompiledHeads` passes it; ``critic_layers`` linear layers: ``len(ppo.net_arch) + 1``), so
    the machine code is cached before the first training run (setup calls this: about 18 s cold)."""
    rows, n_assets, n_features, width, kernel, lookback = 16, 2, 3, 2, 2, 4
    store = np.zeros((rows, n_assets, n_features), dtype=np.float32)
    store.flags.writeable = False
    shape = (rows, n_assets, width)
    encoder = (
        np.zeros((width, n_features), np.float32), np.zeros(width, np.float32),
        np.zeros((width, kernel * width), np.float32), np.zeros(width, np.float32),
    )  # fmt: skip
    heads = (np.zeros((3, 4 * width + 4), np.float32), np.zeros(3, np.float32), np.zeros((1, 3), np.float32),
             np.zeros(1, np.float32))  # fmt: skip
    features = n_assets * 2 * width + 2 * width + n_assets + 3
    sizes = [features] + [4] * (critic_layers - 1) + [1]
    weights = tuple(np.zeros((sizes[k + 1], sizes[k]), np.float32) for k in range(critic_layers))
    biases = tuple(np.zeros(sizes[k + 1], np.float32) for k in range(critic_layers))
    observations = np.zeros((1, 1 + n_assets + 3), np.float32)
    observations[0, 0] = rows - 1
    flat = tuple(array.reshape(-1) for array in encoder)
    heads_forward(
        observations, lookback, store, np.empty(shape, np.float32), np.zeros((2, rows), np.bool_),
        np.empty(shape, np.float32), tuple(np.zeros_like(f) for f in flat), flat, encoder, heads, weights, biases,
        np.zeros(n_assets, np.float32), np.zeros((1, n_assets), np.float32),
    )  # fmt: skip
