"""``ploutos report``: the tear sheet of a run aggregated for real from task files written by the real writer.

Figures are checked by content (their axes' data and legend entries), tables against the task files
and summary.h5, and the statistics against empyrical's (a dev dependency) with the same annualization.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path

import empyrical
import h5py
import numpy as np
import pandas as pd
import pytest
from matplotlib.dates import date2num

from ploutos.analytics.evaluation import FoldEvaluation
from ploutos.analytics.metrics import compute_metrics
from ploutos.bench.env import synthetic_arrays
from ploutos.cli import main
from ploutos.config import EnvConfig, config_hash, dump, load
from ploutos.errors import PloutosError
from ploutos.results.aggregate import aggregate
from ploutos.results.hdf5 import TaskResult, write_task_result
from ploutos.results.layout import RunLayout
from ploutos.results.report import FIGURES, build_figures, read_summary, read_tasks, write_report
from ploutos.results.report.data import rolling_sharpe, stitched_returns, underwater
from ploutos.results.report.figures import rolling_figure
from ploutos.results.report.panels import distributions_figure
from ploutos.train.evaluate import Ensemble, evaluate

CFG = replace(EnvConfig(), lookback=8)
TESTS = [(40, 130), (130, 220), (220, 300)]  # consecutive test windows; 8-hour bars: each spans about a month
MEMBERS = 2
PNGS = tuple(FIGURES)


def arrays(assets: int):
    """Synthetic bars 8 hours apart, so that three short test windows cover several calendar months."""
    base = synthetic_arrays(300, assets, 4, seed=11)
    return replace(base, timestamps=np.datetime64("2020-01-20T00:00", "us") + np.arange(300) * np.timedelta64(8, "h"))


class Fixed:
    """Constant target weights, rebalanced every bar."""

    def __init__(self, *weights: float) -> None:
        self.weights = np.array(weights, dtype=np.float32)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        return self.weights, state


def make_run(root: Path, assets: int = 2, members: int = MEMBERS, missing: frozenset = frozenset()) -> RunLayout:
    """A run folder whose task files come from real evaluations and whose summary.h5 from `aggregate`;
    folds in ``missing`` have no task file."""
    config = load("quickstart", [f"results_dir={root}", "name=report-test"])
    layout = RunLayout.of(config)
    layout.prepare(config)
    layout.write_plan(len(TESTS), members)
    data, bars = arrays(assets), config.data.bars_per_year
    actors = [Fixed(*[0.5 - 0.4 * m - 0.1 * a for a in range(assets)]) for m in range(members)]
    for fold, (lo, hi) in enumerate(TESTS):
        if fold in missing:
            continue
        rows = slice(lo - CFG.lookback, hi)
        for member in [*range(members), None]:
            actor = Ensemble(actors) if member is None else actors[member]
            evaluation = evaluate(actor, data, CFG, rows, bars, seed=fold, random_seeds=100)
            write_task_result(layout.result(fold, member), task(config, fold, member, evaluation, data))
    aggregate(layout.root)
    return layout


def task(config, fold: int, member: int | None, evaluation: FoldEvaluation, data) -> TaskResult:
    steps = np.arange(1, 6) * 100
    m = -1 if member is None else member
    return TaskResult(
        fold=fold, member=member, run=config.name, config_hash=config_hash(config), config_yaml=dump(config),
        provenance={"ploutos": "0.0.0"}, fold_bounds={"test_rows": list(TESTS[fold]), "embargo_bars": 0},
        tickers=data.tickers, feature_names=data.names, norm_center=np.zeros(4), norm_scale=np.ones(4),
        evaluation=evaluation,
        training={} if member is None else {"timesteps": steps, "ep_rew_mean": np.linspace(-1, 1, 5) + m,
                                            "value_loss": np.linspace(2, 0.5, 5)},
        validation={} if member is None else {"timesteps": [200, 400], "score": [0.5 + fold, 1.5 + fold + m],
                                              "chosen_timesteps": 400, "metric": "sharpe"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunLayout:
    return make_run(tmp_path_factory.mktemp("complete") / "runs")


@pytest.fixture(scope="module")
def reported(run: RunLayout) -> tuple[RunLayout, str]:
    """The complete run, reported once through the CLI entry point (drawing is the slow part)."""
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["report", str(run.root)]) == 0
    return run, out.getvalue()


@pytest.fixture(scope="module")
def figures(run: RunLayout):
    s = read_summary(run.summary)
    tasks = read_tasks(run, s)
    return s, tasks, {name: build() for name, build in build_figures(s, tasks).items()}


def read(path: Path, key: str) -> np.ndarray:
    with h5py.File(path, "r", locking=False) as h5:
        return h5[key][()]


def by_gid(ax, gid: str):
    return [line for line in ax.get_lines() if line.get_gid() == gid]


def finite_xy(line) -> np.ndarray:
    xy = np.asarray(line.get_xydata(), dtype=np.float64)
    return xy[np.isfinite(xy[:, 1])]


def legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


def oos(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    with h5py.File(path, "r", locking=False) as h5:
        time = h5["oos/timestamps"][()].astype("datetime64[us]")
        return time, {k: h5[f"oos/{k}"][()] for k in ("ensemble", "buy_and_hold", "equal_weight")}, h5["oos/fold"][()]


def test_the_report_writes_every_figure_summary_md_and_report_html(reported):
    layout, printed = reported
    report = layout.root / "report"
    expected = [report / name for name in (*PNGS, "summary.md", "report.html")]
    progress = [line.strip() for line in printed.splitlines() if line.startswith("  ")]
    assert [line for line in printed.splitlines() if not line.startswith("  ")] == [str(p) for p in expected]
    assert progress[0].startswith("reading") and "drawing oos_equity.png" in progress
    assert progress[-1] == "writing report.html"
    assert sorted(report.iterdir()) == sorted(expected)  # no temporaries left
    for name in PNGS:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (report / "summary.md").read_text()
    assert md.startswith("# Ploutos report: report-test\n") and "complete: yes" in md
    titles = ("Out-of-sample (stitched)", "Rolling Sharpe ratio", "Monthly returns", "Positions, turnover and costs")
    titles += ("Per fold", "Per member", "Baselines and significance", "Missing or failed tasks", "Validation")
    for title in (*titles, "Training", "Hyperparameters"):
        assert f"\n## {title}\n" in md, title
    for name in PNGS:
        assert f"]({name})" in md, name
    assert "| 200 | 0.50 | 1.50 | 2.50 | 1.50 |" in md and "| 400 | 2.00 | 3.00 | 4.00 | 3.00 |" in md
    assert "| ppo | learning_rate | 0.0003 |" in md and "| walkforward | train_months | 6 |" in md
    assert "```yaml\nname: report-test\n" in md


def test_the_html_is_one_self_contained_file_with_every_section_table_and_figure(reported):
    layout, _ = reported
    report = layout.root / "report"
    page = (report / "report.html").read_text()
    md = (report / "summary.md").read_text()
    for title in re.findall(r"^## (.+)$", md, flags=re.M):
        assert f">{title}</h2>" in page.replace("&#x27;", "'"), title
    for name in PNGS:  # each figure embedded, byte for byte
        found = re.search(rf'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="[^"]*" title="{name}">', page)
        assert found and base64.b64decode(found.group(1)) == (report / name).read_bytes(), name
    assert page.count("<table>") == md.count("\n| ---") and page.count("<table>") >= 8
    assert re.findall(r'src="([a-z]+):', page) == ["data"] * len(PNGS)  # nothing to fetch
    assert set(re.findall(r'href="(.)', page)) == {"#"} and "<link" not in page and "<script" not in page
    assert "http" not in page


def test_the_oos_figure_draws_the_stitched_curves_their_drawdown_and_the_folds(run, figures):
    s, _, drawn = figures
    top, bottom = drawn["oos_equity.png"].axes
    time, curves, _ = oos(run.summary)
    x = date2num(time)
    for key in ("ensemble", "buy_and_hold", "equal_weight"):
        (line,) = by_gid(top, key)
        np.testing.assert_array_equal(finite_xy(line), np.column_stack([x, curves[key]]))
    assert legend_texts(top.get_legend()) == ["ensemble", "buy and hold", "equal weight", "flat (never trades)"]
    assert {line.get_label() for line in top.get_lines() if not line.get_label().startswith("_")} == set(
        legend_texts(top.get_legend())
    )
    (water,) = by_gid(bottom, "underwater")
    depth = finite_xy(water)[:, 1]
    assert np.all(depth <= 0) and depth.min() < 0
    np.testing.assert_allclose(depth, curves["ensemble"] / np.maximum.accumulate(curves["ensemble"]) - 1, atol=1e-15)
    assert len(by_gid(top, "fold_start")) == len(by_gid(bottom, "fold_start")) == len(TESTS) - 1
    assert [t.get_text() for t in top.texts] == [" fold 0", " fold 1", " fold 2"]
    bottom.xaxis.get_major_formatter().format_ticks(bottom.get_xticks())
    assert bottom.xaxis.get_offset_text().get_text() == ""  # no "2020-Mar" under a January-March axis
    assert bottom.get_xlabel() == f"{np.datetime_as_string(time[0], 'D')} to {np.datetime_as_string(time[-1], 'D')}"


def test_with_one_asset_buy_and_hold_and_equal_weight_are_one_line_with_one_legend_entry(tmp_path: Path):
    layout = make_run(tmp_path / "runs", assets=1, members=1)
    s = read_summary(layout.summary)
    builders = build_figures(s, read_tasks(layout, s))
    drawn = {name: builders[name]() for name in ("oos_equity.png", "fold_equity.png")}
    top = drawn["oos_equity.png"].axes[0]
    merged = "buy and hold = equal weight (one asset)"
    assert legend_texts(top.get_legend()) == ["ensemble", merged, "flat (never trades)"]
    assert not by_gid(top, "equal_weight")
    assert merged in legend_texts(drawn["fold_equity.png"].legends[0])
    assert "equal weight" not in legend_texts(drawn["fold_equity.png"].legends[0])


def test_rolling_sharpe_is_empyricals_with_the_runs_annualization(run, figures):
    s, _, drawn = figures
    bars = load(run.config_file).data.bars_per_year
    window = 30
    r = stitched_returns(s)
    ours = rolling_sharpe(r, window, bars)
    theirs = empyrical.roll_sharpe_ratio(pd.Series(r.values), window, annualization=bars).to_numpy()
    np.testing.assert_allclose(ours[window - 1 :], theirs, rtol=1e-10)
    assert np.isnan(ours[: window - 1]).all()
    ax = rolling_figure(s, window, 2).axes[0]
    (line,) = by_gid(ax, "ensemble")
    np.testing.assert_array_equal(line.get_ydata(), ours)
    assert "30-bar window" in ax.get_title() and f"{bars:,} bars a year" in ax.get_title()
    assert legend_texts(ax.get_legend())[:2] == ["ensemble", "buy and hold"]


def test_the_report_statistics_are_empyricals(run):
    """The project's own metrics of a real task's test returns against empyrical's, same annualization."""
    bars = load(run.config_file).data.bars_per_year
    for fold, member in ((0, None), (1, 0)):
        equity = read(run.result(fold, member), "test/equity")
        returns = pd.Series(equity[1:] / equity[:-1] - 1.0)
        ours = compute_metrics(equity, bars)
        np.testing.assert_allclose(ours.sharpe, empyrical.sharpe_ratio(returns, annualization=bars), rtol=1e-10)
        np.testing.assert_allclose(ours.sortino, empyrical.sortino_ratio(returns, annualization=bars), rtol=1e-10)
        np.testing.assert_allclose(ours.annual_return, empyrical.annual_return(returns, annualization=bars),
                                   rtol=1e-10)  # fmt: skip
        np.testing.assert_allclose(ours.volatility, empyrical.annual_volatility(returns, annualization=bars),
                                   rtol=1e-10)  # fmt: skip
        np.testing.assert_allclose(-ours.max_drawdown, empyrical.max_drawdown(returns), rtol=1e-10)
    time, curves, _ = oos(run.summary)
    returns = pd.Series(curves["ensemble"][1:] / curves["ensemble"][:-1] - 1.0)
    with h5py.File(run.summary, "r", locking=False) as h5:
        stitched = dict(h5["oos/metrics"].attrs)
    np.testing.assert_allclose(stitched["sharpe"], empyrical.sharpe_ratio(returns, annualization=bars), rtol=1e-10)
    np.testing.assert_allclose(stitched["max_drawdown"], -empyrical.max_drawdown(returns), rtol=1e-10)


