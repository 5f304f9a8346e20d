"""Compile intervention specs into nnsight plans (plain data run by :mod:`hooks_mm.remote.ops`).

Module paths come from the same adapter table as the local hook path:

| hooks_mm hook | nnsight site |
|---|---|
| ``blocks.{l}.hook_resid_pre`` | ``{layers}.{l}.input`` |
| ``blocks.{l}.mlp.hook_post`` | ``{layers}.{l}.{mlp}.{down}.input`` (neuron activations) |
| ``blocks.{l}.hook_mlp_out`` | ``{layers}.{l}.{mlp_out}.output`` |
| ``blocks.{l}.hook_attn_out`` | ``{layers}.{l}.{attn_out}.output`` |
| ``blocks.{l}.hook_resid_post`` | ``{layers}.{l}.output`` (decoder layer output) |
| attention knockout | the ``attention_mask`` keyword of ``{layers}.{l}.{attn}`` |

What nnsight cannot express here, and raises ``NotImplementedError`` for: edits of
``hook_resid_mid``, ``ln*.hook_normalized``, ``attn.hook_q/k/v/z/pattern/attn_scores`` and
the other hooks that exist only as TransformerLens bridges inside a module's forward;
``hook_attn_out`` / ``hook_mlp_out`` of families whose branch output is derived (no module
returns it: ``Adapter.attn_out`` / ``mlp_out`` is None) and of Mllama's gated
cross-attention layers; attention knockout under flash / flex attention (no mask
tensor to edit) and in cross-attention layers. Knockout is applied in the mask
(blocked edges get the dtype minimum, or False), not in the scores as the local path
does; both give zero weight to the blocked edges, so results agree to float rounding.

Example::

    plan = compile_plan(model, [spec_a, spec_b], inputs)   # 2 configs, one batched forward
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from hooks_mm.interventions import (
    AttentionKnockout,
    CentroidReplacement,
    Compose,
    Intervention,
    NeuronAblation,
    Patch,
    Skip,
    Steer,
)
from hooks_mm.interventions.base import Context
from hooks_mm.interventions.patching import COMPONENTS, _grid_pairs
from hooks_mm.layout import SEGMENTS_KEY, Modality

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM

# (layer, stage): the order in which a decoder layer reaches each site
STAGES = {"hook_resid_pre": 0, "attn.mask": 1, "hook_attn_out": 2, "mlp.hook_post": 3, "hook_mlp_out": 4, "hook_resid_post": 5}
Site = tuple[tuple[int, int], str, str]  # (order, module path, "input" | "output" | "mask")
Op = tuple


def site(model: HookedMLLM, hook: str, layer: int) -> Site:
    """Where hooks_mm's ``blocks.{layer}.{hook}`` lives as an nnsight module input/output."""
    a = model.adapter
    base = f"{a.layers}.{layer}"
    cross = layer in model.cfg.cross_attn_layers
    if hook == "hook_resid_pre":
        return (layer, 0), base, "input"
    if hook == "hook_resid_post":
        return (layer, 5), base, "output"
    if hook == "mlp.hook_post":
        return (layer, 3), f"{base}.{a.mlp}.{a.down}", "input"
    if hook in ("hook_mlp_out", "hook_attn_out"):
        path = a.mlp_out if hook == "hook_mlp_out" else a.attn_out
        if path is None or cross:
            raise NotImplementedError(
                f"the nnsight backend cannot edit blocks.{layer}.{hook} of {model.cfg.architecture}: no module "
                "returns that branch output (hooks_mm derives it inside the layer); run this spec with HookedMLLM."
            )
        return (layer, STAGES[hook]), f"{base}.{path}", "output"
    if hook == "attn.mask":
        if cross:
            raise ValueError(f"AttentionKnockout: layer {layer} is a cross-attention layer; knock out self-attention layers only.")
        return (layer, 1), f"{base}.{a.attn}", "mask"
    raise NotImplementedError(
        f"the nnsight backend cannot edit {hook!r}: it edits module inputs and outputs "
        f"({', '.join(h for h in STAGES if h != 'attn.mask')} and attention masks); hooks inside a "
        "module's forward exist only as hooks_mm bridges. Run this spec with HookedMLLM."
    )


def source_key(source: str, s: Site) -> str:
    return f"{source}|{s[1]}|{s[2]}"


def model_inputs(model: HookedMLLM, inputs: Any) -> dict[str, Any]:
    """The keyword inputs the HF model takes (hooks_mm's own keys dropped)."""
    out = dict(model._as_inputs(inputs))
    out.pop(SEGMENTS_KEY, None)
    return {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in out.items()}


class Compiled:
    """Ops per site for one config, and the source activations they read."""

    def __init__(self) -> None:
        self.ops: list[tuple[Site, Op]] = []
        self.needs: dict[str, set[Site]] = {}


