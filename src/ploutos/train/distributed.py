"""Data-parallel learner ranks: one ensemble member trained by every MPI rank of a node.

Each rank collects rollouts on its own envs (its own env seeds) and runs the same PPO update
schedule; before every optimizer step the gradients are averaged over the ranks, so the replicas
start equal (rank 0's parameters are broadcast) and stay equal. SB3's update clips each rank's
gradient norm before the step, so the step uses the mean of the per-rank clipped gradients; since
every term is within ``max_grad_norm`` their mean is too.

Without MPI (one rank) every function here is a no-op and mpi4py is never imported.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ploutos.node.context import NodeContext


class RankGroup:
    """The ranks that train one member together: the world communicator, or a single process."""

    def __init__(self, ctx: NodeContext) -> None:
        self.comm = ctx.world if ctx.is_mpi and ctx.world_size > 1 else None
        self.rank = ctx.world_rank if self.comm is not None else 0
        self.size = ctx.world_size if self.comm is not None else 1
        self._hooked: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a collective: every rank must call it)."""
        if self.comm is None:
            return bool(flag)
        return bool(self.comm.allreduce(int(bool(flag)), op=_mpi().MAX))

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` on rank 0 (None elsewhere)."""
        if self.comm is None:
            return [value]
        return self.comm.gather(value, root=0)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        return value if self.comm is None else self.comm.bcast(value, root=0)

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Overwrite every rank's parameters and buffers with rank 0's."""
        if self.comm is None:
            return
        tensors = [t for t in (*module.parameters(), *module.buffers()) if t.numel()]
        flat = _flatten(t.detach() for t in tensors)
        self.comm.Bcast(flat, root=0)
        _unflatten_into(flat, tensors, grads=False)

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over the ranks, in one message."""
        if self.comm is None:
            return
        params = [p for p in parameters if p.grad is not None]
        flat = _flatten(p.grad for p in params)  # type: ignore[misc]
        self.comm.Allreduce(_mpi().IN_PLACE, flat, op=_mpi().SUM)
        flat /= self.size
        _unflatten_into(flat, params, grads=True)

    def average_before_step(self, optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter]) -> None:
        """Average the gradients over the ranks before every ``optimizer.step()`` (nothing for one rank).

        Through torch's step pre-hook, a documented extension point: SB3's update calls
        ``backward``, clips, then ``step``, and the hook runs between the clip and the step. Called
        again for the same optimizer (a resumed model builds a new one), it registers nothing twice.
        """
        if self.comm is None or optimizer in self._hooked:
            return
        optimizer.register_step_pre_hook(lambda *_: self.average_gradients(parameters))
        self._hooked.add(optimizer)

    def parameter_digest(self, module: torch.nn.Module) -> str:
        """sha256 of the module's parameters: replicas that stayed identical have the same digest."""
        digest = hashlib.sha256()
        for tensor in module.state_dict().values():
            digest.update(tensor.detach().cpu().numpy().tobytes())
        return digest.hexdigest()


def _mpi() -> Any:
    from mpi4py import MPI  # only under MPI: importing it in a single process (or an env worker) can hang

    return MPI


def _flatten(tensors: Iterable[torch.Tensor]) -> np.ndarray:
    return np.concatenate([t.detach().cpu().reshape(-1).numpy().astype(np.float32, copy=False) for t in tensors])


def _unflatten_into(flat: np.ndarray, tensors: list[torch.Tensor], *, grads: bool) -> None:
    offset = 0
    with torch.no_grad():
        for tensor in tensors:
            n = tensor.numel()
            chunk = torch.from_numpy(flat[offset : offset + n]).view_as(tensor)
            target = tensor.grad if grads else tensor
            assert target is not None
            target.copy_(chunk.to(target.dtype))
            offset += n
