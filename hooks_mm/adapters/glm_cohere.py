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

from typing import Any

from torch import Tensor

from hooks_mm.adapters.base import Adapter, config_get, lm_paths, special_ids, token_id_mask
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

ADAPTERS = (GLM4V, GLM46V, GLM_OCR)
