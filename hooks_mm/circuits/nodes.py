"""Nodes of a circuit graph built from a batch's layout and the model's layers.

Input nodes cover every real position once, per modality span, at the granularity ``inputs`` names:

- ``"image"``: one node per image of a row (``input:image0``, ``input:image1``, ...), one per video
  (``input:video0``) and per audio clip (``input:audio0``);
- ``"cell"``: one node per image patch cell (``input:image0/t0r1c2``), the image's separators (newline /
  end-of-row tokens) in ``input:image0/sep``;
- ``"tile"``: one node per image tile (``input:image0/t1``);
- ``"frame"``: one node per video frame (``input:video0/f2``) and per audio window of ``window`` steps
  (``input:audio0/w3``), images whole;

and, in every mode, ``input:instruction`` (the prompt's text, for inputs built by ``to_inputs``), ``input:text``
(other text) and ``input:special`` (structural tokens). The k-th image of every row is one node (rows of one
batch show their k-th image at the same place in the circuit). Then per layer its heads ``L{l}.H{h}`` (a layer
without per-head outputs: one ``L{l}.attn`` node) and ``L{l}.MLP``, and the ``logit`` node.

Example::

    nodes, masks = input_nodes(batch.layout, "cell")   # masks: bool [node, batch, seq]
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from hooks_mm.circuits.graph import Node
from hooks_mm.layout import Modality, ModalityLayout, Segment

INPUTS = ("image", "cell", "tile", "frame")


def _positions(mask: Tensor) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in mask]


def _groups(layout: ModalityLayout, at: Tensor, keys: list[Tensor]) -> list[tuple[tuple[int, ...], Tensor]]:
    """Masks of the positions ``at`` grouped by the values of ``keys``, in order of the key tuples."""
    if not bool(at.any()):
        return []
    stacked = torch.stack([k[at] for k in keys], 1)
    out = []
    for key in torch.unique(stacked, dim=0).tolist():
        m = at.clone()
        for k, v in zip(keys, key):
            m &= k == v
        out.append((tuple(key), m))
    return out


def input_nodes(
    layout: ModalityLayout, inputs: str = "image", window: int = 10
) -> tuple[list[Node], Bool[Tensor, "node batch seq"]]:
    """The input nodes of a batch (module docstring) and the mask of each one's positions.

    Example::

        nodes, masks = input_nodes(model.prepare(inputs).layout, "cell")
        [n.id for n in nodes][:3]        # ['input:special', 'input:image0/t0r0c0', 'input:image0/t0r0c1']
    """
    if inputs not in INPUTS:
        raise ValueError(f"inputs={inputs!r} is not one of {INPUTS}: pick one (the granularity of input nodes).")
    if window < 1:
        raise ValueError(f"window={window} must be >= 1 (audio steps per input node with inputs='frame').")
    mod = layout.modality
    image, video, audio = mod == Modality.IMAGE, mod == Modality.VIDEO, mod == Modality.AUDIO
    if inputs in ("cell", "tile") and not bool(image.any()):
        raise ValueError(
            f"inputs={inputs!r} makes one node per image {inputs}, but this batch has no image positions "
            f"({layout.summary()}): pass inputs='image' (whole spans), or 'frame' for video / audio."
        )
    if inputs == "frame" and not bool((video | audio).any()):
        raise ValueError(
            f"inputs='frame' makes one node per video frame / audio window, but this batch has no video or audio "
            f"positions ({layout.summary()}): pass inputs='image' (or 'cell' / 'tile' for image patches)."
        )
    nodes: list[Node] = []
    masks: list[Tensor] = []

    def add(node_id: str, modality: str, mask: Tensor, **kw: Any) -> None:
        nodes.append(Node(node_id, "input", -1, modality=modality, positions=_positions(mask), **kw))
        masks.append(mask)

    add_if = lambda i, m, s: add(i, m, s) if bool(s.any()) else None  # noqa: E731
    add_if("input:special", "special", mod == Modality.SPECIAL)
    instr = (layout.segment == Segment.INSTRUCTION) & (mod == Modality.TEXT)
    add_if("input:instruction", "instruction", instr)
    add_if("input:text", "text", (mod == Modality.TEXT) & ~instr)
    for (k,), m in _groups(layout, image, [layout.image_index]):
        if inputs == "cell":
            cells = m & (layout.grid_col >= 0)
            for (t, r, c), mc in _groups(layout, cells, [layout.tile, layout.grid_row, layout.grid_col]):
                add(f"input:image{k}/t{t}r{r}c{c}", "image", mc, image=k, tile=t, row=r, col=c)
            if bool((m & ~cells).any()):
                add(f"input:image{k}/sep", "image", m & ~cells, image=k)
        elif inputs == "tile":
            for (t,), mt in _groups(layout, m, [layout.tile]):
                add(f"input:image{k}/t{t}", "image", mt, image=k, tile=t)
        else:
            add(f"input:image{k}", "image", m, image=k)
    for (k,), m in _groups(layout, video, [layout.video_index]):
        if inputs == "frame":
            for (f,), mf in _groups(layout, m, [layout.frame]):
                add(f"input:video{k}/f{f}", "video", mf, image=k, frame=f)
        else:
            add(f"input:video{k}", "video", m, image=k)
    for (k,), m in _groups(layout, audio, [layout.audio_index]):
        if inputs == "frame":
            for (w,), mw in _groups(layout, m, [torch.div(layout.frame, window, rounding_mode="floor")]):
                add(f"input:audio{k}/w{w}", "audio", mw, image=k, frame=w)
        else:
            add(f"input:audio{k}", "audio", m, image=k)
    stacked = torch.stack(masks) if masks else torch.zeros(0, *layout.shape, dtype=torch.bool)
    covered = stacked.sum(0)
    real = mod != Modality.PAD
    if bool((covered[real] != 1).any()) or bool((covered[~real] != 0).any()):  # every real position exactly once
        raise RuntimeError(
            "the input nodes do not cover every real position exactly once (a layout hooks_mm does not know how to "
            f"split: {layout.describe(0)}): please report it with the model's name."
        )
    return nodes, stacked
