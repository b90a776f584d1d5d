"""``ploutos aggregate``: statuses of task files, metric tables, stitched out-of-sample curve, atomic writes."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from ploutos.analytics.evaluation import COST_COMPONENTS, FoldEvaluation
from ploutos.analytics.metrics import compute_metrics, deflated_sharpe, expected_max_sharpe, returns_of
from ploutos.bench.env import synthetic_arrays
from ploutos.cli import main
from ploutos.config import Config, EnvConfig, config_hash, dump, load
from ploutos.data.build import build_dataset
from ploutos.errors import ConfigError, PloutosError
from ploutos.pipeline.run import aggregate_run
from ploutos.results.aggregate import METRICS, SUMMARY_SCHEMA, aggregate, format_folds, verdict
from ploutos.results.hdf5 import TIME_UNIT, TaskResult, read_metrics, write_task_result
from ploutos.results.layout import RunLayout
from ploutos.train.evaluate import Ensemble, evaluate

ARRAYS = synthetic_arrays(300, 3, 4, seed=5)
CFG = replace(EnvConfig(), lookback=8)
TESTS = [(100, 170), (170, 240), (240, 300)]  # consecutive test windows: the folds' curves join
MEMBERS = 2
BARS_PER_YEAR = 252 * 7


class Fixed:
    """Constant target weights, rebalanced every bar."""

    def __init__(self, *weights: float) -> None:
        self.weights = np.array(weights, dtype=np.float32)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        return self.weights, state


ACTORS = [Fixed(0.5, 0.0, -0.3), Fixed(0.1, 0.4, 0.2)]


@pytest.fixture(scope="module")
def evaluations() -> dict[tuple[int, int | None], FoldEvaluation]:
    """(fold, member) -> evaluation over the fold's test window; member None is the ensemble."""
    out = {}
    for fold, (start, stop) in enumerate(TESTS):
        rows = slice(start - CFG.lookback, stop)
        for member, actor in enumerate(ACTORS):
            out[(fold, member)] = evaluate(actor, ARRAYS, CFG, rows, BARS_PER_YEAR, seed=member)
        out[(fold, None)] = evaluate(Ensemble(ACTORS), ARRAYS, CFG, rows, BARS_PER_YEAR)
    return out


def run_config(tmp_path: Path) -> Config:
    return load("quickstart", [f"results_dir={tmp_path}", "name=agg-test"])


def task(config: Config, fold: int, member: int | None, evaluation: FoldEvaluation, **changes) -> TaskResult:
    start, stop = TESTS[fold]
    result = TaskResult(
        fold=fold,
        member=member,
        run=config.name,
        config_hash=config_hash(config),
        config_yaml=dump(config),
        provenance={"ploutos": "0.0.0", "git_revision": "deadbeef"},
        fold_bounds={"train_rows": [0, start - 10], "test_rows": [start, stop], "embargo_bars": 10},
        tickers=ARRAYS.tickers,
        feature_names=ARRAYS.names,
        norm_center=np.zeros(4),
        norm_scale=np.ones(4),
        evaluation=evaluation,
        training={} if member is None else {"timesteps": np.arange(1, 4) * 100},
    )
    return replace(result, **changes)


@pytest.fixture
def run(tmp_path: Path, evaluations) -> RunLayout:
    """A complete run: config.yaml, plan.json, every member's and every fold's ensemble task file."""
    config = run_config(tmp_path)
    layout = RunLayout.of(config)
    layout.prepare(config)
    layout.write_plan(len(TESTS), MEMBERS)
    for (fold, member), evaluation in evaluations.items():
        write_task_result(layout.result(fold, member), task(config, fold, member, evaluation))
    return layout


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def read(path: Path, key: str) -> np.ndarray:
    with h5py.File(path, "r", locking=False) as h5:
        return h5[key][()]


