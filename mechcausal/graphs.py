"""Causal graphs over sequence positions.

A :class:`CausalGraph` gives each position ``i`` a tuple of parents, all earlier
positions; an empty tuple marks a root. Positions are already in topological order,
so samplers can walk them left to right.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .ops import as_int, check_choice, check_number, check_positive_int, register

ParentSpec = int | Sequence[int]


# positions a built graph may have: far beyond what an attention model over the sequence
# (L^2 scores per head) can train on, and small enough to be refused before it is built
MAX_NODES = 10**6


def check_nodes(n: Any, name: str = "n") -> int:
    """``n`` as a number of positions in 1..MAX_NODES; TypeError / ValueError naming it."""
    n = check_positive_int(n, name)
    if n > MAX_NODES:
        raise ValueError(f"{name}={n:,} positions is above {MAX_NODES:,}: an attention model "
                         f"scores L^2 position pairs, so no model could train on it")
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
        if isinstance(parents, (str, bytes)) or not isinstance(parents, Iterable):
            raise TypeError(f"parents must be a sequence with one entry of parent positions "
                            f"per position, got {parents!r}")
        checked: list[tuple[int, ...]] = []
        for i, entry in enumerate(parents):
            if (isinstance(entry, (str, bytes)) or not isinstance(entry, Iterable)
                    or getattr(entry, "ndim", 1) == 0):  # a tensor's entries are 0-d tensors
                raise TypeError(
                    f"parents of position {i} must be a sequence of ints, got {entry!r}"
                )
            items = [as_int(p, f"parent of position {i}") for p in entry]
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
            raise ValueError("parents must list at least one position (a CausalGraph needs "
                             "one), got none")
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
            p = as_int(entry, f"parent of position {i}")
            if p < -1:
                raise ValueError(
                    f"position {i} has parent {p}; a single parent is -1 (root) or 0..{i - 1}"
                )
            entries.append(() if p == -1 else (p,))
        return cls(entries)

    @classmethod
    def chain(cls, n: int) -> CausalGraph:
        """Markov chain: p(i) = i - 1; position 0 is the only root."""
        n = check_nodes(n)
        return cls([()] + [(i - 1,) for i in range(1, n)])

    @classmethod
    def icl_pairs(cls, n: int) -> CausalGraph:
        """In-context (x, f(x)) pairs: p(2k+1) = 2k, even positions are roots."""
        n = check_nodes(n)
        return cls([(i - 1,) if i % 2 == 1 else () for i in range(n)])

    @classmethod
    def random_tree(cls, n: int, seed: int = 0) -> CausalGraph:
        """Official "random" graph: each p(i) uniform on {root, 0, ..., i-1}."""
        n = check_nodes(n)
        rng = random.Random(as_int(seed, "seed"))
        parents: list[tuple[int, ...]] = []
        for i in range(n):
            p = rng.randrange(-1, i)
            parents.append(() if p == -1 else (p,))
        return cls(parents)

    @classmethod
    def random_forest(cls, n: int, root_prob: float = 0.5, seed: int = 0) -> CausalGraph:
        """Figure 9 graphs: a parent uniform among earlier positions, then the node is
        made a root with probability ``root_prob`` (position 0 is always a root)."""
        n = check_nodes(n)
        root_prob = check_number(root_prob, "root_prob", low=0.0, high=1.0)
        rng = random.Random(as_int(seed, "seed"))
        parents: list[tuple[int, ...]] = [()]
        for i in range(1, n):
            p = rng.randrange(0, i)
            parents.append(() if rng.random() < root_prob else (p,))
        return cls(parents)

    @classmethod
    def markov(cls, n: int, order: int = 1) -> CausalGraph:
        """Order-k Markov chain: parents i-k..i-1 (fewer near the start)."""
        n = check_nodes(n)
        order = as_int(order, "order")
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        return cls([tuple(range(max(0, i - order), i)) for i in range(n)])

    @classmethod
    def two_parent(cls, n: int) -> CausalGraph:
        """The paper's multi-parent graph: pa(i) = {floor((i-1)/2), i-1}; pa(1) = {0}."""
        n = check_nodes(n)
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

    @classmethod
    def family(cls, name: str, n: int, seed: int = 0, **params: Any) -> CausalGraph:
        """A graph of ``n`` nodes from the registered family ``name`` (see
        :data:`GRAPH_FAMILIES`; ``seed`` matters for random families, ``params`` are the
        family's own keywords, e.g. ``order`` for ``"markov"``)."""
        return graph_family(name).graph(n, seed, **params)


