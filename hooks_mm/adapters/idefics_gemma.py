"""Idefics3, SmolVLM, PaliGemma, Gemma3 and InternVL tables.

All five write image features with ``masked_scatter`` at ``input_ids == image_token_id``,
flattened row-major over the batch, images (and their tiles) in ``pixel_values`` order.

Plan conventions (shape [n, 3] = (tile, row, col)):

* Idefics3 / SmolVLM: the model itself knows nothing of tiles per image: it drops the
  all-zero padding sub-images of ``pixel_values`` (B, n_sub, 3, H, W), runs every real
  sub-image through the tower and connector (pixel shuffle, ``scale_factor``) and scatters
  ``(H/p)^2 / scale^2`` tokens per sub-image in order.  Only the processor's text says
  which sub-images form one image: per image ``rows x cols`` split tiles, each written
  ``<fake_token_around_image><row_i_col_j><image>*n``, then the global (downscaled whole)
  image ``<fake_token_around_image><global-img><image>*n<fake_token_around_image>``; an
  unsplit image is the global tile alone.  So every maximal run of image tokens is one
  tile, and an image ends with the run preceded by the ``<global-img>`` marker.  The
  marker ids are tokenizer ids, not config fields: set ``config.global_image_token_id``
  (and ``fake_image_token_id``) to pin them; otherwise the marker is read from the input:
  the tokens between the last ``<fake_token_around_image>`` and the last run of a row are
  the global marker (the processor always ends an image with its global tile).  Tiles
  are numbered in sequence order: split tiles row-major over the image's tile layout,
  the global tile last.  Each tile is a row-major ``s x s`` grid of pixel-shuffled cells
  (cell (r, c) covers patches r*scale.., c*scale..).
* PaliGemma: fixed ``(H/p) x (W/p)`` SigLIP grid per image, images adjacent (no
  separators) before BOS, so the image positions of a row are cut into equal chunks.
* Gemma3: ``mm_tokens_per_image`` tokens per image (avg-pooled SigLIP grid, row-major),
  wrapped by boi/eoi; pan-and-scan crops are separate images in ``pixel_values`` and
  appear here as separate plans.
* InternVL: one run of ``image_seq_length * n_tiles`` tokens per image between
  ``<img>``/``</img>``; tiles in ``pixel_values`` order (crops row-major, then the
  thumbnail last when there are crops); each tile a row-major pixel-shuffled grid
  (``downsample_ratio``), CLS dropped by the "default" strategy.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from hooks_mm.adapters.base import (
    Adapter,
    ImagePlan,
    config_get,
    grid_plan,
    grid_plan_for,
    lm_paths,
    patch_grid,
    runs,
    softcap_logits,
    special_ids,
    token_id_mask,
)

_image_mask = token_id_mask("image_token_id", "image_token_index")


def _n_images(inputs: dict[str, Any]) -> int:
    pixel_values = inputs.get("pixel_values")
    return 0 if pixel_values is None else int(pixel_values.shape[0])


# ---------------------------------------------------------------------------------------
# Idefics3 / SmolVLM


def _idefics_side(config: Any, inputs: dict[str, Any]) -> tuple[int, int]:
    # the connector assumes a square patch map: side = sqrt(n_patches)
    rows, cols = patch_grid(config, inputs.get("pixel_values"))
    side = math.isqrt(rows * cols) // int(getattr(config, "scale_factor", 2) or 1)
    return side, side


def idefics3_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    ids = inputs["input_ids"]
    mask = _image_mask(config, ids)
    side = _idefics_side(config, inputs)
    fake = config_get(config, "fake_image_token_id")
    glob = config_get(config, "global_image_token_id")
    row_runs = [runs(m) for m in mask]
    seq = ids.shape[1]

    if fake is None:  # the token right after the last tile of a row closes its image
        for b, spans in enumerate(row_runs):
            if spans and spans[-1][1] < seq:
                fake = int(ids[b, spans[-1][1]])
                break

    def marker(b: int, start: int) -> tuple[int, ...]:
        j = start - 1
        while j >= 0 and int(ids[b, j]) != fake and not bool(mask[b, j]):
            j -= 1
        return tuple(ids[b, j + 1 : start].tolist())

    if glob is not None:
        is_global = lambda b, start: start > 0 and int(ids[b, start - 1]) == int(glob)  # noqa: E731
    else:
        glob_marker = None
        for b, spans in enumerate(row_runs):
            if spans:
                glob_marker = marker(b, spans[-1][0])
                break
        is_global = lambda b, start: marker(b, start) == glob_marker  # noqa: E731

    plans: list[ImagePlan] = []
    pixel_values = inputs.get("pixel_values")
    if pixel_values is not None:  # the model writes features for every non-padding sub-image
        n_sub = int((pixel_values.flatten(2).abs().sum(-1) > 0).sum())
        if sum(e - s for spans in row_runs for s, e in spans) != n_sub * side[0] * side[1]:
            return [grid_plan_for(side[0] * side[1], side) for _ in range(n_sub)]
    for b, spans in enumerate(row_runs):
        tiles: list[ImagePlan] = []
        for start, end in spans:
            tiles.append(grid_plan_for(end - start, side, tile=len(tiles)))
            if is_global(b, start):
                plans.append(torch.cat(tiles))
                tiles = []
        if tiles:  # truncated image (no global tile): keep what is there
            plans.append(torch.cat(tiles))
    return plans


_idefics_special = special_ids(
    "fake_image_token_id", "global_image_token_id", "end_of_utterance_token_id", "row_col_token_ids"
)


# ---------------------------------------------------------------------------------------
# PaliGemma


def paligemma_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    rows, cols = patch_grid(config, inputs.get("pixel_values"))
    return [grid_plan(rows, cols) for _ in range(_n_images(inputs))]


# ---------------------------------------------------------------------------------------
# Gemma3


def gemma3_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    per = int(config.mm_tokens_per_image)
    side = math.isqrt(per)
    return [grid_plan_for(per, (side, side)) for _ in range(_n_images(inputs))]


_gemma3_special = special_ids("boi_token_id", "boi_token_index", "eoi_token_id", "eoi_token_index")


# ---------------------------------------------------------------------------------------
# InternVL


def _internvl_side(config: Any, inputs: dict[str, Any]) -> tuple[int, int]:
    rows, cols = patch_grid(config, inputs.get("pixel_values"))
    side = int(math.isqrt(rows * cols) * float(config.downsample_ratio))
    return side, side


def internvl_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    ids = inputs["input_ids"]
    per = int(config_get(config, "image_seq_length", default=0) or 0)
    side = _internvl_side(config, inputs)
    if side[0] * side[1] != per:
        per = side[0] * side[1]
    plans = []
    n_tiles = _n_images(inputs)
    if int(_image_mask(config, ids).sum()) != n_tiles * per:  # one feature grid per tile
        return [grid_plan(*side) for _ in range(n_tiles)]
    for m in _image_mask(config, ids):
        for start, end in runs(m):
            n = end - start
            if per and n % per == 0:
                plans.append(torch.cat([grid_plan(*side, tile=t) for t in range(n // per)]))
            else:
                plans.append(grid_plan_for(n))
    return plans


_internvl_special = special_ids("start_image_token_id", "end_image_token_id", "img_start_token_id", "img_end_token_id")


# ---------------------------------------------------------------------------------------
# tables


_IDEFICS_NOTES = (
    "Llama LM (model.text_model); pixel_values (B, n_sub, 3, H, W) with all-zero padding "
    "sub-images dropped; each run of image tokens is one tile of (H/p)^2/scale^2 tokens, "
    "projector = connector (pixel shuffle + linear), 1 output row per image position; "
    "optional pixel_attention_mask (B, n_sub, H, W)."
)

IDEFICS3 = Adapter(
    name="idefics3",
    architectures=("Idefics3ForConditionalGeneration",),
    **lm_paths("model.text_model"),
    projector="model.connector",
    image_mask=_image_mask,
    image_plans=idefics3_plans,
    special_ids=_idefics_special,
    notes=_IDEFICS_NOTES,
)

SMOLVLM = replace(
    IDEFICS3,
    name="smolvlm",
    architectures=("SmolVLMForConditionalGeneration",),
    notes=_IDEFICS_NOTES + " Video frames are written as unsplit (global-only) images.",
)

PALIGEMMA = Adapter(
    name="paligemma",
    architectures=("PaliGemmaForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.multi_modal_projector",
    image_mask=_image_mask,
    image_plans=paligemma_plans,
    logits_post=softcap_logits,
    notes=(
        "Gemma LM (GELU-tanh MLP, embed scaled by sqrt(d) inside embed_tokens; image "
        "features are NOT scaled); image tokens first, then BOS, prompt, '\\n'; "
        "token_type_ids 0 = bidirectional prefix (image+prompt), 1 = causal suffix; "
        "position_ids 1-based; the head applies the text config's final_logit_softcapping. PaliGemma 2 "
        "(Gemma2 LM, sandwich norms) is the same class: its backbone row is chosen from the text config."
    ),
)

GEMMA3 = Adapter(
    name="gemma3",
    architectures=("Gemma3ForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.multi_modal_projector",
    image_mask=_image_mask,
    image_plans=gemma3_plans,
    special_ids=_gemma3_special,
    notes=(
        "gemma3_text backbone (sandwich norms: attn output normed by post_attention_layernorm, MLP wrapped by "
        "pre_/post_feedforward_layernorm); q_norm/k_norm; GELU-tanh; sliding/full layers; "
        "token_type_ids (1 at image tokens) make each image bidirectional, without it "
        "attention is purely causal; projector avg-pools the patch grid."
    ),
)

INTERNVL = Adapter(
    name="internvl",
    architectures=("InternVLForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.multi_modal_projector",
    image_mask=_image_mask,
    image_plans=internvl_plans,
    special_ids=_internvl_special,
    notes=(
        "Qwen2/Llama LM; pixel_values (n_tiles_total, 3, H, W); one token run per image "
        "(image_seq_length per tile); CLS drop and pixel shuffle happen BEFORE the "
        "projector, so its input is the shuffled (tiles, seq, 4*d_vis) map."
    ),
)

ADAPTERS = (IDEFICS3, SMOLVLM, PALIGEMMA, GEMMA3, INTERNVL)
