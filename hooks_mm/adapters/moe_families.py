"""Wrappers over mixture-of-experts decoder stacks (the MoE rows of :mod:`hooks_mm.adapters.backbones`).

- Qwen3.5-MoE (``Qwen3_5MoeForConditionalGeneration``): Qwen3.5's wrapper (Qwen3-VL's vision side
  without deepstack) over the ``qwen3_5_moe_text`` stack: gated DeltaNet / gated attention layers
  whose every MLP is a mixture of experts with a gated shared expert
  (:data:`~hooks_mm.adapters.backbones.QWEN3_5_MOE`).
- GLM-4.5V (``Glm4vMoeForConditionalGeneration``): the GLM-4V wrapper (:func:`hooks_mm.adapters.glm_cohere.glm_adapter`)
  over the ``glm4v_moe_text`` stack: dense first layers, then GLM-4.5 MoE layers (sigmoid routing with a
  choice bias, group-limited top-k, scaled weights, a shared expert:
  :data:`~hooks_mm.adapters.backbones.GLM4V_MOE`).
- Qwen3-Omni thinker (``Qwen3OmniMoeThinkerForConditionalGeneration``): the Qwen2.5-Omni thinker's wrapper
  (image, video, audio in one prompt) with Qwen3-VL's deepstack vision side (features of early vision
  blocks added after the first decoder layers at image and video positions: ``hook_deepstack``) and
  Qwen3-ASR's chunked audio encoder (:func:`qwen3_omni_audio_plans`), over the ``qwen3_omni_moe_text``
  stack (Qwen3-MoE blocks: :data:`~hooks_mm.adapters.backbones.QWEN_MOE`).

The MoE hook scheme (router logits, expert weights / indices, per-expert neurons) is described in
:mod:`hooks_mm.model.moe`.

Example::

    model = HookedMLLM.from_pretrained("tiny-qwen3-5-moe")
    model.cfg.moe_layers, model.cfg.mixer_layers    # every layer; the linear-attention layers
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from hooks_mm.adapters.audio import QWEN2_5_OMNI
from hooks_mm.adapters.audio_more import qwen3_asr_plans
from hooks_mm.adapters.base import MediaPlan
from hooks_mm.adapters.glm_cohere import glm_adapter
from hooks_mm.adapters.hybrid import QWEN3_5
from hooks_mm.adapters.qwen import qwen3_injection_layers

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


def qwen3_omni_audio_plans(config: Any, inputs: dict[str, Any], processor: Any = None) -> list[MediaPlan]:
    """Qwen3-Omni thinker: one plan per clip (row of ``feature_attention_mask``), chunked as its encoder (the
    Qwen3-ASR encoder, :func:`~hooks_mm.adapters.audio_more.qwen3_asr_plans`) chunks it: ``2 * n_window``
    mel frames per chunk, 8 frames (80 ms) per step, each chunk from its own start. HF counts a clip's valid
    frames as ``feature_attention_mask.sum(-1)``, from the clip's start."""
    mask = inputs.get("feature_attention_mask")
    if mask is None:
        return []
    chunk = 2 * config.audio_config.n_window
    lengths = torch.as_tensor(mask).sum(-1)
    width = max(1, -(-int(lengths.max()) // chunk)) * chunk
    valid = (torch.arange(width) < lengths[:, None]).long()
    return qwen3_asr_plans(config, {"input_features_mask": valid}, processor)


QWEN3_OMNI_MOE = replace(
    QWEN2_5_OMNI,
    name="qwen3_omni_moe",
    architectures=("Qwen3OmniMoeThinkerForConditionalGeneration",),
    injection_layers=qwen3_injection_layers,
    audio_projector="model.audio_tower.proj2",
    audio_plans=qwen3_omni_audio_plans,
    position_times=None,
    notes=(
        "thinker only (no talker / code2wav); audio: Qwen3-ASR-style chunked encoder (1 s chunks, 80 ms steps), "
        "model.audio_tower.proj2 output written at the audio token; vision as Qwen3-VL (deepstack after the first "
        "decoder layers at image and video positions); 3-axis M-RoPE from get_rope_index. Layout times are the "
        "media's seconds (audio steps, video frames x video_second_per_grid): the thinker's temporal ids count "
        "audio steps one by one, not position_id_per_seconds per second."
    ),
)

ADAPTERS = (QWEN3_5_MOE, GLM4V_MOE, QWEN3_OMNI_MOE)
