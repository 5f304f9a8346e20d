"""LLaVA family tables: Llava, LlavaNext (anyres tiles + image_newline), LlavaOnevision.

All three write image features with ``masked_scatter`` at ``input_ids == image_token_id``,
images in ``pixel_values`` order (= row-major over the batch, the processor's order).

Plan conventions used here (shape [n, 3] = (tile, row, col)):

* Llava: one tile, the vision tower's ``rows x cols`` patch grid. A CLS token kept by
  ``vision_feature_select_strategy="full"`` on a CLS tower is written as ``(0, -1, -1)``.
* LlavaNext / LlavaOnevision (anyres): tile 0 is the base (whole image resized) grid,
  ``h x w`` with ``h = w = vision image_size // patch_size``. Tile 1 is the high-resolution
  tiles merged into one ``H x W`` grid, *after* HF's ``unpad_image`` crop (and, for
  Onevision, after its bilinear downsampling when the grid exceeds ``anyres_max_N``),
  row-major with one ``image_newline`` separator ``(1, r, -1)`` at the end of every row.
  Rows/cols of tile 1 index the unpadded (resp. resized) grid from 0, exactly as HF's
  tensor is laid out before flattening. An image that gets no high-res tiles (Onevision
  multi-image prompts, ``batch_num_images[b] > 1``) is the base grid followed by a single
  newline written ``(0, h - 1, -1)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hooks_mm.adapters.base import (
    Adapter,
    ImagePlan,
    MediaPlan,
    grid_plan,
    lm_paths,
    patch_grid,
    special_ids,
    token_id_mask,
)

IMAGE_MASK = token_id_mask("image_token_id", "image_token_index")
VIDEO_MASK = token_id_mask("video_token_id", "video_token_index")

# vision towers without a CLS token: "default" then drops the first PATCH (as HF does)
_NO_CLS = ("siglip", "pixtral", "moonvit")


def _has_cls(vision_config: Any) -> bool:
    model_type = getattr(vision_config, "model_type", "") or ""
    return not any(tag in model_type for tag in _NO_CLS)


def _strategy(config: Any, inputs: dict[str, Any]) -> str:
    return inputs.get("vision_feature_select_strategy") or getattr(config, "vision_feature_select_strategy", "default")


def _as_list(x: Any) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)


def _tower_plan(config: Any, strategy: str, rows: int, cols: int, tile: int = 0) -> ImagePlan:
    """Tokens one vision-tower pass gives for one tile: [CLS] + grid, minus the first if
    ``default`` (HF drops index 0 whatever it is)."""
    plan = grid_plan(rows, cols, tile=tile)
    if _has_cls(config.vision_config):
        plan = torch.cat([torch.tensor([[tile, -1, -1]]), plan])
    if strategy == "default":
        plan = plan[1:]
    return plan


# ---------------------------------------------------------------------------------------
# Llava


def llava_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    patch = config.vision_config.patch_size
    strategy = _strategy(config, inputs)
    image_sizes = inputs.get("image_sizes")
    if image_sizes is not None:
        # Pixtral tower inside Llava: one grid per image of its own size, no CLS, the
        # [IMG_BREAK]/[IMG_END] tokens are ordinary text tokens outside the image mask
        return [grid_plan(int(h) // patch, int(w) // patch) for h, w in _as_list(image_sizes)]
    pixel_values = inputs.get("pixel_values")
    plan = _tower_plan(config, strategy, *patch_grid(config, pixel_values))
    if pixel_values is not None:
        n = int(pixel_values.shape[0])
    else:
        n = int(IMAGE_MASK(config, inputs["input_ids"]).sum()) // plan.shape[0]
    return [plan.clone() for _ in range(n)]


# ---------------------------------------------------------------------------------------
# LlavaNext / LlavaOnevision (anyres)


def _select_best_resolution(original_size: list[int], possible: list) -> tuple[int, int]:
    from transformers.image_processing_utils import select_best_resolution

    return select_best_resolution(original_size, possible)


def _unpadded_shape(rows: int, cols: int, original_size: list[int]) -> tuple[int, int]:
    """Shape of HF ``unpad_image`` applied to a [d, rows, cols] map (same arithmetic)."""
    original_height, original_width = original_size
    if original_width / original_height > cols / rows:
        new_height = int(round(original_height * (cols / original_width), 7))
        padding = (rows - new_height) // 2
        return len(range(padding, rows - padding)), cols
    new_width = int(round(original_width * (rows / original_height), 7))
    padding = (cols - new_width) // 2
    return rows, len(range(padding, cols - padding))


def _anyres_plans(config: Any, inputs: dict[str, Any], max_patches: int | None) -> list[ImagePlan]:
    vision = config.vision_config
    tile_px = vision.image_size
    side = vision.image_size // vision.patch_size
    strategy = _strategy(config, inputs)
    if inputs.get("image_sizes") is None:  # text-only call: nothing is written
        return []
    image_sizes = [list(map(int, s)) for s in _as_list(inputs["image_sizes"])]
    batch_num_images = inputs.get("batch_num_images")
    if batch_num_images is None:
        need_patching = [True] * len(image_sizes)
    else:
        need_patching = [int(n) == 1 for n in _as_list(batch_num_images) for _ in range(int(n))]

    plans = []
    for size, patching in zip(image_sizes, need_patching):
        base = _tower_plan(config, strategy, side, side, tile=0)
        if not patching:  # base tile only, then one newline
            plans.append(torch.cat([base, torch.tensor([[0, side - 1, -1]])]))
            continue
        best_h, best_w = _select_best_resolution(size, config.image_grid_pinpoints)
        rows, cols = (best_h // tile_px) * side, (best_w // tile_px) * side
        rows, cols = _unpadded_shape(rows, cols, size)
        if max_patches is not None:  # LlavaOnevision: downsample big grids (bilinear)
            ratio = math.sqrt(rows * cols / (max_patches * side**2))
            if ratio > 1.1:
                rows, cols = int(rows // ratio), int(cols // ratio)
        plans.append(torch.cat([base, grid_plan(rows, cols, tile=1, newline=True)]))
    return plans


def llava_next_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    return _anyres_plans(config, inputs, max_patches=None)


def llava_onevision_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    # forward() does not pass its vision_aspect_ratio kwarg on: the config value rules
    aspect = getattr(config, "vision_aspect_ratio", None) or "anyres_max_9"
    return _anyres_plans(config, inputs, max_patches=int(aspect.removeprefix("anyres_max_")))


def onevision_video_plans(config: Any, inputs: dict[str, Any], processor: Any = None) -> list[MediaPlan]:
    """LlavaOnevision videos: each frame's ``side x side`` grid bilinearly pooled to
    ``ceil(side / 2)`` squared cells, frames in order, then ONE ``image_newline`` for the whole
    video (``(last frame, -1, -1)``). No frame rate reaches the model: times are NaN."""
    pv = inputs.get("pixel_values_videos")
    if pv is None:
        return []
    n, frames = int(pv.shape[0]), int(pv.shape[1])
    pooled = math.ceil((config.vision_config.image_size // config.vision_config.patch_size) / 2)
    plans = []
    for _ in range(n):
        p = MediaPlan.video(frames, pooled, pooled)
        end = torch.tensor([[frames - 1, -1, -1]])
        plans.append(MediaPlan(torch.cat([p.cells, end]), torch.cat([p.time, p.time[-1:]])))
    return plans


def video_llava_image_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    """Video-LLaVA images (``pixel_values_images``): the CLIP grid, CLS dropped by 'default'."""
    pv = inputs.get("pixel_values_images", inputs.get("pixel_values"))
    if pv is None:
        return []
    plan = _tower_plan(config, _strategy(config, inputs), *patch_grid(config, pv))
    return [plan.clone() for _ in range(int(pv.shape[0]))]


def video_llava_video_plans(config: Any, inputs: dict[str, Any], processor: Any = None) -> list[MediaPlan]:
    """Video-LLaVA videos: every frame's CLS token (``(f, -1, -1)``, kept for videos whatever
    the strategy) followed by its ``rows x cols`` patch grid."""
    pv = inputs.get("pixel_values_videos")
    if pv is None:
        return []
    rows, cols = patch_grid(config, pv)
    return [MediaPlan.video(int(pv.shape[1]), rows, cols, frame_token=True) for _ in range(int(pv.shape[0]))]


# the video placeholder is not an image position; listed so it is not read as text
_onevision_special = special_ids("video_token_id", "video_token_index")


def llava_adapter(name: str, cls: str, plans, notes: str, special=special_ids(), **media: Any) -> Adapter:
    """A LLaVA-style wrapper row: the LM under model.language_model, the projector, image placeholders."""
    return Adapter(
        name=name,
        architectures=(cls,),
        **lm_paths("model.language_model"),
        projector="model.multi_modal_projector",
        image_mask=IMAGE_MASK,
        image_plans=plans,
        special_ids=special,
        notes=notes,
        **media,
    )


LLAVA = llava_adapter(
    "llava",
    "LlavaForConditionalGeneration",
    llava_plans,
    "Llama LM + CLIP tower; vision_feature_select_strategy 'default' drops CLS; the "
    "projector output rows are exactly the image positions (image_sizes only for Pixtral).",
)

LLAVA_NEXT = llava_adapter(
    "llava_next",
    "LlavaNextForConditionalGeneration",
    llava_next_plans,
    "needs image_sizes; projector runs on all tiles [n_tiles, h*w, d] BEFORE unpad + "
    "image_newline packing, so its output is not 1:1 with image positions (plans are).",
)

LLAVA_ONEVISION = llava_adapter(
    "llava_onevision",
    "LlavaOnevisionForConditionalGeneration",
    llava_onevision_plans,
    "Qwen2 LM + SigLIP ('full'); needs image_sizes (+ batch_num_images: multi-image rows get "
    "base tile + 1 newline); projector output precedes unpad/bilinear-resize/newline packing.",
    special=_onevision_special,
    video_mask=VIDEO_MASK,
    video_plans=onevision_video_plans,
)

VIDEO_LLAVA = llava_adapter(
    "video_llava",
    "VideoLlavaForConditionalGeneration",
    video_llava_image_plans,
    "separate image_tower and video_tower (CLIP), one multi_modal_projector called once for "
    "images and once for videos (hook_vision_out / hook_projector_out fire for both); images "
    "drop CLS ('default'), video frames keep it: frames * (1 + grid) tokens per video",
    video_mask=VIDEO_MASK,
    video_plans=video_llava_video_plans,
)

ADAPTERS = (LLAVA, LLAVA_NEXT, LLAVA_ONEVISION, VIDEO_LLAVA)
