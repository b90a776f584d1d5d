"""What a backtest (:func:`ploutos.pipeline.backtest.backtest`) did, and its report beside its
``backtest.h5``: ``equity.png``, ``report.md`` and the self-contained ``report.html`` (the run report's
renderer).

The figure shows the model's equity against the baselines it is judged by (flat, buy and hold,
equal weight) and its drawdown below, with the in-sample bars shaded when the backtest was allowed
to reach them. Written atomically, matplotlib's object API only (no pyplot, no display).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.dates import AutoDateLocator, DateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from ploutos.analytics.evaluation import RANDOM, FoldEvaluation
from ploutos.config import Config
from ploutos.files import atomic_path
from ploutos.results.report.document import Bullets, Image, Paragraph, Section
from ploutos.results.report.render import to_html, to_markdown
from ploutos.results.report.style import benchmark_lines
from ploutos.results.report.tables import Table, fmt


@dataclass(frozen=True)
class Window:
    """The traded bars of a backtest and how many of them the model trained or validated on."""

    rows: slice
    """Rows of the evaluation env: ``lookback`` rows of history, then the traded bars."""
    first: np.datetime64
    """The first traded bar."""
    last: np.datetime64
    """The last traded bar."""
    bars: int
    in_sample: tuple[np.datetime64, np.datetime64] | None
    """The first and last in-sample traded bar, or None."""
    in_sample_bars: int


@dataclass(frozen=True)
class Backtest:
    """What :func:`backtest` did and wrote."""

    fold: int
    members: tuple[int, ...]
    """The members that decided (all of the fold's models for the ensemble)."""
    ensemble: bool
    window: Window
    evaluation: FoldEvaluation
    result: Path
    """The task file (``backtest.h5``)."""
    report: Path
    """``report.md`` beside it."""
    source: str
    """Where the bars came from."""
    seconds: float
    """Wall clock of the whole backtest."""

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return {name: values.as_dict() for name, values in self.evaluation.metrics.items()}


FIGURE = "equity.png"
ROWS = (  # (metric, label, format)
    ("total_return", "total return", "pct"),
    ("gross_return", "return before costs", "pct"),
    ("annual_return", "annual return", "pct"),
    ("sharpe", "Sharpe", "num"),
    ("sortino", "Sortino", "num"),
    ("max_drawdown", "max drawdown", "pct"),
    ("turnover", "turnover (annual, x equity)", "num"),
    ("cost_drag", "cost drag (annual)", "pct"),
)
COLUMNS = (("policy", "model"), ("buy_and_hold", "buy and hold"), ("equal_weight", "equal weight"),
           ("flat", "flat"), (RANDOM, "random, same turnover (median)"))  # fmt: skip


def _time(moment: np.datetime64) -> str:
    return np.datetime_as_string(moment, unit="m").replace("T", " ")


def figure(done: Backtest) -> Figure:
    """Equity of the model and its baselines (start = 1), and the model's drawdown below."""
    evaluation = done.evaluation
    fig = Figure(figsize=(10, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    policy = evaluation.policy
    time = policy.timestamps.astype("datetime64[us]")
    top.plot(time, policy.equity / policy.equity[0], color="C0", lw=1.6, label="model")
    curves = {name: evaluation.benchmarks[name].equity for name in ("buy_and_hold", "equal_weight")}
    curves = {name: equity / equity[0] for name, equity in curves.items()}
    assets = policy.weights.shape[1]
    for name, label, color in benchmark_lines(curves["buy_and_hold"], curves["equal_weight"], assets):
        top.plot(time, curves[name], color=color, lw=1.0, label=label)  # one line when they are the same curve
    top.axhline(1.0, color="0.5", lw=0.8, ls=":", label="flat")
    peak = np.maximum.accumulate(policy.equity)
    bottom.fill_between(time, policy.equity / peak - 1.0, 0.0, color="C3", alpha=0.4, lw=0, label="model drawdown")
    bottom.yaxis.set_major_formatter(PercentFormatter(1.0))
    window = done.window
    if window.in_sample is not None:
        for ax in (top, bottom):
            ax.axvspan(window.in_sample[0], window.in_sample[1], color="orange", alpha=0.15, lw=0)
        top.text(window.in_sample[0], 0.98, " in-sample", transform=top.get_xaxis_transform(), va="top", fontsize=8)
    what = "ensemble" if done.ensemble else f"member {done.members[0]}"
    top.set_title(f"backtest of fold {done.fold}'s {what}: {np.datetime64(window.first, 'D')} to "
                  f"{np.datetime64(window.last, 'D')}, {window.bars:,} bars")  # fmt: skip
    top.set_ylabel("equity (start = 1)")
    bottom.set_ylabel("drawdown")
    top.legend(loc="best", fontsize=8)
    locator = AutoDateLocator(minticks=3, maxticks=8)
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))
    fig.subplots_adjust(left=0.09, right=0.97, top=0.93, bottom=0.08, hspace=0.08)
    return fig


def sections(done: Backtest, config: Config) -> tuple[str, list[Section]]:
    """The report's header line and sections (rendered as ``report.md`` and ``report.html``)."""
    window, evaluation, metrics = done.window, done.evaluation, done.metrics
    members = ", ".join(map(str, done.members))
    who = f"the ensemble of members {members}" if done.ensemble else f"member {done.members[0]}"
    in_sample = (
        f"{window.in_sample_bars} of the {window.bars} bars are in-sample ({_time(window.in_sample[0])} to "
        f"{_time(window.in_sample[1])}: the model trained or validated on them; shaded in the figure)."
        if window.in_sample is not None
        else "No traded bar lies in the model's training or validation window: every bar is out-of-sample."
    )
    header = (
        f"{who.capitalize()} traded {window.bars:,} bars from {_time(window.first)} to {_time(window.last)} UTC, "
        f"bars from {done.source}, with the run's features, the fold's normalization and the same simulator "
        f"and costs as its evaluation. {in_sample}"
    )
    rows = [(label, *(fmt(metrics.get(name, {}).get(key), kind) for name, _ in COLUMNS)) for key, label, kind in ROWS]
    table = Table(("metric", *(label for _, label in COLUMNS)), rows, "l" + "r" * len(COLUMNS))
    boot = evaluation.bootstrap
    intervals = [
        f"{label}: {fmt(boot.intervals[key][0], kind)} to {fmt(boot.intervals[key][1], kind)}"
        for key, label, kind in (("sharpe", "Sharpe", "num"), ("total_return", "total return", "pct"),
                                 ("max_drawdown", "max drawdown", "pct"))
    ]  # fmt: skip
    psr = metrics["policy"].get("psr", float("nan"))
    significance = (
        f"p (flat) = 1 - PSR(0) = {fmt(1.0 - psr, 'prob')}; p (random) = {evaluation.p_random:.3f}: the share of "
        f"{len(evaluation.random.total_return)} random policies trading as much whose net return was at least the "
        "model's."
    )
    return header, [
        Section("Metrics", "metrics", [table]),
        Section(
            "Significance",
            "significance",
            [
                Paragraph(
                    f"Block-bootstrap {boot.confidence:.0%} intervals of the model (blocks of {boot.block} bars):"
                ),
                Bullets(intervals),
                Paragraph(significance),
            ],
        ),  # fmt: skip
        Section("Equity and drawdown", "equity", [Image(FIGURE, "Equity and drawdown")]),
    ]


def write_backtest_report(done: Backtest, config: Config) -> list[Path]:
    """``equity.png``, ``report.md`` and the self-contained ``report.html`` beside the backtest's task file."""
    out = done.result.parent
    with atomic_path(out / FIGURE) as tmp:
        figure(done).savefig(tmp, format="png", dpi=100)
    title = f"Backtest: {config.name}, fold {done.fold}"
    header, parts = sections(done, config)
    with atomic_path(done.report) as tmp:
        tmp.write_text(to_markdown(title, header, parts))
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(to_html(title, header, parts, {FIGURE: (out / FIGURE).read_bytes()}))
    return [out / FIGURE, done.report, out / "report.html"]