# ---------------------------------------------------------------------- families
TaskKind = Literal["tree", "dag"]


@dataclass(frozen=True)
class GraphFamily:
    """A named family of causal graphs and how the package trains on it: one entry here
    is all the CLI (``--graph``), the experiments and ``TrainConfig`` presets need.

    Attributes:
        name: ``--graph NAME``, ``CausalGraph.family(NAME, n)``, ``TrainConfig.quick(NAME)``.
        build: ``build(n_nodes, seed, **params) -> CausalGraph``.
        task: ``"tree"`` (one parent at most; an ``InContextTree`` over ``seq_len`` nodes
            plus a query) or ``"dag"`` (an ``InContextDAG``: ``seq_len`` context nodes
            plus the target node).
        description: what the graph is, in words (report rows and listings).
        rule: its parent rule, e.g. ``"p(i) = i - 1"``.
        vocab_size, seq_len: default task sizes S and T (context positions).
        quick, paper: ``TrainConfig`` fields of our quick recipe and of the official one.
        init: default initialisation of a disentangled transformer for this family
            (``"normal"`` where heads must break a symmetry, as with several parents).
        params: extra keywords of ``build`` with their defaults (``order`` for markov).
    """

    name: str
    build: Callable[..., CausalGraph]
    task: TaskKind
    description: str
    rule: str
    vocab_size: int
    seq_len: int
    quick: Mapping[str, Any]
    paper: Mapping[str, Any]
    init: str = "zeros"
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"name must be a non-empty identifier-like string (it is a CLI "
                             f"choice and a preset name), got {self.name!r}")
        if not callable(self.build):
            raise TypeError(f"build must be a function (n_nodes, seed, **params) -> "
                            f"CausalGraph, got {self.build!r}")
        check_choice(self.task, "task", ("tree", "dag"))
        check_choice(self.init, "init", ("zeros", "normal"))
        for field_name in ("description", "rule"):
            if not isinstance(getattr(self, field_name), str):
                raise TypeError(f"{field_name} must be a string, got "
                                f"{getattr(self, field_name)!r}")
        if check_positive_int(self.vocab_size, "vocab_size") < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        check_positive_int(self.seq_len, "seq_len")
        for field_name in ("quick", "paper", "params"):
            if not isinstance(getattr(self, field_name), Mapping):
                raise TypeError(f"{field_name} must be a mapping (dict), got "
                                f"{getattr(self, field_name)!r}")

    def nodes(self, seq_len: int) -> int:
        """Graph nodes for ``seq_len`` context positions (a DAG adds the target node)."""
        return seq_len + 1 if self.task == "dag" else seq_len

    def graph(self, n: int, seed: int = 0, **params: Any) -> CausalGraph:
        """The family's graph over ``n`` nodes."""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            accepted = ", ".join(sorted(self.params)) or "none"
            raise ValueError(f"graph family {self.name!r} takes no parameter {unknown[0]!r}; "
                             f"its parameters: {accepted}")
        n = check_nodes(n)
        graph = self.build(n, as_int(seed, "seed"), **{**self.params, **params})
        if not isinstance(graph, CausalGraph) or graph.n != n:
            got = f"{graph.n} nodes" if isinstance(graph, CausalGraph) else type(graph).__name__
            raise ValueError(f"graph family {self.name!r}: build({n}, ...) must return a "
                             f"CausalGraph of {n} nodes, got {got}")
        return graph


GRAPH_FAMILIES: dict[str, GraphFamily] = {}


def register_graph_family(family: GraphFamily, replace: bool = False) -> GraphFamily:
    """Add ``family`` to :data:`GRAPH_FAMILIES` (the CLI, experiments and presets read it);
    ``replace=True`` overwrites an entry of the same name. Returns the family."""
    return register(GRAPH_FAMILIES, family, GraphFamily, "graph family", replace)


