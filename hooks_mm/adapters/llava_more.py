"""More LLaVA-like wrappers: VipLlava (multi-layer vision features), Mistral3 (Pixtral tower,
patch merger) and LlavaNextVideo (LLaVA-NeXT images and pooled video frames).

Each writes its features with ``masked_scatter`` at ``input_ids == image_token_id`` (and
``video_token_id``), in ``pixel_values`` order; plans follow hooks_mm/adapters/llava.py.
"""

from __future__ import annotations

from typing import Any

import torch

from hooks_mm.adapters.base import Adapter, ImagePlan, grid_plan, lm_paths, patch_grid, special_ids, token_id_mask

_image_mask = token_id_mask("image_token_id", "image_token_index")
_video_mask = token_id_mask("video_token_id", "video_token_index")


def _n_images(config: Any, inputs: dict[str, Any], pixel_values: Any, per_image: int) -> int:
    if pixel_values is not None:
        return int(pixel_values.shape[0])
    return int(_image_mask(config, inputs["input_ids"]).sum()) // max(per_image, 1)


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


def _adapter(name: str, cls: str, plans, notes: str, special=special_ids(), **media: Any) -> Adapter:
    return Adapter(
        name=name,
        architectures=(cls,),
        **lm_paths("model.language_model"),
        projector="model.multi_modal_projector",
        image_mask=_image_mask,
        image_plans=plans,
        special_ids=special,
        notes=notes,
        **media,
    )


VIPLLAVA = _adapter(
    "vipllava",
    "VipLlavaForConditionalGeneration",
    vipllava_plans,
    "LLaVA whose projector (LayerNorm + MLP) reads the concatenation of several CLIP layers "
    "(vision_feature_layers, CLS dropped from each): hook_vision_out is that concatenation; the "
    "projector output rows are exactly the image positions.",
)

MISTRAL3 = _adapter(
    "mistral3",
    "Mistral3ForConditionalGeneration",
    mistral3_plans,
    "Pixtral tower (all images in one sequence, block-diagonal attention), projector = RMSNorm + "
    "2x2 patch merger + MLP: hook_vision_out is the tower output over every patch, hook_projector_out "
    "the merged cells, exactly the image positions; needs image_sizes.",
)

ADAPTERS = (VIPLLAVA, MISTRAL3)