def compile_spec(model: HookedMLLM, spec: Intervention, ctx: Context, k: int = 0, out: Compiled | None = None) -> Compiled:
    """Ops of ``spec`` (config number ``k`` of a chunk) on the batch of ``ctx``."""
    out = out or Compiled()
    if isinstance(spec, Compose):
        for item in spec.items:
            compile_spec(model, item, ctx, k, out)
        return out
    handler = HANDLERS.get(type(spec))
    if handler is None:
        raise NotImplementedError(
            f"the nnsight backend has no compiler for {type(spec).__name__}; it supports "
            f"{', '.join(c.__name__ for c in HANDLERS)} (and their compositions)."
        )
    handler(model, spec, ctx, k, out)
    return out


def _ablation(model: HookedMLLM, spec: NeuronAblation, ctx: Context, k: int, out: Compiled) -> None:
    if spec.mode != "resample":
        spec.hooks(ctx)  # the local path's own checks (positions, layers, neurons, means)
    mask = ctx.mask(spec.positions, "NeuronAblation")
    layers = ctx.layers(spec.layers, "NeuronAblation")
    width = model.cfg.d_mlp if spec.hook == "mlp.hook_post" else None
    idx = None if spec.neurons is None else torch.as_tensor(spec.neurons, dtype=torch.long)
    if idx is not None and width is not None and (idx.numel() == 0 or int(idx.max()) >= width or int(idx.min()) < -width):
        raise IndexError(f"NeuronAblation: neurons must be non-empty and within 0..{width - 1}, got {spec.neurons}.")
    for l in layers:
        s = site(model, spec.hook, l)
        rep: Any = None
        if spec.mode == "mean":
            rep = _mean_table(spec, l, ctx.layout.modality)
        elif spec.mode == "resample":
            ctx.source(spec.source)  # a clear error when the run is missing
            out.needs.setdefault(spec.source, set()).add(s)
            rep = source_key(spec.source, s)
        out.ops.append((s, ("ablate", mask, idx, spec.mode, float(spec.value), rep)))


def _mean_table(spec: NeuronAblation, layer: int, modality: Tensor) -> tuple[Tensor, Tensor]:
    """(table [n, d], index [b, s]): the local ``NeuronMeans.for_positions`` as a lookup."""
    if layer not in spec.means.means:  # type: ignore[union-attr]
        raise KeyError(f"NeuronMeans has layers {sorted(spec.means.means)}, not {layer}: fit it on that layer.")  # type: ignore[union-attr]
    m = spec.means.means[layer]  # type: ignore[union-attr]
    rows, index = [m["all"]], torch.zeros(modality.shape, dtype=torch.long)
    for mod in Modality:
        if mod.name.lower() in m:
            rows.append(m[mod.name.lower()])
            index[modality == mod] = len(rows) - 1
    return torch.stack(rows).float(), index


def _steer(model: HookedMLLM, spec: Steer, ctx: Context, k: int, out: Compiled) -> None:
    mask = ctx.mask(spec.positions, "Steer")
    vec = torch.as_tensor(spec.vector, dtype=torch.float32)
    if spec.hook.startswith("hook_resid") and vec.shape[-1] != model.cfg.d_model:
        raise ValueError(f"Steer: vector has {vec.shape[-1]} dims but the residual stream has {model.cfg.d_model}.")
    for l in ctx.layers(spec.layers, "Steer"):
        out.ops.append((site(model, spec.hook, l), ("steer", mask, vec, float(spec.scale))))


def _centroid(model: HookedMLLM, spec: CentroidReplacement, ctx: Context, k: int, out: Compiled) -> None:
    spec.hooks(ctx)  # width and positions checks
    mask = ctx.mask(spec.positions, "CentroidReplacement")
    out.ops.append((site(model, spec.bank.hook, spec.bank.layer), ("centroid", mask, spec.bank.centroids.float(), float(spec.a_interp))))


def _knockout(model: HookedMLLM, spec: AttentionKnockout, ctx: Context, k: int, out: Compiled) -> None:
    spec.hooks(ctx)  # heads, cross-attention layers, positions
    q = ctx.mask(spec.queries, "AttentionKnockout queries")
    kk = ctx.mask(spec.keys, "AttentionKnockout keys")
    block = q[:, None, :, None] & kk[:, None, None, :]
    if spec.heads is not None:
        on = torch.zeros(model.cfg.n_heads, dtype=torch.bool)
        on[list(spec.heads)] = True
        block = block & on[None, :, None, None]
    for l in ctx.layers(spec.layers, "AttentionKnockout"):
        out.ops.append((site(model, "attn.mask", l), ("knock", block)))


