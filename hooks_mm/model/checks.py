"""Checks of a batch of model inputs before any hook is added: each misuse names the problem and the fix.

A wrong input that the HF model would run anyway (image placeholders without images,
token ids outside the vocabulary, raw uint8 pixels, a mask of another shape) is refused here,
so no call of hooks_mm returns a number computed from it.

Example::

    check_inputs(model.adapter, model.hf_model, {"input_ids": ids})   # raises when ids hold image placeholders
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import torch
from torch import Tensor

from hooks_mm.layout import SEGMENTS_KEY

try:
    from transformers.utils.generic import TransformersKwargs
except ImportError:  # older transformers: forwards list their keywords
    TransformersKwargs = None

# the keys that carry the pixels / features of each medium, as HF forwards name them
MEDIA_KEYS = {
    "image": ("pixel_values", "pixel_values_images", "flattened_patches"),  # Kosmos-2.5: flattened_patches
    "video": ("pixel_values_videos",),
    "audio": ("input_features",),
}
# every input holding pixels / features: validated (float, finite) and cast to the model's dtype; the last is
# DeepSeek-VL hybrid's SAM-tower copy of the images, read beside pixel_values (which alone marks images given)
PIXEL_KEYS = (*(k for keys in MEDIA_KEYS.values() for k in keys), "high_res_pixel_values")
# keys that hold one value per token: their shape is the shape of input_ids
TOKEN_KEYS = ("attention_mask", "token_type_ids", "mm_token_type_ids", "labels", SEGMENTS_KEY)
FIX = "pass the processor's output (model.to_inputs(text, images=...)) or model.prepare(...) of it"


def forward_params(hf_model: Any) -> set[str]:
    """Names of the keyword inputs the HF model's forward declares."""
    return set(inspect.signature(hf_model.forward).parameters)


def media_masks(adapter: Any, config: Any, ids: Tensor, real: Tensor | None) -> dict[str, Tensor]:
    """Positions of each medium's placeholders (or codes) in ``ids``, real tokens only."""
    out = {}
    for medium, fn in (("image", adapter.image_mask), ("video", adapter.video_mask), ("audio", adapter.audio_mask)):
        if fn is not None:
            mask = fn(config, ids)
            out[medium] = mask & real if real is not None else mask
    return out


def check_inputs(adapter: Any, hf_model: Any, inputs: dict[str, Any]) -> None:
    """Raise a clear error when ``inputs`` would give a wrong or meaningless forward; see the module doc."""
    params = forward_params(hf_model)
    check_keys(inputs, params)
    ids = inputs.get("input_ids")
    if ids is None:
        if inputs.get("inputs_embeds") is None:
            raise ValueError(f"no input_ids in the inputs (keys: {sorted(inputs) or 'none'}): {FIX}.")
        return
    check_ids(ids)
    for key in TOKEN_KEYS:
        value = inputs.get(key)
        if torch.is_tensor(value) and value.shape != ids.shape:
            raise ValueError(
                f"{key} has shape {tuple(value.shape)} but input_ids {tuple(ids.shape)}: give one value per token "
                f"(build both with one processor call: {FIX})."
            )
    real = inputs["attention_mask"].bool() if torch.is_tensor(inputs.get("attention_mask")) else None
    if real is not None and not real.any(1).all():
        row = int((~real.any(1)).nonzero()[0])
        raise ValueError(f"row {row} of the batch has no real token (its attention_mask is all 0): drop the row.")
    masks = media_masks(adapter, hf_model.config, ids, real)
    media = torch.zeros_like(ids, dtype=torch.bool)
    for mask in masks.values():
        media |= mask
    check_vocab(hf_model, ids, media)
    check_media(inputs, ids.shape[0])
    check_image_size(hf_model.config, inputs)
    for medium, mask in masks.items():
        keys = [k for k in MEDIA_KEYS[medium] if k in params]
        n = int(mask.sum())
        if n and keys and not any(inputs.get(k) is not None for k in keys):
            raise ValueError(
                f"{n} {medium} placeholder tokens but no {' / '.join(keys)}: the model would run on the "
                f"placeholder embeddings. Pass the processor's output (model.to_inputs(text, "
                f"{'audio' if medium == 'audio' else medium + 's'}=...)), not the token ids alone."
            )


