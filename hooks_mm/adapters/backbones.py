"""The backbone table: where the hook points of one decoder block live, per text ``model_type``.

A wrapper (LLaVA, PaliGemma, ...) says where media enter; the decoder block under it is
described here, chosen from the text config's ``model_type`` (:func:`backbone_for`), so any
wrapper composes with any backbone. A ``model_type`` with no row is read as Llama-like and
accepted only when its block passes :func:`check_backbone` (every path the row names exists,
every other child of the block is a dropout, no sandwich / post-norms or multipliers the row does
not account for); otherwise it is refused, naming the ``model_type``, the block and the problem.

What each row decides (paths are relative to one decoder layer; ``q`` ... ``down`` to ``attn``
or ``mlp``):

- ``attn_out`` / ``mlp_out``: the module whose OUTPUT is what the branch adds to the residual
  (``o_proj`` and ``mlp`` pre-norm; the post-norms under Gemma-2/3 sandwich norms), or None:
  derived inside the layer as ``resid_mid - resid_pre`` / ``resid_post - resid_mid`` (Granite,
  whose ``residual_multiplier`` scales each branch: the hooks hold the scaled value, what is
  really added, and an edit there replaces it).
- ``ln2``: the norm whose INPUT is ``resid_mid``; None with ``parallel=True`` (Cohere: attention
  and MLP both read ``ln1``'s output and are added together, so ``hook_resid_mid`` is defined as
  ``resid_pre + attn_out``, an edit there is added to the block's output, and there is no
  ``ln2.hook_normalized``).
- ``qkv`` / ``gate_up``: fused projections (Phi-3). ``attn.hook_q/k/v`` are split views of
  ``qkv``'s output and ``mlp.hook_pre`` / ``hook_pre_linear`` the gate / up halves of
  ``gate_up``'s output; edits to them are written back into the fused output.
- ``scales``: text-config multipliers the row accounts for. Granite's ``embedding_multiplier``
  is applied by the decoder to its whole input: ``hook_embed`` is the embedding module's output
  (before it, and before media are written), ``blocks.0.hook_resid_pre`` what the first block
  reads (after it). ``logits_scaling`` (Granite) and ``final_logit_softcapping`` (Gemma-2) are
  applied by the text model's own ``*ForCausalLM`` head only; a wrapper's head (LLaVA's) that
  does not apply them is matched as it is (``Adapter.logits_post`` is the wrapper's head).

Gemma's embedding normaliser (``sqrt(d_model)``) is inside its embedding module in
transformers 5: ``hook_embed`` is already scaled, and media features are written unscaled.

Example::

    from hooks_mm.adapters import BACKBONES, Backbone

    BACKBONES["my_lm"] = Backbone("my_lm", ln2="pre_mlp_norm", mlp_out="post_mlp_norm")
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Backbone:
    """Dotted paths of one decoder block's parts (relative to the layer) and how its branches add up."""

    name: str
    attn: str = "self_attn"
    q: str | None = "q_proj"
    k: str | None = "k_proj"
    v: str | None = "v_proj"
    # fused [q; k; v] projection inside attn (Phi-3): hook_q / hook_k / hook_v are split views of its output
    qkv: str | None = None
    # q / k / v name the per-head norms whose INPUTS are hook_q / hook_k / hook_v (the projections' outputs as
    # [.., head, d_head]): Gemma-4, whose k=v attention reads its values from k_proj (no v_proj)
    qkv_norms: bool = False
    # qkv's output laid out per head as [head, (q, k, v), d_head] (Persimmon / GPT-NeoX), not [q; k; v]
    qkv_per_head: bool = False
    o: str = "o_proj"
    ln1: str = "input_layernorm"
    # the norm whose INPUT is resid_mid (pre_feedforward_layernorm under sandwich norms); None: parallel block
    ln2: str | None = "post_attention_layernorm"
    # module whose OUTPUT is what the attention branch adds to the residual stream; None: derived as mid - pre
    attn_out: str | None = "self_attn.o_proj"
    mlp: str = "mlp"
    gate: str | None = "gate_proj"
    up: str | None = "up_proj"
    # fused [gate; up] projection inside mlp (Phi-3): hook_pre / hook_pre_linear are its two halves
    gate_up: str | None = None
    down: str = "down_proj"
    # module whose OUTPUT is what the MLP branch adds to the residual stream; None: derived as post - mid
    mlp_out: str | None = "mlp"
    # attention and MLP both read ln1's output; the block returns resid_pre + attn_out + mlp_out (Cohere)
    parallel: bool = False
    # text-config multipliers this row's hook points account for (see the module docstring)
    scales: tuple[str, ...] = ()
    # the text model's final norm (its child name): a wrapper row's "<lm>.norm" becomes "<lm>.<norm_name>"
    norm_name: str = "norm"
    # a buffer of the layer that multiplies the block's whole output, residual included (Gemma-4 layer_scalar):
    # the row derives hook_mlp_out (post - mid) and an edit at resid_mid is scaled by it as the block scales it
    out_scale: str | None = None
    # modules of the block the row accounts for inside a derived hook (Gemma-4's post_feedforward_layernorm,
    # inside hook_mlp_out), with no hook point of their own
    extra: tuple[str, ...] = ()
    # (text-config field, the term it adds): a config where the field is set (truthy) is refused with that reason
    refuse: tuple[tuple[str, str], ...] = ()
    notes: str = ""

    @property
    def gated(self) -> bool:
        """Whether the MLP has a gate (and so ``mlp.hook_pre_linear``)."""
        return self.gate is not None or self.gate_up is not None

    def paths(self) -> list[str]:
        """Every module path the row names, relative to the decoder layer."""
        attn = [self.attn, *(f"{self.attn}.{p}" for p in (self.q, self.k, self.v, self.qkv, self.o) if p)]
        mlp = [self.mlp, *(f"{self.mlp}.{p}" for p in (self.gate, self.up, self.gate_up, self.down) if p)]
        return attn + mlp + [p for p in (self.ln1, self.ln2, self.attn_out, self.mlp_out, *self.extra) if p]


