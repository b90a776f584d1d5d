"""``ploutos report``: plots and summary.md from a summary.h5 and the task files of a small synthetic run."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from ploutos.analytics.evaluation import COST_COMPONENTS, FoldEvaluation
from ploutos.analytics.metrics import compute_metrics
from ploutos.bench.env import synthetic_arrays
from ploutos.cli import main
from ploutos.config import EnvConfig
from ploutos.errors import PloutosError
from ploutos.results.hdf5 import TaskResult, read_metrics, write_task_result
from ploutos.results.layout import RunLayout
from ploutos.results.report import write_report
from ploutos.train.evaluate import evaluate

BARS_PER_YEAR = 252 * 7
ARRAYS = synthetic_arrays(240, 3, 4, seed=11)
CFG = replace(EnvConfig(), lookback=8)
TESTS = [(40, 107), (107, 174), (174, 240)]  # test rows of folds 0..2; they tile like a walk-forward plan
MEMBERS = 2
DSR = (0.25, 0.5, 0.75)  # what aggregate would have computed; the report only shows it
PNGS = ("oos_equity.png", "fold_equity.png", "metric_distributions.png", "training_curves.png")
METRICS = ("total_return", "annual_return", "volatility", "sharpe", "sortino", "calmar", "max_drawdown")
METRICS += ("win_rate", "turnover", "cost_drag", "psr", "n_bars", "gross_return")


class Fixed:
    """Constant target weights, rebalanced every bar."""

    def __init__(self, weights: list[float]) -> None:
        self.weights = np.array(weights, dtype=np.float32)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        return self.weights, state


@pytest.fixture(scope="module")
def evaluations() -> dict[tuple[int, int], FoldEvaluation]:
    """(fold, member) -> evaluation; member -1 is the fold's ensemble."""
    weights = {-1: [0.3, 0.2, 0.0], 0: [0.6, 0.0, -0.2], 1: [0.0, 0.5, 0.3]}
    return {
        (fold, m): evaluate(Fixed(w), ARRAYS, CFG, slice(lo - CFG.lookback, hi), BARS_PER_YEAR, seed=fold)
        for fold, (lo, hi) in enumerate(TESTS)
        for m, w in weights.items()
    }


def write_task(layout: RunLayout, fold: int, member: int, evaluation: FoldEvaluation) -> None:
    steps = np.arange(1, 6) * 100
    training = {} if member < 0 else {"timesteps": steps, "ep_rew_mean": np.linspace(-1, 1, 5) + member}
    if member == 0:
        training["value_loss"] = np.linspace(2, 0.5, 5)
    validation = {} if member < 0 else {
        "timesteps": [200, 400], "score": [0.5 + fold, 1.5 + fold + member], "chosen_timesteps": 400, "metric": "sharpe"
    }  # fmt: skip
    lo, hi = TESTS[fold]
    result = TaskResult(
        fold=fold, member=None if member < 0 else member, run="report-test", config_hash="c0ffee",
        config_yaml="name: report-test\n", provenance={"ploutos": "0.0.0"},
        fold_bounds={"test_rows": [lo, hi], "embargo_bars": 0}, tickers=ARRAYS.tickers, feature_names=ARRAYS.names,
        norm_center=np.zeros(4), norm_scale=np.ones(4), evaluation=evaluation, training=training,
        validation=validation,
    )  # fmt: skip
    write_task_result(layout.result(fold, result.member), result)


