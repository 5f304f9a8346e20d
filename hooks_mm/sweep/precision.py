"""Replay in another precision than the model's, and the noise floor of sweep deltas.

A model run in bf16 rounds every layer's output to 8 bits of mantissa: an ablation's true effect
on a metric (often 1e-4 nats) drowns in the rounding of the layers above it (the same order).
``sweep(..., replay_dtype=torch.float32)`` keeps the clean pass in the model's dtype and runs the
replayed layers in float32: each layer's weights are cast on the fly (:func:`call_in`, through
``torch.func.functional_call``: the model is not touched, and the extra memory is one layer's
weights in float32 at a time), and the baseline of the deltas is the float32 replay of the clean
run from the same layer. :func:`noise_floor` measures, on a sample of configs, how far deltas are
from those of a float64 replay, so a user knows which deltas mean something (the clean pass's own
rounding in bf16 is shared by every config and not in it: on the tiny LLaVA, float32-replay deltas
were within a median 1.4e-6 of an fp32 model's, against 2.9e-4 for bf16 deltas).

Example::

    res = sweep(model, inputs, configs, metric, replay_dtype=torch.float32)
    res.meta["noise_floor"]     # max |delta - float64 delta| over a sample of configs
    res.table[res.table["delta"].abs() > 10 * res.meta["noise_floor"]]
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM


def cast(v: Any, dtype: torch.dtype) -> Any:
    """Floating tensors in ``v`` (tensors, tuples, lists, dicts) cast to ``dtype``; everything else as it is."""
    if torch.is_tensor(v):
        return v.to(dtype) if v.is_floating_point() and v.dtype != dtype else v
    if isinstance(v, (tuple, list)):
        return type(v)(cast(x, dtype) for x in v)
    if isinstance(v, dict):
        return {k: cast(x, dtype) for k, x in v.items()}
    return v


def call_in(module: nn.Module, dtype: torch.dtype, *args: Any, **kwargs: Any) -> Any:
    """``module(*args, **kwargs)`` with its floating parameters and buffers cast to ``dtype`` for this call
    only (the module keeps its own); floating tensor arguments are cast too."""
    tensors = {n: cast(t, dtype) for n, t in [*module.named_parameters(), *module.named_buffers()]}
    return torch.func.functional_call(module, tensors, cast(args, dtype), cast(kwargs, dtype))


class _Call(nn.Module):
    """``fn`` as a module whose parameters are those of ``root`` (for :func:`torch.func.functional_call`)."""

    def __init__(self, root: nn.Module, fn: Callable[..., Any]):
        super().__init__()
        self.root, self.fn = root, fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


class Head:
    """``model.resid_to_logits`` with the final norm's and the unembedding's weights cast to a dtype per call."""

    def __init__(self, model: HookedMLLM):
        hf = model.hf_model
        head = hf.get_output_embeddings()
        paths = [model.adapter.final_norm] + [n for n, m in hf.named_modules() if m is head][:1]
        self.names = [f"{p}.{n}" if p else n for p in paths for n, _ in hf.get_submodule(p).named_parameters()]
        self.call, self.hf = _Call(hf, model.resid_to_logits), hf

    def __call__(self, h: Tensor) -> Tensor:
        own = dict(self.hf.named_parameters())
        tensors = {f"root.{n}": cast(own[n], h.dtype) for n in self.names if n in own}
        return torch.func.functional_call(self.call, tensors, (h,))


def check_replay_dtype(replay_dtype: Any, model_dtype: torch.dtype, method: str) -> torch.dtype | None:
    """``replay_dtype`` checked against the model's dtype; None when it changes nothing."""
    if replay_dtype is None:
        return None
    if not isinstance(replay_dtype, torch.dtype) or not replay_dtype.is_floating_point or replay_dtype.is_complex:
        raise TypeError(
            f"replay_dtype={replay_dtype!r} is not a floating torch dtype: pass e.g. replay_dtype=torch.float32."
        )
    if torch.finfo(replay_dtype).eps > torch.finfo(model_dtype).eps:
        raise ValueError(
            f"replay_dtype={replay_dtype} is less precise than the model's {model_dtype}: the replay would add "
            "rounding noise; pass torch.float32 (or None to replay in the model's dtype)."
        )
    if method == "naive":
        raise ValueError(
            f"replay_dtype={replay_dtype} applies to the fast path's replay, and method='naive' runs none: use "
            "method='auto' or 'fast', or drop replay_dtype."
        )
    return None if replay_dtype == model_dtype else replay_dtype


def noise_floor(
    deltas: Callable[[torch.dtype | None], Tensor], reported: torch.dtype | None, clean: Tensor
) -> dict[str, Any]:
    """How far a sample of configs' deltas are from those of a float64 replay: as reported, and in the model's
    dtype. ``floor``: the largest deviation of the reported deltas, at least the float32 resolution of the
    metric (its values are float32).

    ``deltas(dtype)``: the sample's deltas [k, ...] replayed in ``dtype`` (None: the model's dtype,
    against the model's clean run, as a sweep without ``replay_dtype`` reports them).
    """
    ref = deltas(torch.float64)
    own = deltas(None)
    rep = own if reported is None else deltas(reported)
    resolution = torch.finfo(torch.float32).eps * float(clean.abs().max())

    def spread(d: Tensor) -> dict[str, float]:
        dev = (d - ref).abs().flatten().tolist()
        return {"median": float(statistics.median(dev)), "max": max(dev)}

    out = {"reference": "float64", "sample": int(ref.shape[0]), "model_dtype": spread(own), "reported": spread(rep)}
    return {"floor": max(out["reported"]["max"], resolution), **out}
