"""GOT-OCR2, LightOnOCR, Qianfan-OCR, DeepSeek-VL hybrid and Ovis2: every image position's (tile, row, col)
is the cell the model really writes there, and every image has the tiles its processor made.

The cell test edits ONE feature of the vision side before the merge / shuffle / convolutions (a plain
PyTorch hook on the HF module) and checks that exactly the positions the layout names for that
(image, tile, cell) change in the language model's input, nothing else: it pins the merge order,
the tile order and the masked_scatter order against the model's own code.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from conftest import pair_for

from hooks_mm import Modality
from hooks_mm.zoo.llava import sample_images
from hooks_mm.zoo.ocr import GOT_SIZES, TILED_SIZES


def _edit(index: Callable[[Any, int, int, int], Any]) -> Callable:
    """A forward hook adding 10 at ``index(x, unit, i, j)`` of the module's first output."""

    def make(unit: int, i: int, j: int) -> Callable:
        def hook(m: Any, args: Any, out: Any) -> Any:
            x = out if isinstance(out, torch.Tensor) else out.last_hidden_state
            x = x.clone()
            x[index(x, unit, i, j)] += 10.0
            if isinstance(out, torch.Tensor):
                return x
            out.last_hidden_state = x
            return out

        return hook

    return make


def _lighton_index(sizes: list[list[int]], patch: int) -> Callable:
    offsets = [0]
    for h, w in sizes:
        offsets.append(offsets[-1] + (h // patch) * (w // patch))
    return lambda x, k, i, j: (0, offsets[k] + i * (sizes[k][1] // patch) + j)


def _cases(family: str, p: Any) -> tuple[str, Callable, list[tuple[int, int]], Callable]:
    """(module path, hook factory, (i, j) pre-merge coordinates, (k, i, j) -> expected (r, c) or None)."""
    if family == "got_ocr2":  # neck map (tiles, C, 16, 16) -> two stride-2 convs: (4r, 4c) reaches only cell (r, c)
        coords = [(0, 0), (0, 12), (12, 0), (4, 8)]
        return (
            "model.vision_tower.neck",
            _edit(lambda x, t, i, j: (t, slice(None), i, j)),
            coords,
            lambda k, i, j: (i // 4, j // 4),
        )
    if family == "lighton_ocr":  # tower output over every patch of every image -> 2x2 merge (odd last row dropped)
        sizes = p.inputs["image_sizes"].tolist()
        patch = p.model.hf_model.config.vision_config.patch_size
        index = _lighton_index(sizes, patch)

        def cell(k: int, i: int, j: int) -> tuple[int, int] | None:
            rows, cols = sizes[k][0] // (2 * patch), sizes[k][1] // (2 * patch)
            return (i // 2, j // 2) if i // 2 < rows and j // 2 < cols else None

        return "model.vision_encoder", _edit(index), [(0, 0), (0, 3), (3, 0), (4, 1), (2, 3)], cell
    if family == "qianfan_ocr":  # ViT tokens [CLS, 8x8 patches] -> CLS dropped, pixel shuffle 0.5
        index = lambda x, t, i, j: (t, 1 + i * 8 + j)  # noqa: E731
        return "model.vision_tower", _edit(index), [(0, 0), (0, 7), (7, 0), (2, 5)], lambda k, i, j: (i // 2, j // 2)
    if family == "ovis2":  # ViT tokens (8x8 patches) -> hidden_stride 2 grouping
        index = lambda x, t, i, j: (t, i * 8 + j)  # noqa: E731
        path = "model.vision_tower.transformer"
        return path, _edit(index), [(0, 0), (0, 7), (7, 0), (2, 5)], lambda k, i, j: (i // 2, j // 2)
    raise KeyError(family)


def _units(plans: list[torch.Tensor]) -> list[tuple[int, int]]:
    """(image, tile) of every pixel_values entry, in order: tile t of an image is its t-th entry."""
    return [(k, t) for k, plan in enumerate(plans) for t in range(int(plan[:, 0].max()) + 1)]


def _changed(p: Any, hook: Callable, path: str) -> torch.Tensor:
    with torch.no_grad():
        clean = p.bare(**p.inputs, output_hidden_states=True).hidden_states[0]
        handle = p.bare.get_submodule(path).register_forward_hook(hook)
        try:
            edited = p.bare(**p.inputs, output_hidden_states=True).hidden_states[0]
        finally:
            handle.remove()
    return ((edited - clean).abs().amax(-1) > 1e-6) & p.real


@pytest.mark.parametrize("family", ["got_ocr2", "lighton_ocr", "qianfan_ocr", "ovis2"])
def test_one_vision_feature_moves_exactly_its_planned_cell(family: str) -> None:
    p = pair_for(family)
    layout = p.model.layout(p.inputs)
    plans = p.model.adapter.image_plans(p.model.hf_model.config, p.inputs)
    path, make, coords, cell = _cases(family, p)
    units = [(k, 0) for k in range(len(plans))] if family == "lighton_ocr" else _units(plans)
    assert len(units) == int(p.inputs["pixel_values"].shape[0])
    checked = 0
    for unit, (k, t) in enumerate(units):
        for i, j in coords:
            moved = _changed(p, make(unit, i, j), path)
            expected = cell(k, i, j)
            if expected is None:  # a patch the merger drops reaches no position
                assert not moved.any(), (family, unit, i, j)
                continue
            at = (layout.image_id == k) & (layout.tile == t) & (layout.grid_row == expected[0])
            at &= layout.grid_col == expected[1]
            assert int(at.sum()) == 1 and torch.equal(moved, at), (family, unit, (i, j), expected)
            checked += 1
    assert checked >= 3 * len(units)


@pytest.mark.parametrize("tower", ["model.vision_model", "model.high_res_vision_proj"])
def test_deepseek_vl_hybrid_both_towers_land_on_the_planned_cell(tower: str) -> None:
    """SigLIP tokens (n, 16, d) and the SAM map resampled to (n, C, 4, 4): cell (i, j) of image k reaches
    exactly the position planned (k, 0, i, j)."""
    p = pair_for("deepseek_vl_hybrid")
    layout = p.model.layout(p.inputs)
    if tower == "model.vision_model":
        make = _edit(lambda x, k, i, j: (k, i * 4 + j))
    else:
        make = _edit(lambda x, k, i, j: (k, slice(None), i, j))
    for k in range(int(p.inputs["pixel_values"].shape[0])):
        for i, j in [(0, 3), (3, 0), (1, 2)]:
            moved = _changed(p, make(k, i, j), tower)
            at = (layout.image_id == k) & (layout.tile == 0) & (layout.grid_row == i) & (layout.grid_col == j)
            assert int(at.sum()) == 1 and torch.equal(moved, at), (tower, k, i, j)


def _tiles_per_image(plans: list[torch.Tensor]) -> list[int]:
    return [int(plan[:, 0].max()) + 1 for plan in plans]


def test_tiles_per_image_are_the_image_processors() -> None:
    """GOT-OCR2 / Qianfan-OCR: ``num_patches`` (crops + thumbnail); Ovis2: its ``grids`` (1, or rows * cols
    crops + the leading thumbnail)."""
    got = pair_for("got_ocr2")
    expected = got.tiny.inputs  # the builder's processor is not kept (see build_got_ocr2); rebuild its counts
    from transformers import GotOcr2ImageProcessorPil

    counts = GotOcr2ImageProcessorPil(size={"height": 64, "width": 64})(
        sample_images(0, GOT_SIZES), crop_to_patches=True, max_patches=4
    )["num_patches"]
    plans = got.model.adapter.image_plans(got.model.hf_model.config, expected)
    assert _tiles_per_image(plans) == list(counts) and max(counts) > 1
    qianfan = pair_for("qianfan_ocr")
    counts = qianfan.tiny.processor.image_processor(sample_images(0, TILED_SIZES))["num_patches"]
    plans = qianfan.model.adapter.image_plans(qianfan.model.hf_model.config, qianfan.inputs)
    assert _tiles_per_image(plans) == list(counts) and max(counts) > 1
    ovis = pair_for("ovis2")
    grids = ovis.tiny.processor.image_processor(sample_images(0, TILED_SIZES))["grids"]
    counts = [1 if r * c == 1 else r * c + 1 for r, c in grids]
    plans = ovis.model.adapter.image_plans(ovis.model.hf_model.config, ovis.inputs)
    assert _tiles_per_image(plans) == counts and max(counts) > 1


@pytest.mark.parametrize("family", ["got_ocr2", "lighton_ocr", "qianfan_ocr", "deepseek_vl_hybrid", "ovis2"])
def test_plan_lengths_are_the_models_feature_counts(family: str) -> None:
    """Per image, as many planned positions as the model's own get_image_features gives rows."""
    p = pair_for(family)
    plans = p.model.adapter.image_plans(p.model.hf_model.config, p.inputs)
    media = {k: v for k, v in p.inputs.items() if k not in ("input_ids", "attention_mask")}
    with torch.no_grad():
        features = p.bare.model.get_image_features(**media, return_dict=True).pooler_output
    if isinstance(features, (tuple, list)):  # LightOnOCR: one tensor per image
        rows = [len(f) for f in features]
    else:  # one row of features per tile
        per_tile = features.shape[1]
        rows = [t * per_tile for t in _tiles_per_image(plans)]
        assert sum(rows) == features.shape[0] * per_tile
    assert [len(plan) for plan in plans] == rows


def test_layouts_refuse_inputs_their_plans_cannot_describe() -> None:
    got = pair_for("got_ocr2")
    ids = got.inputs["input_ids"].clone()
    first = (ids == got.model.hf_model.config.image_token_id).nonzero()[0]
    ids[first[0], first[1]] = 1  # one image token fewer: a run that is no whole number of tiles
    with pytest.raises(ValueError, match="image token count does not match the images.*not a whole number of tiles"):
        got.model.layout({**got.inputs, "input_ids": ids})
    qianfan = pair_for("qianfan_ocr")
    with pytest.raises(ValueError, match="keeps the CLS token"):
        qianfan.model.layout({**qianfan.inputs, "vision_feature_select_strategy": "full"})
    lighton = pair_for("lighton_ocr")
    with pytest.raises(ValueError, match="no image_sizes"):
        lighton.model.layout({k: v for k, v in lighton.inputs.items() if k != "image_sizes"})


def test_ovis2_indicator_tokens_are_structural_text() -> None:
    """The five indicator tokens get fixed visual-table rows: they are not image positions, and an image
    is the runs they join (``<IMG_GRID>`` / ``<IMG_COL>`` / ``<IMG_ROW>``), not each run."""
    p = pair_for("ovis2")
    config = p.model.hf_model.config
    layout = p.model.layout(p.inputs)
    indicator = torch.isin(p.inputs["input_ids"], torch.tensor(config.visual_indicator_token_ids))
    assert indicator.any() and not (layout.modality[indicator] == Modality.IMAGE).any()
    assert set(config.visual_indicator_token_ids) <= p.model.adapter.special_ids(config)
    assert layout.n_images == 3


PLACEHOLDERS = {"lighton_ocr": "<|image_pad|>", "qianfan_ocr": "<image>", "deepseek_vl_hybrid": "<image_placeholder>"}


@pytest.mark.parametrize("family", ["lighton_ocr", "qianfan_ocr", "deepseek_vl_hybrid", "ovis2"])
def test_saved_processor_expands_images_as_the_builders(family: str, tmp_path: Any) -> None:
    """Saved and loaded again (as ``tiny-<family>`` is), the processor writes the same tokens per image: Qianfan-OCR's
    plain ``video_processor = None`` attribute once sent it down the parts path, which lost image_seq_length."""
    from hooks_mm.processing import load_processor, save_processor

    p = pair_for(family)
    p.model.hf_model.config.save_pretrained(tmp_path)
    save_processor(p.tiny.processor, str(tmp_path))
    loaded = load_processor(str(tmp_path))
    text, images = [f"{PLACEHOLDERS.get(family, '<image>')} describe"], sample_images(1, [(40, 96)])
    a, b = (proc(text=text, images=images, return_tensors="pt") for proc in (p.tiny.processor, loaded))
    assert type(loaded) is type(p.tiny.processor)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
