"""ShmVecEnv: equivalence with DummyVecEnv, failure reporting, clean close, light workers, SB3 training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

from ploutos.bench.env import synthetic_arrays
from ploutos.config import EnvConfig
from ploutos.env.factory import StoreEnvFactory
from ploutos.env.vec import ShmVecEnv, VecEnvWorkerError
from ploutos.node import store
from ploutos.node.context import worker_environment

# the test envs below travel to forkserver workers by value: the workers need not import this module
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class ToyEnv(gym.Env):
    """Random-length episodes (terminated or truncated), seeded; Box or Dict observations."""

    metadata = {"render_modes": []}

    def __init__(self, *, dict_obs: bool = False, discrete: bool = False, fail_at: int | None = None) -> None:
        self.dict_obs, self.fail_at = dict_obs, fail_at
        box = spaces.Box(-10.0, 10.0, shape=(3, 4), dtype=np.float32)
        if dict_obs:
            self.observation_space = spaces.Dict({"x": box, "pos": spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)})
        else:
            self.observation_space = box
        if discrete:
            self.action_space = spaces.MultiDiscrete([3, 3])
        else:
            self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.rng = np.random.default_rng()
        self.t = 0
        self.calls = 0
        self.tag = "toy"

    def _obs(self):
        x = self.rng.normal(size=(3, 4)).astype(np.float32)
        if self.dict_obs:
            return {"x": x, "pos": np.array([self.t / 100.0, -self.t / 100.0], dtype=np.float32)}
        return x

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t = 0
        self.length = int(self.rng.integers(3, 12))
        return self._obs(), {"seed": seed, "options": options}

    def step(self, action):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise ValueError("boom in step")
        self.t += 1
        reward = float(np.sum(action)) + float(self.rng.normal())
        terminated = self.t >= self.length and self.rng.random() < 0.5
        truncated = self.t >= self.length and not terminated
        return self._obs(), reward, terminated, truncated, {"t": self.t}

    def probe(self):
        return {"mpi4py": "mpi4py" in sys.modules, "torch": "torch" in sys.modules, "pid": os.getpid()}

    def crash(self):
        os.kill(os.getpid(), signal.SIGKILL)


def factory(i: int, **kwargs):
    def make():
        return ToyEnv(**kwargs)

    return make


def _compare(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    else:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("dict_obs", "discrete", "per_worker", "copy_obs"), [(False, False, 3, True), (True, True, 2, False)]
)
def test_same_as_dummy_vec_env(dict_obs: bool, discrete: bool, per_worker: int, copy_obs: bool) -> None:
    fns = [factory(i, dict_obs=dict_obs, discrete=discrete) for i in range(5)]
    shm, dummy = ShmVecEnv(fns, envs_per_worker=per_worker, copy_obs=copy_obs), DummyVecEnv(fns)
    try:
        assert len(shm.processes) == -(-5 // per_worker)
        shm.seed(7)
        dummy.seed(7)
        shm.set_options({"a": 1})
        dummy.set_options({"a": 1})
        _compare(shm.reset(), dummy.reset())
        assert shm.reset_infos == dummy.reset_infos
        rng = np.random.default_rng(0)
        dones_seen = 0
        previous = None
        for _ in range(300):
            actions = np.stack([shm.action_space.sample() for _ in range(5)])
            if not discrete:
                actions = rng.uniform(-1, 1, size=(5, 2)).astype(np.float32)
            obs_s, rew_s, done_s, info_s = shm.step(actions)
            if previous is not None:  # the previous step's observations survive one more step (SB3 holds them)
                _compare(*previous)
            obs_d, rew_d, done_d, info_d = dummy.step(actions)
            previous = (obs_s, obs_d)
            _compare(obs_s, obs_d)
            np.testing.assert_array_equal(rew_s, rew_d)
            np.testing.assert_array_equal(done_s, done_d)
            assert rew_s.dtype == rew_d.dtype and done_s.dtype == done_d.dtype
            for i_s, i_d in zip(info_s, info_d, strict=True):
                assert i_s.keys() == i_d.keys()
                assert i_s["t"] == i_d["t"] and i_s["TimeLimit.truncated"] == i_d["TimeLimit.truncated"]
                if "terminal_observation" in i_d:
                    _compare(i_s["terminal_observation"], i_d["terminal_observation"])
            assert shm.reset_infos == dummy.reset_infos
            dones_seen += int(done_d.sum())
        assert dones_seen > 50
        assert shm.get_attr("t") == dummy.get_attr("t")
        assert shm.get_attr("t", indices=[4, 0]) == dummy.get_attr("t", indices=[4, 0])
        shm.set_attr("tag", "changed", indices=[1, 3])
        assert shm.get_attr("tag") == ["toy", "changed", "toy", "changed", "toy"]
        assert shm.env_is_wrapped(gym.Wrapper) == [False] * 5
        assert shm.has_attr("tag") and not shm.has_attr("nope")
        with pytest.raises(AttributeError):
            shm.get_attr("nope")
        assert shm.get_attr("t") == dummy.get_attr("t")  # still usable after an attribute error
    finally:
        shm.close()
        dummy.close()


def test_workers_are_light_and_close_leaves_no_process() -> None:
    venv = ShmVecEnv([factory(i) for i in range(4)], envs_per_worker=2)
    pids = venv.pids
    probes = venv.env_method("probe")
    assert {p["pid"] for p in probes} == set(pids)
    assert not any(p["mpi4py"] for p in probes)
    assert not any(p["torch"] for p in probes)  # stable-baselines3 is not imported in workers either
    venv.reset()
    venv.close()
    venv.close()  # idempotent
    for process in venv.processes:
        assert not process.is_alive()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_killed_worker_is_a_clear_error_not_a_hang() -> None:
    venv = ShmVecEnv([factory(i) for i in range(4)], envs_per_worker=2)
    venv.reset()
    victim = venv.pids[1]
    os.kill(victim, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(VecEnvWorkerError, match=rf"worker 1 \(pid {victim}, envs 2-3\) was killed by signal SIGKILL"):
        venv.step(np.zeros((4, 2), dtype=np.float32))
    assert time.monotonic() - start < 10
    assert all(not p.is_alive() for p in venv.processes)
    with pytest.raises(VecEnvWorkerError, match="closed after a failure"):
        venv.reset()
    venv.close()


def test_worker_dying_inside_a_call_is_reported() -> None:
    venv = ShmVecEnv([factory(i) for i in range(2)], envs_per_worker=1)
    with pytest.raises(VecEnvWorkerError, match="worker 1 .* killed by signal SIGKILL while running env_method"):
        venv.env_method("crash", indices=[1])
    venv.close()


def test_env_raising_in_step_names_env_and_error() -> None:
    fns = [factory(0), factory(1), factory(2, fail_at=3)]
    venv = ShmVecEnv(fns, envs_per_worker=2)
    venv.reset()
    venv.step(np.zeros((3, 2), dtype=np.float32))
    venv.step(np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(VecEnvWorkerError) as caught:
        venv.step(np.zeros((3, 2), dtype=np.float32))
    text = str(caught.value)
    assert "env 2 in ShmVecEnv worker 1" in text and "ValueError: boom in step" in text and "Traceback" in text
    assert all(not p.is_alive() for p in venv.processes)
    venv.close()


def test_env_raising_at_construction() -> None:
    def broken():
        raise RuntimeError("cannot build this env")

    with pytest.raises(VecEnvWorkerError, match="env 1 in ShmVecEnv worker 0 .*cannot build this env"):
        ShmVecEnv([factory(0), broken], envs_per_worker=2)


def test_ppo_and_recurrent_ppo_learn() -> None:
    from sb3_contrib import RecurrentPPO
    from stable_baselines3 import PPO

    venv = ShmVecEnv([factory(i) for i in range(4)], envs_per_worker=2, copy_obs=False)
    try:
        PPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, device="cpu").learn(256)
        RecurrentPPO("MlpLstmPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, device="cpu").learn(256)
    finally:
        venv.close()
    dict_venv = ShmVecEnv([factory(i, dict_obs=True, discrete=True) for i in range(2)], envs_per_worker=2)
    try:
        PPO("MultiInputPolicy", dict_venv, n_steps=32, batch_size=32, n_epochs=1, device="cpu").learn(128)
    finally:
        dict_venv.close()


def trading_factory(seed: int, layout: str):
    def make():
        from ploutos.bench.env import synthetic_arrays
        from ploutos.config import EnvConfig
        from ploutos.env.trading import TradingEnv

        cfg = replace(EnvConfig(), lookback=8, obs_layout=layout, episode_bars=40)
        arrays = synthetic_arrays(300, 3, 4, seed=5)
        return TradingEnv(arrays, cfg, rows=slice(0, 300), bars_per_year=252 * 7)

    return make


@pytest.mark.parametrize("layout", ["flat", "asset_lookback_feature"])
def test_trading_env_same_as_dummy_and_learns(layout: str) -> None:
    from stable_baselines3 import PPO

    fns = [trading_factory(i, layout) for i in range(4)]
    shm, dummy = ShmVecEnv(fns, envs_per_worker=2, copy_obs=False), DummyVecEnv(fns)
    try:
        shm.seed(3)
        dummy.seed(3)
        _compare(shm.reset(), dummy.reset())
        rng = np.random.default_rng(0)
        dones = 0
        for _ in range(120):
            actions = rng.uniform(-1, 1, size=(4, *shm.action_space.shape)).astype(np.float32)
            obs_s, rew_s, done_s, info_s = shm.step(actions)
            obs_d, rew_d, done_d, info_d = dummy.step(actions)
            _compare(obs_s, obs_d)
            np.testing.assert_array_equal(rew_s, rew_d)
            np.testing.assert_array_equal(done_s, done_d)
            for i_s, i_d in zip(info_s, info_d, strict=True):
                assert i_s.keys() == i_d.keys() and i_s["equity"] == i_d["equity"]
                np.testing.assert_array_equal(i_s["weights"], i_d["weights"])
                if "terminal_observation" in i_d:
                    _compare(i_s["terminal_observation"], i_d["terminal_observation"])
            dones += int(done_d.sum())
        assert dones >= 4
        policy = "MlpPolicy" if layout == "flat" else "MultiInputPolicy"
        PPO(policy, shm, n_steps=32, batch_size=64, n_epochs=1, device="cpu").learn(256)
    finally:
        shm.close()
        dummy.close()


def test_a_store_env_worker_loads_neither_torch_nor_polars_nor_mpi4py():
    """What a ShmVecEnv worker of the trainer imports: its module, the unpickled factory and the env
    it builds over the node store. torch and Polars cost seconds and memory per worker; mpi4py in a
    worker under mpirun hangs the job."""
    arrays = synthetic_arrays(300, 2, 4)
    with store.create(arrays, tag="importprobe", config_hash="probe") as segment:
        factory = StoreEnvFactory(segment.name, "probe", EnvConfig(lookback=8), (0, 300), 24 * 365)
        code = (
            "import pickle, sys; import ploutos.env._vecworker\n"
            "env = pickle.loads(sys.stdin.buffer.read())(); env.reset(seed=0); env.step(env.action_space.sample())\n"
            "print(sorted(m for m in ('torch', 'polars', 'mpi4py', 'stable_baselines3') if m in sys.modules))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], input=cloudpickle.dumps(factory), capture_output=True, timeout=120,
            env=worker_environment(1),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "[]"


@pytest.mark.parametrize("ending", ["unclosed", "worker-raised"])
def test_a_process_that_does_not_close_its_vec_env_exits_promptly(ending: str, tmp_path):
    """Workers ignore SIGTERM (it is the trainer's to handle), so multiprocessing's exit handler could
    wait for them forever; an unclosed ShmVecEnv shuts them down at interpreter exit instead."""
    script = tmp_path / "forget.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import numpy as np\n"
        "from ploutos.env.vec import ShmVecEnv\n"
        "from test_env_vec import factory\n"
        "if __name__ == '__main__':\n"
        "    venv = ShmVecEnv([factory(i) for i in range(4)], envs_per_worker=2)\n"
        "    venv.reset()\n"
        "    for _ in range(10):\n"
        "        venv.step(np.stack([venv.action_space.sample() for _ in range(4)]))\n"
        + (
            "    try:\n        venv.get_attr('no_such_attribute')\n"
            "    except AttributeError:\n        print('raised')\n"
            if ending == "worker-raised"
            else ""
        )
        + "    print('done', flush=True)\n"
    )
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == (["raised", "done"] if ending == "worker-raised" else ["done"])
    assert time.monotonic() - started < 30
