"""``ploutos paper --run RUN_DIR [--once | --loop] [--dry-run] [--live]``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ploutos.data.sources.alpaca import api_keys
from ploutos.errors import PloutosError
from ploutos.paper import risk
from ploutos.paper.broker import AlpacaBroker
from ploutos.paper.replay import agreement, dry_run, write_replay
from ploutos.paper.runner import PaperRunner, load_policy


def cli_paper(run_dir: Path, overrides: Sequence[str], *, loop: bool, dry: bool, live: bool) -> int:
    risk.check_live(live)  # first: no run is loaded and no server contacted before the guard
    policy = load_policy(run_dir, overrides)
    members = ", ".join(map(str, policy.members))
    print(f"policy: fold {policy.fold}, member(s) {members}, combine {policy.config.ensemble.combine}", flush=True)
    if dry:
        replay = dry_run(policy)
        orders, equity = write_replay(replay, run_dir)
        print(f"{orders}: {replay.orders.height} order(s); {equity}: {len(replay.equity)} mark(s)")
        if replay.halted:
            print(replay.halted)
        print(agreement(policy, replay).line())
        return 0
    if policy.config.data.macro:
        raise PloutosError("paper trading does not fetch macro series yet; the run's data.macro must be empty")
    key, secret = api_keys()
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
    runner = PaperRunner(run_dir, policy, broker)
    if loop:
        runner.loop(policy.config.paper.poll_seconds)
    else:
        runner.step()
    return 0
