"""The paper's in-context tasks: random transitions over a latent causal graph.

* :class:`InContextTree` (one parent at most): input ``x_0..x_{T-1}`` plus a uniform
  query token ``x_T``; target ``pi(x_T, .)``.
* :class:`InContextDAG` (several parents): input ``x_0..x_{T-1}``; the graph's last
  node ``T`` is the target, ``y = pi_k(x_{pa(T)}, .)``.

Every sample draws fresh transition tensors from a symmetric Dirichlet prior, so the
only way to predict the target is to estimate the transitions in context.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..graphs import CausalGraph, check_nodes, graph_family
from ..ops import as_int, check_bool, check_concentration, check_memory, check_positive_int, cross_entropy, seeded
from .priors import DirichletPrior, TransitionPrior, check_prior, prior_from_dict
from .sampling import categorical_from_cdf, cumulative, dirichlet_sample

TransitionTensors = torch.Tensor | dict[int, torch.Tensor]


@dataclass
class Batch:
    """A batch of in-context sequences.

    Attributes:
        tokens: [n, L] long, the model input.
        target: [n, S] float32, the target distribution (rows sum to 1).
        pi: trees: [n, S, S] per-sample transition matrix; DAGs: ``{k: [n, S**k, S]}``
            for every parent count ``k`` in the graph (parent tuples in mixed radix,
            first parent most significant).
    """

    tokens: torch.Tensor
    target: torch.Tensor
    pi: TransitionTensors

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        pi = (
            {k: v.to(device) for k, v in self.pi.items()}
            if isinstance(self.pi, dict)
            else self.pi.to(device)
        )
        return Batch(self.tokens.to(device), self.target.to(device), pi)

    def split(self, size: int) -> list[Batch]:
        """Consecutive batches of ``size`` samples (the last may be shorter); views."""
        check_positive_int(size, "size")
        pieces = [self.tokens.split(size), self.target.split(size)]
        if isinstance(self.pi, dict):
            per_count = {k: v.split(size) for k, v in self.pi.items()}
            pieces.append([dict(zip(per_count, parts)) for parts in zip(*per_count.values())])
        else:
            pieces.append(self.pi.split(size))
        return [Batch(*parts) for parts in zip(*pieces)]


def _check_vocab(vocab_size: Any) -> int:
    vocab_size = check_positive_int(vocab_size, "vocab_size")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    return vocab_size


class InContextTask:
    """What both tasks share: sizes, validation, estimator losses, serialisation."""

    kind: str = ""

    def __init__(self, graph: CausalGraph, vocab_size: int, alpha: float = 0.1):
        if not isinstance(graph, CausalGraph):
            raise TypeError(f"graph must be a CausalGraph, got {type(graph).__name__}")
        self.graph = graph
        self.vocab_size = _check_vocab(vocab_size)
        self.alpha = check_concentration(alpha, "alpha")

    # sizes ---------------------------------------------------------------------
    @property
    def input_length(self) -> int:
        """Number of input tokens L a model sees."""
        raise NotImplementedError

    @property
    def context_length(self) -> int:
        """Number of context tokens T drawn from the graph."""
        raise NotImplementedError

    # sampling & estimators ------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Batch:
        """Draw ``n`` sequences with ``generator`` (seeded draws) on ``device`` (default:
        the generator's, else the CPU)."""
        check_positive_int(n, "n")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError):
                raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', "
                                 f"got {device!r}") from None
            if generator is not None and generator.device.type != device.type:
                raise ValueError(f"generator is on {generator.device} but device={device}; "
                                 "create the generator on the sampling device")
        elif generator is not None:
            device = generator.device
        entries = self.transition_entries
        # a draw holds about four float32 copies of its transition tables (log-Gamma
        # draws, probabilities, cumulative sums, a temporary)
        check_memory(n * (16 * entries + 16 * self.input_length), device,
                     f"sampling n={n} sequences (each draws {entries:,} transition "
                     f"probabilities at vocab_size={self.vocab_size})",
                     "use a smaller vocab_size, or sample fewer sequences at a time")
        return self._draw(n, generator, device)

    @property
    def transition_entries(self) -> int:
        """Transition probabilities one sequence draws (its memory is 4 bytes each)."""
        raise NotImplementedError

    def _draw(self, n: int, generator: torch.Generator | None,
              device: torch.device | None) -> Batch:
        """:meth:`sample` with checked arguments (subclasses)."""
        raise NotImplementedError

    def bayes(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # shared --------------------------------------------------------------------
    def check_tokens(self, tokens: torch.Tensor, name: str = "tokens") -> torch.Tensor:
        """Raise ValueError unless tokens is [n, input_length] with values in [0, S)."""
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tokens).__name__}")
        if tokens.ndim != 2 or tokens.shape[1] != self.input_length:
            raise ValueError(
                f"{name} must have shape [n, {self.input_length}] for this task, "
                f"got {tuple(tokens.shape)}"
            )
        if tokens.dtype.is_floating_point:
            raise TypeError(f"{name} must be an integer tensor, got {tokens.dtype}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            bad = tokens[(tokens < 0) | (tokens >= self.vocab_size)][0].item()
            raise ValueError(
                f"{name} contains {bad}, outside the vocabulary [0, {self.vocab_size})"
            )
        return tokens.long()

    # how a model sees the task: its input tokens and its answer ------------------
    @property
    def base(self) -> InContextTask:
        """The task in its own symbols (``self``; an in-vocabulary view's underlying task)."""
        return self

    @property
    def position_offset(self) -> int:
        """The model position of graph position 0 (1 after a BOS token, else 0)."""
        return 0

    @property
    def model_vocab_size(self) -> int:
        """Tokens a model needs to read this task's inputs: ``vocab_size`` here."""
        return self.vocab_size

    @property
    def answer_ids(self) -> torch.Tensor | None:
        """The model-vocabulary ids of the S symbols (None: the symbols themselves)."""
        return None

    def symbols(self, tokens: torch.Tensor) -> torch.Tensor:
        """The task's symbols [n, base input length] in model input ``tokens`` (checked)."""
        return self.check_tokens(tokens)

    def model_tokens(self, symbols: torch.Tensor) -> torch.Tensor:
        """Model input tokens for symbol sequences (the inverse of :meth:`symbols`)."""
        return symbols

    def answer_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """A model's logits over its vocabulary [..., V] -> over the S symbols [..., S]:
        its answer to the task (a softmax over them renormalises the restriction)."""
        return logits[..., : self.vocab_size]

    def in_vocabulary(self, token_ids: Any = None, bos_token_id: int | None = None, *,
                      words: Sequence[str] | None = None,
                      tokenizer: Any = None) -> InVocabularyTask:
        """This task written in a language model's vocabulary: symbol s is the LM token
        ``token_ids[s]``, and ``bos_token_id`` (if given) comes first. See
        :class:`InVocabularyTask`.

        Args:
            token_ids: S distinct LM token ids; or None with ``words``.
            bos_token_id: a token to put first. Default: with a ``tokenizer`` that
                prepends one (Llama's, TransformerLens' GPT-2), its BOS id; else none.
            words: S strings, each of which ``tokenizer`` must encode to exactly one
                token without special tokens (``" A"``, not ``"A B"``); in place of
                ``token_ids``.
            tokenizer: a Hugging Face tokenizer (``lm.tokenizer``), needed with ``words``.
        """
        if (token_ids is None) == (words is None):
            raise ValueError("give exactly one of token_ids= (LM ids) and words= (strings "
                             f"with tokenizer=), got token_ids={token_ids!r}, words={words!r}")
        if words is not None:
            token_ids = word_token_ids(words, tokenizer, self.vocab_size)
        if bos_token_id is None and tokenizer is not None:
            bos_token_id = prepended_bos(tokenizer)
        return InVocabularyTask(self.base, token_ids, bos_token_id)

    def unigram(self, tokens: torch.Tensor) -> torch.Tensor:
        """In-context unigram baseline [n, S]: smoothed frequencies of the context tokens."""
        tokens = self.symbols(tokens)
        context = tokens[:, : self.context_length]
        counts = torch.nn.functional.one_hot(context, self.vocab_size).sum(1).float()
        return (counts + self.alpha) / (self.context_length + self.alpha * self.vocab_size)

    def uniform(self, tokens: torch.Tensor) -> torch.Tensor:
        """The uniform predictor [n, S]."""
        tokens = self.symbols(tokens)
        return torch.full((tokens.shape[0], self.vocab_size), 1.0 / self.vocab_size,
                          device=tokens.device)

    def _smoothed(self, counts: torch.Tensor) -> torch.Tensor:
        """(alpha + c_k) / (S alpha + sum c); counts [n, S] -> probabilities [n, S]."""
        counts = counts.float()
        return (counts + self.alpha) / (
            counts.sum(-1, keepdim=True) + self.alpha * self.vocab_size
        )

    def estimator_losses(
        self, n_samples: int = 2**14, seed: int = 0, chunk: int = 2**14, **bayes_kwargs: Any
    ) -> dict[str, float]:
        """Mean cross-entropy of the count estimator and the baselines on fresh samples.

        Returns a dict with keys ``bayes``, ``unigram``, ``uniform`` (and ``one_nn``
        for DAG tasks), each a float in nats."""
        check_positive_int(n_samples, "n_samples")
        chunk = check_positive_int(chunk, "chunk")
        gen = seeded(seed)
        names = ["bayes", "unigram", "uniform"] + (["one_nn"] if self.kind == "dag" else [])
        totals = dict.fromkeys(names, 0.0)
        done = 0
        while done < n_samples:
            m = min(chunk, n_samples - done)
            batch = self.sample(m, generator=gen)
            preds = {
                "bayes": self.bayes(batch.tokens, **bayes_kwargs),
                "unigram": self.unigram(batch.tokens),
                "uniform": self.uniform(batch.tokens),
            }
            if "one_nn" in names:
                preds["one_nn"] = self.one_nn(batch.tokens)
            for key, probs in preds.items():
                totals[key] += cross_entropy(probs, batch.target).item() * m
            done += m
        return {k: v / n_samples for k, v in totals.items()}

    def bayes_loss(self, n_samples: int = 2**14, seed: int = 0, **bayes_kwargs: Any) -> float:
        """Mean cross-entropy (nats) of the count estimator on ``n_samples`` fresh samples."""
        return self.estimator_losses(n_samples, seed, **bayes_kwargs)["bayes"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "graph": self.graph.to_dict(),
            "vocab_size": self.vocab_size,
            "alpha": self.alpha,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(T={self.context_length}, vocab_size={self.vocab_size}, "
            f"alpha={self.alpha}, graph={self.graph!r})"
        )

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash((self.kind, self.graph, self.vocab_size, self.alpha))


def check_task(task: Any, name: str = "task") -> InContextTask:
    """Return ``task`` if it is an in-context task, else raise TypeError."""
    if not isinstance(task, InContextTask):
        raise TypeError(f"{name} must be an InContextTree or InContextDAG, got "
                        f"{type(task).__name__}")
    return task


class InContextTree(InContextTask):
    """Task 1: a tree of ``T`` context positions, then a uniform query token.

    ``x_i ~ mu_pi`` at roots and ``x_i ~ pi(x_{p(i)}, .)`` otherwise, with
    ``pi`` rows iid Dirichlet(alpha); query ``x_T ~ Uniform[S]``; target ``pi(x_T, .)``.

    Args:
        graph: a tree (each position at most one parent) over the T context positions.
        vocab_size: S >= 2.
        alpha: Dirichlet concentration > 0 (the paper uses 0.1); also the count
            estimator's smoothing.
        prior: where transition matrices come from; default ``DirichletPrior(alpha)``.
            Other priors (:mod:`mechcausal.priors`) make out-of-distribution tasks.
    """

    kind = "tree"

    def __init__(self, graph: CausalGraph, vocab_size: int = 10, alpha: float = 0.1,
                 prior: TransitionPrior | None = None):
        super().__init__(graph, vocab_size, alpha)
        self.prior = check_prior(prior) if prior is not None else DirichletPrior(self.alpha)
        if not graph.is_tree:
            raise ValueError(
                f"InContextTree needs a graph with at most one parent per position, got "
                f"max_parents={graph.max_parents}; use InContextDAG for several parents"
            )
        self._parent = graph.parent_array()
        self._child_positions = torch.tensor(
            [i for i in range(graph.n) if self._parent[i] >= 0], dtype=torch.long
        )

    @property
    def context_length(self) -> int:
        return self.graph.n

    @property
    def input_length(self) -> int:
        return self.graph.n + 1

    @property
    def transition_entries(self) -> int:
        return self.vocab_size**2

    def sample_transitions(
        self, n: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """Per-sample transition matrices [n, S, S], float32, drawn from the prior."""
        return self.prior.sample(n, self.vocab_size, generator, device)

    def _draw(self, n: int, generator: torch.Generator | None,
              device: torch.device | None) -> Batch:
        """Vectorised over the batch, a loop over positions."""
        pi = self.sample_transitions(n, generator, device)
        return self.sample_given(pi, generator)

    def sample_given(self, pi: torch.Tensor, generator: torch.Generator | None = None,
                     parents: torch.Tensor | None = None) -> Batch:
        """Draw one sequence per given transition matrix ``pi`` [n, S, S].

        ``parents`` [n, T] (long, -1 = root) gives every row its own tree (same T);
        default: this task's graph for every row."""
        n, S, device = pi.shape[0], self.vocab_size, pi.device
        if pi.shape[1:] != (S, S):
            raise ValueError(f"pi must have shape [n, {S}, {S}], got {tuple(pi.shape)}")
        T = self.context_length
        # one row per (sample, token): a parent's law is one index_select away
        cdf = cumulative(pi).view(n * S, S)
        samples = torch.arange(n, device=device)
        row_offsets = samples * S
        uniform = (1.0 - torch.rand((n, T + 1), generator=generator, device=device)).T
        # position-major, so each position's tokens are contiguous; zeros, not empty:
        # a root's clamped parent index reads a not-yet-sampled slot
        tokens = torch.zeros((T + 1, n), dtype=torch.long, device=device)
        if parents is None:
            root_cdf = cumulative(self.prior.stationary(pi).float()) if self.graph.roots else None
            # rows unbound once: each position is then four ops (fewer small ops hold
            # the GIL less often while a prefetching thread samples)
            token_rows, uniform_rows = tokens.unbind(0), uniform.unbind(0)
            for i, p in enumerate(self._parent.tolist()):
                law = root_cdf if p < 0 else cdf.index_select(0, row_offsets + token_rows[p])
                categorical_from_cdf(law, uniform_rows[i], out=token_rows[i])
        else:
            root_cdf = cumulative(self.prior.stationary(pi).float())
            for i in range(T):
                p = parents[:, i]
                from_parent = cdf.index_select(0, row_offsets + tokens[p.clamp_min(0), samples])
                law = torch.where((p < 0).unsqueeze(-1), root_cdf, from_parent)
                tokens[i] = categorical_from_cdf(law, uniform[i])
        tokens[T] = (uniform[T] * S).ceil().long().clamp(1, S) - 1
        tokens = tokens.T.contiguous()
        target = pi[samples, tokens[:, T]]
        return Batch(tokens=tokens, target=target, pi=pi)

    def with_prior(self, prior: TransitionPrior) -> InContextTree:
        """The same graph, vocabulary and estimator smoothing under another prior."""
        return InContextTree(self.graph, self.vocab_size, self.alpha, prior)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "prior": self.prior.to_dict()}

    def bayes(self, tokens: torch.Tensor, official_root_indexing: bool = False) -> torch.Tensor:
        """In-context count estimator [n, S] of ``pi(query, .)``.

        ``f_k = (alpha + #{i non-root: x_{p(i)} = s, x_i = k}) / (S alpha + #{x_{p(i)} = s})``.

        Args:
            tokens: [n, T+1] with the query last.
            official_root_indexing: also count each root as a transition out of
                ``x_{T-1}``, as the official code does when it indexes parent -1.
        """
        official_root_indexing = check_bool(official_root_indexing, "official_root_indexing")
        tokens = self.check_tokens(tokens)
        T = self.context_length
        query = tokens[:, T]
        if official_root_indexing:
            children = torch.arange(T, device=tokens.device)
            parents = torch.where(self._parent < 0, T - 1, self._parent).to(tokens.device)
        else:
            children = self._child_positions.to(tokens.device)
            parents = self._parent.to(tokens.device)[children]
        match = tokens[:, parents] == query[:, None]  # [n, m]
        child_onehot = torch.nn.functional.one_hot(tokens[:, children], self.vocab_size)
        counts = (child_onehot * match[..., None]).sum(1)
        return self._smoothed(counts)


class InContextDAG(InContextTask):
    """Task 2: several parents per position; the graph's last node is the target.

    For each parent count ``k`` in the graph, one tensor ``pi_k`` [S**k, S] with rows
    iid Dirichlet(alpha) per sample (``k = 0``: one marginal for every root).

    Args:
        graph: ``T + 1`` nodes; nodes ``0..T-1`` are the input, node ``T`` the target.
        vocab_size: S >= 2.
        alpha: Dirichlet concentration > 0.
    """

    kind = "dag"

    def __init__(self, graph: CausalGraph, vocab_size: int = 5, alpha: float = 0.1):
        super().__init__(graph, vocab_size, alpha)
        if graph.n < 2:
            raise ValueError(
                f"InContextDAG needs a graph of T + 1 >= 2 nodes (context + target), got {graph.n}"
            )
        self.parent_counts = tuple(sorted({len(ps) for ps in graph.parents}))
        # k ** parents pay off only while the tables stay small
        largest = self.vocab_size ** graph.max_parents
        if largest > 2**16:
            raise ValueError(
                f"vocab_size ** max_parents = {vocab_size}**{graph.max_parents} = {largest} "
                "transition rows per sample is too many (limit 65536)"
            )

    @property
    def context_length(self) -> int:
        return self.graph.n - 1

    @property
    def input_length(self) -> int:
        return self.graph.n - 1

    @property
    def target_parents(self) -> tuple[int, ...]:
        """Parents of the target node, positions in the input."""
        return self.graph.parents[-1]

    @property
    def transition_entries(self) -> int:
        return sum(self.vocab_size ** (k + 1) for k in self.parent_counts)

    def _row_index(self, tokens: torch.Tensor, parents: tuple[int, ...]) -> torch.Tensor:
        """Mixed-radix index of the parent tuple (first parent most significant): [n]."""
        index = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        for p in parents:
            index = index * self.vocab_size + tokens[:, p]
        return index

    def _draw(self, n: int, generator: torch.Generator | None,
              device: torch.device | None) -> Batch:
        S = self.vocab_size
        pi = {
            k: dirichlet_sample(self.alpha, (n, S**k), S, generator, device)
            for k in self.parent_counts
        }
        cdf = {k: cumulative(v) for k, v in pi.items()}
        T = self.context_length
        uniform = 1.0 - torch.rand((n, T), generator=generator, device=device)
        rows = torch.arange(n, device=device)
        tokens = torch.empty((n, T), dtype=torch.long, device=device)
        for i, parents in enumerate(self.graph.parents[:T]):
            law = cdf[len(parents)][rows, self._row_index(tokens, parents)]
            tokens[:, i] = categorical_from_cdf(law, uniform[:, i])
        last = self.target_parents
        target = pi[len(last)][rows, self._row_index(tokens, last)]
        return Batch(tokens=tokens, target=target, pi=pi)

    def _matching_counts(self, tokens: torch.Tensor, key) -> torch.Tensor:
        """Counts [n, S] of x_i over context positions i whose key matches the target's.

        ``key(parents)`` maps a parent tuple to the tuple of positions compared, or
        None to skip the position."""
        target_key = key(self.target_parents)
        counts = torch.zeros(tokens.shape[0], self.vocab_size, device=tokens.device)
        if target_key is None:
            return counts
        target_tokens = tokens[:, list(target_key)] if target_key else None
        for i, parents in enumerate(self.graph.parents[: self.context_length]):
            own = key(parents)
            if own is None or len(own) != len(target_key):
                continue
            if own:
                match = (tokens[:, list(own)] == target_tokens).all(-1)
            else:
                match = torch.ones(tokens.shape[0], dtype=torch.bool, device=tokens.device)
            counts[torch.arange(tokens.shape[0]), tokens[:, i]] += match.float()
        return counts

    def bayes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Count estimator [n, S]: positions with the target's parent count whose parent
        tokens equal the target's parent tokens, +alpha smoothing."""
        tokens = self.check_tokens(tokens)
        return self._smoothed(self._matching_counts(tokens, lambda ps: ps))

    def one_nn(self, tokens: torch.Tensor) -> torch.Tensor:
        """Baseline [n, S]: the same count using only the last parent of each position."""
        tokens = self.check_tokens(tokens)
        return self._smoothed(self._matching_counts(tokens, lambda ps: ps[-1:] or None))


def _check_tokenizer(tokenizer: Any) -> Any:
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"tokenizer must be a Hugging Face tokenizer (such as lm.tokenizer), "
                        f"got {tokenizer!r}")
    return tokenizer


def word_token_ids(words: Any, tokenizer: Any, count: int) -> list[int]:
    """The LM id of each of ``count`` words: each must encode to exactly one token
    without special tokens; ValueError naming a word that splits (and its pieces)."""
    _check_tokenizer(tokenizer)
    if isinstance(words, (str, bytes)) or not isinstance(words, Iterable):
        raise TypeError(f"words must be a list of {count} strings, got {words!r}")
    words = list(words)
    if len(words) != count or not all(isinstance(word, str) for word in words):
        raise ValueError(f"words must be {count} strings (one per symbol), got {words!r}")
    ids = []
    for word in words:
        pieces = list(tokenizer.encode(word, add_special_tokens=False))
        if len(pieces) != 1:
            shown = [tokenizer.decode([piece]) for piece in pieces]
            raise ValueError(f"words: {word!r} is {len(pieces)} tokens {pieces} ({shown}) for "
                             f"this tokenizer, not one; pick words that are single tokens "
                             f"(with GPT-2-style tokenizers, often with a leading space)")
        ids.append(int(pieces[0]))
    return ids


def prepended_bos(tokenizer: Any) -> int | None:
    """The BOS id ``tokenizer`` puts before every text, or None when it puts none."""
    _check_tokenizer(tokenizer)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    with_special = list(tokenizer.encode("a", add_special_tokens=True))
    return int(bos) if with_special and with_special[0] == bos else None


# token ids an in-vocabulary task accepts (its id -> symbol table has this many entries)
MAX_LM_VOCAB = 10**7

class InVocabularyTask(InContextTask):
    """A task written in a language model's vocabulary (``task.in_vocabulary(...)``).

    Symbol s of the underlying task is the LM token ``token_ids[s]``; with
    ``bos_token_id``, that token comes first, so graph position i is model position
    i + 1. :meth:`sample` yields LM token ids; targets stay distributions over the S
    symbols; the estimators (``bayes``, ``unigram``, ...) read LM tokens. A model's
    answer is its next-token distribution at the last position restricted to the S ids
    and renormalised (:meth:`answer_logits`): that is how an LM answers the paper's
    task. Every diagnostic that takes a task maps positions back to graph positions.

    Args:
        base: the task in its own symbols (an in-vocabulary view's base is used).
        token_ids: S distinct non-negative ints (a sequence or a long tensor).
        bos_token_id: an int to put first, or None.
    """

    def __init__(self, base: InContextTask, token_ids: Any, bos_token_id: int | None = None):
        base = check_task(base, "base").base
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, (str, bytes)) or not isinstance(token_ids, Iterable):
            raise TypeError(f"token_ids must be a sequence of {base.vocab_size} ints, got "
                            f"{token_ids!r}")
        ids = [as_int(t, "token_ids entry") for t in token_ids]
        if len(ids) != base.vocab_size or len(set(ids)) != len(ids) or min(ids) < 0:
            raise ValueError(f"token_ids must be {base.vocab_size} distinct ints >= 0 (one LM "
                             f"token per symbol), got {ids}")
        if max(ids) >= MAX_LM_VOCAB:  # a lookup table of max id + 1 entries is built below
            raise ValueError(f"token_ids entry {max(ids):,} is not below {MAX_LM_VOCAB:,}, "
                             f"more than any language model's vocabulary")
        if bos_token_id is not None:
            bos_token_id = as_int(bos_token_id, "bos_token_id")
            if bos_token_id < 0 or bos_token_id in ids or bos_token_id >= MAX_LM_VOCAB:
                raise ValueError(f"bos_token_id must be an int >= 0 that is not one of the "
                                 f"token_ids (and below {MAX_LM_VOCAB:,}), got {bos_token_id}")
        self._base, self.bos_token_id = base, bos_token_id
        self.graph, self.vocab_size, self.alpha = base.graph, base.vocab_size, base.alpha
        self._ids = torch.tensor(ids, dtype=torch.long)
        # LM id -> symbol (-1: not a symbol)
        self._symbol_of = torch.full((self.model_vocab_size,), -1, dtype=torch.long)
        self._symbol_of[self._ids] = torch.arange(len(ids))

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self._base.kind

    @property
    def base(self) -> InContextTask:
        return self._base

    @property
    def context_length(self) -> int:
        return self._base.context_length

    @property
    def input_length(self) -> int:
        return self._base.input_length + self.position_offset

    @property
    def position_offset(self) -> int:
        return 0 if self.bos_token_id is None else 1

    @property
    def model_vocab_size(self) -> int:
        return max(self._ids.max().item(), self.bos_token_id or 0) + 1

    @property
    def answer_ids(self) -> torch.Tensor:
        return self._ids.clone()

    @property
    def transition_entries(self) -> int:
        return self._base.transition_entries

    def _draw(self, n: int, generator: torch.Generator | None,
              device: torch.device | None) -> Batch:
        batch = self._base._draw(n, generator, device)
        return Batch(self.model_tokens(batch.tokens), batch.target, batch.pi)

    def model_tokens(self, symbols: torch.Tensor) -> torch.Tensor:
        symbols = self._base.check_tokens(symbols, "symbols")
        tokens = self._ids.to(symbols.device)[symbols]
        if self.bos_token_id is None:
            return tokens
        bos = torch.full_like(tokens[:, :1], self.bos_token_id)
        return torch.cat([bos, tokens], dim=1)

    def check_tokens(self, tokens: torch.Tensor, name: str = "tokens") -> torch.Tensor:
        """Raise unless tokens are [n, input_length] LM ids of this task (BOS first)."""
        self.symbols(tokens, name)
        return tokens.long()

    def symbols(self, tokens: torch.Tensor, name: str = "tokens") -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype.is_floating_point:
            raise TypeError(f"{name} must be an integer torch.Tensor of LM token ids")
        if tokens.ndim != 2 or tokens.shape[1] != self.input_length:
            raise ValueError(f"{name} must have shape [n, {self.input_length}] for this task, "
                             f"got {tuple(tokens.shape)}")
        tokens = tokens.long()
        offset = self.position_offset
        if offset and tokens.numel() and bool((tokens[:, 0] != self.bos_token_id).any()):
            raise ValueError(f"{name} must start with the BOS token {self.bos_token_id}")
        body = tokens[:, offset:]
        inside = (body >= 0) & (body < self.model_vocab_size)
        symbols = self._symbol_of.to(body.device)[body.clamp(0, self.model_vocab_size - 1)]
        bad = ~inside | (symbols < 0)
        if bool(bad.any()):
            raise ValueError(f"{name} contains {body[bad][0].item()}, which is not one of the "
                             f"task's token ids {self._ids.tolist()}")
        return symbols

    def answer_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., self._ids.to(logits.device)]

    def bayes(self, tokens: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self._base.bayes(self.symbols(tokens), **kwargs)

    def one_nn(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.kind != "dag":
            raise ValueError("one_nn is the DAG tasks' baseline; this is a tree task")
        return self._base.one_nn(self.symbols(tokens))

    def with_prior(self, prior: TransitionPrior) -> InVocabularyTask:
        """The same view of the base task under another prior (tree tasks)."""
        return InVocabularyTask(self._base.with_prior(prior), self._ids, self.bos_token_id)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "in_vocabulary", "base": self._base.to_dict(),
                "token_ids": self._ids.tolist(), "bos_token_id": self.bos_token_id}

    def __repr__(self) -> str:
        bos = f", bos={self.bos_token_id}" if self.bos_token_id is not None else ""
        return f"InVocabularyTask({self._base!r}, token_ids={self._ids.tolist()}{bos})"

    def __hash__(self) -> int:
        return hash((repr(self._base), tuple(self._ids.tolist()), self.bos_token_id))


def sample_stacked(tasks: list[InContextTree], n: int,
                   generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> Batch:
    """``n`` sequences for each of several tree tasks in one vectorised draw.

    The tasks may have different graphs but must share vocabulary size, context length
    and prior. Returns a Batch with tokens [N, n, L], target [N, n, S], pi [N, n, S, S]."""
    if isinstance(tasks, InContextTask) or not isinstance(tasks, (list, tuple)):
        raise TypeError(f"tasks must be a list of InContextTree tasks, got "
                        f"{type(tasks).__name__}")
    if not tasks:
        raise ValueError("tasks must hold at least one InContextTree, got an empty list")
    first = tasks[0]
    for k, task in enumerate(tasks):
        if not isinstance(task, InContextTree):
            raise TypeError(f"tasks[{k}] is a {type(task).__name__}; sample_stacked takes "
                            f"InContextTree tasks")
        if (task.vocab_size, task.context_length, task.prior) != (
                first.vocab_size, first.context_length, first.prior):
            raise ValueError(
                f"task {k} has vocab_size={task.vocab_size}, T={task.context_length}, "
                f"prior={task.prior}; task 0 has {first.vocab_size}, {first.context_length}, "
                f"{first.prior}: stacked tasks must share them")
    check_positive_int(n, "n")
    if device is None and generator is not None:
        device = generator.device
    check_memory(len(tasks) * n * 16 * (first.transition_entries + first.input_length), device,
                 f"sampling n={n} sequences for each of {len(tasks)} tasks",
                 "sample fewer sequences at a time")
    parents = torch.stack([task._parent for task in tasks]).to(device)  # [N, T]
    rows_parents = parents.repeat_interleave(n, dim=0)
    pi = first.sample_transitions(len(tasks) * n, generator, device)
    batch = first.sample_given(pi, generator, parents=rows_parents)
    N = len(tasks)
    return Batch(tokens=batch.tokens.view(N, n, -1), target=batch.target.view(N, n, -1),
                 pi=batch.pi.view(N, n, *batch.pi.shape[1:]))


def task_from_dict(data: dict[str, Any]) -> InContextTask:
    """Rebuild a task from :meth:`InContextTask.to_dict`."""
    if not isinstance(data, dict):
        raise TypeError(f"a task dict must be a dict, got {type(data).__name__}")
    kinds = {"tree": InContextTree, "dag": InContextDAG, "in_vocabulary": InVocabularyTask}
    kind = data.get("kind")
    if kind not in kinds:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {sorted(kinds)}")
    missing = sorted({"in_vocabulary": {"base", "token_ids"}}.get(
        kind, {"graph", "vocab_size", "alpha"}) - set(data))
    if missing:
        raise ValueError(f"a {kind} task dict needs {', '.join(missing)}; got keys "
                         f"{sorted(data)}")
    if kind == "in_vocabulary":
        return InVocabularyTask(task_from_dict(data["base"]), data["token_ids"],
                                data.get("bos_token_id"))
    graph = CausalGraph.from_dict(data["graph"])
    if kind == "tree":
        prior = prior_from_dict(data["prior"]) if "prior" in data else None
        return InContextTree(graph, data["vocab_size"], data["alpha"], prior)
    return InContextDAG(graph, data["vocab_size"], data["alpha"])


def make_task(family: str, seq_len: int | None = None, vocab_size: int | None = None,
              alpha: float = 0.1, seed: int = 0, **params: Any) -> InContextTask:
    """The task of a registered graph family (:data:`~mechcausal.graphs.GRAPH_FAMILIES`).

    Tree families give an :class:`InContextTree` over ``seq_len`` graph nodes (plus the
    query); DAG families an :class:`InContextDAG` whose graph has ``seq_len`` context
    nodes plus the target node. ``seq_len`` and ``vocab_size`` default to the family's
    sizes; ``seed`` seeds random families; ``params`` are the family's own keywords."""
    entry = graph_family(family)
    seq_len = entry.seq_len if seq_len is None else check_nodes(seq_len, "seq_len")
    vocab_size = entry.vocab_size if vocab_size is None else vocab_size
    graph = entry.graph(entry.nodes(seq_len), seed, **params)
    if entry.task == "dag":
        return InContextDAG(graph, vocab_size, alpha)
    return InContextTree(graph, vocab_size, alpha)
