"""PPO's update pass with its backward written out (``ploutos.train.update``): the same values and
gradients as autograd over the textbook modules (a ``Conv1d`` over every window's embedded bars, the
heads' concatenated input, SB3's critic), to float32 rounding, and ``gradcheck`` in float64."""

from __future__ import annotations

from copy import deepcopy
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO as SB3PPO
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecMonitor

from ploutos.bench.env import synthetic_arrays
from ploutos.config import load
from ploutos.env.batched import BatchedVecEnv
from ploutos.env.trading import TradingEnv
from ploutos.node.hardware import plan
from ploutos.train.encoders import SharedStoreEncoder
from ploutos.train.model import build_model
from ploutos.train.ppo import PPO
from ploutos.train.update import AssetHeadsPass, StridedSummaries, distinct_rows

ARRAYS = synthetic_arrays(400, 4, 6, seed=3)


def _policy(encoder: str, lookback: int = 12):
    config = load("quickstart", ["env.obs_layout=reference", f"ppo.encoder={encoder}"])
    config = replace(config, env=replace(config.env, lookback=lookback, episode_bars=60))

    def make():
        return TradingEnv(ARRAYS, config.env, rows=slice(0, len(ARRAYS.timestamps)), bars_per_year=24 * 365)

    venv = BatchedVecEnv([make])
    layout = replace(plan(config), n_envs=1, n_steps=16, batch_size=16, device="cpu")
    policy = build_model(config, venv, layout, seed=4, values=ARRAYS.values).policy
    venv.close()
    with torch.no_grad():  # away from the initialization's near-zero outputs, so every gradient is sizeable
        for parameter in policy.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return policy