def write_summary(layout: RunLayout, evaluations: dict, missing: set[int], legacy: bool = False) -> None:
    """A summary.h5 of the layout `ploutos aggregate` writes; folds in ``missing`` have no task at all.
    ``legacy``: as version 1 wrote it, without baselines, significance and costs."""
    folds, strings = len(TESTS), h5py.string_dtype()
    rows = [(f, m) for f in range(folds) for m in [*range(MEMBERS), -1]]
    status = ["missing" if f in missing else "ok" for f, _ in rows]
    name = {-1: "ensemble"}
    lines = [f"fold{f}_{name.get(m, f'member{m}')}: missing (no task file)" for f, m in rows if f in missing]
    times, fold_of, curves = [], [], {"ensemble": [], "buy_and_hold": [], "equal_weight": []}
    level = dict.fromkeys(curves, 1.0)
    for f in range(folds):
        if f in missing:
            continue
        ens = evaluations[(f, -1)]
        paths = {"ensemble": ens.policy, "buy_and_hold": ens.benchmarks["buy_and_hold"]}
        paths["equal_weight"] = ens.benchmarks["equal_weight"]
        skip = 1 if times else 0  # a fold's first point is the previous fold's last bar
        times.append(ens.policy.timestamps[skip:])
        fold_of.append(np.full(len(ens.policy.timestamps) - skip, f))
        for key, path in paths.items():
            curve = path.equity / path.equity[0] * level[key]
            curves[key].append(curve[skip:])
            level[key] = curve[-1]
    with h5py.File(layout.summary, "w") as h5:
        h5.attrs.update({"schema_version": 1 if legacy else 2, "run": "report-test", "config_hash": "c0ffee"})
        h5.attrs["folds"] = folds
        h5.attrs.update({"members": MEMBERS, "complete": not missing, "created": "2024-01-01T00:00:00Z"})
        tasks = h5.create_group("tasks")
        tasks["fold"], tasks["member"] = [f for f, _ in rows], [m for _, m in rows]
        tasks.create_dataset("status", data=status, dtype=strings)
        tasks.create_dataset("reason", data=["no task file" if s != "ok" else "" for s in status], dtype=strings)
        h5.create_dataset("missing", data=lines, dtype=strings)
        for key in METRICS:
            ok = [f not in missing for f in range(folds)]
            table = [
                [getattr(evaluations[(f, m)].metrics["policy"], key) for m in range(MEMBERS)] for f in range(folds)
            ]
            h5[f"metrics/{key}"] = np.where(np.array(ok)[:, None], table, np.nan)
            h5[f"ensemble/{key}"] = [evaluations[(f, -1)].metrics["policy"].as_dict()[key] if ok[f] else np.nan
                                     for f in range(folds)]  # fmt: skip
            benches = ("buy_and_hold", "equal_weight") + (() if legacy else ("flat", "random_turnover"))
            for bench in benches:
                h5[f"benchmarks/{bench}/{key}"] = [evaluations[(f, -1)].metrics[bench].as_dict()[key] if ok[f]
                                                   else np.nan for f in range(folds)]  # fmt: skip
        if not legacy:
            ok = [f not in missing for f in range(folds)]
            h5["ensemble/p_random"] = [evaluations[(f, -1)].p_random if ok[f] else np.nan for f in range(folds)]
            h5["ensemble/deflated_sharpe"] = [DSR[f] if ok[f] else np.nan for f in range(folds)]
            for name in COST_COMPONENTS:
                h5[f"ensemble/costs/{name}"] = [evaluations[(f, -1)].cost_breakdown[name] if ok[f] else np.nan
                                                for f in range(folds)]  # fmt: skip
        oos = h5.create_group("oos")
        oos["timestamps"] = np.concatenate(times).astype("datetime64[us]").astype(np.int64)
        oos["fold"] = np.concatenate(fold_of).astype(np.int64)
        oos.attrs["gaps"] = np.array(sorted(missing), dtype=np.int64)
        for key, parts in curves.items():
            oos[key] = np.concatenate(parts)
        names = {"ensemble": "metrics", "buy_and_hold": "benchmark_metrics/buy_and_hold"}
        names["equal_weight"] = "benchmark_metrics/equal_weight"
        for key, where in names.items():
            stats = compute_metrics(oos[key][()], BARS_PER_YEAR).as_dict()
            oos.create_group(where).attrs.update({**stats, "psr": np.nan} if key == "equal_weight" else stats)


