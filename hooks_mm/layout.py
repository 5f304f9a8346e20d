"""ModalityLayout: what every position of every batch row is (selectors over it: :mod:`hooks_mm.selectors`).

Images, videos and audio are described the same way: every position knows its modality,
which image / video / audio clip of its row it belongs to, its patch cell (images and video
frames), its temporal index inside a video (``frame``) and its time in seconds (``time``,
video frames and audio steps, where the processor or the model tells the rate).

Example::

    layout = model.layout(inputs)
    layout.describe(0)                      # 'text[0:3] image0 4x4 [3:19] text[19:25]'
    mask = layout.select(Image(0) | Last())   # bool [batch, seq]
    idx = layout.indices(Image())             # long [batch, n_image_tokens]
    layout.select(Frame(2) | AudioTime(0.5, 1.0))   # video frame 2, audio between 0.5 and 1 s
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


class Modality(IntEnum):
    """What a position is; the codes are stable (saved results refer to them)."""

    TEXT = 0
    IMAGE = 1
    SPECIAL = 2
    PAD = 3
    VIDEO = 4
    AUDIO = 5


class MediaPlan(NamedTuple):
    """Where the features of one video or one audio clip go, in the order the model writes them.

    ``cells[k] = (frame, row, col)`` of the k-th position: for a video, the LM temporal index
    and the patch cell inside that frame (``col == -1``: a separator token, ``row == -1`` as
    well: a per-frame token such as a CLS); for audio, ``(step, -1, -1)`` with ``step`` the
    index along time.  ``time[k]``: seconds from the start of the clip (NaN where unknown).

    Example::

        MediaPlan.audio(25, seconds_per_step=0.04)       # 25 steps of 40 ms
        MediaPlan.video(frames=2, rows=2, cols=3, seconds_per_frame=1.0)
    """

    cells: Int[Tensor, "n 3"]
    time: Float[Tensor, " n"]

    @staticmethod
    def audio(n: int, seconds_per_step: float | None = None, start: float = 0.0) -> "MediaPlan":
        step = torch.arange(n)
        cells = torch.stack([step, torch.full_like(step, -1), torch.full_like(step, -1)], 1)
        rate = float("nan") if seconds_per_step is None else float(seconds_per_step)
        return MediaPlan(cells, start + step.double() * rate)

    @staticmethod
    def video(
        frames: int,
        rows: int,
        cols: int,
        seconds_per_frame: float | None = None,
        newline: bool = False,
        frame_token: bool = False,
    ) -> "MediaPlan":
        """``frames`` row-major ``rows x cols`` grids; ``newline``: one separator per grid row;
        ``frame_token``: one ``(f, -1, -1)`` token before each frame's grid (a CLS)."""
        per = []
        for f in range(frames):
            r = torch.arange(rows).repeat_interleave(cols)
            c = torch.arange(cols).repeat(rows)
            grid = torch.stack([torch.full_like(r, f), r, c], 1)
            if newline:
                sep = torch.stack([torch.full((rows,), f), torch.arange(rows), torch.full((rows,), -1)], 1)
                grid = torch.cat([grid.view(rows, cols, 3), sep.view(rows, 1, 3)], 1).view(-1, 3)
            if frame_token:
                grid = torch.cat([torch.tensor([[f, -1, -1]]), grid])
            per.append(grid)
        cells = torch.cat(per)
        rate = float("nan") if seconds_per_frame is None else float(seconds_per_frame)
        return MediaPlan(cells, cells[:, 0].double() * rate)


