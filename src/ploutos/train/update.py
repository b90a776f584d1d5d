"""PPO's update pass of the ``shared`` encoder and the per-asset heads, their backward written out.

PPO's update runs the policy forward and backward once per minibatch. Built from autograd
operations, at 15 assets and 2 envs that cost 19 ms a minibatch of 256, about 5 ms of it matrix
products; the rest was the engine's bookkeeping around some 150 nodes and the copies it makes
for slices and concatenations: the convolution over shifted slices of the embedded rows had a
slice backward per kernel position (a zero-filled copy of the whole embedding each), the pooling
gathered every window's every stride and scattered them back, and the heads' and the critic's
inputs were concatenations whose backward is a slice each. Here each part is one autograd node
whose backward writes every gradient where it belongs, with the same arithmetic:

- :class:`StridedSummaries`: the encoder's embedding, strided convolution and pooling (kernel
  products accumulate into one buffer, the mean over strides is a sliding sum gathered once per
  window, ReLU's backward the kernel autograd uses);
- :class:`AssetHeadsPass`: the per-asset hidden layer as a product of each asset's block plus a
  product of what every asset shares (the market, the portfolio state, computed once per sample
  instead of once per asset), the output layer, and the critic's tanh MLP;
- :func:`clipped_loss`: PPO's loss on the minibatch's ``B`` log-probabilities, values and
  entropies, and its gradients, in one compiled pass (``ploutos.train.ppo.PPO.train``).

Windows are consecutive store rows, so the batch's distinct rows are the union of ``B`` intervals:
sorting the decision rows alone (not all ``B x L`` window rows) gives each window's place among
them and the runs of consecutive rows, each embedded where it lies in the store (no gathered copy).
A test holds values and gradients to autograd's over the same modules (float32 rounding: sums
run in another order) and to ``torch.autograd.gradcheck`` in float64.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numba
import numpy as np
import torch
from torch.autograd.function import once_differentiable


def distinct_rows(decisions: torch.Tensor, lookback: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Each window's last bar's index among the batch's distinct rows ``(B,)``, and those rows as runs
    of consecutive store rows ``[(first, stop), ...]``, ascending.

    ``decisions``: the ``(B,)`` decision rows, each at least ``lookback - 1``; a window covers
    ``decision - lookback + 1 ... decision``.
    """
    ordered, inverse = torch.unique(decisions, return_inverse=True)
    steps = ordered[1:] - ordered[:-1]
    # a window adds the rows its predecessor's did not cover: min(step, lookback)
    placed = torch.cat([ordered.new_full((1,), lookback - 1), steps.clamp(max=lookback)]).cumsum(0)
    breaks = torch.nonzero(steps > lookback).flatten()
    firsts = torch.cat([ordered[:1], ordered[breaks + 1]]) - (lookback - 1)
    stops = torch.cat([ordered[breaks], ordered[-1:]]) + 1
    runs = list(zip(firsts.tolist(), stops.tolist(), strict=True))
    return placed.index_select(0, inverse), runs


