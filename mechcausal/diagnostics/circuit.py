"""The induction circuit: which earlier head writes what a later induction head's keys
read.

The paper's mechanism is two heads composed: a first-layer head copies the parent's token
x_{p(i)} into position i, and a second-layer head's keys read it, so the query attends to
positions whose parent token matches its own. In a language model the same circuit is a
previous-token head feeding an induction head, at any two layers. For candidate pairs
(writer, reader), :func:`induction_circuit` reports

* **K-composition** (Elhage et al. 2021), from the weights alone:
  ``||W_QK^reader (W_OV^writer)^T||_F / (||W_QK^reader||_F ||W_OV^writer||_F)``, with
  ``W_QK = W_Q W_K^T`` and ``W_OV = W_V W_O`` ([d_model, d_model]; LayerNorm left out);
* **path patching**: the writer's output replaced by its value on a corrupted sequence
  *only as the reader's keys see it* (the reader's queries kept clean, every component
  between the two heads frozen at its clean value), measured on the reader's induction
  attention and, with a task, on the task's loss at the query when only the reader's
  pattern changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .. import plots
from ..data.tasks import InContextTask, check_task
from ..models.base import check_sizes
from ..models.disentangled import DisentangledTransformer
from ..models.standard import last_position_logits, to_transformer_lens
from ..ops import check_bool, check_positive_int, seeded, to_json
from ..progress import progress_bar
from .attention import (
    check_heads,
    check_model,
    head_name,
    heads_per_layer,
    model_device,
    pattern_hook,
    stop_after,
    z_hook,
)
from .heads import rank_heads
from .induction import (
    induction_scores,
    matched_positions,
    model_bos,
    ordinary_tokens,
    repeated_sequences,
)
from .weights import HeadWeights, head_weights

Head = tuple[int, int]


@dataclass
class InductionCircuit:
    """Candidate (writer, reader) head pairs, strongest path first.

    Attributes:
        rows: one dict per pair with ``writer`` / ``reader`` (``L{layer}H{head}``),
            ``writer_layer``, ``writer_heads`` (one head), ``reader_layer``, ``reader_head``,
            ``k_composition`` (None without per-head weights), ``attention_clean`` and
            ``attention_patched`` (the reader's induction attention: on repeated
            sequences, from the second copy to the token after the earlier occurrence;
            with a tree task, from the query onto positions whose parent token is the
            query's), ``removed`` (1 - patched / clean: the fraction of that attention
            the path carries), and with a task ``loss_clean`` / ``loss_patched`` (nats,
            cross-entropy of the answer at the query against the true law).
        writers, readers: the candidate heads, best first.
        measured_on: ``"repeated random tokens"`` or the task.
        k_composition: [writer flat index, reader flat index] over every head (rows and
            columns ordered layer by layer; zero where the writer is not earlier), or
            None.
        heads: the (layer, head) of each flat index.
        joint: rows of the same form for the candidate writers of one layer patched
            together into one reader (``writer`` "L1H0+L1H3", ``k_composition`` None):
            heads that share the previous-token job each carry a little of the path,
            and together carry it all.
    """

    rows: list[dict[str, Any]]
    writers: list[Head]
    readers: list[Head]
    measured_on: str
    k_composition: torch.Tensor | None = None
    heads: list[Head] = field(default_factory=list)
    joint: list[dict[str, Any]] = field(default_factory=list)

    @property
    def task_free(self) -> bool:
        """Measured on repeated random tokens (no task)."""
        return self.measured_on == "repeated random tokens"

    def top(self, n: int = 1) -> list[tuple[Head, Head]]:
        """The ``n`` strongest pairs as ((writer layer, head), (reader layer, head))."""
        n = check_positive_int(n, "n")
        return [((row["writer_layer"], row["writer_heads"][0]),
                 (row["reader_layer"], row["reader_head"])) for row in self.rows[:n]]

    def to_dict(self) -> dict[str, Any]:
        return to_json({"rows": self.rows, "joint": self.joint,
                        "writers": [head_name(*h) for h in self.writers],
                        "readers": [head_name(*h) for h in self.readers],
                        "measured_on": self.measured_on})

    def plot(self, n: int = 10):
        """The ``n`` strongest pairs (fraction of the reader's attention the path
        carries, K-composition beside it) and the K-composition of every head pair."""
        shown = sorted(self.rows[:n] + self.joint[:n],
                       key=lambda row: -(row["attention_clean"] - row["attention_patched"]))
        return plots.circuit_pairs(shown[:n], self.k_composition,
                                   [head_name(*h) for h in self.heads],
                                   title="induction circuit (" + (
                                       self.measured_on if self.task_free else
                                       "the task, at the query") + ")")


def k_composition(weights: HeadWeights, writer: Head, reader: Head) -> float:
    """K-composition of ``writer`` into ``reader``'s keys (see the module docstring),
    computed through [d_head, d_head] Gram matrices, never a [d_model, d_model] product."""
    (wl, wh), (rl, rh) = writer, reader
    W_Q, W_K = weights.W_Q[rl][rh], weights.W_K[rl][rh]  # [d, dh]
    W_V, W_O = weights.W_V[wl][wh], weights.W_O[wl][wh]  # [d, dh], [dh, d]
    # ||A M B||_F^2 = tr(M^T (A^T A) M (B B^T)) with A = W_Q, M = W_K^T W_O^T, B = W_V^T
    middle = W_K.T @ W_O.T
    composed = torch.trace(middle.T @ (W_Q.T @ W_Q) @ middle @ (W_V.T @ W_V))
    qk = torch.trace((W_Q.T @ W_Q) @ (W_K.T @ W_K))
    ov = torch.trace((W_V.T @ W_V) @ (W_O @ W_O.T))
    denominator = (qk * ov).sqrt()
    return float(composed.clamp_min(0).sqrt() / denominator) if denominator > 0 else 0.0


def _k_composition_grid(weights: HeadWeights | None, heads: list[Head]) -> torch.Tensor | None:
    if weights is None:
        return None
    grid = torch.zeros(len(heads), len(heads))
    for i, writer in enumerate(heads):
        for j, reader in enumerate(heads):
            if writer[0] < reader[0]:
                grid[i, j] = k_composition(weights, writer, reader)
    return grid


def _hook_names(model: Any) -> set[str]:
    return set(getattr(model, "hook_dict", {}))


class _PathPatcher:
    """Clean and corrupted runs of one batch, and the patched runs of any pair."""

    def __init__(self, model: Any, clean: torch.Tensor, corrupted: torch.Tensor,
                 writer_layers: set[int], reader_layers: set[int]):
        self.model, self.clean = model, clean
        available = _hook_names(model)
        low, high = min(writer_layers), max(reader_layers)
        self.frozen = {layer: [name for name in (f"blocks.{layer}.hook_attn_out",
                                                 f"blocks.{layer}.hook_mlp_out")
                               if name in available] for layer in range(low, high)}
        wanted = ({z_hook(layer) for layer in writer_layers}
                  | {name for names in self.frozen.values() for name in names}
                  | {f"blocks.{layer}.attn.hook_q" for layer in reader_layers}
                  | {pattern_hook(layer) for layer in reader_layers})
        _, self.cache = model.run_with_cache(clean, names_filter=lambda n: n in wanted,
                                             **stop_after(model, max(reader_layers)))
        writer_z = {z_hook(layer) for layer in writer_layers}
        _, self.corrupted = model.run_with_cache(corrupted, names_filter=lambda n: n in writer_z,
                                                 **stop_after(model, max(writer_layers)))

    def clean_pattern(self, reader: Head) -> torch.Tensor:
        """[B, L, L] of the reader's clean pattern."""
        return self.cache[pattern_hook(reader[0])][:, reader[1]].float()

    def patched_pattern(self, writers: tuple[Head, ...], reader: Head) -> torch.Tensor:
        """[B, L, L]: the reader's pattern when only its keys see the corrupted writers
        (heads of one layer)."""
        wl, (rl, rh) = writers[0][0], reader
        hooks: list[tuple[str, Any]] = []

        def corrupt_writer(z: torch.Tensor, hook: Any) -> torch.Tensor:
            z = z.clone()
            for _, wh in writers:
                z[:, :, wh] = self.corrupted[z_hook(wl)][:, :, wh]
            return z

        def restore(name: str) -> Any:  # by our name: a bridge's hook.name is its alias's
            return lambda value, hook: self.cache[name]

        hooks.append((z_hook(wl), corrupt_writer))
        # the writer's own layer: its MLP reads the writer; later layers: everything
        frozen = [name for layer in range(wl, rl) for name in self.frozen[layer]
                  if layer > wl or "mlp" in name]
        hooks += [(name, restore(name)) for name in frozen]
        query = f"blocks.{rl}.attn.hook_q"
        hooks.append((query, restore(query)))
        captured = {}

        def capture(pattern: torch.Tensor, hook: Any) -> None:
            captured["pattern"] = pattern[:, rh].float()

        hooks.append((pattern_hook(rl), capture))
        self.model.run_with_hooks(self.clean, fwd_hooks=hooks, **stop_after(self.model, rl))
        return captured["pattern"]

    def last_logits(self, hooks: list[tuple[str, Any]] = ()) -> torch.Tensor:
        """[B, V] logits at the last position of the clean run with ``hooks``."""
        return last_position_logits(self.model, self.clean, hooks)

    def logits_with_pattern(self, reader: Head, pattern: torch.Tensor) -> torch.Tensor:
        """[B, V]: the clean run's last logits with only the reader's pattern replaced."""
        rl, rh = reader

        def replace(value: torch.Tensor, hook: Any) -> torch.Tensor:
            value = value.clone()
            value[:, rh] = pattern.to(value.dtype)
            return value

        return self.last_logits([(pattern_hook(rl), replace)])


