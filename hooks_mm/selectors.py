"""Position selectors over a :class:`~hooks_mm.layout.ModalityLayout`, shared by the whole library.

Selectors compose with ``|``, ``&`` and ``~`` and serialise with ``to_dict`` /
``Selector.from_dict``; ``layout.select(sel)`` gives a bool mask, ``layout.indices(sel)``
per-row indices.

Example::

    from hooks_mm.selectors import After, Image, Last
    mask = layout.select(Image(0) | Last())          # bool [batch, seq]
    Selector.from_dict(After(Image()).to_dict())     # round trip
"""

from __future__ import annotations

import json
import numbers
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Bool
from torch import Tensor

from hooks_mm.layout import Modality, ModalityLayout, Segment


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
    def from_dict(d: dict[str, Any] | str) -> "Selector":
        """The selector of ``sel.to_dict()`` (a dict, or its JSON text)."""
        if isinstance(d, (str, bytes)):
            try:
                d = json.loads(d)
            except json.JSONDecodeError as e:
                raise ValueError(f"Selector.from_dict: the string is not JSON ({e}); pass sel.to_dict().") from None
        if not isinstance(d, dict):
            raise TypeError(f"Selector.from_dict needs the dict of sel.to_dict(), got {type(d).__name__}.")
        d = dict(d)
        name = d.pop("selector", None)
        if name not in SELECTORS:
            raise ValueError(
                f"unknown selector {name!r} (the 'selector' key of sel.to_dict()); "
                f"use one of {', '.join(sorted(SELECTORS))}"
                + (" (Where holds a Python function and is not serialisable)" if name == "Where" else "")
            )
        args = {k: (Selector.from_dict(v) if isinstance(v, dict) and "selector" in v else v) for k, v in d.items()}
        try:
            return SELECTORS[name](**args)
        except TypeError as e:
            raise ValueError(f"Selector.from_dict: bad arguments {sorted(args)} for {name}: {e}") from None

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
        self.i, self.tile = _index("Image", "i", i), _index("Image", "tile", tile)
        if not isinstance(patches_only, bool):
            raise TypeError(f"Image(patches_only={patches_only!r}): give True or False.")
        self.patches_only = patches_only

    def mask(self, layout: ModalityLayout) -> Tensor:
        m = layout.modality == Modality.IMAGE
        if self.i is not None:
            if self.i >= max((int(layout.image_index.max()) + 1), 0):
                raise ValueError(
                    f"Image({self.i}) is out of range: rows hold at most {int(layout.image_index.max()) + 1} image(s)."
                )
            m &= layout.image_index == self.i
        if self.tile is not None:
            m &= layout.tile == self.tile
        if self.patches_only:
            m &= layout.grid_col >= 0
        return m