# the fields an Adapter reads through its backbone (adapter.ln2 == adapter.backbone.ln2)
BLOCK_FIELDS = tuple(f.name for f in fields(Backbone) if f.name not in ("name", "notes")) + ("gated",)

LLAMA = Backbone("llama", notes="pre-norm block: x + attn(ln1(x)), then + mlp(ln2(.)); q_norm / k_norm allowed")

SANDWICH = Backbone(
    "sandwich",
    ln2="pre_feedforward_layernorm",
    attn_out="post_attention_layernorm",
    mlp_out="post_feedforward_layernorm",
    notes="Gemma-2 / Gemma-3: attention output and MLP each wrapped by norms; softcapped scores go through "
    "the hooked attention as the model passes them",
)

PHI3 = Backbone(
    "phi3",
    q=None,
    k=None,
    v=None,
    qkv="qkv_proj",
    gate=None,
    up=None,
    gate_up="gate_up_proj",
    notes="fused qkv_proj ([q; k; v] heads) and gate_up_proj ([gate; up]): hook_q/k/v and hook_pre / "
    "hook_pre_linear are split views written back into the fused output",
)

GRANITE = Backbone(
    "granite",
    attn_out=None,
    mlp_out=None,
    scales=("residual_multiplier", "embedding_multiplier", "logits_scaling"),
    notes="each branch is scaled by residual_multiplier before it is added: hook_attn_out / hook_mlp_out are "
    "derived (mid - pre, post - mid), the scaled values; embedding_multiplier is applied after hook_embed",
)

COHERE = Backbone(
    "cohere",
    ln2=None,
    parallel=True,
    notes="parallel block: out = x + attn(ln1(x)) + mlp(ln1(x)); hook_resid_mid := resid_pre + attn_out "
    "(an edit there is added to the output), no ln2.hook_normalized",
)

