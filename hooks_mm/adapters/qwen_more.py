"""More families built on the Qwen-VL patch grid: Cosmos3-Omni, VideoLLaMA3, PaddleOCR-VL,
HyperCLOVAX-Vision-V2, EXAONE 4.5.

Each flattens an image into patches (``pixel_values`` ``[n_patches, C*T*P*P]``), merges
``m x m`` patches into one LM token and masked-scatters one feature per merged cell, images in
``image_grid_thw`` order, each an ``(h/m) x (w/m)`` row-major grid (``grid_thw`` counts patches):

* Cosmos3-Omni (the Cosmos3 reasoner) is Qwen3-VL under another name: the same modules, M-RoPE,
  deepstack injection; videos as Qwen3-VL (one ``<t seconds><|vision_start|>...`` span per LM frame).
* VideoLLaMA3: the vision tower unshuffles the patches and bilinear-downsamples by the per-image
  ``image_merge_sizes`` / ``video_merge_sizes`` (1 for images, 2 for videos in the released
  processor); ``model.projector`` (an MLP) writes them at ``image_token_id`` / ``video_token_id``;
  video tokens that barely change from the previous frame are dropped by ``video_compression_mask``
  (the processor's, passed to forward); 1-D positions (a Qwen2 LM).
* PaddleOCR-VL: the merge happens in ``model.projector`` (``spatial_merge_size``); images only
  (its forward takes no video); 3-axis M-RoPE from ``mm_token_type_ids``.
* HyperCLOVAX-Vision-V2: a Qwen2.5-VL vision tower whose merger output is already in sequence
  order, then ``model.projector`` (a Linear); 1-D positions; the head multiplies the logits by
  ``text_config.logits_scaling``; the LM has Peri-LN norms and MuP multipliers (backbone row
  ``hyperclovax``).
* EXAONE 4.5: Qwen2-VL-style wrapper with 1-D positions over an EXAONE-4 decoder whose norms sit
  after each branch and none before (backbone row ``exaone4``: no ``ln1`` / ``ln2.hook_normalized``,
  ``hook_resid_mid`` is the MLP's input).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from hooks_mm.adapters.base import Adapter, MediaPlan, grid_plan, lm_paths, token_id_mask
from hooks_mm.adapters.qwen import QWEN2_VL, QWEN3_VL


def _merge_sizes(inputs: dict[str, Any], kind: str, n: int) -> list[int]:
    merges = inputs.get(f"{kind}_merge_sizes")
    if merges is None:
        raise ValueError(
            f"inputs hold {kind}_grid_thw but no {kind}_merge_sizes, so the merged grid of each {kind} is unknown "
            f"(VideoLLaMA3's vision tower needs it too): pass the processor's {kind}_merge_sizes with the inputs."
        )
    merges = torch.as_tensor(merges).flatten().tolist()
    if len(merges) != n:
        raise ValueError(f"{len(merges)} {kind}_merge_sizes for {n} rows of {kind}_grid_thw: pass one per {kind}.")
    return [int(m) for m in merges]


def videollama3_image_plans(config: Any, inputs: dict[str, Any]) -> list[Tensor]:
    """One ``(h/m) x (w/m)`` row-major plan per row of ``image_grid_thw``, ``m`` its ``image_merge_sizes``.

    ``VideoLlama3VisionModel.pixel_unshuffle`` regroups each image's ``m x m`` patch blocks into an
    ``h x w`` map and bilinear-resizes it to ``(h/m, w/m)``, read row-major (frames first).
    """
    grid = inputs.get("image_grid_thw")
    if grid is None:
        return []
    rows = torch.as_tensor(grid).reshape(-1, 3).tolist()
    plans = []
    for (t, h, w), m in zip(rows, _merge_sizes(inputs, "image", len(rows))):
        plans.append(torch.cat([grid_plan(int(h) // m, int(w) // m, tile=f) for f in range(int(t))]))
    return plans


def videollama3_video_plans(config: Any, inputs: dict[str, Any], processor: Any = None) -> list[MediaPlan]:
    """``t`` frames of ``(h/m) x (w/m)`` cells per row of ``video_grid_thw``, keeping the cells that
    ``video_compression_mask`` keeps (HF drops the others' features before the scatter, frame by frame).

    Times are NaN: the model reads each frame's time as text (``Time 1.0s:``), not from its positions.
    """
    grid = inputs.get("video_grid_thw")
    if grid is None:
        return []
    rows = torch.as_tensor(grid).reshape(-1, 3).tolist()
    keep = inputs.get("video_compression_mask")
    keep = torch.as_tensor(keep).flatten().bool() if keep is not None else None
    plans, start = [], 0
    for (t, h, w), m in zip(rows, _merge_sizes(inputs, "video", len(rows))):
        plan = MediaPlan.video(int(t), int(h) // m, int(w) // m)
        n = len(plan.cells)
        if keep is not None:
            kept = keep[start : start + n]
            if len(kept) != n:
                raise ValueError(
                    f"video_compression_mask has {len(keep)} entries, fewer than the merged cells of video_grid_thw "
                    "/ video_merge_sizes: pass the mask the processor returned with these videos."
                )
            plan = MediaPlan(plan.cells[kept], plan.time[kept])
        plans.append(plan)
        start += n
    if keep is not None and start != len(keep):
        raise ValueError(
            f"video_compression_mask has {len(keep)} entries but the videos have {start} merged cells: pass the mask "
            "the processor returned with these videos."
        )
    return plans


def hyperclovax_logits(hf_model: Any, logits: Tensor) -> Tensor:
    """HyperCLOVAX-Vision-V2's head: ``lm_head(x) * text_config.logits_scaling`` (a multiplier)."""
    return logits * float(getattr(hf_model.config.get_text_config(), "logits_scaling", 1.0) or 1.0)


COSMOS3_OMNI = replace(
    QWEN3_VL,
    name="cosmos3_omni",
    architectures=("Cosmos3OmniForConditionalGeneration",),
    notes="the Cosmos3 reasoner: Qwen3-VL's modules and forward (deepstack, M-RoPE, mm_token_type_ids); "
    "Qwen3VLProcessor (a timestamp and a <|vision_start|> span per video frame)",
)

VIDEOLLAMA3 = Adapter(
    name="videollama3",
    architectures=("VideoLlama3ForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.projector",
    image_mask=token_id_mask("image_token_id"),
    image_plans=videollama3_image_plans,
    video_mask=token_id_mask("video_token_id"),
    video_plans=videollama3_video_plans,
    notes="needs image_merge_sizes / video_merge_sizes (and the processor's video_compression_mask); the projector "
    "reads the unshuffled, downsampled vision output (one row per merged cell, in sequence order); 1-D positions",
)

PADDLEOCR_VL = replace(
    QWEN2_VL,
    name="paddleocr_vl",
    architectures=("PaddleOCRVLForConditionalGeneration",),
    projector="model.projector",
    video_mask=None,
    video_plans=None,
    notes="images only; model.projector merges m x m patches (its input is patch-level [n_patches, d_vision]); "
    "3-axis M-RoPE needs mm_token_type_ids",
)

HYPERCLOVAX_VISION_V2 = replace(
    QWEN2_VL,
    name="hyperclovax_vision_v2",
    architectures=("HyperCLOVAXVisionV2ForConditionalGeneration",),
    projector="model.projector",
    logits_post=hyperclovax_logits,
    notes="Qwen2.5-VL vision tower (merger output already in sequence order) -> model.projector (Linear); "
    "1-D positions; logits * logits_scaling; HyperCLOVAX LM (Peri-LN, residual / embedding multipliers)",
)

EXAONE4_5 = replace(
    QWEN2_VL,
    name="exaone4_5",
    architectures=("Exaone4_5_ForConditionalGeneration",),
    notes="Qwen2-VL-style wrapper, 1-D positions, a Qwen2.5-VL-style vision tower (merger rows in window order); "
    "EXAONE-4 decoder (backbone row exaone4: norms after each branch, none before)",
)

ADAPTERS = (COSMOS3_OMNI, VIDEOLLAMA3, PADDLEOCR_VL, HYPERCLOVAX_VISION_V2, EXAONE4_5)