def _observations(rows: list[int], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    obs = torch.zeros(len(rows), 1 + 4 + 3)
    obs[:, 0] = torch.tensor(rows, dtype=torch.float32)
    obs[:, 1:] = torch.rand(len(rows), 7, generator=generator) - 0.5
    return obs


# windows that overlap, repeat, touch (a step of exactly the lookback), stand apart, sit at the first
# possible row and at the last
ROWS = [11, 11, 12, 15, 40, 52, 53, 200, 201, 202, 230, 399, 12, 64]


def _textbook_summaries(encoder: SharedStoreEncoder, observations: torch.Tensor) -> torch.Tensor:
    """Every window's bars embedded, ``Conv1d`` at the kernel's stride, the mean and latest outputs."""
    lookback, kernel, width = encoder.lookback, encoder.kernel, encoder.embed_dim
    store = torch.from_numpy(np.ascontiguousarray(ARRAYS.values))
    windows = store[observations[:, 0].long()[:, None] + torch.arange(1 - lookback, 1)[None, :]]  # (B, L, A, F)
    bars = encoder.embed(windows)
    batch, n_assets = len(observations), encoder.n_assets
    series = bars.permute(0, 2, 3, 1).reshape(batch * n_assets, width, lookback)
    weight = encoder.temporal.weight.view(width, kernel, width).transpose(1, 2)  # Conv1d's (out, in, kernel)
    outputs = torch.relu(torch.nn.functional.conv1d(series, weight, encoder.temporal.bias, stride=kernel))
    outputs = outputs.view(batch, n_assets, width, lookback // kernel)
    return torch.cat([outputs.mean(dim=3), outputs[..., -1]], dim=2)


@pytest.mark.parametrize("encoder", ["shared", "attention"])
def test_the_update_pass_is_autograds_over_the_textbook_modules(encoder: str, monkeypatch):
    """``evaluate_actions`` and every parameter's gradient against autograd through the textbook
    encoder, SB3's ``mlp_extractor`` on the joined features and SB3's ``evaluate_actions``."""
    policy = _policy(encoder)
    obs = _observations(ROWS, seed=5)
    actions = torch.randn(len(ROWS), 4, generator=torch.Generator().manual_seed(6))
    upstream = torch.randn(3, len(ROWS), generator=torch.Generator().manual_seed(7))

    def evaluate(textbook: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        policy.zero_grad()
        with monkeypatch.context() as patch:
            if textbook:
                patch.setattr(SharedStoreEncoder, "asset_summaries", _textbook_summaries)
                found = ActorCriticPolicy.evaluate_actions(policy, obs, actions)
            else:
                found = policy.evaluate_actions(obs, actions)
        values, log_prob, entropy = found
        (upstream[0] @ values.flatten() + upstream[1] @ log_prob + upstream[2] @ entropy).backward()
        return [values, log_prob, entropy], [p.grad.clone() for p in policy.parameters()]

    assert policy.update_written_out  # the written-out pass applies to this policy
    ours, our_grads = evaluate(textbook=False)
    theirs, their_grads = evaluate(textbook=True)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # sums over the batch run in another order: rounding relative to the largest gradient, which
    # attention's layer norms amplify (the textbook encoder's own forward rounding reaches 1e-5 there;
    # with numpy 2.4.6 and SB3 2.9.2 one weight of the embedding differed by 2.2e-5 of the largest)
    relative = 5e-5 if encoder == "attention" else 2e-6
    names = [name for name, _ in policy.named_parameters()]
    for name, a, b in zip(names, our_grads, their_grads, strict=True):
        scale = float(b.abs().max())
        assert scale > 0, name  # every parameter is reached: the comparison means something
        torch.testing.assert_close(a, b, rtol=1e-4, atol=relative * scale, msg=lambda m, name=name: f"{name}: {m}")


def test_distinct_rows_place_each_window_among_the_runs_it_covers():
    decisions = torch.tensor(ROWS)
    places, runs = distinct_rows(decisions, lookback=12)
    expected = torch.unique(decisions[:, None] + torch.arange(-11, 1)[None, :])
    covered = torch.cat([torch.arange(first, stop) for first, stop in runs])
    assert torch.equal(covered, expected)  # ascending, every row once, runs split only at gaps
    assert all(stop < next_first for (_, stop), (next_first, _) in zip(runs[:-1], runs[1:], strict=True))
    assert torch.equal(expected[places], decisions)


def test_the_written_out_backwards_pass_gradcheck_in_float64():
    generator = torch.Generator().manual_seed(9)
    store = torch.randn(120, 3, 5, dtype=torch.float64, generator=generator)
    places, runs = distinct_rows(torch.tensor([7, 9, 9, 30, 31, 60, 119]), lookback=8)

    def weights(*shapes: tuple[int, ...]) -> list[torch.Tensor]:
        return [torch.randn(*s, dtype=torch.float64, generator=generator).requires_grad_() for s in shapes]

    encoder = weights((4, 5), (4,), (4, 8), (4,))  # embed 4, kernel 2, lookback 8
    assert torch.autograd.gradcheck(
        lambda *w: StridedSummaries.apply(store, runs, places, *w, 2, 8), encoder, eps=1e-6, atol=1e-5
    )
    blocks, portfolio = weights((7, 3, 4), (7, 3 + 3))
    heads = weights((6, 2 * 4 + 1 + 3), (6,), (1, 6), (1,), (5, 3 * 4 + 4 + 6), (5,), (1, 5), (1,))
    assert torch.autograd.gradcheck(
        lambda *inputs: AssetHeadsPass.apply(*inputs), [blocks, portfolio, *heads], eps=1e-6, atol=1e-5
    )


def test_adam_steps_all_parameters_at_once_with_the_loops_results():
    """``OPTIMIZER_KWARGS``' multi-tensor Adam moves every parameter bitwise as the per-parameter loop."""
    found = []
    for foreach in (True, False):
        policy = _policy("shared")
        optimizer = policy.optimizer
        assert optimizer.defaults["foreach"] is True and optimizer.defaults["eps"] == 1e-5
        for group in optimizer.param_groups:
            group["foreach"] = foreach
        obs = _observations(ROWS, seed=5)
        actions = torch.randn(len(ROWS), 4, generator=torch.Generator().manual_seed(6))
        for _ in range(3):
            optimizer.zero_grad()
            values, log_prob, entropy = policy.evaluate_actions(obs, actions)
            (values.square().mean() - log_prob.mean() - 0.01 * entropy.mean()).backward()
            optimizer.step()
        found.append([p.detach().clone() for p in policy.parameters()])
    assert all(map(torch.equal, *found))
    assert not torch.equal(found[0][1], _policy("shared").features_extractor.embed[0].weight)  # they moved


class _Figures(KVWriter):
    """The logger's values at each dump."""

    def __init__(self) -> None:
        self.dumps: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.dumps.append(dict(key_values))


@pytest.mark.parametrize("clip_range_vf", [None, 0.05])
def test_the_loss_pass_trains_as_sb3s_update(clip_range_vf):
    """Ploutos's ``train()`` (the loss and its gradients from one compiled pass) against SB3's on the
    same rollout, weights, optimizer state and minibatch order: the same weights after 2 epochs to
    float32 rounding, the same logged figures; a mutated gradient would move the weights elsewhere."""
    config = load("quickstart", ["env.obs_layout=reference", "ppo.encoder=shared"])
    config = replace(config, env=replace(config.env, lookback=12, episode_bars=60), ppo=replace(config.ppo, n_steps=64))

    def make():
        return TradingEnv(ARRAYS, config.env, rows=slice(0, len(ARRAYS.timestamps)), bars_per_year=24 * 365)

    venv = VecMonitor(BatchedVecEnv([make, make]))
    layout = replace(plan(config), n_envs=2, n_steps=64, batch_size=32, device="cpu")
    model = build_model(config, venv, layout, seed=4, values=ARRAYS.values)
    model.n_epochs, model.ent_coef = 2, 0.01  # every term of the loss counts
    model.clip_range_vf = None if clip_range_vf is None else (lambda _: clip_range_vf)
    model.learn(128)  # one rollout and update: the policy has moved from its initialization
    callback = model._init_callback(None)
    assert model.collect_rollouts(venv, callback, model.rollout_buffer, 64)
    assert model._loss_pass_applies()
    start = (deepcopy(model.policy.state_dict()), deepcopy(model.policy.optimizer.state_dict()), model._n_updates)

    def update(train) -> tuple[list[torch.Tensor], dict[str, Any]]:
        model.policy.load_state_dict(start[0])
        model.policy.optimizer.load_state_dict(deepcopy(start[1]))  # Adam steps its loaded step counts in place
        model._n_updates = start[2]
        figures = _Figures()
        model.set_logger(Logger(folder=None, output_formats=[figures]))
        np.random.seed(21)  # the buffer's minibatch order
        train(model)
        model.logger.dump()
        return [p.detach().clone() for p in model.policy.parameters()], figures.dumps[-1]

    (ours, our_log), (theirs, their_log) = update(PPO.train), update(SB3PPO.train)
    for name, a, b in zip([n for n, _ in model.policy.named_parameters()], ours, theirs, strict=True):
        moved = float((b - start[0][name]).abs().max())
        assert moved > 0, name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3 * moved, msg=lambda m, name=name: f"{name}: {m}")
    assert set(our_log) == set(their_log)
    for key, value in their_log.items():
        assert our_log[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    venv.close()