def make_run(root: Path, evaluations: dict, missing: set[int] = frozenset(), legacy: bool = False) -> RunLayout:
    layout = RunLayout(root)
    layout.tasks.mkdir(parents=True)
    for (fold, member), evaluation in evaluations.items():
        if fold not in missing:
            write_task(layout, fold, member, evaluation)
    write_summary(layout, evaluations, missing, legacy)
    return layout


def assert_png(path: Path, size: tuple[int, int] | None = None) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(data) > 10_000, (path, len(data))
    if size is not None:  # width and height are the first fields of the IHDR chunk
        assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == size


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory, evaluations) -> tuple[RunLayout, str]:
    """A complete run, reported once through the CLI entry point (plots are the slow part)."""
    layout = make_run(tmp_path_factory.mktemp("complete") / "run", evaluations)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["report", str(layout.root)]) == 0
    return layout, out.getvalue()


def test_the_report_writes_four_pngs_and_summary_md(reported):
    layout, printed = reported
    report = layout.root / "report"
    expected = [report / name for name in (*PNGS, "summary.md")]
    assert printed.splitlines() == [str(p) for p in expected]
    assert sorted(report.iterdir()) == sorted(expected)  # no temporaries left
    for name in PNGS:
        assert_png(report / name)
    assert_png(report / "oos_equity.png", (1000, 500))
    md = (report / "summary.md").read_text()
    assert md.startswith("# Ploutos report: report-test\n") and "`c0ffee`" in md and "complete: yes" in md
    assert "| metric | ensemble | buy and hold | equal weight |" in md
    for label in ("total return", "annual return", "Sharpe", "Sortino", "max drawdown", "PSR", "turnover", "cost drag"):
        assert f"\n| {label}" in md, label
    psr_row = next(line for line in md.splitlines() if line.startswith("| PSR |"))
    assert psr_row.endswith("| n/a |")  # NaN prints as n/a
    assert "| fold | ensemble return | Sharpe | max dd | buy-and-hold return | members ok |" in md
    metrics = read_metrics(layout.result(1, None))  # the per-fold row matches the fold's ensemble task file
    policy, hold = metrics["policy"], metrics["buy_and_hold"]
    row = f"| 1 | {policy['total_return']:.2%} | {policy['sharpe']:.2f} | {policy['max_drawdown']:.2%}"
    assert f"{row} | {hold['total_return']:.2%} | 2/2 |" in md
    for name in PNGS:
        assert f"]({name})" in md, name
    assert "stitched from the test windows only of 3 of 3 fold(s)" in md and "no look-ahead" in md
    assert "## Missing or failed tasks\n\nnone\n" in md
    # the validation curves: the mean over each fold's members (scores 1.5 + fold + member at 400)
    assert "| timesteps | fold 0 | fold 1 | fold 2 | all |" in md
    assert "| 200 | 0.50 | 1.50 | 2.50 | 1.50 |" in md and "| 400 | 2.00 | 3.00 | 4.00 | 3.00 |" in md
    assert "Kept checkpoints (timesteps): fold 0 member 0: 400; fold 0 member 1: 400;" in md


