"""Hybrid decoder stacks: layers whose token mixer is not attention (Qwen3.5, LFM2).

A backbone row with :class:`~hooks_mm.adapters.backbones.Mixer` entries (``Backbone.mixers``)
says which ``layer_types`` hold a linear-attention (gated DeltaNet) or convolution mixer
instead of attention. Such a layer has exactly the hook points that exist there:

- ``hook_resid_pre``, ``ln1.hook_normalized`` (the mixer's input), ``hook_attn_out`` (the
  mixer's output: what it adds to the residual stream), ``hook_resid_mid``,
  ``ln2.hook_normalized``, the MLP hooks, ``hook_mlp_out``, ``hook_resid_post``;
- no ``attn.*`` hook: a linear-attention or convolution layer has no query / key / value heads,
  scores or pattern. Naming one (``run_with_hooks``, ``run_with_cache``, an intervention, the
  nnsight compiler) raises a ``KeyError`` naming the layer, its mixer and the attention layers.

The attention layers keep every ``blocks.{l}.attn.*`` hook. ``model.cfg.mixer_layers`` maps each
mixer layer to its ``layer_types`` value.

Example::

    model = HookedMLLM(llava_over_qwen3_5)
    model.cfg.mixer_layers                       # {0: 'linear_attention', 1: 'linear_attention', 2: ...}
    attention = [l for l in range(model.cfg.n_layers) if l not in model.cfg.mixer_layers]
    _, cache = model.run_with_cache(inputs, names_filter=[f"blocks.{l}.attn.hook_pattern" for l in attention])
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from hooks_mm.adapters.backbones import Mixer
from hooks_mm.hooks import BLOCK_HOOKS, split


def attn_out_path(model: HookedRootModule, layer: int) -> str | None:
    """The module (relative to the layer) whose output is layer ``layer``'s ``hook_attn_out``."""
    mixer = model._mixers.get(layer)
    return (mixer.out or mixer.path) if mixer is not None else model.adapter.attn_out


def absent_reason(model: HookedRootModule, name: str) -> str | None:
    """Why ``name`` is not a hook point of ``model`` when it is an attention hook of a mixer layer, else None."""
    layer, suffix = split(name)
    mixer = model._mixers.get(layer) if layer is not None and 0 <= layer < model.cfg.n_layers else None
    if mixer is None or not any(h.where == "self" and h.name == suffix for h in BLOCK_HOOKS):
        return None
    attention = [l for l in range(model.cfg.n_layers) if l not in model.cfg.mixer_layers]
    module = type(model.attention(layer)).__name__
    return (
        f"no hook point named {name!r}: layer {layer} of this {model.cfg.architecture} is a {mixer.kind!r} layer, "
        f"whose token mixer {mixer.path} ({module}: {mixer.notes or 'not attention'}) has no attention heads, so "
        f"no {suffix} exists there (no query / key / value heads, scores or pattern). That layer has "
        f"blocks.{layer}.hook_attn_out (the output of {mixer.out or 'the mixer'}) and the residual, ln1 / ln2 and "
        f"MLP hooks; attn.* hooks exist on the attention layers {attention}."
    )


def gated_query(hp: HookPoint, d_head: int) -> Callable:
    """Forward hook on a gated q projection (``[query; gate]`` per head, Qwen3.5): run ``hp`` on the
    query half [b, pos, head, d_head] and write it back beside the untouched gate."""

    def fn(m: nn.Module, i: Any, out: Tensor) -> Tensor:
        query, gate = out.unflatten(-1, (-1, 2 * d_head)).split(d_head, dim=-1)
        return torch.cat([hp(query), gate], dim=-1).flatten(-2)

    return fn


def token_mixers(
    adapter: Any, layers: list[nn.Module], text_config: Any, cross: set[int]
) -> tuple[dict[int, Mixer], list[nn.Module]]:
    """``({layer: Mixer}, [the attention / cross-attention / mixer module of every layer])`` of a stack."""
    row, n = adapter.backbone, len(layers)
    found = {l: row.mixer(text_config, l) for l in range(n) if l not in cross} if row is not None else {}
    mixers = {l: m for l, m in found.items() if m is not None}
    path = lambda l: mixers[l].path if l in mixers else adapter.cross_attn if l in cross else adapter.attn  # noqa: E731
    return mixers, [layers[l].get_submodule(path(l)) for l in range(n)]


def mlp_width(adapter: Any, layers: list[nn.Module], text_config: Any) -> int | None:
    """The number of MLP neurons as built (the input width of the first dense ``down`` linear): LFM2 derives it
    from ``intermediate_size`` (``block_auto_adjust_ff_dim``); else the config's ``intermediate_size``."""
    for layer in layers:
        down = (
            layer.get_submodule(adapter.mlp).get_submodule(adapter.down)
            if _has(layer, adapter.mlp, adapter.down)
            else None
        )
        if isinstance(down, nn.Linear):
            return down.in_features
    return getattr(text_config, "intermediate_size", None)


def _has(layer: nn.Module, *parts: str) -> bool:
    try:
        layer.get_submodule(".".join(filter(None, parts)))
        return True
    except AttributeError:
        return False