# options of hooks_mm's run methods that a user may pass to the wrong one (the HF forward would swallow them)
RUN_OPTIONS = {
    "pos": "run_with_cache",
    "names_filter": "run_with_cache",
    "device": "run_with_cache",
    "fwd_hooks": "run_with_hooks or generate",
    "bwd_hooks": "run_with_hooks",
    "spec": "run_with_interventions",
    "sources": "run_with_interventions",
}


def check_keys(inputs: dict[str, Any], params: set[str]) -> None:
    """Every input is one the HF forward reads: its ``**kwargs`` would silently drop a typo or a misplaced option."""
    known = params | set(getattr(TransformersKwargs, "__annotations__", {})) | {SEGMENTS_KEY}
    unknown = [k for k in inputs if k not in known]
    if unknown:
        key = unknown[0]
        where = f" (it is an option of model.{RUN_OPTIONS[key]})" if key in RUN_OPTIONS else ""
        close = difflib.get_close_matches(key, sorted(params), n=2)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise TypeError(f"{key!r} is not an input of this model's forward{where}: the model would ignore it.{hint}")


def check_ids(ids: Any) -> None:
    if not torch.is_tensor(ids):
        raise TypeError(f"input_ids must be a tensor, got {type(ids).__name__}: pass torch.tensor(ids) or text.")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(
            f"input_ids are {ids.dtype}: token ids are integers; pass ids.long() (or the tokenizer's output)."
        )
    if ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(ids.shape)}: add a batch axis (ids[None]).")
    if ids.numel() == 0:
        raise ValueError(f"empty batch: input_ids have shape {tuple(ids.shape)}; pass at least one row of tokens.")


def check_vocab(hf_model: Any, ids: Tensor, media: Tensor) -> None:
    """Token ids outside the embedding table (placeholders the model replaces are allowed)."""
    emb = hf_model.get_input_embeddings()
    size = getattr(emb, "num_embeddings", None)
    bad = ids < 0
    if size is not None:
        bad |= ids >= size
    bad &= ~media
    if bad.any():
        row, col = bad.nonzero()[0].tolist()
        raise ValueError(
            f"token id {int(ids[row, col])} at row {row}, position {col} is outside the vocabulary "
            f"(0..{size - 1 if size is not None else '?'}): the ids come from another tokenizer; "
            "tokenize with this model's processor (model.to_inputs)."
        )


# vision towers whose position embeddings fix the input size (no interpolation unless asked for)
FIXED_SIZE_TOWERS = ("siglip_vision_model", "clip_vision_model")


def check_image_size(config: Any, inputs: dict[str, Any]) -> None:
    """[n, c, h, w] pixels of another size than a fixed-size vision tower takes (SigLIP would crash, unclearly)."""
    vision, pixels = getattr(config, "vision_config", None), inputs.get("pixel_values")
    size = getattr(vision, "image_size", None)
    if getattr(vision, "model_type", None) not in FIXED_SIZE_TOWERS or not isinstance(size, int):
        return
    if torch.is_tensor(pixels) and pixels.dim() == 4 and tuple(pixels.shape[-2:]) != (size, size):
        if not inputs.get("interpolate_pos_encoding"):
            raise ValueError(
                f"pixel_values are {tuple(pixels.shape[-2:])} images but this vision tower takes {size} x {size}: "
                "pass the processor's output (model.to_inputs(text, images=...)), which resizes them."
            )