@torch.no_grad()
def induction_circuit(model: Any, task: InContextTask | None = None, *,
                      writers: Any = None, readers: Any = None, n_candidates: int = 3,
                      n_sequences: int | None = None, seq_len: int | None = None,
                      seed: int = 0, batch_size: int = 64,
                      progress: bool = False) -> InductionCircuit:
    """Pairs of heads that form the induction circuit (see the module docstring).

    Args:
        model: any TransformerLens-style model with ``hook_z``, ``hook_q`` and
            ``hook_pattern`` (ours is read through its exact TransformerLens export).
        task: None: measure on BOS + repeated random tokens (the TL convention); a
            task (``task.in_vocabulary(...)`` for an LM): measure on its samples, the
            reader's attention from the query onto positions whose parent token is the
            query's (tree tasks), and its loss at the query.
        writers, readers: candidate heads as (layer, head) pairs; default: the
            ``n_candidates`` best by previous-token (or, with a task, parent-attention)
            score and by induction (or, with a tree task, causal-induction) score.
        n_sequences: sequences patched (default 32; 128 with a task).
        seq_len: with no task, the length 2k of ``r + r`` (see :func:`induction_scores`).
        batch_size: sequences per forward pass (bounds memory).
        progress: show a progress bar.
    """
    check_model(model)
    n_candidates = check_positive_int(n_candidates, "n_candidates")
    batch_size = check_positive_int(batch_size, "batch_size")
    check_bool(progress, "progress")
    if task is not None:
        check_task(task)
        check_sizes(model, task)
        if task.kind != "tree":
            raise ValueError("induction_circuit with a task needs a tree task "
                             "(InContextTree): the reader is scored on the positions whose "
                             "parent token is the query's")
    n_sequences = check_positive_int(
        n_sequences if n_sequences is not None else (32 if task is None else 128),
        "n_sequences")
    native = model
    if isinstance(model, DisentangledTransformer):
        model = to_transformer_lens(model)
    heads = [(layer, head) for layer, count in enumerate(heads_per_layer(native))
             for head in range(count)]
    writers = None if writers is None else check_heads(native, writers, "writers")
    readers = None if readers is None else check_heads(native, readers, "readers")
    chosen_for_us = writers is None or readers is None
    if chosen_for_us:
        writers, readers = _candidates(native, task, writers, readers, n_candidates, seed,
                                       seq_len)
    pairs = [(w, r) for w in writers for r in readers if w[0] < r[0]]
    if not pairs:
        raise ValueError(f"no candidate pair has its writer in an earlier layer than its "
                         f"reader (writers {[head_name(*h) for h in writers]}, readers "
                         f"{[head_name(*h) for h in readers]})"
                         + ("; raise n_candidates" if chosen_for_us else ""))
    weights = head_weights(model)
    clean, corrupted, measure = _sequences(model, native, task, n_sequences, seq_len, seed)
    # each pair alone, and the writers of one layer together (heads that share the
    # previous-token job must be patched together for their path to show)
    groups = [((w,), r) for w, r in pairs]
    for reader in readers:
        for layer in sorted({w[0] for w in writers if w[0] < reader[0]}):
            together = tuple(w for w in writers if w[0] == layer)
            if len(together) > 1:
                groups.append((together, reader))
    totals = {group: torch.zeros(4) for group in groups}
    bar = progress_bar(len(groups) * len(range(0, n_sequences, batch_size)), progress,
                       "induction circuit")
    device = model_device(model)
    for start in range(0, n_sequences, batch_size):
        part = slice(start, start + batch_size)
        patcher = _PathPatcher(model, clean[part].to(device), corrupted[part].to(device),
                               {w[0] for w, _ in pairs}, {r[0] for _, r in pairs})
        for writer, reader in groups:
            patched = patcher.patched_pattern(writer, reader)
            row = [measure.attention(patcher.clean_pattern(reader), part),
                   measure.attention(patched, part)]
            if task is not None:
                row += [measure.loss(patcher.last_logits(), part),
                        measure.loss(patcher.logits_with_pattern(reader, patched), part)]
            totals[(writer, reader)] += torch.tensor(row + [0.0] * (4 - len(row)))
            bar.update(1)
    bar.close()
    rows, joint = [], []
    for (group, reader), total in totals.items():
        clean_attention, patched_attention, loss_clean, loss_patched = (
            total / n_sequences).tolist()
        row = {"writer": "+".join(head_name(*w) for w in group), "reader": head_name(*reader),
               "writer_layer": group[0][0], "writer_heads": [w[1] for w in group],
               "reader_layer": reader[0], "reader_head": reader[1],
               "k_composition": (k_composition(weights, group[0], reader)
                                 if weights is not None and len(group) == 1 else None),
               "attention_clean": clean_attention, "attention_patched": patched_attention,
               "removed": (1.0 - patched_attention / clean_attention
                           if clean_attention > 0 else 0.0)}
        if task is not None:
            row.update(loss_clean=loss_clean, loss_patched=loss_patched)
        (rows if len(group) == 1 else joint).append(row)
    for table in (rows, joint):
        table.sort(key=lambda row: -(row["attention_clean"] - row["attention_patched"]))
    return InductionCircuit(rows, writers, readers,
                            "repeated random tokens" if task is None else repr(task.base),
                            _k_composition_grid(weights, heads), heads, joint)


