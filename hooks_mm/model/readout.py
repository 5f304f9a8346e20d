"""The readouts of :class:`~hooks_mm.model.cache.MLLMCache`: direct logit attribution, the logit lens and
TransformerLens's per-head ``hook_result`` entries, on the family's own final norm and head.

Example::

    attrs = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), " cat", " dog", pos_slice=-1)
    lens = cache.logit_lens()              # [n_layers + 1, batch, pos, d_vocab]: the model's logits last
"""

from __future__ import annotations

from typing import Any

from jaxtyping import Float
from torch import Tensor
from transformer_lens.utilities import Slice

from hooks_mm.model.branches import has_heads
from hooks_mm.model.directions import token_directions

Stack = Float[Tensor, "component *batch_and_pos d_model"]


class Readout:
    """Mixin of MLLMCache (``self`` is the cache: ``model``, ``cache_dict``, ``apply_ln_to_stack`` ...)."""

    def logit_attrs(  # type: ignore[override]
        self,
        residual_stack: Stack,
        tokens: Any,
        incorrect_tokens: Any = None,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool = True,
    ) -> Float[Tensor, " component *batch_and_pos"]:
        """Direct logit attribution: each component through the final norm (frozen scale) dotted with
        ``W_U[:, token]`` (minus ``W_U[:, incorrect_token]``). ``tokens``: a string (one token), an id, ids
        [batch] (one per row, every position) or [batch, pos]. Units: the head's output before soft-capping /
        ``logits_scaling``; the sum over a full decomposition is the logit minus ``b_U[token]`` and the final
        norm bias's part (``norm_bias() @ W_U[:, token]``).

        Example::

            attrs = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), " cat", " dog", pos_slice=-1)
        """
        dirs = token_directions(self.model, tokens)
        if incorrect_tokens is not None:
            wrong = token_directions(self.model, incorrect_tokens)
            if wrong.shape != dirs.shape:
                raise ValueError(
                    f"logit_attrs: tokens and incorrect_tokens must have the same shape ({tuple(dirs.shape[:-1])} "
                    f"vs {tuple(wrong.shape[:-1])})."
                )
            dirs = dirs - wrong
        scaled = self.apply_ln_to_stack(
            residual_stack, None, pos_slice=pos_slice, batch_slice=batch_slice, has_batch_dim=has_batch_dim
        )
        if has_batch_dim and scaled.ndim == 4 and dirs.ndim == 2 and dirs.shape[0] == scaled.shape[1]:
            dirs = dirs.unsqueeze(-2)  # one token per row, over every position
        return (scaled * dirs.to(scaled)).sum(-1)

    def logit_lens(
        self, layer: int | None = None, incl_mid: bool = False, pos_slice: Any = None, return_labels: bool = False
    ) -> Tensor | tuple[Tensor, list[str]]:
        """The logit lens: each residual of ``accumulated_resid`` (up to ``layer``) through the model's final
        norm, head and logit post-processing (``model.resid_to_logits``): [n, batch, pos, d_vocab]; the last
        entry of the default call is the model's logits. (Not TransformerLens's keyword set: slice and rank the
        result yourself.)

        Example::

            lens, labels = cache.logit_lens(pos_slice=-1, return_labels=True)   # [n_layers + 1, batch, d_vocab]
        """
        stack, labels = self.accumulated_resid(layer, incl_mid, pos_slice=pos_slice, return_labels=True)
        dev = self.model.cfg.device  # the head's device; the cache's may differ (run_with_cache(device=...))
        lens = self.model.resid_to_logits(stack.to(dev)).to(stack.device)
        return (lens, labels) if return_labels else lens

    def compute_head_results(self) -> None:
        """Store each head's result as ``blocks.{l}.attn.hook_result`` [..., head, d_model] (TransformerLens's
        entry; the ``o`` bias is not in it), at every layer with heads (:meth:`stack_head_results`)."""
        layers = [l for l in range(self.model.cfg.n_layers) if has_heads(self.model, l)]
        self._need([f"blocks.{l}.attn.hook_z" for l in layers], "compute_head_results")
        for l in layers:
            self.cache_dict[f"blocks.{l}.attn.hook_result"] = self._heads(l, Slice(None))[0]