class StridedSummaries(torch.autograd.Function):
    """``(B, A, 2 E)`` summaries: each window's mean stride output over the lookback, then its latest's.

    Inputs: the store ``(T, A, F)``; the runs and last-bar places of :func:`distinct_rows`; the
    embedding's ``Linear(F, E)`` weight and bias; the convolution's ``Linear(kernel * E, E)``
    weight and bias (input ``i * E + e``: embedding ``e`` of a stride's ``i``-th bar); the kernel
    (the stride) and the lookback (a multiple of it).
    """

    @staticmethod
    def forward(
        ctx: Any, store: torch.Tensor, runs: list[tuple[int, int]], places: torch.Tensor, embed_weight: torch.Tensor,
        embed_bias: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor, kernel: int, lookback: int,
    ) -> torch.Tensor:  # fmt: skip
        n_assets, n_features = store.shape[1], store.shape[2]
        width = embed_weight.shape[0]
        total = sum(stop - first for first, stop in runs)
        embedded = store.new_empty((total, n_assets, width))
        at = 0
        for first, stop in runs:
            rows = stop - first
            torch.addmm(
                embed_bias, store[first:stop].reshape(rows * n_assets, n_features), embed_weight.t(),
                out=embedded[at : at + rows].view(rows * n_assets, width),
            )  # fmt: skip
            at += rows
        embedded.relu_()
        # position p: the stride ending at distinct row p + kernel - 1 (across a run's end: never read)
        count = total - kernel + 1
        outputs = store.new_empty((count, n_assets, width))
        flat = outputs.view(count * n_assets, width)
        last = (kernel - 1) * width
        torch.addmm(conv_bias, _rows(embedded, kernel - 1, count), conv_weight[:, last:].t(), out=flat)
        for i in range(kernel - 1):
            flat.addmm_(_rows(embedded, i, count), conv_weight[:, i * width : (i + 1) * width].t())
        outputs.relu_()
        strides = lookback // kernel
        span = count - kernel * (strides - 1)  # positions whose window of strides lies inside the rows
        totals = outputs[:span].clone()
        for j in range(1, strides):
            totals += outputs[j * kernel : j * kernel + span]
        firsts = places - (lookback - 1)  # each window's first stride's position
        latest = firsts + kernel * (strides - 1)
        summaries = torch.cat([totals.index_select(0, firsts).div_(strides), outputs.index_select(0, latest)], dim=2)
        ctx.save_for_backward(embedded, outputs, firsts, latest, conv_weight)
        ctx.store, ctx.runs, ctx.kernel, ctx.strides = store, runs, kernel, strides
        return summaries

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        embedded, outputs, firsts, latest, conv_weight = ctx.saved_tensors
        store, runs, kernel, strides = ctx.store, ctx.runs, ctx.kernel, ctx.strides
        total, n_assets, width = embedded.shape
        count, n_features = outputs.shape[0], store.shape[2]
        span = count - kernel * (strides - 1)
        grad_totals = grad.new_zeros((span, n_assets, width))
        grad_totals.index_add_(0, firsts, grad[..., :width], alpha=1.0 / strides)
        grad_outputs = grad.new_zeros((count, n_assets, width))
        grad_outputs.index_add_(0, latest, grad[..., width:])
        for j in range(strides):
            grad_outputs[j * kernel : j * kernel + span] += grad_totals
        grad_outputs = _relu_backward(grad_outputs, outputs)
        grad_flat = grad_outputs.view(count * n_assets, width)
        grad_conv_bias = grad_flat.sum(0)
        parts = grad.new_empty((kernel, width, width))
        grad_embedded = grad.new_zeros((total, n_assets, width))
        for i in range(kernel):
            torch.mm(grad_flat.t(), _rows(embedded, i, count), out=parts[i])
            _rows(grad_embedded, i, count).addmm_(grad_flat, conv_weight[:, i * width : (i + 1) * width])
        grad_conv_weight = parts.transpose(0, 1).reshape(width, kernel * width)
        grad_embedded = _relu_backward(grad_embedded, embedded)
        grad_embed_bias = grad_embedded.view(total * n_assets, width).sum(0)
        grad_embed_weight = grad.new_zeros((width, n_features))
        at = 0
        for first, stop in runs:
            rows = stop - first
            grad_embed_weight.addmm_(
                _rows(grad_embedded, at, rows).t(), store[first:stop].reshape(rows * n_assets, n_features)
            )
            at += rows
        return None, None, None, grad_embed_weight, grad_embed_bias, grad_conv_weight, grad_conv_bias, None, None


