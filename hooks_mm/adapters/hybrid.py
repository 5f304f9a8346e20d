"""Wrappers over hybrid decoder stacks (linear attention / convolution layers beside attention).

- Qwen3.5 (``Qwen3_5ForConditionalGeneration``): Qwen3-VL's vision side without deepstack (the
  merger's output is written at the ``<|image_pad|>`` / ``<|video_pad|>`` positions, 3-axis
  M-RoPE from ``mm_token_type_ids``) over the ``qwen3_5_text`` stack (gated DeltaNet and gated
  attention layers, :data:`hooks_mm.adapters.backbones.QWEN3_5`).
- LFM2-VL (``Lfm2VlForConditionalGeneration``): a SigLIP2 NaFlex tower over each tile at its own
  size (``spatial_shapes``, ``pixel_attention_mask``), then the projector ONCE PER TILE: pixel
  unshuffle by ``downsample_factor`` (cell (r, c) covers patches ``r*f..``, ``c*f..``), LayerNorm, MLP;
  the tiles' rows are concatenated and written with ``masked_scatter`` at ``input_ids ==
  image_token_id``. A large image is ``<|image_start|> <|img_row_1_col_1|> tile ... <|img_thumbnail|>
  thumbnail <|image_end|>``: crops row-major, then the thumbnail (the whole image, smaller) last; a small
  one is a single tile. Plan: one ``(h/f) x (w/f)`` row-major grid per tile, tiles numbered in
  ``pixel_values`` order within an image. Over the ``lfm2`` stack (conv and attention layers).

The block hooks of each layer follow its type (:mod:`hooks_mm.model.hybrid`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from hooks_mm.adapters.base import Adapter, ImagePlan, grid_plan, lm_paths, runs, token_id_mask
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

IMAGE_MASK = token_id_mask("image_token_id")


def lfm2_vl_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    """Tile ``k`` (``pixel_values`` order) covers ``(h_k / f) * (w_k / f)`` image positions, ``(h_k, w_k)`` its
    ``spatial_shapes`` row, taken in order from the image positions (row-major over the batch). Runs of image
    tokens parted by ONE token (``<|img_row_r_col_c|>``, ``<|img_thumbnail|>``) are tiles of one image; two
    tokens or more (``<|image_end|><|image_start|>``) part images."""
    shapes = inputs.get("spatial_shapes")
    mask = IMAGE_MASK(config, inputs["input_ids"])
    if shapes is None:
        if mask.any():
            raise ValueError("Lfm2Vl inputs have image positions but no spatial_shapes: pass the processor's")
        return []
    f = int(config.downsample_factor)
    sides = [(int(h) // f, int(w) // f) for h, w in torch.as_tensor(shapes).tolist()]
    plans: list[ImagePlan] = []
    k = 0
    for b, row in enumerate(mask):
        prev_end = None
        for start, end in runs(row):
            tiles, at = [], start
            first = int(plans[-1][-1, 0]) + 1 if prev_end is not None and start == prev_end + 1 else 0
            while at < end and k < len(sides):
                tiles.append(grid_plan(*sides[k], tile=first + len(tiles)))
                at, k = at + sides[k][0] * sides[k][1], k + 1
            if len(tiles) > 1:  # without the processor's markers, tiles of one image and adjacent images look alike
                raise ValueError(
                    f"Lfm2Vl row {b} has a run of {end - start} image tokens holding {len(tiles)} tiles with no marker "
                    "between them (use_image_special_tokens=False), so which tiles form which image cannot be told: "
                    "build the inputs with use_image_special_tokens=True (the processor's default)."
                )
            if at != end:
                raise ValueError(
                    f"image token count does not match the images: Lfm2Vl row {b} has a run of {end - start} image "
                    f"tokens that is not a whole number of tiles of the sizes spatial_shapes gives ({sides}, "
                    f"downsample_factor {f}). Build text and images together with the model's processor "
                    "(HookedMLLM.to_inputs)."
                )
            if first:  # more tiles of the image before
                plans[-1] = torch.cat([plans[-1], *tiles])
            else:
                plans.append(torch.cat(tiles))
            prev_end = end
    if k != len(sides):
        raise ValueError(
            f"image token count does not match the images: Lfm2Vl inputs hold {len(sides)} tile(s) (spatial_shapes) "
            f"but their image positions cover {k}. Build text and images together with the model's processor."
        )
    return plans


LFM2_VL = Adapter(
    name="lfm2_vl",
    architectures=("Lfm2VlForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.multi_modal_projector",
    projector_per_call=True,
    image_mask=IMAGE_MASK,
    image_plans=lfm2_vl_plans,
    notes=(
        "LFM2 hybrid LM (conv / attention layers); SigLIP2 NaFlex tower, projector (pixel unshuffle, LayerNorm, "
        "MLP) called once per tile: hook_vision_out is every tile's (h*w, d_vis) patch rows and "
        "hook_projector_out every tile's (h/f * w/f, d) rows, concatenated in pixel_values order (exactly the image "
        "positions, row-major); needs spatial_shapes and pixel_attention_mask."
    ),
)

# Qwen2-VL's wrapper (grid_thw, merge-block patch order, masked_scatter of images then videos) with a projector
# called once for the images and once for the videos of a forward, over the lfm3 stack; 1-D text positions
LFM3_VL = replace(
    QWEN2_VL,
    name="lfm3_vl",
    architectures=("Lfm3VlForConditionalGeneration",),
    projector="model.multi_modal_projector",
    projector_per_call=True,
    notes=(
        "LFM3 hybrid LM (conv / sliding / full attention layers, sandwich norms, gated attention heads); LFM3 vision "
        "tower (conv + attention layers over each frame's patch grid), projector = RMSNorm + 2x2 merge + MLP, "
        "called for the images then for the videos: hook_vision_out / hook_projector_out hold both calls, images "
        "first (the image positions, then the video positions); needs image_grid_thw / video_grid_thw; 1-D positions."
    ),
)

ADAPTERS = (QWEN3_5, LFM2_VL, LFM3_VL)