class Segment(IntEnum):
    NONE = 0
    SYSTEM = 1
    INSTRUCTION = 2
    ANSWER = 3
    GENERATED = 4  # positions generate() appends after the prompt (selector Generated())


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
    - ``video_index`` / ``video_id``, ``audio_index`` / ``audio_id``: as for images.
    - ``frame``: the temporal index inside a video (the LM's frame, i.e. one temporal patch
      where frames are merged) or the step along time inside an audio clip; -1 elsewhere.
      Video positions use ``grid_row`` / ``grid_col`` for their cell inside the frame.
    - ``time``: float seconds from the start of the clip (video and audio positions), NaN
      where not applicable or unknown (the processor or model gave no rate).
    - ``video_grids``: per video id ``(frames, rows, cols)``; ``audio_lengths``: per audio id
      its number of positions.
    """

    modality: Int[Tensor, "batch seq"]
    image_index: Int[Tensor, "batch seq"]
    image_id: Int[Tensor, "batch seq"]
    tile: Int[Tensor, "batch seq"]
    grid_row: Int[Tensor, "batch seq"]
    grid_col: Int[Tensor, "batch seq"]
    segment: Int[Tensor, "batch seq"]
    grids: list[list[tuple[int, int, int]]]
    video_index: Int[Tensor, "batch seq"] | None = None
    video_id: Int[Tensor, "batch seq"] | None = None
    audio_index: Int[Tensor, "batch seq"] | None = None
    audio_id: Int[Tensor, "batch seq"] | None = None
    frame: Int[Tensor, "batch seq"] | None = None
    time: Float[Tensor, "batch seq"] | None = None
    video_grids: list[tuple[int, int, int]] | None = None
    audio_lengths: list[int] | None = None

    def __post_init__(self) -> None:
        for name in ("video_index", "video_id", "audio_index", "audio_id", "frame"):
            if getattr(self, name) is None:
                setattr(self, name, torch.full_like(self.modality, -1))
        if self.time is None:
            self.time = torch.full(self.modality.shape, float("nan"), dtype=torch.float64, device=self.modality.device)
        self.video_grids = list(self.video_grids or [])
        self.audio_lengths = list(self.audio_lengths or [])

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.modality.shape)  # type: ignore[return-value]

    @property
    def n_images(self) -> int:
        return len(self.grids)

    @property
    def n_videos(self) -> int:
        return len(self.video_grids)

    @property
    def n_audios(self) -> int:
        return len(self.audio_lengths)

    def select(self, selector: Any) -> Bool[Tensor, "batch seq"]:
        """Boolean mask of the positions a selector (:mod:`hooks_mm.selectors`) picks; ints and
        int lists are positions (negative: from the end of the padded sequence)."""
        if hasattr(selector, "mask"):
            return selector.mask(self)
        if isinstance(selector, int) or (
            isinstance(selector, (list, tuple)) and all(isinstance(p, int) for p in selector)
        ):
            return self.at_positions([selector] if isinstance(selector, int) else list(selector))
        raise TypeError(
            f"cannot select positions with {selector!r}: use a Selector (Image(), Video(), Audio(), Text(), "
            "Last(), ...) or ints."
        )

    def at_positions(self, positions: Sequence[int]) -> Bool[Tensor, "batch seq"]:
        """The mask of explicit positions, the same in every row (negative: from the end)."""
        b, s = self.shape
        bad = [p for p in positions if not -s <= p < s]
        if bad:
            raise IndexError(
                f"positions {bad} are out of range for sequence length {s}: pass positions within {-s}..{s - 1}."
            )
        m = torch.zeros(b, s, dtype=torch.bool, device=self.modality.device)
        m[:, [p % s for p in positions]] = True
        return m

    def grid(self, row: int, image: int, tile: int, within: Tensor | None = None) -> Int[Tensor, "rows cols"] | None:
        """Positions of one image tile's patch cells as a ``[rows, cols]`` grid (row-major), or
        None when the tile has no complete grid among the positions ``within`` ([batch, seq]
        bool, default all); separators (newline / end-of-row tokens) are left out."""
        at = (self.modality[row] == Modality.IMAGE) & (self.image_index[row] == image) & (self.tile[row] == tile)
        at &= self.grid_col[row] >= 0
        if within is not None:
            at &= within[row]
        pos = at.nonzero().flatten()
        if len(pos) == 0:
            return None
        r, c = self.grid_row[row, pos], self.grid_col[row, pos]
        rows, cols = int(r.max()) + 1, int(c.max()) + 1
        if len(pos) != rows * cols:
            return None
        out = torch.empty(rows, cols, dtype=torch.long, device=pos.device)
        out[r, c] = pos
        return out

    def tiles(self, row: int, image: int) -> list[int]:
        """The tile indices of image ``image`` of row ``row`` (patch cells only)."""
        at = (self.modality[row] == Modality.IMAGE) & (self.image_index[row] == image) & (self.grid_col[row] >= 0)
        return self.tile[row][at].unique().tolist()

    def indices(self, selector: Any) -> Int[Tensor, "batch n"]:
        """Per-row position indices picked by ``selector`` (same count in every row)."""
        idx, real = self.padded_indices(selector)
        if not bool(real.all()):
            raise ValueError(
                f"selector {selector!r} picks a different number of positions per row "
                f"({real.sum(1).tolist()}); use layout.padded_indices() (indices padded with -1, and a mask), "
                "First(n, of=...) for n positions in every row, or layout.select() for a mask."
            )
        return idx

    # -- ragged selections (issue 16): rows with different numbers of selected positions
    def padded_indices(self, selector: Any) -> tuple[Int[Tensor, "batch n_max"], Bool[Tensor, "batch n_max"]]:
        """Per-row position indices picked by ``selector``, in order, padded with -1 to the
        largest row count ``n_max``, and the bool mask of real (non-padded) slots. With equal
        counts this is ``(indices(selector), all True)``. When the widest row selects every position
        (``NonPad()`` on a left-padded batch), rows are not compacted: slot k is position k in every
        row (-1 where that row does not select it), so values stay aligned with the sequence.

        Example::

            idx, real = layout.padded_indices(Image())   # rows with 4 and 13 image tokens: [2, 13]
            idx[0, 4:]                                   # -1 -1 ... (row 0 has 4)
        """
        mask = self.select(selector)
        counts = mask.sum(1)
        if int(counts.max()) == 0:
            raise ValueError(
                f"selector {selector!r} selects no position in this batch "
                f"(modalities present: {self.summary()}). Pick positions that exist."
            )
        n_max = int(counts.max())
        if n_max == mask.shape[1]:  # the widest row keeps every position: slot k stays position k in every row,
            pos = torch.arange(n_max, device=mask.device).expand_as(mask)  # so a [batch, seq] reader sees aligned rows
            return torch.where(mask, pos, -1), mask
        real = torch.arange(n_max, device=mask.device) < counts[:, None]
        idx = torch.full(real.shape, -1, dtype=torch.long, device=mask.device)
        idx[real] = mask.nonzero()[:, 1]  # nonzero is row-major: row r's positions fill row r's first slots
        return idx, real

    # -- issue 20: Jupyter display and a short repr (hooks_mm/vis/display.py)
    def __repr__(self) -> str:
        from hooks_mm.vis.display import layout_repr

        return layout_repr(self)

    def _repr_html_(self) -> str:
        from hooks_mm.vis.display import layout_html

        return layout_html(self)

    def summary(self) -> dict[str, int]:
        return {m.name.lower(): int((self.modality == m).sum()) for m in Modality if (self.modality == m).any()}

    def describe(self, row: int = 0) -> str:
        """One line per row: runs of text, images (with grid), videos (frames x grid), audio
        (steps and seconds where known) and special tokens.

        Example: ``'special[0:1] image0 2x2[1:5] video0 2f 2x3[6:18] audio0 25 steps 1.00s[19:44]'``
        """
        mod = self.modality[row].tolist()
        key = list(zip(mod, self.image_id[row].tolist(), self.video_id[row].tolist(), self.audio_id[row].tolist()))
        parts, start = [], 0
        for i in range(1, len(mod) + 1):
            if i < len(mod) and key[i] == key[start]:
                continue
            name = Modality(mod[start]).name.lower()
            if mod[start] == Modality.IMAGE:
                tiles = self.grids[key[start][1]]
                grid = "+".join(f"{r}x{c}" for _, r, c in tiles)
                name = f"image{int(self.image_index[row, start])} {grid}"
            elif mod[start] == Modality.VIDEO:
                f, r, c = self.video_grids[key[start][2]]
                name = f"video{int(self.video_index[row, start])} {f}f {r}x{c}"
            elif mod[start] == Modality.AUDIO:
                t = self.time[row, start:i]
                secs = (
                    f" {float(t[-1] - t[0]) + (float(t[1] - t[0]) if len(t) > 1 else 0.0):.2f}s"
                    if bool(torch.isfinite(t).all())
                    else ""
                )
                name = f"audio{int(self.audio_index[row, start])} {i - start} steps{secs}"
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
    *,
    video_mask: Bool[Tensor, "batch seq"] | None = None,
    video_plans: Sequence[MediaPlan] = (),
    audio_mask: Bool[Tensor, "batch seq"] | None = None,
    audio_plans: Sequence[MediaPlan] = (),
    times: Float[Tensor, "batch seq"] | None = None,
) -> ModalityLayout:
    """Assemble a layout; ``plans`` are filled into image positions in row-major order, and
    ``video_plans`` / ``audio_plans`` (:class:`MediaPlan`) into video / audio positions.

    ``times`` (optional, seconds, NaN where unknown) overrides the plans' times where finite:
    models whose position ids are time-aligned (Qwen2.5-Omni) give them from the ids.
    """
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
        for p in plans:
            tiles = {}
            for t, r, c in p.tolist():
                tiles[t] = (max(tiles.get(t, (0, 0))[0], r + 1), max(tiles.get(t, (0, 0))[1], c + 1))
            grids.append([(t, r, c) for t, (r, c) in sorted(tiles.items())])
        image_index[:] = _per_row_index(image_id, rows, len(plans))
    frame = full(-1)
    time = torch.full((b, s), float("nan"), dtype=torch.float64, device=device)
    video_id, video_index = _fill_media(
        "video", Modality.VIDEO, video_mask, video_plans, modality, frame, grid_row, grid_col, time
    )
    audio_id, audio_index = _fill_media(
        "audio", Modality.AUDIO, audio_mask, audio_plans, modality, frame, grid_row, grid_col, time
    )
    if times is not None:
        times = times.to(device=device, dtype=torch.float64)
        media = (modality == Modality.VIDEO) | (modality == Modality.AUDIO)
        time = torch.where(media & torch.isfinite(times), times, time)
    video_grids = []
    for p in video_plans:
        cells = p.cells[p.cells[:, 2] >= 0]
        f = int(p.cells[:, 0].max()) + 1 if len(p.cells) else 0
        video_grids.append(
            (f, int(cells[:, 1].max()) + 1 if len(cells) else 0, int(cells[:, 2].max()) + 1 if len(cells) else 0)
        )
    if attention_mask is not None:
        modality[attention_mask == 0] = Modality.PAD
    segment = segments.to(device).long() if segments is not None else full(Segment.NONE)
    return ModalityLayout(
        modality,
        image_index,
        image_id,
        tile,
        grid_row,
        grid_col,
        segment,
        grids,
        video_index=video_index,
        video_id=video_id,
        audio_index=audio_index,
        audio_id=audio_id,
        frame=frame,
        time=time,
        video_grids=video_grids,
        audio_lengths=[len(p.cells) for p in audio_plans],
    )


def _per_row_index(ids: Tensor, rows: Tensor, n: int) -> Tensor:
    """Per position, the index of its item (image / video / audio) among its row's items."""
    out = torch.full_like(ids, -1)
    per_row: dict[int, int] = {}
    start = 0
    counts = torch.bincount(ids[ids >= 0], minlength=n).tolist() if n else []
    for k in range(n):
        row = int(rows[start])
        out[ids == k] = per_row.get(row, 0)
        per_row[row] = per_row.get(row, 0) + 1
        start += counts[k]
    return out


