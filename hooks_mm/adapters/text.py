"""Decoder-only causal LMs: text baselines and discrete-token (AnyGPT-style) MLLMs.

A discrete-token model is a causal LM whose vocabulary was extended by modality codes, so
the modality of a position is a token-id range. hooks_mm reads the ranges from the config:

    config.modality_token_ranges = {"image": [first_id, end_id]}   # end exclusive
    config.modality_grids = {"image": [rows, cols]}                # optional, else square
    config.modality_special_ids = [soi_id, eoi_id]                 # optional

Audio codes work the same way: ``modality_token_ranges["audio"]``, each maximal run of audio
codes is one clip (one code per step along time), and
``config.modality_seconds_per_token = {"audio": 0.04}`` gives the layout its times.
"""

from __future__ import annotations

from typing import Any

import torch

from hooks_mm.adapters.base import Adapter, ImageMaskFn, MediaPlan, grid_plan_for, lm_paths, run_lengths, special_ids


def _range_mask(modality: str) -> ImageMaskFn:
    """Positions whose id lies in ``config.modality_token_ranges[modality]`` (none without one)."""

    def mask(config: Any, input_ids: torch.Tensor) -> torch.Tensor:
        rng = (getattr(config, "modality_token_ranges", None) or {}).get(modality)
        if rng is None:
            return torch.zeros_like(input_ids, dtype=torch.bool)
        return (input_ids >= rng[0]) & (input_ids < rng[1])

    return mask


code_range_mask = _range_mask("image")
audio_range_mask = _range_mask("audio")


def code_run_plans(config: Any, inputs: dict[str, Any]) -> list[torch.Tensor]:
    """Each maximal run of image codes in a row is one image, a row-major grid."""
    grid = (getattr(config, "modality_grids", None) or {}).get("image")
    return [grid_plan_for(n, grid) for n in run_lengths(code_range_mask(config, inputs["input_ids"]))]


def audio_run_plans(config: Any, inputs: dict[str, Any], processor: Any = None) -> list[MediaPlan]:
    """Each maximal run of audio codes in a row is one clip, one step per code."""
    mask = audio_range_mask(config, inputs["input_ids"])
    seconds = (getattr(config, "modality_seconds_per_token", None) or {}).get("audio")
    if seconds is None and processor is not None:
        seconds = getattr(processor, "audio_frame_seconds", None)
    return [MediaPlan.audio(n, seconds) for n in run_lengths(mask, inputs.get("attention_mask"))]


CAUSAL_LM = Adapter(
    name="causal-lm",
    architectures=("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"),
    **lm_paths("model"),
    image_mask=code_range_mask,
    image_plans=code_run_plans,
    audio_mask=audio_range_mask,
    audio_plans=audio_run_plans,
    special_ids=special_ids("modality_special_ids", "bos_token_id"),
    notes="text-only baseline, or a discrete-token MLLM when config.modality_token_ranges is set",
)

ADAPTERS = (CAUSAL_LM,)
