"""Mutual information between positions, and the gradient at initialisation.

The paper's mechanism: at Algorithm 1's start (A1 = 0, second layer beta0 * I),
``-dL/dA1[i, j]`` is governed by the chi-squared mutual information
``I(x_j; x_i) = sum_{a,b} p(a,b)^2 / (p(a) p(b)) - 1``, which by the data-processing
inequality peaks at the parent. This module computes both matrices and their agreement.

Chi-squared MI, for a given transition draw pi (:func:`chi2_mi_given_pi`):

* ``InContextTree``, exact: every context token has marginal mu_pi (roots are drawn
  from it, and it is stationary). Two positions in different components are
  independent (MI 0); otherwise, with c their lowest common ancestor and d_j, d_i their
  distances below it, ``p(a, b) = sum_c mu(c) (pi^d_j)(c, a) (pi^d_i)(c, b)``. The
  query token is uniform and independent of the context: its row and column are 0.
* ``InContextDAG``, exact by variable elimination: sweep the positions in order
  keeping the joint law of the positions still needed (those with a later child) plus
  x_j, read off ``p(x_j, x_v)`` for every later v. Memory per pi is
  ``S ** (frontier width + 2)`` numbers, where the frontier width is the most earlier
  positions that still have a child at or after some position; ``method="auto"`` uses
  this when that is at most ``max_states`` and Monte Carlo otherwise (the paper's
  two-parent graph has width about T/4 + 1: 4 at T = 12, 9 at T = 32, so S=5 and
  T=32 need 5**11 numbers per pi and fall to Monte Carlo).
* Monte Carlo (any task): ``n_mc`` sequences per pi, plug-in chi-squared of the
  empirical joint, minus the first-order bias ``(k_j - 1)(k_i - 1) / n_mc`` (k = symbols
  seen at each position; Pearson's statistic ``n_mc * chi2`` has that mean for
  independent variables). Chi-squared MI counts a near-deterministic pair of rare
  symbols fully, and samples miss symbols of probability << 1/n_mc, so the error falls
  slowly (about 1/sqrt(n_mc)). Measured against elimination on ``two_parent`` (T=12,
  S=5, alpha=0.1) at n_mc=2048 over 128 draws of pi: mean signed error over pairs
  -0.001, worst pair 0.056, for values 0.07..1.18 (per-pi rms error about 0.05).

The public :func:`chi2_mutual_information` averages over ``n_pi`` draws of pi from the
task's Dirichlet prior (Monte Carlo over pi, exact or estimated per pi as above).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import einops
import torch

from .. import plots
from ..data.sampling import categorical_from_cdf, cumulative, stationary_distribution
from ..data.tasks import InContextTask, InContextTree, TransitionTensors, check_task
from ..models.disentangled import DisentangledTransformer
from ..models.reduced import ReducedModel, check_beta0
from ..ops import check_positive_int, seeded, to_json

MIMethod = Literal["auto", "exact", "monte_carlo"]
InitModel = Literal["reduced", "disentangled"]

# numbers held by one chunk of a batched computation (float64: 32 MiB)
_CHUNK_NUMBERS = 2**22

# (parents, table [n, S**len(parents), S]): the law of one context token given its parents
Conditional = tuple[tuple[int, ...], torch.Tensor]


# ---------------------------------------------------------------- chi-squared MI
def chi2_from_joint(joint: torch.Tensor) -> torch.Tensor:
    """Chi-squared mutual information of joint laws [..., S, S] -> [...].

    The joint is normalised and its own marginals are the denominators, so every term
    ``p(a,b)^2 / (p(a) p(b)) <= p(a,b)`` stays bounded even for symbols of tiny
    probability; terms with a zero marginal are 0."""
    joint = joint / joint.sum((-2, -1), keepdim=True)
    denom = joint.sum(-1, keepdim=True) * joint.sum(-2, keepdim=True)
    ratio = torch.where(denom > 0, joint.square() / denom, torch.zeros_like(joint))
    return ratio.sum((-2, -1)) - 1.0


def _as_law(table: torch.Tensor) -> torch.Tensor:
    """float64 rows renormalised to sum to 1: float32 Dirichlet rows miss 1 by ~1e-7, and
    the closed form and elimination should agree to float64 rounding."""
    table = table.to(torch.float64)
    return table / table.sum(-1, keepdim=True)


def _tree_paths(parent: list[int]) -> list[list[int]]:
    """For each node, the path [node, parent, ..., root]."""
    paths: list[list[int]] = []
    for i, p in enumerate(parent):
        paths.append([i] + (paths[p] if p >= 0 else []))
    return paths


def _tree_mi(task: InContextTree, pi: torch.Tensor) -> torch.Tensor:
    """Exact chi-squared MI per pi for a tree task: pi [n, S, S] -> [n, L, L]."""
    n, S = pi.shape[0], task.vocab_size
    paths = _tree_paths(task.graph.parent_array().tolist())
    # MI depends on the pair only through (d_j, d_i), the distances below the common ancestor
    pair_depths: dict[tuple[int, int], tuple[int, int]] = {}
    for i in range(task.context_length):
        for j in range(i):
            common = next((c for c in paths[j] if c in paths[i]), None)
            if common is not None:
                pair_depths[(j, i)] = (paths[j].index(common), paths[i].index(common))
    out = torch.zeros(n, task.input_length, task.input_length, dtype=torch.float64)
    if not pair_depths:
        return out
    depth_pairs = sorted(set(pair_depths.values()))
    first = torch.tensor([d for d, _ in depth_pairs])
    second = torch.tensor([d for _, d in depth_pairs])
    transition = _as_law(pi)
    mu = stationary_distribution(transition)  # [n, S]
    powers = [torch.eye(S, dtype=torch.float64).expand(n, S, S)]
    for _ in range(int(max(first.max(), second.max()))):
        powers.append(powers[-1] @ transition)
    powers = torch.stack(powers, 1)  # [n, D + 1, S, S]
    chunk = max(1, _CHUNK_NUMBERS // (len(depth_pairs) * S**3))
    table = torch.cat([
        chi2_from_joint(torch.einsum("nc,nuca,nucb->nuab", mu[rows], powers[rows][:, first],
                                     powers[rows][:, second]))
        for rows in torch.arange(n).split(chunk)
    ])  # [n, U]
    lookup = {pair: u for u, pair in enumerate(depth_pairs)}
    js, is_, us = zip(*((j, i, lookup[d]) for (j, i), d in pair_depths.items()))
    out[:, list(is_), list(js)] = table[:, list(us)]
    return out


def _conditionals(task: InContextTask, pi: TransitionTensors) -> list[Conditional]:
    """The generative law of the context tokens, one conditional table per position."""
    if task.kind == "tree":
        if not isinstance(pi, torch.Tensor) or pi.shape[1:] != (task.vocab_size,) * 2:
            raise ValueError(
                f"pi must be a tensor [n, {task.vocab_size}, {task.vocab_size}] for this "
                f"tree task, got {type(pi).__name__} {tuple(getattr(pi, 'shape', ()))}"
            )
        transition = _as_law(pi)
        root = stationary_distribution(transition).unsqueeze(1)  # [n, 1, S]
        return [((p,), transition) if p >= 0 else ((), root)
                for p in task.graph.parent_array().tolist()]
    S = task.vocab_size
    if not isinstance(pi, dict) or any(
        k not in pi or pi[k].shape[1:] != (S**k, S) for k in task.parent_counts
    ):
        raise ValueError(
            f"pi must be a dict {{k: [n, {S}**k, {S}]}} for parent counts "
            f"{task.parent_counts} of this DAG task, got {type(pi).__name__}"
        )
    return [(ps, _as_law(pi[len(ps)]))
            for ps in task.graph.parents[: task.context_length]]


def _last_use(parents: tuple[tuple[int, ...], ...]) -> list[int]:
    """For each position, its last child (itself when it has none)."""
    return [max((c for c, ps in enumerate(parents) if u in ps), default=u)
            for u in range(len(parents))]


def frontier_width(parents: tuple[tuple[int, ...], ...]) -> int:
    """Most positions u < v that still have a child at or after v, over all v."""
    last_use = _last_use(parents)
    return max(sum(last_use[u] >= v for u in range(v)) for v in range(len(parents)))


def _eliminate(conds: list[Conditional], S: int) -> torch.Tensor:
    """Exact chi-squared MI [n, T, T] by variable elimination (see the module notes)."""
    n, T = conds[0][1].shape[0], len(conds)
    parents = tuple(ps for ps, _ in conds)
    last_use = _last_use(parents)
    tables = [table.reshape(n, *(S,) * (len(ps) + 1)) for ps, table in conds]
    out = torch.zeros(n, T, T, dtype=torch.float64)
    for j in range(T - 1):
        factor = torch.ones(n, dtype=torch.float64)
        live: list[int] = []  # factor dims 1.. hold these positions, in this order
        labels: dict[int, int] = {}  # einsum sublist label of each live position (0: batch)
        for v in range(T):
            free = min(set(range(1, len(live) + 2)) - set(labels.values()))
            labels[v] = free
            factor = torch.einsum(
                factor, [0, *(labels[u] for u in live)],
                tables[v], [0, *(labels[p] for p in parents[v]), free],
                [0, *(labels[u] for u in live), free],
            )
            live.append(v)
            if v > j:
                others = [d + 1 for d, u in enumerate(live) if u not in (j, v)]
                pair = factor.sum(others) if others else factor
                # dims left in live order: j comes before v
                out[:, v, j] = chi2_from_joint(pair)
            dropped = [u for u in live if u != j and last_use[u] <= v]
            if dropped:
                factor = factor.sum([live.index(u) + 1 for u in dropped])
                for u in dropped:
                    live.remove(u)
                    del labels[u]
    return out


def _sample_context(conds: list[Conditional], n_mc: int, S: int,
                    generator: torch.Generator | None) -> torch.Tensor:
    """``n_mc`` ancestral samples per law: tokens [n, n_mc, T]."""
    n, T = conds[0][1].shape[0], len(conds)
    tokens = torch.empty(n, n_mc, T, dtype=torch.long)
    for i, (ps, table) in enumerate(conds):
        row = torch.zeros(n, n_mc, dtype=torch.long)
        for p in ps:  # mixed radix, first parent most significant (as the tasks index)
            row = row * S + tokens[:, :, p]
        cdf = torch.gather(cumulative(table), 1, row.unsqueeze(-1).expand(n, n_mc, S))
        uniform = 1.0 - torch.rand(n, n_mc, generator=generator, dtype=torch.float64)
        tokens[:, :, i] = categorical_from_cdf(cdf, uniform)
    return tokens


def _monte_carlo(conds: list[Conditional], S: int, n_mc: int,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Bias-corrected plug-in chi-squared MI [n, T, T] from ``n_mc`` samples per law."""
    n, T = conds[0][1].shape[0], len(conds)
    chunk = max(1, _CHUNK_NUMBERS // (n_mc * T * S))
    parts = []
    for rows in torch.arange(n).split(chunk):
        part = [(ps, table[rows]) for ps, table in conds]
        onehot = torch.nn.functional.one_hot(_sample_context(part, n_mc, S, generator), S)
        flat = einops.rearrange(onehot.to(torch.float64), "n m t s -> n m (t s)")
        joint = einops.rearrange(flat.transpose(1, 2) @ flat / n_mc,
                                 "n (i a) (j b) -> n i j a b", a=S, b=S)
        seen = (onehot.sum(1) > 0).sum(-1).to(torch.float64) - 1.0  # [n, T]
        parts.append(chi2_from_joint(joint) - seen.unsqueeze(2) * seen.unsqueeze(1) / n_mc)
    return torch.cat(parts).tril(-1)


def _embed(task: InContextTask, context_mi: torch.Tensor) -> torch.Tensor:
    """[n, T, T] over context positions -> [n, L, L] (a tree's query row/column is 0)."""
    L, T = task.input_length, task.context_length
    return torch.nn.functional.pad(context_mi, (0, L - T, 0, L - T))


def mi_method(task: InContextTask, method: MIMethod = "auto", max_states: int = 2**16) -> str:
    """The computation :func:`chi2_mi_given_pi` uses for ``task``: ``"tree"`` (exact
    closed form), ``"elimination"`` (exact) or ``"monte_carlo"``.

    Raises ValueError for an unknown ``method``, or for ``method="exact"`` on a DAG whose
    elimination would hold more than ``max_states`` numbers per pi."""
    task = check_task(task).base  # the task's theory: its own symbols and positions
    if method not in ("auto", "exact", "monte_carlo"):
        raise ValueError(f"method must be 'auto', 'exact' or 'monte_carlo', got {method!r}")
    check_positive_int(max_states, "max_states")
    if method == "monte_carlo":
        return "monte_carlo"
    if task.kind == "tree":
        return "tree"
    states = _elimination_states(task)
    if states <= max_states:
        return "elimination"
    if method == "exact":
        raise ValueError(
            f"exact elimination for this graph holds {states} numbers per pi, more than "
            f"max_states={max_states}; raise max_states or use method='monte_carlo'"
        )
    return "monte_carlo"


def _elimination_states(task: InContextTask) -> int:
    """Numbers per pi that :func:`_eliminate` holds at its widest: S ** (width + 2)."""
    return task.vocab_size ** (frontier_width(task.graph.parents[: task.context_length]) + 2)


def chi2_mi_given_pi(
    task: InContextTask,
    pi: TransitionTensors,
    method: MIMethod = "auto",
    n_mc: int = 2048,
    max_states: int = 2**16,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Chi-squared MI between input positions for each given transition draw.

    Args:
        task: an :class:`InContextTree` or :class:`InContextDAG`.
        pi: trees: [n, S, S]; DAGs: ``{k: [n, S**k, S]}`` (as in ``Batch.pi``).
        method: ``"exact"`` (trees: closed form; DAGs: variable elimination, ValueError
            if it needs more than ``max_states`` numbers per pi), ``"monte_carlo"``, or
            ``"auto"`` (exact where affordable, else Monte Carlo); see :func:`mi_method`.
        n_mc: sequences per pi for Monte Carlo.
        max_states: the most ``S ** (frontier width + 2)`` numbers per pi that exact
            elimination may hold.
        generator: seeds the Monte Carlo samples.

    Returns:
        [n, L, L] float64, entry [., i, j] = I(x_j; x_i) for j < i; 0 elsewhere.
    """
    chosen = mi_method(task, method, max_states)
    check_positive_int(n_mc, "n_mc")
    conds = _conditionals(task, pi)  # also checks pi's shapes against the task
    S = task.vocab_size
    if chosen == "tree":
        return _tree_mi(task, pi)
    if chosen == "elimination":
        rows = torch.arange(conds[0][1].shape[0]).split(
            max(1, _CHUNK_NUMBERS // _elimination_states(task)))
        return _embed(task, torch.cat([
            _eliminate([(ps, table[part]) for ps, table in conds], S) for part in rows
        ]))
    return _embed(task, _monte_carlo(conds, S, n_mc, generator))


def sample_pi(task: InContextTask, n: int, generator: torch.Generator) -> TransitionTensors:
    """``n`` draws of the task's transition tensors from its Dirichlet prior."""
    if task.kind == "tree":
        return task.sample_transitions(n, generator)
    return task.sample(n, generator=generator).pi


def _mi_draws(task: InContextTask, n_pi: int, seed: int, method: MIMethod, n_mc: int,
              max_states: int) -> torch.Tensor:
    """Per-draw chi-squared MI [n_pi, L, L] for ``n_pi`` prior draws seeded by ``seed``."""
    task = check_task(task).base  # the task's theory: its own symbols and positions
    check_positive_int(n_pi, "n_pi")
    generator = seeded(seed)
    pi = sample_pi(task, n_pi, generator)
    return chi2_mi_given_pi(task, pi, method, n_mc, max_states, generator)


def chi2_mutual_information(
    task: InContextTask,
    n_pi: int = 256,
    seed: int = 0,
    method: MIMethod = "auto",
    n_mc: int = 2048,
    max_states: int = 2**16,
) -> torch.Tensor:
    """Prior-averaged chi-squared MI between input positions: [L, L] float64.

    ``E_pi[I(x_j; x_i)]`` over ``n_pi`` draws of pi from the task's prior, each exact or
    estimated as :func:`chi2_mi_given_pi` describes. Entry [i, j] for j < i; the upper
    triangle, the diagonal and (trees) the query token's row and column are 0.
    """
    return _mi_draws(task, n_pi, seed, method, n_mc, max_states).mean(0)


# ---------------------------------------------------------------- gradient at init
def gradient_at_init(
    task: InContextTask,
    model: InitModel = "reduced",
    n_samples: int = 2**14,
    beta0: float = 0.1,
    seed: int = 0,
    chunk: int = 4096,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``-dL/dA1`` at Algorithm 1's start, averaged over ``n_samples`` fresh samples.

    Args:
        task: supplies the samples and the model sizes.
        model: ``"reduced"`` (``ReducedModel.init_two_stage(beta0)``: A1 = 0,
            A2 = beta0 I) or ``"disentangled"`` (heads (1, 1), probability readout,
            ``init_two_stage(beta0)``; A1 is the position block of layer 1's A). The
            two are the same function, so they give the same gradient.
        n_samples: sequences averaged over, drawn ``chunk`` at a time.
        beta0: the fixed second-layer scale.
        seed: seeds the samples.
        dtype: of the model and the gradient.

    Returns:
        [L, L] (row = query i, column = key j); the causal mask makes j > i exactly 0.
    """
    task = check_task(task).base  # the task's theory: its own symbols and positions
    check_positive_int(n_samples, "n_samples")
    check_positive_int(chunk, "chunk")
    beta0 = check_beta0(beta0)
    S, L = task.vocab_size, task.input_length
    if model == "reduced":
        net = ReducedModel.for_task(task, dtype=dtype)
        net.init_two_stage(beta0)
        param, block = net.A1, (slice(None), slice(None))
    elif model == "disentangled":
        net = DisentangledTransformer.for_task(task, heads=(1, 1), readout="probability",
                                               dtype=dtype)
        net.init_two_stage(beta0)
        param, block = net.blocks[0].attn.A, (0, slice(S, S + L), slice(S, S + L))
    else:
        raise ValueError(f"model must be 'reduced' or 'disentangled', got {model!r}")
    generator = seeded(seed)
    total = torch.zeros_like(param)
    for part in torch.arange(n_samples).split(chunk):
        batch = task.sample(len(part), generator=generator)
        log_probs = torch.log_softmax(net(batch.tokens), dim=-1)
        loss_sum = -(batch.target.to(dtype) * log_probs).sum()
        total -= torch.autograd.grad(loss_sum, param)[0]
    return (total / n_samples)[block].detach()


# ---------------------------------------------------------------- agreement
def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of a 1-D tensor, ties sharing their mean rank: [n] -> [n] float64."""
    order = torch.argsort(values, stable=True)
    _, inverse, counts = torch.unique_consecutive(values[order], return_inverse=True,
                                                  return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # rank of each tie group's first member
    ranks = torch.empty(len(values), dtype=torch.float64)
    ranks[order] = (first + (counts - 1) / 2).to(torch.float64)[inverse]
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (Pearson on average ranks); NaN when
    either is constant or shorter than 2."""
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if len(x) < 2:
        return float("nan")
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = (rx.square().sum() * ry.square().sum()).sqrt()
    return (rx @ ry / norm).item() if norm > 0 else float("nan")


@dataclass
class InformationReport:
    """Gradient at initialisation vs chi-squared MI, row by row.

    Attributes:
        mutual_information: [L, L] prior-averaged chi-squared MI (j < i).
        mi_stderr: [L, L] its Monte Carlo standard error over pi draws.
        gradient: [L, L] ``-dL/dA1`` at Algorithm 1's start.
        parents: true parents of each input position (``()`` for roots and for a tree's
            query token); rows with parents are the ones scored.
        mi_argmax, gradient_argmax: per input position, the key j < i with the largest
            entry (None for rows not scored).
        mi_agreement, gradient_agreement: fraction of scored rows whose argmax is one of
            the row's parents.
        spearman: [L] per-row Spearman correlation between gradient and MI over j < i
            (NaN for rows not scored, with fewer than 2 keys, or constant).
        mean_spearman: mean of the defined entries of ``spearman``; None when no row has
            one (every scored row's gradient or MI constant, e.g. too few samples).
        settings: how the two matrices were computed.
    """

    mutual_information: torch.Tensor
    mi_stderr: torch.Tensor
    gradient: torch.Tensor
    parents: tuple[tuple[int, ...], ...]
    mi_argmax: tuple[int | None, ...]
    gradient_argmax: tuple[int | None, ...]
    mi_agreement: float
    gradient_agreement: float
    spearman: torch.Tensor
    mean_spearman: float | None
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return to_json({
            "mutual_information": self.mutual_information, "mi_stderr": self.mi_stderr,
            "gradient": self.gradient, "parents": self.parents, "mi_argmax": self.mi_argmax,
            "gradient_argmax": self.gradient_argmax, "mi_agreement": self.mi_agreement,
            "gradient_agreement": self.gradient_agreement, "spearman": self.spearman,
            "mean_spearman": self.mean_spearman, "settings": self.settings,
        })

    def plot(self):
        """MI and gradient side by side (j < i only), true parents circled, and each
        scored pair of the two as a scatter (:func:`mechcausal.plots.gradient_vs_mi`)."""
        return plots.gradient_vs_mi(self)


def _row_argmax(matrix: torch.Tensor, rows: list[int], length: int) -> tuple[int | None, ...]:
    return tuple(int(matrix[i, :i].argmax()) if i in rows else None for i in range(length))


def information_report(
    task: InContextTask,
    model: InitModel = "reduced",
    n_pi: int = 256,
    n_samples: int = 2**14,
    beta0: float = 0.1,
    seed: int = 0,
    method: MIMethod = "auto",
    n_mc: int = 2048,
    max_states: int = 2**16,
) -> InformationReport:
    """Compare :func:`gradient_at_init` with :func:`chi2_mutual_information`.

    The theory bounds the gradient by the mutual information, with equality at the
    parent: both argmaxes land on the parent, but the gradient is not proportional to
    the MI elsewhere (siblings and grandparents carry MI yet get negative gradients), so
    expect a modest per-row Spearman (about 0.35 on random trees, S=10, T=20).

    Scored rows are the input positions with at least one true parent (a tree's roots
    and query token have none). For a multi-parent row, an argmax at any of its parents
    counts as agreement.
    """
    task = check_task(task).base  # the task's theory: its own symbols and positions
    chosen = mi_method(task, method, max_states)  # fail fast, before any computation
    if check_positive_int(n_pi, "n_pi") < 2:
        raise ValueError(f"n_pi must be >= 2 (the MI's standard error needs two prior "
                         f"draws), got {n_pi}")
    gradient = gradient_at_init(task, model, n_samples, beta0, seed)
    draws = _mi_draws(task, n_pi, seed, method, n_mc, max_states)
    mi = draws.mean(0)
    stderr = draws.std(0) / math.sqrt(n_pi)
    L = task.input_length
    parents = tuple(task.graph.parents[: task.context_length]) + ((),) * (L - task.context_length)
    rows = [i for i, ps in enumerate(parents) if ps]
    if not rows:
        raise ValueError("task: its graph has no edge, so no row has a parent to score")
    mi_argmax, gradient_argmax = _row_argmax(mi, rows, L), _row_argmax(gradient, rows, L)
    rho = torch.full((L,), math.nan, dtype=torch.float64)
    for i in rows:
        rho[i] = spearman(gradient[i, :i], mi[i, :i])
    defined = rho[~rho.isnan()]
    return InformationReport(
        mutual_information=mi,
        mi_stderr=stderr,
        gradient=gradient,
        parents=parents,
        mi_argmax=mi_argmax,
        gradient_argmax=gradient_argmax,
        mi_agreement=sum(mi_argmax[i] in parents[i] for i in rows) / len(rows),
        gradient_agreement=sum(gradient_argmax[i] in parents[i] for i in rows) / len(rows),
        spearman=rho,
        mean_spearman=defined.mean().item() if len(defined) else None,
        settings={"model": model, "n_pi": n_pi, "n_samples": n_samples, "beta0": beta0,
                  "seed": seed, "method": chosen, "n_mc": n_mc, "max_states": max_states},
    )