def _rows(values: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """``values[start : start + count]`` of a ``(N, A, E)`` tensor as a ``(count * A, E)`` matrix."""
    return values[start : start + count].view(-1, values.shape[2])


def _relu_backward(grad: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    """``grad`` where ReLU's ``result`` is positive, else 0: the kernel ReLU's own backward runs (one
    vectorized pass; a boolean mask and ``masked_fill_`` took 10 x as long on the CPU)."""
    return torch.ops.aten.threshold_backward(grad, result, 0.0)


class AssetHeadsPass(torch.autograd.Function):
    """Each asset's action mean ``(B, A)`` and the critic's value ``(B, 1)`` from the encoder's
    per-asset blocks ``(B, A, W)`` and the portfolio ``(B, A + 3)``: what
    :class:`~ploutos.train.policies.AssetHeads`, the policy's one-output ``action_net`` and its
    ``value_net`` compute from :func:`~ploutos.train.encoders.join_features`, tanh everywhere.

    Inputs after those two: the hidden layer's weight ``(H, 2 W + 1 + 3)`` (columns: the asset's
    block, the market, the portfolio state, the asset's weight) and bias, the output layer's
    ``(1, H)`` weight and bias, then the critic's linear layers' weights and biases, the value
    layer's last.
    """

    @staticmethod
    def forward(
        ctx: Any, blocks: torch.Tensor, portfolio: torch.Tensor, head_weight: torch.Tensor, head_bias: torch.Tensor,
        out_weight: torch.Tensor, out_bias: torch.Tensor, *critic: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        batch, n_assets, width = blocks.shape
        market = blocks.mean(dim=1)
        held, state = portfolio[:, :n_assets], portfolio[:, n_assets:]
        w_block, w_market, w_state, w_held = _head_columns(head_weight, width)
        shared = torch.addmm(head_bias, market, w_market.t()).addmm_(state, w_state.t())  # (B, H)
        hidden = torch.mm(blocks.reshape(batch * n_assets, width), w_block.t()).view(batch, n_assets, -1)
        hidden += shared[:, None, :]
        hidden.addcmul_(held[:, :, None], w_held).tanh_()
        flat_hidden = hidden.view(batch * n_assets, -1)
        mean = torch.addmm(out_bias, flat_hidden, out_weight.t()).view(batch, n_assets)
        layers = [torch.cat([blocks.reshape(batch, n_assets * width), market, portfolio], dim=1)]
        for weight, bias in zip(critic[:-2:2], critic[1:-2:2], strict=True):
            layers.append(torch.addmm(bias, layers[-1], weight.t()).tanh_())
        value = torch.addmm(critic[-1], layers[-1], critic[-2].t())
        ctx.save_for_backward(blocks, portfolio, head_weight, out_weight, flat_hidden, market, *layers, *critic[::2])
        ctx.n_critic = len(critic) // 2
        return mean, value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_mean: torch.Tensor, grad_value: torch.Tensor) -> tuple[Any, ...]:
        blocks, portfolio, head_weight, out_weight, flat_hidden, market, *rest = ctx.saved_tensors
        layers, critic_weights = rest[: ctx.n_critic], rest[ctx.n_critic :]
        batch, n_assets, width = blocks.shape
        held, state = portfolio[:, :n_assets], portfolio[:, n_assets:]
        w_block, w_market, w_state, w_held = _head_columns(head_weight, width)
        per_output = grad_mean.reshape(batch * n_assets, 1)
        grad_out_weight = torch.mm(per_output.t(), flat_hidden)
        grad_out_bias = grad_mean.sum().reshape(1)
        grad_hidden = torch.ops.aten.tanh_backward(torch.mm(per_output, out_weight), flat_hidden)  # (B A, H)
        grad_shared = grad_hidden.view(batch, n_assets, -1).sum(dim=1)  # (B, H)
        grad_head_weight = torch.cat(
            [
                torch.mm(grad_hidden.t(), blocks.reshape(batch * n_assets, width)),
                torch.mm(grad_shared.t(), market),
                torch.mm(grad_shared.t(), state),
                torch.mm(grad_hidden.t(), held.reshape(batch * n_assets, 1)),
            ],
            dim=1,
        )  # fmt: skip
        grad_head_bias = grad_shared.sum(dim=0)
        grad_critic: list[torch.Tensor] = []
        grad = grad_value
        for k in reversed(range(ctx.n_critic)):
            grad_critic[:0] = [torch.mm(grad.t(), layers[k]), grad.sum(dim=0)]
            grad = torch.mm(grad, critic_weights[k])
            if k > 0:
                grad = torch.ops.aten.tanh_backward(grad, layers[k])
        grad_blocks = grad_portfolio = None
        if ctx.needs_input_grad[0]:
            grad_market = torch.addmm(grad[:, n_assets * width : (n_assets + 1) * width], grad_shared, w_market)
            grad_blocks = torch.mm(grad_hidden, w_block).view(batch, n_assets, width)
            grad_blocks += grad[:, : n_assets * width].view(batch, n_assets, width)
            grad_blocks += (grad_market / n_assets)[:, None, :]
        if ctx.needs_input_grad[1]:
            grad_portfolio = grad[:, (n_assets + 1) * width :].clone()
            grad_portfolio[:, :n_assets] += torch.mm(grad_hidden, w_held[:, None]).view(batch, n_assets)
            grad_portfolio[:, n_assets:] += torch.mm(grad_shared, w_state)
        return (
            grad_blocks, grad_portfolio, grad_head_weight, grad_head_bias, grad_out_weight, grad_out_bias,
            *grad_critic,
        )  # fmt: skip


def _head_columns(weight: torch.Tensor, width: int) -> tuple[torch.Tensor, ...]:
    """The hidden layer's weight by input: the asset's block, the market, the portfolio state, the asset's weight."""
    return weight[:, :width], weight[:, width : 2 * width], weight[:, 2 * width : -1], weight[:, -1]


class LossFigures(NamedTuple):
    """What SB3's PPO logs about one minibatch's loss."""

    policy_loss: float
    value_loss: float
    entropy_loss: float
    clip_fraction: float
    approx_kl: float


def clipped_loss(
    log_prob: torch.Tensor, values: torch.Tensor, entropy: torch.Tensor, old_log_prob: torch.Tensor,
    advantages: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, *, clip_range: float,
    clip_range_vf: float | None, ent_coef: float, vf_coef: float, normalize_advantage: bool,
) -> tuple[torch.Tensor, LossFigures]:  # fmt: skip
    """SB3's PPO loss of one minibatch (clipped surrogate, value and entropy terms) and its figures,
    by one compiled pass over the ``(B,)`` CPU tensors that also writes the loss's gradients.

    In torch it is some 40 calls on 256 numbers and 20 autograd nodes, about 1 ms of a 17 ms
    minibatch at 2 envs; the pass takes microseconds. Sums run in float64 (torch's in float32);
    the gradient of the minimum at a tie is torch's (half to each side: the whole when the ratio is
    inside the clip range, where the sides are equal).
    """
    gradients = np.empty((3, len(log_prob)), dtype=np.float32)
    arrays = [t.detach().numpy() for t in (log_prob, values, entropy, old_log_prob, advantages, old_values, returns)]
    loss, *figures = _clipped_loss(
        *arrays, float(clip_range), -1.0 if clip_range_vf is None else float(clip_range_vf), float(ent_coef),
        float(vf_coef), bool(normalize_advantage), gradients,
    )  # fmt: skip
    return _WithGradients.apply(log_prob, values, entropy, torch.from_numpy(gradients), loss), LossFigures(*figures)


class _WithGradients(torch.autograd.Function):
    """A scalar whose gradients with respect to its three inputs are given."""

    @staticmethod
    def forward(
        ctx: Any, log_prob: torch.Tensor, values: torch.Tensor, entropy: torch.Tensor, gradients: torch.Tensor,
        value: float,
    ) -> torch.Tensor:  # fmt: skip
        ctx.save_for_backward(gradients)
        return log_prob.new_tensor(value)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (gradients,) = ctx.saved_tensors
        scaled = gradients * grad
        return scaled[0], scaled[1], scaled[2], None, None


@numba.njit(cache=True, nogil=True)
def _clipped_loss(
    log_prob: np.ndarray, values: np.ndarray, entropy: np.ndarray, old_log_prob: np.ndarray, advantages: np.ndarray,
    old_values: np.ndarray, returns: np.ndarray, clip_range: float, clip_range_vf: float, ent_coef: float,
    vf_coef: float, normalize: bool, gradients: np.ndarray,
) -> tuple[float, float, float, float, float, float]:  # fmt: skip
    """``(loss, policy loss, value loss, entropy loss, clip fraction, approximate KL)``; ``gradients``
    ``(3, B)``: the loss's with respect to the log-probabilities, values and entropies.
    ``clip_range_vf`` below 0: no value clipping."""
    n = log_prob.shape[0]
    shift, scale = 0.0, 1.0
    if normalize and n > 1:  # SB3: (advantages - mean) / (std + 1e-8), std with Bessel's correction
        shift = advantages.astype(np.float64).mean()
        spread = 0.0
        for i in range(n):
            spread += (advantages[i] - shift) ** 2
        scale = 1.0 / (np.sqrt(spread / (n - 1)) + 1e-8)
    policy = clipped = kl = value = total_entropy = 0.0
    for i in range(n):
        advantage = (advantages[i] - shift) * scale
        log_ratio = float(log_prob[i]) - old_log_prob[i]
        ratio = np.exp(log_ratio)
        bounded = min(max(ratio, 1.0 - clip_range), 1.0 + clip_range)
        unclipped_side, clipped_side = advantage * ratio, advantage * bounded
        policy -= min(unclipped_side, clipped_side)
        inside = 1.0 - clip_range <= ratio <= 1.0 + clip_range
        through = unclipped_side < clipped_side or (unclipped_side == clipped_side and inside)
        gradients[0, i] = -advantage * ratio / n if through else 0.0
        clipped += abs(ratio - 1.0) > clip_range
        kl += (ratio - 1.0) - log_ratio
        predicted, slope = float(values[i]), 1.0
        if clip_range_vf >= 0.0:
            change = predicted - old_values[i]
            predicted = old_values[i] + min(max(change, -clip_range_vf), clip_range_vf)
            slope = 1.0 if -clip_range_vf <= change <= clip_range_vf else 0.0
        error = predicted - returns[i]
        value += error * error
        gradients[1, i] = vf_coef * 2.0 * error * slope / n
        total_entropy += entropy[i]
        gradients[2, i] = -ent_coef / n
    policy, value, entropy_loss = policy / n, value / n, -total_entropy / n
    loss = policy + ent_coef * entropy_loss + vf_coef * value
    return loss, policy, value, entropy_loss, clipped / n, kl / n


def compile_kernels() -> None:
    """Compile the loss pass for the argument types an update passes, so the machine code is cached
    before the first training run (setup calls this)."""
    ones = torch.ones(2)
    clipped_loss(
        ones, ones, ones, ones, ones, ones, ones, clip_range=0.2, clip_range_vf=None, ent_coef=0.0, vf_coef=0.5,
        normalize_advantage=True,
    )  # fmt: skip
