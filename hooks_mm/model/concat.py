"""Two batches of model inputs as one: rows of the first, then rows of the second.

Every input tensor of a multimodal processor is ordered by row along its first axis: per-row
keys (``input_ids``, ``attention_mask``, ``token_type_ids``, ``mm_token_type_ids``, Idefics3's
``pixel_values`` [batch, n_images, c, h, w]) and per-image or per-patch keys (LLaVA / Gemma 3
``pixel_values`` [n_images, c, h, w], Qwen2-VL ``pixel_values`` [n_patches, d] with
``image_grid_thw`` [n_images, 3], LLaVA-NeXT ``image_sizes``) alike. So one concatenation along
axis 0 joins two batches of the same sequence length, each image staying with its row.

Example::

    doubled = concat_inputs(inputs, dict(inputs, pixel_values=noised))   # rows 0..B-1, then B..2B-1
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def concat_inputs(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, Any]:
    """The rows of ``first`` then the rows of ``second``, as one dict of model inputs.

    Both must hold the same keys and the same sequence length (left-padded to one length, as
    one ``model.to_inputs`` call builds them), and every tensor must agree past its first axis
    (Idefics3: the same number of image slots per row). Anything else is refused with the fix.
    """
    a, b = _plain(first), _plain(second)
    if set(a) != set(b):
        raise ValueError(
            f"concat_inputs: the batches hold different keys ({sorted(set(a) ^ set(b))} in one only): "
            "build both with the same processor call (same media kinds)."
        )
    out: dict[str, Any] = {}
    for k in a:
        x, y = a[k], b[k]
        if not (torch.is_tensor(x) and torch.is_tensor(y)):
            raise TypeError(
                f"concat_inputs: input {k!r} is a {type(x).__name__} / {type(y).__name__}, not a tensor on both "
                "sides: pass the processor's tensors (return_tensors='pt')."
            )
        if x.dim() == 0 or x.shape[1:] != y.shape[1:] or x.dtype != y.dtype:
            raise ValueError(
                f"concat_inputs: input {k!r} has shape {tuple(x.shape)} ({x.dtype}) in the first batch and "
                f"{tuple(y.shape)} ({y.dtype}) in the second: they must agree past the first axis (the same "
                "sequence length, image slots and dtype); pad both batches alike, e.g. build them in one "
                "model.to_inputs call and split the rows."
            )
        out[k] = torch.cat([x, y.to(x.device)])
    return out


def _plain(inputs: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(inputs, Mapping):
        raise TypeError(
            f"concat_inputs takes two dicts of model inputs (or Batches), got {type(inputs).__name__}: "
            "build them with model.to_inputs(...)."
        )
    return dict(getattr(inputs, "inputs", inputs))
