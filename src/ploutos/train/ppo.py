"""PPO whose rollouts skip the torch round trips when the policy acts by compiled arrays, and whose
update computes the loss in one compiled pass when the policy's pass is written out.

SB3's ``collect_rollouts`` wraps every vec-env step of a rollout in torch: the observations become
a tensor, the policy's outputs tensors, and the rollout buffer's ``add`` clones them back into
numpy. With a compiled rollout forward (:meth:`AssetHeadsPolicy.act_arrays
<ploutos.train.policies.AssetHeadsPolicy.act_arrays>`: 0.1 ms a step at 2 envs) those round trips
and SB3's per-step glue cost more than the forward: 0.45 of a 0.55 ms step. :class:`PPO` keeps
SB3's rollout step for step (the policy in eval mode, clipped actions, callbacks with the loop's
locals, the episode-info buffer, timeouts bootstrapped with the critic's value of the terminal
observation, the last values and the advantages) and moves numpy arrays between the policy, the
env and the buffer. A test holds the buffer it fills bitwise equal to SB3's loop with the same
policy and seed. Anything else (another policy, state-dependent exploration, dict observations,
a GPU) goes through SB3's loop.

SB3's ``train`` spends some 40 torch calls and 20 autograd nodes a minibatch on the loss over
``B`` numbers (about 1 ms of a 17 ms minibatch at 2 envs). With per-asset heads run
written out (:class:`~ploutos.train.update.AssetHeadsPass`), :meth:`PPO.train` keeps SB3's update
epoch for epoch (sampling, early stop on the KL target, logs) with the loss, its gradients and its
figures from :func:`~ploutos.train.update.clipped_loss`, and clips the gradients over all
parameters at once; a test holds the weights after two epochs and the logged figures to SB3's
``train`` on the same rollout. Anything else goes through SB3's ``train``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO as SB3PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from ploutos.train.policies import AssetHeadsPolicy
from ploutos.train.update import clipped_loss


class PPO(SB3PPO):
    """SB3's PPO; rollouts by numpy arrays when the policy has a compiled rollout forward."""

    def _arrays_apply(self, rollout_buffer: RolloutBuffer) -> bool:
        policy = self.policy
        return (
            isinstance(policy, AssetHeadsPolicy)
            and type(rollout_buffer) is RolloutBuffer
            and isinstance(self.action_space, spaces.Box)
            and not self.use_sde
            and not policy.squash_output
            and isinstance(self._last_obs, np.ndarray)
            and self._last_obs.dtype == np.float32
            and self.device.type == "cpu"
            and policy.compiled_arrays_apply()
        )

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        if not self._arrays_apply(rollout_buffer):
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        policy = self.policy
        assert isinstance(policy, AssetHeadsPolicy) and isinstance(self._last_obs, np.ndarray)
        policy.set_training_mode(False)
        rollout_buffer.reset()
        callback.on_rollout_start()
        low, high = self.action_space.low, self.action_space.high
        n_steps = 0
        while n_steps < n_rollout_steps:
            actions, values, log_probs = policy.act_arrays(self._last_obs)
            clipped_actions = np.minimum(np.maximum(actions, low), high)  # np.clip's result, without its wrapper
            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1
            if dones.any():
                for index in np.flatnonzero(dones):
                    self._bootstrap_timeout(rewards, index, infos[index])
            self._store(rollout_buffer, actions, rewards, values, log_probs)
            self._last_obs = new_obs
            self._last_episode_starts = dones
        with torch.no_grad():
            last_values = policy.predict_values(obs_as_tensor(new_obs, self.device))
        rollout_buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _bootstrap_timeout(self, rewards: np.ndarray, index: int, info: dict[str, Any]) -> None:
        """A truncated episode's reward plus the discounted value of its terminal observation (SB3 #633)."""
        terminal = info.get("terminal_observation")
        if terminal is None or not info.get("TimeLimit.truncated", False):
            return
        terminal_obs = self.policy.obs_to_tensor(terminal)[0]
        with torch.no_grad():
            terminal_value = self.policy.predict_values(terminal_obs)[0]  # type: ignore[arg-type]
        rewards[index] += self.gamma * terminal_value

    def _store(
        self, buffer: RolloutBuffer, actions: np.ndarray, rewards: np.ndarray, values: np.ndarray,
        log_probs: np.ndarray,
    ) -> None:  # fmt: skip
        """What ``RolloutBuffer.add`` stores, from arrays (its clones of tensors skipped)."""
        pos = buffer.pos
        buffer.observations[pos] = self._last_obs
        buffer.actions[pos] = actions.reshape(buffer.n_envs, buffer.action_dim)
        buffer.rewards[pos] = rewards
        buffer.episode_starts[pos] = self._last_episode_starts
        buffer.values[pos] = values.reshape(-1)
        buffer.log_probs[pos] = log_probs
        buffer.pos = pos + 1
        if buffer.pos == buffer.buffer_size:
            buffer.full = True

    # ------------------------------------------------------------------------------------------ the update

    def _loss_pass_applies(self) -> bool:
        """Whether :meth:`train` computes the loss in one compiled pass: the policy's heads run
        written out (:class:`~ploutos.train.update.AssetHeadsPass`), Box actions, a CPU learner."""
        policy = self.policy
        return (
            isinstance(policy, AssetHeadsPolicy)
            and policy.update_written_out
            and isinstance(self.action_space, spaces.Box)
            and self.device.type == "cpu"
        )

    def train(self) -> None:
        """SB3's update, epoch for epoch and minibatch for minibatch (the same sampling, losses,
        early stop on the KL target, gradient clipping and logs), with the loss and its figures from
        :func:`~ploutos.train.update.clipped_loss` and gradient clipping over all parameters at once;
        otherwise SB3's own."""
        if not self._loss_pass_applies():
            return super().train()
        policy = self.policy
        policy.set_training_mode(True)
        self._update_learning_rate(policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        clip_range_vf = None
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        figures, approx_kls = [], []
        parameters = list(policy.parameters())
        loss = None
        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kls = []
            for batch in self.rollout_buffer.get(self.batch_size):
                values, log_prob, entropy = policy.evaluate_actions(batch.observations, batch.actions)
                loss, found = clipped_loss(
                    log_prob, values.flatten(), entropy, batch.old_log_prob, batch.advantages, batch.old_values,
                    batch.returns, clip_range=clip_range, clip_range_vf=clip_range_vf, ent_coef=self.ent_coef,
                    vf_coef=self.vf_coef, normalize_advantage=self.normalize_advantage,
                )  # fmt: skip
                figures.append(found)
                approx_kls.append(found.approx_kl)
                if self.target_kl is not None and found.approx_kl > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {found.approx_kl:.2f}")
                    break
                policy.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm, foreach=True)
                policy.optimizer.step()
            self._n_updates += 1
            if not continue_training:
                break
        buffer = self.rollout_buffer
        record = self.logger.record
        record("train/entropy_loss", np.mean([f.entropy_loss for f in figures]))
        record("train/policy_gradient_loss", np.mean([f.policy_loss for f in figures]))
        record("train/value_loss", np.mean([f.value_loss for f in figures]))
        record("train/approx_kl", np.mean(approx_kls))
        record("train/clip_fraction", np.mean([f.clip_fraction for f in figures]))
        if loss is not None:
            record("train/loss", loss.item())
        record("train/explained_variance", explained_variance(buffer.values.flatten(), buffer.returns.flatten()))
        record("train/std", torch.exp(policy.log_std).mean().item())
        record("train/n_updates", self._n_updates, exclude="tensorboard")
        record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            record("train/clip_range_vf", clip_range_vf)
