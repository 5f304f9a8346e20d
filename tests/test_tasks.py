"""The shapes task: deterministic, disjoint splits, and every answer checked against the image."""

from __future__ import annotations

import re

import numpy as np
import pytest

from hooks_mm.processing.codebook import CodebookProcessor
from hooks_mm.tasks import WORDS, cell_codebook, make_captions, make_drawings, make_qa, make_scenes, shapes
from hooks_mm.zoo.tokenizers import word_tokenizer

PALETTE = {"red": (220, 40, 40), "green": (40, 190, 70), "blue": (50, 90, 235), "yellow": (235, 215, 40)}
ROWS, COLS = ("top", "middle", "bottom"), ("left", "centre", "right")
NUMBERS = ("zero", "one", "two", "three", "four")


def read_image(image) -> list[tuple[str, str, int, int]]:  # noqa: ANN001
    """Objects read back from the pixels: per 16 px cell, the fill colour and, from the
    filled area, the shape (square 12x12 = 144 px, circle ~113, triangle ~72)."""
    a = np.asarray(image).astype(int)
    assert a.shape == (48, 48, 3)
    out = []
    for r in range(3):
        for c in range(3):
            cell = a[16 * r : 16 * r + 16, 16 * c : 16 * c + 16].reshape(-1, 3)
            tile = (20 + 16 * r, 20 + 16 * c, 40)  # the tile's shade: red by row, green by column
            filled = cell[(cell != tile).any(1)]
            assert len(filled) < 256, "the tile shows"
            if len(filled) == 0:
                continue
            colours = {tuple(p) for p in filled.tolist()}
            assert len(colours) == 1, "one flat colour per object"
            (rgb,) = colours
            colour = next(k for k, v in PALETTE.items() if v == rgb)
            n = len(filled)
            shape = "square" if n == 144 else "circle" if 100 <= n < 130 else "triangle" if 60 <= n < 90 else "?"
            out.append((colour, shape, r, c))
    return out


def solve(objects: list[tuple[str, str, int, int]], question: str) -> str:
    """Answer a question from the objects alone (an independent reading of the templates)."""

    def one(colour=None, shape=None):  # noqa: ANN001, ANN202
        found = [o for o in objects if colour in (None, o[0]) and shape in (None, o[1])]
        assert len(found) == 1, f"{question!r} is ambiguous or about nothing: {found}"
        return found[0]

    if m := re.fullmatch(r"what colour is the (\w+) \?", question):
        return one(shape=m[1])[0]
    if m := re.fullmatch(r"what shape is the (\w+) object \?", question):
        return one(colour=m[1])[1]
    if m := re.fullmatch(r"how many (\w+) (objects )?are there \?", question):
        key = 0 if m[2] else 1
        return NUMBERS[sum(o[key] == m[1] for o in objects)]
    if m := re.fullmatch(r"which (row|column) is the (\w+) (\w+) in \?", question):
        o = one(m[2], m[3])
        return ROWS[o[2]] if m[1] == "row" else COLS[o[3]]
    if m := re.fullmatch(r"is the (\w+) (\w+) (above|left of) the (\w+) (\w+) \?", question):
        a, b = one(m[1], m[2]), one(m[4], m[5])
        return "yes" if (a[2] < b[2] if m[3] == "above" else a[3] < b[3]) else "no"
    if m := re.fullmatch(r"is there a (\w+) (\w+) \?", question):
        return "yes" if any(o[:2] == (m[1], m[2]) for o in objects) else "no"
    raise AssertionError(f"unknown question {question!r}")


def split_prompt(prompt: str) -> tuple[list[tuple[str, str]], str]:
    """(objects named in the context, question)."""
    assert prompt.startswith("<image> ")
    body = prompt[len("<image> ") :]
    if body.startswith("there is "):
        context, question = body.split(" . ", 1)
        named = [tuple(x.split()) for x in re.findall(r"a (\w+ \w+)", context)]
        return named, question
    return [], body


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b, c = make_qa(40, "train", 3), make_qa(40, "train", 3), make_qa(40, "train", 4)
    assert [(e.prompt, e.answer, e.scene) for e in a] == [(e.prompt, e.answer, e.scene) for e in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))
    assert [e.prompt for e in a] != [e.prompt for e in c]


def test_splits_are_disjoint_scenes() -> None:
    train = {s.key for s in make_scenes(3000, "train")}
    test = {s.key for s in make_scenes(3000, "test")}
    assert train and test and not (train & test)
    with pytest.raises(ValueError, match="split must be"):
        make_scenes(1, "val")  # type: ignore[arg-type]


def test_every_answer_matches_the_image() -> None:
    examples = make_qa(600, "test", 0, per_scene=2) + make_qa(300, "train", 1)
    kinds = {(e.kind, e.needs_image) for e in examples}
    assert {k for k, needs in kinds if needs} == set(shapes.KINDS)
    assert {k for k, needs in kinds if not needs} == {"colour", "shape", "exists"}
    for e in examples:
        objects = read_image(e.image)
        expected = [(o.colour, o.shape, o.row, o.col) for o in e.scene.objects]
        assert sorted(objects, key=lambda o: (o[2], o[3])) == expected
        _, question = split_prompt(e.prompt)
        assert solve(objects, question) == e.answer, e.prompt