def _fill_media(
    kind: str,
    code: Modality,
    mask: Tensor | None,
    plans: Sequence[MediaPlan],
    modality: Tensor,
    frame: Tensor,
    grid_row: Tensor,
    grid_col: Tensor,
    time: Tensor,
) -> tuple[Tensor, Tensor]:
    """Write ``plans`` into the ``mask`` positions (row-major); returns (id, index) tensors."""
    ids, index = torch.full_like(modality, -1), torch.full_like(modality, -1)
    n_tokens = int(mask.sum()) if mask is not None else 0
    n_planned = sum(len(p.cells) for p in plans)
    if n_tokens != n_planned:
        raise ValueError(
            f"{kind} token count does not match the {kind} inputs: input_ids hold {n_tokens} "
            f"{kind} positions but the {len(plans)} {kind} input(s) given produce {n_planned} "
            f"features. Build inputs with the model's processor, which expands each {kind} "
            f"placeholder to the right number of tokens, or pass the {kind} inputs these "
            "input_ids were built for."
        )
    if not n_tokens:
        return ids, index
    rows, cols = mask.nonzero(as_tuple=True)
    device = modality.device
    cells = torch.cat([p.cells for p in plans]).to(device)
    modality[rows, cols] = code
    ids[rows, cols] = torch.cat([torch.full((len(p.cells),), k, device=device) for k, p in enumerate(plans)])
    frame[rows, cols], grid_row[rows, cols], grid_col[rows, cols] = cells.unbind(1)
    time[rows, cols] = torch.cat([p.time for p in plans]).to(device=device, dtype=torch.float64)
    return ids, _per_row_index(ids, rows, len(plans))


