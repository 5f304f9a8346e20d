"""Memory budget of a remote sweep: how many copies of the batch fit in one forward on the server.

A remote sweep runs ``configs_per_trace`` configs as copies of the batch in one forward, so
the server's activation memory grows with copies x rows x tokens. :func:`plan_memory`
estimates the peak activation bytes of ONE copy from the model's config (layers, d_model,
heads, KV heads, d_mlp, vocab), the batch (rows x tokens, pixel tensors, vision tower
activations) and the dtype, and sizes ``configs_per_trace`` / ``max_configs_per_request`` so
that weights + copies x per-copy + fixed stays within ``max_memory`` (bytes of the server
device, weights included; default :data:`DEFAULT_MAX_MEMORY`, 40 GiB, with
:data:`HEADROOM` kept back for the allocator). Explicit sizes are checked against it (a
warning names the estimate and the largest size that fits).

What one copy counts (``e`` bytes per element, ``b`` rows, ``s`` tokens), a deliberate
upper bound of a no-grad HF forward:

- ``kv_cache``: ``2 * n_layers * b * s * n_kv_heads * d_head * e`` (HF keeps a cache unless told not to;
  a sweep's plans pass ``use_cache=False``, so 0 there);
- ``mask``: the 4-D attention mask, ``b * s * s * e``;
- ``residual``: hidden state, residual, normed input, embeddings: ``4 * b * s * d_model * e``;
- ``layer``: the larger of attention (q, k, v and their rotated copies, scores and probabilities
  ``2 * b * n_heads * s * s * e``, output) and MLP (gate, up, activation, product: ``4 * b * s * d_mlp * e``),
  plus one edited activation (the plan's ``clone``);
- ``logits``: ``b * vocab * (e + 4)`` when the metric is reduced at its positions on the server,
  ``b * s * vocab * (e + 4)`` for a metric of the whole logits (``e`` the model's, 4 its float32 copy);
- ``vision``: the pixel tensor (float32 and the model's copy), every vision layer's hidden state
  (LLaVA keeps them all to read ``vision_feature_layer``), one vision layer's MLP and attention
  scores, and the projector output.

``fixed``: what does not grow with copies (source runs' captured activations, one per patched
hook). :func:`peak_tensor_bytes` measures the same quantity on CPU (live tensor storage bytes
during a call), which the tests compare with the estimate.

Example::

    plan = plan_memory(model, model.prepare(inputs), max_memory=80 << 30)
    plan.configs_per_trace, plan.max_configs_per_request, plan.per_copy
    result.meta["memory_plan"]   # the plan of a remote sweep
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

if TYPE_CHECKING:
    from hooks_mm.model import Batch, HookedMLLM

DEFAULT_MAX_MEMORY = 40 << 30  # bytes on the server device (weights included): an A100-40GB, half an 80 GB H100
HEADROOM = 0.1  # of max_memory kept back for the CUDA context, the allocator's fragmentation and the request


@dataclasses.dataclass
class MemoryPlan:
    """A remote sweep's memory plan: estimated bytes and the sizes chosen from them (see the module doc)."""

    max_memory: int
    weights: int
    per_copy: int
    fixed: int
    configs_per_trace: int
    max_configs_per_request: int
    parts: dict[str, int]
    rows: int
    tokens: int
    dtype: str

    def peak(self, copies: int) -> int:
        """Estimated peak bytes on the server of a trace of ``copies`` configs (weights included)."""
        return self.weights + self.fixed + copies * self.per_copy

    def fits(self) -> int:
        """The most copies whose estimated peak stays within ``max_memory`` less the headroom."""
        room = int(self.max_memory * (1 - HEADROOM)) - self.weights - self.fixed
        return max(0, room // self.per_copy)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``result.meta["memory_plan"]``: bytes, the chosen sizes and the estimated peak."""
        return {**dataclasses.asdict(self), "peak": self.peak(self.configs_per_trace), "fits": self.fits()}

    def __str__(self) -> str:
        gb = 1 << 30
        return (
            f"{self.rows} rows x {self.tokens} tokens ({self.dtype}): {self.per_copy / gb:.2f} GiB per copy, weights "
            f"{self.weights / gb:.2f} GiB, fixed {self.fixed / gb:.2f} GiB; configs_per_trace={self.configs_per_trace} "
            f"(peak {self.peak(self.configs_per_trace) / gb:.1f} of max_memory {self.max_memory / gb:.1f} GiB), "
            f"max_configs_per_request={self.max_configs_per_request}"
        )


def _text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _get(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def estimate_per_copy(
    config: Any, inputs: dict[str, Any], dtype: torch.dtype, *, reduced: bool = True, kv_cache: bool = True
) -> dict[str, int]:
    """Estimated peak activation bytes of one copy of ``inputs`` in a no-grad forward, by part (module doc).

    ``config``: the HF config (a composite VLM config or a text one); ``inputs``: the model's
    keyword inputs (``input_ids`` [batch, seq], ``pixel_values`` ...); ``reduced``: the metric is
    unembedded at its positions only (else the whole [batch, seq, vocab] logits); ``kv_cache``:
    the forward builds a KV cache (a sweep's plans turn it off when the forward takes ``use_cache``).
    """
    text = _text_config(config)
    ids = inputs.get("input_ids", inputs.get("inputs_embeds"))
    if ids is None or ids.dim() < 2:
        raise ValueError("estimate_per_copy needs the batch's input_ids (or inputs_embeds) [batch, seq].")
    b, s = int(ids.shape[0]), int(ids.shape[1])
    e = torch.empty((), dtype=dtype).element_size()
    d = int(_get(text, "hidden_size", "d_model", "n_embd"))
    n_layers = int(_get(text, "num_hidden_layers", "n_layer", "num_layers"))
    heads = int(_get(text, "num_attention_heads", "n_head", default=1))
    kv = int(_get(text, "num_key_value_heads", default=heads))
    dh = int(_get(text, "head_dim", default=d // heads))
    f = int(_get(text, "intermediate_size", "ffn_dim", "n_inner", default=4 * d))
    vocab = int(_get(text, "vocab_size", default=0))
    attn = b * s * (2 * heads + 3 * kv) * dh * e + 2 * b * heads * s * s * e + b * s * heads * dh * e
    mlp = 4 * b * s * f * e
    parts = {
        "kv_cache": 2 * n_layers * b * s * kv * dh * e if kv_cache else 0,
        "mask": b * s * s * e,
        "residual": 4 * b * s * d * e,
        "layer": max(attn, mlp) + b * s * max(d, f) * e,
        "logits": b * (1 if reduced else s) * vocab * (e + 4),
        "vision": 0,
    }
    pixels = inputs.get("pixel_values")
    vision = getattr(config, "vision_config", None)
    if torch.is_tensor(pixels) and vision is not None:
        n_img = int(pixels.shape[0]) if pixels.dim() == 4 else 1
        channels = int(_get(vision, "num_channels", default=3))
        patch = _get(vision, "patch_size", default=14)
        area = (
            int(patch[0]) * int(patch[-1]) if isinstance(patch, (list, tuple)) else int(patch) ** 2
        )  # InternVL: (h, w)
        tokens = pixels.numel() // (channels * area) + n_img  # patches (+ a class token per image)
        dv = int(_get(vision, "hidden_size", "embed_dim", default=d))
        fv = int(_get(vision, "intermediate_size", default=4 * dv))
        hv = int(_get(vision, "num_attention_heads", "num_heads", default=1))
        lv = int(_get(vision, "num_hidden_layers", "depth", default=1))
        per_image = max(1, tokens // n_img)
        parts["vision"] = (
            pixels.numel() * (4 + e)
            + (lv + 1) * tokens * dv * e
            + max(2 * n_img * hv * per_image * per_image * e, 2 * tokens * fv * e)
            + 2 * tokens * d * e
        )
    return parts


def plan_memory(
    model: HookedMLLM | torch.nn.Module,
    batch: Batch | dict[str, Any],
    *,
    max_memory: int | None = None,
    configs_per_trace: int | None = None,
    max_configs_per_request: int | None = None,
    reduced: bool = True,
    captures: int = 0,
    dtype: torch.dtype | None = None,
    kv_cache: bool = False,
) -> MemoryPlan:
    """Size ``configs_per_trace`` and ``max_configs_per_request`` for ``batch`` from a memory budget.

    ``max_memory``: bytes of the server device (weights included, :data:`HEADROOM` kept back;
    None: :data:`DEFAULT_MAX_MEMORY`); ``configs_per_trace`` / ``max_configs_per_request``: None
    chooses (the most copies that fit, at most 64 per request; requests hold whole traces),
    explicit values are checked (a warning when the estimate is over); ``reduced``: the metric is
    unembedded at its positions on the server; ``captures``: activations kept from source runs;
    ``dtype``: the server's (default: the model's); ``kv_cache``: the forward keeps a KV cache.
    ``model`` may be a HookedMLLM or a bare HF model, and weightless (meta); ``batch`` a Batch or
    the model's keyword inputs.

    Example::

        plan_memory(model, model.prepare(inputs), max_memory=80 << 30).configs_per_trace
    """
    for name, value in (("configs_per_trace", configs_per_trace), ("max_configs_per_request", max_configs_per_request)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r}: pass a positive integer, or None to size it from max_memory.")
    if max_memory is not None and (not isinstance(max_memory, int) or max_memory <= 0):
        raise ValueError(f"max_memory={max_memory!r}: pass the server device's memory in bytes, e.g. 80 << 30.")
    max_memory = DEFAULT_MAX_MEMORY if max_memory is None else max_memory
    hf = getattr(model, "hf_model", model)
    params = list(hf.parameters()) + list(hf.buffers())
    dtype = dtype or next(p.dtype for p in params if p.is_floating_point())
    e = torch.empty((), dtype=dtype).element_size()
    weights = sum(p.numel() * (e if p.is_floating_point() else p.element_size()) for p in params)
    inputs = getattr(batch, "model_inputs", batch)
    parts = estimate_per_copy(hf.config, inputs, dtype, reduced=reduced, kv_cache=kv_cache)
    b, s = (int(n) for n in inputs["input_ids"].shape[:2])
    d = int(_get(_text_config(hf.config), "hidden_size", "d_model", "n_embd"))
    fixed = captures * b * s * d * e
    plan = MemoryPlan(max_memory, weights, sum(parts.values()), fixed, 1, 1, parts, b, s, str(dtype))
    fits = plan.fits()
    gib = 1 << 30
    if fits < 1:
        raise ValueError(
            f"one copy of this batch ({b} rows x {s} tokens, {dtype}) needs an estimated {plan.per_copy / gib:.2f} GiB "
            f"of activations beside {weights / gib:.2f} GiB of weights and {fixed / gib:.2f} GiB of source "
            f"activations, over max_memory={max_memory / gib:.1f} GiB (less {HEADROOM:.0%} headroom): sweep fewer "
            "rows or shorter inputs, or pass the server's real max_memory."
        )
    if configs_per_trace is not None and configs_per_trace > fits:
        warnings.warn(
            f"configs_per_trace={configs_per_trace} needs an estimated {plan.peak(configs_per_trace) / gib:.1f} GiB "
            f"on the server ({plan}), over max_memory={max_memory / gib:.1f} GiB less {HEADROOM:.0%}: at most {fits} "
            f"copies fit; pass configs_per_trace<={fits} (or None to choose), or the server's real max_memory.",
            stacklevel=3,
        )
    per_request = max_configs_per_request or 64
    per_trace = min(configs_per_trace or fits, per_request)
    if max_configs_per_request is None:  # whole traces per request
        per_request = per_trace * math.ceil(per_request / per_trace)
    plan.configs_per_trace, plan.max_configs_per_request = per_trace, per_request
    return plan


def _tensors(x: Any, seen: dict[int, torch.Tensor]) -> None:
    if torch.is_tensor(x):
        seen.setdefault(id(x), x)
    elif isinstance(x, (tuple, list)):
        for v in x:
            _tensors(v, seen)
    elif isinstance(x, dict):
        for v in x.values():
            _tensors(v, seen)


def request_parts(plans: list[dict[str, Any]]) -> dict[str, int]:
    """Tensor bytes one request of ``plans`` carries, by part: each input (``pixel_values`` ...) once,
    the source runs' inputs, and the configs' edits (a tensor shared by several plans counts once, as
    the serialiser sends it once)."""
    seen: dict[int, torch.Tensor] = {}
    parts: dict[str, int] = {}
    for name, value in plans[0]["inputs"].items():
        if torch.is_tensor(value) and id(value) not in seen:
            seen[id(value)] = value
            parts[name] = value.numel() * value.element_size()
    for name, source in plans[0]["sources"].items():
        before = dict(seen)
        _tensors(source["inputs"], seen)
        parts[f"source {name!r}"] = sum(t.numel() * t.element_size() for k, t in seen.items() if k not in before)
    before = dict(seen)
    for plan in plans:
        _tensors(plan["sites"], seen)
    parts["edits"] = sum(t.numel() * t.element_size() for k, t in seen.items() if k not in before)
    return parts


def describe_request(plans: list[dict[str, Any]]) -> str:
    """What one request of ``plans`` carries, by part, for the request-size error: each input's shape, dtype
    and bytes (images once per request), the source runs' inputs and the configs' edits (raw tensor bytes)."""
    parts = request_parts(plans)
    shapes = {k: v for k, v in plans[0]["inputs"].items() if torch.is_tensor(v)}
    n = sum(p["copies"] for p in plans)
    listed = "; ".join(
        f"{k} {list(shapes[k].shape)} {str(shapes[k].dtype).removeprefix('torch.')} = {v:,} bytes"
        if k in shapes
        else f"{k} = {v:,} bytes"
        for k, v in parts.items()
    )
    return f"{n} configs; tensors before compression: {listed}"


def peak_tensor_bytes(call: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``call()`` and measure the peak bytes of tensor storage created during it and alive at once.

    Every op's outputs are followed (a ``TorchDispatchMode``) until their last tensor is freed;
    storage that existed before (weights, inputs) and views of it are not counted; buffers a
    fused kernel allocates internally are not seen. A CPU stand-in for
    ``torch.cuda.max_memory_allocated`` that the tests hold :func:`estimate_per_copy` to.

    Example::

        logits, peak = peak_tensor_bytes(lambda: model.hf_model(**batch.model_inputs).logits)
    """
    tracker = _LiveBytes()
    with tracker:
        out = call()
    return out, tracker.peak


class _LiveBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage data_ptr -> [nbytes, live tensors]
        self.current = self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        flat = tree_flatten((args, kwargs))[0]
        inputs = {t.untyped_storage().data_ptr() for t in flat if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._follow(t, inputs)
        return out

    def _follow(self, t: torch.Tensor, inputs: set[int]) -> None:
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        entry = self.live.get(key)
        if entry is None:
            if size == 0 or key in inputs:  # a view of, or an in-place write to, storage made before
                return
            self.live[key] = entry = [size, 0]
            self.current += size
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[key]
            self.current -= entry[0]


__all__ = [
    "DEFAULT_MAX_MEMORY",
    "HEADROOM",
    "MemoryPlan",
    "describe_request",
    "estimate_per_copy",
    "peak_tensor_bytes",
    "plan_memory",
    "request_parts",
]