def graph_family(name: str) -> GraphFamily:
    """The registered family ``name``; ValueError listing the registered names."""
    if not isinstance(name, str) or name not in GRAPH_FAMILIES:
        raise ValueError(f"unknown graph family {name!r}; registered: "
                         f"{', '.join(GRAPH_FAMILIES)}")
    return GRAPH_FAMILIES[name]


# The official recipes (shared/PAPER.md, "Experiments") and our quick ones. Adam's
# per-parameter step sizes leave the zero init's flat start far sooner than the official
# SGD; the quick recipes' measurements are in the README ("Reproducing the paper").
_TREE_PAPER = dict(steps=2**17, batch_size=1024, optimizer="sgd", lr=1.0, weight_decay=0.0,
                   schedule="cosine", data="pool", pool_size=2**20)
_TREE_QUICK = dict(steps=600, batch_size=1024, optimizer="adam", lr=0.1, schedule="cosine")
_DAG_PAPER = dict(steps=2**16, batch_size=1024, optimizer="adamw", lr=1e-2, weight_decay=1e-4,
                  schedule="cosine", data="fresh")
# two parents: the heads first share slot 1, then one leaves for slot 0; a constant lr
# after a short warm-up splits every seed tried, where the official cosine AdamW had
# not split them within 8000 steps
_DAG_QUICK = dict(steps=6000, batch_size=512, optimizer="adam", lr=0.03, schedule="constant",
                  warmup_steps=100)
# the official Figure 9 notebook trains with optax.sgd(1.0): a constant lr, no decay
_FOREST_PAPER = dict(steps=2**14, batch_size=1024, optimizer="sgd", lr=1.0, weight_decay=0.0,
                     schedule="constant", data="pool", pool_size=2**20)
# S=3 forests: plain Adam amplifies the first layer's tiny early gradients into a
# content-based circuit on about half the graphs, eps=1e-2 damps that; a larger lr or a
# smaller eps brings such members back, a decaying lr stops attention sharpening.
# AdamW's small decay reaches the 2048-batch Adam recipe's mean attention on the parent
# (0.954 over 20 graphs) at a quarter of its sequences (benchmarks/README.md: the search)
_FOREST_QUICK = dict(steps=3000, batch_size=512, optimizer="adamw", lr=1.0, adam_eps=1e-2,
                     weight_decay=1e-3, schedule="constant", warmup_steps=100)

for _family in (
    GraphFamily("chain", lambda n, seed: CausalGraph.chain(n), "tree",
                "in-context Markov chain", "p(i) = i - 1", 10, 19, _TREE_QUICK, _TREE_PAPER),
    GraphFamily("icl", lambda n, seed: CausalGraph.icl_pairs(n), "tree",
                "in-context (x, f(x)) pairs", "p(2k+1) = 2k, even positions roots", 10, 19, _TREE_QUICK, _TREE_PAPER),
    GraphFamily("random", lambda n, seed: CausalGraph.random_tree(n, seed=seed), "tree",
                "random tree", "p(i) uniform on {root, 0..i-1}, seeded", 10, 19, _TREE_QUICK,
                _TREE_PAPER),
    GraphFamily("forest", lambda n, seed: CausalGraph.random_forest(n, seed=seed), "tree",
                "random forest (Figure 9)",
                "a parent uniform on 0..i-1, then a root with probability 0.5, seeded",
                3, 19, _FOREST_QUICK, _FOREST_PAPER),
    GraphFamily("two_parent", lambda n, seed: CausalGraph.two_parent(n), "dag",
                "two parents", "pa(i) = {floor((i-1)/2), i-1}", 5, 32, _DAG_QUICK, _DAG_PAPER,
                init="normal"),
    GraphFamily("markov", lambda n, seed, order: CausalGraph.markov(n, order=order), "dag",
                "order-k Markov chain", "pa(i) = {i-k..i-1}", 5, 32, _DAG_QUICK, _DAG_PAPER,
                init="normal", params={"order": 2}),
):
    register_graph_family(_family)
del _family
