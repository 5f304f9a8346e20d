"""Gemma-4, Fuyu, Molmo2 and Kosmos-2.5 wrapper rows (Phi-4-multimodal refused with its reason).

* Gemma-4 (``Gemma4ForConditionalGeneration``): the vision tower patchifies each image at its own
  (aspect-preserving) size, ``image_position_ids[i]`` holding each patch's ``(x, y)`` (``-1``
  padding); the pooler averages ``k x k`` patches (``k = pooling_kernel_size``) into cell
  ``(y // k, x // k)``, numbered ``x // k + (W / k) * (y // k)``: row-major, padding cells dropped.
  ``embed_vision`` (the projector: a scale-free RMS norm + linear) maps the stripped soft tokens
  1:1 onto the ``<|image|>`` positions (``masked_scatter``, images in ``pixel_values`` order). The
  processor wraps every image as ``<boi>`` + tokens + ``<eoi>``. Audio clips (``<|audio|>``,
  ``input_features``) are audio positions when the model has an audio tower (``GEMMA4_AUDIO``):
  one run per clip, a step per 40 ms, ``embed_audio`` the audio projector. Video is refused.
* Fuyu (``FuyuForCausalLM``): no vision tower; ``vision_embed_tokens`` (a linear over raw
  ``patch x patch`` pixel patches) is the projector, its output ``masked_scatter``-ed at the
  ``|SPEAKER|`` positions: per image one per patch, row-major, each patch row followed by a
  ``|NEWLINE|`` text token (outside the image positions).
* Molmo2: per image a low-resolution grid (tile 0) then the overlapping-crop mosaic (tile 1), both
  2 x 2-pooled cells row-major (``image_grids``), ``<im_col>`` text tokens closing each row; the
  features are ADDED to the ``<im_patch>`` embeddings. Video is refused.
* Kosmos-2.5: ``latent_query_num`` resampler latents per image (no patch grid) written where
  ``image_embeds_position_mask == 1``: the run of ``<s>`` tokens after ``<image>``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from hooks_mm.adapters.base import (
    Adapter,
    ImagePlan,
    MediaPlan,
    config_get,
    grid_plan,
    lm_paths,
    run_lengths,
    runs,
    softcap_logits,
    special_ids,
    token_id_mask,
)

# ---------------------------------------------------------------------------------------
# Gemma-4

_gemma4_image_mask = token_id_mask("image_token_id")


def gemma4_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    """One row-major ``(H / p / k) x (W / p / k)`` grid of pooled cells per image."""
    if inputs.get("pixel_values_videos") is not None:
        raise NotImplementedError(
            "Gemma-4 video (pixel_values_videos) is not supported by hooks_mm yet: its frames' positions would be "
            "read as text. Pass images and text only."
        )
    positions = inputs.get("image_position_ids")
    if inputs.get("pixel_values") is None:
        return []
    if positions is None:
        raise ValueError("Gemma-4 images need image_position_ids (the processor returns them): pass them as given.")
    k = int(config.vision_config.pooling_kernel_size)
    plans = []
    for pos in torch.as_tensor(positions):
        real = pos[(pos != -1).all(-1)]
        cols, rows = ((real.amax(0) + 1) // k).tolist()
        plans.append(grid_plan(int(rows), int(cols)))
    return plans


def gemma4_audio_plans(config: Any, inputs: dict[str, Any], processor: Any = None) -> list[MediaPlan]:
    """One plan per clip (each clip is one run of ``<|audio|>`` between ``<boa>`` / ``<eoa>``): a step is four
    feature frames (two stride-2 convolutions), 40 ms at the feature extractor's 10 ms hop."""
    from hooks_mm.media import feature_seconds

    if inputs.get("input_features") is None:
        return []
    seconds = feature_seconds(processor) if processor is not None else None
    steps = run_lengths(_gemma4_audio_mask(config, inputs["input_ids"]), inputs.get("attention_mask"))
    return [MediaPlan.audio(n, None if seconds is None else 4 * seconds) for n in steps]


_gemma4_audio_mask = token_id_mask("audio_token_id")