# ---------------------------------------------------------------- generation layouts (issue 16)


def generation_layout(layout: ModalityLayout, length: int) -> ModalityLayout:
    """``layout`` cut to ``length`` positions, or extended to it by generated positions.

    Generated positions are text (``Modality.TEXT``) of segment ``Segment.GENERATED``, with no
    media fields (-1, NaN time): ``HookedMLLM.generate`` compiles a spec on the prompt's layout
    extended by ``max_new_tokens`` of them, and the sequence after k generated tokens has that
    layout cut to ``prompt + k`` positions.

    Example::

        ext = generation_layout(batch.layout, batch.shape[1] + 4)   # 4 generated positions
        ext.select(Generated()).sum(1)                              # tensor([4, 4])
    """
    b, s = layout.shape
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"generation_layout: length must be a positive int, got {length!r}.")
    fill = {"modality": int(Modality.TEXT), "segment": int(Segment.GENERATED), "time": float("nan")}
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(layout):
        v = getattr(layout, f.name)
        if not isinstance(v, Tensor) or tuple(v.shape[:2]) != (b, s):
            continue
        if length <= s:
            fields[f.name] = v[:, :length]
        else:
            pad = torch.full((b, length - s, *v.shape[2:]), fill.get(f.name, -1), dtype=v.dtype, device=v.device)
            fields[f.name] = torch.cat([v, pad], 1)
    return dataclasses.replace(layout, **fields)
