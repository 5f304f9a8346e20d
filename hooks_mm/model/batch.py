"""Batch: one batch of model inputs and what is derived from it once (layout, token strings).

``model.prepare(inputs)`` builds it; every public call of hooks_mm takes a Batch wherever
it takes inputs, so the layout of a batch is assembled once, however many interventions,
metrics and analyses then read it.

Example::

    batch = model.prepare(model.to_inputs("<image> what colour ?", images=img, chat=True))
    batch.layout.describe(0)          # 'special[0:1] image0 4x4[1:17] text[17:21] ...'
    batch.str_tokens[0][:3]           # ['<s>', 'USER', ':']
    logits = model(batch)             # a Batch is a mapping of model inputs, too
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from hooks_mm.adapters import Adapter
from hooks_mm.hooks import lookup
from hooks_mm.layout import SEGMENTS_KEY, ModalityLayout, build_layout


class Batch(Mapping):
    """Model inputs (on the model's device) with their :class:`ModalityLayout`.

    A read-only mapping of the inputs (``batch["input_ids"]``); ``model_inputs`` drops the
    keys only hooks_mm reads (the segment codes of ``to_inputs(..., answer=...)``).
    """

    def __init__(self, inputs: dict[str, Any], layout: ModalityLayout | None, tokenizer: Any = None, owner: Any = None):
        self.inputs, self._layout, self._tokenizer = inputs, layout, tokenizer
        self._owner = weakref.ref(owner) if owner is not None else None
        self.target: tuple[Any, Any] | None = None  # (device, dtype) of the model when it prepared the batch
        self.source: dict[str, Any] = inputs  # the inputs as given (pixels before a cast to the model's dtype)

    def prepared_by(self, model: Any) -> bool:
        """Whether ``model`` built this batch (another model's adapter may lay it out differently)."""
        return self._owner is not None and self._owner() is model

    @property
    def layout(self) -> ModalityLayout:
        if self._layout is None:
            raise ValueError("a layout needs input_ids; inputs_embeds alone carry no token identities.")
        return self._layout

    @property
    def model_inputs(self) -> dict[str, Any]:
        """The keyword inputs the HF model takes."""
        return {k: v for k, v in self.inputs.items() if k != SEGMENTS_KEY}

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.inputs["input_ids"].shape)  # type: ignore[return-value]

    @cached_property
    def str_tokens(self) -> list[list[str]]:
        """One string per position of every row (special tokens kept)."""
        tok = getattr(self._tokenizer, "tokenizer", self._tokenizer)
        if tok is None or not hasattr(tok, "batch_decode"):
            raise ValueError("token strings need a tokenizer: load the model with its processor.")
        return [
            tok.batch_decode([[i] for i in row], clean_up_tokenization_spaces=False)
            for row in self.inputs["input_ids"].tolist()
        ]

    def with_layout(self, layout: ModalityLayout) -> "Batch":
        """These inputs with another layout (``generate``: the prompt's layout extended over the generated
        positions, :func:`~hooks_mm.layout.generation_layout`); the model that prepared this batch owns it too.

        Example::

            ext = batch.with_layout(generation_layout(batch.layout, batch.shape[1] + 4))
        """
        if layout.shape[0] != self.shape[0]:
            raise ValueError(f"with_layout: the layout has {layout.shape[0]} rows, this batch {self.shape[0]}.")
        out = Batch(self.inputs, layout, self._tokenizer, self._owner() if self._owner is not None else None)
        out.target, out.source = self.target, self.source
        return out

    def __getitem__(self, key: str) -> Any:
        return self.inputs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.inputs)

    def __len__(self) -> int:
        return len(self.inputs)

    def __repr__(self) -> str:
        shape = f"{self.shape[0]} x {self.shape[1]}" if "input_ids" in self.inputs else "no input_ids"
        return f"Batch({shape}, keys={sorted(self.inputs)})"


