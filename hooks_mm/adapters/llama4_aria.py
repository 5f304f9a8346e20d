"""Llama 4 and Aria: tiled image wrappers over MoE decoders (backbone rows ``llama4``, ``aria``).

Llama 4.

``Llama4ForConditionalGeneration`` encodes every tile of ``pixel_values`` [n_tiles, C, S, S]
(``S = vision_config.image_size``) with its ViT (CLS dropped), pixel-shuffles each tile's
``(S/p) x (S/p)`` patch grid by ``pixel_shuffle_ratio`` (cell ``(r, c)`` covers patch rows
``r/ratio ..`` and columns ``c/ratio ..``; row-major after the two transposes of ``pixel_shuffle``),
projects with ``multi_modal_projector`` and masked-scatters the rows at ``image_token_id``
(``<|patch|>``), in ``pixel_values`` order. ``Llama4Processor`` writes each image as
``<|image_start|>`` then, for an image cut into ``rows x cols`` tiles, each tile's ``<|patch|>``
run (``<|tile_x_separator|>`` between the tiles of a row, ``<|tile_y_separator|>`` after a row),
then ``<|image|>`` and the whole image resized to one tile (the global tile; alone when the image
is one tile), then ``<|image_end|>``. Plans: the tiles of an image numbered in that order (crops
row-major, the global tile last), each a ``g x g`` row-major grid, ``g = (S/p) * ratio``.

The decoder's MoE layers (``moe_layers``: a shared expert plus top-k experts whose sigmoid router
score scales the expert's INPUT) are hooked by :mod:`hooks_mm.model.moe` (``Moe(score="sigmoid_input")``).

Aria. ``AriaForConditionalGeneration``: an Idefics3 vision tower over each crop of ``pixel_values``
[n_crops, C, S, S] (``pixel_mask`` marks the padding), then ``AriaProjector``: ``q`` learned queries
(``projector_patch_to_query_dict[(S/p)^2]``) cross-attend to the crop's patches, so a crop gives ``q``
latents and no spatial grid: plans hold ``(crop, -1, latent)``. ``AriaProcessor`` writes one run of
``num_crops * q`` ``<|img|>`` tokens per image (one crop per image unless ``split_image``), features
masked-scattered at ``image_token_id`` in ``pixel_values`` order. Two images written back to back with
no token between them read as one image's crops (their positions are still exact).
"""

from __future__ import annotations

from typing import Any

import torch

from hooks_mm.adapters.base import Adapter, ImagePlan, config_get, lm_paths, runs, special_ids, token_id_mask
from hooks_mm.adapters.idefics2_deepseek import latent_plan
from hooks_mm.adapters.ocr import tiled_plans

IMAGE_MASK = token_id_mask("image_token_id", "image_token_index")


def llama4_side(config: Any) -> tuple[int, int]:
    """Cells per tile side: the ViT patch grid scaled by ``pixel_shuffle_ratio``."""
    v = config.vision_config
    side = int((v.image_size // v.patch_size) * v.pixel_shuffle_ratio)
    return side, side


def llama4_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    """One plan per image: its ``<|patch|>`` runs up to ``<|image_end|>`` are its tiles, in order."""
    eoi = config_get(config, "eoi_token_id", "eoi_token_index")

    def same_image(ids: Any, end: int, start: int) -> bool:  # separators / <|image|> between runs, no image end
        return not bool((ids[end:start] == eoi).any())

    return tiled_plans("Llama4", config, inputs, llama4_side(config), same_image)


LLAMA4 = Adapter(
    name="llama4",
    architectures=("Llama4ForConditionalGeneration",),
    **lm_paths("language_model.model"),
    projector="multi_modal_projector",
    image_mask=IMAGE_MASK,
    image_plans=llama4_plans,
    special_ids=special_ids("boi_token_id", "eoi_token_id", "boi_token_index", "eoi_token_index"),
    notes="tiles (crops row-major, then the global tile) pixel-shuffled to g x g cells each; hook_vision_out is the "
    "vision adapter's output (one row per cell, the projector's input); backbone llama4 (NoPE / chunked layers, "
    "L2 qk-norm; MoE layers: sigmoid scores on the experts' input, a shared expert)",
)


def aria_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    """One plan per run of image tokens: its crops (``q`` latents each, ``(crop, -1, latent)``)."""
    pixel_values = inputs.get("pixel_values")
    if pixel_values is None:
        return []
    patch = config.vision_config.patch_size
    n_patches = (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch)
    q = config.projector_patch_to_query_dict.get(n_patches)
    if q is None:
        raise ValueError(
            f"Aria pixel_values of {tuple(pixel_values.shape[-2:])} pixels give {n_patches} patches per crop, which "
            f"projector_patch_to_query_dict {config.projector_patch_to_query_dict} does not map to a query count: "
            "build the inputs with the model's processor (HookedMLLM.to_inputs) at a max_image_size the model knows."
        )
    plans = []
    for b, row in enumerate(IMAGE_MASK(config, inputs["input_ids"])):
        for start, end in runs(row):
            if (end - start) % q:
                raise ValueError(
                    f"image token count does not match the images: Aria row {b} has a run of {end - start} image "
                    f"tokens, not a whole number of crops of {q} latents. Build the inputs with the model's processor "
                    "(HookedMLLM.to_inputs)."
                )
            plans.append(torch.cat([latent_plan(q, tile=t) for t in range((end - start) // q)]))
    if sum(len(p) for p in plans) != q * pixel_values.shape[0]:
        raise ValueError(
            f"image token count does not match the images: the image positions hold {sum(len(p) for p in plans)} "
            f"latents but pixel_values has {pixel_values.shape[0]} crop(s) of {q}: build text and images together "
            "with the model's processor (HookedMLLM.to_inputs)."
        )
    return plans


ARIA = Adapter(
    name="aria",
    architectures=("AriaForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.multi_modal_projector",
    image_mask=IMAGE_MASK,
    image_plans=aria_plans,
    notes="Idefics3 vision tower per crop (pixel_mask: padding); projector = learned queries cross-attending to the "
    "patches (q latents per crop, no grid: plans (crop, -1, latent)); MoE LM in every layer (backbone row aria)",
)

ADAPTERS = (LLAMA4, ARIA)
