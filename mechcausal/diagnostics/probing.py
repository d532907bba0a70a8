"""Linear probes: where in a model a feature of the task becomes linearly readable.

The paper's layer 1 copies the parent's token x_{p(i)} into position i so that layer 2
can match it against the query; :func:`probe` asks at which hook that token (or another
target) can be read off every context position by a linear map, and
:func:`probe_sweep` asks it at every residual and attention-output hook.

A probe is a multinomial logistic regression on the standardised activations, one map
shared by all context positions, with a small ridge penalty, fitted by
``torch.optim.LBFGS`` (strong-Wolfe line search) on the whole training set. The problem
is convex, so the solver returns its unique optimum; torch's L-BFGS does that without
a new dependency (scikit-learn's ``lbfgs`` solver computes the same probe), on any
device.

Every probe comes with a *control task* in the sense of Hewitt & Liang (2019): the
labels replaced by a fixed random function of the position's own token, c(i, x_i) (a
random table over (position, token) pairs with the target's number of classes, on the
positions where the target is defined). The control can only be learned by memorising
the token at each position, which one linear map shared by all positions does poorly;
a probe that reads the target scores high on it and low on the control, and
``selectivity = accuracy - control``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import plots
from ..data.tasks import Batch, InContextTask, check_task
from ..models.base import check_sizes
from ..ops import (
    as_int,
    check_bool,
    check_memory,
    check_nonnegative_int,
    check_positive_int,
    seeded,
    to_json,
)
from ..progress import progress_bar
from .attention import check_model

Target = str | Callable[[Batch], torch.Tensor]
TARGETS = ("token", "parent_token", "grandparent_token", "position", "query_match")
_CHUNK = 1024  # sequences per forward pass
_L2 = 1e-3  # ridge penalty on the standardised features' weights


# ---------------------------------------------------------------------- labels
def _parent_symbols(symbols: torch.Tensor, parents: Sequence[Sequence[int]], slot: int,
                    positions: int) -> torch.Tensor:
    """Labels [n, positions]: the slot-th parent's symbol, -1 where there is none."""
    labels = torch.full((symbols.shape[0], positions), -1, dtype=torch.long)
    for i in range(positions):
        if len(parents[i]) > slot:
            labels[:, i] = symbols[:, parents[i][slot]]
    return labels


def target_labels(task: InContextTask, batch: Batch, target: Target,
                  slot: int | None = None) -> tuple[torch.Tensor, int]:
    """Labels [n, P] over the task's first P positions (-1: no label there) and the
    number of classes, for ``target`` on ``batch`` (sampled from ``task``)."""
    symbols = task.symbols(batch.tokens)
    T, S = task.context_length, task.vocab_size
    parents = task.graph.parents
    if callable(target):
        labels = target(Batch(symbols, batch.target, batch.pi))
        if not isinstance(labels, torch.Tensor) or labels.ndim != 2 or (
                labels.shape[0] != symbols.shape[0]) or labels.shape[1] not in (
                T, task.base.input_length) or labels.dtype.is_floating_point:
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels)
            raise ValueError(f"the target function must return integer labels [n, {T}] (or "
                             f"[n, {task.base.input_length}] with the query), -1 to ignore; "
                             f"got {shape}")
        labels = labels.long().cpu()
        if bool((labels < -1).any()):
            raise ValueError("target labels must be class indices >= 0, or -1 to ignore")
        return labels, max(2, int(labels.max().item()) + 1)
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS} or a function batch -> labels, "
                         f"got {target!r}")
    if target in ("grandparent_token", "query_match") and task.kind != "tree":
        raise ValueError(f"target {target!r} needs a tree task (one parent per position)")
    if slot is not None and target != "parent_token":
        raise ValueError(f"slot applies to target='parent_token', not {target!r}")
    if target == "token":
        return symbols[:, :T].clone(), S
    if target == "position":
        return torch.arange(T).expand(symbols.shape[0], T).clone(), T
    if target == "parent_token":
        slots = max(len(ps) for ps in parents[:T])
        if slot is None and slots > 1:
            raise ValueError(f"the graph gives positions up to {slots} parents: pass slot=0.."
                             f"{slots - 1} (the slot-th parent in sorted order)")
        slot = 0 if slot is None else check_nonnegative_int(slot, "slot")
        if slot >= max(1, slots):
            raise ValueError(f"slot must be in 0..{max(1, slots) - 1}, got {slot}")
        return _parent_symbols(symbols, parents, slot, T), S
    parent_labels = _parent_symbols(symbols, parents, 0, T)
    if target == "grandparent_token":
        grandparents = [parents[ps[0]] if ps else () for ps in parents[:T]]
        return _parent_symbols(symbols, grandparents, 0, T), S
    # query_match: whether the parent's symbol is the query's (the feature layer 2 keys on)
    match = (parent_labels == symbols[:, T : T + 1]).long()
    return torch.where(parent_labels >= 0, match, -1), 2


