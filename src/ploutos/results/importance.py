"""``RUN_DIR/importance.h5``: permutation importance per fold (written by ``ploutos importance``).

One group per fold (``fold<K>``):

- ``names`` (I,) input names: the features, then ``asset:<ticker>``, then ``portfolio:<part>``;
- ``kinds`` (I,) ``feature``, ``asset`` or ``portfolio``;
- ``return_drop`` (I, R): validation total return of the baseline minus the permuted path's;
- ``action_change`` (I, R): mean over steps of ``sum_a |w_perm - w_base|`` (target weights);
- attrs: ``repeats``, ``block`` (bars), ``validation_rows``, ``baseline_return``, ``seconds`` (the
  fold's wall time) and ``paths`` (permuted paths + the baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ploutos.files import atomic_path

FILE_NAME = "importance.h5"


@dataclass(frozen=True)
class FoldImportance:
    """One fold's importance: inputs, their (I, R) measures, and how they were computed."""

    fold: int
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    return_drop: np.ndarray
    action_change: np.ndarray
    baseline_return: float
    repeats: int
    block: int
    rows: tuple[int, int]
    seconds: float
    paths: int

    def ranked(self, measure: str = "return_drop") -> list[tuple[str, float, float, float]]:
        """``(name, mean, 5th, 95th percentile)`` of ``measure`` over repeats, highest mean first (ties: the
        other measure's mean decides, so a policy that never trades is still ranked by its actions)."""
        values = getattr(self, measure)
        other = self.action_change if measure == "return_drop" else self.return_drop
        mean = values.mean(axis=1)
        lo, hi = np.percentile(values, 5, axis=1), np.percentile(values, 95, axis=1)
        order = np.lexsort((-other.mean(axis=1), -mean))
        return [(self.names[i], float(mean[i]), float(lo[i]), float(hi[i])) for i in order]


def write_importance(path: Path, results: list[FoldImportance]) -> None:
    """Write ``results`` into ``path`` (atomically), keeping the groups of folds not in ``results``."""
    path = Path(path)
    fresh = {f"fold{r.fold}" for r in results}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as out:
        if path.exists():
            with h5py.File(path, "r", locking=False) as old:
                for name in old:
                    if name not in fresh:
                        old.copy(old[name], out, name)
        for r in results:
            group = out.create_group(f"fold{r.fold}")
            group.create_dataset("names", data=np.array(r.names, dtype=object), dtype=h5py.string_dtype())
            group.create_dataset("kinds", data=np.array(r.kinds, dtype=object), dtype=h5py.string_dtype())
            group.create_dataset("return_drop", data=r.return_drop)
            group.create_dataset("action_change", data=r.action_change)
            group.attrs.update(
                repeats=r.repeats, block=r.block, validation_rows=list(r.rows), baseline_return=r.baseline_return,
                seconds=r.seconds, paths=r.paths,
            )  # fmt: skip


def read_importance(path: Path) -> list[FoldImportance]:
    """The folds of an ``importance.h5``, in fold order."""
    results = []
    with h5py.File(path, "r", locking=False) as h5:
        for name in sorted(h5, key=lambda n: int(n[4:])):
            g = h5[name]

            def strings(key: str, g: h5py.Group = g) -> tuple[str, ...]:
                return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in g[key][()])

            a = g.attrs
            results.append(
                FoldImportance(
                    fold=int(name[4:]),
                    names=strings("names"),
                    kinds=strings("kinds"),
                    return_drop=np.asarray(g["return_drop"][()]),
                    action_change=np.asarray(g["action_change"][()]),
                    baseline_return=float(a["baseline_return"]),
                    repeats=int(a["repeats"]),
                    block=int(a["block"]),
                    rows=tuple(int(v) for v in a["validation_rows"]),
                    seconds=float(a["seconds"]),
                    paths=int(a["paths"]),
                )  # fmt: skip
            )
    return results
