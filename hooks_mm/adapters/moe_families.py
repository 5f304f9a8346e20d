"""Wrappers over mixture-of-experts decoder stacks (the MoE rows of :mod:`hooks_mm.adapters.backbones`).

- Qwen3.5-MoE (``Qwen3_5MoeForConditionalGeneration``): Qwen3.5's wrapper (Qwen3-VL's vision side
  without deepstack) over the ``qwen3_5_moe_text`` stack: gated DeltaNet / gated attention layers
  whose every MLP is a mixture of experts with a gated shared expert
  (:data:`~hooks_mm.adapters.backbones.QWEN3_5_MOE`).
- GLM-4.5V (``Glm4vMoeForConditionalGeneration``): the GLM-4V wrapper (:func:`hooks_mm.adapters.glm_cohere.glm_adapter`)
  over the ``glm4v_moe_text`` stack: dense first layers, then GLM-4.5 MoE layers (sigmoid routing with a
  choice bias, group-limited top-k, scaled weights, a shared expert:
  :data:`~hooks_mm.adapters.backbones.GLM4V_MOE`).

The MoE hook scheme (router logits, expert weights / indices, per-expert neurons) is described in
:mod:`hooks_mm.model.moe`.

Example::

    model = HookedMLLM.from_pretrained("tiny-qwen3-5-moe")
    model.cfg.moe_layers, model.cfg.mixer_layers    # every layer; the linear-attention layers
"""

from __future__ import annotations

from dataclasses import replace

from hooks_mm.adapters.glm_cohere import glm_adapter
from hooks_mm.adapters.hybrid import QWEN3_5

QWEN3_5_MOE = replace(
    QWEN3_5,
    name="qwen3_5_moe",
    architectures=("Qwen3_5MoeForConditionalGeneration",),
    notes=QWEN3_5.notes + "; every MLP a mixture of experts with a gated shared expert (no dense MLP: cfg.d_mlp None)",
)

GLM4V_MOE = glm_adapter(
    "glm4v_moe",
    "Glm4vMoeForConditionalGeneration",
    "GLM-4.5V: the GLM-4.1V model code over a MoE text stack (first_k_dense_replace dense layers).",
)

ADAPTERS = (QWEN3_5_MOE, GLM4V_MOE)
