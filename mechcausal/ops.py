"""Tiny helpers every layer shares: short softmaxes, cross-entropies, argument checks
and JSON conversion. Nothing here knows about tasks, models or training.

``torch.softmax`` / ``torch.log_softmax`` over 10-21 entries (vocabularies, sequence
positions) run several times slower on CPU than the few element-wise ops below
(benchmarks/README.md); the maximum is subtracted without a gradient, since it
cancels exactly.
"""

from __future__ import annotations

import importlib.metadata
import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch


# ---------------------------------------------------------------------- softmax
def softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension: [..., n] -> [..., n]."""
    exp = (x - x.detach().amax(-1, keepdim=True)).exp()
    return exp / exp.sum(-1, keepdim=True)


def log_softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the last dimension: [..., n] -> [..., n]."""
    shifted = x - x.detach().amax(-1, keepdim=True)
    return shifted - shifted.exp().sum(-1, keepdim=True).log()


# ---------------------------------------------------------------------- losses
def target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-sum_s target_s log softmax(logits)_s`` per row: logits, target [..., S] -> [...]."""
    return -(target * log_softmax_last(logits)).sum(-1)


def cross_entropy(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_k y_k log f_k`` for probabilities ``probs`` and a target
    law ``target`` [n, S] (a 0-dim tensor, nats). Probabilities are floored at 1e-30, so
    an estimator that gives a target token probability 0 costs 69 nats, not inf."""
    return -(target * torch.log(probs.clamp_min(1e-30))).sum(-1).mean()


# ---------------------------------------------------------------------- memory
def available_bytes(device: torch.device | str | None) -> int | None:
    """Memory a new allocation can take on ``device``: free GPU memory for CUDA, the
    kernel's MemAvailable for the CPU; None where it cannot be told."""
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(needed: int, device: torch.device | str | None, what: str,
                 advice: str) -> None:
    """ValueError before ``what`` allocates ``needed`` bytes that ``device`` does not have
    (the figure, what is available, and ``advice``). Small requests are not checked."""
    if needed < 2**28:  # 256 MB: always fine, and reading the free memory costs time
        return
    free = available_bytes(device)
    if free is not None and needed > free:
        raise ValueError(f"{what} needs about {needed / 1e9:.1f} GB, more than the "
                         f"{free / 1e9:.1f} GB available on {device or 'cpu'}; {advice}")


# ---------------------------------------------------------------------- checks
def as_int(value: Any, name: str) -> int:
    """``value`` as an int (numpy integers included); TypeError naming ``name`` for
    anything else (bools and floats too: ``1.5`` or ``True`` as a size is a mistake)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    return int(value)


def check_positive_int(value: Any, name: str) -> int:
    """``value`` if it is an int >= 1 (TypeError / ValueError naming ``name`` otherwise)."""
    value = as_int(value, name)
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def check_nonnegative_int(value: Any, name: str) -> int:
    """``value`` if it is an int >= 0."""
    value = as_int(value, name)
    if value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value}")
    return value


def seeded(seed: Any, offset: int = 0, device: torch.device | str | None = None
           ) -> torch.Generator:
    """A generator seeded by ``seed + offset`` (``seed`` checked: an int)."""
    return torch.Generator(device=device).manual_seed(as_int(seed, "seed") + offset)


def check_layer_index(layer: Any, n_layers: int, name: str = "layer") -> int:
    """``layer`` as a 0-based index into ``n_layers`` layers (negative values count from
    the end, as in Python); ValueError naming the valid range."""
    layer = as_int(layer, name)
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"{name} must be in 0..{n_layers - 1} (or -{n_layers}..-1) for "
                         f"this model of {n_layers} layers, got {layer}")
    return layer % n_layers


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a bool (TypeError naming ``name`` otherwise: 0, 1, "yes" or a
    tensor as a switch is a mistake)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_number(value: Any, name: str, *, low: float | None = None,
                 high: float | None = None, low_open: bool = False,
                 high_open: bool = False) -> float:
    """``value`` as a finite float within the given bounds (a bound is closed unless
    its ``*_open`` flag is set); TypeError for non-numbers, ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} of type {type(value).__name__}")
    value = float(value)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        raise ValueError(f"{name} must be a finite number{_bounds(low, high, low_open, high_open)},"
                         f" got {value!r}")
    return value


FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # 3.4e38
FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)  # 1.2e-38, the smallest normal
# a Dirichlet concentration: sampling divides log-uniforms (>= -17 in float32) by it and
# the estimators add S of it, so both ends keep this much headroom inside float32
CONCENTRATION_RANGE = (1e-30, 1e30)


