"""More LLaVA-like wrappers: VipLlava (multi-layer vision features), Mistral3 (Pixtral tower,
patch merger) and LlavaNextVideo (LLaVA-NeXT images and pooled video frames).

Each writes its features with ``masked_scatter`` at ``input_ids == image_token_id`` (and
``video_token_id``), in ``pixel_values`` order; plans follow hooks_mm/adapters/llava.py.
"""

from __future__ import annotations

from typing import Any

import torch

from hooks_mm.adapters.base import ImagePlan, MediaPlan, grid_plan, patch_grid
from hooks_mm.adapters.llava import IMAGE_MASK, VIDEO_MASK, llava_adapter, llava_next_plans


def _n_images(config: Any, inputs: dict[str, Any], pixel_values: Any, per_image: int) -> int:
    if pixel_values is not None:
        return int(pixel_values.shape[0])
    return int(IMAGE_MASK(config, inputs["input_ids"]).sum()) // max(per_image, 1)


# ---------------------------------------------------------------------------------------
# VipLlava


def vipllava_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    """VipLlava: every selected tower layer drops its token 0 (``[:, 1:]``, whatever the
    strategy) and the layers are concatenated along features: one token per patch. Token 0 is
    CLIP's CLS, so the plan is the full ``rows x cols`` grid."""
    pixel_values = inputs.get("pixel_values")
    plan = grid_plan(*patch_grid(config, pixel_values))
    model_type = getattr(config.vision_config, "model_type", "") or ""
    if "clip" not in model_type:  # no CLS: HF drops the first patch
        plan = plan[1:]
    return [plan.clone() for _ in range(_n_images(config, inputs, pixel_values, plan.shape[0]))]


# ---------------------------------------------------------------------------------------
# Mistral3


def mistral3_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    """Mistral3: one grid per image of its own size (``image_sizes``), ``h // (patch * merge)``
    rows by ``w // (patch * merge)`` cols, row-major (the patch merger's ``unfold`` order). The
    ``[IMG_BREAK]`` / ``[IMG_END]`` tokens are ordinary text tokens outside the image mask."""
    if inputs.get("image_sizes") is None:
        raise ValueError("Mistral3 inputs have image positions but no image_sizes: pass the processor's image_sizes")
    cell = config.vision_config.patch_size * config.spatial_merge_size
    return [grid_plan(int(h) // cell, int(w) // cell) for h, w in torch.as_tensor(inputs["image_sizes"]).tolist()]


# ---------------------------------------------------------------------------------------
# LlavaNextVideo


def llava_next_video_plans(config: Any, inputs: dict[str, Any], processor: Any = None) -> list[MediaPlan]:
    """LlavaNextVideo videos: every frame's tower grid (``default`` drops the CLS) average-, max-
    or conv-pooled by ``spatial_pool_stride`` into ``side // stride`` squared cells, row-major,
    frames in order, nothing between frames. No frame rate reaches the model: times are NaN."""
    pv = inputs.get("pixel_values_videos")
    if pv is None:
        return []
    rows, cols = patch_grid(config, pv)
    strategy = inputs.get("vision_feature_select_strategy") or config.vision_feature_select_strategy
    model_type = getattr(config.vision_config, "model_type", "") or ""
    tokens = rows * cols + ("clip" in model_type) - (strategy == "default")
    if rows != cols or tokens != rows * cols:
        raise ValueError(
            f"LlavaNextVideo pools a square grid of frame tokens, but {tokens} tokens come from a {rows}x{cols} "
            f"grid ({model_type!r} tower, strategy {strategy!r}): use square frames and a strategy that leaves "
            "exactly the patches."
        )
    side = rows // config.spatial_pool_stride
    return [MediaPlan.video(int(pv.shape[1]), side, side) for _ in range(int(pv.shape[0]))]


VIPLLAVA = llava_adapter(
    "vipllava",
    "VipLlavaForConditionalGeneration",
    vipllava_plans,
    "LLaVA whose projector (LayerNorm + MLP) reads the concatenation of several CLIP layers "
    "(vision_feature_layers, CLS dropped from each): hook_vision_out is that concatenation; the "
    "projector output rows are exactly the image positions.",
)

MISTRAL3 = llava_adapter(
    "mistral3",
    "Mistral3ForConditionalGeneration",
    mistral3_plans,
    "Pixtral tower (all images in one sequence, block-diagonal attention), projector = RMSNorm + "
    "2x2 patch merger + MLP: hook_vision_out is the tower output over every patch, hook_projector_out "
    "the merged cells, exactly the image positions; needs image_sizes.",
)

LLAVA_NEXT_VIDEO = llava_adapter(
    "llava_next_video",
    "LlavaNextVideoForConditionalGeneration",
    llava_next_plans,
    "LLaVA-NeXT images (anyres tiles + image_newline, as llava_next) and videos: each frame's CLIP grid "
    "pooled by the vision_resampler (spatial_pool_stride) before the projector; the projector runs once "
    "for images and once for videos (hook_vision_out / hook_projector_out fire for both).",
    video_mask=VIDEO_MASK,
    video_plans=llava_next_video_plans,
)

ADAPTERS = (VIPLLAVA, MISTRAL3, LLAVA_NEXT_VIDEO)