def is_int(v: Any) -> bool:
    """An int (numpy ints too), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _index(kind: str, name: str, i: Any) -> int | None:
    """``i`` as a non-negative int (or None); an error naming ``kind(name=...)`` otherwise."""
    if i is None:
        return None
    if not is_int(i) or i < 0:
        raise TypeError(f"{kind}({name}={i!r}): give a non-negative int index (0 is the first), or None for all.")
    return int(i)


def _check_index(kind: str, i: int, index: Tensor) -> None:
    n = int(index.max()) + 1 if index.numel() else 0
    if not 0 <= i < max(n, 0):
        raise ValueError(f"{kind}({i}) is out of range: rows hold at most {max(n, 0)} {kind.lower()}(s).")


class Video(Selector):
    """Video positions: all, or video ``i`` of each row (every frame, every cell)."""

    def __init__(self, i: int | None = None):
        self.i = _index("Video", "i", i)

    def mask(self, layout: ModalityLayout) -> Tensor:
        m = layout.modality == Modality.VIDEO
        if self.i is not None:
            _check_index("Video", self.i, layout.video_index)
            m &= layout.video_index == self.i
        return m


class Frame(Selector):
    """Video positions of frame ``t`` (an int) or of frames ``start <= frame < stop``
    (``Frame((start, stop))`` or ``Frame(range(start, stop))``), in every video; combine
    with ``Video(i)`` for one video: ``Video(0) & Frame(1)``.

    Frames are the LM's temporal index (one temporal patch where the model merges frames,
    e.g. 2 raw frames in Qwen2-VL). ``layout.video_grids`` gives each video's frame count.
    """

    def __init__(self, t: int | Sequence[int] | range):
        if isinstance(t, range):
            if t.step != 1:
                raise ValueError(f"Frame({t!r}): only contiguous ranges (step 1) are supported.")
            t = [t.start, t.stop]
        if not (is_int(t) or (isinstance(t, (list, tuple)) and all(is_int(v) for v in t))):
            raise TypeError(f"Frame({t!r}): give one int frame index or a (start, stop) pair of ints.")
        if not is_int(t):
            t = [int(v) for v in t]
            if len(t) != 2 or t[1] <= t[0]:
                raise ValueError(f"Frame({t!r}): give one frame index or a (start, stop) pair with stop > start.")
        else:
            t = int(t)
        self.t = t

    def mask(self, layout: ModalityLayout) -> Tensor:
        video = layout.modality == Modality.VIDEO
        if isinstance(self.t, int):
            return video & (layout.frame == self.t)
        return video & (layout.frame >= self.t[0]) & (layout.frame < self.t[1])


class Audio(Selector):
    """Audio positions: all, or audio clip ``i`` of each row."""

    def __init__(self, i: int | None = None):
        self.i = _index("Audio", "i", i)

    def mask(self, layout: ModalityLayout) -> Tensor:
        m = layout.modality == Modality.AUDIO
        if self.i is not None:
            _check_index("Audio", self.i, layout.audio_index)
            m &= layout.audio_index == self.i
        return m


class AudioTime(Selector):
    """Audio positions whose time (seconds from the start of their clip) lies in ``[t0, t1)``.

    Needs known times: the processor's frame rate (Whisper-style feature extractors:
    hop_length / sampling_rate) or a model with time-aligned positions (Qwen2.5-Omni).
    """

    def __init__(self, t0: float, t1: float):
        if not t1 > t0:
            raise ValueError(f"AudioTime({t0}, {t1}): t1 must be larger than t0.")
        self.t0, self.t1 = float(t0), float(t1)

    def mask(self, layout: ModalityLayout) -> Tensor:
        audio = layout.modality == Modality.AUDIO
        if bool(audio.any()) and not bool(torch.isfinite(layout.time[audio]).any()):
            raise ValueError(
                "AudioTime: the audio positions of this layout have no known times (the "
                "processor gave no frame rate). Load the model with its processor (feature "
                "extractor with sampling_rate and hop_length), or select steps with "
                "Where(lambda L: L.frame < n) & Audio()."
            )
        return audio & (layout.time >= self.t0) & (layout.time < self.t1)


class Text(Selector):
    """Text positions (not image, video, audio, special or padding)."""

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
    """The last real position of each row (where the next token is predicted).

    During ``HookedMLLM.generate`` (a layout with ``Generated()`` positions) it is the current
    step: the prompt's last position (the prefill's output) and every generated position that
    is fed back, each computing the next token.
    """

    def mask(self, layout: ModalityLayout) -> Tensor:
        generated = layout.segment == Segment.GENERATED
        real = (layout.modality != Modality.PAD) & ~generated
        idx = torch.arange(real.shape[1], device=real.device).expand_as(real)
        last = torch.where(real, idx, -1).max(1).values
        return (idx == last[:, None]) | generated


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
        if isinstance(positions, Tensor):
            if positions.dtype == torch.bool or positions.is_floating_point() or positions.dim() > 1:
                raise TypeError(
                    f"Positions: got a {positions.dtype} tensor of shape {tuple(positions.shape)}; give position "
                    "indices (a 1-D int list). For a bool [batch, seq] mask use Where(lambda L: mask)."
                )
            positions = positions.tolist()
        items = [positions] if not isinstance(positions, (list, tuple, range)) else list(positions)
        if not items or not all(is_int(p) for p in items):
            raise TypeError(
                f"Positions({positions!r:.80}): give a non-empty list of int positions (a bool mask is not "
                "positions: use Where(lambda L: mask) for a [batch, seq] mask)."
            )
        self.positions = [int(p) for p in items]

    def mask(self, layout: ModalityLayout) -> Tensor:
        return layout.at_positions(self.positions)


class Where(Selector):
    """Any predicate on the layout, e.g. ``Where(lambda L: L.grid_row == 0)``."""

    def __init__(self, fn: Callable[[ModalityLayout], Tensor]):
        self.fn = fn

    def mask(self, layout: ModalityLayout) -> Tensor:
        m = self.fn(layout)
        if not isinstance(m, Tensor) or m.dtype != torch.bool or tuple(m.shape) != tuple(layout.shape):
            got = f"a {m.dtype} tensor of shape {tuple(m.shape)}" if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(
                f"Where(fn): fn returned {got}; it must return a bool tensor of the layout's shape "
                f"{tuple(layout.shape)} [batch, seq], e.g. Where(lambda L: L.grid_row == 0)."
            )
        return m

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
    for c in (
        Image,
        Video,
        Frame,
        Audio,
        AudioTime,
        Text,
        Special,
        NonPad,
        Last,
        Instruction,
        Answer,
        System,
        After,
        Positions,
        Union,
        Intersection,
        Not,
    )
}


# ---- issue 16 (contrastive decoding): batch rows as a selector
class Rows(Selector):
    """Every real position of batch rows ``rows`` (an int, a list of ints or a range).

    Restricts a spec to some rows of a batch, e.g. the reference half of a doubled batch in
    contrastive decoding: ``After(Image()) & Rows(range(2, 4))``. A row beyond the batch is an error.
    """

    def __init__(self, rows: int | Sequence[int] | range):
        items = [rows] if is_int(rows) else list(rows) if isinstance(rows, (list, tuple, range)) else None
        if not items or not all(is_int(r) and r >= 0 for r in items):
            raise TypeError(f"Rows({rows!r:.80}): give a non-empty list (or range) of non-negative int row indices.")
        self.rows = sorted({int(r) for r in items})

    def mask(self, layout: ModalityLayout) -> Tensor:
        n = layout.shape[0]
        if self.rows[-1] >= n:
            raise ValueError(f"Rows({self.rows}) is out of range: this batch has {n} rows (0..{n - 1}).")
        m = torch.zeros(tuple(layout.shape), dtype=torch.bool, device=layout.modality.device)
        m[self.rows] = True
        return m & (layout.modality != Modality.PAD)


SELECTORS["Rows"] = Rows


# ---------------------------------------------------------------- generation (issue 16)


class Generated(Selector):
    """The positions ``HookedMLLM.generate`` appends after the prompt (none outside generation).

    ``generate(inputs, interventions=spec, max_new_tokens=n)`` resolves selectors over the
    prompt and ``n`` generated positions; ``Generated()`` picks the latter and ``~Generated()``
    the prompt. Selectors that pick text (``NonPad()``, ``Text()``, ``After(...)``) include them.

    Example::

        spec = Steer(layers=1, vector=v.tolist(), positions=Generated())   # every generated token
        tokens = model.generate(inputs, max_new_tokens=8, interventions=spec)
    """

    def mask(self, layout: ModalityLayout) -> Tensor:
        return layout.segment == Segment.GENERATED


SELECTORS["Generated"] = Generated


def as_selector(x: Any) -> Selector:
    """Selectors pass through; ints and int lists become :class:`Positions`."""
    if isinstance(x, Selector):
        return x
    if isinstance(x, Tensor) or is_int(x) or (isinstance(x, (list, tuple, range)) and x and all(map(is_int, x))):
        return Positions(x)
    raise TypeError(
        f"cannot select positions with {x!r}: use a Selector (Image(), Video(), Audio(), Text(), Last(), ...) or ints."
    )


# -- "first n of" / "last n of" (issue 16, ragged batches): equal counts per row from a ragged selection


class First(Selector):
    """The first ``n`` positions that ``of`` selects in each row (default ``of``: every real
    position). A row where ``of`` selects fewer than ``n`` keeps all it has (so counts can still
    differ: ``layout.padded_indices`` / ``run_with_cache(pos=...)`` pad them; ``Patch(map="order")``
    refuses them, naming the rows).

    Example::

        First(4, of=Image())        # the first 4 image tokens of every row
        LastN(2, of=Text())         # the last 2 text tokens of every row
        Selector.from_dict(First(4, of=Image()).to_dict()) == First(4, of=Image())
    """

    def __init__(self, n: int, of: Selector | None = None):
        if not is_int(n) or n < 1:
            raise TypeError(f"{type(self).__name__}(n={n!r}): give a positive int count of positions per row.")
        self.n, self.of = int(n), NonPad() if of is None else as_selector(of)

    def mask(self, layout: ModalityLayout) -> Tensor:
        m = self.of.mask(layout)
        return m & (m.cumsum(1) <= self.n)


class LastN(First):
    """The last ``n`` positions that ``of`` selects in each row (rows with fewer keep all they
    have); ``LastN(1)`` is ``Last()``. See :class:`First`."""

    def mask(self, layout: ModalityLayout) -> Tensor:
        m = self.of.mask(layout)
        return m & (m.flip(1).cumsum(1).flip(1) <= self.n)


SELECTORS.update({c.__name__: c for c in (First, LastN)})
