"""Vision hooks of a projector that a forward calls more than once (LFM2-VL: per tile; LFM3-VL: images, videos).

Such a model projects each tile on its own and writes the concatenated rows at the image
positions. Hooking every call would leave ``run_with_cache`` only the last tile. Instead the
calls of one forward are recorded, and when the language model is entered:

- ``hook_vision_out`` sees every call's input, flattened to ``(tokens, d_vision)`` rows and
  concatenated in call order; when a hook changes it (or has a backward hook), the projector is run
  again on each call's (edited) slice;
- ``hook_projector_out`` sees every call's output rows, concatenated: exactly the image positions
  in the order ``masked_scatter`` fills them (row-major over the batch), then the video positions
  (a model that projects its images and its videos in separate calls, images first: LFM3-VL);
- its value is written back at those positions of ``inputs_embeds`` (the adapter's ``image_mask``,
  then ``video_mask``), so an edit reaches the model; unedited, the same values are written.

Example::

    handles = attach(model, {"hook_projector_out": hp})   # handles removed by the wiring
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint


def edited(hp: HookPoint, value: Tensor) -> Tensor | None:
    """Run a derived hook point; the new value, or None when the hooks left it unchanged."""
    before = value.clone()
    out = hp(value)
    return None if (out is value and torch.equal(value, before)) else out


def attach(model: HookedRootModule, live: dict[str, HookPoint]) -> list[Any]:
    """Hooks for the live ``hook_vision_out`` / ``hook_projector_out`` of a per-call projector; their handles."""
    a = model.adapter
    projector = model.submodule(a.projector)
    lm = model.submodule(a.layers.rsplit(".", 1)[0])
    state: dict[str, Any] = {"calls": [], "replay": False, "ids": None}

    def start(m: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        state["calls"] = []
        state["ids"] = kwargs.get("input_ids", args[0] if args else None)

    def record(m: nn.Module, args: tuple, out: Tensor | list[Tensor]) -> None:
        if not state["replay"]:
            state["calls"].append((args, out))

    def write(m: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
        calls, state["calls"] = state["calls"], []
        if not calls:  # no image in this forward (text only, or a cached generation step)
            return None
        xs, ys = [args[0] for args, _ in calls], [y for _, y in calls]
        if "hook_vision_out" in live:
            hp = live["hook_vision_out"]
            rows = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs])
            new = edited(hp, rows)
            if new is not None or hp.bwd_hooks:
                new = rows if new is None else new
                parts = new.split([x[..., 0].numel() for x in xs])
                state["replay"] = True
                try:
                    ys = [projector(p.reshape(x.shape), *args[1:]) for p, x, (args, _) in zip(parts, xs, calls)]
                finally:
                    state["replay"] = False
        outs = [t for y in ys for t in (y if isinstance(y, (list, tuple)) else [y])]  # MiniCPM: a list per call
        features = torch.cat([t.reshape(-1, t.shape[-1]) for t in outs])
        if "hook_projector_out" in live:
            features = live["hook_projector_out"](features)
        embeds, ids = kwargs.get("inputs_embeds"), state["ids"]
        if embeds is None or ids is None:
            raise NotImplementedError(
                f"{a.name}: hook_vision_out / hook_projector_out need input_ids (to find the image positions) and "
                "a language model called with inputs_embeds: pass input_ids, not inputs_embeds, or hook "
                "blocks.0.hook_resid_pre at the image positions instead."
            )
        config = model.hf_model.config
        masks = [f(config, ids).to(embeds.device) for f in (a.image_mask, a.video_mask) if f is not None]
        counts = [int(mask.sum()) for mask in masks]
        if sum(counts) != features.shape[0]:
            raise RuntimeError(
                f"{a.name}: the projector's calls gave {features.shape[0]} rows but the inputs hold {counts} image / "
                "video positions; hooks_mm cannot place the hooked features: report this with the model and inputs."
            )
        for mask, rows in zip(masks, features.split(counts)):  # the model writes the images, then the videos
            embeds = embeds.masked_scatter(mask.unsqueeze(-1), rows.to(embeds.dtype))
        return args, {**kwargs, "inputs_embeds": embeds}

    return [
        model.hf_model.register_forward_pre_hook(start, with_kwargs=True),
        projector.register_forward_hook(record),
        lm.register_forward_pre_hook(write, with_kwargs=True),
    ]
