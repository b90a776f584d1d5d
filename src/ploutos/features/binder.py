"""Share intermediate results across all features: each distinct one becomes one column.

Indicators route every intermediate they use more than once through a ``bind`` callback. The
:class:`Binder` is that callback for the engine: it names each *distinct* expression once (two
features asking for the 20-bar mean of the close get the same column), and orders the columns
into stages, each computable from the bars and the stages before it. The engine evaluates one
``with_columns`` per stage, so the query stays small and every kernel runs once.
"""

from __future__ import annotations

import polars as pl

PREFIX = "__shared_"
"""Names of intermediate columns; they never reach the output."""


class Binder:
    """A ``bind`` callback that collects distinct intermediates as named columns."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self._names: dict[str, str] = {}
        self._exprs: dict[str, pl.Expr] = {}
        self._levels: dict[str, int] = {}

    def __call__(self, expr: pl.Expr) -> pl.Expr:
        if expr.meta.is_column():
            return expr
        key = expr.meta.serialize(format="json")
        name = self._names.get(key)
        if name is None:
            name = f"{self.prefix}{len(self._names)}"
            self._names[key] = name
            self._exprs[name] = expr.alias(name)
            self._levels[name] = self.level(expr)
        return pl.col(name)

    def level(self, expr: pl.Expr) -> int:
        """1 + the deepest intermediate ``expr`` reads (0 for bar columns only)."""
        return 1 + max((self._levels.get(root, 0) for root in expr.meta.root_names()), default=0)

    def stages(self) -> list[list[pl.Expr]]:
        """The intermediates grouped by level, lowest first."""
        depth = max(self._levels.values(), default=0)
        grouped: list[list[pl.Expr]] = [[] for _ in range(depth)]
        for name, expr in self._exprs.items():
            grouped[self._levels[name] - 1].append(expr)
        return grouped

    def __len__(self) -> int:
        return len(self._exprs)