def test_the_monthly_table_compounds_the_bars_of_each_month(reported):
    layout, _ = reported
    time, curves, _ = oos(layout.summary)
    returns = pd.Series(curves["ensemble"][1:] / curves["ensemble"][:-1] - 1.0, index=pd.DatetimeIndex(time[1:]))
    monthly = empyrical.aggregate_returns(returns, "monthly")
    assert len(monthly) >= 3
    md = (layout.root / "report" / "summary.md").read_text()
    row = next(line for line in md.split("\n## Monthly returns\n")[1].splitlines() if line.startswith("| 2020 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    for (year, month), value in monthly.items():
        by_hand = np.prod(1.0 + returns[(returns.index.year == year) & (returns.index.month == month)]) - 1.0
        assert cells[month] == f"{by_hand:.2%}" == f"{value:.2%}"
    assert cells[-1] == f"{curves['ensemble'][-1] / curves['ensemble'][0] - 1:.2%}"
    assert cells[12] == ""  # December: no bar


def test_positions_turnover_and_costs_come_from_the_ensembles_task_files(run, figures):
    _, _, drawn = figures
    weights, turnover, costs = drawn["exposure.png"].axes
    assert legend_texts(weights.get_legend()) == ["T00", "T01", "gross (sum of |weight|)"]
    level_turnover = level_costs = 0.0
    for fold, line in enumerate(by_gid(weights, "weight_T01")):
        w = read(run.result(fold, None), "test/weights")
        np.testing.assert_array_equal(line.get_ydata(), w[:, 1])
    for fold, (t_line, c_line) in enumerate(zip(by_gid(turnover, "turnover"), by_gid(costs, "costs"), strict=True)):
        step_turnover, paid = read(run.result(fold, None), "test/turnover"), read(run.result(fold, None), "test/costs")
        equity = read(run.result(fold, None), "test/equity")
        np.testing.assert_allclose(t_line.get_ydata(), level_turnover + np.cumsum(step_turnover))
        np.testing.assert_allclose(c_line.get_ydata(), level_costs + np.cumsum(paid / equity[:-1]))
        level_turnover, level_costs = t_line.get_ydata()[-1], c_line.get_ydata()[-1]
    assert level_turnover > 0 and level_costs > 0


def test_each_fold_panel_shows_its_members_apart_with_a_legend(run, figures):
    _, _, drawn = figures
    fig = drawn["fold_equity.png"]
    assert legend_texts(fig.legends[0]) == ["member 0", "member 1", "ensemble", "buy and hold", "equal weight",
                                            "flat", "random, same turnover (median, 5-95%)"]  # fmt: skip
    for fold, ax in enumerate(fig.axes):
        lines = [by_gid(ax, f"member{m}")[0] for m in range(MEMBERS)]
        assert len({(line.get_color(), line.get_linestyle()) for line in lines}) == MEMBERS
        for m, line in enumerate(lines):
            equity = read(run.result(fold, m), "test/equity")
            np.testing.assert_allclose(line.get_ydata(), equity / equity[0])
        seeds = read(run.result(fold, None), "benchmarks/random_turnover/total_return")
        (errorbar,) = [c for c in ax.containers if c.get_label().startswith("random")]
        np.testing.assert_allclose(np.asarray(errorbar.lines[0].get_ydata(), float), [1 + np.percentile(seeds, 50)])
        ax.xaxis.get_major_formatter().format_ticks(ax.get_xticks())
        assert ax.xaxis.get_offset_text().get_text() == "" and " to " in ax.get_xlabel()


def test_members_are_points_under_five_and_the_ensemble_carries_its_bootstrap_interval(run, figures):
    s, tasks, drawn = figures
    fig = drawn["metric_distributions.png"]
    sharpe = fig.axes[0]
    assert not [p for p in sharpe.patches] and not any(line.get_gid() is None and len(line.get_xdata()) == 2
                                                       for line in sharpe.get_lines())  # no box  # fmt: skip
    points = [c for c in sharpe.collections if c.get_gid() == "member0"]
    np.testing.assert_allclose(points[0].get_offsets()[:, 1], read(run.summary, "metrics/sharpe")[:, 0])
    (bars,) = [c for c in sharpe.containers if c.get_label() == "_bootstrap"]
    segments = bars.lines[2][0].get_segments()
    for fold, segment in enumerate(segments):
        with h5py.File(run.result(fold, None), "r", locking=False) as h5:
            low, high = h5["bootstrap"].attrs["sharpe_low"], h5["bootstrap"].attrs["sharpe_high"]
        np.testing.assert_allclose(segment[:, 1], [low, high])
    assert legend_texts(fig.legends[0]) == ["member 0", "member 1", "ensemble (95% bootstrap interval)", "buy and hold"]
    many = replace(s, members=5, metrics={k: np.tile(v, (1, 3))[:, :5] for k, v in s.metrics.items()})
    boxed = distributions_figure(many, tasks).axes[0]
    assert len([line for line in boxed.get_lines() if line.get_gid() is None]) >= 5 * len(TESTS)  # whiskers, caps


def test_the_tables_show_each_tasks_bootstrap_interval(reported):
    layout, _ = reported
    md = (layout.root / "report" / "summary.md").read_text()
    members = md.split("\n## Per member\n")[1].split("\n## ")[0]
    for fold in range(len(TESTS)):
        for m in range(MEMBERS):
            with h5py.File(layout.result(fold, m), "r", locking=False) as h5:
                a, p = dict(h5["bootstrap"].attrs), dict(h5["metrics/policy"].attrs)
            cell = f"{p['sharpe']:.2f} [{a['sharpe_low']:.2f}, {a['sharpe_high']:.2f}]"
            ret = f"{p['total_return']:.2%} [{a['total_return_low']:.2%}, {a['total_return_high']:.2%}]"
            assert f"| {fold} | {m} | {cell} | {ret} |" in members
    folds = md.split("\n## Per fold\n")[1].split("\n## ")[0]
    with h5py.File(layout.result(1, None), "r", locking=False) as h5:
        a, p = dict(h5["bootstrap"].attrs), dict(h5["metrics/policy"].attrs)
    assert (
        "| 1 | " in folds
        and f"{p['max_drawdown']:.2%} [{a['max_drawdown_low']:.2%}, {a['max_drawdown_high']:.2%}]" in folds
    )
    baselines = md.split("\n## Baselines and significance\n")[1].split("\n## ")[0]
    assert (
        "| fold | net return | gross return | flat | buy and hold | equal weight | random, same turnover" in baselines
    )
    assert len([line for line in baselines.splitlines() if line.startswith("- fold ")]) == len(TESTS)


def test_a_run_with_a_missing_fold_and_damaged_task_files_still_reports(tmp_path: Path):
    layout = make_run(tmp_path / "runs", missing=frozenset({1}))
    layout.result(0, 1).unlink()  # absent: aggregation happened before it vanished; the panel says so
    layout.result(2, None).write_bytes(b"not hdf5")  # unreadable: skipped like an absent file
    paths = write_report(layout.root)
    assert [p.name for p in paths] == [*PNGS, "summary.md", "report.html"]
    md = paths[-2].read_text()
    assert "- fold1_member0: missing (no task file)" in md and "- fold1_ensemble: missing (no task file)" in md
    assert "2 of 3 fold(s)" in md and "Missing fold(s) 1" in md and "complete: no" in md
    s = read_summary(layout.summary)
    r = stitched_returns(s)
    ours = rolling_sharpe(r, 10, s.bars_per_year)
    after_gap = np.flatnonzero(r.fold == 2)[0]
    assert np.isnan(ours[after_gap : after_gap + 9]).all() and np.isfinite(ours[after_gap + 9])  # no window spans it
    time, curves, folds = oos(layout.summary)
    top = build_figures(s, {})["oos_equity.png"]().axes[0]
    (line,) = by_gid(top, "ensemble")
    assert np.isnan(line.get_ydata()).sum() == 1  # the line breaks over the missing fold
    assert [t.get_text() for t in top.texts] == [" fold 0", " fold 2", " fold 1 missing"]
    np.testing.assert_array_equal(underwater(np.array([1.0, 2.0, 1.0, 3.0])), [0.0, 0.0, -0.5, 0.0])


def test_a_summary_without_baselines_costs_or_config_still_reports_and_echo_tells_each_step(
    run: RunLayout, tmp_path: Path
):
    copy = tmp_path / "run"
    shutil.copytree(run.root, copy)
    with h5py.File(copy / "summary.h5", "a") as h5:
        for key in ("ensemble/costs", "benchmarks/flat", "benchmarks/random_turnover", "ensemble/p_random", "config"):
            del h5[key]
    said: list[str] = []
    md = write_report(copy, echo=said.append)[-2].read_text()
    assert said == [f"reading {copy / 'summary.h5'}", "reading 9 task files", *[f"drawing {n}" for n in PNGS],
                    "writing summary.md", "writing report.html"]  # fmt: skip
    section = md.split("\n## Baselines and significance\n", 1)[1].split("\n## ", 1)[0]
    assert "(p = n/a) at p < 0.05" in section and "| fold | commission" not in section
    assert "The summary holds no config." in md


def test_no_summary_is_a_one_line_error(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(PloutosError) as info:
        write_report(run)
    assert str(info.value) == f"{run}/summary.h5 not found; run `ploutos aggregate {run}` first"
    assert not (run / "report").exists()


def test_a_damaged_summary_is_a_one_line_error(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.h5").write_bytes(b"garbage" * 100)
    with pytest.raises(PloutosError, match="summary.h5: not a readable summary") as info:
        write_report(run)
    assert "\n" not in str(info.value)
