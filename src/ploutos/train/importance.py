"""Permutation importance: how much a policy's path depends on each of its inputs over one window.

An input is permuted in time over the window the env reads (its ``lookback`` rows of history and
the traded bars) by a **circular block permutation** (:func:`block_permutation`): the rows are
rotated by a random offset, cut into blocks of ``block`` consecutive rows, and the blocks are
shuffled, so the autocorrelation inside a block survives while the input's link to prices is
broken. The policy then trades the window deterministically, through the same core and costs as
the validation, and its path is compared with the unpermuted one (the baseline):

- **return drop**: baseline total return minus the permuted path's (positive: the input helps);
- **action change**: the mean over steps of ``sum_a |w_perm - w_base|``, the L1 distance between
  the target weights the policy asks for (continuous actions clipped to the box and scaled to
  gross 1 as the env does; discrete choices mapped to their weight levels).

Inputs: each observation **feature** (its column for every asset, one permutation shared by all
assets), each **asset** (all of its features), and the **portfolio state** the observation carries
(weights, cash share, log return, drawdown): these are the policy's own state, so they are
permuted by replacing, at every step, the observed portfolio entries with the baseline path's
entries at a block-permuted step (:func:`policy_paths` ``portfolio``); the real portfolio still
trades.

**Batched.** All permuted copies of the window are stacked along time into one array (copy ``k``
occupies rows ``[k W, (k + 1) W)``) and traded by one :class:`~ploutos.env.core.MarketCore` with
one env per copy, each reset at its own copy's first decision row: the policy is called once per
step for the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ploutos.config import EnvConfig
from ploutos.env.core import PORTFOLIO_FIELDS, MarketCore
from ploutos.features.arrays import FeatureArrays
from ploutos.train.encoders import reading
from ploutos.train.evaluate import Actor

PORTFOLIO_INPUTS = ("weights", "cash_share", "log_return", "drawdown")
"""The portfolio-state inputs, permuted one at a time (``weights``: the ``A`` weights together)."""
BATCH_BYTES = 128 * 2**20
"""Largest stacked feature array of one batch of permuted copies (float32)."""


def block_permutation(n: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``range(n)`` made of shuffled circular blocks of ``block`` consecutive indices."""
    if n < 1:
        return np.zeros(0, dtype=np.int64)
    block = max(1, min(int(block), n))
    rolled = np.roll(np.arange(n, dtype=np.int64), -int(rng.integers(n)))
    blocks = [rolled[i : i + block] for i in range(0, n, block)]
    return np.concatenate([blocks[i] for i in rng.permutation(len(blocks))])


@dataclass(frozen=True)
class Permutation:
    """One permuted input: ``kind`` (feature, asset or portfolio), its index, and the row order."""

    kind: str
    index: int
    order: np.ndarray


@dataclass(frozen=True)
class Paths:
    """Per copy: ``equity`` (K, N + 1) and the policy's target weights ``targets`` (K, N, A)."""

    equity: np.ndarray
    targets: np.ndarray
    portfolio: np.ndarray
    """(K, N, A + 3) the portfolio state each step observed (before any replacement)."""

    @property
    def total_return(self) -> np.ndarray:
        return self.equity[:, -1] / self.equity[:, 0] - 1.0


def window_arrays(arrays: FeatureArrays, rows: slice) -> FeatureArrays:
    """``arrays`` cut to ``rows`` (a copy of nothing but the slicing)."""
    return replace(
        arrays,
        timestamps=arrays.timestamps[rows],
        values=arrays.values[rows],
        valid=arrays.valid[rows],
        present=arrays.present[rows],
        prices=arrays.prices[rows],
    )


def permuted_values(window: FeatureArrays, permutation: Permutation) -> np.ndarray:
    """The window's ``(W, A, F)`` values with one feature or asset permuted in time (portfolio: unchanged)."""
    values = np.array(window.values, dtype=np.float32, copy=True)
    if permutation.kind == "feature":
        values[:, :, permutation.index] = values[permutation.order, :, permutation.index]
    elif permutation.kind == "asset":
        values[:, permutation.index, :] = values[permutation.order, permutation.index, :]
    return values


def _targets(actions: np.ndarray, core: MarketCore) -> np.ndarray:
    """The target weights the env reads from ``actions`` (K, A)."""
    actions = np.asarray(actions, dtype=np.float64)
    if core.discrete:
        return core._levels[np.clip(actions.astype(np.int64), 0, 2)]
    weights = np.clip(np.nan_to_num(actions), core.w_low, 1.0)
    gross = np.abs(weights).sum(axis=-1, keepdims=True)
    return weights / np.maximum(gross, 1.0)


def _portfolio_slices(n_assets: int) -> dict[str, slice]:
    return {
        "weights": slice(0, n_assets),
        "cash_share": slice(n_assets, n_assets + 1),
        "log_return": slice(n_assets + 1, n_assets + 2),
        "drawdown": slice(n_assets + 2, n_assets + 3),
    }


