"""BLIP-2, InstructBLIP and InstructBLIP-Video tables (decoder-only language models).

The vision tower's patches are read by a Q-Former: ``num_query_tokens`` learned queries
cross-attend to them (InstructBLIP: with the instruction, ``qformer_input_ids``, in the
Q-Former's self-attention), and ``language_projection`` (the projector) maps the query outputs
onto the LM width. The model writes them with ``masked_scatter`` at ``image_token_id``
(``image_token_index``), row-major over the batch: the processor puts ``num_query_tokens``
placeholders per image before each row's text (one image per row). A query slot attends over
every patch, so a position maps to (image, query) with NO (row, col) grid: plans hold
``(0, -1, k)`` as Idefics2's perceiver latents do, ``layout.grid`` is None and patch maps refuse.

InstructBLIP-Video: ``pixel_values`` (B, frames, 3, H, W); every frame goes through the Q-Former,
and the frames' query outputs are written in frame order at the placeholders (its forward reads
``config.image_token_id``; the processor writes ``video_token_index`` placeholders): plans hold
``(frame, -1, k)``: the tile is the frame.

A BLIP-2 / InstructBLIP over an encoder-decoder language model (Flan-T5) is refused: hooks_mm
hooks decoder-only language models.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hooks_mm.adapters.base import Adapter, ImagePlan, lm_paths, runs, token_id_mask
from hooks_mm.adapters.idefics2_deepseek import latent_plan

_image_mask = token_id_mask("image_token_id", "image_token_index")
_video_mask = token_id_mask("image_token_id", "video_token_index")  # the forward reads image_token_id


def _slot_plans(config: Any, inputs: dict[str, Any], mask_fn: Any, what: str) -> list[ImagePlan]:
    """One plan per image (per video: its frames as tiles) from ``pixel_values`` and the placeholders."""
    per = int(config.num_query_tokens)
    ids, pv = inputs["input_ids"], inputs.get("pixel_values")
    mask = mask_fn(config, ids)
    if inputs.get("attention_mask") is not None:
        mask = mask & inputs["attention_mask"].bool()
    frames = int(pv.shape[1]) if pv is not None and pv.dim() == 5 else 1
    n_media = int(pv.shape[0]) if pv is not None else int(mask.sum()) // (per * frames)
    found = int(mask.sum())
    if found != n_media * frames * per or any((e - s) % per for row in mask for s, e in runs(row)):
        raise ValueError(
            f"image token count does not match the images: {found} {what} placeholder positions, but {n_media} "
            f"{what}(s) x {frames} frame(s) give {per} query outputs (config.num_query_tokens) each. Build the "
            "inputs with the model's processor (HookedMLLM.to_inputs), whose num_query_tokens must equal the config's."
        )
    return [_frames(per, frames) for _ in range(n_media)]


def _frames(per: int, frames: int) -> ImagePlan:
    import torch

    return torch.cat([latent_plan(per, tile=f) for f in range(frames)])


def blip_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    return _slot_plans(config, inputs, _image_mask, "image")


def video_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    return _slot_plans(config, inputs, _video_mask, "video")


def decoder_only(adapter: Adapter) -> Any:
    """A VARIANTS entry: ``adapter`` for a decoder-only language model, refused (named) for an encoder-decoder."""

    def choose(config: Any) -> Adapter:
        if config is not None and not getattr(config, "use_decoder_only_language_model", True):
            kind = getattr(config.get_text_config(), "model_type", "?")
            raise NotImplementedError(
                f"{adapter.architectures[0]} over {kind!r} is not decoder-only: its language model is an "
                "encoder-decoder (Flan-T5), whose encoder reads the query outputs and whose decoder cross-attends "
                "to them; hooks_mm hooks decoder-only language models. Use a checkpoint over a decoder-only LM "
                "(BLIP-2 / InstructBLIP over OPT or Vicuna)."
            )
        return adapter

    return choose


_NOTES = (
    "language model at language_model.model (OPT: .decoder); projector = language_projection (its input: the "
    "Q-Former's query outputs); num_query_tokens image positions per image, (image, query) slots with no "
    "(row, col) grid (plans (0, -1, k)); refused over an encoder-decoder LM (Flan-T5)."
)

BLIP2 = Adapter(
    name="blip2",
    architectures=("Blip2ForConditionalGeneration",),
    **lm_paths("language_model.model"),
    projector="language_projection",
    image_mask=_image_mask,
    image_plans=blip_plans,
    notes="BLIP-2: " + _NOTES,
)

INSTRUCTBLIP = replace(
    BLIP2,
    name="instructblip",
    architectures=("InstructBlipForConditionalGeneration",),
    notes="InstructBLIP (the instruction also goes to the Q-Former as qformer_input_ids): " + _NOTES,
)

INSTRUCTBLIP_VIDEO = replace(
    BLIP2,
    name="instructblipvideo",
    architectures=("InstructBlipVideoForConditionalGeneration",),
    image_mask=_video_mask,
    image_plans=video_plans,
    notes="InstructBLIP-Video: pixel_values (B, frames, 3, H, W), each frame's query outputs in frame order "
    "(plans (frame, -1, k)); " + _NOTES,
)

ADAPTERS = (BLIP2, INSTRUCTBLIP, INSTRUCTBLIP_VIDEO)
VARIANTS = {arch: decoder_only(a) for a in ADAPTERS for arch in a.architectures}
