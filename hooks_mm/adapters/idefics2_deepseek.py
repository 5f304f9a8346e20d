"""Idefics2 and DeepSeek-VL tables.

DeepSeek-VL: a SigLIP tower (no CLS), every patch kept, ``aligner`` (linear, GELU, linear) as the
projector, one fixed ``(H/p) x (W/p)`` row-major grid per image (``pixel_values`` (n_images, 3, H, W),
images padded to square by the processor), written with ``masked_scatter`` at ``image_token_id``.

Idefics2 writes image features with ``masked_scatter`` at ``input_ids == image_token_id``,
flattened row-major over the batch.  ``pixel_values`` is (B, n_sub, 3, H, W); all-zero padding
sub-images are dropped, every real sub-image goes through the SigLIP tower, then the
``connector`` (an MLP, then a perceiver resampler) turns it into ``resampler_n_latents``
latents.  The perceiver resamples: latent k is a learned query attending over all patches, so
a position maps to (sub-image, latent), with NO (row, col) grid.  Plans write a latent as
``(tile, -1, k)``: ``grid_row == -1`` (no spatial row), ``grid_col == k`` (the latent index), so
``layout.grid`` returns None for these tiles and nothing pretends to be a patch grid.

With ``do_image_splitting`` the processor turns each image into 4 crops (top-left, top-right,
bottom-left, bottom-right, tiles 0..3) then the whole image (tile 4), written
``<fake><image>*n<fake><image>*n...<fake>``; two adjacent images are written the same way, so
the tokens cannot always tell split tiles from images.  The grouping is read from
``config.do_image_splitting`` when set (pin it from the processor:
``hf_model.config.do_image_splitting = processor.image_processor.do_image_splitting``);
otherwise from the text: a group of contiguous sub-images whose size is not a multiple of 5 means
no splitting; when every group is a multiple of 5 the grouping is ambiguous and refused.
"""

from __future__ import annotations

from typing import Any

import torch

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

_image_mask = token_id_mask("image_token_id", "image_token_index")
SPLIT = 5  # the processor's 4 crops + the whole image


def latent_plan(n: int, tile: int = 0) -> ImagePlan:
    """``n`` perceiver latents of one sub-image: ``(tile, -1, k)`` (no spatial grid)."""
    k = torch.arange(n)
    return torch.stack([torch.full_like(k, tile), torch.full_like(k, -1), k], dim=1)


def _groups(ids: torch.Tensor, spans: list[tuple[int, int]], fake: int | None) -> list[int]:
    """Sizes (in sub-images) of the groups of runs separated by exactly one ``<fake>`` token."""
    sizes: list[int] = []
    prev_end = None
    for start, end in spans:
        one_fake = prev_end is not None and start == prev_end + 1 and (fake is None or int(ids[prev_end]) == fake)
        glued = prev_end is not None and (start == prev_end or one_fake)
        if glued:
            sizes[-1] += 1
        else:
            sizes.append(1)
        prev_end = end
    return sizes


def idefics2_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    ids = inputs["input_ids"]
    mask = _image_mask(config, ids)
    am = inputs.get("attention_mask")
    if am is not None:
        mask = mask & am.bool()
    per = int(config.perceiver_config.resampler_n_latents)
    pixel_values = inputs.get("pixel_values")
    row_runs = [runs(m) for m in mask]
    if pixel_values is None:
        n_real = [sum(e - s for s, e in spans) // per for spans in row_runs]
    else:  # the model encodes every non-padding sub-image of each row, in order
        real = pixel_values.flatten(2).abs().sum(-1) > 0
        n_real = real.sum(1).tolist()
    for b, spans in enumerate(row_runs):
        lengths = [e - s for s, e in spans]
        if sum(lengths) != n_real[b] * per or any(n % per for n in lengths):
            raise ValueError(
                f"image token count does not match the images: Idefics2 row {b} holds {sum(lengths)} image "
                f"positions in runs {lengths}, but its {n_real[b]} sub-image(s) give {per} latents each. "
                "Build the inputs with the model's "
                "processor (HookedMLLM.to_inputs), whose image_seq_len must equal "
                "perceiver_config.resampler_n_latents."
            )
    split = config_get(config, "do_image_splitting")
    if split is None:
        fake = config_get(config, "fake_image_token_id")
        groups = [g for b, spans in enumerate(row_runs) for g in _groups(ids[b], _unit(spans, per), fake)]
        if any(g % SPLIT for g in groups):
            split = False
        else:
            raise ValueError(
                "Idefics2: cannot tell split sub-images from whole images (every run of sub-images "
                f"is a multiple of {SPLIT}): pin it from the processor with "
                "model.hf_model.config.do_image_splitting = processor.image_processor.do_image_splitting."
            )
    k = SPLIT if split else 1
    plans: list[ImagePlan] = []
    for b in range(len(row_runs)):
        if n_real[b] % k:
            raise ValueError(
                f"Idefics2 row {b}: {n_real[b]} sub-images is not a multiple of {k} "
                f"(config.do_image_splitting={bool(split)}): set it as the processor that built the inputs has it."
            )
        for _ in range(n_real[b] // k):
            plans.append(torch.cat([latent_plan(per, tile=t) for t in range(k)]))
    return plans


def _unit(spans: list[tuple[int, int]], per: int) -> list[tuple[int, int]]:
    """Runs cut into one span per sub-image (``per`` latents each)."""
    return [(s + i, s + i + per) for s, e in spans for i in range(0, e - s, per)]


_IDEFICS2_NOTES = (
    "Mistral LM (model.text_model); pixel_values (B, n_sub, 3, H, W), all-zero padding sub-images "
    "dropped; projector = connector (MLP + perceiver resampler): each sub-image gives "
    "resampler_n_latents latents, so image positions map to (sub-image, latent) with NO (row, col) "
    "grid (plans hold (tile, -1, latent)); with do_image_splitting an image is 4 crops + the whole "
    "image (tiles 0..4), pinned by config.do_image_splitting when set."
)

IDEFICS2 = Adapter(
    name="idefics2",
    architectures=("Idefics2ForConditionalGeneration",),
    **lm_paths("model.text_model"),
    projector="model.connector",
    image_mask=_image_mask,
    image_plans=idefics2_plans,
    special_ids=special_ids("fake_image_token_id"),
    notes=_IDEFICS2_NOTES,
)


def deepseek_vl_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    pixel_values = inputs.get("pixel_values")
    n = 0 if pixel_values is None else int(pixel_values.shape[0])
    rows, cols = patch_grid(config, pixel_values)
    return [grid_plan(rows, cols) for _ in range(n)]


DEEPSEEK_VL = Adapter(
    name="deepseek_vl",
    architectures=("DeepseekVLForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.aligner",
    image_mask=_image_mask,
    image_plans=deepseek_vl_plans,
    notes=(
        "Llama LM (model.language_model); SigLIP tower, all (H/p) x (W/p) patches kept (no CLS), "
        "projector = aligner (linear, GELU, linear), 1 output row per image position; pixel_values "
        "(n_images, 3, H, W), one row-major patch grid per image."
    ),
)

ADAPTERS = (IDEFICS2, DEEPSEEK_VL)
