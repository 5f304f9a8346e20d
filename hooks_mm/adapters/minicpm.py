"""MiniCPM-V 4.6 / 4.7 and MiniCPM-OCR wrappers over the Qwen3.5 hybrid stack (``qwen3_5_text``).

The processor cuts each image into a source image (the whole image, resized) and, when it is
large, ``rows x cols`` slices, written as ``<image> src </image><slice> s0 </slice><slice> s1
</slice>\\n<slice> ...``: one run of image tokens per unit, units in ``target_sizes`` order (source
first, then the slices row-major). The NaViT tower runs over every unit's ``(h, w)`` patch grid
(``target_sizes``); in ``"16x"`` mode a window-attention merger after ``insert_layer_id`` merges 2x2
windows (row-major windows, row-major inside), then ``model.merger`` merges 2x2 cells again
(``merger_times`` rounds) and returns one tensor per unit; in ``"4x"`` mode (MiniCPM-OCR's default)
only the merger merges. Plan: per unit an ``(h / d) x (w / d)`` row-major grid, ``d = 4`` (16x) or
``2`` (4x), times ``2`` per extra merger round; tile 0 is the source image, tiles 1.. its slices.

MiniCPM-V 4.7 adds a canvas M-RoPE (3-axis positions from ``mm_token_type_ids`` and the marker ids of
its config: pass the processor's ``mm_token_type_ids``); its features enter the same way.

The merger is called once for the images and once for the videos of a forward and returns a list,
so the vision hooks hold every call (:mod:`hooks_mm.model.calls`). Videos are not supported here
(their processor needs torchvision): inputs with ``pixel_values_videos`` are refused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from hooks_mm.adapters.base import Adapter, ImagePlan, config_get, grid_plan, lm_paths, runs, token_id_mask

IMAGE_MASK = token_id_mask("image_token_id")


def minicpm_divisor(config: Any, inputs: dict[str, Any]) -> int:
    """Patches per LM cell side: 4 (``"16x"``: window merger + merger) or 2 (``"4x"``), x2 per extra merger round."""
    mode = inputs.get("downsample_mode") or config.downsample_mode
    return (2 if mode == "4x" else 4) * 2 ** (int(config.merger_times) - 1)


def minicpm_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    """One run of image tokens per unit (``target_sizes`` row); a run right after the token that opens each
    row's first image (``<image>``; ``config.slice_start_id`` names the slice marker where set) begins an image,
    any other run (after ``<slice>``) is the next slice of the current image."""
    if inputs.get("pixel_values_videos") is not None:
        raise ValueError(
            f"{type(config).__name__}: videos are not supported by hooks_mm for this family (its video processor "
            "needs torchvision, so their layout is not verified): pass images only."
        )
    sizes, ids = inputs.get("target_sizes"), inputs["input_ids"]
    mask = IMAGE_MASK(config, ids)
    if sizes is None:
        if mask.any():
            raise ValueError("MiniCPM-V inputs have image positions but no target_sizes: pass the processor's")
        return []
    d = minicpm_divisor(config, inputs)
    sides = [(int(h) // d, int(w) // d) for h, w in torch.as_tensor(sizes).reshape(-1, 2).tolist()]
    slice_start = config_get(config, "slice_start_id")
    plans: list[ImagePlan] = []
    k = 0
    for b, row in enumerate(mask):
        spans = runs(row)
        opener = int(ids[b, spans[0][0] - 1]) if spans and spans[0][0] > 0 else None
        for start, end in spans:
            if k >= len(sides) or end - start != sides[k][0] * sides[k][1]:
                raise ValueError(
                    f"image token count does not match the images: MiniCPM-V row {b} has a run of {end - start} image "
                    f"tokens where target_sizes gives unit {k} {sides[k : k + 1]} cells ({d}x{d} patches each). Build "
                    "text and images together with the model's processor (HookedMLLM.to_inputs)."
                )
            before = int(ids[b, start - 1]) if start > 0 else None
            is_slice = before == slice_start if slice_start is not None else before != opener
            if is_slice and plans:
                plans[-1] = torch.cat([plans[-1], grid_plan(*sides[k], tile=int(plans[-1][-1, 0]) + 1)])
            else:
                plans.append(grid_plan(*sides[k]))
            k += 1
    if k != len(sides):
        raise ValueError(
            f"image token count does not match the images: MiniCPM-V inputs hold {len(sides)} units (target_sizes) "
            f"but their image positions cover {k}. Build text and images together with the model's processor."
        )
    return plans


MINICPMV4_6 = Adapter(
    name="minicpmv4_6",
    architectures=("MiniCPMV4_6ForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.merger",
    projector_per_call=True,
    image_mask=IMAGE_MASK,
    image_plans=minicpm_plans,
    notes=(
        "Qwen3.5 hybrid LM (gated DeltaNet / gated attention); NaViT SigLIP tower with a window-attention merger "
        "(16x mode), projector = model.merger (2x2 merge + MLP per unit, returns a list): hook_vision_out is every "
        "unit's (h/2*w/2 or h*w, d_vis) rows, hook_projector_out every unit's cells, exactly the image positions; "
        "needs target_sizes (4.7: and mm_token_type_ids); images only (videos refused)."
    ),
)

# the same wrapper: 4.7 adds canvas M-RoPE positions, MiniCPM-OCR defaults to "4x"
MINICPMV4_7 = replace(MINICPMV4_6, name="minicpmv4_7", architectures=("MiniCPMV4_7ForConditionalGeneration",))
MINICPM_OCR = replace(MINICPMV4_6, name="minicpm_ocr", architectures=("MiniCPMOcrForConditionalGeneration",))

ADAPTERS = (MINICPMV4_6, MINICPMV4_7, MINICPM_OCR)
