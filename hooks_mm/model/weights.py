"""TransformerLens's weight names and tokenizer helpers on a HookedMLLM, as read-only views of the HF weights.

Shapes follow TransformerLens (``x @ W``): ``W_E`` [d_vocab, d_model] (the embedding table as stored: Gemma's
``sqrt(d_model)`` scale is applied by its embedding module, not here), ``W_U`` [d_model, d_vocab], ``b_U``
[d_vocab]; per layer, stacked over the layers: ``W_Q`` [n_layers, n_heads, d_model, d_head], ``W_K`` / ``W_V``
the same (grouped key / value heads repeated to ``n_heads``, as TransformerLens's grouped-query attention),
``W_O`` [n_layers, n_heads, d_head, d_model], ``W_gate`` / ``W_in`` [n_layers, d_model, d_mlp] (the gate and
up projections: ``mlp.hook_pre = x @ W_gate``, ``mlp.hook_pre_linear = x @ W_in``; an ungated MLP has ``W_in``
only), ``W_out`` [n_layers, d_mlp, d_model]. Fused projections (Phi-3 ``qkv_proj`` / ``gate_up_proj``,
GLM's ``gate_up_proj``, Persimmon's per-head ``query_key_value``) are split as the model splits them.

A stack whose layers differ (cross-attention, mixture-of-experts, linear-attention / convolution layers, rows
whose q / k / v paths are norms or whose q carries a gate) has no single stacked tensor: those properties raise,
naming the layers (a ``NotImplementedError``: an ``AttributeError`` raised in a property would be replaced by
``nn.Module``'s own "has no attribute").

Example::

    model = HookedMLLM.from_pretrained("tiny-llava")
    logit_lens = model.W_U                      # [d_model, d_vocab]
    model.to_str_tokens("USER: what colour?")   # ['USER', ':', ...]
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange, repeat
from jaxtyping import Float
from torch import Tensor, nn


class WeightViews:
    """Mixin of :class:`~hooks_mm.model.core.HookedMLLM`: TransformerLens's weight and tokenizer attributes."""

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.hf_model.get_input_embeddings().weight.detach()

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self._unembed().weight.detach().T

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        head = self._unembed()
        bias = getattr(head, "bias", None)
        return bias.detach() if bias is not None else head.weight.new_zeros(head.weight.shape[0])

    @property
    def W_Q(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return torch.stack([self._qkv(l)[0] for l in self._uniform("attention")])

    @property
    def W_K(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return torch.stack([self._qkv(l)[1] for l in self._uniform("attention")])

    @property
    def W_V(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return torch.stack([self._qkv(l)[2] for l in self._uniform("attention")])

    @property
    def W_O(self) -> Float[Tensor, "n_layers n_heads d_head d_model"]:
        h = self.cfg.n_heads
        return torch.stack(
            [
                rearrange(self._linear(l, "attn", self.adapter.o).T, "(h d) m -> h d m", h=h)
                for l in self._uniform("attention")
            ]
        )

    @property
    def W_gate(self) -> Float[Tensor, "n_layers d_model d_mlp"]:
        if not self.adapter.gated:
            raise NotImplementedError(f"{self.cfg.architecture}'s MLP has no gate (no W_gate): use W_in and W_out.")
        return torch.stack([self._mlp_in(l)[0] for l in self._uniform("mlp")])

    @property
    def W_in(self) -> Float[Tensor, "n_layers d_model d_mlp"]:
        return torch.stack([self._mlp_in(l)[1] for l in self._uniform("mlp")])

    @property
    def W_out(self) -> Float[Tensor, "n_layers d_mlp d_model"]:
        return torch.stack([self._linear(l, "mlp", self.adapter.down).T for l in self._uniform("mlp")])

    # ------------------------------------------------------------------ the head, on any residual

    def apply_ln_final(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The family's own final norm (the HF module: RMSNorm, LayerNorm, Gemma's ``(1 + w)``) on ``resid``.

        Example::

            normed = model.apply_ln_final(cache["blocks.3.hook_resid_post"])
        """
        return self.submodule(self.adapter.final_norm)(resid)

    def resid_to_logits(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """What the model would output if ``resid`` were its last residual: final norm, unembedding and the
        family's logit post-processing (soft-capping, logit scaling, suppressed tokens). The logit lens.

        Example::

            lens = model.resid_to_logits(cache["blocks.1.hook_resid_post"])   # [batch, pos, d_vocab]
        """
        logits = self._unembed()(self.apply_ln_final(resid))
        post = self.adapter.logits_post
        return logits if post is None else post(self.hf_model, logits)

    # ------------------------------------------------------------------ tokens

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer (or the processor, when it is a tokenizer)."""
        proc = self.processor
        tok = getattr(proc, "tokenizer", proc)
        if tok is None or not hasattr(tok, "convert_ids_to_tokens"):
            raise ValueError(
                "this HookedMLLM has no tokenizer: load it with HookedMLLM.from_pretrained(name) (which loads the "
                "processor) or pass processor=... when wrapping the HF model."
            )
        return tok

    def to_tokens(self, text: str | list[str]) -> Tensor:
        """Token ids ``[batch, pos]`` of ``text`` (text only; for media use ``model.to_inputs``)."""
        if not isinstance(text, (str, list)) or (isinstance(text, list) and not all(isinstance(t, str) for t in text)):
            raise TypeError(f"to_tokens takes a string or a list of strings, not {type(text).__name__}.")
        batch = self.tokenizer([text] if isinstance(text, str) else text, return_tensors="pt", padding=True)
        return batch["input_ids"]

    def to_str_tokens(self, tokens: str | Tensor | list[int]) -> list[str] | list[list[str]]:
        """One string per token of ``tokens`` (a string, ids [pos] or ids [batch, pos]), as the tokenizer decodes
        each id alone."""
        if isinstance(tokens, str):
            tokens = self.to_tokens(tokens)[0]
        ids = torch.as_tensor(tokens)
        if ids.dtype.is_floating_point or ids.dim() not in (1, 2):
            raise TypeError(f"to_str_tokens takes a string or integer ids [pos] / [batch, pos], not {tuple(ids.shape)}")
        decode = self.tokenizer.decode
        if ids.dim() == 2:
            return [[decode([int(i)]) for i in row] for row in ids]
        return [decode([int(i)]) for i in ids]

    # ------------------------------------------------------------------ internals

    def _unembed(self) -> nn.Module:
        head = self.hf_model.get_output_embeddings()
        if head is None:
            raise NotImplementedError(f"{self.cfg.architecture} has no output embedding (no W_U / b_U).")
        return head

    def _uniform(self, part: str) -> range:
        """Every layer index, when each layer has the same dense ``part`` (attention or MLP); else a named error."""
        cfg, a = self.cfg, self.adapter
        odd = {
            "cross-attention": cfg.cross_attn_layers,
            "mixture-of-experts": cfg.moe_layers if part == "mlp" else [],
            "linear-attention / convolution": sorted(cfg.mixer_layers) if part == "attention" else [],
        }
        odd = {k: v for k, v in odd.items() if v}
        why = [f"{k} layers {v}" for k, v in odd.items()]
        if part == "attention" and (a.qkv_norms or a.q_gated):
            why.append("q / k / v read through per-head norms or a gated q_proj (its row: " + a.backbone.name + ")")
        heads = {int(getattr(self.attention(l), "head_dim", cfg.d_head) or cfg.d_head) for l in range(cfg.n_layers)}
        if part == "attention" and len(heads) > 1:
            why.append(f"head sizes {sorted(heads)} that differ by layer")
        if why:
            raise NotImplementedError(
                f"{cfg.architecture} has no stacked {part} weights: its stack has {'; '.join(why)}. Read the HF "
                f"modules of a layer instead (model.attention(l), model.decoder_layers[l])."
            )
        return range(cfg.n_layers)

    def _linear(self, l: int, part: str, path: str) -> Tensor:
        root = self.attention(l) if part == "attn" else self.decoder_layers[l].get_submodule(self.adapter.mlp)
        return root.get_submodule(path).weight.detach()

    def _qkv(self, l: int) -> tuple[Tensor, Tensor, Tensor]:
        a, cfg = self.adapter, self.cfg
        h, kv, d = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head
        if a.qkv is not None and a.qkv_per_head:  # [head, (q, k, v), d_head] rows
            w = rearrange(self._linear(l, "attn", a.qkv), "(h three d) m -> three h m d", h=h, three=3)
            return w[0], w[1], w[2]
        if a.qkv is not None:
            q, k, v = self._linear(l, "attn", a.qkv).split([h * d, kv * d, kv * d])
        else:
            q, k, v = (self._linear(l, "attn", getattr(a, key)) for key in ("q", "k", "v"))
        q = rearrange(q, "(h d) m -> h m d", h=h)
        k, v = (repeat(rearrange(w, "(g d) m -> g m d", g=kv), "g m d -> (g r) m d", r=h // kv) for w in (k, v))
        return q, k, v

    def _mlp_in(self, l: int) -> tuple[Tensor | None, Tensor]:
        """(W_gate, W_in) of layer ``l``, [d_model, d_mlp] each (W_gate None for an ungated MLP)."""
        a = self.adapter
        if a.gate_up is not None:
            gate, up = self._linear(l, "mlp", a.gate_up).chunk(2)
            return gate.T, up.T
        gate = self._linear(l, "mlp", a.gate).T if a.gate is not None else None
        return gate, self._linear(l, "mlp", a.up).T
