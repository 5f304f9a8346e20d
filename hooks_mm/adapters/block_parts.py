"""The parts of a decoder block that are not a plain MLP or attention: a mixture-of-experts MLP (:class:`Moe`)
and a hybrid stack's non-attention token mixer (:class:`Mixer`). A :class:`~hooks_mm.adapters.backbones.Backbone`
row names them in its ``moe`` and ``mixers`` fields.

Example::

    from hooks_mm.adapters.block_parts import Mixer, Moe

    Moe(router="gate", shared="shared_expert", shared_gate="shared_expert_gate")   # Qwen2-MoE
    Mixer("linear_attention", "linear_attn")                                        # Qwen3.5's gated DeltaNet
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Moe:
    """Paths (relative to the MoE block, ``Backbone.mlp``) and routing rule of a sparse MoE MLP.

    ``router``: module with ``weight`` [n_experts, d_model] and ``top_k``, returning ``(logits, weights,
    indices)``; ``experts``: one module with 3-D ``gate_up_proj`` [n_experts, 2 d_expert, d_model] and
    ``down_proj`` [n_experts, d_model, d_expert] (transformers 5's fused experts). Routing:
    ``softmax(logits)`` in float32, top-k, then divided by its sum when ``renorm`` (True, or the name of
    the router's boolean attribute) holds, then cast to the logits' dtype when ``cast``.
    ``shared`` / ``shared_gate``: a dense always-on expert and its sigmoid gate (Qwen2-MoE); a shared
    expert without ``shared_gate`` is added as it is (GLM-4.5).

    Sigmoid routing (GLM-4.5 / DeepSeek-V3, ``score="sigmoid"``): the scores are ``sigmoid(logits)``
    per expert; the router's ``bias`` buffer (``e_score_correction_bias``) is added to them to CHOOSE
    the experts only; with ``groups`` (the router's attributes: number of groups, groups kept) the
    choice is limited to the ``topk_group`` groups whose two best biased scores sum highest; the
    weights are the chosen experts' unbiased scores, divided by their sum plus ``eps`` when
    ``renorm`` holds, times the router's ``scale`` attribute (``routed_scaling_factor``).
    """

    router: str = "gate"
    experts: str = "experts"
    renorm: bool | str = "norm_topk_prob"
    cast: bool = True
    shared: str | None = None
    shared_gate: str | None = None
    # how router logits become expert weights: "softmax" (over every expert, then top-k); "sigmoid" (GLM-4.5:
    # per-expert sigmoid scores, chosen with `bias` within `groups`, times `scale`); "sigmoid_input" (Llama 4:
    # sigmoid of the top-k logits scales each chosen expert's INPUT; an ungated shared expert; the block returns
    # (flat output, logits)); see hooks_mm.model.moe
    score: str = "softmax"
    bias: str | None = None
    groups: tuple[str, str] | None = None
    scale: str | None = None
    eps: float = 0.0
    # experts' weights stored [n_experts, d_in, d_out] (gate_up_proj [n, d_model, 2 d_expert]; Llama 4, Aria)
    transposed: bool = False

    def __post_init__(self) -> None:
        if self.score not in ("softmax", "sigmoid", "sigmoid_input"):
            raise ValueError(
                f"Moe(score={self.score!r}): the router's scores are 'softmax', 'sigmoid' or 'sigmoid_input'"
            )

    def paths(self) -> list[str]:
        return [p for p in (self.router, self.experts, self.shared, self.shared_gate) if p]

    def router_attrs(self) -> list[str]:
        """The router attributes this row's routing reads (beyond ``weight`` and ``top_k``)."""
        named = [self.renorm if isinstance(self.renorm, str) else None, self.bias, self.scale, *(self.groups or ())]
        return [a for a in named if a]


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
