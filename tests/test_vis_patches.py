"""Patch heatmaps: a value planted at a known image position lands in the right cell of the
right image, in the PNG's pixels and in the HTML cells, for every grid type.

Expected cells are computed from the input ids and the configs (not from the layout)."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg

from hooks_mm import HookedMLLM, zoo
from hooks_mm.vis import patch_heatmap, patch_heatmap_html, patch_maps, tile_grid_from_tokens
from hooks_mm.vis.patches import infer_tile_grid

HOT = np.array(colormaps["viridis"](1.0)[:3]) * 255
COLD = np.array(colormaps["viridis"](0.0)[:3]) * 255

_MODELS: dict[str, tuple] = {}


def model_and_layout(family: str):
    if family not in _MODELS:
        tiny = zoo.build(family)
        model = HookedMLLM(tiny.model, tiny.processor)
        _MODELS[family] = (tiny, model.layout(tiny.inputs))
    return _MODELS[family]


def runs(row_mask: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal [start, end) runs of True."""
    out: list[list[int]] = []
    for p in row_mask.nonzero().flatten().tolist():
        if out and out[-1][1] == p:
            out[-1][1] = p + 1
        else:
            out.append([p, p + 1])
    return [tuple(r) for r in out]


# --- expected (row, position) -> (image index, panel, cell) from ids + config ------------


def llava_cases():
    tiny, _ = model_and_layout("llava")
    cfg = tiny.model.config
    side = cfg.vision_config.image_size // cfg.vision_config.patch_size
    pos = (tiny.inputs["input_ids"][0] == cfg.image_token_index).nonzero().flatten()
    # row 0 holds two images of side*side tokens each, in order
    return [
        (0, int(pos[side * side + 2 * side + 1]), 1, "patches", (2, 1), False),
        (0, int(pos[3]), 0, "patches", (0, 3), False),
    ]


def llava_next_cases():
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    tiny, _ = model_and_layout("llava_next")
    cfg = tiny.model.config
    tile, patch = cfg.vision_config.image_size, cfg.vision_config.patch_size
    side = tile // patch
    shapes = []
    for size in tiny.inputs["image_sizes"][:2].tolist():  # row 0 holds images 0 and 1
        gh, gw = get_anyres_image_grid_shape(size, cfg.image_grid_pinpoints, tile)
        shapes.append(tuple(unpad_image(torch.zeros(1, gh * side, gw * side), torch.tensor(size)).shape[1:]))
    pos = (tiny.inputs["input_ids"][0] == cfg.image_token_index).nonzero().flatten()
    start1 = side * side + shapes[0][0] * (shapes[0][1] + 1)
    w1 = shapes[1][1]

    def hi(r, c):
        return int(pos[start1 + side * side + r * (w1 + 1) + c])

    return [
        (0, hi(5, 3), 1, "high-res", (5, 3), False),
        (0, hi(2, w1), 1, "high-res", (2, 0), True),  # the newline token closing row 2
        (0, int(pos[start1 + 1 * side + 2]), 1, "base", (1, 2), False),
        (0, int(pos[side * side + 1 * (shapes[0][1] + 1) + 7]), 0, "high-res", (1, 7), False),
    ]


def idefics3_cases():
    tiny, _ = model_and_layout("idefics3")
    ids = tiny.inputs["input_ids"][1]  # row 1: one image split 2x2, then the global tile
    img_runs = runs(ids == tiny.model.config.image_token_id)
    side = 4
    out = []
    for start, end in img_runs:
        marker = int(ids[start - 1])
        if marker == 102:  # <global-img> in the zoo's Idefics vocabulary
            out.append((1, start + 2 * side + 3, 0, "global", (2, 3), False))
        else:
            r, c = divmod(marker - 103, 6)  # <row_{r+1}_col_{c+1}> = 103 + 6r + c
            if (r, c) == (0, 1):
                out.append((1, start + 3 * side + 0, 0, "tiles 2x2", (3 + r * side, 0 + c * side), False))
            if (r, c) == (1, 0):
                out.append((1, start + 1 * side + 2, 0, "tiles 2x2", (1 + r * side, 2 + c * side), False))
    assert len(out) == 3
    return out


