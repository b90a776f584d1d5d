"""Store encoders: windows gathered inside the policy are the flat observation's, bitwise; the shared
encoder is the strided convolution it claims to be; the attention encoder treats assets alike but for
their identity embedding; PPO and RecurrentPPO train with each encoder; the store is read in place and
never saved; the rollout buffer's bytes per step do not grow with lookback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections import deque
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO as SB3PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecMonitor
from torch import nn

import ploutos.train.encoders as encoders_module
from conftest import interrupt_at_first_checkpoint
from ploutos.bench.encoders import rollout_bytes
from ploutos.bench.env import synthetic_arrays
from ploutos.config import load
from ploutos.env.batched import BatchedVecEnv
from ploutos.env.trading import TradingEnv, reference_space
from ploutos.errors import ConfigError
from ploutos.node.hardware import plan
from ploutos.train.encoders import (
    AttentionStoreEncoder,
    FlatStoreEncoder,
    SharedStoreEncoder,
    bind_store,
    reading,
    store_encoders,
)
from ploutos.train.model import build_model
from ploutos.train.policies import AssetHeadsPolicy
from ploutos.train.ppo import PPO

ARRAYS = synthetic_arrays(500, 4, 6, seed=8)
READ_ONLY = ARRAYS.values.view()
READ_ONLY.flags.writeable = False
ARRAYS = replace(ARRAYS, values=READ_ONLY)  # as the node store maps it


def _config(layout: str = "reference", encoder: str = "flat", algo: str = "ppo", lookback: int = 8):
    config = load("quickstart", [f"env.obs_layout={layout}", f"ppo.encoder={encoder}", f"ppo.algo={algo}"])
    return replace(
        config,
        env=replace(config.env, lookback=lookback, episode_bars=60, decide_every=1, rebalance_band=0.0),
        ppo=replace(config.ppo, n_steps=16, batch_size=32, n_epochs=2),
    )


def _venv(config, n: int = 3, arrays=ARRAYS) -> BatchedVecEnv:
    def make():
        return TradingEnv(arrays, config.env, rows=slice(0, len(arrays.timestamps)), bars_per_year=24 * 365)

    return BatchedVecEnv([make] * n)


def _model(config, venv, arrays=ARRAYS):
    rollout = config.ppo.n_steps * venv.num_envs
    layout = replace(plan(config), n_envs=venv.num_envs, n_steps=config.ppo.n_steps, batch_size=rollout, device="cpu")
    return build_model(config, venv, layout, seed=1, values=arrays.values)


def test_the_gathered_windows_are_the_flat_observations_bitwise():
    reference, flat = _venv(_config()), _venv(_config("flat"))
    encoder = FlatStoreEncoder(reference.observation_space, lookback=8, n_features=6, values=ARRAYS.values)
    shared = SharedStoreEncoder(reference.observation_space, lookback=8, n_features=6, values=ARRAYS.values)
    reference.seed(4)
    flat.seed(4)
    obs_r, obs_f = reference.reset(), flat.reset()
    rng = np.random.default_rng(2)
    for step in range(80):
        as_r, as_f = torch.as_tensor(obs_r).float(), torch.as_tensor(obs_f).float()  # what SB3's preprocessing does
        gathered = encoder(as_r)
        assert gathered.dtype == torch.float32 and torch.equal(gathered, as_f), step
        windows = shared.windows(as_r)
        assert torch.equal(windows.reshape(len(windows), -1), as_f[:, : windows[0].numel()])
        actions = rng.uniform(-1, 1, (3, 4)).astype(np.float32)
        obs_r, *_ = reference.step(actions)
        obs_f, *_ = flat.step(actions)
    reference.close()
    flat.close()


def test_the_shared_encoder_is_a_strided_convolution_over_embedded_bars(monkeypatch):
    """The distinct-row computation against the textbook one: embed every window's bars, Conv1d, pool."""
    space = reference_space(len(ARRAYS.timestamps), 4)
    encoder = SharedStoreEncoder(space, lookback=12, n_features=6, embed=5, kernel=4, values=ARRAYS.values)
    assert encoder.kernel == 4 and encoder.summary_dim == 10
    conv = nn.Conv1d(5, 5, 4, stride=4)
    with torch.no_grad():
        # temporal.weight[o, i * E + e] is Conv1d.weight[o, e, i]
        conv.weight.copy_(encoder.temporal.weight.detach().view(5, 4, 5).transpose(1, 2))
        conv.bias.copy_(encoder.temporal.bias.detach())
    obs = torch.zeros(40, space.shape[0])
    obs[:, 0] = torch.tensor(np.random.default_rng(0).integers(11, 500, 40), dtype=torch.float32)
    obs[:5, 0] = 20.0  # repeated rows and overlapping windows
    obs[:, 1:] = torch.randn(40, space.shape[0] - 1)
    windows = torch.from_numpy(np.ascontiguousarray(ARRAYS.values))[
        obs[:, 0].long()[:, None] + torch.arange(-11, 1)[None, :]
    ]  # (B, L, A, F)
    bars = encoder.embed(windows)  # (B, L, A, E)
    series = bars.permute(0, 2, 3, 1).reshape(40 * 4, 5, 12)
    outputs = torch.relu(conv(series)).view(40, 4, 5, 3)  # (B, A, E, strides), oldest first
    assets = torch.cat([outputs.mean(dim=3), outputs[..., -1]], dim=2)  # the window's mean, then the latest stride
    expected = torch.cat([assets.reshape(40, -1), assets.mean(dim=1), obs[:, 1:]], dim=1)
    found = encoder(obs)
    assert found.shape == (40, encoder.features_dim)
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # a rollout's path: stride outputs kept per store row while the weights stay
        torch.testing.assert_close(encoder(obs), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(encoder(obs), expected, rtol=1e-5, atol=1e-6)
        encoder.temporal.bias.data.add_(0.5)  # as an MPI broadcast writes: no version bump, the cache must notice
        moved = encoder(obs)
    torch.testing.assert_close(moved, encoder(obs), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(moved, expected)
    with torch.no_grad(), monkeypatch.context() as patch:  # a store too large to cache: computed afresh, alike
        patch.setattr(encoders_module, "CACHE_BYTES", 0)
        encoder._cache = None
        torch.testing.assert_close(encoder(obs), moved, rtol=1e-5, atol=1e-6)
        assert encoder._cache is None
    found.sum().backward()  # gradients reach every parameter through the gathers
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_the_attention_encoder_is_equivariant_across_assets_but_for_their_identity():
    """Permute the store's assets and the portfolio's weights: the per-asset blocks permute alike, the
    market mean and the cash fields do not move; the identity embedding is what breaks the symmetry."""
    space = reference_space(len(ARRAYS.timestamps), 4)
    encoder = AttentionStoreEncoder(space, lookback=8, n_features=6, embed=4, heads=2, values=ARRAYS.values)
    assert encoder.features_dim == 4 * 8 + 8 + 4 + 3  # summaries of 2 x 4
    perm = [2, 0, 3, 1]
    permuted = np.ascontiguousarray(ARRAYS.values[:, perm])  # asset j of the permuted store is asset perm[j]
    rng = np.random.default_rng(5)
    obs = torch.zeros(32, space.shape[0])
    obs[:, 0] = torch.tensor(rng.integers(7, 500, 32), dtype=torch.float32)
    obs[:, 1:] = torch.tensor(rng.normal(size=(32, 4 + 3)), dtype=torch.float32)
    obs_p = obs.clone()
    obs_p[:, 1:5] = obs[:, 1:5][:, perm]

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            encoder.bind(ARRAYS.values)
            found = encoder(obs)
            encoder.bind(permuted)
            return found, encoder(obs_p)

    with torch.no_grad():
        encoder.identity.zero_()
    found, found_p = both()
    blocks, blocks_p = found[:, :32].view(32, 4, 8), found_p[:, :32].view(32, 4, 8)
    assert not torch.allclose(blocks[:, 0], blocks[:, 1])  # the assets' blocks differ: the check means something
    assert torch.allclose(blocks_p, blocks[:, perm], atol=1e-5)
    assert torch.allclose(found_p[:, 32:40], found[:, 32:40], atol=1e-5)  # the market mean
    assert torch.equal(found_p[:, 40:], obs_p[:, 1:])  # the portfolio, as given
    # the attended blocks depend on the other assets: not shared's summaries passed through alone
    shared = SharedStoreEncoder(space, lookback=8, n_features=6, embed=4, values=ARRAYS.values)
    shared.load_state_dict({k: v for k, v in encoder.state_dict().items() if k.startswith(("embed.", "temporal."))})
    encoder.bind(ARRAYS.values)
    with torch.no_grad():
        assert torch.equal(encoder.asset_summaries(obs), shared.asset_summaries(obs))
        assert torch.equal(shared(obs)[:, :32], shared.asset_summaries(obs).reshape(32, -1))

    with torch.no_grad():
        encoder.identity.normal_()  # assets now have identities: permuting the data alone is seen
    found, found_p = both()
    blocks, blocks_p = found[:, :32].view(32, 4, 8), found_p[:, :32].view(32, 4, 8)
    assert not torch.allclose(blocks_p, blocks[:, perm], atol=1e-3)
    encoder.bind(ARRAYS.values)


def test_the_attention_heads_must_divide_the_embedding():
    override = "ppo.encoder_heads=4"
    with pytest.raises(ConfigError) as caught:
        load(None, ["env.obs_layout=reference", "ppo.encoder=attention", "ppo.encoder_embed=6", override])
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"--set {override}: ppo.encoder_heads: 4 heads do not divide encoder_embed 6"), message
    config = load(None, ["env.obs_layout=reference", "ppo.encoder=attention", "ppo.encoder_embed=12", override])
    assert (config.ppo.encoder_embed, config.ppo.encoder_heads) == (12, 4)
    load(None, ["env.obs_layout=reference", "ppo.encoder=shared", "ppo.encoder_embed=6", override])  # heads unused
    with pytest.raises(ConfigError, match="ppo.encoder: attention reads the window from the store"):
        load(None, ["ppo.encoder=attention"])
    with pytest.raises(ValueError, match=r"heads \(3\) must divide its embedding width \(8\)"):
        AttentionStoreEncoder(reference_space(10, 2), lookback=4, n_features=3, embed=8, heads=3)


def test_the_store_is_read_in_place_and_is_no_part_of_the_model():
    venv = _venv(_config(encoder="shared"))
    model = _model(_config(encoder="shared"), venv)
    (encoder,) = {id(e): e for e in store_encoders(model)}.values()
    assert encoder._store is not None
    assert encoder._store.data_ptr() == ARRAYS.values.ctypes.data  # zero-copy from the read-only mapping
    names = list(model.policy.state_dict())
    assert not any("store" in name for name in names)
    # neither the state (model files, checkpoints, digests) nor the buffers MPI broadcasts hold the store
    for tensor in (*model.policy.state_dict().values(), *model.policy.buffers()):
        assert tensor.shape != ARRAYS.values.shape and tensor.data_ptr() != ARRAYS.values.ctypes.data
    venv.close()


@pytest.mark.parametrize("algo", ["ppo", "recurrent_ppo"])
@pytest.mark.parametrize("encoder", ["flat", "shared", "attention"])
def test_ppo_and_recurrent_ppo_train_with_each_encoder(algo: str, encoder: str):
    config = _config(encoder=encoder, algo=algo)
    venv = _venv(config)
    model = _model(config, venv)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(3 * config.ppo.n_steps * venv.num_envs)  # three rollouts and updates
    after = model.policy.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("features_extractor.") for k in changed) or encoder == "flat"
    assert any(k.startswith("mlp_extractor.") for k in changed)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert model.rollout_buffer.observations.shape[-1] == 1 + 4 + 3  # rows and portfolios, no windows
    venv.close()