def control_labels(task: InContextTask, batch: Batch, labels: torch.Tensor, n_classes: int,
                   seed: int) -> torch.Tensor:
    """The control task: c(i, x_i) from a fixed random table over (position, symbol),
    classes as many as the target's, where the target has a label (else -1)."""
    symbols = task.symbols(batch.tokens)[:, : labels.shape[1]]
    generator = seeded(seed, 7919)
    table = torch.randint(0, n_classes, (labels.shape[1], task.vocab_size), generator=generator)
    control = table[torch.arange(labels.shape[1]), symbols]
    return torch.where(labels >= 0, control, -1)


# ---------------------------------------------------------------------- activations
def _features(activation: torch.Tensor, hook: str, head: int | None) -> torch.Tensor:
    """A hook's activation as [B, L', d] (position second): heads of [B, L', H, d] hooks
    flattened or one selected. An attention hook [B, H, Q, K] gives position i its row
    (where i attends) and how much the last position (the query) attends to i: the
    key-side feature layer 2's induction head uses."""
    if hook.endswith(("hook_pattern", "hook_attn_scores")):
        activation = torch.where(torch.isfinite(activation), activation, 0.0)
        from_query = activation[:, :, -1].unsqueeze(-1)  # [B, H, K, 1]
        activation = torch.cat([activation, from_query], dim=-1).transpose(1, 2)
    if activation.ndim == 4:
        if head is not None:
            if not 0 <= head < activation.shape[2]:
                raise ValueError(f"head must be in 0..{activation.shape[2] - 1} for {hook}, "
                                 f"got {head}")
            return activation[:, :, head]
        return activation.flatten(2)
    if activation.ndim != 3:
        raise ValueError(f"{hook} holds [{', '.join(map(str, activation.shape))}]; a probe "
                         f"reads activations [batch, position, ...]")
    if head is not None:
        raise ValueError(f"head= selects a head of a per-head hook (hook_z, hook_result, "
                         f"hook_pattern); {hook} has none")
    return activation


@torch.no_grad()
def activations(model: Any, task: InContextTask, hooks: Sequence[str], tokens: torch.Tensor,
                positions: int, head: int | None = None) -> dict[str, torch.Tensor]:
    """hook -> features [n, positions, d] (float32, CPU) at the task's first
    ``positions`` positions (a BOS token skipped), computed ``_CHUNK`` sequences at a
    time."""
    available = getattr(model, "hook_dict", {})
    for hook in hooks:
        if not isinstance(hook, str):
            raise TypeError(f"hook must be a hook name such as 'blocks.0.hook_resid_post', "
                            f"got {hook!r}")
        if hook not in available:
            similar = [name for name in available if name.endswith(hook.rsplit(".", 1)[-1])]
            raise ValueError(f"the model has no hook {hook!r}; e.g. {similar[:4] or list(available)[:4]}")
    device = next(model.parameters()).device
    offset = task.position_offset
    parts: dict[str, list[torch.Tensor]] = {hook: [] for hook in hooks}
    for start in range(0, tokens.shape[0], _CHUNK):
        chunk = tokens[start : start + _CHUNK].to(device)
        _, cache = model.run_with_cache(chunk, names_filter=lambda name: name in parts)
        for hook in hooks:
            features = _features(cache[hook], hook, head)
            parts[hook].append(features[:, offset : offset + positions].float().cpu())
    return {hook: torch.cat(chunks) for hook, chunks in parts.items()}


# ---------------------------------------------------------------------- the probe
@dataclass
class LinearProbe:
    """A fitted probe: logits = ((x - mean) / scale) @ weight + bias."""

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """features [..., d] -> predicted class [...]."""
        return (((features - self.mean) / self.scale) @ self.weight + self.bias).argmax(-1)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, n_classes: int,
              max_iter: int = 200) -> LinearProbe:
    """Multinomial logistic regression with a ridge penalty by L-BFGS: features [N, d],
    labels [N] in 0..n_classes-1."""
    mean = features.mean(0)
    scale = features.std(0).clamp_min(1e-6)
    x = (features - mean) / scale
    weight = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-10,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, labels)
        loss = loss + _L2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(mean, scale, weight.detach(), bias.detach())