def qwen2_vl_cases():
    tiny, _ = model_and_layout("qwen2_vl")
    cfg = tiny.model.config
    merge = cfg.vision_config.spatial_merge_size
    thw = tiny.inputs["image_grid_thw"].tolist()
    pos = (tiny.inputs["input_ids"][0] == cfg.image_token_id).nonzero().flatten()
    n0 = thw[0][0] * thw[0][1] * thw[0][2] // merge**2
    h1, w1 = thw[1][1] // merge, thw[1][2] // merge
    assert (h1, w1) == (3, 2)
    return [
        (0, int(pos[n0 + 2 * w1 + 0]), 1, "patches", (2, 0), False),
        (0, int(pos[1 * (thw[0][2] // merge) + 2]), 0, "patches", (1, 2), False),
    ]


def emu3_cases():
    tiny, _ = model_and_layout("emu3")
    ids = tiny.inputs["input_ids"][0]
    gw = int(tiny.inputs["image_sizes"][1, 1]) // 8  # image 1's width in px, 8 px per VQ code
    start = runs(ids == 3)[1][0]  # second <image> run of row 0 = image 1 (gh x (gw + 1))
    return [
        (0, start + 2 * (gw + 1) + 3, 1, "patches", (2, 3), False),
        (0, start + 1 * (gw + 1) + gw, 1, "patches", (1, 0), True),
    ]  # end-of-row token


def anygpt_cases():
    tiny, _ = model_and_layout("anygpt")
    lo, hi = tiny.model.config.modality_token_ranges["image"]
    ids = tiny.inputs["input_ids"][0]
    cols = tiny.model.config.modality_grids["image"][1]
    start = runs((ids >= lo) & (ids < hi))[1][0]
    return [(0, start + 3 * cols + 2, 1, "patches", (3, 2), False)]


CASES = {
    "llava": llava_cases,
    "llava_next": llava_next_cases,
    "idefics3": idefics3_cases,
    "qwen2_vl": qwen2_vl_cases,
    "emu3": emu3_cases,
    "anygpt": anygpt_cases,
}


# --- reading the picture back -----------------------------------------------------------


def cell_colors(fig, maps) -> dict[tuple[int, str, tuple[int, int], bool], np.ndarray]:
    """RGB at the centre of every cell of every panel, from the rendered PNG buffer."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    buf = np.asarray(canvas.buffer_rgba())[..., :3].astype(float)
    height = buf.shape[0]
    axes = {ax.get_label(): ax for ax in fig.axes}
    out = {}
    for m in maps:
        for p in m.panels:
            ax = axes[f"image{m.image_index}/{p.name}"]
            rows, cols = p.shape
            for r in range(rows):
                for c in range(cols):
                    x, y = ax.transData.transform((c + 0.5, r + 0.5))
                    out[(m.image_index, p.name, (r, c), False)] = buf[round(height - y), round(x)]
                if p.separators is not None:
                    x, y = ax.transData.transform((cols + 0.625, r + 0.5))
                    out[(m.image_index, p.name, (r, 0), True)] = buf[round(height - y), round(x)]
    return out


class Cells(HTMLParser):
    """(image, panel, (r, c), is_separator) -> css background of each HTML cell."""

    def __init__(self):
        super().__init__()
        self.cells, self.panel, self.sep = {}, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class", "")
        if "hmm-panel" in cls.split():
            self.panel = (int(a["data-image"]), a["data-panel"])
        elif "hmm-grid" in cls.split():
            self.sep = "hmm-sep" in cls.split()
        elif cls == "hmm-cell":
            key = (*self.panel, (int(a["data-r"]), int(a["data-c"])), self.sep)
            self.cells[key] = a["style"]


@pytest.mark.parametrize("family", list(CASES))
def test_planted_value_lands_in_its_cell(family: str) -> None:
    _, layout = model_and_layout(family)
    hot_css = "rgba({},{},{},1)".format(*(round(x) for x in HOT))
    for row, pos, image, panel, cell, sep in CASES[family]():
        values = torch.zeros(layout.shape)
        values[row, pos] = 1.0
        maps = patch_maps(values, layout, row)
        # the PNG: exactly one hot cell, the expected one; every other cell cold
        colors = cell_colors(patch_heatmap(values, layout, row), maps)
        want = (image, panel, cell, sep)
        assert want in colors, f"{family}: no cell {want} in {sorted(colors)[:5]}..."
        for key, rgb in colors.items():
            target = HOT if key == (image, panel, cell, sep) else COLD
            assert np.abs(rgb - target).max() < 8, f"{family} position {pos}: cell {key} is {rgb}, expected {target}"
        # the HTML: the same single hot cell
        parser = Cells()
        parser.feed(patch_heatmap_html(values, layout, row).html)
        hot = [k for k, style in parser.cells.items() if hot_css in style]
        assert hot == [(image, panel, cell, sep)], f"{family} position {pos}: hot HTML cells {hot}"


def test_every_image_position_is_drawn_once() -> None:
    """Every image position of every family with a patch grid appears in exactly one cell (not Mllama's
    cross-attention keys nor Idefics2's perceiver latents nor BLIP-2's query slots, which refuse a heatmap: tested
    below and in tests/test_blip.py)."""
    for family in sorted(zoo.BUILDERS):
        no_grid = ("llama", "mllama", "idefics2", "kosmos2_5", "aria", "blip2", "instructblip", "instructblipvideo")
        if family in no_grid:  # cross-attention keys, resampler / learned-query latents, Q-Former query slots
            continue
        _, layout = model_and_layout(family)
        for row in range(layout.shape[0]):
            img = (layout.modality[row] == 1).nonzero().flatten().tolist()
            if not img:  # audio-only models, video-only rows
                continue
            maps = patch_maps(torch.arange(layout.shape[1]).float(), layout, row)
            drawn = []
            for m in maps:
                for p in m.panels:
                    drawn += p.positions[p.positions >= 0].tolist()
                    if p.separators is not None:
                        drawn += p.separator_positions[p.separator_positions >= 0].tolist()
                    shown = ~np.isnan(p.values)
                    assert np.array_equal(p.values[shown], p.positions[shown])
            assert sorted(drawn) == img, f"{family} row {row}"


def test_tile_grid_from_tokens_and_inference() -> None:
    tiny, layout = model_and_layout("idefics3")
    ids = tiny.inputs["input_ids"]
    for row, expected in ((0, {0: (1, 2)}), (1, {0: (2, 2)})):
        tokens = [
            f"<row_{(i - 103) // 6 + 1}_col_{(i - 103) % 6 + 1}>" if 103 <= i < 139 else str(i)
            for i in ids[row].tolist()
        ]
        assert tile_grid_from_tokens(tokens, layout, row) == expected
    assert infer_tile_grid(2) == (1, 2) and infer_tile_grid(4) == (2, 2) and infer_tile_grid(6) == (2, 3)
    assert infer_tile_grid(2, aspect=0.5) == (2, 1) and infer_tile_grid(6, aspect=3.0) == (1, 6)
    # a 2x1 arrangement changes where tile 1 goes
    values = torch.zeros(layout.shape)
    start = runs(ids[0] == 100)[1][0]  # tile 1 of image 0 in row 0
    values[0, start] = 1.0
    tall = patch_maps(values, layout, 0, tile_grid={0: (2, 1)})[0].panels[0]
    wide = patch_maps(values, layout, 0)[0].panels[0]
    assert tall.shape == (8, 4) and tall.values[4, 0] == 1 and wide.shape == (4, 8) and wide.values[0, 4] == 1


def test_bad_input_is_named() -> None:
    _, layout = model_and_layout("llava")
    with pytest.raises(ValueError, match="do not match the layout"):
        patch_maps(torch.zeros(5), layout, 0)
    with pytest.raises(ValueError, match="image 3 is not in this row"):
        patch_heatmap_html(torch.zeros(layout.shape), layout, 0, image=3)
    _, idefics = model_and_layout("idefics3")
    with pytest.raises(ValueError, match="does not hold the 4 split tiles"):
        patch_maps(torch.zeros(idefics.shape), idefics, 1, tile_grid=(3, 1))
    _, mllama = model_and_layout("mllama")
    with pytest.raises(ValueError, match="cross-attention keys"):
        patch_maps(torch.zeros(mllama.shape), mllama, 0)
    _, idefics2 = model_and_layout("idefics2")
    with pytest.raises(ValueError, match="no patch grid of positions .*perceiver latents.*: plot"):
        patch_maps(torch.zeros(idefics2.shape), idefics2, 0)
    _, text = model_and_layout("llama")
    with pytest.raises(ValueError, match="holds no image positions"):
        patch_maps(torch.zeros(text.shape), text, 0)