def _permuted(arrays, order: np.ndarray):
    values = np.ascontiguousarray(arrays.values[:, order])
    values.flags.writeable = False
    return replace(arrays, values=values)


@pytest.mark.parametrize("action_mode", ["continuous", "discrete"])
def test_per_asset_heads_act_alike_on_every_asset(action_mode: str):
    """Permute the store's assets and the portfolio's weights: with the shared encoder and per-asset
    heads the actor's outputs permute alike (SB3's MLP actor would not); the actor's parameters do
    not grow with the assets."""
    config = _config(encoder="shared")
    config = replace(config, env=replace(config.env, action_mode=action_mode))
    venv = _venv(config, n=1)
    model = _model(config, venv)
    venv.close()
    policy = model.policy
    assert isinstance(policy, AssetHeadsPolicy) and type(policy.action_net).__name__ == "AssetOutputs"
    outputs = 1 if action_mode == "continuous" else 3
    obs = torch.zeros(6, 1 + 4 + 3)
    obs[:, 0] = torch.tensor([20.0, 80, 150, 151, 300, 499])
    obs[:, 1:5] = torch.rand(6, 4) / 4
    obs[:, 5:] = torch.randn(6, 3)
    order = np.array([2, 0, 3, 1])
    moved = obs.clone()
    moved[:, 1:5] = obs[:, 1:5][:, order]

    def actor(o: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return policy.action_net(policy.mlp_extractor.forward_actor(policy.extract_features(o)))

    found = actor(obs).view(6, 4, outputs)
    bind_store(model, _permuted(ARRAYS, order).values)
    torch.testing.assert_close(actor(moved).view(6, 4, outputs), found[:, order], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(found[:, 0], found[:, 1])  # the assets' actions differ: each reads its own

    wider = synthetic_arrays(500, 8, 6, seed=8)
    venv8 = _venv(config, n=1, arrays=wider)
    policy8 = _model(config, venv8, arrays=wider).policy
    venv8.close()

    def actor_size(p) -> int:
        return sum(t.numel() for t in [*p.mlp_extractor.head.parameters(), *p.action_net.parameters()])

    assert actor_size(policy8) == actor_size(policy)


def _gaussian_policy(config):
    """The policy of a fresh model on one env, its log standard deviation -0.7."""
    venv = _venv(config, n=1)
    policy = _model(config, venv).policy
    venv.close()
    with torch.no_grad():
        policy.log_std.fill_(-0.7)
    return policy


def test_the_closed_form_rollout_forward_is_sb3s_bitwise():
    """Same random draws, same actions, values and log-probabilities as SB3's forward through
    ``torch.distributions.Normal``; NaN means still fail loudly; discrete actions use SB3's path."""
    config = _config(encoder="attention")
    policy = _gaussian_policy(config)
    obs = torch.zeros(5, 1 + 4 + 3)
    obs[:, 0] = torch.tensor([20.0, 80, 150, 300, 499])
    obs[:, 1:5] = torch.rand(5, 4) / 4
    for deterministic in (False, True):
        torch.manual_seed(3)
        ours = policy(obs, deterministic=deterministic)
        torch.manual_seed(3)
        theirs = ActorCriticPolicy.forward(policy, obs, deterministic=deterministic)
        for a, b in zip(ours, theirs, strict=True):
            assert a.shape == b.shape and torch.equal(a, b)
    assert not torch.equal(policy(obs)[0], policy(obs)[0])  # sampled, not the mean
    with torch.no_grad():
        policy.action_net.linear.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="action means are NaN"):
        policy(obs)

    discrete = replace(config, env=replace(config.env, action_mode="discrete"))
    venv = _venv(discrete, n=1)
    policy = _model(discrete, venv).policy
    venv.close()
    torch.manual_seed(3)
    ours = policy(obs)
    torch.manual_seed(3)
    assert all(map(torch.equal, ours, ActorCriticPolicy.forward(policy, obs)))


def test_the_closed_form_evaluation_is_sb3s_bitwise():
    """PPO's update reads values, log-probabilities and entropies from ``evaluate_actions``: the closed
    form gives SB3's through ``torch.distributions.Normal`` bitwise, and the same gradients (on the
    autograd modules; the written-out update pass is held to them in ``test_train_update``)."""
    policy = _gaussian_policy(_config(encoder="shared"))
    policy._critic_linears = None
    obs = _rollout_observations(6, 8)
    actions = torch.randn(6, 4, generator=torch.Generator().manual_seed(8))
    found = []
    for evaluate in (policy.evaluate_actions, lambda o, a: ActorCriticPolicy.evaluate_actions(policy, o, a)):
        policy.zero_grad()
        values, log_prob, entropy = evaluate(obs, actions)
        (values.sum() + log_prob.sum() - 0.01 * entropy.sum()).backward()
        found.append(([values, log_prob, entropy], [p.grad.clone() for p in policy.parameters()]))
    (ours, our_grads), (theirs, their_grads) = found
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(our_grads, their_grads, strict=True))


