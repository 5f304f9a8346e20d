"""Minimal corruptions of the shapes task for patching and circuits: the same scene with colours changed.

A corrupted input for activation / edge patching should differ from the clean one only in what the question is
about. :func:`recolour` redraws an example's scene with the asked object's colour (or every object's colour)
changed, the objects staying in their cells at the same pixel offsets: the image differs only inside those cells,
the prompt is the same, and the answer of a colour question becomes the new colour.

Example::

    from hooks_mm.tasks import make_qa
    from hooks_mm.tasks.corrupt import colour_questions, recolour
    qa = colour_questions(8, seed=0)
    bad = [recolour(e) for e in qa]          # bad[i].answer != qa[i].answer; same prompt, same layout
"""

from __future__ import annotations

import dataclasses

from hooks_mm.tasks.shapes import COLOURS, Example, Obj, make_qa


def colour_questions(n: int, split: str = "test", seed: int = 0, cell: tuple[int, int] | None = None) -> list[Example]:
    """``n`` colour questions that need the image (``"what colour is the circle ?"``), optionally only those whose
    asked object sits in ``cell`` = (row, col).

    Example::

        qa = colour_questions(8, cell=(1, 1))     # 8 questions about an object in the middle cell
    """
    if cell is not None and not (isinstance(cell, tuple) and len(cell) == 2 and all(0 <= x < 3 for x in cell)):
        raise ValueError(f"cell={cell!r}: give (row, col) with row and col in 0..2, or None for any cell.")
    out: list[Example] = []
    for tries in range(1, 65):
        pool = make_qa(n * 8 * tries, split=split, seed=seed, p_text=0.0, kinds=("colour",))  # type: ignore[arg-type]
        out = [e for e in pool if cell is None or (asked_object(e).row, asked_object(e).col) == cell][:n]
        if len(out) == n:
            return out
    raise ValueError(f"found only {len(out)} colour questions about cell {cell} in this split: ask for fewer.")


def asked_object(example: Example) -> Obj:
    """The object a colour question asks about (its shape is unique in the scene)."""
    if example.kind != "colour":
        raise ValueError(
            f"{example.question!r} is a {example.kind!r} question: recolour / asked_object need a colour question "
            "(colour_questions(n) gives them)."
        )
    hits = [o for o in example.scene.objects if example.question == f"what colour is the {o.shape} ?"]
    if len(hits) != 1:
        raise ValueError(f"{example.question!r} names {len(hits)} objects of its scene: expected exactly one.")
    return hits[0]


def recolour(example: Example, objects: str = "asked") -> Example:
    """``example`` with the asked object's colour (``objects="asked"``) or every object's colour (``"all"``)
    changed to the next colour of ``COLOURS`` (red -> green -> blue -> yellow -> red); same prompt, cells and
    offsets. The answer is the asked object's new colour.

    Example::

        bad = recolour(qa[0], objects="all")     # every object changes colour: which cell does the answer read?
    """
    if objects not in ("asked", "all"):
        raise ValueError(f"objects={objects!r}: give 'asked' (the asked object only) or 'all' (every object).")
    target = asked_object(example)
    names = list(COLOURS)
    new = {
        o: dataclasses.replace(o, colour=names[(names.index(o.colour) + 1) % len(names)])
        for o in example.scene.objects
        if objects == "all" or o == target
    }
    scene = dataclasses.replace(example.scene, objects=tuple(new.get(o, o) for o in example.scene.objects))
    return dataclasses.replace(example, scene=scene, answer=new[target].colour)
