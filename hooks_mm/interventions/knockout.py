"""Attention knockout: block attention edges from query positions to key positions.

Example::

    knock = AttentionKnockout(layers=range(2, 5), queries=Last(), keys=Image())
    model.run_with_interventions(inputs, knock)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hooks_mm.interventions.base import Context, Edit, Intervention
from hooks_mm.selectors import NonPad, Selector


@dataclass
class AttentionKnockout(Intervention):
    """Block attention edges from ``queries`` to ``keys`` in ``layers`` (all or some ``heads``).

    Applied in the attention scores (masked entries get the dtype minimum before the
    softmax), so it holds with grouped KV heads and bidirectional image prefixes alike; the
    nnsight backend applies the same op to the attention mask.
    """

    layers: int | list[int] | None
    queries: Selector = field(default_factory=NonPad)
    keys: Selector = field(default_factory=NonPad)
    heads: list[int] | None = None

    def edits(self, ctx: Context) -> list[Edit]:
        q = ctx.mask(self.queries, "AttentionKnockout queries")
        k = ctx.mask(self.keys, "AttentionKnockout keys")
        block = q[:, None, :, None] & k[:, None, None, :]  # [b, 1, q, k]
        n_heads = ctx.model.cfg.n_heads
        if self.heads is not None:
            bad = [h for h in self.heads if not 0 <= h < n_heads]
            if bad:
                raise IndexError(f"AttentionKnockout: heads {bad} out of range (0..{n_heads - 1}).")
            on = torch.zeros(n_heads, dtype=torch.bool, device=block.device)
            on[list(self.heads)] = True
            block = block & on[None, :, None, None]
        out = []
        for l in ctx.layers(self.layers, "AttentionKnockout"):
            if l in ctx.model.cfg.cross_attn_layers:
                raise ValueError(
                    f"AttentionKnockout: layer {l} is a cross-attention layer whose keys are vision "
                    "tiles, not sequence positions; knock out self-attention layers only."
                )
            out.append(Edit(ctx.hook_name("attn.hook_attn_scores", l), ("knock", block)))
        return out
