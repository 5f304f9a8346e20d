"""Attention knockout, steering, and compute skipping.

Example::

    knock = AttentionKnockout(layers=range(2, 5), queries=Last(), keys=Image())
    steer = Steer(layers=3, vector=v.tolist(), positions=Text(), scale=2.0)
    skip = Skip(component="mlp", layers=layer_window(0, 8, interval=2), positions=Image())
    model.run_with_interventions(inputs, knock + steer + skip)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hooks_mm.interventions.base import Context, Hooks, Intervention, where_positions
from hooks_mm.layout import NonPad, Selector


def layer_window(start: int, end: int, interval: int = 1) -> list[int]:
    """Layers ``start, start + interval, ... < end`` (the compute-skipping schedule)."""
    return list(range(start, end, interval))


@dataclass
class AttentionKnockout(Intervention):
    """Block attention edges from ``queries`` to ``keys`` in ``layers`` (all or some ``heads``).

    Applied in the attention scores (masked entries get the dtype minimum before the
    softmax), so it holds with grouped KV heads and bidirectional image prefixes alike.
    """

    layers: int | list[int] | None
    queries: Selector = field(default_factory=NonPad)
    keys: Selector = field(default_factory=NonPad)
    heads: list[int] | None = None

    def hooks(self, ctx: Context) -> Hooks:
        q = ctx.mask(self.queries, "AttentionKnockout queries")
        k = ctx.mask(self.keys, "AttentionKnockout keys")
        block = q[:, None, :, None] & k[:, None, None, :]  # [b, 1, q, k]
        n_heads = ctx.model.cfg.n_heads
        if self.heads is not None:
            bad = [h for h in self.heads if not 0 <= h < n_heads]
            if bad:
                raise IndexError(f"AttentionKnockout: heads {bad} out of range (0..{n_heads - 1}).")
            on = torch.zeros(n_heads, dtype=torch.bool)
            on[list(self.heads)] = True
            block = block & on.to(block.device)[None, :, None, None]
        out = []
        for l in ctx.layers(self.layers, "AttentionKnockout"):
            if l in ctx.model.cfg.cross_attn_layers:
                raise ValueError(
                    f"AttentionKnockout: layer {l} is a cross-attention layer whose keys are vision "
                    "tiles, not sequence positions; knock out self-attention layers only."
                )
            out.append((ctx.hook_name("attn.hook_attn_scores", l), _knockout_fn(block)))
        return out


def _knockout_fn(block: Tensor):  # noqa: ANN202
    def hook(scores: Tensor, hook: Any) -> Tensor:
        if scores.shape[-2:] != block.shape[-2:]:
            raise ValueError(
                f"attention scores {tuple(scores.shape)} do not match the layout {tuple(block.shape[-2:])}: "
                "knockout applies to a full forward of the inputs it was compiled for."
            )
        return scores.masked_fill(block.to(scores.device), torch.finfo(scores.dtype).min)

    return hook


@dataclass
class Steer(Intervention):
    """Add ``scale * vector`` at ``positions`` of ``hook`` (default the residual stream)."""

    layers: int | list[int] | None
    vector: list[float] = field(default_factory=list)
    positions: Selector = field(default_factory=NonPad)
    scale: float = 1.0
    hook: str = "hook_resid_post"

    def hooks(self, ctx: Context) -> Hooks:
        mask = ctx.mask(self.positions, "Steer")
        v = torch.as_tensor(self.vector, dtype=torch.float32)
        out = []
        for l in ctx.layers(self.layers, "Steer"):
            name = ctx.hook_name(self.hook, l)
            out.append((name, _steer_fn(mask, v, self.scale, name)))
        return out


def _steer_fn(mask: Tensor, v: Tensor, scale: float, name: str):  # noqa: ANN202
    def hook(x: Tensor, hook: Any) -> Tensor:
        if x.shape[-1] != v.shape[-1]:
            raise ValueError(f"Steer: vector has {v.shape[-1]} dims but {name} has {x.shape[-1]}.")
        return where_positions(x, mask, x + scale * v.to(x))

    return hook


SKIPPABLE = {"mlp": "hook_mlp_out", "attn": "hook_attn_out", "block": None}


@dataclass
class Skip(Intervention):
    """Skip the MLP, the attention, or the whole block at ``positions`` in ``layers``.

    Skipping a branch zeroes what it adds to the residual stream there; skipping the block
    makes ``resid_post = resid_pre`` there (the implicit-alignment paper's compute skipping).
    """

    layers: int | list[int] | None
    component: str = "mlp"
    positions: Selector = field(default_factory=NonPad)

    def hooks(self, ctx: Context) -> Hooks:
        if self.component not in SKIPPABLE:
            raise ValueError(f"Skip: component {self.component!r} is not one of {sorted(SKIPPABLE)}.")
        mask = ctx.mask(self.positions, "Skip")
        out: Hooks = []
        for l in ctx.layers(self.layers, "Skip"):
            if self.component == "block":
                saved: dict[str, Tensor] = {}
                out.append((ctx.hook_name("hook_resid_pre", l), lambda x, hook, s=saved: s.__setitem__("pre", x)))
                out.append((ctx.hook_name("hook_resid_post", l), lambda x, hook, s=saved: where_positions(x, mask, s.pop("pre"))))
            else:
                out.append((ctx.hook_name(SKIPPABLE[self.component], l), lambda x, hook: where_positions(x, mask, torch.zeros_like(x))))
        return out
