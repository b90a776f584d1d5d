"""Trading scalars in TensorBoard, beside SB3's losses: what the member's episodes did with money.

SB3 logs rewards and losses; a quant reading a training run wants the episodes' return, how much
they traded and what that cost, and the validation Sharpe as checkpoints are chosen. Per member
(each task has its own event folder), rank 0 writes:

==============================  =================================================================
tag                             value, at the step it was measured
==============================  =================================================================
``trading/episode_return``      mean over the training episodes that ended in the rollout of
                                ``final equity / initial cash - 1``
``trading/episode_turnover``    their mean annualized turnover (traded notional / equity per bar
                                x bars per year), as the test metrics annualize it
``trading/episode_cost_drag``   their mean annualized costs as a share of equity
``trading/episodes``            episodes that ended in the rollout
``validation/<column>``         each validation: score, sharpe, total_return, turnover, cost_drag
==============================  =================================================================

Scalars go straight to the SB3 TensorBoard writer with their own step, so the training curve kept
in the task file (the SB3 logger's rows) is not touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class EpisodeScalars:
    """Running sums per env of the training episodes' turnover and costs, closed at each episode's end."""

    def __init__(self, n_envs: int, initial_cash: float, bars_per_year: int) -> None:
        self.initial_cash, self.bars_per_year = float(initial_cash), int(bars_per_year)
        self.turnover = np.zeros(n_envs)
        self.cost_share = np.zeros(n_envs)
        self.bars = np.zeros(n_envs, dtype=np.int64)
        self.previous_equity = np.full(n_envs, self.initial_cash)
        self.ended: list[tuple[float, float, float]] = []
        """(return, annualized turnover, annualized cost drag) of each episode ended since :meth:`drain`."""

    def step(self, infos: Sequence[Mapping[str, Any]], dones: np.ndarray) -> None:
        """One vec-env step: every env's info (its fill's equity, turnover and costs) and which ended."""
        n = len(infos)
        equity = np.fromiter((info["equity"] for info in infos), np.float64, n)
        self.turnover += np.fromiter((info["turnover"] for info in infos), np.float64, n)
        costs = np.fromiter((info["costs"] for info in infos), np.float64, n)
        self.cost_share += np.divide(costs, self.previous_equity, out=np.zeros(n), where=self.previous_equity > 0)
        self.bars += 1
        self.previous_equity = equity
        for i in np.flatnonzero(dones):
            per_year = self.bars_per_year / self.bars[i]
            self.ended.append((equity[i] / self.initial_cash - 1.0, self.turnover[i] * per_year,
                               self.cost_share[i] * per_year))  # fmt: skip
            self.turnover[i] = self.cost_share[i] = 0.0
            self.bars[i] = 0
            self.previous_equity[i] = self.initial_cash  # the next episode starts all cash

    def drain(self) -> dict[str, float]:
        """The scalars of the episodes ended since the last call (empty when none ended)."""
        if not self.ended:
            return {}
        returns, turnover, drag = np.asarray(self.ended).T
        self.ended = []
        return {
            "trading/episode_return": float(returns.mean()),
            "trading/episode_turnover": float(turnover.mean()),
            "trading/episode_cost_drag": float(drag.mean()),
            "trading/episodes": float(len(returns)),
        }


def write_scalars(writer: Any, values: Mapping[str, float], step: int) -> None:
    """``values`` at ``step`` through a ``torch.utils.tensorboard.SummaryWriter``, flushed."""
    for tag, value in values.items():
        writer.add_scalar(tag, value, step)
    writer.flush()
