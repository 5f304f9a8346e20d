"""Audio families: Qwen2-Audio, Voxtral and the Qwen2.5-Omni thinker (audio + image + video).

All three run a Whisper-style encoder over log-mel frames (10 ms hop at 16 kHz) and write
one feature per LM audio step at the audio placeholder ids (``masked_scatter``, clips in
order):

* Qwen2-Audio / Qwen2.5-Omni: conv stride 2 then average pooling 2, so a clip with ``L``
  valid mel frames gets ``((L - 1) // 2 + 1 - 2) // 2 + 1`` steps of 4 frames (40 ms).
* Voxtral: fixed chunks of ``2 * max_source_positions`` mel frames; the encoder output
  (stride 2) is regrouped by ``intermediate_size / d_model`` frames per token (4 in the
  released model: 80 ms per step, 12.5 Hz). A clip is a run of ``[AUDIO]`` tokens.

Seconds per step come from the processor's feature extractor (``hop_length /
sampling_rate``); without a processor the times are NaN. The Omni thinker's temporal
position ids are themselves time-aligned (``position_id_per_seconds`` per second), so its
layout times are read from ``get_rope_index`` (see :func:`omni_position_times`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from hooks_mm.adapters.base import Adapter, MediaPlan, lm_paths, run_lengths, special_ids, token_id_mask
from hooks_mm.adapters.qwen import QWEN2_5_VL


def frame_seconds(processor: Any) -> float | None:
    """Seconds per feature frame of the processor's feature extractor (``hop_length /
    sampling_rate``); None without a processor (layout times are then NaN)."""
    from hooks_mm.media import feature_seconds

    return feature_seconds(processor) if processor is not None else None


def whisper_steps(mel_frames: Tensor) -> Tensor:
    """LM audio steps of clips with ``mel_frames`` valid frames (conv stride 2, pool 2)."""
    return ((mel_frames - 1) // 2 + 1 - 2) // 2 + 1


def pooled_audio_plans(config: Any, inputs: dict[str, Any], processor: Any = None) -> list[MediaPlan]:
    """Qwen2-Audio / Qwen2.5-Omni: one plan per clip of ``feature_attention_mask``."""
    mask = inputs.get("feature_attention_mask")
    if mask is None:
        return []
    seconds = frame_seconds(processor)
    steps = whisper_steps(torch.as_tensor(mask).sum(-1)).tolist()
    return [MediaPlan.audio(int(n), None if seconds is None else 4 * seconds) for n in steps]


def voxtral_audio_plans(config: Any, inputs: dict[str, Any], processor: Any = None) -> list[MediaPlan]:
    """Voxtral: each run of ``[AUDIO]`` positions is one clip; a step is
    ``2 * intermediate_size / d_model`` mel frames."""
    audio = config.audio_config
    frames_per_step = 2 * audio.intermediate_size // audio.hidden_size
    seconds = frame_seconds(processor)
    mask = token_id_mask("audio_token_id")(config, inputs["input_ids"])
    steps = run_lengths(mask, inputs.get("attention_mask"))
    return [MediaPlan.audio(n, None if seconds is None else frames_per_step * seconds) for n in steps]


def omni_position_times(hf_model: Any, inputs: dict[str, Any]) -> Tensor | None:
    """Seconds of every audio / video position from the thinker's temporal M-RoPE ids.

    ``get_rope_index`` gives audio step ``k`` of a clip the temporal id ``start + k`` and video
    frame ``t`` the id ``start + t * second_per_grid * position_id_per_seconds``, where
    ``start`` follows the clip's begin token; time = ``(id - start) / position_id_per_seconds``.
    """
    ids = inputs.get("input_ids")
    config = hf_model.config
    if ids is None or (inputs.get("image_grid_thw") is None and inputs.get("video_grid_thw") is None):
        return None  # HF falls back to 1-D positions: nothing time-aligned to read
    fam = inputs.get("feature_attention_mask")
    with torch.no_grad():
        pos, _ = hf_model.model.get_rope_index(
            ids,
            inputs.get("image_grid_thw"),
            inputs.get("video_grid_thw"),
            inputs.get("attention_mask"),
            bool(inputs.get("use_audio_in_video", False)),
            fam.sum(-1) if fam is not None else None,
            inputs.get("video_second_per_grid"),
        )
    temporal = pos[0].double()
    bos = torch.isin(ids, torch.tensor([config.vision_start_token_id, config.audio_start_token_id], device=ids.device))
    media = torch.isin(ids, torch.tensor([config.audio_token_id, config.video_token_id], device=ids.device))
    times = torch.full(ids.shape, float("nan"), dtype=torch.float64, device=ids.device)
    for r in range(ids.shape[0]):
        start = float("nan")
        for p in range(ids.shape[1]):
            if bos[r, p]:
                start = float(temporal[r, p]) + 1
            elif media[r, p]:
                times[r, p] = (float(temporal[r, p]) - start) / config.position_id_per_seconds
    return times


QWEN2_AUDIO = Adapter(
    name="qwen2_audio",
    architectures=("Qwen2AudioForConditionalGeneration",),
    **lm_paths("model.language_model"),
    audio_projector="model.multi_modal_projector",
    audio_mask=token_id_mask("audio_token_id", "audio_token_index"),
    audio_plans=pooled_audio_plans,
    notes=(
        "Whisper encoder (conv stride 2, avg pool 2: 40 ms per step) -> multi_modal_projector -> "
        "masked_scatter at <|AUDIO|>; needs input_features and feature_attention_mask"
    ),
)

VOXTRAL = replace(
    QWEN2_AUDIO,
    name="voxtral",
    architectures=("VoxtralForConditionalGeneration",),
    audio_mask=token_id_mask("audio_token_id"),
    audio_plans=voxtral_audio_plans,
    notes=(
        "Whisper encoder over fixed chunks; outputs regrouped by intermediate_size / d_model "
        "frames per token before the projector (80 ms per step in the released model); Llama LM"
    ),
)

# the Qwen2.5-VL table plus the audio path and time-aligned positions
QWEN2_5_OMNI = replace(
    QWEN2_5_VL,
    name="qwen2_5_omni",
    architectures=("Qwen2_5OmniThinkerForConditionalGeneration",),
    image_mask=token_id_mask("image_token_id", "image_token_index"),
    video_mask=token_id_mask("video_token_id", "video_token_index"),
    audio_projector="model.audio_tower.proj",
    audio_mask=token_id_mask("audio_token_id", "audio_token_index"),
    audio_plans=pooled_audio_plans,
    position_times=omni_position_times,
    special_ids=special_ids(
        "vision_start_token_id", "vision_end_token_id", "audio_start_token_id", "audio_end_token_id"
    ),
    notes=(
        "thinker only (no talker / token2wav); audio: Whisper-style encoder, ln_post + proj "
        "(model.audio_tower.proj output is written at <|AUDIO|>); vision as Qwen2.5-VL "
        "(merger rows in window order); time-aligned 3-axis M-RoPE from get_rope_index "
        "(position_id_per_seconds temporal ids per second)"
    ),
)

ADAPTERS = (QWEN2_AUDIO, VOXTRAL, QWEN2_5_OMNI)
