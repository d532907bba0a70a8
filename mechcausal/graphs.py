"""Causal graphs over sequence positions.

A :class:`CausalGraph` gives each position ``i`` a tuple of parents, all earlier
positions; an empty tuple marks a root. Positions are already in topological order,
so samplers can walk them left to right.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import torch

ParentSpec = int | Sequence[int]


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                return int(value)
        except ImportError:  # pragma: no cover - numpy is a dependency
            pass
        raise TypeError(f"{what} must be an int, got {value!r} of type {type(value).__name__}")
    return value


def _positive_size(n: Any, name: str = "n") -> int:
    n = _as_int(n, name)
    if n < 1:
        raise ValueError(f"{name} must be a positive number of positions, got {n}")
    return n


class CausalGraph:
    """Parents of each position of a sequence (a DAG in topological order).

    Args:
        parents: one entry per position; entry ``i`` is a sequence of distinct
            positions in ``0..i-1`` (empty for a root). Stored sorted.

    Raises:
        ValueError: a parent that is negative, not earlier than its child, or repeated.
        TypeError: an entry that is not a sequence of ints.
    """

    __slots__ = ("_parents",)

    def __init__(self, parents: Iterable[Iterable[int]]):
        checked: list[tuple[int, ...]] = []
        for i, entry in enumerate(parents):
            if isinstance(entry, (str, bytes)) or not isinstance(entry, Iterable):
                raise TypeError(
                    f"parents of position {i} must be a sequence of ints, got {entry!r}"
                )
            items = [_as_int(p, f"parent of position {i}") for p in entry]
            for p in items:
                if p < 0:
                    raise ValueError(
                        f"position {i} has negative parent {p}; parents are positions 0..{i - 1} "
                        "(use an empty tuple, or -1 in from_parents, for a root)"
                    )
                if p >= i:
                    raise ValueError(
                        f"position {i} has parent {p}, which is not earlier than its child; "
                        f"parents must lie in 0..{i - 1}"
                    )
            if len(set(items)) != len(items):
                raise ValueError(f"position {i} has duplicate parents {tuple(items)}")
            checked.append(tuple(sorted(items)))
        if not checked:
            raise ValueError("a CausalGraph needs at least one position, got none")
        self._parents: tuple[tuple[int, ...], ...] = tuple(checked)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_parents(cls, parents: Sequence[ParentSpec]) -> CausalGraph:
        """Build from one entry per position: an int (``-1`` = root) or a list of ints."""
        entries: list[tuple[int, ...]] = []
        for i, entry in enumerate(parents):
            if isinstance(entry, (list, tuple)):
                entries.append(tuple(entry))
                continue
            p = _as_int(entry, f"parent of position {i}")
            if p < -1:
                raise ValueError(
                    f"position {i} has parent {p}; a single parent is -1 (root) or 0..{i - 1}"
                )
            entries.append(() if p == -1 else (p,))
        return cls(entries)

    @classmethod
    def chain(cls, n: int) -> CausalGraph:
        """Markov chain: p(i) = i - 1; position 0 is the only root."""
        n = _positive_size(n)
        return cls([()] + [(i - 1,) for i in range(1, n)])

    @classmethod
    def icl_pairs(cls, n: int) -> CausalGraph:
        """In-context (x, f(x)) pairs: p(2k+1) = 2k, even positions are roots."""
        n = _positive_size(n)
        return cls([(i - 1,) if i % 2 == 1 else () for i in range(n)])

    @classmethod
    def random_tree(cls, n: int, seed: int = 0) -> CausalGraph:
        """Official "random" graph: each p(i) uniform on {root, 0, ..., i-1}."""
        n = _positive_size(n)
        rng = random.Random(_as_int(seed, "seed"))
        parents: list[tuple[int, ...]] = []
        for i in range(n):
            p = rng.randrange(-1, i)
            parents.append(() if p == -1 else (p,))
        return cls(parents)

    @classmethod
    def random_forest(cls, n: int, root_prob: float = 0.5, seed: int = 0) -> CausalGraph:
        """Figure 9 graphs: a parent uniform among earlier positions, then the node is
        made a root with probability ``root_prob`` (position 0 is always a root)."""
        n = _positive_size(n)
        if not 0.0 <= float(root_prob) <= 1.0:
            raise ValueError(f"root_prob must be in [0, 1], got {root_prob}")
        rng = random.Random(_as_int(seed, "seed"))
        parents: list[tuple[int, ...]] = [()]
        for i in range(1, n):
            p = rng.randrange(0, i)
            parents.append(() if rng.random() < root_prob else (p,))
        return cls(parents)

    @classmethod
    def markov(cls, n: int, order: int = 1) -> CausalGraph:
        """Order-k Markov chain: parents i-k..i-1 (fewer near the start)."""
        n = _positive_size(n)
        order = _as_int(order, "order")
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        return cls([tuple(range(max(0, i - order), i)) for i in range(n)])

    @classmethod
    def two_parent(cls, n: int) -> CausalGraph:
        """The paper's multi-parent graph: pa(i) = {floor((i-1)/2), i-1}; pa(1) = {0}."""
        n = _positive_size(n)
        return cls([()] + [tuple(sorted({(i - 1) // 2, i - 1})) for i in range(1, n)])

    # ------------------------------------------------------------------ properties
    @property
    def parents(self) -> tuple[tuple[int, ...], ...]:
        """Sorted parents of each position; ``()`` for a root."""
        return self._parents

    @property
    def n(self) -> int:
        """Number of positions."""
        return len(self._parents)

    def __len__(self) -> int:
        return len(self._parents)

    @property
    def roots(self) -> tuple[int, ...]:
        """Positions with no parent."""
        return tuple(i for i, ps in enumerate(self._parents) if not ps)

    @property
    def max_parents(self) -> int:
        """Largest number of parents of any position."""
        return max(len(ps) for ps in self._parents)

    @property
    def is_tree(self) -> bool:
        """True when every position has at most one parent (a forest, as in the paper)."""
        return self.max_parents <= 1

    @property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """All (parent, child) pairs."""
        return tuple((p, i) for i, ps in enumerate(self._parents) for p in ps)

    def parent_array(self) -> torch.Tensor:
        """Single parents as a long tensor [n] with ``-1`` for roots (trees only)."""
        if not self.is_tree:
            raise ValueError(
                f"parent_array needs a tree (max_parents <= 1), this graph has "
                f"max_parents={self.max_parents}"
            )
        return torch.tensor([ps[0] if ps else -1 for ps in self._parents], dtype=torch.long)

    def adjacency(self) -> torch.Tensor:
        """Adjacency matrix [n, n] (float): ``adj[i, j] = 1`` when j is a parent of i.

        Row = child, column = parent, the orientation of an attention pattern."""
        adj = torch.zeros(self.n, self.n)
        for i, ps in enumerate(self._parents):
            for p in ps:
                adj[i, p] = 1.0
        return adj

    # ------------------------------------------------------------------ protocol
    def __eq__(self, other: object) -> bool:
        return isinstance(other, CausalGraph) and self._parents == other._parents

    def __hash__(self) -> int:
        return hash(self._parents)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{i}<-{ps[0] if len(ps) == 1 else list(ps)}" if ps else f"{i}:root"
            for i, ps in enumerate(self._parents[:12])
        )
        more = f", ... ({self.n} positions)" if self.n > 12 else ""
        return f"CausalGraph({shown}{more})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"parents": [[...], ...]}``."""
        return {"parents": [list(ps) for ps in self._parents]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CausalGraph:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, dict) or "parents" not in data:
            raise ValueError(f"expected a dict with a 'parents' key, got {data!r}")
        return cls(data["parents"])