PERSIMMON = Backbone(
    "persimmon",
    q=None,
    k=None,
    v=None,
    qkv="query_key_value",
    qkv_per_head=True,
    norm_name="final_layernorm",
    o="dense",
    attn_out="self_attn.dense",
    gate=None,
    up="dense_h_to_4h",
    down="dense_4h_to_h",
    notes="Persimmon (Fuyu): LayerNorm pre-norm block, fused query_key_value laid out per head [head, (q, k, v), "
    "d_head] (hook_q/k/v are its views, before q/k_layernorm), dense output; ungated MLP dense_h_to_4h -> act -> "
    "dense_4h_to_h (hook_pre is dense_h_to_4h's output, no hook_pre_linear)",
)

MOLMO2 = Backbone(
    "molmo2",
    refuse=(("norm_after", "norm_after=True: its norms normalise the attention and MLP outputs, not their inputs"),),
    notes="Molmo2 text block: Llama-like (q_norm / k_norm over the whole projection or per head, hook_q / hook_k "
    "before them); the post-norm variant (norm_after) is refused",
)

KOSMOS2_5 = Backbone(
    "kosmos2_5",
    o="out_proj",
    ln1="self_attn_layer_norm",
    ln2="final_layer_norm",
    attn_out="self_attn.out_proj",
    mlp="ffn",
    gate=None,
    up="fc1",
    down="fc2",
    mlp_out="ffn",
    notes="Kosmos-2.5 text block: LayerNorm pre-norm, out_proj; ungated MLP fc1 -> act -> ffn_layernorm -> fc2 "
    "(hook_pre is fc1's output, hook_post fc2's input: after the inner norm)",
)

GEMMA4 = Backbone(
    "gemma4",
    q="q_norm",
    k="k_norm",
    v="v_norm",
    qkv_norms=True,
    ln2="pre_feedforward_layernorm",
    attn_out="post_attention_layernorm",
    mlp_out=None,
    extra=("post_feedforward_layernorm",),
    out_scale="layer_scalar",
    refuse=(
        ("hidden_size_per_layer_input", "per-layer inputs (PLE: per_layer_input_gate / per_layer_projection add a "
         "per-layer embedding term after the MLP) that no hook point holds"),
        ("num_kv_shared_layers", "layers that reuse another layer's keys and values (num_kv_shared_layers) and so "
         "have no k_proj / v_proj for attn.hook_k / hook_v"),
        ("enable_moe_block", "a mixture-of-experts branch (router / experts) beside the MLP that no hook point holds"),
    ),
    notes="Gemma-4 dense block: sandwich norms as Gemma-3, q/k/v norms (hook_q/k/v are their inputs: the "
    "projections' outputs; with attention_k_eq_v a full-attention layer's values are k_proj's output, before "
    "k_norm / v_norm), per-layer head sizes (full-attention layers wider), then the whole output times the "
    "layer's layer_scalar: hook_mlp_out is derived (resid_post - resid_mid: the post-norm MLP output times "
    "layer_scalar plus (layer_scalar - 1) * resid_mid), an edit at resid_mid is scaled by layer_scalar as the "
    "block scales its residual",
)  # fmt: skip

# text-config model_type -> the row of its decoder block (verified exact under LLaVA by tests/test_backbones.py)
BACKBONES: dict[str, Backbone] = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "qwen3": LLAMA,
    "gemma": LLAMA,
    "gemma2": SANDWICH,
    "gemma3_text": SANDWICH,
    "phi3": PHI3,
    "granite": GRANITE,
    "cohere": COHERE,
    "gemma4_text": GEMMA4,
    "persimmon": PERSIMMON,
    "molmo2_text": MOLMO2,
    "kosmos_2_5_text_model": KOSMOS2_5,
}

# text-config fields that scale what a block adds to the residual, the embedding or the logits
# (Granite, MiniCPM): a row that does not account for them would put hook points off by that factor
MULTIPLIERS = ("residual_multiplier", "embedding_multiplier", "logits_scaling", "scale_depth", "scale_emb")


