"""GLM-4V family (GLM-4.1V, GLM-4.6V, GLM-OCR) and Cohere vision wrappers (AyaVision, Cohere2Vision).

GLM-4V is Qwen-VL-like: ``pixel_values`` are flattened patches, ``image_grid_thw`` counts
patches, ``spatial_merge_size x spatial_merge_size`` patches become one LM token, written row-major
per image (``qwen_image_plans``) at the ``<|image|>`` positions; the LM uses 3-axis M-RoPE from
``mm_token_type_ids``. Videos differ from Qwen-VL: every temporal patch is written as its own
image, ``<|begin_of_image|> <|image|>... <|end_of_image|> <timestamp>``, inside one
``<|begin_of_video|> ... <|end_of_video|>`` span, and they use the SAME ``image_token_id`` as images
(HF's video mask is ``input_ids == image_token_id``; a batch mixing images and videos is refused by
HF's token-count check). So video positions are the ``<|image|>`` tokens inside a video span and
image positions the others: what HF replaces whenever it runs. Frame times are text only
(timestamps in the prompt), so video plans carry NaN seconds.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from hooks_mm.adapters.base import (
    Adapter,
    ImagePlan,
    config_get,
    grid_plan,
    lm_paths,
    patch_grid,
    runs,
    special_ids,
    token_id_mask,
)
from hooks_mm.adapters.qwen import qwen_image_plans, qwen_video_plans

_image_tokens = token_id_mask("image_token_id")


def _in_video(config: Any, input_ids: Tensor) -> Tensor:
    """Positions inside a ``<|begin_of_video|> ... <|end_of_video|>`` span (as the GLM processor's
    ``create_mm_token_type_ids`` decides video tokens)."""
    start, end = config_get(config, "video_start_token_id"), config_get(config, "video_end_token_id")
    if start is None or end is None:
        raise ValueError(
            "GLM-4V config has no video_start_token_id / video_end_token_id, so image and video positions (both "
            "image_token_id) cannot be told apart: set them to the ids of the tokenizer's <|begin_of_video|> / "
            "<|end_of_video|>."
        )
    return (input_ids == start).cumsum(-1) > (input_ids == end).cumsum(-1)


def glm_image_mask(config: Any, input_ids: Tensor) -> Tensor:
    """``<|image|>`` positions outside video spans."""
    return _image_tokens(config, input_ids) & ~_in_video(config, input_ids)


def glm_video_mask(config: Any, input_ids: Tensor) -> Tensor:
    """``<|image|>`` positions inside video spans (GLM-4V videos reuse the image token)."""
    return _image_tokens(config, input_ids) & _in_video(config, input_ids)


def glm_adapter(name: str, architecture: str, notes: str = "") -> Adapter:
    """A GLM-4V-style wrapper row (GLM-4.1V, GLM-4.6V, GLM-OCR share the model code)."""
    return Adapter(
        name=name,
        architectures=(architecture,),
        **lm_paths("model.language_model"),
        projector="model.visual.merger",
        image_mask=glm_image_mask,
        image_plans=qwen_image_plans,
        video_mask=glm_video_mask,
        video_plans=qwen_video_plans,
        special_ids=special_ids(
            "image_start_token_id", "image_end_token_id", "video_start_token_id", "video_end_token_id"
        ),
        notes=(
            "Qwen-VL-like grids and 3-axis M-RoPE (pass mm_token_type_ids); videos are written frame by frame at "
            "image_token_id inside <|begin_of_video|> spans, one grid per temporal patch (frame times are text: NaN); "
            "hook_vision_out is the merger's input (after the tower's 2x2 downsample conv), hook_projector_out its "
            "output. " + notes
        ),
    )


GLM4V = glm_adapter("glm4v", "Glm4vForConditionalGeneration")
GLM46V = glm_adapter("glm46v", "Glm46VForConditionalGeneration", "Same model code as GLM-4.1V.")
GLM_OCR = glm_adapter("glm_ocr", "GlmOcrForConditionalGeneration", "GLM-4V model code with its own tower sizes.")


# ---------------------------------------------------------------------------------------
# AyaVision, Cohere2Vision: SigLIP tiles, pixel-shuffle projector, Cohere2 backbone


def _tile_side(config: Any, inputs: dict[str, Any]) -> int:
    """Cells per side of one tile after the projector's pixel shuffle (``downsample_factor``)."""
    rows, cols = patch_grid(config, inputs.get("pixel_values"))
    d = int(config.downsample_factor)
    if rows != cols or rows % d:
        raise ValueError(
            f"{type(config).__name__}: the projector pixel-shuffles a square tile grid by {d}, but the tower's grid "
            f"is {rows}x{cols}: use square tiles whose patch grid divides by downsample_factor."
        )
    return rows // d