class _CountingCallback(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.steps, self.rollouts = 0, 0

    def _on_step(self) -> bool:
        assert {"actions", "rewards", "dones", "infos", "new_obs"} <= set(self.locals)
        self.steps += 1
        return True

    def _on_rollout_end(self) -> None:
        self.rollouts += 1


def test_array_rollouts_fill_the_buffer_bitwise_as_sb3s_loop():
    """Ploutos's PPO collects a rollout of the compiled policy by numpy arrays: the buffer (with
    truncated episodes bootstrapped, returns and advantages), the step count, the episode infos and
    the callbacks are SB3's loop's, bitwise, on the same seeds."""
    config = _config(encoder="shared")
    venv = VecMonitor(_venv(config, n=2))
    model = _model(replace(config, ppo=replace(config.ppo, n_steps=70)), venv)  # episodes of 60 bars end
    assert isinstance(model, PPO) and model.policy.compiled_arrays_apply()
    fields = ("observations", "actions", "rewards", "episode_starts", "values", "log_probs", "advantages", "returns")

    def collect(loop) -> tuple:
        torch.manual_seed(11)
        venv.seed(3)
        model._last_obs, model._last_episode_starts = venv.reset(), np.ones(2, dtype=bool)
        model.num_timesteps = 0
        model.ep_info_buffer, model.ep_success_buffer = deque(maxlen=100), deque(maxlen=100)
        callback = _CountingCallback()
        callback.init_callback(model)
        assert loop(model, venv, callback, model.rollout_buffer, 70)
        arrays = [getattr(model.rollout_buffer, name).copy() for name in fields]
        episodes = [(info["r"], info["l"]) for info in model.ep_info_buffer]  # not "t", the wall clock
        return arrays, model.num_timesteps, episodes, (callback.steps, callback.rollouts)

    ours, theirs = collect(PPO.collect_rollouts), collect(SB3PPO.collect_rollouts)
    for name, a, b in zip(fields, ours[0], theirs[0], strict=True):
        assert np.array_equal(a, b), name
    assert ours[1:] == theirs[1:] and ours[1] == 140 and len(ours[2]) >= 2 and ours[3] == (70, 1)
    venv.close()


def _rollout_observations(n: int, seed: int) -> torch.Tensor:
    """``n`` reference observations at rows that move one bar at a time, as a rollout's do."""
    generator = torch.Generator().manual_seed(seed)
    obs = torch.zeros(n, 1 + 4 + 3)
    obs[:, 0] = torch.arange(n) + 40.0
    obs[:, 1:5] = torch.rand(n, 4, generator=generator) / 4 - 0.1
    obs[:, 5:] = torch.rand(n, 3, generator=generator)
    return obs


def test_the_compiled_rollout_forward_is_the_torch_forward_to_float32_rounding():
    """Without gradients the shared encoder's heads run compiled: the same actions (same draws),
    values and log-probabilities as torch's path to 1e-5, through its caches as the rows move,
    after the weights change (an optimizer step) and on another store; NaN means still fail."""
    policy = _gaussian_policy(_config(encoder="shared"))
    with torch.no_grad():
        for p in policy.parameters():  # away from the orthogonal init's zero biases
            p.add_(torch.randn_like(p) * 0.05)

    def both(obs: torch.Tensor, deterministic: bool = False) -> None:
        with torch.no_grad():
            torch.manual_seed(5)
            fast = policy(obs, deterministic)
            policy.compiled_rollout = False
            torch.manual_seed(5)
            slow = policy(obs, deterministic)
            policy.compiled_rollout = True
        for a, b in zip(fast, slow, strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
        assert not torch.equal(fast[0], policy(obs, deterministic=True)[0]) or deterministic

    for start in range(0, 40, 2):  # two envs a step, one row on: each step embeds one new bar
        both(_rollout_observations(40, 1)[start : start + 2])
    assert policy._compiled is not None  # the compiled path ran
    both(_rollout_observations(7, 2), deterministic=True)
    edges = _rollout_observations(3, 3)
    edges[:, 0] = torch.tensor([0.0, 3.4, 10_000.0])  # clamped to the first and last full windows
    both(edges)
    with torch.no_grad():
        torch.manual_seed(5)
        first = policy(_rollout_observations(4, 4))
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    loss = policy.evaluate_actions(_rollout_observations(8, 5), torch.zeros(8, 4))[1].sum()
    loss.backward()
    optimizer.step()  # the embedding's weights move in place: the caches must be forgotten
    both(_rollout_observations(4, 4))
    with torch.no_grad():
        torch.manual_seed(5)
        assert not torch.equal(first[1], policy(_rollout_observations(4, 4))[1])
    other = synthetic_arrays(500, 4, 6, seed=9)
    bind_store(policy, other.values)
    both(_rollout_observations(4, 6))
    with torch.no_grad():
        policy.features_extractor.embed[0].weight[0, 0] = float("nan")
        with pytest.raises(ValueError, match="action means are NaN"):
            policy(_rollout_observations(2, 7))


def test_per_asset_heads_are_ppos_on_store_encoders_only():
    assert type(_model(_config(encoder="shared"), _venv(_config(), n=1)).policy) is AssetHeadsPolicy
    for encoder, algo, heads in (("flat", "ppo", True), ("shared", "ppo", False), ("shared", "recurrent_ppo", True)):
        config = _config(encoder=encoder, algo=algo)
        config = replace(config, ppo=replace(config.ppo, asset_heads=heads))
        assert not config.ppo.per_asset_heads
        venv = _venv(config, n=1)
        assert not isinstance(_model(config, venv).policy, AssetHeadsPolicy)
        venv.close()


def test_rollout_bytes_per_step_do_not_grow_with_lookback():
    sizes = {}
    for layout in ("reference", "flat"):
        for lookback in (4, 32):
            config = _config(layout, "shared" if layout == "reference" else "flat", lookback=lookback)
            venv = _venv(config, n=2)
            sizes[layout, lookback] = rollout_bytes(_model(config, venv))
            venv.close()
    assert sizes["reference", 4] == sizes["reference", 32]
    assert sizes["reference", 32][1] == 4 * (1 + 4 + 3)  # float32 row and portfolio
    assert sizes["flat", 32][1] > 7 * sizes["flat", 4][1]  # the flat windows grow with the lookback
    assert sizes["flat", 4][1] > 10 * sizes["reference", 4][1]


def test_an_encoder_without_a_store_says_so_and_evaluation_binds_its_own():
    space = reference_space(len(ARRAYS.timestamps), 4)
    encoder = FlatStoreEncoder(space, lookback=8, n_features=6)
    obs = torch.zeros(1, space.shape[0])
    obs[0, 0] = 30.0
    with pytest.raises(RuntimeError, match="no store: bind_store"):
        encoder(obs)
    other = np.ascontiguousarray(ARRAYS.values[::-1])
    holder = SimpleNamespace(members=[SimpleNamespace(policy=nn.Sequential(encoder))])  # an ensemble of one
    bind_store(holder, ARRAYS.values)
    with reading(holder, other):
        assert torch.equal(encoder(obs)[0, : 8 * 24], torch.from_numpy(other[23:31].reshape(-1)))
    assert encoder._source is ARRAYS.values  # what it read before, after the block
    with pytest.raises(ValueError, match=r"reads \(T, 4, 6\) float32"):
        encoder.bind(ARRAYS.values.astype(np.float64))


def test_the_shared_encoder_needs_observations_by_reference():
    with pytest.raises(
        ConfigError, match="ppo.encoder: shared reads the window from the store: it needs env.obs_layout"
    ):
        load("quickstart", ["ppo.encoder=shared"])
    with pytest.raises(ValueError, match="needs the store"):
        build_model(_config(), None, plan(_config()), seed=0)


def test_the_paper_decision_path_acts_by_reference():
    from ploutos.paper.runner import Decider

    config = _config(encoder="shared")
    venv = _venv(config, n=1)
    model = _model(config, venv)
    venv.close()
    decider = Decider(SimpleNamespace(actor=model, config=config))
    fresh = np.ascontiguousarray(ARRAYS.values[:100])  # the live features of one paper step
    obs = decider.observation(fresh, 60, np.zeros(4), 100.0, 100.0, 100.0, 0.0)
    np.testing.assert_array_equal(obs, [60, 0, 0, 0, 0, 1, 0, 0])
    assert all(e._source is fresh for e in store_encoders(model))
    assert decider.decide(obs).shape == (4,)


# ------------------------------------------------------------------------------ the trainer by reference

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "PYTHONUNBUFFERED": "1"}
ROLLOUT = 512  # n_steps 256 x 2 envs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("data") / "quickstart"
    command = [sys.executable, "-m", "ploutos", "data", "build", "--no-progress", "--set", f"data.store={store}"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return store


def _train(dataset: Path, results: Path, steps: int, **extra: object) -> list[str]:
    values = {
        "data.store": dataset, "results_dir": results, "ppo.total_timesteps": steps, "env.obs_layout": "reference",
        "ppo.encoder": "shared", "hardware.n_envs": 2, "hardware.envs_per_worker": 1, **extra,
    }  # fmt: skip
    settings = [part for key, value in values.items() for part in ("--set", f"{key}={value}")]
    return ["-m", "ploutos", "train", "--fold", "0", "--member", "0", "--no-progress", *settings]


@pytest.mark.cluster
def test_two_mpi_ranks_with_store_workers_train_one_member_by_reference(dataset: Path, tmp_path: Path):
    """Env workers map the node store by name and emit rows; each rank's encoder reads its own mapping."""
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.fail("mpirun not found: run scripts/setup.sh (installs openmpi-bin and mpi4py)")
    command = [mpirun, "-n", "2", "--oversubscribe", sys.executable]
    command += _train(dataset, tmp_path / "results", 4 * ROLLOUT, **{"hardware.mpi_ranks": 2})
    proc = subprocess.run(command, cwd=tmp_path, env={**os.environ, **MPI_ENV}, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with h5py.File(tmp_path / "results" / "quickstart" / "tasks" / "fold0_member0.h5", "r") as h5:
        provenance = dict(h5["provenance"].attrs)
    assert provenance["ranks"] == 2 and provenance["timesteps"] == 4 * ROLLOUT and provenance["env_workers"] == 2
    parameters, rollouts = json.loads(provenance["replica_parameters"]), json.loads(provenance["replica_rollouts"])
    assert rollouts[0] != rollouts[1] and parameters[0] == parameters[1]  # own episodes, averaged gradients


def test_a_member_by_reference_checkpoints_and_resumes_to_the_same_total(dataset: Path, tmp_path: Path):
    steps = 6 * ROLLOUT
    command = [sys.executable, *_train(dataset, tmp_path / "results", steps, **{"ppo.checkpoint_every": ROLLOUT})]
    checkpoint = tmp_path / "results" / "quickstart" / "checkpoints" / "fold0_member0.ckpt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    returncode, _, err = interrupt_at_first_checkpoint(command, tmp_path, checkpoint, signal.SIGUSR2, env)
    assert returncode == 3, err
    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed 1 time(s)" in resumed.stdout
    result = tmp_path / "results" / "quickstart" / "tasks" / "fold0_member0.h5"
    with h5py.File(result, "r") as h5:
        assert h5["provenance"].attrs["timesteps"] == steps and h5["provenance"].attrs["resumed"] == 1
        assert h5["training/timesteps"][-1] == steps
    with zipfile.ZipFile(tmp_path / "results" / "quickstart" / "models" / "fold0_member0.zip") as archive:
        assert json.loads(archive.read("ploutos.json"))["policy_kwargs"]["encoder"] == "shared"
