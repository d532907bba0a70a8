"""Many independent models trained as one batched computation.

N disentangled transformers of the same shape (different seeds, graphs or priors of
the same sizes) keep their parameters stacked along a leading model dimension; the
forward is ``torch.func.vmap`` of the single model's hook-free fast path, so one
optimiser step updates all N at the cost of one larger step. Losses are summed, so
each member's gradient is exactly its own; element-wise optimisers (SGD, Adam, AdamW)
then keep the members independent. Members come back out as ordinary models with
:meth:`Ensemble.member` and train / evaluate / save like any other.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from .allocator import keep_freed_memory
from .attention import mean_attention, parent_attention
from .checkpoint import save_checkpoint
from .config import TrainConfig
from .history import History
from .models.disentangled import DisentangledTransformer
from .models.fastpath import score_table, two_layer_last_stream
from .models.pattern_mixing import exp_table_fits
from .prefetch import maybe_prefetched
from .progress import progress_bar
from .tasks import Batch, InContextTree, cross_entropy, sample_stacked
from .train import (NonFiniteLossError, check_compatible, lr_factor, make_optimizer,
                    target_cross_entropy)


_CPU_CHUNK_ELEMENTS = 2**22  # ~16 MB per attention-sized float tensor (measured best)


class _Logits(nn.Module):
    """Fast-path logits of one member, so ``functional_call`` can swap its parameters.
    Token checks stay outside: their data-dependent branch cannot run under vmap."""

    def __init__(self, model: DisentangledTransformer):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, exp_table: bool) -> torch.Tensor:
        return self.model.readout(two_layer_last_stream(self.model, tokens, exp_table))


class Ensemble(nn.Module):
    """N same-shaped :class:`DisentangledTransformer` members with stacked parameters.

    Args:
        members: models with identical ``cfg`` sizes and heads.
    """

    def __init__(self, members: Sequence[DisentangledTransformer]):
        super().__init__()
        if not members:
            raise ValueError("an Ensemble needs at least one member, got none")
        if members[0].cfg.n_layers != 2:
            raise ValueError(f"Ensemble members must have two layers (the fast path), got "
                             f"heads={members[0].cfg.heads}")
        shape = members[0].cfg.to_dict() | {"seed": None}
        for k, member in enumerate(members):
            if member.cfg.to_dict() | {"seed": None} != shape:
                raise ValueError(
                    f"member {k} has config {member.cfg.to_dict()}, member 0 has "
                    f"{members[0].cfg.to_dict()}; members must share sizes, heads and readout"
                )
        self.template = copy.deepcopy(members[0])
        names = [name for name, _ in self.template.named_parameters()]
        self.stacked = nn.ParameterDict({
            name.replace(".", "__"): nn.Parameter(
                torch.stack([dict(m.named_parameters())[name].detach() for m in members]))
            for name in names
        })
        self._names = names
        self._logits = _Logits(self.template)

    def __len__(self) -> int:
        return next(iter(self.stacked.values())).shape[0]

    @property
    def cfg(self):
        return self.template.cfg

    def _params(self) -> dict[str, torch.Tensor]:
        return {f"model.{name}": self.stacked[name.replace(".", "__")] for name in self._names}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, B, L] (one batch per member) -> last-position logits [N, B, S]."""
        if tokens.ndim != 3 or tokens.shape[0] != len(self):
            raise ValueError(f"tokens must have shape [{len(self)}, batch, pos], "
                             f"got {tuple(tokens.shape)}")
        self.template.check_tokens(tokens.flatten(0, 1))

        # decided for all members here: the check's host sync cannot run under vmap
        exp_table = tokens.device.type == "cpu" and bool(exp_table_fits(score_table(
            self.stacked["blocks__0__attn__A"].detach(), self.cfg.d_vocab, tokens.shape[-1])))

        def one(params: dict[str, torch.Tensor], member_tokens: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(self._logits, params, (member_tokens, exp_table))

        chunk_size = None
        if tokens.device.type == "cpu":
            # a few members at a time: Figure 9's 20 graphs at batch 1024 ran 9 at a time
            # 1.25x faster than serially, 4 at a time 1.1x, all 20 at once 0.8x
            B, L = tokens.shape[1:]
            chunk_size = max(1, _CPU_CHUNK_ELEMENTS // (B * L * L))
        return torch.func.vmap(one, chunk_size=chunk_size)(self._params(), tokens)

    def member(self, index: int) -> DisentangledTransformer:
        """Member ``index`` as an independent ordinary model (a copy)."""
        if not 0 <= index < len(self):
            raise ValueError(f"index must be in 0..{len(self) - 1}, got {index}")
        model = copy.deepcopy(self.template)
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(self.stacked[name.replace(".", "__")][index])
        return model


def train_ensemble(
    ensemble: Ensemble,
    tasks: Sequence[InContextTree],
    config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
) -> list[History]:
    """Train every member on its own task (same sizes) in one batched loop.

    The tasks may differ in graph but share vocabulary, context length and prior, so
    one vectorised draw samples every member's batch (:func:`sample_stacked`); each
    member has its own held-out set and :class:`History`. With ``checkpoint_dir``,
    member k is saved as an ordinary checkpoint ``member_{k:03d}.pt``.
    """
    config = config or TrainConfig()
    if config.data != "fresh":
        raise ValueError(f"train_ensemble draws fresh batches every step; got data="
                         f"{config.data!r}, use data='fresh'")
    if len(tasks) != len(ensemble):
        raise ValueError(f"got {len(tasks)} tasks for {len(ensemble)} members; pass one per member")
    for task in tasks:
        check_compatible(ensemble.template, task)
    device = torch.device(config.device)
    if device.type == "cpu":
        keep_freed_memory()
    ensemble.to(device)
    optimizer = make_optimizer(list(ensemble.stacked.values()), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    generator = torch.Generator(device=device).manual_seed(config.seed)
    held_out = [task.sample(config.eval_samples, generator=torch.Generator(device=device)
                            .manual_seed(config.seed + 1_000_003 + k), device=device)
                for k, task in enumerate(tasks)]
    histories = [History(
        bayes_loss=cross_entropy(task.bayes(b.tokens), b.target).item(),
        unigram_loss=cross_entropy(task.unigram(b.tokens), b.target).item(),
    ) for task, b in zip(tasks, held_out)]
    losses = torch.zeros(config.steps, len(tasks), device=device)
    seconds = 0.0

    def record(step: int) -> None:
        with torch.no_grad():
            for k, (task, batch, history) in enumerate(zip(tasks, held_out, histories)):
                model = ensemble.member(k).eval()
                logits = model(batch.tokens)
                history.eval_step.append(step)
                history.eval_time.append(seconds)
                history.test_loss.append(
                    target_cross_entropy(logits, batch.target).mean().item())
                pattern = mean_attention(model, batch.tokens, layer=config.layer)
                history.parent_attention.append(parent_attention(pattern, task.graph))

    def draw() -> Iterator[Batch]:
        while True:
            yield sample_stacked(list(tasks), config.batch_size, generator, device)

    record(0)
    bar = progress_bar(config.steps, config.progress, "ensemble")
    try:
        with maybe_prefetched(draw(), bool(config.prefetch)) as batches:  # a thread
            for step in range(config.steps):
                started = time.perf_counter()
                batch = next(batches)
                logits = ensemble(batch.tokens)
                per_member = target_cross_entropy(logits, batch.target).mean(-1)  # [N]
                if not bool(torch.isfinite(per_member).all()):
                    bad = int((~torch.isfinite(per_member)).nonzero()[0])
                    raise NonFiniteLossError(f"member {bad}: loss became "
                                             f"{per_member[bad].item()} at step {step}")
                optimizer.zero_grad(set_to_none=True)
                per_member.sum().backward()
                optimizer.step()
                scheduler.step()
                losses[step] = per_member.detach()
                seconds += time.perf_counter() - started
                if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                    record(step + 1)
                    mean_parent = sum(h.parent_attention[-1] for h in histories) / len(histories)
                    bar.set_postfix(parent=f"{mean_parent:.3f}")
                bar.update(1)
    finally:
        bar.close()
    for k, history in enumerate(histories):
        history.train_loss = losses[:, k].tolist()
        history.wall_time = seconds
        history.steps_per_second = config.steps / seconds if seconds > 0 else float("nan")
        if checkpoint_dir is not None:
            save_checkpoint(Path(checkpoint_dir) / f"member_{k:03d}.pt", ensemble.member(k),
                            tasks[k], config, history)
    return histories