def _tiles_by_image(
    config: Any, inputs: dict[str, Any], ends_image: Callable[[Tensor, int, int], bool]
) -> list[Tensor]:
    """One plan per image: its tiles (runs of image tokens, one per tile, ``pixel_values`` order) as
    row-major ``side x side`` grids numbered 0, 1, ...; ``ends_image(ids_row, run_index, start)`` says
    whether a run is its image's last tile."""
    ids = inputs["input_ids"]
    side = _tile_side(config, inputs)
    mask = _image_tokens(config, ids)
    am = inputs.get("attention_mask")
    if am is not None:
        mask = mask & am.bool()
    plans, tiles = [], []
    for b in range(ids.shape[0]):
        row_runs = runs(mask[b])
        for i, (start, end) in enumerate(row_runs):
            if end - start != side * side:
                raise ValueError(
                    f"image token count does not match the images: {type(config).__name__} row {b} holds a run of "
                    f"{end - start} image positions, but each tile writes {side}x{side} features. Build the inputs "
                    "with the model's processor (HookedMLLM.to_inputs)."
                )
            tiles.append(grid_plan(side, side, tile=len(tiles)))
            if ends_image(ids[b], i, start) or i == len(row_runs) - 1:
                plans.append(torch.cat(tiles))
                tiles = []
    pv = inputs.get("pixel_values")
    if pv is not None and sum(len(p) for p in plans) != int(pv.shape[0]) * side * side:
        raise ValueError(
            f"image token count does not match the images: {type(config).__name__} input_ids hold "
            f"{sum(len(p) for p in plans) // (side * side)} tiles of image positions but pixel_values "
            f"{int(pv.shape[0])} tiles. Build the inputs with the model's processor (HookedMLLM.to_inputs)."
        )
    return plans


def aya_vision_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    """AyaVision: per image ``<|START_OF_IMG|> (TILE_k <patches>)* TILE_GLOBAL <patches> <|END_OF_IMG|>``;
    crops first, the global thumbnail last (``pixel_values`` order). A tile run ends its image when the
    token before it is the global marker's last token: the token before the last run of any row."""
    ids = inputs["input_ids"]
    mask = _image_tokens(config, ids)
    markers = {int(ids[b, r[-1][0] - 1]) for b in range(ids.shape[0]) if (r := runs(mask[b])) and r[-1][0] > 0}
    if len(markers) > 1:
        raise ValueError(
            "AyaVision: the images of this batch do not end with the same global-tile marker (TILE_GLOBAL), so "
            "tiles cannot be assigned to images: make the inputs with AyaVisionProcessor."
        )
    marker = markers.pop() if markers else -1
    return _tiles_by_image(config, inputs, lambda row, i, start: start > 0 and int(row[start - 1]) == marker)


def cohere2_vision_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    """Cohere2Vision: per image ``<BOI> (<patches> <IMG_LINE_BREAK>)* <EOI>``: tiles one line-break token
    apart (crops, then the thumbnail, ``pixel_values`` order); a wider gap starts the next image."""

    def ends_image(row: Tensor, i: int, start: int) -> bool:
        nxt = _image_tokens(config, row[start:])
        following = runs(nxt)
        return len(following) < 2 or following[1][0] - following[0][1] != 1

    return _tiles_by_image(config, inputs, ends_image)


def cohere_vision_adapter(name: str, architecture: str, plans: Callable, notes: str) -> Adapter:
    return Adapter(
        name=name,
        architectures=(architecture,),
        **lm_paths("model.language_model"),
        projector="model.multi_modal_projector",
        image_mask=_image_tokens,
        image_plans=plans,
        notes=notes,
    )


AYA_VISION = cohere_vision_adapter(
    "aya_vision",
    "AyaVisionForConditionalGeneration",
    aya_vision_plans,
    "SigLIP tiles (crops + global thumbnail), projector = pixel shuffle (downsample_factor) + LayerNorm + SwiGLU "
    "MLP: hook_vision_out is the tower output per tile, hook_projector_out the shuffled cells, exactly the "
    "<|IMG_PATCH|> positions; Cohere2 backbone (its logit_scale is not applied by AyaVision's head).",
)

COHERE2_VISION = cohere_vision_adapter(
    "cohere2_vision",
    "Cohere2VisionForConditionalGeneration",
    cohere2_vision_plans,
    "SigLIP tiles (crops + thumbnail), projector = pixel shuffle + SwiGLU MLP; each tile's cells then one "
    "<|IMG_LINE_BREAK|> (not an image position); Cohere2 backbone.",
)

ADAPTERS = (GLM4V, GLM46V, GLM_OCR, AYA_VISION, COHERE2_VISION)