def check_media(inputs: dict[str, Any], batch: int) -> None:
    """Pixels and audio features: normalised floats, finite, and batched like input_ids where that shows."""
    for key in PIXEL_KEYS:
        value = inputs.get(key)
        if not torch.is_tensor(value):
            continue
        if not value.is_floating_point():
            raise TypeError(
                f"{key} are {value.dtype}"
                + (" raw pixels" if "pixel" in key else "")
                + ": the model takes the processor's normalised float output; pass model.to_inputs(text, images=...)"
                " (or the processor's pixel_values), not the raw array."
            )
        if not torch.isfinite(value).all():
            n = int((~torch.isfinite(value)).sum())
            raise ValueError(f"{key} hold {n} NaN / inf values: check the images or features given to the processor.")
    for key in ("pixel_attention_mask", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask"):
        value = inputs.get(key)  # families that batch their pixels per row (Idefics3, SmolVLM, Mllama)
        pixels = inputs.get("pixel_values")  # LFM2-VL: one mask row per tile, like its (tiles, patches, d) pixels
        per_tile = not torch.is_tensor(pixels) or (
            pixels.dim() == 3 and value is not None and len(value) == len(pixels)
        )
        if torch.is_tensor(value) and value.shape[0] != batch and not per_tile:
            raise ValueError(
                f"{key} has {value.shape[0]} rows but input_ids {batch}: this family batches images per row; "
                "build the text and the images with one processor call (model.to_inputs)."
            )


def same_inputs(run: Any, bound: Any) -> bool:
    """Whether batch ``run`` holds every model input of batch ``bound``, value for value (token ids, masks,
    pixels, grids...); ``run`` may add keywords such as ``labels`` that leave the positions as they are."""
    if run is bound:
        return True
    a, b = run.model_inputs, bound.model_inputs
    for key, y in b.items():
        if key not in a:
            return False
        x = a[key]
        if torch.is_tensor(x) or torch.is_tensor(y):
            if not (torch.is_tensor(x) and torch.is_tensor(y)) or x.shape != y.shape or x.dtype != y.dtype:
                return False
            if not torch.equal(x, y.to(x.device)):
                return False
        elif x != y:
            return False
    return True


def check_left_padded(inputs: dict[str, Any]) -> None:
    """Generation appends after the last position: a right-padded row would continue after its padding."""
    am = inputs.get("attention_mask")
    if torch.is_tensor(am) and not am[:, -1].bool().all():
        row = int((~am[:, -1].bool()).nonzero()[0])
        raise ValueError(
            f"row {row} is right-padded: generation would continue after its padding. Left-pad the batch "
            "(model.to_inputs does; tokenizer.padding_side = 'left')."
        )


def check_return_type(return_type: Any, inputs: dict[str, Any]) -> None:
    if return_type not in RETURN_TYPES:
        raise ValueError(f"return_type={return_type!r}: choose one of {', '.join(map(repr, RETURN_TYPES))}.")
    if return_type == "loss" and inputs.get("labels") is None:
        raise ValueError("return_type='loss' needs labels: pass labels=<token ids, -100 where no loss> to the call.")


RETURN_TYPES = ("logits", "loss", "output", None)


def check_hook_list(hooks: Any, what: str) -> list:
    """``hooks`` as a list of ``(hook name or name filter, fn)`` pairs; a clear error for anything else."""
    pairs = list(hooks) if isinstance(hooks, (list, tuple)) else None
    if pairs is not None and len(pairs) == 2 and isinstance(pairs[0], str) and callable(pairs[1]):
        raise TypeError(f"{what} got one pair {(pairs[0], pairs[1])!r:.80}: pass a list of pairs, [(name, fn)].")
    bad = pairs is None or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 and (isinstance(p[0], str) or callable(p[0])) and callable(p[1])
        for p in pairs
    )
    if bad:
        raise TypeError(
            f"{what} must be a list of (hook name or name filter, fn(tensor, hook)) pairs, got {hooks!r:.80}: "
            "pass e.g. [('blocks.0.hook_resid_post', fn)]."
        )
    return pairs
