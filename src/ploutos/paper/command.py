"""``ploutos paper --run RUN_DIR [--once | --loop] [--dry-run] [--live] [--adopt-positions] [--ignore-drift]``.

Every decision first scores the features of the last ``paper.drift_bars`` bars against the sketch of the
fold's training window (:mod:`ploutos.pipeline.drift`); past ``paper.drift_halt`` it halts like the
drawdown limit (``--ignore-drift``: a warning instead). A dry run replays the fold's own test window and
does not check drift.

The checks run cheapest first and before anything leaves the machine: the live guard, the run's
config (its recorded hash, the ``--set`` overrides), the URLs the keys would go to, the state file;
only then are the keys read, the models loaded and the broker contacted.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path

from ploutos.data.sources.alpaca import api_keys
from ploutos.errors import PloutosError
from ploutos.paper import risk
from ploutos.paper.broker import AlpacaBroker
from ploutos.paper.replay import agreement, dry_run, write_replay
from ploutos.paper.runner import PaperRunner
from ploutos.paper.state import PaperState
from ploutos.pipeline.drift import reference_of
from ploutos.pipeline.policy import load_policy
from ploutos.results.recorded import run_config


def cli_paper(
    run_dir: Path,
    overrides: Sequence[str],
    *,
    loop: bool,
    dry: bool,
    live: bool,
    adopt: bool = False,
    progress: bool = False,
    ignore_drift: bool = False,
) -> int:
    risk.check_live(live)  # first: no run is loaded and no server contacted before the guard
    checked = run_config(run_dir, overrides)
    config = checked.config
    paper_dir = Path(run_dir) / "paper"
    if paper_dir.exists() and not paper_dir.is_dir():
        raise PloutosError(f"{paper_dir}: not a folder; paper trading keeps its state and journal there; move it away")
    say = functools.partial(print, flush=True)
    if not dry:
        risk.check_urls(config, live)  # before any key is read or any connection made
        if config.data.macro:
            raise PloutosError("paper trading does not fetch macro series yet; the run's data.macro must be empty")
        PaperState.load(paper_dir / "state.json", checked.run_hash)  # a damaged state fails before the models load
        key, secret = api_keys()
    started = time.perf_counter()
    say(f"loading the models of {run_dir} ...")
    policy = load_policy(run_dir, overrides)
    members = ", ".join(map(str, policy.members))
    say(
        f"policy: fold {policy.fold}, member(s) {members}, combine {policy.config.ensemble.combine} "
        f"({time.perf_counter() - started:.1f} s)"
    )
    if dry:
        replay = dry_run(policy, say=say, progress=progress)
        orders, equity = write_replay(replay, run_dir)
        say(f"{orders}: {replay.orders.height} order(s); {equity}: {len(replay.equity)} mark(s)")
        if replay.halted:
            say(replay.halted)
        started = time.perf_counter()
        say("the backtest of the same ensemble over the same bars (train.evaluate), to compare ...")
        checked = agreement(policy, replay)
        say(f"{checked.line()} ({time.perf_counter() - started:.1f} s)")
        return 0
    data = policy.config.data
    broker = AlpacaBroker(
        key,
        secret,
        url=policy.config.paper.trading_url,
        live=live,
        attempts=data.max_retries,
        backoff_s=data.retry_backoff_s,
        timeout_s=data.request_timeout_s,
    )
    drift = None
    if policy.config.paper.drift_halt:
        try:
            drift = reference_of(run_dir, policy)
        except PloutosError as err:
            if not ignore_drift:
                raise
            say(f"warning: {' '.join(str(err).split())}; trading without a drift check (--ignore-drift)")
        else:
            if ignore_drift:
                say("warning: --ignore-drift: drifting features are reported, never halt trading")
    runner = PaperRunner(run_dir, policy, broker, say=say, adopt=adopt, drift=drift, ignore_drift=ignore_drift)
    if loop:
        runner.loop(policy.config.paper.poll_seconds)
    else:
        runner.step()
    return 0
