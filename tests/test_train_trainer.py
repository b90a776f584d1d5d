"""``ploutos train`` and ``ploutos validate`` end to end on the quickstart data: results, ensembles,
preemption and resume, and two data-parallel MPI ranks whose replicas stay identical."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import assert_one_line_error, interrupt_at_first_checkpoint
from ploutos.results.hdf5 import SCHEMA, missing_fields
from ploutos.train.model import member_seed

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "PYTHONUNBUFFERED": "1"}
ROLLOUT = 512  # n_steps 256 x 2 envs on the 2-core CI machine, or n_envs set below


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("data") / "quickstart"
    proc = subprocess.run(
        [sys.executable, "-m", "ploutos", "data", "build", "--no-progress", "--set", f"data.store={store}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return store


def _settings(dataset: Path, results: Path, steps: int = 2 * ROLLOUT, **extra: object) -> list[str]:
    values = {
        "data.store": dataset,
        "results_dir": results,
        "ppo.total_timesteps": steps,
        "hardware.n_envs": 2,
        "hardware.envs_per_worker": 1,
        "env.rebalance_band": 0,  # an untrained policy's targets move less than the quickstart's band
        **extra,
    }
    return [part for key, value in values.items() for part in ("--set", f"{key}={value}")]


def _attrs(path: Path, group: str) -> dict:
    with h5py.File(path, "r") as h5:
        return dict(h5[group].attrs)


def test_member_seeds_are_distinct_and_stable():
    seeds = {member_seed(7, fold, member) for fold in range(5) for member in range(8)}
    assert len(seeds) == 40
    assert member_seed(7, 1, 2) == member_seed(7, 1, 2) != member_seed(8, 1, 2)


def test_train_writes_complete_member_and_ensemble_files(ploutos, dataset, tmp_path):
    settings = _settings(dataset, tmp_path / "results")
    first = ploutos("train", "--fold", "0", "--member", "0", "--no-progress", *settings)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "results" / "quickstart"
    member0 = run / "tasks" / "fold0_member0.h5"
    assert missing_fields(member0) == []
    assert not (run / "tasks" / "fold0_ensemble.h5").exists()  # member 1 is missing
    assert "sharpe" in first.stdout and "buy_and_hold" in first.stdout

    second = ploutos("train", "--fold", "0", "--member", "1", "--no-progress", *settings)
    assert second.returncode == 0, second.stderr
    ensemble = run / "tasks" / "fold0_ensemble.h5"
    assert missing_fields(ensemble) == [] and "ensemble" in second.stdout
    assert (run / "config.yaml").exists() and not list((run / "checkpoints").iterdir())

    with h5py.File(member0, "r") as h5:
        assert set(SCHEMA) - {"/"} <= {f"/{name}" for name in _all_names(h5)}
        curve = h5["training/timesteps"][:]
        assert list(curve) == [ROLLOUT, 2 * ROLLOUT]
        assert np.isfinite(h5["training/value_loss"][:]).all()  # the last update's losses are kept too
        test_times = h5["test/timestamps"][:]
        fold = dict(h5["fold"].attrs)
        train_rows, test_rows = fold["train_rows"], fold["test_rows"]
        assert train_rows[1] <= test_rows[0] - fold["embargo_bars"]  # no training bar in or next to the test
        first_mark = np.datetime64(int(test_times[0]), "us")
        assert first_mark < np.datetime64(fold["test_start"].rstrip("Z")) <= np.datetime64(int(test_times[1]), "us")
        equity = h5["test/equity"][:]
        assert len(equity) == len(test_times) == len(h5["benchmarks/buy_and_hold/equity"][:])
        assert equity[0] == pytest.approx(100_000.0)
        provenance = dict(h5["provenance"].attrs)
        assert provenance["timesteps"] == 2 * ROLLOUT and provenance["resumed"] == 0 and provenance["ranks"] == 1
        assert len(provenance["dataset_hash"]) == 64 and provenance["git_revision"]
        assert json.loads(provenance["packages"])["stable-baselines3"]
    with h5py.File(ensemble, "r") as h5:
        assert h5.attrs["kind"] == "ensemble" and h5.attrs["member"] == -1
        member_equity = h5py.File(member0, "r")["test/equity"][:]
        assert len(h5["test/equity"][:]) == len(member_equity)
        # two members averaged are a policy of their own, not either member
        assert not np.array_equal(h5["test/equity"][:], member_equity)

    again = ploutos("train", "--fold", "0", "--member", "0", "--no-progress", *settings)
    assert again.returncode == 0 and "already done" in again.stdout


def _all_names(h5: h5py.File) -> list[str]:
    names: list[str] = []
    h5.visit(names.append)
    return names


def test_train_refuses_impossible_tasks_with_one_line(ploutos, dataset, tmp_path):
    settings = _settings(dataset, tmp_path / "results")
    assert_one_line_error(ploutos("train", "--fold", "9", *settings), "fold 9 does not exist", "3 fold(s)")
    assert_one_line_error(ploutos("train", "--fold", "0", "--member", "2", *settings), "member 2", "ensemble.members")
    missing = _settings(tmp_path / "nowhere", tmp_path / "other-results")
    assert_one_line_error(ploutos("train", "--fold", "0", *missing), "ploutos data build")
    assert not (tmp_path / "results").exists()  # a refused task leaves no run folder behind


def test_a_run_folder_belongs_to_one_config(ploutos, dataset, tmp_path):
    results = tmp_path / "results"
    run = results / "quickstart"
    (run).mkdir(parents=True)
    (run / "config.yaml").write_text("name: quickstart\n# config hash: 0123456789abcdef\n")
    refused = ploutos("train", "--fold", "0", *_settings(dataset, results))
    assert_one_line_error(refused, "another config", "0123456789abcdef")
    assert (run / "config.yaml").read_text().endswith("0123456789abcdef\n")  # untouched


@pytest.mark.parametrize("signum", [signal.SIGUSR2, signal.SIGINT], ids=["SIGUSR2", "SIGINT"])
def test_signalled_task_checkpoints_and_resumes_to_the_same_total(dataset, tmp_path, signum):
    """Slurm's time-limit warning, and Ctrl-C: both checkpoint at the next rollout and exit 3."""
    steps = 8 * ROLLOUT
    command = [sys.executable, "-m", "ploutos", "train", "--fold", "0", "--member", "0", "--no-progress"]
    command += _settings(dataset, tmp_path / "results", steps, **{"ppo.checkpoint_every": ROLLOUT})
    checkpoint = tmp_path / "results" / "quickstart" / "checkpoints" / "fold0_member0.ckpt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    returncode, _, err = interrupt_at_first_checkpoint(command, tmp_path, checkpoint, signum, env)
    assert returncode == 3, err
    lines = err.strip().splitlines()
    assert signal.Signals(signum).name in lines[-1] and "run the same command again to resume" in lines[-1]
    assert len(lines) == (2 if signum == signal.SIGINT else 1), err  # Ctrl-C first says what it will do
    result = tmp_path / "results" / "quickstart" / "tasks" / "fold0_member0.h5"
    assert checkpoint.exists() and not result.exists()

    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed 1 time(s)" in resumed.stdout
    provenance = _attrs(result, "provenance")
    assert provenance["timesteps"] == steps and provenance["resumed"] == 1
    with h5py.File(result, "r") as h5:
        curve = h5["training/timesteps"][:]
    assert curve[-1] == steps and np.all(np.diff(curve) > 0)  # continued, not restarted
    assert curve[0] == ROLLOUT  # the rows before the checkpoint came from the checkpoint
    assert not checkpoint.exists()


