"""A synthetic multimodal task: coloured shapes on a 3x3 grid, captions, and questions.

Every image is ``48 x 48`` px: a ``3 x 3`` grid of ``16 px`` dark tiles (each tile's shade
tells its row and column), with 1-4 objects (a colour and a shape each) in distinct cells, placed with a
random offset inside their cell. Each scene has a full caption and question/answer pairs
with one-word answers. A prompt may carry a partial description of the scene (the
*context*): a question whose answer that text already gives is **text-guessable**
(``needs_image=False``); every other question needs the image (``needs_image=True``).
Scenes are split into train / test by a hash of their content, so no test scene is ever
seen in training. Everything is deterministic from ``seed``.

Example::

    from hooks_mm.tasks import make_qa
    ex = make_qa(4, split="test", seed=0)[0]
    ex.prompt, ex.answer, ex.needs_image     # ('<image> there is a red circle . what ...', 'blue', True)
    ex.image                                 # a PIL image
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator, Literal, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

GRID = 3  # cells per side
CELL = 16  # px per cell
IMAGE_SIZE = GRID * CELL
SIZE = 12  # px per shape (fits a cell with up to 4 px of offset)


def background(row: int, col: int) -> tuple[int, int, int]:
    """The dark tile behind cell ``(row, col)``: its red level grows with the row, its green
    level with the column, so every patch of the image also shows where it is."""
    return (20 + 16 * row, 20 + 16 * col, 40)


COLOURS = {"red": (220, 40, 40), "green": (40, 190, 70), "blue": (50, 90, 235), "yellow": (235, 215, 40)}
SHAPES = ("square", "circle", "triangle")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "centre", "right")
NUMBERS = ("zero", "one", "two", "three", "four")
MAX_OBJECTS = 4
TEST_FRACTION = 0.2
CAPTION_PROMPT = "describe the image ."

KINDS = ("colour", "shape", "count", "row", "column", "relation", "exists")
Split = Literal["train", "test"]

WORDS = (
    "there is a an and at the . , ? what colour shape object objects how many are which row column in "
    "left of above describe image yes no"
).split() + [*COLOURS, *SHAPES, *ROWS, *COLS, *NUMBERS]
"""Every word the task's texts use (tokenizers of the organisms hold exactly these)."""
ANSWERS = ("yes", "no", *COLOURS, *SHAPES, *ROWS, *COLS, *NUMBERS)
"""Every one-word answer a question can have."""


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    row: int
    col: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Objects in distinct cells (row-major order) and each one's pixel offset in its cell."""

    objects: tuple[Obj, ...]
    offsets: tuple[tuple[int, int], ...]

    @property
    def key(self) -> str:
        """The content (objects and cells, not offsets): what the train/test split hashes."""
        return ";".join(f"{o.colour},{o.shape},{o.row},{o.col}" for o in self.objects)

    @property
    def split(self) -> Split:
        h = int(hashlib.sha256(self.key.encode()).hexdigest()[:8], 16)
        return "test" if h < TEST_FRACTION * 16**8 else "train"

    def image(self) -> Any:
        """The scene as a ``48 x 48`` RGB PIL image."""
        from PIL import Image, ImageDraw

        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
        draw = ImageDraw.Draw(img)
        for r in range(GRID):
            for c in range(GRID):
                draw.rectangle((c * CELL, r * CELL, c * CELL + CELL - 1, r * CELL + CELL - 1), fill=background(r, c))
        for o, (dx, dy) in zip(self.objects, self.offsets):
            draw_shape(draw, o.shape, o.col * CELL + dx, o.row * CELL + dy, COLOURS[o.colour])
        return img

    def caption(self) -> str:
        """Every object with its cell, row-major: ``a red circle at top left , ... .``"""
        parts = [f"a {o.name} at {ROWS[o.row]} {COLS[o.col]}" for o in self.objects]
        return " , ".join(parts) + " ."

    def count(self, colour: str | None = None, shape: str | None = None) -> int:
        return sum((colour in (None, o.colour)) and (shape in (None, o.shape)) for o in self.objects)


def draw_shape(draw: Any, shape: str, x: int, y: int, fill: tuple[int, int, int]) -> None:
    """Draw one ``SIZE``-px shape with its top-left corner at ``(x, y)``."""
    s = SIZE - 1
    if shape == "square":
        draw.rectangle((x, y, x + s, y + s), fill=fill)
    elif shape == "circle":
        draw.ellipse((x, y, x + s, y + s), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y + s), (x + s, y + s), (x + s / 2, y)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def cell_code(row: int, col: int, obj: Obj | None) -> int:
    """Index in :func:`cell_codebook` of cell ``(row, col)`` holding ``obj`` (None: empty)."""
    content = 0 if obj is None else 1 + len(SHAPES) * list(COLOURS).index(obj.colour) + SHAPES.index(obj.shape)
    return (row * GRID + col) * (1 + len(COLOURS) * len(SHAPES)) + content