def policy_paths(
    actor: Actor, window: FeatureArrays, copies: Sequence[np.ndarray], cfg: EnvConfig, bars_per_year: int, *,
    portfolio: Sequence[np.ndarray | None] | None = None,
) -> Paths:  # fmt: skip
    """The actor's deterministic paths over ``K = len(copies)`` versions ``(W, A, F)`` of the window's
    values, stepped as ``K`` envs of one core over the copies stacked in time.

    ``portfolio[k]``, when given and not None, is an ``(N, A + 3)`` array of portfolio entries copy
    ``k``'s observation shows at each step instead of its own (NaN entries: its own).
    """
    n_copies = len(copies)
    width, n_assets, _ = window.values.shape
    lookback = cfg.lookback
    stacked = replace(
        window,
        timestamps=np.tile(window.timestamps, n_copies),
        values=np.concatenate([np.asarray(c, dtype=np.float32) for c in copies]),
        valid=np.tile(window.valid, (n_copies, 1)),
        present=np.tile(window.present, (n_copies, 1)),
        prices=np.tile(window.prices, (n_copies, 1, 1)),
    )
    core = MarketCore(
        stacked, replace(cfg, bankruptcy_equity=0.0), rows=slice(0, n_copies * width), n_envs=n_copies,
        evaluation=True, bars_per_year=bars_per_year, period=width,
    )  # fmt: skip
    starts = np.arange(n_copies, dtype=np.int64) * width
    core.reset(np.arange(n_copies), starts + lookback - 1, starts + width - 1)
    n_steps = width - lookback
    n_port = n_assets + PORTFOLIO_FIELDS
    override = None
    if portfolio is not None and any(p is not None for p in portfolio):
        override = np.full((n_copies, n_steps, n_port), np.nan)
        for k, entries in enumerate(portfolio):
            if entries is not None:
                override[k] = entries
    equity = np.empty((n_copies, n_steps + 1))
    equity[:, 0] = core.initial
    targets = np.zeros((n_copies, n_steps, n_assets))
    seen = np.zeros((n_copies, n_steps, n_port))
    layout = cfg.obs_layout
    window_size = lookback * n_assets * core.n_features
    port = np.empty((n_copies, n_port), dtype=np.float32)
    state: Any = None
    with reading(actor, stacked.values):
        for step in range(n_steps):
            core.portfolio_into(port)
            seen[:, step] = port
            shown = port if override is None else np.where(np.isnan(override[:, step]), port, override[:, step])
            shown = shown.astype(np.float32)
            if layout == "flat":
                observation: Any = np.empty((n_copies, window_size + n_port), dtype=np.float32)
                core.window_into(observation[:, :window_size], asset_first=False)
                observation[:, window_size:] = shown
            elif layout == "reference":
                observation = np.empty((n_copies, 1 + n_port), dtype=np.float32)
                observation[:, 0] = core.rows
                observation[:, 1:] = shown
            else:
                features = np.empty((n_copies, n_assets, lookback, core.n_features), dtype=np.float32)
                core.window_into(features, asset_first=True)
                observation = {"features": features, "portfolio": shown}
            action, state = actor.predict(observation, state, np.full(n_copies, step == 0), deterministic=True)
            action = np.asarray(action).reshape(n_copies, n_assets)
            targets[:, step] = _targets(action, core)
            equity[:, step + 1] = equity[:, step]
            live = np.flatnonzero(core.active)  # a copy whose equity is gone keeps its last equity
            if live.size:
                equity[live, step + 1] = core.step(action[live], live).equity
    return Paths(equity, targets, seen)


def run_permutations(
    actor: Actor, window: FeatureArrays, cfg: EnvConfig, bars_per_year: int, permutations: Sequence[Permutation],
    baseline: Paths, *, batch: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Return drop and action change (see the module doc) of each permutation, ``batch`` at a time."""
    if batch is None:
        batch = max(1, int(BATCH_BYTES // max(window.values.nbytes, 1)))
    slices = _portfolio_slices(window.values.shape[1])
    drops, changes = np.empty(len(permutations)), np.empty(len(permutations))
    base_return = float(baseline.total_return[0])
    for lo in range(0, len(permutations), batch):
        chunk = permutations[lo : lo + batch]
        copies = [permuted_values(window, p) for p in chunk]
        overrides: list[np.ndarray | None] = []
        for p in chunk:
            if p.kind != "portfolio":
                overrides.append(None)
                continue
            entries = np.full(baseline.portfolio.shape[1:], np.nan)
            part = slices[PORTFOLIO_INPUTS[p.index]]
            entries[:, part] = baseline.portfolio[0][p.order][:, part]
            overrides.append(entries)
        paths = policy_paths(actor, window, copies, cfg, bars_per_year, portfolio=overrides)
        drops[lo : lo + len(chunk)] = base_return - paths.total_return
        changes[lo : lo + len(chunk)] = np.abs(paths.targets - baseline.targets[0]).sum(axis=-1).mean(axis=-1)
    return drops, changes


def plan_permutations(
    n_features: int, n_assets: int, width: int, n_steps: int, *, repeats: int, block: int, seed: int
) -> list[Permutation]:
    """Every input's ``repeats`` permutations, drawn in a fixed order from one seeded generator.

    Features and assets permute the window's ``width`` rows; portfolio inputs the ``n_steps`` steps.
    """
    rng = np.random.default_rng(seed)
    plan = []
    for kind, count, n in (("feature", n_features, width), ("asset", n_assets, width),
                           ("portfolio", len(PORTFOLIO_INPUTS), n_steps)):  # fmt: skip
        for index in range(count):
            for _ in range(repeats):
                plan.append(Permutation(kind, index, block_permutation(n, block, rng)))
    return plan