GEMMA4 = Adapter(
    name="gemma4",
    architectures=("Gemma4ForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.embed_vision",
    image_mask=_gemma4_image_mask,
    image_plans=gemma4_plans,
    special_ids=special_ids("boi_token_id", "eoi_token_id", "boa_token_id", "eoa_token_index"),
    logits_post=softcap_logits,
    notes=(
        "gemma4_text backbone (row 'gemma4': sandwich norms, layer_scalar, k=v attention; per-layer inputs, shared "
        "KV and MoE refused); mm_token_type_ids make each image bidirectional in sliding layers; the projector "
        "(embed_vision) output rows are exactly the image positions; the head soft-caps the logits."
    ),
)

# ---------------------------------------------------------------------------------------
# Fuyu

_fuyu_image_mask = token_id_mask("image_token_id")


def fuyu_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    """One image per row (the processor's layout): each run of ``|SPEAKER|`` is one patch row of it."""
    if inputs.get("pixel_values") is None:
        return []
    mask = _fuyu_image_mask(config, inputs["input_ids"])
    am = inputs.get("attention_mask")
    patches = torch.as_tensor(inputs["pixel_values"]).shape[:-1].numel()
    if int(mask.sum()) != patches:
        raise ValueError(
            f"image token count does not match the images: input_ids hold {int(mask.sum())} |SPEAKER| positions "
            f"but pixel_values hold {patches} patches. Build inputs with the model's processor "
            "(HookedMLLM.to_inputs), one image per prompt."
        )
    plans = []
    for b, row in enumerate(mask if am is None else mask & torch.as_tensor(am).bool()):
        lengths = [end - start for start, end in runs(row)]
        if not lengths:
            continue
        if len(set(lengths)) != 1:
            raise ValueError(
                f"Fuyu row {b}: image-token runs of lengths {lengths} are not the patch rows of one image (the "
                "processor writes one image per prompt, every patch row equally long, each closed by |NEWLINE|): "
                "pass inputs made by FuyuProcessor, one image per prompt."
            )
        plans.append(grid_plan(len(lengths), lengths[0]))
    return plans


FUYU = Adapter(
    name="fuyu",
    architectures=("FuyuForCausalLM",),
    layers="model.language_model.layers",
    embed="model.language_model.embed_tokens",
    final_norm="model.language_model.final_layernorm",
    projector="model.vision_embed_tokens",
    image_mask=_fuyu_image_mask,
    image_plans=fuyu_plans,
    special_ids=special_ids("image_newline_token_id"),
    notes=(
        "persimmon backbone (row 'persimmon'); no vision tower: vision_embed_tokens embeds raw pixel patches, one "
        "output row per image position (masked_scatter at |SPEAKER|); |NEWLINE| tokens are text embeddings "
        "between patch rows (listed as special when config.image_newline_token_id is set)."
    ),
)

ADAPTERS = (GEMMA4, FUYU)  # + MOLMO2 below

# a Gemma-4 with an audio tower (E2B / E4B): its audio positions and projector (embed_audio) too
GEMMA4_AUDIO = replace(
    GEMMA4, audio_mask=_gemma4_audio_mask, audio_plans=gemma4_audio_plans, audio_projector="model.embed_audio"
)

# ---------------------------------------------------------------------------------------
# Molmo2

_molmo2_image_mask = token_id_mask("image_patch_id", "image_token_id")


def molmo2_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    """Per image (``image_grids`` row ``(h, w, H, W)``): tile 0 the low-resolution ``h x w`` pooled grid, tile 1
    the ``H x W`` pooled grid of the overlapping-crop mosaic, both row-major (``<im_col>`` tokens end each row
    outside the image positions)."""
    if inputs.get("pixel_values_videos") is not None:
        raise NotImplementedError(
            "Molmo2 video (pixel_values_videos) is not supported by hooks_mm yet: its frames use the image patch "
            "token and would be read as images. Pass images and text only."
        )
    grids = inputs.get("image_grids")
    if inputs.get("pixel_values") is None or grids is None:
        return []
    return [
        torch.cat([grid_plan(int(h), int(w), tile=0), grid_plan(int(rows), int(cols), tile=1)])
        for h, w, rows, cols in torch.as_tensor(grids).tolist()
    ]


MOLMO2 = Adapter(
    name="molmo2",
    architectures=("Molmo2ForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.multi_modal_projector",
    image_mask=_molmo2_image_mask,
    image_plans=molmo2_plans,
    special_ids=special_ids(
        "image_start_token_id", "low_res_image_start_token_id", "image_end_token_id", "image_col_token_id"
    ),
    notes=(
        "molmo2_text backbone (Llama-like, q/k norms; norm_after refused); the projector (multi_modal_projector: "
        "attention pooling of 2 x 2 ViT patches from image_token_pooling, then an MLP) output rows are the image "
        "positions, and they are ADDED to the placeholder embeddings (hook_embed holds the placeholder's own "
        "embedding there); mm_token_type_ids make all image tokens one bidirectional block."
    ),
)

# ---------------------------------------------------------------------------------------
# Kosmos-2.5


def kosmos2_5_image_mask(config: Any, input_ids: Tensor) -> Tensor:
    """Runs of exactly ``latent_query_num`` image tokens (``<s>``, the text model's BOS id unless the config
    names an ``image_token_id``): the BOS that opens each prompt is the same id but a run of one."""
    token = config_get(config, "image_token_id", "bos_token_id")
    n = int(config.latent_query_num)
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for b, row in enumerate(input_ids == token):
        for start, end in runs(row):
            mask[b, start:end] = end - start == n
    return mask


def kosmos2_5_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    """``latent_query_num`` resampler latents per image, ``(0, -1, k)``: no patch grid."""
    from hooks_mm.adapters.idefics2_deepseek import latent_plan

    if inputs.get("flattened_patches") is None:
        return []
    mask = kosmos2_5_image_mask(config, inputs["input_ids"])
    given = inputs.get("image_embeds_position_mask")
    if given is None or not torch.equal(torch.as_tensor(given) == 1, mask):
        raise ValueError(
            "image token count does not match the images: Kosmos-2.5 writes its latents where "
            "image_embeds_position_mask == 1, and here that mask is missing or is not the run of latent_query_num "
            "image tokens after <image> in each row. Build inputs with the model's processor (HookedMLLM.to_inputs) "
            "with right padding, or move the mask with each row's left padding."
        )
    return [latent_plan(int(config.latent_query_num)) for row in mask if row.any()]


KOSMOS2_5 = Adapter(
    name="kosmos2_5",
    architectures=("Kosmos2_5ForConditionalGeneration",),
    layers="text_model.model.layers",
    embed="text_model.model.embed_tokens",
    final_norm="text_model.model.layer_norm",
    projector="image_to_text_projection",
    image_mask=kosmos2_5_image_mask,
    image_plans=kosmos2_5_plans,
    notes=(
        "kosmos_2_5_text_model backbone (row 'kosmos2_5'); latents written into embed_tokens' output, which is then "
        "scaled by sqrt(d) (scale_embedding) and given sinusoidal positions plus a segment embedding before block 0 "
        "(hook_embed: the unscaled embedding, blocks.0.hook_resid_pre: what block 0 reads); the projector "
        "(image_to_text_projection: dense + latent-query cross-attention) output rows are the image positions."
    ),
)

# ---------------------------------------------------------------------------------------
# classes refused, with the reason (HookedMLLM names it instead of "no adapter")

REFUSED = {
    "Phi4MultimodalForCausalLM": "Phi-4-multimodal's image path (embed_tokens_extend) is not mapped yet: HD "
    "sub-image mosaic rows each closed by a learned separator, a global separator, then the global image's rows, "
    "projected in two steps per image, and its image processor needs torchvision; its audio path neither"
}


def _refuse(name: str, reason: str) -> Any:
    def fn(config: Any) -> Adapter:
        raise NotImplementedError(
            f"{reason}: hooks_mm does not support {name} yet. Use a supported family (hooks_mm.adapters.ADAPTERS)."
        )

    return fn


ADAPTERS = (*ADAPTERS, MOLMO2, KOSMOS2_5)
VARIANTS = {name: _refuse(name, reason) for name, reason in REFUSED.items()}
VARIANTS["Gemma4ForConditionalGeneration"] = lambda config: (
    GEMMA4_AUDIO if getattr(config, "audio_config", None) is not None else GEMMA4
)
