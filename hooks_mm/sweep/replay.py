"""Replay the decoder layers above a layer on a packed batch, reusing the clean run.

A clean forward records, for every decoder layer, the keyword arguments HF passed it
(attention masks, rotary / M-RoPE embeddings, cross-attention states), the residual stream
around it, and anything injected between layers (Qwen3-VL deepstack). ``Replay.run(h, l)``
then runs layers ``l+1 ..`` and the head on ``h`` = ``n`` configurations x ``batch`` rows,
with every recorded tensor tiled to the packed batch: no model code is copied, and what
the configurations share (the vision tower, the projector, every layer up to ``l``) is
computed once. ``Replay.verify()`` checks on the clean run that replayed logits equal the
model's own; callers fall back to plain forwards when it does not hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from hooks_mm.model import Batch, HookedMLLM


def _tile(v: Any, batch: int, n: int) -> Any:
    """Tile batch-leading tensors ``n`` times (config-major); size-1 dims broadcast as they are."""
    if torch.is_tensor(v):
        if v.dim() and v.shape[0] > 1 and v.shape[0] % batch == 0:
            return v.repeat(n, *([1] * (v.dim() - 1)))
        return v
    if isinstance(v, tuple):
        return tuple(_tile(x, batch, n) for x in v)
    if isinstance(v, list):
        return [_tile(x, batch, n) for x in v]
    return v


class Replay:
    """Recorded clean run of ``model`` on ``inputs``: residuals, layer kwargs, clean logits."""

    def __init__(self, model: HookedMLLM, batch: Batch):
        self.model = model
        self.batch = batch.shape[0]
        self.calls: dict[int, tuple[tuple, dict]] = {}
        layers = model.decoder_layers

        def record(l: int):  # noqa: ANN202
            def hook(m: Any, args: tuple, kwargs: dict) -> None:
                kw = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "use_cache", "hidden_states")}
                self.calls[l] = (args[1:], kw)

            return hook

        names = [
            f"blocks.{l}.{h}"
            for l in range(len(layers))
            for h in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "mlp.hook_post")
            if f"blocks.{l}.{h}" in model.hook_dict  # no dense mlp.hook_post in a mixture-of-experts block
        ]
        handles = [layer.register_forward_pre_hook(record(l), with_kwargs=True) for l, layer in enumerate(layers)]
        try:
            with torch.no_grad():
                self.logits, cache = model.run_with_cache(batch, names_filter=names + ["ln_final.hook_normalized"])
        finally:
            for h in handles:
                h.remove()
        self.cache = cache
        n = model.cfg.n_layers
        # what is added between block l's output and block l+1's input (zero but for injections)
        self.injected = {
            l: cache[f"blocks.{l + 1}.hook_resid_pre"] - cache[f"blocks.{l}.hook_resid_post"]
            for l in range(n - 1)
            if not torch.equal(cache[f"blocks.{l + 1}.hook_resid_pre"], cache[f"blocks.{l}.hook_resid_post"])
        }
        self.verified: dict[int, bool] = {}

    @torch.no_grad()
    def run(self, h: Float[Tensor, "nb seq d"], after: int, positions: Tensor | None = None) -> Tensor:
        """Logits of the packed residual ``h`` = the output of block ``after``.

        With ``positions`` ([batch] indices), only those positions are unembedded:
        [n * batch, vocab] instead of [n * batch, seq, vocab].
        """
        n = h.shape[0] // self.batch
        model = self.model
        for l in range(after, model.cfg.n_layers):
            if l > after:
                args, kw = self.calls[l]
                out = model.decoder_layers[l](
                    h, *_tile(args, self.batch, n), **{k: _tile(v, self.batch, n) for k, v in kw.items()}
                )
                h = out[0] if isinstance(out, tuple) else out
            if l in self.injected:
                h = h + self.injected[l].repeat(n, 1, 1)
        if positions is not None:
            h = h[torch.arange(h.shape[0]), positions.to(h.device).repeat(n)]
        return self.head(h)

    def head(self, h: Tensor) -> Tensor:
        """Final norm, unembedding and the family's logit post-processing (``model.resid_to_logits``)."""
        return self.model.resid_to_logits(h)

    def verify(self, after: int, atol: float = 1e-4) -> bool:
        """Does replaying from block ``after`` (two packed copies) give the clean logits?"""
        h = self.cache[f"blocks.{after}.hook_resid_post"]
        got = self.run(torch.cat([h, h]), after)
        b = self.batch
        ok = all(torch.allclose(got[i * b : (i + 1) * b], self.logits, atol=atol) for i in range(2))
        return bool(ok)
