"""Wrappers over hybrid decoder stacks (linear attention / convolution layers beside attention).

- Qwen3.5 (``Qwen3_5ForConditionalGeneration``): Qwen3-VL's vision side without deepstack (the
  merger's output is written at the ``<|image_pad|>`` / ``<|video_pad|>`` positions, 3-axis
  M-RoPE from ``mm_token_type_ids``) over the ``qwen3_5_text`` stack (gated DeltaNet and gated
  attention layers, :data:`hooks_mm.adapters.backbones.QWEN3_5`).

The block hooks of each layer follow its type (:mod:`hooks_mm.model.hybrid`).
"""

from __future__ import annotations

from dataclasses import replace

from hooks_mm.adapters.qwen import QWEN2_VL

QWEN3_5 = replace(
    QWEN2_VL,
    name="qwen3_5",
    architectures=("Qwen3_5ForConditionalGeneration",),
    notes=(
        "Qwen3-VL's vision side without deepstack: model.visual.merger output scattered at the image / video "
        "pad positions; needs image_grid_thw and mm_token_type_ids (3-axis M-RoPE); hybrid text stack "
        "(linear_attention layers: no attn.* hooks)"
    ),
)

ADAPTERS = (QWEN3_5,)