@dataclass
class ProbeResult:
    """A linear probe of ``target`` at ``hook`` (see the module notes).

    Attributes:
        accuracy: held-out accuracy over every labelled (sequence, position).
        chance: the majority class's share of the held-out labels.
        control_accuracy: the same probe's held-out accuracy on the control task.
        selectivity: ``accuracy - control_accuracy``.
        per_position: held-out accuracy at each task position (None where the target
            has no label, e.g. at roots for ``parent_token``).
        n_classes, n_train, n_test: classes and labelled items used.
        hook, target, head, slot: what was probed.
    """

    hook: str
    target: str
    accuracy: float
    chance: float
    control_accuracy: float
    selectivity: float
    per_position: list[float | None]
    n_classes: int
    n_train: int
    n_test: int
    head: int | None = None
    slot: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return to_json({key: getattr(self, key) for key in (
            "hook", "target", "head", "slot", "accuracy", "chance", "control_accuracy",
            "selectivity", "per_position", "n_classes", "n_train", "n_test")})

    def plot(self):
        """Held-out accuracy by position, with the control's accuracy and chance."""
        return plots.probe_by_position(self)


def _accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return (predicted == labels).float().mean().item()


def _name(target: Target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", "custom")


def _sample(task: InContextTask, n_train: int, n_test: int, seed: int) -> tuple[Batch, Batch]:
    train = task.sample(check_positive_int(n_train, "n_train"),
                        generator=seeded(seed))
    test = task.sample(check_positive_int(n_test, "n_test"),
                       generator=seeded(seed, 1))
    return train, test


def _check_memory(n: int, positions: int, model: Any, hooks: int = 1) -> None:
    width = getattr(model.cfg, "d_model", 0)
    check_memory(4 * n * positions * width * hooks, "cpu",
                 f"holding n_train={n} sequences x {positions} positions x d_model={width} "
                 f"features at {hooks} hook(s)", "lower n_train")


def _probe_features(hook: str, target: str, train: tuple[torch.Tensor, torch.Tensor],
                    test: tuple[torch.Tensor, torch.Tensor],
                    controls: tuple[torch.Tensor, torch.Tensor], n_classes: int,
                    head: int | None, slot: int | None) -> ProbeResult:
    """Fit and score a probe and its control on features [n, P, d] and labels [n, P]."""
    (train_x, train_y), (test_x, test_y) = train, test
    control_train, control_test = controls
    keep, held = train_y >= 0, test_y >= 0
    if not bool(keep.any()) or not bool(held.any()):
        raise ValueError(f"target {target!r} has no label at any position of this task")
    probe = fit_probe(train_x[keep], train_y[keep], n_classes)
    predicted = probe.predict(test_x)
    control = fit_probe(train_x[keep], control_train[keep], n_classes)
    accuracy = _accuracy(predicted[held], test_y[held])
    control_accuracy = _accuracy(control.predict(test_x[held]), control_test[held])
    chance = (torch.bincount(test_y[held], minlength=n_classes).max() / held.sum()).item()
    per_position = [
        _accuracy(predicted[:, i][held[:, i]], test_y[:, i][held[:, i]]) if held[:, i].any()
        else None for i in range(test_y.shape[1])]
    return ProbeResult(hook, target, accuracy, chance, control_accuracy,
                       accuracy - control_accuracy, per_position, n_classes,
                       int(keep.sum()), int(held.sum()), head, slot)


def probe(model: Any, task: InContextTask, hook: str, target: Target, *, n_train: int = 8192,
          n_test: int = 4096, seed: int = 0, head: int | None = None,
          slot: int | None = None) -> ProbeResult:
    """Probe ``target`` at ``hook`` of every context position (see the module notes).

    Args:
        model: ours, an exported or standard TL model, or a pretrained LM with an
            in-vocabulary task (positions are the task's; a BOS token is skipped).
        task: supplies the sequences (``n_train`` to fit, ``n_test`` held out).
        hook: a hook name with activations [batch, position, ...], e.g.
            ``"blocks.0.hook_resid_post"``, ``"blocks.0.attn.hook_z"`` (all heads, or
            ``head=h``), ``"blocks.0.attn.hook_pattern"`` (read by query position).
        target: ``"token"`` (x_i), ``"parent_token"`` (x_{p(i)}, roots excluded; for
            several parents pass ``slot``), ``"grandparent_token"``, ``"position"``,
            ``"query_match"`` (x_{p(i)} equals the query; trees), or a function of a
            batch in the task's own symbols returning labels [n, T] (-1: none).
        seed: seeds the samples and the control task.
    """
    check_model(model)
    check_task(task)
    check_sizes(model, task)
    seed = as_int(seed, "seed")
    if head is not None:
        head = check_nonnegative_int(head, "head")
    train, test = _sample(task, n_train, n_test, seed)
    train_y, n_classes = target_labels(task, train, target, slot)
    test_y, _ = target_labels(task, test, target, slot)
    positions = train_y.shape[1]
    _check_memory(train.tokens.shape[0], positions, model)
    train_x = activations(model, task, [hook], train.tokens, positions, head)[hook]
    test_x = activations(model, task, [hook], test.tokens, positions, head)[hook]
    controls = (control_labels(task, train, train_y, n_classes, seed),
                control_labels(task, test, test_y, n_classes, seed))
    return _probe_features(hook, _name(target), (train_x, train_y), (test_x, test_y),
                           controls, n_classes, head, slot)


def default_hooks(model: Any) -> list[str]:
    """Every residual and attention-output hook the model has, in forward order: the
    embedding, the stream entering layer 0, then per layer its attention output (and MLP
    output) and the stream after it."""
    available = getattr(model, "hook_dict", {})
    names = ["hook_embed", "blocks.0.hook_resid_pre"]
    # an attention-only HookedTransformer (TL 3.x) has MLP hooks that never fire
    mlp = not getattr(model.cfg, "attn_only", False)
    for layer in range(model.cfg.n_layers):
        names += [f"blocks.{layer}.hook_attn_out"] + [f"blocks.{layer}.hook_mlp_out"] * mlp + [
            f"blocks.{layer}.hook_resid_post"]
    return [name for name in names if name in available]


@dataclass
class ProbeSweep:
    """One probe per hook (forward order): where the target becomes readable."""

    results: list[ProbeResult]

    def __getitem__(self, hook: str) -> ProbeResult:
        for result in self.results:
            if result.hook == hook:
                return result
        raise KeyError(f"no probe at {hook!r}; probed: {[r.hook for r in self.results]}")

    def table(self) -> list[dict[str, Any]]:
        """One row per hook: accuracy, control, selectivity, chance."""
        return [{"hook": r.hook, "accuracy": r.accuracy, "control": r.control_accuracy,
                 "selectivity": r.selectivity, "chance": r.chance} for r in self.results]

    def to_dict(self) -> dict[str, Any]:
        return {"results": [result.to_dict() for result in self.results]}

    def plot(self):
        """Accuracy and control accuracy at each hook, with chance."""
        return plots.probe_sweep(self.results)


def probe_sweep(model: Any, task: InContextTask, target: Target,
                hooks: Sequence[str] | None = None, *, n_train: int = 8192,
                n_test: int = 4096, seed: int = 0, slot: int | None = None,
                progress: bool = False) -> ProbeSweep:
    """:func:`probe` of ``target`` at every hook of :func:`default_hooks` (or ``hooks``),
    on the same samples: accuracy, control and selectivity layer by layer
    (``progress``: a bar over the hooks' probes)."""
    check_task(task)
    check_bool(progress, "progress")
    seed = as_int(seed, "seed")
    check_model(model)
    if hooks is not None and (isinstance(hooks, (str, bytes)) or not isinstance(hooks, Sequence)):
        raise TypeError(f"hooks must be a list of hook names (or None for every residual and "
                        f"attention-output hook), got {hooks!r}")
    hooks = default_hooks(model) if hooks is None else list(hooks)
    if not hooks:
        raise ValueError("no hooks to probe: the model has none of the residual hooks; "
                         "pass hooks=[...]")
    train, test = _sample(task, n_train, n_test, seed)
    train_y, n_classes = target_labels(task, train, target, slot)
    test_y, _ = target_labels(task, test, target, slot)
    positions = train_y.shape[1]
    _check_memory(train.tokens.shape[0], positions, model, len(hooks))
    train_x = activations(model, task, hooks, train.tokens, positions)
    test_x = activations(model, task, hooks, test.tokens, positions)
    controls = (control_labels(task, train, train_y, n_classes, seed),
                control_labels(task, test, test_y, n_classes, seed))
    results = []
    bar = progress_bar(len(hooks), progress, "probes")
    for hook in hooks:
        results.append(_probe_features(hook, _name(target), (train_x[hook], train_y),
                                       (test_x[hook], test_y), controls, n_classes, None, slot))
        bar.update(1)
    bar.close()
    return ProbeSweep(results)


__all__ = ["LinearProbe", "ProbeResult", "ProbeSweep", "TARGETS", "activations",
           "control_labels", "default_hooks", "fit_probe", "probe", "probe_sweep",
           "target_labels"]