def test_text_guessable_answers_follow_from_the_text_and_the_others_do_not() -> None:
    for e in make_qa(600, "test", 2):
        named, question = split_prompt(e.prompt)
        objects = read_image(e.image)
        assert all(any(o[:2] == n for o in objects) for n in named), "the context only names real objects"
        m = re.fullmatch(
            r"what colour is the (\w+) \?|what shape is the (\w+) object \?|is there a (\w+ \w+) \?", question
        )
        if not e.needs_image:
            assert m is not None, e.prompt
            if m[1]:
                from_text = [c for c, s in named if s == m[1]]
            elif m[2]:
                from_text = [s for c, s in named if c == m[2]]
            else:
                from_text = ["yes"] if tuple(m[3].split()) in named else []
            assert from_text and set(from_text) == {e.answer}, e.prompt
        elif m is not None:  # same question form, but the text names nothing that answers it
            if m[1]:
                assert all(s != m[1] for _, s in named), e.prompt
            elif m[2]:
                assert all(c != m[2] for c, _ in named), e.prompt
            else:
                assert tuple(m[3].split()) not in named, e.prompt


def test_captions_list_every_object_in_reading_order() -> None:
    for e in make_captions(50, "test"):
        objects = read_image(e.image)
        expect = " , ".join(f"a {c} {s} at {ROWS[r]} {COLS[k]}" for c, s, r, k in objects) + " ."
        assert e.answer == expect and e.prompt == "<image> describe the image ."


def test_codebook_quantises_each_cell_to_its_place_and_object() -> None:
    """cell_codebook + CodebookProcessor give, for the cell at (row, col), code
    13 * (3 * row + col) + 0 when it is empty, + 1 + 3 * colour + shape for an object:
    the image is read back without loss."""
    codebook = cell_codebook()
    assert codebook.shape == (9 * 13, 3)
    codes = [f"<img_{k}>" for k in range(len(codebook))]
    proc = CodebookProcessor(word_tokenizer(WORDS, ("<image>", "<soi>", "<eoi>", *codes)), codebook, (3, 3), 48)
    colours, shape_names = list(PALETTE), ["square", "circle", "triangle"]
    for e in make_drawings(100, "test", with_text=False):
        got = [proc.code_ids.index(i) for i in proc.encode_image(e.image)]
        expect = [13 * cell for cell in range(9)]
        for c, s, r, k in read_image(e.image):
            expect[3 * r + k] += 1 + 3 * colours.index(c) + shape_names.index(s)
        assert got == expect
        at = {(o.row, o.col): o for o in e.scene.objects}
        assert got == [shapes.cell_code(r, c, at.get((r, c))) for r in range(3) for c in range(3)]


def test_every_word_is_in_the_vocabulary() -> None:
    tok = word_tokenizer(WORDS)
    texts = [e.prompt + " " + e.answer for e in make_qa(300, "test")] + [e.answer for e in make_captions(50)]
    ids = tok([t.replace("<image>", "") for t in texts], add_special_tokens=False)["input_ids"]
    assert all(tok.unk_token_id not in row for row in ids)


def test_kinds_restricts_every_question_and_leaves_the_default_stream_unchanged() -> None:
    only = make_qa(60, "test", 0, kinds=("colour",))  # text-guessable ones too (p_text 0.25)
    assert {e.kind for e in only} == {"colour"} and {e.needs_image for e in only} == {True, False}
    two = make_qa(60, "test", 0, p_text=0.0, kinds=("count", "relation"))
    assert {e.kind for e in two} == {"count", "relation"}
    assert [e.prompt for e in make_qa(30, "test", 3)] == [e.prompt for e in make_qa(30, "test", 3, kinds=None)]
    weighted = make_qa(80, "test", 0, p_text=0.0, kind_weights={"relation": 5.0}, kinds=("relation", "row"))
    assert {e.kind for e in weighted} == {"relation", "row"}
    assert sum(e.kind == "relation" for e in weighted) > sum(e.kind == "row" for e in weighted)


@pytest.mark.parametrize(
    "kw, err, match",
    [
        ({"kinds": "colour"}, TypeError, r"kinds=\('colour',\)"),
        ({"kinds": ("color",)}, ValueError, "unknown question kinds"),
        ({"kinds": ()}, ValueError, "at least one kind"),
        ({"kinds": ("row",), "kind_weights": {"row": 0.0}}, ValueError, "weight 0"),
        ({"kinds": ("count",), "p_text": 1.0}, ValueError, "text-guessable questions only"),
    ],
)
def test_kinds_misuse(kw, err, match) -> None:  # noqa: ANN001
    with pytest.raises(err, match=match):
        make_qa(4, "test", 0, **kw)