def cell_codebook() -> Float[Tensor, "code 3"]:
    """Mean colour (0-1) of every cell this task can draw: for each of the 9 cells (row-major),
    the empty tile, then each colour x shape (``COLOURS`` / ``SHAPES`` order) on it; see
    :func:`cell_code`. Quantising a cell to its nearest entry reads it back without loss,
    so a code token names both the cell's content and (by its tile) its place.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    cells = []
    for r in range(GRID):
        for c in range(GRID):
            cells.append(Image.new("RGB", (CELL, CELL), background(r, c)))
            for colour in COLOURS.values():
                for shape in SHAPES:
                    img = Image.new("RGB", (CELL, CELL), background(r, c))
                    draw_shape(ImageDraw.Draw(img), shape, 0, 0, colour)
                    cells.append(img)
    return torch.tensor(np.stack([np.asarray(c, dtype=np.float32).mean((0, 1)) / 255.0 for c in cells]))


def random_scene(rng: random.Random) -> Scene:
    n = rng.randint(1, MAX_OBJECTS)
    cells = sorted(rng.sample(range(GRID * GRID), n))
    objects = tuple(Obj(rng.choice(list(COLOURS)), rng.choice(SHAPES), c // GRID, c % GRID) for c in cells)
    offsets = tuple((rng.randint(0, CELL - SIZE), rng.randint(0, CELL - SIZE)) for _ in cells)
    return Scene(objects, offsets)


def scene_stream(split: Split = "train", seed: int = 0) -> Iterator[Scene]:
    """An endless, deterministic stream of the scenes of one split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    rng = random.Random(f"shapes-{split}-{seed}")
    while True:
        scene = random_scene(rng)
        if scene.split == split:
            yield scene


def make_scenes(n: int, split: Split = "train", seed: int = 0) -> list[Scene]:
    """The first ``n`` scenes of a split (scenes may repeat: 1-object scenes are few)."""
    return list(itertools.islice(scene_stream(split, seed), n))


@dataclass(frozen=True)
class Example:
    """One prompt and its answer about a scene.

    ``prompt`` holds one ``<image>`` placeholder and ends with ``question``; ``kind`` is the
    question type (or ``"caption"``); ``needs_image`` says whether the prompt's text alone
    gives the answer.
    """

    scene: Scene
    prompt: str
    answer: str
    kind: str
    needs_image: bool
    question: str = ""

    @cached_property
    def image(self) -> Any:
        return self.scene.image()


def _context(objects: list[Obj]) -> str:
    return "there is " + " and ".join(f"a {o.name}" for o in objects) + " ." if objects else ""


def _ask(
    scene: Scene, mentioned: list[Obj], needs_image: bool, rng: random.Random, weights: Sequence[float] | None = None
) -> tuple[str, str, str] | None:
    """(kind, question, answer) about ``scene`` given the ``mentioned`` objects, or None."""
    objs = list(scene.objects)
    unique_shape = [o for o in objs if scene.count(shape=o.shape) == 1]
    unique_colour = [o for o in objs if scene.count(colour=o.colour) == 1]
    unique = [o for o in objs if scene.count(o.colour, o.shape) == 1]
    said = set(mentioned)
    if not needs_image:  # the context names the object asked about
        options = [
            *[("colour", f"what colour is the {o.shape} ?", o.colour) for o in unique_shape if o in said],
            *[("shape", f"what shape is the {o.colour} object ?", o.shape) for o in unique_colour if o in said],
            *[("exists", f"is there a {o.name} ?", "yes") for o in mentioned],
        ]
        return rng.choice(options) if options else None
    kind = rng.choice(KINDS) if weights is None else rng.choices(KINDS, weights)[0]
    unsaid = [o for o in objs if o not in said]
    if kind == "colour":
        pool = [o for o in unique_shape if o in unsaid]
        return (kind, f"what colour is the {(o := rng.choice(pool)).shape} ?", o.colour) if pool else None
    if kind == "shape":
        pool = [o for o in unique_colour if o in unsaid]
        return (kind, f"what shape is the {(o := rng.choice(pool)).colour} object ?", o.shape) if pool else None
    if kind == "count":
        if rng.random() < 0.5:
            shape = rng.choice(SHAPES)
            return kind, f"how many {shape} are there ?", NUMBERS[scene.count(shape=shape)]
        colour = rng.choice(list(COLOURS))
        return kind, f"how many {colour} objects are there ?", NUMBERS[scene.count(colour=colour)]
    if kind in ("row", "column"):
        if not unique:
            return None
        o = rng.choice(unique)
        return kind, f"which {kind} is the {o.name} in ?", (ROWS[o.row] if kind == "row" else COLS[o.col])
    if kind == "relation":
        want = rng.choice(["yes", "no"])
        above = rng.random() < 0.5
        pairs = [
            (a, b)
            for a in unique
            for b in unique
            if a != b and ("yes" if (a.row < b.row if above else a.col < b.col) else "no") == want
        ]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        return kind, f"is the {a.name} {'above' if above else 'left of'} the {b.name} ?", want
    # exists: an object the text does not name, present or absent with equal chance
    names = {(o.colour, o.shape) for o in mentioned}
    if rng.random() < 0.5:
        pool = [o for o in unsaid if (o.colour, o.shape) not in names]
        return (kind, f"is there a {rng.choice(pool).name} ?", "yes") if pool else None
    absent = [(c, s) for c in COLOURS for s in SHAPES if scene.count(c, s) == 0]
    c, s = rng.choice(absent)
    return kind, f"is there a {c} {s} ?", "no"


