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

from torch import nn


@dataclass(frozen=True)
class Moe:
    """Paths (relative to the MoE block, ``Backbone.mlp``) and routing rule of a sparse MoE MLP.

    ``router``: module with ``weight`` [n_experts, d_model] and ``top_k``, returning ``(logits, weights,
    indices)``; ``experts``: one module with 3-D ``gate_up_proj`` [n_experts, 2 d_expert, d_model] and
    ``down_proj`` [n_experts, d_model, d_expert] (transformers 5's fused experts). Routing:
    ``softmax(logits)`` in float32, top-k, then divided by its sum when ``renorm`` (True, or the name of
    the router's boolean attribute) holds, then cast to the logits' dtype when ``cast``.
    ``shared`` / ``shared_gate``: a dense always-on expert and its sigmoid gate (Qwen2-MoE).
    """

    router: str = "gate"
    experts: str = "experts"
    renorm: bool | str = "norm_topk_prob"
    cast: bool = True
    shared: str | None = None
    shared_gate: str | None = None

    def paths(self) -> list[str]:
        return [p for p in (self.router, self.experts, self.shared, self.shared_gate) if p]


@dataclass(frozen=True)
class Mixer:
    """A token mixer that is not attention (linear attention, short convolution), by layer type.

    ``kind``: the text config's ``layer_types`` value of its layers; ``path``: the module (relative
    to the layer) whose OUTPUT is what the mixer adds to the residual stream, ``hook_attn_out``.
    Its internals have no hook points: only its output (and its input, ``ln1.hook_normalized``).
    """

    kind: str
    path: str
    notes: str = ""
    # a module after the mixer whose OUTPUT is what is added (LFM3's post_operator_norm); None: ``path``'s output
    out: str | None = None


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
        return self.moe is not None and _has(layer, f"{self.mlp}.{self.moe.experts}")

    def paths(self, moe: bool = False, mixer: Mixer | None = None) -> list[str]:
        """Every module path the row names, relative to the decoder layer (``moe``: of a MoE layer; a
        ``mixer`` layer: its mixer in place of the attention paths)."""
        attn = [self.attn, *(f"{self.attn}.{p}" for p in (self.q, self.k, self.v, self.qkv, self.o) if p)]
        attn = (
            [mixer.path, *[mixer.out] * bool(mixer.out)] if mixer else attn + ([self.attn_out] if self.attn_out else [])
        )
        parts = self.moe.paths() if moe and self.moe else (self.gate, self.up, self.gate_up, self.down)
        mlp = [self.mlp, *(f"{self.mlp}.{p}" for p in parts if p)]
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
    "lfm3": LFM3,
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
    moe = b.is_moe(layer)
    paths = b.paths(moe, b.mixer(text_config, index or 0))
    missing = [p for p in paths if not _has(layer, p)]
    problems = [f"no module {', '.join(missing)}"] if missing else []
    if moe and not missing:
        problems += moe_problems(b.moe, layer.get_submodule(b.mlp))
    children = {name for name, _ in layer.named_children()}
    if "pre_feedforward_layernorm" in children and b.ln2 != "pre_feedforward_layernorm":
        problems.append("sandwich norms (pre_/post_feedforward_layernorm) the row does not name")
    elif "post_feedforward_layernorm" in children and b.mlp_out != "post_feedforward_layernorm":
        problems.append("a norm after the MLP (post_feedforward_layernorm) the row does not name")
    named = {p.split(".")[0] for p in paths}
    unknown = sorted(
        name for name, child in layer.named_children() if name not in named and not isinstance(child, _INERT)
    )
    if unknown and not problems:  # a module the row does not place may sit on the residual path
        problems.append(f"modules the row does not name ({', '.join(unknown)})")
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


def moe_problems(row: Moe, block: nn.Module) -> list[str]:
    """What in a MoE block the hooked MoE forward (:mod:`hooks_mm.model.moe`) would not reproduce."""
    problems = []
    experts, router = block.get_submodule(row.experts), block.get_submodule(row.router)
    extra = sorted({n for n, _ in block.named_children()} - {p.split(".")[0] for p in row.paths()})
    if extra:
        problems.append(f"MoE block modules the row does not name ({', '.join(extra)})")
    layout = {"has_gate": True, "has_bias": False, "is_transposed": False, "is_concatenated": True}
    layout["has_post_expert_norm"] = False
    off = {k: getattr(experts, k, None) for k, v in layout.items() if getattr(experts, k, None) != v}
    if off:
        problems.append(f"experts {type(experts).__name__} with {off} (expected fused [gate; up] 3-D weights {layout})")
    for name in ("gate_up_proj", "down_proj", "act_fn"):
        if not hasattr(experts, name):
            problems.append(f"experts {type(experts).__name__} without {name}")
    if not (hasattr(router, "weight") and hasattr(router, "top_k")) or getattr(router, "bias", None) is not None:
        problems.append(f"router {type(router).__name__} is not a bias-free linear with top_k")
    if isinstance(row.renorm, str) and not hasattr(router, row.renorm):
        problems.append(f"router {type(router).__name__} has no {row.renorm}")
    return problems


# children of a decoder layer that do not change a value in eval mode
_INERT = (nn.Dropout, nn.Identity)


def _has(module: Any, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False