@pytest.mark.cluster
def test_two_mpi_ranks_train_one_member_with_identical_replicas(dataset, tmp_path):
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.fail("mpirun not found: run scripts/setup.sh (installs openmpi-bin and mpi4py)")
    steps = 4 * ROLLOUT
    settings = _settings(dataset, tmp_path / "results", steps, **{"hardware.mpi_ranks": 2, "hardware.n_envs": 1})
    command = [mpirun, "-n", "2", "--oversubscribe", sys.executable, "-m", "ploutos", "train", "--fold", "0"]
    proc = subprocess.run(
        [*command, "--no-progress", *settings],
        cwd=tmp_path,
        env={**os.environ, **MPI_ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    provenance = _attrs(tmp_path / "results" / "quickstart" / "tasks" / "fold0_member0.h5", "provenance")
    assert provenance["ranks"] == 2 and provenance["timesteps"] == steps
    parameters = json.loads(provenance["replica_parameters"])
    rollouts = json.loads(provenance["replica_rollouts"])
    assert len(parameters) == len(rollouts) == 2
    assert rollouts[0] != rollouts[1]  # each rank saw its own episodes, so its own gradients...
    assert parameters[0] == parameters[1]  # ...and averaging them kept the replicas identical


def test_recurrent_ppo_member(ploutos, dataset, tmp_path):
    settings = _settings(dataset, tmp_path / "results", **{"ppo.algo": "recurrent_ppo", "ppo.lstm_hidden": 16})
    result = ploutos("train", "--fold", "2", "--no-progress", *settings)
    assert result.returncode == 0, result.stderr
    assert missing_fields(tmp_path / "results" / "quickstart" / "tasks" / "fold2_member0.h5") == []
    # The whole task's wall-clock time, and training's share of it, each labelled as such.
    took = re.search(r"the task took ([\d.]+) s \(data, features, training, evaluation\), of which training ([\d.]+) s",
                     result.stdout)  # fmt: skip
    assert took, result.stdout
    assert float(took[1]) >= float(took[2]) > 0


def test_validate_reports_every_stage(ploutos, dataset, tmp_path):
    result = ploutos("validate", *_settings(dataset, tmp_path / "results"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    stages = [line[7:].split()[0] for line in lines if line.startswith("[ ok ]")]
    assert stages == ["data", "folds", "features", "train", "results"]
    started = [line[7:].split()[0] for line in lines if line.startswith("[ .. ]")]
    assert started == stages  # each stage says it starts before it runs, then how it went and in how long
    for name in stages:
        start = next(i for i, line in enumerate(lines) if line.startswith(f"[ .. ] {name} "))
        done = next(i for i, line in enumerate(lines) if line.startswith(f"[ ok ] {name} "))
        assert start < done and re.search(r"\(\d+\.\d s\)$", lines[done])
    assert (tmp_path / "results" / "quickstart-validate" / "tasks" / "fold0_ensemble.h5").exists()
    assert not (tmp_path / "results" / "quickstart").exists()  # the real run's folder is not touched


def test_validate_names_the_failing_stage(ploutos, dataset, tmp_path):
    settings = _settings(dataset, tmp_path / "results", **{"walkforward.train_months": 11})
    result = ploutos("validate", *settings)
    assert result.returncode == 2
    assert "[FAIL] folds" in result.stdout and "train 11 + test 2 months" in result.stdout
    assert result.stderr.strip().startswith("ploutos: error: validate: stage folds failed")


def test_a_damaged_task_file_is_trained_again_and_a_lost_ensemble_rebuilt(ploutos, dataset, tmp_path):
    settings = _settings(dataset, tmp_path / "results", ROLLOUT)
    for member in (0, 1):
        assert ploutos("train", "--fold", "0", "--member", str(member), "--no-progress", *settings).returncode == 0
    tasks = tmp_path / "results" / "quickstart" / "tasks"
    with open(tasks / "fold0_member0.h5", "r+b") as handle:  # a kill mid-copy, a full disk
        handle.truncate(100)
    again = ploutos("train", "--fold", "0", "--member", "0", "--no-progress", *settings)
    assert again.returncode == 0, again.stderr
    assert "trained again: fold0_member0.h5 unreadable" in again.stdout
    assert not missing_fields(tasks / "fold0_member0.h5")

    (tasks / "fold0_ensemble.h5").unlink()  # a kill between the last member's file and the ensemble's
    done = ploutos("train", "--fold", "0", "--member", "1", "--no-progress", *settings)
    assert done.returncode == 0 and "already done" in done.stdout and "rebuilt" in done.stdout, done.stdout
    assert not missing_fields(tasks / "fold0_ensemble.h5")


def test_a_task_being_trained_is_refused_to_a_second_process(ploutos, dataset, tmp_path):
    command = [sys.executable, "-m", "ploutos", "train", "--fold", "0", "--no-progress"]
    command += _settings(dataset, tmp_path / "results", 64 * ROLLOUT)
    lock = tmp_path / "results" / "quickstart" / "locks" / "fold0_member0.lock"
    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lock.exists(), first.stderr.read() if first.poll() is not None else "no lock"
        second = ploutos(*command[3:])
        assert_one_line_error(second, "fold0_member0 is being trained by", f"pid {first.pid}")
    finally:
        first.send_signal(signal.SIGTERM)  # checkpoints and exits 3
        first.communicate(timeout=120)
    assert first.returncode == 3 and not lock.exists()  # the holder's exit releases it


def test_the_kept_model_is_the_best_validated_checkpoint(ploutos, dataset, tmp_path):
    """Validation every rollout; the task file records the curve and the choice, and the saved model (which the test
    window was evaluated with) trades the validation window to exactly the chosen score."""
    from ploutos.config import load
    from ploutos.results.layout import RunLayout
    from ploutos.train.artifacts import load_policy
    from ploutos.train.evaluate import run_policy
    from ploutos.train.folds import fold_features
    from ploutos.train.selection import score_of

    extra = {"walkforward.validate_every": ROLLOUT, "walkforward.max_folds": 1}
    settings = _settings(dataset, tmp_path / "results", 4 * ROLLOUT, **extra)
    done = ploutos("train", "--fold", "0", "--member", "0", "--no-progress", *settings)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "results" / "quickstart"
    with h5py.File(run / "tasks" / "fold0_member0.h5", "r") as h5:
        validation = h5["validation"]
        timesteps, scores = validation["timesteps"][:], validation["score"][:]
        chosen = validation.attrs["chosen_timesteps"]
        fold = dict(h5["fold"].attrs)
    assert list(timesteps) == [ROLLOUT, 2 * ROLLOUT, 3 * ROLLOUT, 4 * ROLLOUT]
    assert chosen == timesteps[int(np.argmax(scores))]
    assert fold["train_rows"][1] <= fold["validation_rows"][0] - fold["embargo_bars"]
    assert fold["validation_rows"][1] <= fold["test_rows"][0] - fold["embargo_bars"]

    layout = RunLayout(run)
    config = load(layout.config_file)
    arrays, fold_plan, _ = fold_features(config, 0)
    policy = load_policy(layout.model(0, 0), layout.recorded_hash())
    rows, bars_per_year = fold_plan.validation_rows(config.env.lookback), config.data.bars_per_year
    replayed = run_policy(policy, arrays, config.env, rows, bars_per_year).metrics(bars_per_year).as_dict()
    assert score_of(replayed, "sharpe") == pytest.approx(scores.max(), abs=1e-9)

    # TensorBoard: the validation figures at the steps they were taken, and the training episodes' trading
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(layout.tensorboard(0, 0))).Reload()
    with h5py.File(run / "tasks" / "fold0_member0.h5", "r") as h5:
        sharpe = h5["validation/sharpe"][:]
    logged = board.Scalars("validation/sharpe")
    assert [e.step for e in logged] == list(timesteps)
    assert [e.value for e in logged] == pytest.approx(sharpe, rel=1e-6)  # TensorBoard keeps float32
    for tag in ("trading/episode_return", "trading/episode_turnover", "trading/episode_cost_drag"):
        values = [e.value for e in board.Scalars(tag)]
        assert values and np.isfinite(values).all(), tag
    assert sum(e.value for e in board.Scalars("trading/episodes")) == 4  # 2 envs x 1024 steps of 512-bar episodes


def test_patience_stops_a_member_early(ploutos, dataset, tmp_path):
    # a band nothing crosses: always flat, so no validation is ever better than the first
    extra = {"walkforward.validate_every": ROLLOUT, "walkforward.patience": 1, "walkforward.max_folds": 1}
    extra["env.rebalance_band"] = 1.99
    settings = _settings(dataset, tmp_path / "results", 8 * ROLLOUT, **extra)
    done = ploutos("train", "--fold", "0", "--member", "0", "--no-progress", *settings)
    assert done.returncode == 0, done.stderr
    result = tmp_path / "results" / "quickstart" / "tasks" / "fold0_member0.h5"
    with h5py.File(result, "r") as h5:
        assert h5["validation"].attrs["stopped_early"]
        assert h5["validation"].attrs["chosen_timesteps"] == ROLLOUT
        assert _attrs(result, "provenance")["timesteps"] < 8 * ROLLOUT