def test_the_report_says_per_fold_whether_the_ensemble_beats_flat_and_chance(reported, evaluations):
    layout, _ = reported
    md = (layout.root / "report" / "summary.md").read_text()
    section = md.split("\n## Baselines and significance\n", 1)[1].split("\n## ", 1)[0]
    assert "1 - PSR(0)" in section and "p_random" in section
    bullets = [line[2:] for line in section.splitlines() if line.startswith("- fold ")]
    assert len(bullets) == 3
    for fold, line in enumerate(bullets):
        ens = evaluations[(fold, -1)]
        p_flat, p_random = 1 - ens.metrics["policy"].psr, ens.p_random
        assert line.startswith(f"fold {fold}: the ensemble ") and line.endswith(" at p < 0.05")
        assert f"(Sharpe {ens.metrics['policy'].sharpe:.2f}, p = {p_flat:.3f})" in line
        assert f"turnover (p = {p_random:.3f})" in line
        assert ("does not beat flat" in line) == (not p_flat < 0.05)
        assert ("beats a random" in line or " and a random" in line) == (p_random < 0.05)
    header = "| fold | net return | gross return | flat return | random median return | p (flat) | p (random) "
    assert header + "| deflated Sharpe |" in section
    ens = evaluations[(1, -1)]
    policy, random = ens.metrics["policy"], ens.metrics["random_turnover"]
    row = (f"| 1 | {policy.total_return:.2%} | {policy.gross_return:.2%} | 0.00% | {random.total_return:.2%} | "
           f"{1 - policy.psr:.3f} | {ens.p_random:.3f} | 0.500 |")  # fmt: skip
    assert row in section
    assert "| fold | commission | spread | slippage | impact | financing | fees | cost drag | turnover |" in section
    cells = " | ".join(f"{ens.cost_breakdown[name]:.2%}" for name in COST_COMPONENTS)
    assert f"| 1 | {cells} | {policy.cost_drag:.2%} | {policy.turnover:.2f} |" in section


def test_a_summary_without_the_baselines_still_reports(tmp_path: Path, evaluations):
    layout = make_run(tmp_path / "run", evaluations, missing={2}, legacy=True)
    md = write_report(layout.root)[-1].read_text()
    section = md.split("\n## Baselines and significance\n", 1)[1].split("\n## ", 1)[0]
    assert "p (random) = n/a" not in section and "(p = n/a) at p < 0.05" in section
    assert "- fold 2: no ensemble result, nothing to test" in section
    assert "| fold | commission" not in section  # no cost breakdown to show


def test_rerunning_overwrites_cleanly(reported):
    layout, _ = reported
    report = layout.root / "report"
    before = {p.name: p.read_bytes() for p in report.iterdir()}
    (report / "summary.md").write_text("stale")
    (report / "oos_equity.png").write_bytes(b"stale")
    paths = write_report(layout.root)
    assert [p.name for p in paths] == [*PNGS, "summary.md"]
    assert {p.name: p.read_bytes() for p in report.iterdir()}.keys() == before.keys()
    assert (report / "summary.md").read_bytes() == before["summary.md"]
    assert_png(report / "oos_equity.png", (1000, 500))


def test_a_run_with_a_missing_fold_and_damaged_task_files_still_reports(tmp_path: Path, evaluations):
    layout = make_run(tmp_path / "run", evaluations, missing={1})
    layout.result(0, 1).unlink()  # absent: aggregation happened before it vanished; the panel says so
    layout.result(2, None).write_bytes(b"not hdf5")  # unreadable: skipped like an absent file
    paths = write_report(layout.root)
    assert [p.name for p in paths] == [*PNGS, "summary.md"]
    for path in paths[:4]:
        assert_png(path)
    md = paths[-1].read_text()
    assert "- fold1_member0: missing (no task file)" in md and "- fold1_ensemble: missing (no task file)" in md
    assert "| 1 | n/a | n/a | n/a | n/a | 0/2 |" in md
    assert "2 of 3 fold(s)" in md and "Missing fold(s) 1" in md and "complete: no" in md


def test_no_summary_is_a_one_line_error(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(PloutosError) as info:
        write_report(run)
    message = str(info.value)
    assert message == f"{run}/summary.h5 not found; run `ploutos aggregate {run}` first"
    assert "\n" not in message
    assert not (run / "report").exists()


def test_a_damaged_summary_is_a_one_line_error(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.h5").write_bytes(b"garbage" * 100)
    with pytest.raises(PloutosError, match="summary.h5: not a readable summary") as info:
        write_report(run)
    assert "\n" not in str(info.value)