def text(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def statuses(path: Path) -> dict[tuple[int, int], tuple[str, str]]:
    with h5py.File(path, "r", locking=False) as h5:
        tasks = h5["tasks"]
        keys = zip(tasks["fold"][()], tasks["member"][()], strict=True)
        values = zip(text(tasks["status"][()]), text(tasks["reason"][()]), strict=True)
        return {(int(f), int(m)): v for (f, m), v in zip(keys, values, strict=True)}


def assert_same(actual: float, expected: float) -> None:
    assert (math.isnan(actual) and math.isnan(expected)) or actual == expected, (actual, expected)


def test_a_complete_run(run: RunLayout):
    summary = aggregate(run.root)
    assert (summary.folds, summary.members, summary.members_ok, summary.ensembles_ok) == (3, 2, 6, 3)
    assert summary.complete and summary.missing == () and summary.path == run.summary
    with h5py.File(run.summary, "r", locking=False) as h5:
        assert h5.attrs["complete"] and h5.attrs["schema_version"] == 2
        assert (h5.attrs["folds"], h5.attrs["members"], h5.attrs["run"]) == (3, 2, "agg-test")
        assert h5.attrs["config_hash"] == run.recorded_hash()
        assert h5["config"][()].decode() == run.config_file.read_text()
        assert h5["missing"].shape == (0,)
        assert h5["oos"].attrs["gaps"].tolist() == []
        for metric in METRICS:
            assert h5[f"metrics/{metric}"].shape == (3, 2) and h5[f"metrics/{metric}"].dtype == np.float64
            assert h5[f"ensemble/{metric}"].shape == (3,)
        tables = {key: h5[key][()] for key in ("metrics/sharpe", "metrics/n_bars", "ensemble/total_return")}
        bench = {name: h5[f"benchmarks/{name}/total_return"][()] for name in ("buy_and_hold", "equal_weight")}
    assert set(statuses(run.summary).values()) == {("ok", "")}
    for fold in range(3):
        for member in range(2):
            expected = read_metrics(run.result(fold, member))["policy"]
            assert_same(tables["metrics/sharpe"][fold, member], expected["sharpe"])
            assert tables["metrics/n_bars"][fold, member] == expected["n_bars"]
        ensemble = read_metrics(run.result(fold, None))
        assert tables["ensemble/total_return"][fold] == ensemble["policy"]["total_return"]
        for name, values in bench.items():
            assert values[fold] == ensemble[name]["total_return"]


def test_every_schema_entry_is_in_the_file(run: RunLayout):
    aggregate(run.root)
    with h5py.File(run.summary, "r", locking=False) as h5:
        for key in SUMMARY_SCHEMA:
            stitched = key.startswith("/oos")  # flat is 1.0 throughout: not stitched
            for name in ("buy_and_hold", "equal_weight", *(() if stitched else ("flat",))):
                for metric in METRICS:
                    for component in COST_COMPONENTS:
                        path = key.replace("<metric>", metric).replace("<name>", name)
                        path = path.replace("<component>", component)
                        assert path == "/" or path in h5, path
        assert set(h5["tasks"]) == {"fold", "member", "status", "reason"}
        assert set(h5["oos/metrics"].attrs) == set(METRICS)


def test_the_stitched_curve(run: RunLayout, evaluations):
    aggregate(run.root)
    with h5py.File(run.summary, "r", locking=False) as h5:
        oos = {key: h5[f"oos/{key}"][()] for key in ("timestamps", "fold", "ensemble", "buy_and_hold", "equal_weight")}
        assert h5["oos/timestamps"].attrs["unit"] == TIME_UNIT
        measured = dict(h5["oos/metrics"].attrs)
        bench_measured = dict(h5["oos/benchmark_metrics/buy_and_hold"].attrs)
    lengths = [evaluations[(f, None)].policy.equity.size for f in range(3)]
    assert oos["ensemble"].size == sum(lengths) - 2  # the later folds' first marks are dropped
    assert oos["fold"].tolist() == [0] * lengths[0] + [1] * (lengths[1] - 1) + [2] * (lengths[2] - 1)
    assert np.all(np.diff(oos["timestamps"]) > 0)
    stamps = np.concatenate([evaluations[(0, None)].policy.timestamps] + [
        evaluations[(f, None)].policy.timestamps[1:] for f in (1, 2)
    ])  # fmt: skip
    np.testing.assert_array_equal(oos["timestamps"], stamps.astype(np.int64))
    growth = {"ensemble": 1.0, "buy_and_hold": 1.0, "equal_weight": 1.0}
    end = -1
    for fold in range(3):
        end += lengths[fold] - (fold > 0)
        for name in growth:
            path = evaluations[(fold, None)]
            equity = path.policy.equity if name == "ensemble" else path.benchmarks[name].equity
            growth[name] *= equity[-1] / equity[0]
            assert oos[name][end] == pytest.approx(growth[name], rel=1e-12)  # the product of the folds' growth
    for name in growth:
        assert oos[name][0] == 1.0
    total = read(run.summary, "ensemble/total_return")
    assert oos["ensemble"][-1] == pytest.approx(np.prod(1.0 + total), rel=1e-12)
    starts = [oos["ensemble"][sum(lengths[:f]) - f] for f in range(3)]  # the level each fold is chained onto
    # Each fold's costs scaled as its equity is chained (by the factor level / first mark), as aggregate does.
    costs = np.concatenate([evaluations[(f, None)].policy.costs * (starts[f] / evaluations[(f, None)].policy.equity[0])
                            for f in range(3)])  # fmt: skip
    turnover = np.concatenate([evaluations[(f, None)].policy.turnover for f in range(3)])
    bars = run_config(run.root.parent).data.bars_per_year
    expected = compute_metrics(oos["ensemble"], bars, turnover=turnover, costs=costs).as_dict()
    for key in METRICS:
        assert_same(float(measured[key]), float(expected[key]))
    assert bench_measured["total_return"] == pytest.approx(oos["buy_and_hold"][-1] - 1.0)


def test_baselines_significance_and_costs(run: RunLayout, evaluations):
    aggregate(run.root)
    with h5py.File(run.summary, "r", locking=False) as h5:
        tables = {key: h5[key][()] for key in ("ensemble/p_random", "metrics/p_random", "ensemble/gross_return")}
        flat = {metric: h5[f"benchmarks/flat/{metric}"][()] for metric in METRICS}
        random = {metric: h5[f"benchmarks/random_turnover/{metric}"][()] for metric in METRICS}
        seed_returns = h5["benchmarks/random_turnover/seed_returns"][()]
        costs = {name: h5[f"ensemble/costs/{name}"][()] for name in COST_COMPONENTS}
        dsr, dsr_attrs = h5["ensemble/deflated_sharpe"][()], dict(h5["ensemble/deflated_sharpe"].attrs)
    assert seed_returns.shape == (3, 200)
    for fold in range(3):
        ensemble = evaluations[(fold, None)]
        assert tables["ensemble/p_random"][fold] == ensemble.p_random
        assert tables["ensemble/gross_return"][fold] == ensemble.metrics["policy"].gross_return
        for member in range(MEMBERS):
            assert tables["metrics/p_random"][fold, member] == evaluations[(fold, member)].p_random
        assert flat["total_return"][fold] == 0.0 and flat["turnover"][fold] == 0.0
        for metric in METRICS:  # the ensemble's own random policies, not a member's
            assert_same(random[metric][fold], ensemble.random.metrics.as_dict()[metric])
        np.testing.assert_array_equal(seed_returns[fold], ensemble.random.total_return)
        for name in COST_COMPONENTS:
            assert costs[name][fold] == ensemble.cost_breakdown[name]
    # trials: the 9 task files' per-bar Sharpe ratios; the returns: each fold ensemble's own
    bars = run_config(run.root.parent).data.bars_per_year
    trials = np.array([e.metrics["policy"].sharpe for e in evaluations.values()]) / math.sqrt(bars)
    assert dsr_attrs["n_trials"] == 9
    assert dsr_attrs["sharpe_variance"] == pytest.approx(trials.var(ddof=1), rel=1e-12)
    assert dsr_attrs["expected_max_sharpe"] == pytest.approx(expected_max_sharpe(trials.var(ddof=1), 9), rel=1e-12)
    for fold in range(3):
        ensemble = evaluations[(fold, None)]
        expected = deflated_sharpe(returns_of(ensemble.policy.equity), trials)
        assert dsr[fold] == pytest.approx(expected, rel=1e-12)
        assert dsr[fold] < ensemble.metrics["policy"].psr  # 9 trials deflate


def test_missing_tasks_are_nan_in_the_new_tables_and_leave_the_trials(run: RunLayout, evaluations):
    run.result(1, None).unlink()
    run.result(2, 0).unlink()
    aggregate(run.root)
    with h5py.File(run.summary, "r", locking=False) as h5:
        for key in (
            "ensemble/p_random",
            "ensemble/deflated_sharpe",
            "ensemble/gross_return",
            "benchmarks/random_turnover/total_return",
            *(f"ensemble/costs/{c}" for c in COST_COMPONENTS),
        ):
            values = h5[key][()]
            assert np.isnan(values[1]) and np.isfinite(values[[0, 2]]).all(), key
        assert np.isnan(h5["benchmarks/random_turnover/seed_returns"][1]).all()
        assert np.isnan(h5["metrics/p_random"][2, 0]) and np.isfinite(h5["metrics/p_random"][2, 1])
        # flat comes from a member's file when the ensemble's is missing
        assert h5["benchmarks/flat/total_return"][1] == 0.0
        assert h5["ensemble/deflated_sharpe"].attrs["n_trials"] == 7
    assert "fold 1: no ensemble result, nothing to test" in format_folds(run.summary).splitlines()


@pytest.mark.parametrize(
    ("psr", "p_random", "expected"),
    [
        (0.99, 0.01, "fold 2: the ensemble beats flat (Sharpe 1.50, p = 0.010) and a random policy with its "
                     "turnover (p = 0.010) at p < 0.05"),
        (0.99, 0.43, "fold 2: the ensemble beats flat (Sharpe 1.50, p = 0.010) but not a random policy with its "
                     "turnover (p = 0.430) at p < 0.05"),
        (0.09, 0.02, "fold 2: the ensemble does not beat flat (Sharpe 1.50, p = 0.910) but beats a random policy "
                     "with its turnover (p = 0.020) at p < 0.05"),
        (0.09, 0.43, "fold 2: the ensemble does not beat flat (Sharpe 1.50, p = 0.910) nor a random policy with "
                     "its turnover (p = 0.430) at p < 0.05"),
        (0.95, 0.05, "fold 2: the ensemble does not beat flat (Sharpe 1.50, p = 0.050) nor a random policy with "
                     "its turnover (p = 0.050) at p < 0.05"),  # p < 0.05 is strict
        (math.nan, math.nan, "fold 2: the ensemble does not beat flat (Sharpe 1.50, p = n/a) nor a random policy "
                             "with its turnover (p = n/a) at p < 0.05"),
    ],
)  # fmt: skip
def test_verdict_sentences(psr, p_random, expected):
    assert verdict(2, 1.5, psr, p_random) == expected


def test_a_missing_member_is_listed_and_nan_and_nothing_is_touched(run: RunLayout):
    run.result(1, 0).unlink()
    before = digests(run.tasks)
    summary = aggregate(run.root)
    assert digests(run.tasks) == before
    assert not summary.complete and (summary.members_ok, summary.ensembles_ok) == (5, 3)
    assert summary.missing == ("fold1_member0: missing (no task file)",)
    assert text(read(run.summary, "missing")) == ["fold1_member0: missing (no task file)"]
    with h5py.File(run.summary, "r", locking=False) as h5:
        assert not h5.attrs["complete"]
        for metric in METRICS:
            values = h5[f"metrics/{metric}"][()]
            assert np.isnan(values[1, 0]), metric
            assert_same(values[1, 1], read_metrics(run.result(1, 1))["policy"][metric])
            assert_same(values[0, 0], read_metrics(run.result(0, 0))["policy"][metric])
        assert h5["oos"].attrs["gaps"].tolist() == []  # the ensemble of fold 1 is there
    assert statuses(run.summary)[(1, 0)] == ("missing", "no task file")


def test_truncated_incomplete_and_foreign_files(run: RunLayout, evaluations):
    data = run.result(0, 1).read_bytes()
    run.result(0, 1).write_bytes(data[: len(data) // 2])
    with h5py.File(run.result(2, 0), "r+", locking=False) as h5:
        del h5["bootstrap"]
    config = replace(run_config(run.root.parent), seed=99)
    write_task_result(run.result(1, 1), task(config, 1, 1, evaluations[(1, 1)]))
    write_task_result(run.result(2, 1), task(run_config(run.root.parent), 0, 1, evaluations[(0, 1)]))  # misplaced
    before = digests(run.tasks)
    summary = aggregate(run.root)
    assert digests(run.tasks) == before
    found = statuses(run.summary)
    assert found[(0, 1)][0] == "unreadable" and str(run.root) not in found[(0, 1)][1]
    assert found[(2, 0)] == ("incomplete", "lacks /bootstrap")
    assert found[(1, 1)] == ("foreign", f"config hash {config_hash(config)}, the run's is {run.recorded_hash()}")
    assert found[(2, 1)] == ("foreign", "holds fold 0 member 1, not fold 2 member 1")
    assert summary.members_ok == 2 and summary.ensembles_ok == 3
    assert [line.split(":")[0] for line in summary.missing] == [
        "fold0_member1", "fold1_member1", "fold2_member0", "fold2_member1",
    ]  # fmt: skip
    sharpe = read(run.summary, "metrics/sharpe")
    assert np.isnan(sharpe[[0, 1, 2, 2], [1, 1, 0, 1]]).all() and not np.isnan(sharpe[:2, 0]).any()
    assert "fold2_member0 (incomplete: lacks /bootstrap)" in summary.line()


def test_a_missing_fold_ensemble_is_a_gap_bridged_flat(run: RunLayout, evaluations):
    run.result(1, None).unlink()
    summary = aggregate(run.root)
    assert summary.ensembles_ok == 2 and summary.members_ok == 6
    with h5py.File(run.summary, "r", locking=False) as h5:
        assert h5["oos"].attrs["gaps"].tolist() == [1]
        oos, folds = h5["oos/ensemble"][()], h5["oos/fold"][()]
        assert np.isnan(h5["ensemble/sharpe"][1]) and not np.isnan(h5["ensemble/sharpe"][[0, 2]]).any()
        # the fold's benchmarks come from a member's file instead
        assert (
            h5["benchmarks/buy_and_hold/total_return"][1]
            == read_metrics(run.result(1, 0))["buy_and_hold"]["total_return"]
        )
    first, last = (evaluations[(f, None)].policy.equity for f in (0, 2))
    assert oos.size == first.size + last.size - 1 and sorted(set(folds.tolist())) == [0, 2]
    assert oos[first.size - 1] == pytest.approx(first[-1] / first[0])
    assert oos[-1] == pytest.approx(first[-1] / first[0] * last[-1] / last[0])
    assert "fold1_ensemble (no task file)" in summary.line()


def test_no_ok_ensemble_leaves_empty_curves_and_no_ok_task_fails_the_cli(run: RunLayout, capsys):
    for fold in range(3):
        run.result(fold, None).unlink()
    aggregate(run.root)
    with h5py.File(run.summary, "r", locking=False) as h5:
        assert h5["oos"].attrs["gaps"].tolist() == [0, 1, 2]
        assert h5["oos/ensemble"].shape == (0,) and h5["oos/timestamps"].dtype == np.int64
        assert math.isnan(h5["oos/metrics"].attrs["sharpe"])
    assert main(["aggregate", str(run.root)]) == 0  # members are still there
    for path in run.tasks.iterdir():
        path.unlink()
    capsys.readouterr()
    assert main(["aggregate", str(run.root)]) == 1
    out, err = capsys.readouterr()
    assert "0 of 6 member task(s) and 0 of 3 ensemble(s) ok" in out
    assert err.count("\n") == 1 and "no task file is ok" in err


def test_the_cli_prints_the_counts_and_a_fold_table(run: RunLayout, capsys):
    run.result(1, 0).unlink()
    run.result(1, None).unlink()
    assert main(["aggregate", str(run.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        f"{run.summary}: 5 of 6 member task(s) and 2 of 3 ensemble(s) ok; "
        "missing: fold1_member0 (no task file), fold1_ensemble (no task file)"
    )
    assert lines[1].split() == ["fold", "return", "gross", "sharpe", "dsr", "max", "dd", "b&h", "return"]
    assert [line.split()[0] for line in lines[2:6]] == ["0", "1", "2", "stitched"]
    assert lines[3].split()[1:6] == ["nan"] * 5
    row = lines[2].split()
    for column, key in enumerate(("total_return", "gross_return", "max_drawdown"), 1):  # shares: in percent
        cell = row[column if column < 3 else 5]
        assert cell.endswith("%") and float(cell[:-1]) / 100 == pytest.approx(
            read(run.summary, f"ensemble/{key}")[0], abs=5e-5
        )
    for column, key in ((3, "sharpe"), (4, "deflated_sharpe")):  # ratios: plain numbers
        assert float(row[column]) == pytest.approx(read(run.summary, f"ensemble/{key}")[0], abs=5e-5)
    assert row[6].endswith("%")  # buy-and-hold's return
    assert lines[6] == "stitched without fold(s) 1 (ensemble not ok)"
    assert lines[7].startswith("fold 0: the ensemble ") and lines[7].endswith(" at p < 0.05")
    assert lines[8] == "fold 1: no ensemble result, nothing to test"
    assert lines[9].startswith("fold 2: the ensemble ") and len(lines) == 10


def test_aggregating_twice_gives_the_same_file(run: RunLayout):
    def contents(path: Path) -> dict[str, object]:
        out: dict[str, object] = {}
        with h5py.File(path, "r", locking=False) as h5:

            def visit(name: str, obj) -> None:
                for key, value in obj.attrs.items():
                    out[f"{name}@{key}"] = np.asarray(value).tolist()
                if isinstance(obj, h5py.Dataset):
                    out[name] = (obj.dtype.str, obj.shape, np.asarray(obj[()]).tolist())

            visit("/", h5)
            h5.visititems(visit)
        out.pop("/@created")
        return out

    aggregate(run.root)
    first = contents(run.summary)
    aggregate(run.root)
    second = contents(run.summary)
    assert len(first) > 60
    assert repr(first) == repr(second)  # repr: NaN compares equal to NaN
    assert sorted(p.name for p in run.root.iterdir()) == [
        "checkpoints", "config.yaml", "logs", "models", "plan.json", "summary.h5", "tasks",
    ]  # fmt: skip


def test_a_failed_write_leaves_the_previous_summary(run: RunLayout, monkeypatch: pytest.MonkeyPatch):
    aggregate(run.root)
    before = run.summary.read_bytes()
    run.result(0, 0).unlink()
    real = h5py.Group.create_group

    def broken(self, name, *args, **kwargs):
        if name == "oos":
            raise OSError("disk full")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_group", broken)
    with pytest.raises(OSError, match="disk full"):
        aggregate(run.root)
    assert run.summary.read_bytes() == before
    assert not [p for p in run.root.iterdir() if p.name.startswith(".")]


def test_a_folder_that_is_not_a_run(tmp_path: Path):
    with pytest.raises(PloutosError) as info:
        aggregate(tmp_path / "nope")
    assert str(info.value) == f"{tmp_path / 'nope'}: not a run folder (no config.yaml)"


def test_plan_json_round_trip_and_damage(tmp_path: Path):
    layout = RunLayout(tmp_path / "run")
    assert layout.read_plan() is None
    layout.write_plan(4, 3)
    assert layout.read_plan() == (4, 3) and layout.plan_file == tmp_path / "run" / "plan.json"
    with pytest.raises(ValueError):
        layout.write_plan(0, 3)
    for bad in ("{", '{"folds": 2}', '{"folds": 2, "members": "3"}', "[]"):
        layout.plan_file.write_text(bad)
        with pytest.raises(ConfigError, match="plan.json") as info:
            layout.read_plan()
        assert "\n" not in str(info.value)


def test_without_plan_json_or_dataset_the_error_is_one_line(run: RunLayout, tmp_path: Path, monkeypatch):
    run.plan_file.unlink()
    monkeypatch.chdir(tmp_path)  # the config's data.store (data/quickstart) is relative and not built here
    with pytest.raises(PloutosError) as info:
        aggregate_run(run.root)
    message = str(info.value)
    assert message.startswith(f"{run.plan_file}: missing, and planning the folds from config.yaml failed: ")
    assert "\n" not in message
    assert not run.summary.exists()


def test_without_plan_json_the_folds_are_planned_from_the_dataset(tmp_path: Path):
    config = load("quickstart", [f"data.store={tmp_path}/data", f"results_dir={tmp_path}/results"])
    build_dataset(config.data, progress=False)
    layout = RunLayout.of(config)
    layout.prepare(config)
    summary = aggregate_run(layout.root)
    assert (summary.folds, summary.members, summary.members_ok, summary.ensembles_ok) == (3, 2, 0, 0)
    assert len(summary.missing) == 9 and not summary.any_ok
    assert statuses(layout.summary)[(2, -1)] == ("missing", "no task file")
    layout.plan_file.write_text('{"folds": 100000000, "members": 2}')  # damaged: would aggregate for hours
    with pytest.raises(PloutosError, match=r"100000000 fold\(s\) x 2 member\(s\), but the run's config plans 3 x 2"):
        aggregate_run(layout.root)


def test_without_plan_json_results_alone_refuse_in_one_line(run: RunLayout):
    run.plan_file.unlink()
    with pytest.raises(PloutosError, match="plan.json: missing; the task grid of the run is unknown"):
        aggregate(run.root)


def test_the_results_readme_documents_the_summary_schema():
    from conftest import REPO

    readme = (REPO / "results" / "README.md").read_text()
    section = readme.split("\n## summary.h5\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows == [f"| `{key}` | {content} |" for key, content in SUMMARY_SCHEMA.items()]


def test_a_flat_ensemble_is_named_as_such():
    sentence = verdict(1, math.nan, math.nan, 1.0)
    assert sentence.startswith("fold 1: the ensemble's equity never moved") and "beats neither" in sentence
