"""Checkpoints of a training task: round trip, refusals (nothing in a file runs code), atomic save,
RNG states, preemption signals."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import signal
import sys
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ploutos.bench.env import synthetic_arrays
from ploutos.config import EnvConfig
from ploutos.env import TradingEnv
from ploutos.errors import PloutosError
from ploutos.train.checkpoint import (
    FORMAT_VERSION,
    PREEMPTION_SIGNALS,
    Checkpoint,
    CheckpointError,
    PreemptionFlag,
    capture_rng,
    restore_rng,
)


def make_checkpoint(config_hash: str = "hash-a", timesteps: int = 4096) -> Checkpoint:
    generators = [np.random.default_rng(1), np.random.Generator(np.random.Philox(2))]
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
    layer(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    return Checkpoint(
        config_hash=config_hash,
        timesteps=timesteps,
        policy=layer.state_dict(),
        optimizer=optimizer.state_dict(),
        learner={"num_timesteps": timesteps, "n_updates": 7, "episodes": [{"r": -0.5, "l": 64.0, "t": 1.5}]},
        norm_center=np.linspace(-1.0, 1.0, 6),
        norm_scale=np.linspace(0.5, 3.0, 6).astype(np.float32),
        rank_rng=[capture_rng(generators), capture_rng([])],
        curve={"timesteps": [1024.0, 2048.0], "ep_rew_mean": [-0.5, 0.25]},
        resumed=2,
        wall_seconds=12.75,
    )


def assert_same_checkpoint(a: Checkpoint, b: Checkpoint) -> None:
    assert (a.config_hash, a.timesteps, a.learner, a.curve, a.resumed, a.wall_seconds) == (
        b.config_hash, b.timesteps, b.learner, b.curve, b.resumed, b.wall_seconds,
    )  # fmt: skip
    assert a.policy.keys() == b.policy.keys() and all(torch.equal(a.policy[k], b.policy[k]) for k in a.policy)
    assert a.optimizer["param_groups"] == b.optimizer["param_groups"]
    for index, state in a.optimizer["state"].items():
        assert all(torch.equal(value, b.optimizer["state"][index][key]) for key, value in state.items())
    np.testing.assert_array_equal(a.norm_center, b.norm_center)
    np.testing.assert_array_equal(a.norm_scale, b.norm_scale)
    assert len(a.rank_rng) == len(b.rank_rng)
    for x, y in zip(a.rank_rng, b.rank_rng, strict=True):
        assert x["python"] == y["python"]
        np.testing.assert_equal(x["numpy"], y["numpy"])
        assert torch.equal(x["torch"], y["torch"])
        np.testing.assert_equal(x["envs"], y["envs"])


def one_line_error(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert message and "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------------
# save and load
# ------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path):
    path = tmp_path / "checkpoints" / "fold0_member1.ckpt"  # the folder is created
    original = make_checkpoint()
    original.save(path)
    loaded = Checkpoint.load(path, config_hash="hash-a")
    assert loaded is not original
    assert_same_checkpoint(loaded, original)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_save_replaces_an_older_checkpoint(tmp_path: Path):
    path = tmp_path / "c.ckpt"
    make_checkpoint(timesteps=1).save(path)
    make_checkpoint(timesteps=2).save(path)
    assert Checkpoint.load(path, config_hash="hash-a").timesteps == 2


def test_a_checkpoint_of_another_config_is_refused_naming_both_hashes(tmp_path: Path):
    path = tmp_path / "c.ckpt"
    make_checkpoint("aaaa1111").save(path)
    with pytest.raises(CheckpointError) as info:
        Checkpoint.load(path, config_hash="bbbb2222")
    message = one_line_error(info)
    assert "aaaa1111" in message and "bbbb2222" in message and str(path) in message
    assert isinstance(info.value, PloutosError)


def _pickle_of_a_vanished_class() -> bytes:
    module = types.ModuleType("ploutos_test_vanished")
    cls = type("Gone", (), {"__module__": module.__name__})
    module.Gone = cls
    sys.modules[module.__name__] = module
    try:
        return pickle.dumps(cls())
    finally:
        del sys.modules[module.__name__]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"this is not a checkpoint\n", id="text"),
        pytest.param(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64, id="hdf5-header"),
        pytest.param(pickle.dumps(list(range(500)))[:40], id="truncated-pickle"),
        pytest.param(pickle.dumps({"config_hash": "hash-a"}), id="a-dict"),
        pytest.param(pickle.dumps(np.zeros(3)), id="an-array"),
        pytest.param(_pickle_of_a_vanished_class(), id="vanished-class"),
    ],
)
def test_garbage_and_foreign_files_are_refused_in_one_line(tmp_path: Path, content: bytes):
    path = tmp_path / "c.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        Checkpoint.load(path, config_hash="hash-a")
    assert str(path) in one_line_error(info)


def test_random_bytes_are_refused(tmp_path: Path):
    rng = np.random.default_rng(0)
    path = tmp_path / "c.ckpt"
    for size in (1, 2, 8, 64, 512) * 40:
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        with pytest.raises(CheckpointError) as info:
            Checkpoint.load(path, config_hash="hash-a")
        one_line_error(info)


class _RunsCode:
    """Unpickling this runs ``touch <marker>``: what a crafted checkpoint would do to a loader using pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zip(path: Path, meta: object, tensors_blob: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ploutos.json", json.dumps(meta))
        archive.writestr("tensors.pt", tensors_blob)


def test_a_crafted_file_runs_no_code(tmp_path: Path):
    marker = tmp_path / "pwned"
    meta = {"kind": "checkpoint", "format": FORMAT_VERSION, "config_hash": "hash-a"}
    for name, blob in (("pickle", pickle.dumps(_RunsCode(marker))), ("torch", _torch_bytes(_RunsCode(marker)))):
        path = tmp_path / f"{name}.ckpt"
        _zip(path, meta, blob)
        with pytest.raises(CheckpointError) as info:
            Checkpoint.load(path, config_hash="hash-a")
        assert str(path) in one_line_error(info)
    (tmp_path / "old.ckpt").write_bytes(pickle.dumps(_RunsCode(marker)))  # the old format: a bare pickle
    with pytest.raises(CheckpointError):
        Checkpoint.load(tmp_path / "old.ckpt", config_hash="hash-a")
    assert not marker.exists()


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_a_missing_file_another_format_and_a_model_file_are_refused(tmp_path: Path):
    with pytest.raises(CheckpointError) as info:
        Checkpoint.load(tmp_path / "absent.ckpt", config_hash="hash-a")
    one_line_error(info)
    make_checkpoint().save(tmp_path / "c.ckpt")
    with zipfile.ZipFile(tmp_path / "c.ckpt") as archive:
        meta, blob = json.loads(archive.read("ploutos.json")), archive.read("tensors.pt")
    for name, changed in (("newer", {"format": FORMAT_VERSION + 1}), ("model", {"kind": "model"})):
        _zip(tmp_path / f"{name}.ckpt", {**meta, **changed}, blob)
        with pytest.raises(CheckpointError) as info:
            Checkpoint.load(tmp_path / f"{name}.ckpt", config_hash="hash-a")
        assert "format" in one_line_error(info)
    _zip(tmp_path / "damaged.ckpt", {key: value for key, value in meta.items() if key != "learner"}, blob)
    with pytest.raises(CheckpointError) as info:
        Checkpoint.load(tmp_path / "damaged.ckpt", config_hash="hash-a")
    assert "damaged" in one_line_error(info)


def test_a_failing_save_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "c.ckpt"
    make_checkpoint(timesteps=100).save(path)
    before = path.read_bytes()
    write = zipfile.ZipFile.writestr

    def half_then_fail(archive, name, data, *args, **kwargs):
        if name == "tensors.pt":
            write(archive, name, data[: len(data) // 2], *args, **kwargs)
            raise OSError(28, "No space left on device")
        return write(archive, name, data, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        make_checkpoint(timesteps=200).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]
    assert Checkpoint.load(path, config_hash="hash-a").timesteps == 100


# ------------------------------------------------------------------------------------------------
# RNG states
# ------------------------------------------------------------------------------------------------


def _draws(generators: list[np.random.Generator]) -> list:
    return [
        [random.random() for _ in range(5)],
        np.random.random(5).tolist(),
        torch.rand(5).tolist(),
        [gen.random(5).tolist() for gen in generators],
    ]


def test_capture_and_restore_repeat_the_next_draws():
    env = TradingEnv(synthetic_arrays(60, 2, 2, seed=0), EnvConfig(lookback=4), rows=slice(0, 60), bars_per_year=1764)
    env.reset(seed=5)
    generators = [np.random.default_rng(42), env.np_random, np.random.Generator(np.random.MT19937(7))]
    for gen in generators:
        gen.random(3)  # not at a fresh state
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = pickle.loads(pickle.dumps(capture_rng(generators)))  # as it travels inside a checkpoint
    first = _draws(generators)
    assert _draws(generators) != first  # the draws move on
    restored = restore_rng(state)
    assert len(restored) == len(generators)
    assert [type(g.bit_generator) for g in restored] == [type(g.bit_generator) for g in generators]
    assert _draws(restored) == first
    # a restored env generator drives the env's random start the same way
    env.np_random = restore_rng(state)[1]
    start = env.reset()[1]["timestamp"]
    env.np_random = restore_rng(state)[1]
    assert env.reset()[1]["timestamp"] == start


# ------------------------------------------------------------------------------------------------
# preemption
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def handlers():
    """Put sentinel handlers in place of the preemption signals' handlers; put the real ones back after."""
    saved = {signum: signal.getsignal(signum) for signum in PREEMPTION_SIGNALS}
    sentinels = {}
    for signum in PREEMPTION_SIGNALS:

        def sentinel(signum, frame):  # pragma: no cover - must never run
            raise AssertionError(f"previous handler of {signum} called while the flag was installed")

        sentinels[signum] = sentinel
        signal.signal(signum, sentinel)
    yield sentinels
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _deliver(signum: int, flag: PreemptionFlag) -> None:
    os.kill(os.getpid(), signum)
    deadline = time.monotonic() + 5
    while not flag.raised and time.monotonic() < deadline:  # Python runs handlers between bytecodes
        time.sleep(0.001)


@pytest.mark.parametrize(("signum", "name"), [(signal.SIGUSR2, "SIGUSR2"), (signal.SIGTERM, "SIGTERM")])
def test_a_preemption_signal_sets_the_flag_without_killing(handlers, signum, name):
    flag = PreemptionFlag()
    assert not flag.raised and flag.name == ""
    assert flag.install() is flag
    try:
        _deliver(signum, flag)
        assert flag.raised and flag.signal == signum and flag.name == name
        _deliver(signum, flag)  # a second one still only sets the flag
        assert flag.raised and flag.name == name
    finally:
        flag.restore()
    for s in PREEMPTION_SIGNALS:
        assert signal.getsignal(s) is handlers[s]


def test_restore_puts_back_the_previous_handlers(handlers):
    flag = PreemptionFlag().install()
    for signum in PREEMPTION_SIGNALS:
        assert signal.getsignal(signum) is not handlers[signum]
    flag.restore()
    for signum in PREEMPTION_SIGNALS:
        assert signal.getsignal(signum) is handlers[signum]
    assert not flag.raised


def test_restore_brings_back_default_dispositions():
    saved = {signum: signal.getsignal(signum) for signum in PREEMPTION_SIGNALS}
    try:
        for signum in PREEMPTION_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        flag = PreemptionFlag().install()
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        flag.restore()
        assert all(signal.getsignal(signum) is signal.SIG_DFL for signum in PREEMPTION_SIGNALS)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
