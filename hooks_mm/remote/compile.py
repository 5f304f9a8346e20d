"""Compile intervention specs into nnsight plans (plain data run by :mod:`hooks_mm.remote.runner`).

A spec's edits (hook name + op, the same ones the local hooks run) are placed at the
module input or output the hook table (:mod:`hooks_mm.hooks`) gives for that hook, on the
module paths of the same adapter table the local path uses:

| hooks_mm hook | nnsight site |
|---|---|
| ``blocks.{l}.hook_resid_pre`` | ``{layers}.{l}.input`` |
| ``blocks.{l}.mlp.hook_post`` | ``{layers}.{l}.{mlp}.{down}.input`` (neuron activations) |
| ``blocks.{l}.hook_mlp_out`` | ``{layers}.{l}.{mlp_out}.output`` |
| ``blocks.{l}.hook_attn_out`` | ``{layers}.{l}.{attn_out}.output`` (a hybrid stack's mixer layer: the mixer's) |
| ``blocks.{l}.hook_resid_post`` | ``{layers}.{l}.output`` (decoder layer output) |
| ``blocks.{l}.attn.hook_attn_scores`` (knockout only) | the ``attention_mask`` keyword of ``{layers}.{l}.{attn}`` |

What nnsight cannot express here raises ``NotImplementedError`` when compiling, naming
the hook: edits of ``hook_resid_mid``, ``ln*.hook_normalized``, q/k/v/z/pattern and the
other hooks that exist only as hooks_mm bridges inside a module's forward (among them a MoE
block's routing and per-expert hooks, :mod:`hooks_mm.model.moe`; its ``hook_mlp_out`` is the
block's output and compiles);
``hook_attn_out`` / ``hook_mlp_out`` of families whose branch output is derived (no module
returns it) and of Mllama's gated cross-attention layers; ops other than knockout on
attention scores; knockout under flash / flex attention (no mask tensor to edit).
Knockout is applied in the mask (blocked edges get the dtype minimum, or False), not in
the scores as the local path does; both give zero weight to the blocked edges, so results
agree to float rounding.

Example::

    plan = compile_plan(model, [spec_a, spec_b], inputs)   # 2 configs, one batched forward
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from hooks_mm.hooks import BLOCK_HOOKS, lookup, split
from hooks_mm.interventions import Context, Intervention, source_key
from hooks_mm.model.hybrid import attn_out_path

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM

Site = tuple[tuple[int, int], str, str]  # ((layer, order in the layer), module path, "input" | "output" | "mask")
_ORDER = {h.name: i for i, h in enumerate(BLOCK_HOOKS)}
_REACHABLE = ", ".join(h.name for h in BLOCK_HOOKS if h.nnsight is not None and h.nnsight[1] != "mask")


def site(model: HookedMLLM, hook: str, kind: str | None = None) -> Site:
    """Where hook point ``hook`` is a module input / output nnsight can edit with an op of ``kind``."""
    layer, suffix = split(hook)
    spec = lookup(hook)
    if layer is None or spec.nnsight is None:
        raise NotImplementedError(
            f"the nnsight backend cannot edit {hook!r}: it edits module inputs and outputs ({_REACHABLE}) "
            "and attention masks; hooks inside a module's forward exist only as hooks_mm bridges. Run this "
            "spec with HookedMLLM."
        )
    fields, attr = spec.nnsight
    if attr == "mask" and kind != "knock":
        raise NotImplementedError(
            f"the nnsight backend reaches {hook!r} only through the attention mask, for AttentionKnockout; "
            "run this spec with HookedMLLM."
        )
    a = model.adapter
    paths = [attn_out_path(model, layer) if f == "attn_out" else getattr(a, f) for f in fields]  # hybrid: mixer
    if any(p is None for p in paths) or (layer in model.cfg.cross_attn_layers and fields):
        raise NotImplementedError(
            f"the nnsight backend cannot edit {hook} of {model.cfg.architecture}: no module "
            "returns that branch output (hooks_mm derives it inside the layer); run this spec with HookedMLLM."
        )
    if suffix == "hook_mlp_out" and layer in model.cfg.moe_layers and a.moe.score == "sigmoid_input":
        raise NotImplementedError(
            f"the nnsight backend cannot edit {hook} of {model.cfg.architecture}: its MoE block (Llama 4) returns "
            "its output flattened over (batch, pos), not per position; run this spec with HookedMLLM."
        )
    if a.flat and {"mlp", "mlp_out"} & set(fields):  # OPT: fc1 / fc2 run on [batch * pos, ...]
        raise NotImplementedError(
            f"the nnsight backend cannot edit {hook} of {model.cfg.architecture}: its {a.backbone.name} block runs "
            "the MLP on [batch * pos, ...] rows, not [batch, pos, ...]; run this spec with HookedMLLM."
        )
    return (layer, _ORDER[suffix]), ".".join(filter(None, [a.layers, str(layer), *paths])), attr


def takes_use_cache(hf_model: Any) -> bool:
    """Does this HF model's forward take ``use_cache`` (so a plan can turn its KV cache off)?"""
    params = inspect.signature(hf_model.forward).parameters
    return "use_cache" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def head_path(model: HookedMLLM) -> str:
    """The module path of the unembedding (``get_output_embeddings()``), whose input the plan cuts to the
    metric's positions."""
    head = model.hf_model.get_output_embeddings()
    for name, module in model.hf_model.named_modules():
        if module is head and name:
            return name
    raise NotImplementedError(
        f"{model.cfg.architecture} has no output embedding module to unembed a metric's positions with on the "
        "server: reduce a metric without positions (a function of the whole logits)."
    )


