"""ModalityLayout and selectors on hand-made batches (left/right padding, several images)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import pair_for

from hooks_mm import After, Image, Last, Modality, NonPad, Positions, Selector, Special, Text, Where
from hooks_mm.adapters import grid_plan
from hooks_mm.layout import build_layout

IMG, BOI, PAD = 9, 8, 0


def _batch(padding_side: str):  # noqa: ANN202
    """Row 0: BOI img(2x2) text text BOI img(1x3) text; row 1: BOI img(2x2) text + 5 pads."""
    row0 = [BOI, IMG, IMG, IMG, IMG, 5, 6, BOI, IMG, IMG, IMG, 7]
    row1 = [BOI, IMG, IMG, IMG, IMG, 5, 6]
    pad = [PAD] * (len(row0) - len(row1))
    row1 = pad + row1 if padding_side == "left" else row1 + pad
    ids = torch.tensor([row0, row1])
    am = (ids != PAD).long()
    plans = [grid_plan(2, 2), grid_plan(1, 3), grid_plan(2, 2)]
    return build_layout(ids, am, ids == IMG, plans, {BOI}), ids


@pytest.mark.parametrize("side", ["left", "right"])
def test_layout_cells_images_and_padding(side: str) -> None:
    layout, ids = _batch(side)
    off = 5 if side == "left" else 0
    assert layout.modality[0].tolist() == [2, 1, 1, 1, 1, 0, 0, 2, 1, 1, 1, 0]
    assert (layout.modality[1] == Modality.PAD).sum() == 5
    assert layout.image_index[0].tolist() == [-1, 0, 0, 0, 0, -1, -1, -1, 1, 1, 1, -1]
    assert layout.image_id[1, off + 1 : off + 5].tolist() == [2] * 4  # batch order
    assert layout.grid_row[0, 1:5].tolist() == [0, 0, 1, 1] and layout.grid_col[0, 1:5].tolist() == [0, 1, 0, 1]
    assert layout.grid_col[0, 8:11].tolist() == [0, 1, 2]
    assert layout.grids == [[(0, 2, 2)], [(0, 1, 3)], [(0, 2, 2)]]
    last = layout.select(Last())
    assert last.sum(1).tolist() == [1, 1] and last[1, off + 6]
    assert layout.select(Image(1))[1].sum() == 0 and layout.select(Image(1))[0].sum() == 3
    assert layout.indices(Image(0)).tolist() == [[1, 2, 3, 4], [off + 1, off + 2, off + 3, off + 4]]
    after = layout.select(After(Image()))
    assert after[0].nonzero().flatten().tolist() == [11] and after[1].nonzero().flatten().tolist() == [off + 5, off + 6]
    assert not (layout.select(~Text()) & (layout.modality == Modality.PAD)).any()
    assert "image0 2x2" in layout.describe(0) and "pad" in layout.describe(1)


def test_selectors_compose_and_round_trip_through_json() -> None:
    layout, _ = _batch("left")
    sel = (Image(0) | Last()) & ~Special()
    again = Selector.from_dict(json.loads(json.dumps(sel.to_dict())))
    assert again == sel and torch.equal(again.mask(layout), sel.mask(layout))
    assert torch.equal(layout.select(Text() | Image() | Special()), layout.select(NonPad()))
    assert torch.equal(layout.select([0, -1]), layout.select(Positions([0, 11])))
    with pytest.raises(TypeError, match="cannot be serialised"):
        Where(lambda L: L.grid_row == 0).to_dict()
    assert layout.select(Where(lambda L: L.grid_row == 0)).sum() == 2 + 3 + 2


def test_token_count_mismatch_is_a_clear_error() -> None:
    ids = torch.tensor([[BOI, IMG, IMG, IMG, 5]])
    with pytest.raises(ValueError, match="input_ids hold 3 image positions but the 1 image"):
        build_layout(ids, None, ids == IMG, [grid_plan(2, 2)])


def test_tiles_and_separators_from_a_real_anyres_model() -> None:
    """LLaVA-NeXT: base grid as tile 0, high-res grid as tile 1 with a newline per row."""
    p = pair_for("llava_next")
    layout = p.model.layout(p.inputs)
    first = layout.image_id == 0
    tiles = layout.tile[first].unique().tolist()
    assert tiles == [0, 1]
    newline = first & (layout.grid_col == -1)
    rows_tile1 = layout.grids[0][1][1]
    assert int(newline.sum()) == rows_tile1  # one separator per high-res row
    row0 = layout.select(Image(0, patches_only=True))[0]  # image 0 of row 0 is image id 0
    assert torch.equal(row0, (first & (layout.grid_col >= 0))[0])
