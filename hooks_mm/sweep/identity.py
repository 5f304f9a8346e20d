"""Identities for sweep checkpoints: a digest of a model's weights and of a metric.

A checkpoint's values are valid only for the weights, the inputs and the metric that
produced them; :func:`weights_digest` and :func:`metric_identity` are what the sweep core
(:mod:`hooks_mm.sweep.core`) writes into a checkpoint and compares on resume.

Example::

    weights_digest(model.hf_model)      # 'a3f1...' (cached until a parameter changes)
    metric_identity(answer_logprob(model, inputs))
"""

from __future__ import annotations

import functools
import hashlib
import types
import weakref
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

_SAMPLE = 1024  # strided entries per tensor
_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def _sample(t: Tensor) -> bytes:
    """A fixed sample of ``t``'s values: ``_SAMPLE`` strided entries, and for a matrix (the tensor
    as [first dim, rest]) one entry of every row and of every column, on a wrapped diagonal."""
    if t.is_meta or t.numel() == 0:
        return b""
    flat = t.detach().reshape(-1)
    n = flat.numel()
    k = min(n, _SAMPLE)
    strided = torch.arange(k, device=flat.device) * (n - 1) // max(k - 1, 1)  # integers: exact for any n
    parts = [flat[strided]]
    if t.dim() >= 2:
        m = t.detach().reshape(t.shape[0], -1)
        r, c = m.shape
        rows = torch.arange(r, device=m.device)
        cols = torch.arange(c, device=m.device)
        parts += [m[rows, rows % c], m[cols % r, cols]]
    return b"".join(p.float().cpu().numpy().tobytes() for p in parts)


def weights_digest(module: nn.Module) -> str:
    """A digest of ``module``'s weights, cheap enough for a 7B model (a fraction of a second).

    It covers every parameter and buffer: its name, shape and dtype, and a fixed sample of its
    values (1024 strided entries, plus one entry of every row and every column of the tensor
    viewed as a matrix). So another checkpoint of the same architecture, a fine-tune, or a
    whole row or column edited (a neuron zeroed in the weights) gives another digest; an edit
    of a few scattered entries that the sample misses does not. Computed once per module and
    cached until a tensor is replaced or modified in place (PyTorch's version counters; tensors
    made in ``torch.inference_mode`` have none, and are digested on every call).
    """
    tensors = [*module.named_parameters(), *module.named_buffers()]
    try:
        version: tuple | None = tuple(
            (name, t.data_ptr() if not t.is_meta else 0, t._version, str(t.device)) for name, t in tensors
        )
    except RuntimeError:  # inference-mode tensors keep no version counter: no caching
        version = None
    hit = _CACHE.get(module)
    if version is not None and hit is not None and hit[0] == version:
        return hit[1]
    h = hashlib.sha256(type(module).__name__.encode())
    with torch.no_grad():
        for name, t in tensors:
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|{t.is_meta}".encode())
            h.update(_sample(t))
    digest = h.hexdigest()
    if version is not None:
        _CACHE[module] = (version, digest)
    return digest


def held_state(spec: Any, cache: dict[int, str] | None = None) -> str:
    """A digest of the objects a spec holds beyond its serialised form (a ``CentroidBank``, fitted
    means ...): their tensors and plain fields, so two specs that serialise alike (a bank
    re-fitted and saved to the same path) get different keys. ``cache`` maps ``id(obj)`` to its
    digest, for many specs sharing one object."""
    from hooks_mm.interventions import Intervention
    from hooks_mm.selectors import Selector

    cache = {} if cache is None else cache
    parts: list[str] = []

    def walk(v: Any, depth: int) -> None:
        if depth > 4 or v is None or isinstance(v, (bool, int, float, str, bytes, Selector)) or torch.is_tensor(v):
            return
        if isinstance(v, (list, tuple)):
            for x in v:
                walk(x, depth + 1)
        elif isinstance(v, Intervention):
            for x in vars(v).values():
                walk(x, depth + 1)
        elif hasattr(v, "__dict__") and not callable(v):
            if id(v) not in cache:
                h = hashlib.sha256(type(v).__qualname__.encode())
                _digest({k: x for k, x in vars(v).items() if not callable(x)}, h, 1, set())
                cache[id(v)] = h.hexdigest()
            parts.append(cache[id(v)])

    walk(spec, 0)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16] if parts else ""


