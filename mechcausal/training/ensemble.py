"""Many independent models trained as one batched computation.

N disentangled transformers of the same shape (different seeds, graphs or priors of
the same sizes) have their parameters stacked along a leading member dimension by
``torch.func.stack_module_state``; the forward is ``torch.func.vmap`` of one member's
hook-free logits (``functional_call``), so one optimiser step updates all N at the cost
of one larger step. :func:`mechcausal.train` sums the members' losses, so each member's
gradient is exactly its own, and element-wise optimisers (SGD, Adam, AdamW) keep the
members independent. Members come back out as ordinary models with
:meth:`Ensemble.member`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..models.disentangled import DisentangledTransformer
from ..models.fastpath import score_table
from ..models.pattern_mixing import exp_table_fits
from ..ops import as_int

# members' attention-sized float tensors per vmap chunk on CPU, ~16 MB (the measured
# best: all members at once overflows the caches)
_CPU_CHUNK_ELEMENTS = 2**22
# what members must share to be stacked (their initialisation and seed may differ)
_SHAPE_FIELDS = ("d_vocab", "n_ctx", "heads", "readout", "smoothing")


class _Logits(nn.Module):
    """One member's unchecked logits, so ``functional_call`` can swap its parameters in
    (token checks stay outside: their data-dependent branch cannot run under vmap)."""

    def __init__(self, model: DisentangledTransformer):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, all_positions: bool,
                exp_table: bool | None) -> torch.Tensor:
        return self.model.logits(tokens, all_positions, exp_table)


def _set_parameter(module: nn.Module, name: str, value: nn.Parameter) -> None:
    """Replace the parameter called ``name`` (dotted) of ``module`` by ``value``."""
    owner_name, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(owner_name), leaf, value)


class Ensemble(nn.Module):
    """N same-shaped :class:`DisentangledTransformer` members with stacked parameters.

    :meth:`stacked_parameters` maps the members' parameter names to the stacked tensors
    [N, ...] (``ensemble.parameters()`` yields the same tensors);
    ``mc.train(ensemble, tasks, config)`` trains them, one task per member.

    Args:
        members: disentangled transformers with identical sizes, heads, readout,
            smoothing and dtype (their initialisation and seeds may differ).
    """

    def __init__(self, members: Sequence[DisentangledTransformer]):
        super().__init__()
        is_sequence = isinstance(members, Sequence) and not isinstance(members, (str, bytes))
        members = list(members) if is_sequence else members
        if not isinstance(members, list) or not members:
            raise ValueError(f"members must be a non-empty sequence of "
                             f"DisentangledTransformers, got {members!r}")
        for k, member in enumerate(members):
            if not isinstance(member, DisentangledTransformer):
                raise TypeError(f"members[{k}] is a {type(member).__name__}; an Ensemble stacks "
                                f"DisentangledTransformers (train other models one by one)")
        first = members[0].cfg.to_dict()
        for k, member in enumerate(members):
            config = member.cfg.to_dict()
            for key in _SHAPE_FIELDS:
                if config[key] != first[key]:
                    raise ValueError(f"members[{k}] has {key}={config[key]!r}, members[0] "
                                     f"{first[key]!r}; members must share "
                                     f"{', '.join(_SHAPE_FIELDS)} and dtype")
            dtype, first_dtype = (next(m.parameters()).dtype for m in (member, members[0]))
            if dtype != first_dtype:
                raise ValueError(f"members[{k}] is {dtype}, members[0] {first_dtype}; members "
                                 f"must share their dtype")
        stacked, _ = torch.func.stack_module_state(members)
        # one member's structure holding the stacked tensors under the members' names:
        # the optimiser, .to() and state_dict see them; functional_call swaps each
        # member's slice in under vmap
        self._stacked = _Logits(copy.deepcopy(members[0]))
        for name, value in stacked.items():
            _set_parameter(self._stacked.model, name, nn.Parameter(value.detach()))
        self._member_configs = [copy.deepcopy(member.cfg) for member in members]

    def __len__(self) -> int:
        return len(self._member_configs)

    @property
    def cfg(self):
        """Member 0's config (all members share its sizes)."""
        return self._stacked.model.cfg

    def stacked_parameters(self) -> dict[str, nn.Parameter]:
        """Member parameter name (``blocks.0.attn.A``, ...) -> its stacked tensor [N, ...]."""
        return dict(self._stacked.model.named_parameters())

    def forward(self, tokens: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        """tokens [N, B, L] (one batch per member) -> logits [N, B, S] at the last
        position, or [N, B, L, S] with ``all_positions``."""
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3 or tokens.shape[0] != len(self):
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must have shape [{len(self)}, batch, pos] (one batch per "
                             f"member), got {shape}")
        model = self._stacked.model
        model.check_tokens(tokens.flatten(0, 1))
        tokens = tokens.long()
        # decided for all members here: the check's host sync cannot run under vmap
        exp_table = False
        if tokens.device.type == "cpu" and model.cfg.n_layers == 2:
            exp_table = bool(exp_table_fits(score_table(
                model.blocks[0].attn.A.detach(), model.cfg.d_vocab, tokens.shape[-1])))
        params = {f"model.{name}": param for name, param in self.stacked_parameters().items()}

        def one(member_params: dict[str, torch.Tensor], member_tokens: torch.Tensor):
            return torch.func.functional_call(self._stacked, member_params,
                                              (member_tokens, all_positions, exp_table))

        chunk_size = None
        if tokens.device.type == "cpu":
            # a few members at a time: Figure 9's 20 graphs at batch 1024 ran 9 at a time
            # 1.25x faster than serially, all 20 at once 0.8x (benchmarks/README.md)
            B, L = tokens.shape[1:]
            chunk_size = max(1, _CPU_CHUNK_ELEMENTS // max(1, B * L * L))
        return torch.func.vmap(one, chunk_size=chunk_size)(params, tokens)

    def member(self, index: int) -> DisentangledTransformer:
        """Member ``index`` as an independent ordinary model (a copy)."""
        if not 0 <= as_int(index, "index") < len(self):
            raise ValueError(f"index must be in 0..{len(self) - 1}, got {index!r}")
        model = copy.deepcopy(self._stacked.model)
        for name, param in self.stacked_parameters().items():
            _set_parameter(model, name, nn.Parameter(param.detach()[index].clone()))
        model.cfg = copy.deepcopy(self._member_configs[index])
        return model

    def members(self) -> list[DisentangledTransformer]:
        """Every member as an ordinary model (copies)."""
        return [self.member(k) for k in range(len(self))]