def _candidates(model: Any, task: InContextTask | None, writers: list[Head] | None,
                readers: list[Head] | None, n: int, seed: int,
                seq_len: int | None) -> tuple[list[Head], list[Head]]:
    """Default writers and readers: the best heads by the scores of the measurement, a
    writer below the last layer and a reader above the first (a pair needs both)."""
    last = model.cfg.n_layers - 1
    if task is None:
        scores = induction_scores(model, seq_len=seq_len, seed=seed)
        by_writer = scores.top(len(scores.rows), "previous_token")
        by_reader = scores.top(len(scores.rows), "induction")
    else:
        ranking = rank_heads(model, task, seed=seed)
        by_writer = [(row["layer"], row["head"]) for row in ranking.rows]
        by_reader = [(row["layer"], row["head"]) for row in
                     sorted(ranking.rows, key=lambda row: -row["causal_induction"])]
    return (writers or [h for h in by_writer if h[0] < last][:n],
            readers or [h for h in by_reader if h[0] > 0][:n])


class _Measure:
    """The reader's induction attention, summed over a slice of the sequences, and the
    task's loss at the query."""

    def __init__(self, targets: torch.Tensor, task: InContextTask | None = None,
                 target_law: torch.Tensor | None = None):
        self.targets, self.task, self.target_law = targets, task, target_law

    def attention(self, pattern: torch.Tensor, part: slice) -> float:
        """Sum over the slice's sequences of the mean attention onto the targets."""
        targets = self.targets[part].to(pattern.device)  # [B, L, L] mask over (query, key)
        rows = targets.any(-1)
        mass = (pattern * targets).sum(-1)  # [B, L]
        return float(((mass * rows).sum(-1) / rows.sum(-1).clamp_min(1)).sum())

    def loss(self, logits: torch.Tensor, part: slice) -> float:
        last = logits[:, -1] if logits.ndim == 3 else logits
        log_probs = torch.log_softmax(self.task.answer_logits(last).double(), dim=-1).cpu()
        return float(-(self.target_law[part] * log_probs).sum())