class UnidentifiableMetric(TypeError):
    """A metric whose identity cannot be told from another's (so no checkpoint can vouch for it)."""


def metric_identity(metric: Any) -> str:
    """A digest of what ``metric`` computes, for checkpoints.

    A :class:`~hooks_mm.sweep.metrics.PositionMetric` (``answer_logprob``, ``logit_diff``,
    ``kl_to_clean``): its kind, positions, given targets and its functions. A plain function or
    lambda: its qualified name, bytecode and constants, default arguments, closure cells and
    the globals it reads (tensors, numbers, strings and containers by value; functions
    recursively; modules and classes by name; other objects by type). ``functools.partial``:
    its function and arguments. Any other callable raises :class:`UnidentifiableMetric`.
    """
    h = hashlib.sha256()
    _digest(metric, h, 0, set(), top=True)
    return h.hexdigest()


def _code(code: types.CodeType, h: Any) -> None:
    h.update(code.co_code + repr(code.co_names).encode() + repr(code.co_varnames).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _code(c, h)
        else:
            h.update(repr(c).encode())


def _names(code: types.CodeType) -> set[str]:
    out = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out |= _names(c)
    return out


def _digest(obj: Any, h: Any, depth: int, seen: set[int], top: bool = False) -> None:
    parts = getattr(obj, "identity_parts", None)  # a PositionMetric: what it computes, in parts
    if depth > 6:
        h.update(b"<deep>")
        return
    if isinstance(obj, types.FunctionType) or callable(parts):
        if id(obj) in seen:  # recursion, or a helper read twice: once is enough
            h.update(b"<seen>")
            return
        seen.add(id(obj))
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r}".encode())
    elif torch.is_tensor(obj):
        t = obj.detach()
        h.update(f"T{tuple(t.shape)}{t.dtype}".encode())
        if not t.is_meta:
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.shape}{obj.dtype}".encode() + np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, (tuple, list)):
        h.update(f"{type(obj).__name__}{len(obj)}".encode())
        for v in obj:
            _digest(v, h, depth + 1, seen)
    elif isinstance(obj, dict):
        h.update(f"dict{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            _digest(k, h, depth + 1, seen)
            _digest(obj[k], h, depth + 1, seen)
    elif isinstance(obj, (set, frozenset)):
        h.update(repr(sorted(map(repr, obj))).encode())
    elif callable(parts):
        h.update(f"{type(obj).__qualname__}:".encode())
        _digest(parts(), h, depth + 1, seen)
    elif isinstance(obj, types.FunctionType):
        h.update(f"fn:{obj.__module__}.{obj.__qualname__}".encode())
        _code(obj.__code__, h)
        for part in (obj.__defaults__, obj.__kwdefaults__):
            _digest(part, h, depth + 1, seen)
        for cell in obj.__closure__ or ():
            try:
                _digest(cell.cell_contents, h, depth + 1, seen)
            except ValueError:  # an empty cell
                h.update(b"<empty>")
        for name in sorted(_names(obj.__code__)):
            if name in obj.__globals__:
                h.update(name.encode())
                _digest(obj.__globals__[name], h, depth + 1, seen)
    elif isinstance(obj, functools.partial):
        h.update(b"partial")
        for part in (obj.func, obj.args, obj.keywords):
            _digest(part, h, depth + 1, seen)
    elif isinstance(obj, types.MethodType):
        h.update(b"method")
        _digest(obj.__func__, h, depth + 1, seen)
        h.update(type(obj.__self__).__qualname__.encode())
    elif isinstance(obj, (types.ModuleType, type, types.BuiltinFunctionType)):
        h.update(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', obj.__name__)}".encode())
    elif top:
        raise UnidentifiableMetric(
            f"cannot identify the metric {obj!r} (a {type(obj).__qualname__}) for the checkpoint: a checkpoint "
            "resumes only the same metric. Pass a function, a lambda or a PositionMetric "
            "(answer_logprob, logit_diff, kl_to_clean), or run without checkpoint=."
        )
    else:  # another object inside a metric (a model, a processor ...): its type
        h.update(f"obj:{type(obj).__module__}.{type(obj).__qualname__}".encode())
