"""What ``ploutos paper`` checks before it loads torch: the live guard, the run's config, the overrides.

Kept apart from :mod:`ploutos.paper.runner` so that a bad run folder or a bad override is refused
before the models load.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ploutos.paper import risk
from ploutos.results.recorded import run_config


def check_run(run_dir: Path, overrides: Sequence[str], *, live: bool) -> None:
    """What ``ploutos paper`` checks before it loads torch: the live guard, the run's config, the overrides."""
    risk.check_live(live)  # first: no run is loaded and no server contacted before the guard
    run_config(run_dir, overrides)
