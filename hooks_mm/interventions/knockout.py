"""Attention knockout: block attention edges from query positions to key positions.

Example::

    knock = AttentionKnockout(layers=range(2, 5), queries=Last(), keys=Image())
    model.run_with_interventions(inputs, knock)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hooks_mm.interventions.base import Context, Edit, Intervention
from hooks_mm.layout import Modality
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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.heads is not None:
            if isinstance(self.heads, (int, range, tuple)) and not isinstance(self.heads, bool):
                self.heads = [self.heads] if isinstance(self.heads, int) else list(self.heads)
            if not isinstance(self.heads, list) or any(
                isinstance(h, bool) or not isinstance(h, int) for h in self.heads
            ):
                raise TypeError(f"AttentionKnockout: heads must be a list of head indices or None, got {self.heads!r}.")

    def edits(self, ctx: Context) -> list[Edit]:
        q = ctx.mask(self.queries, "AttentionKnockout queries")
        k = ctx.mask(self.keys, "AttentionKnockout keys")
        layers = ctx.layers(self.layers, "AttentionKnockout")
        _check_attention_layers(ctx, layers, self.layers)
        block = q[:, None, :, None] & k[:, None, None, :]  # [b, 1, q, k]
        n_heads = ctx.model.cfg.n_heads
        if self.heads is not None:
            bad = [h for h in self.heads if not 0 <= h < n_heads]
            if bad or not self.heads:
                raise IndexError(
                    f"AttentionKnockout: heads {self.heads} must be a non-empty list within 0..{n_heads - 1} "
                    "(heads=None knocks out every head): pass head indices in that range."
                )
            on = torch.zeros(n_heads, dtype=torch.bool, device=block.device)
            on[list(self.heads)] = True
            block = block & on[None, :, None, None]
        _check_some_key_left(ctx, block)
        out = []
        for l in layers:
            if l in ctx.model.cfg.cross_attn_layers:
                raise ValueError(
                    f"AttentionKnockout: layer {l} is a cross-attention layer whose keys are vision "
                    "tiles, not sequence positions; knock out self-attention layers only."
                )
            out.append(Edit(ctx.hook_name("attn.hook_attn_scores", l), ("knock", block)))
        return out


def _check_some_key_left(ctx: Context, block: torch.Tensor) -> None:
    """An error when a query would have no key left: its causal keys (real positions up to itself,
    which every model lets it see) all knocked out. The softmax would then spread evenly over
    every position, padding and later tokens included: a meaningless result, not "no attention"."""
    real = ctx.layout.modality != Modality.PAD  # [b, s]
    s = real.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=real.device).tril()
    seen = (real[:, None, :] & causal[None])[:, None] & real[:, None, :, None]  # [b, 1, q, k], real queries
    starved = (seen.any(-1) & ~(seen & ~block).any(-1)).any(1)  # [b, q]: some head has no key left
    if bool(starved.any()):
        row, pos = starved.nonzero()[0].tolist()
        raise ValueError(
            f"AttentionKnockout: query position {pos} of row {row} would have no key left to attend to (every "
            "earlier real position, itself included, is knocked out), so its softmax would spread over every "
            "position, later tokens and padding included. Keep at least one key (e.g. leave out BOS: "
            "keys=Image(), or keys=... & ~Positions(0))."
        )


def _check_attention_layers(ctx: Context, layers: list[int], given: object) -> None:
    """An error naming the layers of a hybrid stack (Qwen3.5, LFM2) that have no attention to knock out."""
    mixers = ctx.model.cfg.mixer_layers
    bad = {l: mixers[l] for l in layers if l in mixers}
    if bad:
        attention = [l for l in range(ctx.model.cfg.n_layers) if l not in mixers]
        raise ValueError(
            f"AttentionKnockout: layers {sorted(bad)} ({', '.join(sorted(set(bad.values())))}) of this hybrid "
            f"stack have no attention scores to knock out (layers={given!r}): their token mixer reads every earlier "
            "position through a recurrent state or a convolution, not an attention pattern, so a knockout there "
            f"would be a silent no-op. Pass attention layers only: layers={attention}."
        )
