"""Synthetic multimodal tasks the built-in organisms are trained and evaluated on.

``make_qa`` / ``make_captions`` / ``make_drawings`` give :class:`Example` s (a scene, a
prompt with one ``<image>``, a one-word answer, ``kind`` and ``needs_image``);
``hooks_mm.tasks.evaluate.evaluate(model)`` scores a :class:`~hooks_mm.HookedMLLM` on them.
"""

from hooks_mm.tasks.shapes import (
    ANSWERS,
    CAPTION_PROMPT,
    KINDS,
    WORDS,
    Example,
    Obj,
    Scene,
    caption_example,
    cell_code,
    cell_codebook,
    drawing_example,
    make_captions,
    make_drawings,
    make_qa,
    make_scenes,
)

__all__ = [
    "CAPTION_PROMPT",
    "KINDS",
    "ANSWERS",
    "WORDS",
    "Example",
    "Obj",
    "Scene",
    "caption_example",
    "cell_code",
    "cell_codebook",
    "drawing_example",
    "make_captions",
    "make_drawings",
    "make_qa",
    "make_scenes",
]