def layout_of(adapter: Adapter, hf_model: Any, processor: Any, inputs: dict[str, Any]) -> ModalityLayout | None:
    """Assemble the layout of ``inputs`` from the adapter's tables (None without input_ids).

    Raises a clear error when the image / video / audio positions do not match the media given.
    """
    a, config = adapter, hf_model.config
    ids = inputs.get("input_ids")
    if ids is None:
        return None
    real = inputs["attention_mask"].bool() if "attention_mask" in inputs else None

    def positions(fn: Any) -> Tensor | None:
        mask = fn(config, ids) if fn else None
        return mask & real if (mask is not None and real is not None) else mask

    mask = positions(a.image_mask)
    plans = a.image_plans(config, inputs) if (a.image_plans and mask is not None and mask.any()) else []
    video, audio = positions(a.video_mask), positions(a.audio_mask)
    video_plans = (
        a.video_plans(config, inputs, processor) if (a.video_plans and video is not None and video.any()) else []
    )
    audio_plans = (
        a.audio_plans(config, inputs, processor) if (a.audio_plans and audio is not None and audio.any()) else []
    )
    times = a.position_times(hf_model, inputs) if a.position_times else None
    special = set(a.special_ids(config))
    tok = getattr(processor, "tokenizer", processor)
    if tok is not None and hasattr(tok, "all_special_ids"):
        special |= set(tok.all_special_ids)
    return build_layout(
        ids,
        inputs.get("attention_mask"),
        mask,
        plans,
        special,
        inputs.get(SEGMENTS_KEY),
        video_mask=video,
        video_plans=video_plans,
        audio_mask=audio,
        audio_plans=audio_plans,
        times=times,
    )


def take_positions(t: Tensor, name: str, index: Tensor) -> Tensor:
    """Keep positions ``index`` [batch, n] along the position axis of hook ``name``.

    Slots where ``index`` is -1 (the padding of :meth:`ModalityLayout.padded_indices`, rows with
    fewer positions) are filled by :func:`pad_fill`: NaN for floating activations, so a
    reduction that forgets the mask shows NaN instead of a plausible number.
    """
    dim = lookup(name).pos_dim
    if dim is None:
        return t
    if t.dim() <= dim or t.shape[0] != index.shape[0]:  # never silently keep every position under pos=
        raise RuntimeError(
            f"{name} has shape {tuple(t.shape)}, which does not match the batch of positions {tuple(index.shape)}: "
            "cache it without pos= and index the positions yourself."
        )
    shape = [1] * t.dim()
    shape[0], shape[dim] = index.shape
    idx = index.view(shape).expand(*[-1 if i in (0, dim) else s for i, s in enumerate(t.shape)])
    pad = idx < 0
    if not bool(pad.any()):
        return t.gather(dim, idx)  # equal counts: exactly the kept positions, no padding
    return t.gather(dim, idx.clamp(min=0)).masked_fill(pad, pad_fill(t.dtype, name))


def pad_fill(dtype: torch.dtype, name: str) -> Any:
    """The value of padded slots in a ragged ``pos=`` cache: NaN for floating dtypes. Integer or bool
    activations have no such value and are refused (a 0 or -1 there would read as real)."""
    if dtype.is_floating_point or dtype.is_complex:
        return float("nan")
    raise RuntimeError(
        f"{name} is a {dtype} activation: its padded slots in a ragged pos= cache could not be told from real "
        "values (no NaN for this dtype). Cache it without pos=, or select equal counts per row (First(n, of=...))."
    )


def again(name: str, before: Tensor, now: Tensor) -> Tensor:
    """The cache entry of a hook point that fired again in one forward: a projector run once for the images and
    once for the videos (Qwen-VL, LLaVA-NeXT-Video, Video-LLaVA) gives the rows of every call concatenated in
    call order (flattened to ``(tokens, d)`` rows where the calls' grids differ); any other second firing is
    refused (one entry could not hold both values)."""
    if lookup(name).pos_dim is None and before.shape[1:] == now.shape[1:]:
        return torch.cat([before, now.to(before.device)])
    if lookup(name).pos_dim is None and before.shape[-1] == now.shape[-1]:  # per-tile / per-frame grids: as rows
        return torch.cat([before.reshape(-1, before.shape[-1]), now.to(before.device).reshape(-1, now.shape[-1])])
    raise RuntimeError(
        f"{name} fired twice in one forward, with shapes {tuple(before.shape)} and {tuple(now.shape)}: one cache "
        "entry cannot hold both calls. Cache it in separate forwards (e.g. the images and the videos in separate "
        "batches), or read the media positions of blocks.0.hook_resid_pre instead."
    )