def _skip(model: HookedMLLM, spec: Skip, ctx: Context, k: int, out: Compiled) -> None:
    spec.hooks(ctx)
    mask = ctx.mask(spec.positions, "Skip")
    for l in ctx.layers(spec.layers, "Skip"):
        if spec.component == "block":
            key = f"pre|{l}|{k}|{len(out.ops)}"
            out.ops.append((site(model, "hook_resid_pre", l), ("keep", key)))
            out.ops.append((site(model, "hook_resid_post", l), ("restore", mask, key)))
        else:
            hook = "hook_mlp_out" if spec.component == "mlp" else "hook_attn_out"
            out.ops.append((site(model, hook, l), ("zero", mask)))


def _patch(model: HookedMLLM, spec: Patch, ctx: Context, k: int, out: Compiled) -> None:
    hook = COMPONENTS.get(spec.component, spec.component)
    sites = [site(model, hook, l) for l in ctx.layers(spec.layers, "Patch")]
    _, src_layout = ctx.source(spec.source)
    if src_layout.shape[0] != ctx.layout.shape[0]:
        raise ValueError(
            f"Patch: source {spec.source!r} has {src_layout.shape[0]} rows, this run "
            f"{ctx.layout.shape[0]}: row b of the source patches row b of the target."
        )
    tgt = ctx.mask(spec.positions, "Patch target")
    src_sel = spec.source_positions if spec.source_positions is not None else spec.positions
    out.needs.setdefault(spec.source, set()).update(sites)
    if spec.map == "grid":
        pairs = _grid_pairs(src_layout, ctx.layout, src_sel, spec.positions)
        out.ops += [(s, ("grid", source_key(spec.source, s), pairs)) for s in sites]
        return
    if spec.map == "same":
        if src_layout.shape != ctx.layout.shape or spec.source_positions is not None:
            raise ValueError(
                f"Patch: the source layout {src_layout.shape} and this run's {ctx.layout.shape} differ (or "
                "source_positions was given): use map='order' with source_positions, or map='grid'."
            )
        t_rows, t_cols = tgt.nonzero(as_tuple=True)
        s_rows, s_cols = t_rows, t_cols
    else:
        src = src_layout.select(src_sel)
        if not torch.equal(src.sum(1), tgt.sum(1)):
            raise ValueError(
                f"Patch: map='order' pairs positions by order, but per row the source selects "
                f"{src.sum(1).tolist()} and the target {tgt.sum(1).tolist()} positions; select equal counts."
            )
        s_rows, s_cols = src.nonzero(as_tuple=True)
        t_rows, t_cols = tgt.nonzero(as_tuple=True)
    out.ops += [(s, ("copy", source_key(spec.source, s), s_rows, s_cols, t_rows, t_cols)) for s in sites]


HANDLERS = {
    NeuronAblation: _ablation,
    Steer: _steer,
    CentroidReplacement: _centroid,
    AttentionKnockout: _knockout,
    Skip: _skip,
    Patch: _patch,
}


def compile_plan(
    model: HookedMLLM,
    specs: Sequence[Intervention | None],
    inputs: Any,
    sources: dict[str, Any] | None = None,
    reduce: Any = None,
) -> dict[str, Any]:
    """A plan running ``specs`` (None: a clean copy) as copies of ``inputs`` in one forward.

    Returns ``{"copies", "batch", "inputs", "sites", "reduce", "sources"}``; ``sources``
    maps a source run's name to the plan that captures what the specs read from it.
    Raises before anything runs when a spec cannot be compiled or is invalid.
    """
    enc = model_inputs(model, inputs)
    full = model._as_inputs(inputs)
    ctx = Context(model, full, model._layout(full), dict(sources or {}))
    merged: dict[Site, list[tuple[int, Op]]] = {}
    needs: dict[str, set[Site]] = {}
    for k, spec in enumerate(specs):
        if spec is None:
            continue
        c = compile_spec(model, spec, ctx, k)
        for s, op in c.ops:
            merged.setdefault(s, []).append((k, op))
        for name, ss in c.needs.items():
            needs.setdefault(name, set()).update(ss)
    batch = int(enc["input_ids"].shape[0])
    plan: dict[str, Any] = {
        "copies": len(specs),
        "batch": batch,
        "inputs": enc,
        "sites": [(path, attr, merged[(order, path, attr)]) for order, path, attr in sorted(merged)],
        "reduce": reduce,
        "sources": {},
    }
    for name, ss in sorted(needs.items()):
        src = model_inputs(model, ctx.sources[name])
        plan["sources"][name] = {
            "copies": 1,
            "batch": int(src["input_ids"].shape[0]),
            "inputs": src,
            "sites": [],
            "capture": [(source_key(name, s), s[1], s[2]) for s in sorted(ss)],
            "reduce": "none",
        }
    return plan
