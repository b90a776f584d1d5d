"""The report's sections in reading order, as blocks that both summary.md and report.html render.

One list of sections feeds both renderers, so the HTML tear sheet and the markdown summary never
disagree on a number or leave a table out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ploutos.results.aggregate import SIGNIFICANCE, verdicts
from ploutos.results.report.data import Summary, Tasks, stitched_returns
from ploutos.results.report.tables import (
    Table,
    baselines_table,
    costs_table,
    folds_table,
    hyperparameters_table,
    members_table,
    monthly_table,
    oos_table,
    validation_table,
)


@dataclass(frozen=True)
class Paragraph:
    text: str
    """Plain text; `backticks` mark code."""


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Image:
    file: str
    """A PNG beside the report, e.g. ``oos_equity.png``."""
    alt: str


@dataclass(frozen=True)
class Code:
    text: str
    language: str = ""


Block = Paragraph | Bullets | Table | Image | Code


@dataclass(frozen=True)
class Section:
    title: str
    anchor: str
    blocks: list[Block]


FIGURES = {  # file -> alt text, in the order they are drawn
    "oos_equity.png": "Stitched out-of-sample equity and drawdown",
    "rolling_sharpe.png": "Rolling Sharpe ratio",
    "exposure.png": "Positions, turnover and costs over time",
    "fold_equity.png": "Test equity per fold",
    "metric_distributions.png": "Metrics across members",
    "training_curves.png": "Training and validation curves",
}


def header(s: Summary) -> str:
    return (
        f"Config hash `{s.config_hash}`; {s.folds} fold(s) x {s.members} member(s); "
        f"aggregated {s.created or 'n/a'}; complete: {'yes' if s.complete else 'no'}."
    )


def sections(s: Summary, tasks: Tasks, assets: int, window: int) -> list[Section]:
    """Every section of the report, from the stitched curve down to the hyperparameters."""
    present = s.folds - len(s.gaps)
    stitched = (
        f"The out-of-sample curve is stitched from the test windows only of {present} of {s.folds} fold(s): every "
        "point was traded by models trained on earlier data, so there is no look-ahead."
        + (f" Missing fold(s) {', '.join(map(str, s.gaps))} are left out of it." if s.gaps else "")
        + " Below the equity, the drawdown: the ensemble's equity over its running peak, minus 1."
    )
    out = [
        Section(
            "Out-of-sample (stitched)",
            "oos",
            [Paragraph(stitched), oos_table(s, assets), Image("oos_equity.png", FIGURES["oos_equity.png"])],
        ),  # fmt: skip
        Section(
            "Rolling Sharpe ratio",
            "rolling",
            [
                Paragraph(
                    f"The annualized Sharpe ratio of the last {window:,} bars at every bar of the stitched curves "
                    f"({s.bars_per_year:,} bars a year); no window spans a missing fold, and a window without "
                    "variation (no position) has none."
                ),
                Image("rolling_sharpe.png", FIGURES["rolling_sharpe.png"]),
            ],
        ),  # fmt: skip
        Section(
            "Monthly returns",
            "monthly",
            [
                Paragraph(
                    "Compounded returns of the bars that close in each month, stitched out-of-sample ensemble; a "
                    "month no present fold traded is blank."
                ),
                monthly_table(stitched_returns(s, "ensemble")),
                Paragraph("Buy and hold over the same bars:"),
                monthly_table(stitched_returns(s, "buy_and_hold")),
            ],
        ),  # fmt: skip
        Section(
            "Positions, turnover and costs",
            "exposure",
            [
                Paragraph(
                    "Each fold ensemble's weight of equity per asset at every close; its traded notional over equity "
                    "and its costs over equity before each step, summed from the first test bar on."
                ),
                Image("exposure.png", FIGURES["exposure.png"]),
            ],
        ),  # fmt: skip
        Section(
            "Per fold",
            "folds",
            [
                Paragraph(
                    "Each fold's ensemble over its test window. [95%]: the block-bootstrap interval of the test "
                    "returns. p (flat) = 1 - PSR(0); p (random): share of random policies with its turnover that made "
                    "at least its return."
                ),
                folds_table(s, tasks),
                Image("fold_equity.png", FIGURES["fold_equity.png"]),
            ],
        ),  # fmt: skip
        Section(
            "Per member",
            "members",
            [
                Paragraph("Every member's own test window, as the per-fold table."),
                members_table(s, tasks),
                Image("metric_distributions.png", FIGURES["metric_distributions.png"]),
            ],
        ),  # fmt: skip
        Section("Baselines and significance", "baselines", significance(s, assets)),
        Section("Missing or failed tasks", "missing", [Bullets(s.missing) if s.missing else Paragraph("none")]),
    ]
    validation = validation_table(tasks)
    if validation is not None:
        table, kept = validation
        blocks: list[Block] = [Paragraph(
            "Each member traded its fold's validation window (the end of its training window, never trained on) at "
            "every checkpoint below and kept the best one; the test window was traded once, by the kept checkpoint. "
            "Mean validation score over each fold's members:"), table]  # fmt: skip
        if kept:
            blocks.append(Paragraph("Kept checkpoints (timesteps): " + "; ".join(kept) + "."))
        out.append(Section("Validation", "validation", blocks))
    out.append(Section("Training", "training", [Image("training_curves.png", FIGURES["training_curves.png"])]))
    params = hyperparameters_table(s.config)
    out.append(Section("Hyperparameters", "hyperparameters", [
        Paragraph("The run's resolved config (config.yaml, hash above), the sections that shape what is learned:"),
        params, Code(s.config.rstrip(), "yaml"),
    ] if params is not None else [Paragraph("The summary holds no config.")]))  # fmt: skip
    return out


def significance(s: Summary, assets: int) -> list[Block]:
    """The baselines section: the verdicts, the numbers behind them, and where the costs went."""
    nan = np.full(s.folds, np.nan)
    blocks: list[Block] = [
        Paragraph(
            f"The ensemble beats flat at p < {SIGNIFICANCE:g} when 1 - PSR(0) of its net returns is below "
            f"{SIGNIFICANCE:g}, and beats chance when fewer than {SIGNIFICANCE:.0%} of the random policies that "
            "trade as much as it does (same env, same costs) made at least its net return (p_random). The deflated "
            "Sharpe ratio is the PSR against the best Sharpe ratio expected from as many trials without skill as the "
            "run evaluated (every member and ensemble)."
        ),
        Bullets(verdicts(*(s.ensemble.get(k, nan) for k in ("sharpe", "psr", "p_random")), s.gaps)),
        baselines_table(s, assets),
    ]
    costs = costs_table(s)
    if costs is not None:
        blocks += [Paragraph("Costs of the ensemble, annualized share of equity (they sum to the cost drag):"), costs]
    return blocks
