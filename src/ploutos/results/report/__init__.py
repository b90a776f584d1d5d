"""``ploutos report RUN_DIR``: a tear sheet of an aggregated run, as PNGs, summary.md and report.html.

Reads ``RUN_DIR/summary.h5`` (written by ``ploutos aggregate``) and the task files under
``RUN_DIR/tasks`` (each fold's ensemble for positions and costs, every member for the per-fold,
bootstrap and training views); writes ``RUN_DIR/report/``. Every file is written atomically, so a
rerun replaces the old report file by file and a crash leaves the previous version. A run with
missing or damaged tasks still gets a report: they are listed, not fatal, because the report is
how a user finds out what failed.

Modules: :mod:`.data` reads and derives the series, :mod:`.figures` and :mod:`.panels` draw,
:mod:`.tables` and :mod:`.document` lay out the tables and sections, :mod:`.render` writes them as
markdown and HTML.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from matplotlib.figure import Figure

from ploutos.errors import PloutosError
from ploutos.files import atomic_path
from ploutos.results.importance import FILE_NAME as IMPORTANCE_FILE
from ploutos.results.importance import read_importance
from ploutos.results.layout import RunLayout
from ploutos.results.report.data import Summary, Tasks, assets, exposure, read_summary, read_task, rolling_window
from ploutos.results.report.document import FIGURES, header, sections
from ploutos.results.report.figures import exposure_figure, oos_figure, rolling_figure
from ploutos.results.report.importance import importance_section, ranked_figure, stability_figure
from ploutos.results.report.panels import distributions_figure, folds_figure, training_figure
from ploutos.results.report.render import to_html, to_markdown
from ploutos.results.report.style import save

__all__ = ["FIGURES", "build_figures", "read_summary", "read_tasks", "write_report"]

Echo = Callable[[str], object]


def build_figures(s: Summary, tasks: Tasks) -> dict[str, Callable[[], Figure]]:
    """Each figure's file name and the builder that draws it (in :data:`FIGURES` order); a builder
    draws only when called, so that the caller can say which one it is drawing."""
    n_assets = assets(tasks)
    window = rolling_window(s.bars_per_year, max(s.oos_time.size - 1, 0))
    builders = {
        "oos_equity.png": lambda: oos_figure(s, n_assets),
        "rolling_sharpe.png": lambda: rolling_figure(s, window, n_assets),
        "exposure.png": lambda: exposure_figure(s, exposure(tasks, s.folds)),
        "fold_equity.png": lambda: folds_figure(s, tasks, n_assets),
        "metric_distributions.png": lambda: distributions_figure(s, tasks),
        "training_curves.png": lambda: training_figure(s, tasks),
    }
    return {name: builders[name] for name in FIGURES}


def read_tasks(layout: RunLayout, s: Summary) -> Tasks:
    """Every expected task file of the summary's grid; None where one is absent or unreadable."""
    return {
        (f, m): read_task(layout.result(f, None if m < 0 else m), f, m)
        for f in range(s.folds)
        for m in range(-1, s.members)
    }


def write_report(run_dir: Path, echo: Echo | None = None) -> list[Path]:
    """Write the figures, ``summary.md`` and ``report.html`` under ``run_dir/report``; return their paths
    (``report.html`` last). ``echo``, when given, is told each step as it starts."""
    say = echo or (lambda _line: None)
    layout = RunLayout(Path(run_dir))
    if not layout.summary.exists():
        raise PloutosError(f"{layout.summary} not found; run `ploutos aggregate {layout.root}` first")
    say(f"reading {layout.summary}")
    s = read_summary(layout.summary)
    say(f"reading {s.folds * (s.members + 1)} task files")
    tasks = read_tasks(layout, s)
    out = layout.root / "report"
    out.mkdir(exist_ok=True)
    paths, images = [], {}
    for name, build in build_figures(s, tasks).items():
        say(f"drawing {name}")
        paths.append(save(build(), out / name))
        images[name] = paths[-1].read_bytes()
    window = rolling_window(s.bars_per_year, max(s.oos_time.size - 1, 0))
    parts = sections(s, tasks, assets(tasks), window)
    importance_file = layout.root / IMPORTANCE_FILE
    if importance_file.exists():  # written by `ploutos importance`
        say(f"reading {importance_file}")
        folds = read_importance(importance_file)
        for name, build in (("importance.png", lambda: ranked_figure(folds)),
                            ("importance_stability.png", lambda: stability_figure(folds))):  # fmt: skip
            say(f"drawing {name}")
            paths.append(save(build(), out / name))
            images[name] = paths[-1].read_bytes()
        parts.append(importance_section(folds))
    title = f"Ploutos report: {s.run}"
    for name, text in (("summary.md", to_markdown(title, header(s), parts)),
                       ("report.html", to_html(title, header(s), parts, images))):  # fmt: skip
        say(f"writing {name}")
        with atomic_path(out / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        paths.append(out / name)
    return paths
