"""hooks_mm.tasks.corrupt: colour questions and the same scene recoloured (the corruption of notebook 13)."""

from __future__ import annotations

import numpy as np
import pytest

from hooks_mm.tasks import make_qa
from hooks_mm.tasks.corrupt import asked_object, colour_questions, recolour
from hooks_mm.tasks.shapes import CELL, COLOURS


def changed_cells(a, b) -> set[tuple[int, int]]:  # noqa: ANN001
    diff = np.abs(np.asarray(a.image, dtype=int) - np.asarray(b.image, dtype=int)).sum(-1) > 0
    return {(int(r) // CELL, int(c) // CELL) for r, c in zip(*diff.nonzero())}


def test_colour_questions_are_colour_questions_about_the_cell() -> None:
    qa = colour_questions(6, seed=0)
    assert len(qa) == 6 and all(e.kind == "colour" and e.needs_image for e in qa)
    assert {e.kind for e in make_qa(40, "test", 0, p_text=0.0, kind_weights={"colour": 1})} != {"colour"}  # why
    mid = colour_questions(5, cell=(1, 1))
    assert all((asked_object(e).row, asked_object(e).col) == (1, 1) for e in mid)
    assert all(e.answer == asked_object(e).colour for e in mid)


def test_recolour_changes_only_the_asked_cell() -> None:
    names = list(COLOURS)
    for e in colour_questions(8, seed=3):
        o = asked_object(e)
        bad = recolour(e)
        assert bad.prompt == e.prompt and bad.answer == names[(names.index(e.answer) + 1) % 4] != e.answer
        assert changed_cells(e, bad) == {(o.row, o.col)}
        every = recolour(e, "all")
        assert every.answer == bad.answer
        assert changed_cells(e, every) == {(x.row, x.col) for x in e.scene.objects}
        assert all(x.shape == y.shape and x.colour != y.colour for x, y in zip(e.scene.objects, every.scene.objects))


def test_recolour_misuse() -> None:
    shape_q = next(e for e in make_qa(50, "test", 0, p_text=0.0) if e.kind == "shape")
    with pytest.raises(ValueError, match="colour question"):
        recolour(shape_q)
    e = colour_questions(1)[0]
    with pytest.raises(ValueError, match="'asked'"):
        recolour(e, "some")
    with pytest.raises(ValueError, match="row and col in 0..2"):
        colour_questions(2, cell=(3, 0))
