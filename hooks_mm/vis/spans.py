"""Display units of one batch row: every real position alone, each image span as one block.

A token view of a multimodal prompt shows hundreds of identical ``<image>`` tokens. Here
each maximal run of positions of one image (one tile run for models whose tiles are
separated by markers, e.g. Idefics3) becomes one labelled unit such as ``[image0:4x4]``;
values are reduced over the unit, attention is summed over key units (rows still sum to
one) and averaged over query units. Padding positions are dropped.

Example::

    u = units(layout, row=0, tokens=tokens)
    u.labels                     # ['<s>', 'USER', ':', '[image0:4x4]', ...]
    reduce(values, u, "mean")    # [n_units]
    collapse_attention(pattern, u)   # [..., n_units, n_units]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from jaxtyping import Float

from hooks_mm.layout import Modality, ModalityLayout
from hooks_mm.vis.common import to_numpy

Reduce = Literal["mean", "max", "min", "sum", "absmax"]


@dataclass
class Units:
    """Display units of one row: ``labels[u]`` shows ``positions[u]`` (sequence indices)."""

    labels: list[str]
    positions: list[np.ndarray]
    image_id: list[int]  # -1 for a text / special unit
    seq_len: int

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def membership(self) -> Float[np.ndarray, "unit seq"]:
        m = np.zeros((len(self), self.seq_len))
        for u, pos in enumerate(self.positions):
            m[u, pos] = 1.0
        return m

    @property
    def first(self) -> list[int]:
        """First sequence position of every unit."""
        return [int(p[0]) for p in self.positions]


def row_tokens(tokens: Sequence[str] | None, layout: ModalityLayout | None, row: int, seq: int) -> list[str]:
    """Tokens of a row as one string per sequence position (``seq`` long).

    ``tokens`` may hold one string per position of the padded row, or one per real
    (non-padding) position; ``None`` gives ``"#i"`` labels.
    """
    if tokens is None:
        return [f"#{i}" for i in range(seq)]
    tokens = [str(t) for t in tokens]
    if len(tokens) == seq:
        return tokens
    if layout is not None:
        real = np.flatnonzero(to_numpy(layout.modality[row]) != Modality.PAD)
        if len(tokens) == len(real):
            out = [""] * seq
            for p, t in zip(real, tokens):
                out[int(p)] = t
            return out
    raise ValueError(
        f"got {len(tokens)} tokens for a row of {seq} positions: pass one token per position "
        "of the row (hooks_mm.vis.str_tokens(model, inputs, row) gives them)."
    )


def units(
    layout: ModalityLayout | None,
    row: int = 0,
    tokens: Sequence[str] | None = None,
    seq_len: int | None = None,
    collapse: bool = True,
) -> Units:
    """Units of batch row ``row``; without a layout every position is its own unit."""
    if layout is None:
        if seq_len is None and tokens is None:
            raise ValueError("units() needs a layout, tokens or seq_len")
        seq = seq_len if seq_len is not None else len(tokens)  # type: ignore[arg-type]
        toks = row_tokens(tokens, None, row, seq)
        return Units(toks, [np.array([i]) for i in range(seq)], [-1] * seq, seq)
    seq = layout.shape[1]
    toks = row_tokens(tokens, layout, row, seq)
    mod = to_numpy(layout.modality[row])
    img = to_numpy(layout.image_id[row])
    idx = to_numpy(layout.image_index[row])
    tile = to_numpy(layout.tile[row])
    labels, positions, ids = [], [], []
    p = 0
    while p < seq:
        if mod[p] == Modality.PAD:
            p += 1
            continue
        if not (collapse and mod[p] == Modality.IMAGE):
            labels.append(toks[p]), positions.append(np.array([p])), ids.append(-1)
            p += 1
            continue
        end = p
        while end < seq and mod[end] == Modality.IMAGE and img[end] == img[p]:
            end += 1
        run_tiles = sorted(set(tile[p:end].tolist()))
        all_tiles = [t for t, _, _ in layout.grids[int(img[p])]]
        grids = {t: f"{r}x{c}" for t, r, c in layout.grids[int(img[p])]}
        grid = "+".join(grids[t] for t in run_tiles)
        part = "" if run_tiles == all_tiles else ":t" + ",".join(map(str, run_tiles))
        labels.append(f"[image{int(idx[p])}{part}:{grid}]")  # no spaces: AttentionHeads drops them
        positions.append(np.arange(p, end))
        ids.append(int(img[p]))
        p = end
    return Units(labels, positions, ids, seq)


def reduce(values: Float[np.ndarray, "seq ..."], u: Units, how: Reduce = "mean") -> Float[np.ndarray, "unit ..."]:
    """Reduce per-position values (first axis = position) over each unit."""
    values = to_numpy(values)
    fns = {"mean": np.mean, "max": np.max, "min": np.min, "sum": np.sum}
    out = []
    for pos in u.positions:
        chunk = values[pos]
        if how == "absmax":
            flat = np.take_along_axis(chunk, np.abs(chunk).argmax(0)[None], 0)[0]
            out.append(flat)
        elif how in fns:
            out.append(fns[how](chunk, axis=0))
        else:
            raise ValueError(f"unknown reduction {how!r}; use one of mean, max, min, sum, absmax")
    return np.stack(out)


def collapse_attention(pattern: Float[np.ndarray, "... dst src"], u: Units) -> Float[np.ndarray, "... udst usrc"]:
    """Attention between units: summed over key positions, averaged over query positions."""
    pattern = to_numpy(pattern)
    m = u.membership
    mq = m / m.sum(1, keepdims=True)
    return np.einsum("us,...st,vt->...uv", mq, pattern, m)