def check_float32(value: float, name: str, high: float = FLOAT32_MAX) -> float:
    """``value`` (a checked float) if float32 represents it: 0, or a magnitude between
    float32's smallest normal number and ``high`` (default float32's largest);
    ValueError naming the argument and the bound otherwise."""
    size = abs(value)
    if size > high:
        raise ValueError(f"{name}={value:g} is above {high:.3g}, the largest value it can "
                         f"take in float32 arithmetic")
    if 0 < size < FLOAT32_TINY:
        raise ValueError(f"{name}={value:g} is below {FLOAT32_TINY:.3g}, float32's smallest "
                         f"normal number (it would be rounded to 0)")
    return value


def check_concentration(value: Any, name: str = "alpha") -> float:
    """A Dirichlet concentration: a number in :data:`CONCENTRATION_RANGE`, within which
    float32 sampling and the count estimators stay finite."""
    value = check_number(value, name, low=0.0, low_open=True)
    low, high = CONCENTRATION_RANGE
    if not low <= value <= high:
        raise ValueError(f"{name}={value:g} is outside [{low:g}, {high:g}], the range in "
                         f"which float32 sampling and the count estimators stay finite")
    return value


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """`` > 0``, `` <= 1``, `` in [0, 1)``: the accepted range in words."""
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def check_instances(values: Any, name: str, kind: type, what: str) -> list[Any]:
    """``values`` (one ``kind`` instance, or an iterable of them) as a list; TypeError
    naming the argument, or the entry, that is not a ``kind`` (``what``: how the user
    spells the accepted type, e.g. ``"mc.Callback"``)."""
    if isinstance(values, kind):
        return [values]
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of {what}, got {values!r}")
    values = list(values)
    for k, value in enumerate(values):
        if not isinstance(value, kind):
            raise TypeError(f"{name}[{k}] is a {type(value).__name__}, not a {what}")
    return values


def check_choice(value: Any, name: str, allowed: Iterable[Any]) -> Any:
    """``value`` if it is one of ``allowed``; ValueError listing them otherwise."""
    allowed = tuple(allowed)
    try:
        ok = value in allowed
    except TypeError:  # an unhashable value in a set-like container
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def register(table: dict[str, Any], entry: Any, entry_type: type, what: str,
             replace: bool) -> Any:
    """Add ``entry`` (an ``entry_type`` with a ``name``) to the registry ``table``; a name
    already there is an error unless ``replace``. Returns the entry."""
    if not isinstance(entry, entry_type):
        raise TypeError(f"{what} must be a {entry_type.__name__}, got {type(entry).__name__}")
    if entry.name in table and not replace:
        raise ValueError(f"{what} {entry.name!r} is already registered; pass replace=True "
                         f"to overwrite it")
    table[entry.name] = entry
    return entry


_FLOAT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16,
                 "float32": torch.float32, "float64": torch.float64}


def as_float_dtype(value: Any, name: str = "dtype") -> torch.dtype:
    """A floating torch dtype from a dtype or its name (``"float64"``, ``"torch.float64"``)."""
    if isinstance(value, str):
        value = _FLOAT_DTYPES.get(value.removeprefix("torch."), value)
    if value not in _FLOAT_DTYPES.values():
        raise ValueError(f"{name} must be a floating torch dtype or one of "
                         f"{tuple(_FLOAT_DTYPES)}, got {value!r}")
    return value


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (JSON-ready; :func:`as_float_dtype` reads it)."""
    return str(dtype).removeprefix("torch.")


def versions() -> dict[str, str]:
    """Installed versions of mechcausal, torch and transformer-lens (for file headers)."""
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    return {"mechcausal": version("mechcausal"), "torch": str(torch.__version__),
            "transformer_lens": version("transformer-lens")}


# ---------------------------------------------------------------------- results
def format_number(value: float | None, spec: str = ".3f") -> str:
    """``value`` formatted, or ``n/a`` for a statistic that is undefined (None or NaN)."""
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def to_json(value: Any) -> Any:
    """Tensors, tuples and floats to JSON-ready lists and numbers (NaN -> None)."""
    if isinstance(value, torch.Tensor):
        return to_json(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def check_device(device: Any) -> str:
    """``device`` as a string torch accepts (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``);
    ValueError for one torch does not know. Whether it exists here is checked when
    training starts (a config may be written for another machine)."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or another torch device, "
                         f"got {device!r}") from None
    return device


def check_device_available(device: str, name: str = "device") -> torch.device:
    """The torch device ``device`` if this machine has it; ValueError otherwise."""
    if isinstance(device, torch.device):
        device = str(device)
    try:
        parsed = torch.device(check_device(device))
    except ValueError as error:
        raise ValueError(f"{name}={device!r}: {error}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={device!r}: CUDA is not available on this machine; "
                             f"use 'cpu'")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={device!r}: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}={device!r}: MPS is not available on this machine; use 'cpu'")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{name}={device!r}: only cpu, cuda and mps are supported")
    return parsed
