"""The backbone table: where the hook points of one decoder block live, per text ``model_type``.

A wrapper (LLaVA, PaliGemma, ...) says where media enter; the decoder block under it is
described here, chosen from the text config's ``model_type`` (:func:`backbone_for`), so any
wrapper composes with any backbone. A ``model_type`` with no row is read as Llama-like and
accepted only when its block passes :func:`~hooks_mm.adapters.block_check.check_backbone`
(every path the row names exists,
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
- ``ln1`` / ``ln2`` None in a block that is not parallel: no norm before attention / the MLP (EXAONE-4,
  whose norms sit only after each branch: ``attn_out`` / ``mlp_out`` name them): no
  ``ln1`` / ``ln2.hook_normalized``; ``hook_resid_mid`` is then the input of the MLP module.
- ``qkv`` / ``gate_up``: fused projections (Phi-3). ``attn.hook_q/k/v`` are split views of
  ``qkv``'s output and ``mlp.hook_pre`` / ``hook_pre_linear`` the gate / up halves of
  ``gate_up``'s output; edits to them are written back into the fused output.
- ``scales``: text-config multipliers the row accounts for. Granite's ``embedding_multiplier``
  is applied by the decoder to its whole input: ``hook_embed`` is the embedding module's output
  (before it, and before media are written), ``blocks.0.hook_resid_pre`` what the first block
  reads (after it). ``logits_scaling`` (Granite) and ``final_logit_softcapping`` (Gemma-2) are
  applied by the text model's own ``*ForCausalLM`` head only; a wrapper's head (LLaVA's) that
  does not apply them is matched as it is (``Adapter.logits_post`` is the wrapper's head).

- ``moe``: a :class:`Moe` row for blocks whose MLP is a sparse mixture of experts (Qwen2/3-MoE,
  Mixtral). A layer is a MoE layer when its ``mlp`` holds ``moe.experts``; other layers of the
  same stack (``mlp_only_layers``, ``decoder_sparse_step``) are dense and checked as such. The
  MoE hook scheme is described in :mod:`hooks_mm.model.moe`.
- ``mixers``: hybrid stacks (Qwen3.5, LFM2), whose layers differ by the text config's
  ``layer_types``. A layer whose type a :class:`Mixer` names holds that token mixer (gated
  DeltaNet linear attention, a short convolution) in place of attention: it has the residual,
  ``ln1`` / ``ln2``, MLP hooks and ``hook_attn_out`` (the mixer's output, what it adds to the
  residual), and no ``attn.*`` hooks (no q / k / v, scores or pattern exist there); the other
  layers are the row's attention layers, with every ``attn.*`` hook.
- ``q_gated``: ``q`` returns ``[query; gate]`` interleaved per head (Qwen3.5, Qwen3-Next), and
  attention's output is multiplied by ``sigmoid(gate)`` before ``o``: ``attn.hook_q`` is the
  query half (an edit is written back, the gate kept), ``attn.hook_z`` is ``o``'s input, the
  gated per-head output (so ``hook_attn_out`` is still the sum of ``z_h @ W_O[h]``).

Gemma's embedding normaliser (``sqrt(d_model)``) is inside its embedding module in
transformers 5: ``hook_embed`` is already scaled, and media features are written unscaled.

Example::

    from hooks_mm.adapters import BACKBONES, Backbone

    BACKBONES["my_lm"] = Backbone("my_lm", ln2="pre_mlp_norm", mlp_out="post_mlp_norm")
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from hooks_mm.adapters.block_parts import Mixer, Moe


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
    # the norm before attention; None: none (EXAONE-4), no ln1.hook_normalized
    ln1: str | None = "input_layernorm"
    # the norm whose INPUT is resid_mid (pre_feedforward_layernorm under sandwich norms); None: a parallel block,
    # or (not parallel) no norm before the MLP: resid_mid is the MLP's input (EXAONE-4)
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
    # norms at the end of each branch, before the residual add (Peri-LN), inside the derived attn_out / mlp_out
    inside: tuple[str, ...] = ()
    # sparse mixture-of-experts MLP in the layers whose mlp holds moe.experts (see Moe)
    moe: Moe | None = None
    # the text model's final norm (its attribute), where a wrapper's final_norm path ends in ".norm"
    norm: str = "norm"
    # q returns [query; gate] per head and attention's output is gated before o (Qwen3.5)
    q_gated: bool = False
    # hybrid stacks: the layers whose layer_types value a Mixer names hold it instead of attention
    mixers: tuple[Mixer, ...] = ()
    # a buffer of the layer that multiplies the block's whole output, residual included (Gemma-4 layer_scalar):
    # the row derives hook_mlp_out (post - mid) and an edit at resid_mid is scaled by it as the block scales it
    out_scale: str | None = None
    # (text-config field, the term it adds): a config where the field is set (truthy) is refused with that reason
    refuse: tuple[tuple[str, str], ...] = ()
    # the MLP's activation module where it is a child of the layer, not of an mlp module (OPT: mlp="")
    act: str | None = None
    # the block reshapes [batch, pos, d] to [batch * pos, d] before its MLP half (OPT): the wiring shows those
    # hook points as [batch, pos, ...]; the nnsight backend refuses them
    flat: bool = False
    # the text model's submodule holding layers, embed_tokens and the final norm (OPT: decoder)
    decoder: str = ""
    notes: str = ""

    def mixer(self, text_config: Any, index: int) -> Mixer | None:
        """The non-attention mixer of layer ``index`` (from ``text_config.layer_types``), or None."""
        types = getattr(text_config, "layer_types", None) if self.mixers else None
        kind = types[index] if types is not None and index < len(types) else None
        return next((m for m in self.mixers if m.kind == kind), None)

    @property
    def gated(self) -> bool:
        """Whether the MLP has a gate (and so ``mlp.hook_pre_linear``)."""
        return self.gate is not None or self.gate_up is not None

    def is_moe(self, layer: Any) -> bool:
        """Whether ``layer``'s MLP is this row's mixture of experts (else a dense MLP)."""
        return self.moe is not None and has_module(layer, f"{self.mlp}.{self.moe.experts}")

    def paths(self, moe: bool = False, mixer: Mixer | None = None) -> list[str]:
        """Every module path the row names, relative to the decoder layer (``moe``: of a MoE layer; a
        ``mixer`` layer: its mixer in place of the attention paths)."""
        attn = [self.attn, *(f"{self.attn}.{p}" for p in (self.q, self.k, self.v, self.qkv, self.o) if p)]
        attn = (
            [mixer.path, *[mixer.out] * bool(mixer.out)] if mixer else attn + ([self.attn_out] if self.attn_out else [])
        )
        parts = self.moe.paths() if moe and self.moe else (self.gate, self.up, self.gate_up, self.down, self.act)
        mlp = [self.mlp, *(".".join(filter(None, (self.mlp, p))) for p in parts if p)]
        return attn + mlp + [p for p in (self.ln1, self.ln2, self.mlp_out) if p] + list(self.inside)


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


HYPERCLOVAX = Backbone(
    "hyperclovax",
    attn_out=None,
    mlp_out=None,
    inside=("post_norm1", "post_norm2"),
    scales=("residual_multiplier", "embedding_multiplier", "logits_scaling"),
    notes="HyperCLOVAX: x + residual_multiplier * post_norm1(attn(ln1(x))), then the same with post_norm2 and the "
    "MLP: hook_attn_out / hook_mlp_out are derived (mid - pre, post - mid), after the post-norm and the multiplier; "
    "embedding_multiplier is applied after hook_embed (to the media features too); logits_scaling multiplies the "
    "logits in the HyperCLOVAX heads",
)

GLM4V = Backbone(
    "glm4v",
    gate=None,
    up=None,
    gate_up="gate_up_proj",
    attn_out="post_self_attn_layernorm",
    mlp_out="post_mlp_layernorm",
    notes="GLM-4V / GLM-OCR text block: x + post_self_attn_layernorm(attn(input_layernorm(x))), then "
    "+ post_mlp_layernorm(mlp(post_attention_layernorm(.))): hook_attn_out / hook_mlp_out are the post-norms' "
    "outputs; fused gate_up_proj ([gate; up]) split as for Phi-3",
)

COHERE2 = Backbone(
    "cohere2",
    ln2=None,
    parallel=True,
    notes="Cohere2: the Cohere parallel block without QK-norm; sliding layers apply RoPE, global layers none "
    "(hook_rot_q / hook_rot_k are then q / k as attention reads them)",
)

QWEN_MOE = Backbone(
    "qwen_moe",
    moe=Moe(),
    notes="Llama-like block whose MLP is a top-k mixture of experts in every decoder_sparse_step-th layer "
    "outside mlp_only_layers (dense MLP elsewhere): router logits, routing and per-expert neurons are hooked",
)

MIXTRAL = Backbone(
    "mixtral",
    moe=Moe(renorm=True, cast=False),
    notes="Llama-like block with a top-k mixture of experts in every layer (weights renormalised, kept float32)",
)

QWEN3_VL_MOE = Backbone(
    "qwen3_vl_moe",
    moe=Moe(renorm=True),
    notes="Qwen3-VL-MoE's text block: as qwen_moe, the top-k weights always renormalised",
)

QWEN2_MOE = Backbone(
    "qwen2_moe",
    moe=Moe(shared="shared_expert", shared_gate="shared_expert_gate"),
    notes="as qwen_moe, plus a shared expert (a dense MLP) scaled by sigmoid(shared_expert_gate(x))",
)

QWEN3_5 = Backbone(
    "qwen3_5",
    q_gated=True,
    mixers=(Mixer("linear_attention", "linear_attn", "gated DeltaNet linear attention"),),
    notes="hybrid: linear_attention layers hold a gated DeltaNet (linear_attn) whose output is hook_attn_out and "
    "which has no attn.* hooks; full_attention layers have a gated q_proj ([query; gate] per head): hook_q is the "
    "query half, hook_z the gated input of o_proj",
)

LFM2 = Backbone(
    "lfm2",
    o="out_proj",
    attn_out="self_attn.out_proj",
    ln1="operator_norm",
    ln2="ffn_norm",
    mlp="feed_forward",
    gate="w1",
    up="w3",
    down="w2",
    mlp_out="feed_forward",
    norm="embedding_norm",
    mixers=(Mixer("conv", "conv", "gated short convolution"),),
    notes="hybrid: conv layers hold a gated short convolution (conv) whose output is hook_attn_out and which has "
    "no attn.* hooks; attention layers (q_layernorm / k_layernorm) are Llama-like under LFM2's names; the final "
    "norm is embedding_norm",
)

PERSIMMON = Backbone(
    "persimmon",
    q=None,
    k=None,
    v=None,
    qkv="query_key_value",
    qkv_per_head=True,
    norm="final_layernorm",
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
    inside=("post_feedforward_layernorm",),
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

EXAONE4 = Backbone(
    "exaone4",
    ln1=None,
    ln2=None,
    attn_out="post_attention_layernorm",
    mlp_out="post_feedforward_layernorm",
    notes="EXAONE-4: x + post_attention_layernorm(attn(x)), then + post_feedforward_layernorm(mlp(.)): no norm "
    "before either branch (no ln1 / ln2.hook_normalized; hook_resid_mid is the MLP's input); QK-norm; sliding "
    "layers apply RoPE, global layers none when sliding_window is set",
)

LLAMA4 = Backbone(
    "llama4",
    mlp="feed_forward",
    mlp_out="feed_forward",
    moe=Moe(router="router", renorm=False, shared="shared_expert", score="sigmoid_input", transposed=True, cast=False),
    notes="Llama 4 text block under its names (feed_forward); NoPE layers (no_rope_layers) with temperature-tuned "
    "queries and chunked-attention layers go through the hooked attention as the model passes them (hook_rot_q / "
    "hook_rot_k: q / k as attention reads them, after RoPE, the L2 qk-norm and the temperature scale). MoE "
    "layers (moe_layers): top-k experts whose sigmoid router score scales their INPUT, plus an ungated shared "
    "expert (hooks_mm.model.moe, sigmoid_input); dense layers elsewhere",
)

ARIA = Backbone(
    "aria",
    moe=Moe(router="router", renorm=True, shared="shared_experts", transposed=True),
    notes="Aria's text block: Llama-like attention, a MoE MLP in every layer (softmax over the top-k logits, i.e. "
    "the renormalised top-k softmax; experts stored [n, d_in, d_out]) plus ungated shared experts",
)

OPT = Backbone(
    "opt",
    o="out_proj",
    attn_out="self_attn.out_proj",
    ln1="self_attn_layer_norm",
    ln2="final_layer_norm",
    mlp="",
    gate=None,
    up="fc1",
    down="fc2",
    act="activation_fn",
    mlp_out="fc2",
    flat=True,
    decoder="decoder",
    norm="final_layer_norm",
    notes="OPT (pre-LN: do_layer_norm_before=True): x + out_proj(attn(self_attn_layer_norm(x))), then "
    "+ fc2(act(fc1(final_layer_norm(.)))), fc1 / fc2 children of the layer (no gate: mlp.hook_pre is fc1's output, "
    "mlp.hook_post fc2's input, hook_mlp_out fc2's output). The decoder adds learned positions (embed_positions) "
    "after hook_embed: blocks.0.hook_resid_pre holds them. q_proj's output is scaled by d_head^-0.5 before "
    "attention: attn.hook_q is q_proj's output, attn.hook_rot_q (no rotary) the scaled query attention reads. "
    "Post-LN (OPT-350m) and project_in / project_out (word_embed_proj_dim != hidden_size) are refused",
)

QWEN3_5_MOE = replace(
    QWEN3_5,
    name="qwen3_5_moe",
    moe=Moe(renorm=True, shared="shared_expert", shared_gate="shared_expert_gate"),
    notes="Qwen3.5's hybrid stack (gated DeltaNet / gated attention, as qwen3_5) whose every MLP is a top-k mixture "
    "of experts (weights always renormalised) plus a shared expert scaled by sigmoid(shared_expert_gate(x))",
)

GLM4V_MOE = Backbone(
    "glm4v_moe",
    moe=Moe(
        renorm="norm_topk_prob",
        cast=False,
        shared="shared_experts",
        score="sigmoid",
        bias="e_score_correction_bias",
        groups=("num_group", "topk_group"),
        scale="routed_scaling_factor",
        eps=1e-20,
    ),
    notes="GLM-4.5V's text block: Llama-like (no post-norms), dense MLP in the first_k_dense_replace layers, then "
    "GLM-4.5 MoE: sigmoid scores, experts chosen by score + e_score_correction_bias within the topk_group best "
    "groups, weights the unbiased scores renormalised times routed_scaling_factor (float32), plus an ungated "
    "shared expert (shared_experts)",
)

LFM3 = replace(
    LFM2,
    name="lfm3",
    o="o_proj",
    attn_out="post_operator_norm",
    mlp_out="post_ffn_norm",
    mixers=(Mixer("conv", "conv", "gated short convolution", out="post_operator_norm"),),
    notes="hybrid LFM2 with sandwich norms: post_operator_norm / post_ffn_norm (RMSNorm, or Identity without "
    "use_sandwich_norm) end each branch, so their outputs are hook_attn_out / hook_mlp_out; attention scales each "
    "head's output by sigmoid(g_proj(x)) before o_proj (hook_z is that gated input); sliding and full attention",
)

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
    "hyperclovax": HYPERCLOVAX,
    "glm4v_text": GLM4V,
    "glm_ocr_text": GLM4V,
    "cohere2": COHERE2,
    "qwen3_moe": QWEN_MOE,
    "mixtral": MIXTRAL,
    "qwen2_moe": QWEN2_MOE,
    "qwen3_vl_moe_text": QWEN3_VL_MOE,
    "qwen3_5_text": QWEN3_5,
    "lfm2": LFM2,
    "gemma4_text": GEMMA4,
    "persimmon": PERSIMMON,
    "molmo2_text": MOLMO2,
    "kosmos_2_5_text_model": KOSMOS2_5,
    "exaone4": EXAONE4,
    "llama4_text": LLAMA4,
    "aria_text": ARIA,
    "opt": OPT,
    "qwen3_5_moe_text": QWEN3_5_MOE,
    "glm4v_moe_text": GLM4V_MOE,
    "qwen3_omni_moe_text": QWEN_MOE,
    "lfm3": LFM3,
}


def model_type(text_config: Any) -> str:
    return str(getattr(text_config, "model_type", None) or "?")


def backbone_for(text_config: Any) -> Backbone:
    """The row of the text config's ``model_type``; the Llama-like row for a type with none
    (:func:`check_backbone` then decides whether the block really is Llama-like)."""
    return BACKBONES.get(model_type(text_config), LLAMA)


def has_module(module: Any, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False