def _sequences(model: Any, native: Any, task: InContextTask | None, n: int,
               seq_len: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, _Measure]:
    """(clean, corrupted, measure): repeated random tokens, or the task's samples."""
    if task is None:
        bos = model_bos(native)
        n_ctx = native.cfg.n_ctx - (bos is not None)
        k = (seq_len // 2) if seq_len is not None else min(50, n_ctx // 2)
        if 2 * k > n_ctx or k < 2:
            raise ValueError(f"seq_len must be even and in 4..{n_ctx}, got {seq_len}")
        pool = ordinary_tokens(native)
        clean = repeated_sequences(pool, n, k, bos, seeded(seed))
        corrupted = repeated_sequences(pool, n, k, bos, seeded(seed, 1))
        offset, length = int(bos is not None), clean.shape[1]
        targets = torch.zeros(length, length, dtype=torch.bool)
        second = torch.arange(offset + k, offset + 2 * k)
        targets[second, second - k + 1] = True
        return clean, corrupted, _Measure(targets.expand(n, length, length))
    batch = task.sample(n, generator=seeded(seed))
    corrupted = task.sample(n, generator=seeded(seed, 1)).tokens
    length, offset = batch.tokens.shape[1], task.position_offset
    targets = torch.zeros(n, length, length, dtype=torch.bool)
    targets[:, -1, offset:] = matched_positions(task, task.symbols(batch.tokens))
    return batch.tokens, corrupted, _Measure(targets, task, batch.target.double())
