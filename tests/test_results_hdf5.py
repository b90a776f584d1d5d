"""Per-task HDF5 files: schema, round trips, atomic writes, damaged files."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from ploutos.analytics.evaluation import FoldEvaluation
from ploutos.analytics.metrics import Metrics
from ploutos.bench.env import synthetic_arrays
from ploutos.config import EnvConfig
from ploutos.results import hdf5
from ploutos.results.hdf5 import (
    OPTIONAL_SCHEMA,
    PERCENT_METRICS,
    SCHEMA,
    SCHEMA_VERSION,
    TIME_UNIT,
    DriftReference,
    ResultError,
    TaskResult,
    format_metrics,
    missing_fields,
    read_attrs,
    read_drift,
    read_metrics,
    write_task_result,
)
from ploutos.train.evaluate import evaluate

BARS_PER_YEAR = 252 * 7
ARRAYS = synthetic_arrays(240, 3, 4, seed=11)
CFG = replace(EnvConfig(), lookback=8)
ROWS = slice(100, 240)
SHOWN = ("total_return", "gross_return", "annual_return", "sharpe", "sortino", "max_drawdown", "psr", "turnover",
         "cost_drag")  # fmt: skip
STRATEGIES = ["policy", "buy_and_hold", "equal_weight", "flat", "random_turnover"]


class Tilted:
    """Long the first asset, short the last, rebalanced every bar."""

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        return np.array([0.5, 0.0, -0.3], dtype=np.float32), state


@pytest.fixture(scope="module")
def evaluation() -> FoldEvaluation:
    return evaluate(Tilted(), ARRAYS, CFG, ROWS, BARS_PER_YEAR, seed=2)


def task_result(evaluation: FoldEvaluation, member: int | None = 1, **changes) -> TaskResult:
    training = {} if member is None else {"timesteps": np.arange(1, 6) * 100, "ep_rew_mean": np.linspace(-1, 1, 5)}
    result = TaskResult(
        fold=3,
        member=member,
        run="unit-test",
        config_hash="c0ffee",
        config_yaml="name: unit-test\nenv:\n  lookback: 8\n",
        provenance={
            "ploutos": "0.0.0",
            "packages": {"numpy": np.__version__, "h5py": h5py.__version__},
            "git_revision": "deadbeef",
            "git_dirty": False,
            "dataset_hash": "ab" * 32,
            "slurm_job_id": "",
            "ranks": 4,
            "wall_seconds": 12.5,
            "resumed": None,
        },
        fold_bounds={
            "train_start": "2020-01-01T00:00:00Z",
            "train_end": "2020-01-05T04:00:00Z",
            "test_start": "2020-01-05T04:00:00Z",
            "test_end": "2020-01-11T00:00:00Z",
            "train_rows": [0, 90],
            "test_rows": [ROWS.start + CFG.lookback, ROWS.stop],
            "embargo_bars": 10,
        },
        tickers=ARRAYS.tickers,
        feature_names=ARRAYS.names,
        norm_center=np.linspace(-1, 1, 4),
        norm_scale=np.linspace(1, 2, 4),
        evaluation=evaluation,
        training=training,
    )
    return replace(result, **changes)


@pytest.fixture
def member_file(tmp_path: Path, evaluation: FoldEvaluation) -> Path:
    path = tmp_path / "fold3_member1.h5"
    write_task_result(path, task_result(evaluation))
    return path


def test_a_written_file_is_complete_and_holds_every_schema_key(member_file: Path):
    assert missing_fields(member_file) == []
    with h5py.File(member_file, "r") as h5:
        for key in SCHEMA:
            assert key in h5, key
        assert h5.attrs["schema_version"] == SCHEMA_VERSION == 2
        assert set(h5["metrics"]) == set(STRATEGIES)
    assert [name for name in sorted(Path(member_file).parent.iterdir())] == [member_file]  # no temporary left


def test_member_and_ensemble_files(tmp_path: Path, evaluation: FoldEvaluation):
    member, ensemble = tmp_path / "member.h5", tmp_path / "ensemble.h5"
    write_task_result(member, task_result(evaluation, member=2))
    write_task_result(ensemble, task_result(evaluation, member=None))
    attrs = read_attrs(member)
    assert (attrs["kind"], attrs["member"], attrs["fold"]) == ("member", 2, 3)
    assert (attrs["run"], attrs["config_hash"]) == ("unit-test", "c0ffee")
    attrs = read_attrs(ensemble)
    assert (attrs["kind"], attrs["member"], attrs["fold"]) == ("ensemble", -1, 3)
    assert missing_fields(ensemble) == []
    with h5py.File(ensemble, "r") as h5:
        assert len(h5["training"]) == 0  # no training curve for an ensemble
    with h5py.File(member, "r") as h5:
        np.testing.assert_array_equal(h5["training/timesteps"][()], np.arange(1, 6) * 100)
        np.testing.assert_array_equal(h5["training/ep_rew_mean"][()], np.linspace(-1, 1, 5))


def test_contents_round_trip(member_file: Path, evaluation: FoldEvaluation):
    policy = evaluation.policy
    with h5py.File(member_file, "r") as h5:
        assert h5["config"][()].decode() == "name: unit-test\nenv:\n  lookback: 8\n"
        assert [t.decode() for t in h5["tickers"][()]] == list(ARRAYS.tickers)
        assert [n.decode() for n in h5["normalization/names"][()]] == list(ARRAYS.names)
        np.testing.assert_array_equal(h5["normalization/center"][()], np.linspace(-1, 1, 4))
        np.testing.assert_array_equal(h5["normalization/scale"][()], np.linspace(1, 2, 4))
        for key in ("equity", "weights", "units", "turnover", "costs"):
            np.testing.assert_array_equal(h5[f"test/{key}"][()], getattr(policy, key))
        for name, path in evaluation.benchmarks.items():
            np.testing.assert_array_equal(h5[f"benchmarks/{name}/equity"][()], path.equity)
        for key, column in policy.trades.items():
            stored = h5[f"test/trades/{key}"][()]
            if key == "timestamp":
                stored = stored.astype("datetime64[us]")
            np.testing.assert_array_equal(stored, column)
        assert len(h5["test/trades/step"]) > 0
        boot = h5["bootstrap"]
        assert boot.attrs["block"] == evaluation.bootstrap.block
        assert boot.attrs["confidence"] == evaluation.bootstrap.confidence
        for stat, samples in evaluation.bootstrap.samples.items():
            np.testing.assert_array_equal(boot[stat][()], samples)
            low, high = evaluation.bootstrap.intervals[stat]
            assert (boot.attrs[f"{stat}_low"], boot.attrs[f"{stat}_high"]) == (low, high)
    prov = read_attrs(member_file, "provenance")
    assert prov["git_revision"] == "deadbeef" and prov["ranks"] == 4 and prov["resumed"] == ""
    assert '"numpy"' in prov["packages"]  # a nested mapping is stored as JSON text
    bounds = read_attrs(member_file, "fold")
    assert list(bounds["train_rows"]) == [0, 90] and bounds["embargo_bars"] == 10
    assert bounds["test_start"] == "2020-01-05T04:00:00Z"


def test_timestamps_are_int64_microseconds(member_file: Path, evaluation: FoldEvaluation):
    stamps = evaluation.policy.timestamps
    with h5py.File(member_file, "r") as h5:
        for key in ("test/timestamps", "benchmarks/buy_and_hold/timestamps", "test/trades/timestamp"):
            assert h5[key].dtype == np.int64, key
            assert h5[key].attrs["unit"] == TIME_UNIT
        raw = h5["test/timestamps"][()]
    epoch = np.datetime64("1970-01-01T00:00:00", "us")
    np.testing.assert_array_equal(raw, (stamps - epoch) // np.timedelta64(1, "us"))
    assert raw[1] - raw[0] == 3600 * 10**6  # hourly bars
    back = raw.astype("datetime64[us]")
    assert back.dtype == np.dtype("datetime64[us]")
    np.testing.assert_array_equal(back, stamps)
    assert back[0] == ARRAYS.timestamps[ROWS.start + CFG.lookback - 1]


def test_read_metrics_round_trips_including_nan(tmp_path: Path, evaluation: FoldEvaluation):
    nan_metrics = Metrics(
        total_return=0.0, annual_return=0.0, volatility=0.0, sharpe=math.nan, sortino=math.nan, calmar=math.nan,
        max_drawdown=0.0, win_rate=math.nan, turnover=0.0, cost_drag=0.0, psr=math.nan, n_bars=131,
    )  # fmt: skip
    flat = replace(evaluation, metrics={**evaluation.metrics, "buy_and_hold": nan_metrics})
    path = tmp_path / "nan.h5"
    write_task_result(path, task_result(flat))
    read = read_metrics(path)
    assert set(read) == set(STRATEGIES)
    for name, metrics in flat.metrics.items():
        expected = metrics.as_dict()
        assert set(read[name]) == set(expected)
        for key, value in expected.items():
            if math.isnan(value):
                assert math.isnan(read[name][key]), (name, key)
            else:
                assert read[name][key] == value, (name, key)
    assert read["buy_and_hold"]["n_bars"] == 131


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, evaluation: FoldEvaluation, monkeypatch: pytest.MonkeyPatch
):
    target = tmp_path / "task.h5"
    write_task_result(target, task_result(evaluation))
    before = target.read_bytes()
    calls = []

    def broken(group, path, *, full):
        calls.append(full)
        if len(calls) == 2:  # the policy group is written, the first benchmark fails
            raise RuntimeError("disk on fire")
        return real(group, path, full=full)

    real = hdf5._write_path
    monkeypatch.setattr(hdf5, "_write_path", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_task_result(target, task_result(evaluation, member=7, run="other"))
    assert len(calls) == 2
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task.h5"]
    assert read_attrs(target)["member"] == 1


def test_a_failed_first_write_leaves_nothing(tmp_path: Path, evaluation: FoldEvaluation, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no")

    monkeypatch.setattr(hdf5, "_write_path", broken)
    with pytest.raises(RuntimeError):
        write_task_result(tmp_path / "task.h5", task_result(evaluation))
    assert list(tmp_path.iterdir()) == []


def test_writing_into_a_missing_folder_is_an_error(tmp_path: Path, evaluation: FoldEvaluation):
    with pytest.raises(Exception, match="does not exist"):
        write_task_result(tmp_path / "nope" / "task.h5", task_result(evaluation))


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.5, 0.95])
def test_a_truncated_file_is_a_result_error(member_file: Path, fraction: float):
    data = member_file.read_bytes()
    member_file.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ResultError, match=member_file.name):
        missing_fields(member_file)
    with pytest.raises(ResultError):
        read_metrics(member_file)


def test_garbage_and_absent_files_are_result_errors(tmp_path: Path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is not HDF5\n" * 100)
    for path in (garbage, tmp_path / "absent.h5"):
        with pytest.raises(ResultError) as info:
            missing_fields(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        with pytest.raises(ResultError):
            read_metrics(path)
        with pytest.raises(ResultError):
            read_attrs(path)


@pytest.mark.parametrize("removed", ["bootstrap", "test/trades", "normalization/scale", "benchmarks/equal_weight"])
def test_a_missing_object_is_listed(member_file: Path, removed: str):
    with h5py.File(member_file, "r+") as h5:
        del h5[removed]
    missing = missing_fields(member_file)
    assert missing == [key for key in SCHEMA if key.lstrip("/").startswith(removed)]
    assert f"/{removed}" in missing[0]


def test_missing_attributes_are_listed(member_file: Path):
    with h5py.File(member_file, "r+") as h5:
        del h5.attrs["config_hash"]
        del h5["metrics/policy"].attrs["psr"]
    assert missing_fields(member_file) == ["/@config_hash", "/metrics/policy@psr"]


def test_read_metrics_without_metrics_is_a_result_error(member_file: Path):
    with h5py.File(member_file, "r+") as h5:
        del h5["metrics"]
    assert {"/metrics/policy", "/metrics/buy_and_hold", "/metrics/equal_weight"} <= set(missing_fields(member_file))
    with pytest.raises(ResultError, match="metrics"):
        read_metrics(member_file)


def test_format_metrics_has_a_line_per_shown_metric(member_file: Path, evaluation: FoldEvaluation):
    text = format_metrics(member_file)
    header, *lines, chance = text.splitlines()
    assert header.split() == STRATEGIES
    assert [line.split()[0] for line in lines] == list(SHOWN)
    for line in lines:
        key, *values = line.split()
        assert len(values) == len(STRATEGIES)
        for column, value in zip(STRATEGIES, values, strict=True):
            expected = getattr(evaluation.metrics[column], key)
            if math.isnan(expected):
                assert value == "nan"
            elif key in PERCENT_METRICS:  # a share of equity: in percent, as summary.md shows it
                assert value.endswith("%") and float(value[:-1]) / 100 == pytest.approx(expected, abs=5e-5)
            else:
                assert not value.endswith("%") and float(value) == pytest.approx(expected, abs=5e-5)
    assert {"total_return", "max_drawdown", "cost_drag"} <= PERCENT_METRICS and "sharpe" not in PERCENT_METRICS
    assert chance.startswith(f"p_random      {evaluation.p_random:.4f}: share of 200 random policies")


def test_baselines_costs_and_validation_round_trip(tmp_path: Path, evaluation: FoldEvaluation):
    validation = {
        "timesteps": [4096, 8192, 12288],
        "sharpe": np.array([-0.5, 0.3, 0.1]),
        "chosen_timesteps": 8192,
        "metric": "sharpe",
        "early_stopped": False,
        "labels": ["a", "b"],
        "settings": {"every": 4096},
    }
    path = tmp_path / "task.h5"
    write_task_result(path, task_result(evaluation, validation=validation))
    assert missing_fields(path) == []
    random = evaluation.random
    with h5py.File(path, "r") as h5:
        group = h5["validation"]
        np.testing.assert_array_equal(group["timesteps"][()], [4096, 8192, 12288])
        np.testing.assert_array_equal(group["sharpe"][()], [-0.5, 0.3, 0.1])
        assert [v.decode() for v in group["labels"][()]] == ["a", "b"]
        assert group.attrs["chosen_timesteps"] == 8192 and group.attrs["metric"] == "sharpe"
        assert not group.attrs["early_stopped"] and group.attrs["settings"] == '{"every": 4096}'
        np.testing.assert_array_equal(h5["benchmarks/flat/equity"][()], CFG.initial_cash)
        stored = h5["benchmarks/random_turnover"]
        for key in ("total_return", "gross_return", "turnover"):
            np.testing.assert_array_equal(stored[key][()], getattr(random, key))
        assert stored.attrs["seeds"] == 200 and stored.attrs["p_random"] == evaluation.p_random
        assert stored.attrs["probability"] == random.probability and stored.attrs["passes"] == random.passes
        assert stored.attrs["median_turnover"] == pytest.approx(np.median(random.turnover))
        parts = h5["test/cost_parts"]
        np.testing.assert_array_equal(parts[()], evaluation.policy.cost_parts)
        assert [c.decode() if isinstance(c, bytes) else c for c in parts.attrs["components"]] == list(
            evaluation.cost_breakdown
        )
        assert dict(h5["cost_breakdown"].attrs) == evaluation.cost_breakdown
        assert sum(evaluation.cost_breakdown.values()) == pytest.approx(h5["metrics/policy"].attrs["cost_drag"])
    read = read_metrics(path)
    assert read["random_turnover"] == evaluation.random.metrics.as_dict()
    assert read["policy"]["gross_return"] == evaluation.metrics["policy"].gross_return


def test_an_ensemble_has_an_empty_validation_group(tmp_path: Path, evaluation: FoldEvaluation):
    path = tmp_path / "ensemble.h5"
    write_task_result(path, task_result(evaluation, member=None))
    with h5py.File(path, "r") as h5:
        assert len(h5["validation"]) == 0 and len(h5["validation"].attrs) == 0


def test_the_results_readme_documents_every_schema_entry():
    from conftest import REPO

    readme = (REPO / "results" / "README.md").read_text()
    for key, content in SCHEMA.items():
        assert f"| `{key}` | {content} |" in readme, key


def test_the_drift_reference_is_optional_and_read_back(tmp_path: Path, evaluation: FoldEvaluation):
    from conftest import REPO

    readme = (REPO / "results" / "README.md").read_text()
    for key, content in OPTIONAL_SCHEMA.items():
        assert f"| `{key}` | {content} |" in readme, key
    old, new = tmp_path / "old.h5", tmp_path / "new.h5"
    write_task_result(old, task_result(evaluation))  # written as before drift references: still complete
    assert missing_fields(old) == []
    with pytest.raises(ResultError, match="trained before drift references; train the run again"):
        read_drift(old)
    quantiles = np.sort(np.random.default_rng(0).standard_normal((len(ARRAYS.tickers), 4, 5)), axis=2)
    cdf = np.broadcast_to(np.linspace(0, 1, 5), quantiles.shape)
    reference = DriftReference(quantiles, cdf, np.linspace(0, 1, 5), np.array([90] * len(ARRAYS.tickers)), "unit")
    write_task_result(new, task_result(evaluation, drift=reference))
    back = read_drift(new)
    np.testing.assert_array_equal(back.quantiles, quantiles)
    np.testing.assert_array_equal(back.cdf, cdf)
    assert back.rows.tolist() == reference.rows.tolist() and back.method == "unit" and missing_fields(new) == []