def model_type(text_config: Any) -> str:
    return str(getattr(text_config, "model_type", None) or "?")


def backbone_for(text_config: Any) -> Backbone:
    """The row of the text config's ``model_type``; the Llama-like row for a type with none
    (:func:`check_backbone` then decides whether the block really is Llama-like)."""
    return BACKBONES.get(model_type(text_config), LLAMA)


def check_backbone(adapter: Any, layer: Any, text_config: Any, index: int | None = None) -> None:
    """Refuse a decoder block its backbone row does not describe, before any hook point is named.

    A block with fused projections, post-norms, sandwich norms, a parallel layout or residual
    multipliers that its row does not name would give hook points that are missing or silently
    not what is added to the residual stream. ``index``: the layer's number, for the message
    (HookedMLLM checks every block: stacks can mix dense and MoE or attention and linear layers).
    """
    b: Backbone = adapter.backbone or backbone_for(text_config)
    kind = model_type(text_config)
    missing = [p for p in b.paths() if not _has(layer, p)]
    problems = [f"no module {', '.join(missing)}"] if missing else []
    children = {name for name, _ in layer.named_children()}
    if "pre_feedforward_layernorm" in children and b.ln2 != "pre_feedforward_layernorm":
        problems.append("sandwich norms (pre_/post_feedforward_layernorm) the row does not name")
    elif "post_feedforward_layernorm" in children and "post_feedforward_layernorm" not in (b.mlp_out, *b.extra):
        problems.append("a norm after the MLP (post_feedforward_layernorm) the row does not name")
    named = {p.split(".")[0] for p in b.paths()}
    unknown = sorted(
        name for name, child in layer.named_children() if name not in named and not isinstance(child, _INERT)
    )
    if unknown and not problems:  # a module the row does not place may sit on the residual path
        problems.append(f"modules the row does not name ({', '.join(unknown)})")
    if b.out_scale is not None and not isinstance(getattr(layer, b.out_scale, None), torch.Tensor):
        problems.append(f"no output scale {b.out_scale!r} on the layer")
    problems += [reason for name, reason in b.refuse if getattr(text_config, name, None)]
    if getattr(text_config, "clip_qkv", None) is not None:  # OLMo-1: q/k/v clamped after the projections
        problems.append(f"clip_qkv={text_config.clip_qkv}: attention reads q/k/v clamped after the projections")
    if getattr(text_config, "swin_norm", False):  # same module names, norms moved after each branch
        problems.append("swin_norm=True: its norms normalise the attention and MLP outputs, not their inputs")
    if b.parallel and "post_attention_layernorm" in children:
        problems.append("a second norm (post_attention_layernorm) although the row describes a parallel block")
    scaled = {
        m: getattr(text_config, m)
        for m in MULTIPLIERS
        if getattr(text_config, m, None) not in (None, 1, 1.0) and m not in b.scales
    }
    if scaled:
        problems.append(f"residual / embedding / logit multipliers {scaled} the row does not account for")
    if not problems:
        return
    row = f"row {b.name!r}" if kind in BACKBONES else "no row in hooks_mm.adapters.BACKBONES, read as Llama-like"
    raise NotImplementedError(
        f"the {adapter.name} wrapper is over backbone {kind!r} ({row}), but its decoder block"
        f"{'' if index is None else f' {index}'} "
        f"({type(layer).__name__} with {', '.join(sorted(children))}) has {'; '.join(problems)}: its hook points "
        "would be missing or not what is added to the residual stream. Use a checkpoint over a supported backbone "
        f"({', '.join(sorted(BACKBONES))}), or add a row BACKBONES[{kind!r}] = Backbone(...) whose paths match this "
        "block and check it with the conformance tests (tests/test_backbones.py)."
    )


# children of a decoder layer that do not change a value in eval mode
_INERT = (nn.Dropout, nn.Identity)


def _has(module: Any, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False
