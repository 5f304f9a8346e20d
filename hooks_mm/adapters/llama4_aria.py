"""Llama 4: a tiled image wrapper over the ``llama4_text`` decoder (backbone row ``llama4``).

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
score scales the expert's INPUT) are hooked by :mod:`hooks_mm.model.moe` (``Moe(scoring="sigmoid_input")``).
"""

from __future__ import annotations

from typing import Any

from hooks_mm.adapters.base import Adapter, ImagePlan, config_get, lm_paths, special_ids, token_id_mask
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

ADAPTERS = (LLAMA4,)