def to_cpu(x: Any) -> Any:
    """Tensors moved to the CPU through tuples, lists and dicts (what a request ships)."""
    if torch.is_tensor(x):
        return x.cpu()
    if isinstance(x, (tuple, list)):
        return type(x)(to_cpu(v) for v in x)
    if isinstance(x, dict):
        return {k: to_cpu(v) for k, v in x.items()}
    return x


def compile_plan(
    model: HookedMLLM,
    specs: Sequence[Intervention | None],
    inputs: Any,
    sources: dict[str, Any] | None = None,
    reduce: Any = None,
    attn_implementation: str | None = None,
) -> dict[str, Any]:
    """A plan running ``specs`` (None: a clean copy) as copies of ``inputs`` in one forward.

    Returns ``{"copies", "batch", "inputs", "sites", "reduce", "sources"}``; ``sources``
    maps a source run's name to the plan that captures what the specs read from it.
    Raises before anything runs when a spec cannot be compiled or is invalid.
    """
    batch = model.prepare(inputs)
    ctx = Context(model, batch, sources)
    merged: dict[Site, list[tuple[int, tuple]]] = {}
    for k, spec in enumerate(specs):
        for e in spec.edits(ctx) if spec is not None else ():
            if (
                e.op[0] == "knock"
                and attn_implementation is not None
                and not attn_implementation.endswith(("eager", "sdpa"))
            ):
                raise NotImplementedError(
                    f"attention knockout edits the attention mask, which {attn_implementation!r} attention does not "
                    "take as a tensor: load the model with attn_implementation='sdpa' or 'eager'."
                )
            merged.setdefault(site(model, e.hook, e.op[0]), []).append((k, to_cpu(e.op)))
    plan: dict[str, Any] = {
        "copies": len(specs),
        "batch": batch.shape[0],
        "inputs": to_cpu(batch.model_inputs),
        "sites": [(path, attr, merged[(order, path, attr)]) for order, path, attr in sorted(merged)],
        "reduce": reduce,
        "head": head_path(model) if reduce is not None and reduce[0] is not None else None,
        "use_cache": False if takes_use_cache(model.hf_model) else None,
        "sources": {},
    }
    captures: dict[str, list[tuple[Site, str]]] = {}
    for name, hook in sorted(ctx.reads):
        captures.setdefault(name, []).append((site(model, hook), source_key(name, hook)))
    for name, sites in captures.items():
        src = ctx.source(name)
        plan["sources"][name] = {
            "copies": 1,
            "batch": src.shape[0],
            "inputs": to_cpu(src.model_inputs),
            "sites": [],
            "capture": [(key, s[1], s[2]) for s, key in sorted(sites)],
            "reduce": "none",
        }
    return plan