def make_qa(
    n: int,
    split: Split = "train",
    seed: int = 0,
    p_text: float = 0.25,
    per_scene: int = 1,
    kind_weights: dict[str, float] | None = None,
    kinds: Sequence[str] | None = None,
) -> list[Example]:
    """``n`` question/answer examples, ``per_scene`` distinct questions per scene; a share
    ``p_text`` of them are text-guessable. The image-dependent ones draw their kind
    uniformly from ``KINDS``, or by ``kind_weights`` (kind -> weight; a kind it does not
    name keeps weight 1, so ``{"colour": 1}`` is every kind). ``kinds``: only these kinds,
    text-guessable questions included (e.g. ``kinds=("colour",)``: colour questions only).

    The prompt is ``"<image> [context] question"``; the context names a random subset of
    the objects (colour and shape, never the cell).
    """
    if isinstance(kinds, str):
        raise TypeError(f"kinds={kinds!r}: give a sequence of kinds, e.g. kinds=({kinds!r},).")
    unknown = (set(kind_weights or ()) | set(kinds or ())) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown question kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    if kinds is not None and not kinds:
        raise ValueError("kinds=(): name at least one kind, or pass None for every kind.")
    weights = [kind_weights.get(k, 1.0) for k in KINDS] if kind_weights else None
    if kinds is not None:
        weights = [w if k in kinds else 0.0 for k, w in zip(KINDS, weights or [1.0] * len(KINDS))]
        if not any(weights):
            raise ValueError(f"kind_weights give every kind in kinds={tuple(kinds)} weight 0: nothing to ask.")
        if p_text >= 1.0 and not set(kinds) & {"colour", "shape", "exists"}:
            raise ValueError(f"p_text=1 asks text-guessable questions only, and none is of kinds={tuple(kinds)}.")
    rng = random.Random(f"qa-{split}-{seed}")
    scenes = scene_stream(split, seed)
    out: list[Example] = []
    while len(out) < n:
        scene, asked = next(scenes), set()
        for _ in range(8 * per_scene):  # a few tries per scene, then the next scene
            if len(asked) == per_scene or len(out) == n:
                break
            needs_image = rng.random() >= p_text
            mentioned = [o for o in scene.objects if rng.random() < 0.5]
            qa = _ask(scene, mentioned, needs_image, rng, weights)
            if qa is not None and kinds is not None and qa[0] not in kinds:
                qa = None  # a text-guessable question of another kind
            if qa is not None and qa[1] not in asked:
                kind, question, answer = qa
                asked.add(question)
                prompt = " ".join(p for p in ("<image>", _context(mentioned), question) if p)
                out.append(Example(scene, prompt, answer, kind, needs_image, question))
    return out


def caption_example(scene: Scene) -> Example:
    """``"<image> describe the image ."`` -> the full caption."""
    return Example(scene, f"<image> {CAPTION_PROMPT}", scene.caption(), "caption", True, CAPTION_PROMPT)


def drawing_example(scene: Scene, with_text: bool = True) -> Example:
    """The caption, then the image (``"<caption> <image>"``), or the image alone: for
    models that predict image tokens. The answer is empty: the image is the target."""
    prompt = f"{scene.caption()} <image>" if with_text else "<image>"
    return Example(scene, prompt, "", "drawing" if with_text else "image", False)


def make_captions(n: int, split: Split = "train", seed: int = 0) -> list[Example]:
    """``n`` captioning examples (scenes of their own stream)."""
    return [caption_example(s) for s in make_scenes(n, split, seed + 10_000)]


def make_drawings(n: int, split: Split = "train", seed: int = 0, with_text: bool = True) -> list[Example]:
    """``n`` caption-then-image (or image-only) examples (scenes of their own stream)."""
    return [drawing_example(s, with_text) for s in make_scenes(n, split, seed + 20_000)]
