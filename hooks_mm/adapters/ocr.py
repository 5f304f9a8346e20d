"""OCR and hybrid-tower wrappers: GOT-OCR2, LightOnOCR, Qianfan-OCR, DeepSeek-VL hybrid and Ovis2.

All five write their image features with ``masked_scatter`` at ``input_ids == image_token_id``,
in ``pixel_values`` order (row-major over the batch). Plans (shape [n, 3] = (tile, row, col)):

* GOT-OCR2 (Qwen2 LM): a SAM tower (fixed ``image_size``, ``(S/p)`` square patch grid) and a projector
  of two 3x3 stride-2 convolutions (each ``ceil(n / 2)``) + a linear: one ``g x g`` row-major grid
  per tile, ``g = ceil(ceil(S/p / 2) / 2)``. With ``crop_to_patches`` the processor writes each image
  as one run ``<img><imgpad>*(g*g*n_tiles)</img>``, tiles in ``pixel_values`` order: crops row-major,
  then the thumbnail (whole image) last when there are crops. (Two ``<imgpad>`` placeholders written back
  to back, with no ``</img><img>`` between them, expand to one run and read as one image's tiles.)
* LightOnOCR (Qwen3 LM): a Pixtral tower over each image at its own size (``image_sizes``), projector =
  RMSNorm + 2x2 patch merger (``unfold`` order: row-major) + MLP: one ``h // (p*m)`` by ``w // (p*m)``
  grid per image; patches beyond the last whole merge cell are dropped (by the model and the processor).
* Qianfan-OCR (Qwen3 LM): InternVL-like. A CLS ViT (``default`` drops CLS), pixel shuffle by
  ``downsample_ratio`` (cell (r, c) covers patches ``r/ratio..``, ``c/ratio..``), LayerNorm + MLP
  projector: one ``s x s`` grid per tile; tiles as GOT-OCR2 (its image processor), one run
  ``<img><IMG_CONTEXT>*(s*s*n_tiles)</img>`` per image.
* DeepSeek-VL hybrid (Llama LM): two towers over the same image, SigLIP (low-res ``pixel_values``) and
  SAM (``high_res_pixel_values``, resized and convolved down to the SigLIP grid); the ``aligner``
  projects each and concatenates them per position: one ``(S/p) x (S/p)`` row-major grid per image.
* Ovis2 (Qwen2 LM): a visual tokenizer. The ViT grid is grouped ``hidden_stride`` x ``hidden_stride``
  (row-major cells of a grid padded up to a multiple of the stride), a head gives a softmax over a
  visual vocabulary, and the visual embedding table turns those probabilities into embeddings (a
  matmul with its weight). Each image is ``<IMG_START> tile0 <IMG_GRID> tile1 <IMG_COL> tile2 ...
  <IMG_ROW> ... <IMG_END>`` with ``<IMG_ATOM>`` (the image token) per cell: tile 0 is the thumbnail
  (whole image) when there are crops, then crops row-major. The five indicator tokens
  (``visual_indicator_token_ids``) are ALSO replaced, by fixed rows of the visual table (the same
  for every image): they are structural tokens here (``special_ids``), not image positions, and
  ``hook_embed`` holds the language model's embedding there, as it does at the image positions.
  The visual table is called twice per forward (image probabilities, then the indicator ids), so no
  projector hook is offered: read the image features at ``blocks.0.hook_resid_pre``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hooks_mm.adapters.base import (
    Adapter,
    ImagePlan,
    config_get,
    grid_plan,
    lm_paths,
    pair,
    patch_grid,
    runs,
    special_ids,
    token_id_mask,
)

IMAGE_MASK = token_id_mask("image_token_id", "image_token_index")


def _check_tiles(family: str, n_tiles: int, per: int, inputs: dict[str, Any]) -> None:
    pixel_values = inputs.get("pixel_values")
    if pixel_values is not None and int(pixel_values.shape[0]) != n_tiles:
        raise ValueError(
            f"image token count does not match the images: {family} image positions hold {n_tiles} tile(s) of {per} "
            f"tokens but pixel_values has {int(pixel_values.shape[0])} tile(s). Build text and images together with "
            f"the model's processor (HookedMLLM.to_inputs), whose tokens per tile (image_seq_length) must be {per}."
        )


def tiled_plans(
    family: str, config: Any, inputs: dict[str, Any], side: tuple[int, int], same_image: Any = None
) -> list[ImagePlan]:
    """Plans of tile-cropping processors: every run of image tokens holds whole tiles of ``side``
    (rows, cols) cells each, tiles numbered in order within an image. An image is one run, or, with
    ``same_image(ids, end, start)``, the runs that function glues (the gap ``ids[end:start]``)."""
    per = side[0] * side[1]
    plans: list[ImagePlan] = []
    ids = inputs["input_ids"]
    for b, row in enumerate(IMAGE_MASK(config, ids)):
        prev_end = None
        for start, end in runs(row):
            if (end - start) % per:
                raise ValueError(
                    f"image token count does not match the images: {family} row {b} has a run of {end - start} image "
                    f"tokens, not a whole number of tiles of {per} ({side[0]}x{side[1]} cells). Build the inputs with "
                    "the model's processor (HookedMLLM.to_inputs), whose tokens per tile must match the vision config."
                )
            glued = prev_end is not None and same_image is not None and same_image(ids[b], prev_end, start)
            first = int(plans[-1][-1, 0]) + 1 if glued else 0
            tiles = torch.cat([grid_plan(*side, tile=first + t) for t in range((end - start) // per)])
            if glued:
                plans[-1] = torch.cat([plans[-1], tiles])
            else:
                plans.append(tiles)
            prev_end = end
    _check_tiles(family, sum(len(p) for p in plans) // per, per, inputs)
    return plans


# ---------------------------------------------------------------------------------------
# GOT-OCR2


def got_ocr2_side(config: Any) -> tuple[int, int]:
    """Cells per tile side: the SAM patch grid, halved (rounding up) by each of the two stride-2 convs."""
    rows, cols = patch_grid(config, None)
    return math.ceil(math.ceil(rows / 2) / 2), math.ceil(math.ceil(cols / 2) / 2)


def got_ocr2_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    return tiled_plans("GotOcr2", config, inputs, got_ocr2_side(config))


# ---------------------------------------------------------------------------------------
# LightOnOCR


def lighton_ocr_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    """One ``h // (patch * merge)`` by ``w // (patch * merge)`` grid per image (``image_sizes``)."""
    if inputs.get("image_sizes") is None:
        raise ValueError("LightOnOcr inputs have image positions but no image_sizes: pass the processor's image_sizes")
    cell = pair(config.vision_config.patch_size)[0] * config.spatial_merge_size
    return [grid_plan(int(h) // cell, int(w) // cell) for h, w in torch.as_tensor(inputs["image_sizes"]).tolist()]


# ---------------------------------------------------------------------------------------
# Qianfan-OCR


def qianfan_ocr_side(config: Any, inputs: dict[str, Any]) -> tuple[int, int]:
    """Cells per tile side: the ViT patch grid (CLS dropped) pixel-shuffled by ``downsample_ratio``."""
    strategy = inputs.get("vision_feature_select_strategy") or config.vision_feature_select_strategy
    if strategy != "default":
        raise ValueError(
            f"QianfanOCR with vision_feature_select_strategy={strategy!r} keeps the CLS token, so its features do "
            "not form the square grid the model reshapes them into: use 'default' (the checkpoint's setting)."
        )
    rows, cols = patch_grid(config, inputs.get("pixel_values"))
    ratio = float(config.downsample_ratio)
    return int(rows * ratio), int(cols * ratio)


def qianfan_ocr_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    return tiled_plans("QianfanOCR", config, inputs, qianfan_ocr_side(config, inputs))


# ---------------------------------------------------------------------------------------
# DeepSeek-VL hybrid


def deepseek_vl_hybrid_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    """One row-major SigLIP grid per image (``pixel_values`` at the tower's ``image_size``); the SAM features are
    resampled onto that same grid."""
    pixel_values = inputs.get("pixel_values")
    if pixel_values is None:
        raise ValueError("DeepseekVLHybrid inputs have image positions but no pixel_values: pass the processor's")
    side = config.vision_config.image_size // config.vision_config.patch_size
    return [grid_plan(side, side) for _ in range(int(pixel_values.shape[0]))]


# ---------------------------------------------------------------------------------------
# Ovis2


def ovis2_side(config: Any) -> tuple[int, int]:
    """Cells per tile side: the ViT patch grid padded up to a multiple of ``hidden_stride``, then grouped."""
    rows, cols = patch_grid(config, None)
    stride = int(config.vision_config.hidden_stride)
    return math.ceil(rows / stride), math.ceil(cols / stride)


def ovis2_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    """Runs of ``<IMG_ATOM>`` separated by ONE indicator token (``<IMG_GRID>``, ``<IMG_COL>``,
    ``<IMG_ROW>``) are tiles of one image; ``<IMG_END>`` + ``<IMG_START>`` (two tokens or more) part images."""
    indicators = {int(i) for i in config_get(config, "visual_indicator_token_ids", default=())}

    def same_image(ids: torch.Tensor, end: int, start: int) -> bool:
        return start == end + 1 and int(ids[end]) in indicators

    return tiled_plans("Ovis2", config, inputs, ovis2_side(config), same_image)


# ---------------------------------------------------------------------------------------
# tables

GOT_OCR2 = Adapter(
    name="got_ocr2",
    architectures=("GotOcr2ForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.multi_modal_projector",
    image_mask=IMAGE_MASK,
    image_plans=got_ocr2_plans,
    special_ids=special_ids("img_start_token_id", "img_end_token_id"),
    notes=(
        "Qwen2 LM; SAM tower (window attention, neck) at a fixed image_size; projector = two stride-2 3x3 convs + "
        "linear: hook_vision_out is the neck's (tiles, C, H, W) map, hook_projector_out the (tiles, g*g, d) rows, "
        "exactly the image positions; pixel_values (n_tiles, 3, S, S), crops row-major then the thumbnail."
    ),
)

LIGHTON_OCR = Adapter(
    name="lighton_ocr",
    architectures=("LightOnOcrForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.vision_projection",
    image_mask=IMAGE_MASK,
    image_plans=lighton_ocr_plans,
    special_ids=special_ids("image_break_token_id", "image_end_token_id"),
    notes=(
        "Qwen3 LM; Pixtral tower (all images in one sequence, block-diagonal attention), projector = RMSNorm + "
        "2x2 patch merger + MLP: hook_vision_out is the tower output over every patch, hook_projector_out the "
        "merged cells, exactly the image positions; needs image_sizes."
    ),
)

QIANFAN_OCR = Adapter(
    name="qianfan_ocr",
    architectures=("QianfanOCRForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.multi_modal_projector",
    image_mask=IMAGE_MASK,
    image_plans=qianfan_ocr_plans,
    special_ids=special_ids("start_image_token_id", "end_image_token_id"),
    notes=(
        "Qwen3 LM; InternVL-like: CLS ViT, CLS dropped and pixel shuffle BEFORE the projector (its input is the "
        "shuffled (tiles, s*s, d_vis/ratio^2) map); one <img>...</img> run per image, image_seq_length per tile."
    ),
)

DEEPSEEK_VL_HYBRID = Adapter(
    name="deepseek_vl_hybrid",
    architectures=("DeepseekVLHybridForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.aligner",
    image_mask=IMAGE_MASK,
    image_plans=deepseek_vl_hybrid_plans,
    notes=(
        "Llama LM; two towers per image: SigLIP (pixel_values) and SAM (high_res_pixel_values, resampled to the "
        "SigLIP grid); projector = aligner (a linear per tower, concatenated, GELU, linear): hook_vision_out is its "
        "FIRST input, the SigLIP output (the SAM features are its second input, not hooked), hook_projector_out "
        "its output, exactly the image positions."
    ),
)

OVIS2 = Adapter(
    name="ovis2",
    architectures=("Ovis2ForConditionalGeneration",),
    **lm_paths("model.language_model"),
    image_mask=IMAGE_MASK,
    image_plans=ovis2_plans,
    special_ids=special_ids("visual_indicator_token_ids"),
    notes=(
        "Qwen2 LM; visual tokenizer: ViT, hidden_stride grouping, softmax over a visual vocabulary, embedded by "
        "model.visual_embeddings_table (probabilities @ table). The table is also called on the 5 indicator ids, "
        "whose rows replace the indicator tokens (structural, not image positions): no projector hook is offered; "
        "image features are blocks.0.hook_resid_pre at the <IMG_ATOM> positions."
    ),
)

ADAPTERS = (GOT_OCR2, LIGHTON_OCR, QIANFAN_OCR, DEEPSEEK_VL_HYBRID, OVIS2)
