"""ModalityLayout: what every position of every batch row is, and selectors over it.

Example::

    layout = model.layout(inputs)
    layout.describe(0)                      # 'text[0:3] image0 4x4 [3:19] text[19:25]'
    mask = layout.select(Image(0) | Last())   # bool [batch, seq]
    idx = layout.indices(Image())             # long [batch, n_image_tokens]
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor


class Modality(IntEnum):
    TEXT = 0
    IMAGE = 1
    SPECIAL = 2
    PAD = 3


class Segment(IntEnum):
    NONE = 0
    SYSTEM = 1
    INSTRUCTION = 2
    ANSWER = 3


SEGMENTS_KEY = "hooks_mm_segments"  # optional [batch, seq] Segment codes carried in inputs


@dataclass
class ModalityLayout:
    """Per-position facts of a batch, all ``[batch, seq]`` long tensors (-1 where n/a).

    - ``modality``: a :class:`Modality` code (padding wins over everything else).
    - ``image_index``: which image of its row (0, 1, ...) a position shows.
    - ``image_id``: which image of the batch (the order the model consumes images).
    - ``tile``, ``grid_row``, ``grid_col``: the patch cell; ``grid_col == -1`` on a
      separator inside an image span (newline / end-of-row token).
    - ``segment``: a :class:`Segment` code where known (prompts built by
      ``HookedMLLM.to_inputs``).
    - ``grids``: per image id, the ``(tile, rows, cols)`` of each of its tiles.
    """

    modality: Int[Tensor, "batch seq"]
    image_index: Int[Tensor, "batch seq"]
    image_id: Int[Tensor, "batch seq"]
    tile: Int[Tensor, "batch seq"]
    grid_row: Int[Tensor, "batch seq"]
    grid_col: Int[Tensor, "batch seq"]
    segment: Int[Tensor, "batch seq"]
    grids: list[list[tuple[int, int, int]]]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.modality.shape)  # type: ignore[return-value]

    @property
    def n_images(self) -> int:
        return len(self.grids)

    def select(self, selector: "Selector | Sequence[int] | int") -> Bool[Tensor, "batch seq"]:
        """Boolean mask of the positions a selector picks."""
        return as_selector(selector).mask(self)

    def indices(self, selector: "Selector | Sequence[int] | int") -> Int[Tensor, "batch n"]:
        """Per-row position indices picked by ``selector`` (same count in every row)."""
        mask = self.select(selector)
        counts = mask.sum(1)
        if int(counts.max()) == 0:
            raise ValueError(
                f"selector {selector!r} selects no position in this batch "
                f"(modalities present: {self.summary()}). Pick positions that exist."
            )
        if not bool((counts == counts[0]).all()):
            raise ValueError(
                f"selector {selector!r} picks a different number of positions per row "
                f"({counts.tolist()}); select per row, or use layout.select() for a mask."
            )
        return mask.nonzero()[:, 1].view(mask.shape[0], -1)

    def summary(self) -> dict[str, int]:
        return {m.name.lower(): int((self.modality == m).sum()) for m in Modality if (self.modality == m).any()}

    def describe(self, row: int = 0) -> str:
        """One line per row: runs of text, images (with grid) and special tokens."""
        mod, img = self.modality[row].tolist(), self.image_id[row].tolist()
        parts, start = [], 0
        for i in range(1, len(mod) + 1):
            if i < len(mod) and mod[i] == mod[start] and img[i] == img[start]:
                continue
            name = Modality(mod[start]).name.lower()
            if mod[start] == Modality.IMAGE:
                tiles = self.grids[img[start]]
                grid = "+".join(f"{r}x{c}" for _, r, c in tiles)
                name = f"image{int(self.image_index[row, start])} {grid}"
            parts.append(f"{name}[{start}:{i}]")
            start = i
        return " ".join(parts)


def build_layout(
    input_ids: Int[Tensor, "batch seq"],
    attention_mask: Tensor | None,
    image_mask: Bool[Tensor, "batch seq"] | None,
    plans: list[Tensor],
    special_ids: set[int] = frozenset(),  # type: ignore[assignment]
    segments: Tensor | None = None,
) -> ModalityLayout:
    """Assemble a layout; ``plans`` are filled into image positions in row-major order."""
    b, s = input_ids.shape
    device = input_ids.device
    full = lambda v: torch.full((b, s), v, dtype=torch.long, device=device)  # noqa: E731
    modality, image_index, image_id = full(Modality.TEXT), full(-1), full(-1)
    tile, grid_row, grid_col = full(-1), full(-1), full(-1)
    if special_ids:
        special = torch.isin(input_ids, torch.tensor(sorted(special_ids), device=device))
        modality[special] = Modality.SPECIAL
    grids: list[list[tuple[int, int, int]]] = []
    n_tokens = int(image_mask.sum()) if image_mask is not None else 0
    n_planned = sum(len(p) for p in plans)
    if n_tokens != n_planned:
        raise ValueError(
            f"image token count does not match the images: input_ids hold {n_tokens} image "
            f"positions but the {len(plans)} image(s) given produce {n_planned} features. "
            "Build inputs with the model's processor (HookedMLLM.to_inputs), which expands "
            "each image placeholder to the right number of tokens, or pass the images that "
            "these input_ids were built for."
        )
    if n_tokens:
        rows, cols = image_mask.nonzero(as_tuple=True)
        plan = torch.cat(plans).to(device)
        ids = torch.cat([torch.full((len(p),), k, device=device) for k, p in enumerate(plans)])
        modality[rows, cols] = Modality.IMAGE
        image_id[rows, cols] = ids
        tile[rows, cols], grid_row[rows, cols], grid_col[rows, cols] = plan.unbind(1)
        first_row = {}
        for k, p in enumerate(plans):
            start = sum(len(q) for q in plans[:k])
            first_row[k] = int(rows[start])
            tiles = {}
            for t, r, c in p.tolist():
                tiles[t] = (max(tiles.get(t, (0, 0))[0], r + 1), max(tiles.get(t, (0, 0))[1], c + 1))
            grids.append([(t, r, c) for t, (r, c) in sorted(tiles.items())])
        per_row: dict[int, int] = {}
        for k in range(len(plans)):
            row = first_row[k]
            image_index[image_id == k] = per_row.get(row, 0)
            per_row[row] = per_row.get(row, 0) + 1
    if attention_mask is not None:
        modality[attention_mask == 0] = Modality.PAD
    segment = segments.to(device).long() if segments is not None else full(Segment.NONE)
    return ModalityLayout(modality, image_index, image_id, tile, grid_row, grid_col, segment, grids)


# ---------------------------------------------------------------------------------------
# Selectors


class Selector:
    """A set of positions defined on a layout; compose with ``|``, ``&`` and ``~``."""

    def mask(self, layout: ModalityLayout) -> Bool[Tensor, "batch seq"]:
        raise NotImplementedError

    def __or__(self, other: "Selector") -> "Selector":
        return Union(self, as_selector(other))

    def __and__(self, other: "Selector") -> "Selector":
        return Intersection(self, as_selector(other))

    def __invert__(self) -> "Selector":
        return Not(self)

    def to_dict(self) -> dict[str, Any]:
        args = {k: (v.to_dict() if isinstance(v, Selector) else v) for k, v in vars(self).items()}
        return {"selector": type(self).__name__, **args}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Selector":
        d = dict(d)
        cls = SELECTORS[d.pop("selector")]
        args = {k: (Selector.from_dict(v) if isinstance(v, dict) and "selector" in v else v) for k, v in d.items()}
        return cls(**args)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if v is not None)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(repr(self))


class Image(Selector):
    """Image positions: all, or image ``i`` of each row, optionally one tile."""

    def __init__(self, i: int | None = None, tile: int | None = None, patches_only: bool = False):
        self.i, self.tile, self.patches_only = i, tile, patches_only

    def mask(self, layout: ModalityLayout) -> Tensor:
        m = layout.modality == Modality.IMAGE
        if self.i is not None:
            if self.i >= max((int(layout.image_index.max()) + 1), 0):
                raise ValueError(
                    f"Image({self.i}) is out of range: rows hold at most "
                    f"{int(layout.image_index.max()) + 1} image(s)."
                )
            m &= layout.image_index == self.i
        if self.tile is not None:
            m &= layout.tile == self.tile
        if self.patches_only:
            m &= layout.grid_col >= 0
        return m


class Text(Selector):
    """Text positions (not image, special or padding)."""

    def mask(self, layout: ModalityLayout) -> Tensor:
        return layout.modality == Modality.TEXT


class Special(Selector):
    """Structural tokens: BOS, begin/end of image, vision start/end, row markers."""

    def mask(self, layout: ModalityLayout) -> Tensor:
        return layout.modality == Modality.SPECIAL


class NonPad(Selector):
    """Every real (non-padding) position."""

    def mask(self, layout: ModalityLayout) -> Tensor:
        return layout.modality != Modality.PAD


class Last(Selector):
    """The last real position of each row (where the next token is predicted)."""

    def mask(self, layout: ModalityLayout) -> Tensor:
        real = layout.modality != Modality.PAD
        idx = torch.arange(real.shape[1], device=real.device).expand_as(real)
        last = torch.where(real, idx, -1).max(1).values
        return idx == last[:, None]


class Instruction(Selector):
    """Text of the prompt (known for inputs built by ``HookedMLLM.to_inputs``)."""

    def mask(self, layout: ModalityLayout) -> Tensor:
        return (layout.segment == Segment.INSTRUCTION) & (layout.modality == Modality.TEXT)


class Answer(Selector):
    """Answer tokens appended by ``HookedMLLM.to_inputs(..., answer=...)``."""

    def mask(self, layout: ModalityLayout) -> Tensor:
        return layout.segment == Segment.ANSWER


class System(Selector):
    """System-prompt positions (where known)."""

    def mask(self, layout: ModalityLayout) -> Tensor:
        return layout.segment == Segment.SYSTEM


class After(Selector):
    """Positions after the last position that ``of`` selects in each row."""

    def __init__(self, of: Selector):
        self.of = as_selector(of)

    def mask(self, layout: ModalityLayout) -> Tensor:
        m = self.of.mask(layout)
        idx = torch.arange(m.shape[1], device=m.device).expand_as(m)
        last = torch.where(m, idx, -1).max(1).values
        return (idx > last[:, None]) & m.any(1, keepdim=True) & (layout.modality != Modality.PAD)


class Positions(Selector):
    """Explicit positions (negative counts from the end of the padded sequence)."""

    def __init__(self, positions: Sequence[int] | int):
        self.positions = [positions] if isinstance(positions, int) else [int(p) for p in positions]

    def mask(self, layout: ModalityLayout) -> Tensor:
        b, s = layout.shape
        bad = [p for p in self.positions if not -s <= p < s]
        if bad:
            raise IndexError(f"positions {bad} are out of range for sequence length {s} (valid: {-s}..{s - 1}).")
        m = torch.zeros(b, s, dtype=torch.bool, device=layout.modality.device)
        m[:, [p % s for p in self.positions]] = True
        return m


class Where(Selector):
    """Any predicate on the layout, e.g. ``Where(lambda L: L.grid_row == 0)``."""

    def __init__(self, fn: Callable[[ModalityLayout], Tensor]):
        self.fn = fn

    def mask(self, layout: ModalityLayout) -> Tensor:
        return self.fn(layout).bool()

    def to_dict(self) -> dict[str, Any]:
        raise TypeError("Where(...) holds a Python function and cannot be serialised; use the named selectors.")


class Union(Selector):
    def __init__(self, a: Selector, b: Selector):
        self.a, self.b = a, b

    def mask(self, layout: ModalityLayout) -> Tensor:
        return self.a.mask(layout) | self.b.mask(layout)


class Intersection(Selector):
    def __init__(self, a: Selector, b: Selector):
        self.a, self.b = a, b

    def mask(self, layout: ModalityLayout) -> Tensor:
        return self.a.mask(layout) & self.b.mask(layout)


class Not(Selector):
    def __init__(self, a: Selector):
        self.a = a

    def mask(self, layout: ModalityLayout) -> Tensor:
        return ~self.a.mask(layout) & (layout.modality != Modality.PAD)


SELECTORS: dict[str, type[Selector]] = {
    c.__name__: c
    for c in (Image, Text, Special, NonPad, Last, Instruction, Answer, System, After, Positions, Union, Intersection, Not)
}


def as_selector(x: Any) -> Selector:
    """Selectors pass through; ints and int lists become :class:`Positions`."""
    if isinstance(x, Selector):
        return x
    if isinstance(x, int) or (isinstance(x, (list, tuple)) and all(isinstance(p, int) for p in x)):
        return Positions(x)
    raise TypeError(f"cannot select positions with {x!r}: use a Selector (Image(), Text(), Last(), ...) or ints.")
