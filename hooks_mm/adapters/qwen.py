"""Qwen-VL families: Qwen2-VL, Qwen2.5-VL, Qwen3-VL.

All three flatten each image into patches (``pixel_values`` is ``[n_patches, C*T*P*P]``),
merge ``spatial_merge_size x spatial_merge_size`` patches into one LM token and write one
``<|image_pad|>`` feature per merged cell.  ``image_grid_thw[i] = (t, h, w)`` counts
*patches*, so image ``i`` covers a ``(h/merge) x (w/merge)`` LM grid (times ``t`` frames,
always 1 for images), row-major.  The LM uses 3-axis M-RoPE positions computed from
``input_ids``, ``image_grid_thw`` and ``mm_token_type_ids``: pass the latter (Qwen2-VL and
Qwen3-VL raise without it, Qwen2.5-VL silently falls back to 1-D positions).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from hooks_mm.adapters.base import Adapter, MediaPlan, config_get, grid_plan, lm_paths, special_ids, token_id_mask


def _merge(config: Any) -> int:
    vision = getattr(config, "vision_config", None)
    return int(getattr(vision, "spatial_merge_size", None) or 2)


def qwen_image_plans(config: Any, inputs: dict[str, Any]) -> list[Tensor]:
    """One plan per row of ``image_grid_thw``: an ``(h/m) x (w/m)`` row-major grid per frame.

    HF concatenates the merged features of all images in ``image_grid_thw`` order (the
    processor's image order, row-major over the batch) and masked-scatters them into the
    ``image_token_id`` positions.  A temporal grid ``t > 1`` (not produced for images) would
    give ``t`` consecutive frames, numbered as tiles.
    """
    grid = inputs.get("image_grid_thw")
    if grid is None:
        return []
    m = _merge(config)
    plans = []
    for t, h, w in torch.as_tensor(grid).reshape(-1, 3).tolist():
        frames = [grid_plan(int(h) // m, int(w) // m, tile=f) for f in range(int(t))]
        plans.append(torch.cat(frames, dim=0))
    return plans


def qwen_video_plans(config: Any, inputs: dict[str, Any], processor: Any = None) -> list[MediaPlan]:
    """One plan per row of ``video_grid_thw``: ``t`` frames of an ``(h/m) x (w/m)`` grid.

    A frame here is one temporal patch (``temporal_patch_size`` = 2 decoded frames). Its
    time is ``frame * second_per_grid_ts[i]`` (Qwen2.5-VL; ``video_second_per_grid`` in
    Qwen2.5-Omni), the seconds HF puts into the temporal M-RoPE ids; NaN where the inputs
    carry no rate (Qwen2-VL).
    """
    grid = inputs.get("video_grid_thw")
    if grid is None:
        return []
    m = _merge(config)
    seconds = inputs.get("second_per_grid_ts", inputs.get("video_second_per_grid"))
    seconds = torch.as_tensor(seconds).flatten().tolist() if seconds is not None else None
    plans = []
    for i, (t, h, w) in enumerate(torch.as_tensor(grid).reshape(-1, 3).tolist()):
        rate = float(seconds[i]) if seconds is not None else None
        plans.append(MediaPlan.video(int(t), int(h) // m, int(w) // m, seconds_per_frame=rate))
    return plans


qwen_special_ids = special_ids("vision_start_token_id", "vision_end_token_id")


def qwen2_5_projector_order(config: Any, inputs: dict[str, Any]) -> Tensor:
    """Index ``idx`` such that ``merger_output[idx]`` is in sequence (scatter) order.

    Qwen2.5-VL permutes merged cells into attention windows before the vision blocks, runs
    the merger on the permuted sequence, then un-permutes its output
    (``merged[argsort(window_index)]``).  So the rows of the ``model.visual.merger`` output
    are in window order, not image-grid order, whenever an image spans several windows.
    """
    from transformers.vision_utils import get_vision_window_index

    vision = config.vision_config
    window_index, _ = get_vision_window_index(
        torch.as_tensor(inputs["image_grid_thw"]).reshape(-1, 3),
        spatial_merge_size=vision.spatial_merge_size,
        window_size=vision.window_size,
        patch_size=vision.patch_size,
    )
    return torch.argsort(window_index)


def qwen3_injection_layers(config: Any) -> list[int]:
    """Decoder layers AFTER which deepstack vision features are added (image positions only).

    ``Qwen3VLTextModel.forward`` adds ``deepstack_visual_embeds[i]`` after decoder layer ``i``
    for ``i in range(len(deepstack_visual_embeds))``; there is one embed per entry of
    ``vision_config.deepstack_visual_indexes`` (vision blocks whose output is tapped).
    """
    vision = getattr(config, "vision_config", None)
    n = len(getattr(vision, "deepstack_visual_indexes", None) or [])
    n_layers = int(config_get(config, "num_hidden_layers", default=n))
    return list(range(min(n, n_layers)))


QWEN2_VL = Adapter(
    name="qwen2_vl",
    architectures=("Qwen2VLForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.visual.merger",
    image_mask=token_id_mask("image_token_id"),
    image_plans=qwen_image_plans,
    video_mask=token_id_mask("video_token_id"),
    video_plans=qwen_video_plans,
    special_ids=qwen_special_ids,
    notes=(
        "forward needs image_grid_thw and mm_token_type_ids (ValueError without); 3-axis "
        "M-RoPE; merger input is patch-level [n_patches, embed_dim] (merge^2 patches per token)"
    ),
)

QWEN2_5_VL = replace(
    QWEN2_VL,
    name="qwen2_5_vl",
    architectures=("Qwen2_5_VLForConditionalGeneration",),
    notes=(
        "pass mm_token_type_ids (without it positions silently fall back to 1-D); merger "
        "rows are in vision-window order: merger_out[qwen2_5_projector_order(config, inputs)] "
        "is the scatter order"
    ),
)

QWEN3_VL = replace(
    QWEN2_VL,
    name="qwen3_vl",
    architectures=("Qwen3VLForConditionalGeneration",),
    injection_layers=qwen3_injection_layers,
    notes=(
        "deepstack: after decoder layer i < len(deepstack_visual_indexes), "
        "Qwen3VLTextModel._deepstack_process adds model.visual.deepstack_merger_list[i] output "
        "at image positions, so resid_pre[i+1] = resid_post[i] + injected; needs "
        "mm_token_type_ids; q_norm/k_norm in attention"
    ),
)

# the same wrapper over Qwen3-VL-MoE's text model (backbone row "qwen3_vl_moe_text": mixture-of-experts MLPs)
QWEN3_VL_MOE = replace(QWEN3_VL, name="qwen3_vl_moe", architectures=("Qwen3VLMoeForConditionalGeneration",))

ADAPTERS = (QWEN2_VL, QWEN2_5_VL, QWEN3_VL, QWEN3_VL_MOE)
