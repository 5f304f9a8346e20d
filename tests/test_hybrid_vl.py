"""Vision-language wrappers over hybrid stacks: LFM2-VL (tiles, thumbnail, per-tile projector), LFM3-VL.

The cell test edits ONE feature of the vision tower's output (a plain PyTorch hook on the HF
module) and checks that exactly the position the layout names for that (image, tile, cell)
changes in the language model's input: it pins the pixel-unshuffle order, the tile / thumbnail
order and the masked_scatter order against the model's own code. The projector tests check that
a projector called once per tile shows every call in hook_vision_out / hook_projector_out, and
that an edit there equals the same edit made on the bare model.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import pair_for

from hooks_mm import Modality


def _tower_edit(t: int, patch: int, value: float = 10.0) -> Any:
    """Forward hook adding ``value`` to patch ``patch`` of tile ``t`` of the vision tower's output."""

    def hook(m: Any, args: Any, out: Any) -> Any:
        x = out.last_hidden_state.clone()
        x[t, patch] += value
        out.last_hidden_state = x
        return out

    return hook


def _bare(p: Any, hook: Any | None = None, **kwargs: Any) -> Any:
    handle = p.bare.get_submodule("model.vision_tower").register_forward_hook(hook) if hook else None
    try:
        with torch.no_grad():
            return p.bare(**p.inputs, **kwargs)
    finally:
        if handle is not None:
            handle.remove()


def _units(plans: list[torch.Tensor]) -> list[tuple[int, int]]:
    """(image, tile) of every pixel_values entry, in order."""
    return [(k, t) for k, plan in enumerate(plans) for t in range(int(plan[:, 0].max()) + 1)]


def test_lfm2_vl_one_vision_feature_moves_exactly_its_planned_cell() -> None:
    """Patch (i, j) of tile t (its spatial_shapes grid) reaches exactly cell (i // f, j // f) of that tile."""
    p = pair_for("lfm2_vl")
    config = p.model.hf_model.config
    f = config.downsample_factor
    layout = p.model.layout(p.inputs)
    plans = p.model.adapter.image_plans(config, p.inputs)
    units = _units(plans)
    shapes = p.inputs["spatial_shapes"].tolist()
    assert len(units) == len(shapes) == int(p.inputs["pixel_values"].shape[0])
    assert [len(plan) for plan in plans] == [sum(h * w // f**2 for h, w in shapes[:5]), 3, 11]  # 4 crops + thumbnail
    clean = _bare(p, output_hidden_states=True).hidden_states[0]
    for unit, (k, t) in enumerate(units):
        h, w = shapes[unit]
        for i, j in {(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, 1)}:
            edited = _bare(p, _tower_edit(unit, i * w + j), output_hidden_states=True).hidden_states[0]
            moved = ((edited - clean).abs().amax(-1) > 1e-6) & p.real
            at = (layout.image_id == k) & (layout.tile == t) & (layout.grid_row == i // f)
            at &= layout.grid_col == j // f
            assert int(at.sum()) == 1 and torch.equal(moved, at), (unit, (i, j))


def test_lfm2_vl_thumbnail_is_the_last_tile_of_a_cropped_image() -> None:
    """A cropped image: rows x cols crops of the tile grid, then the thumbnail at the single-tile size; a small
    image: one tile (the processor's layout, read back from the plan)."""
    p = pair_for("lfm2_vl")
    plans = p.model.adapter.image_plans(p.model.hf_model.config, p.inputs)
    tiles = [[(int(plan[plan[:, 0] == t, 1].max()) + 1, int(plan[plan[:, 0] == t, 2].max()) + 1)
              for t in range(int(plan[:, 0].max()) + 1)] for plan in plans]  # fmt: skip
    assert tiles == [[(2, 2)] * 4 + [(2, 1)], [(1, 3)], [(2, 2)] * 2 + [(1, 3)]]


def test_lfm2_vl_projector_hooks_hold_every_tile() -> None:
    """The projector runs once per tile: hook_projector_out holds every tile's rows, in the order the image
    positions are filled (equal to the model's embeddings there), hook_vision_out every tile's patches."""
    p = pair_for("lfm2_vl")
    _, cache = p.model.run_with_cache(p.inputs, names_filter=["hook_vision_out", "hook_projector_out"])
    bare = _bare(p, output_hidden_states=True)
    img = p.model.layout(p.inputs).modality == Modality.IMAGE
    assert torch.equal(cache["hook_projector_out"], bare.hidden_states[0][img])
    shapes = p.inputs["spatial_shapes"]
    assert cache["hook_vision_out"].shape[0] == int((shapes[:, 0] * shapes[:, 1]).sum())


@pytest.mark.parametrize("hook", ["hook_projector_out", "hook_vision_out"])
def test_lfm2_vl_projector_edit_equals_the_same_edit_on_the_bare_model(hook: str) -> None:
    """Adding 10 to one row of hook_vision_out (patch (i, j) of a tile) or of hook_projector_out (one image
    position) gives the logits of the bare model edited there; only that position moves at layer 0."""
    p = pair_for("lfm2_vl")
    shapes = p.inputs["spatial_shapes"].tolist()
    img = p.model.layout(p.inputs).modality == Modality.IMAGE
    f = p.model.hf_model.config.downsample_factor
    unit, (i, j) = 6, (3, 2)  # tile 1 of the third image (row 1)
    patches, cells = [0], [0]
    for h, w in shapes:
        patches.append(patches[-1] + h * w)
        cells.append(cells[-1] + h * w // f**2)
    h, w = shapes[unit]
    cell = cells[unit] + (i // f) * (w // f) + j // f  # the image position (row-major) of that patch's cell
    row = patches[unit] + i * w + j if hook == "hook_vision_out" else cell

    def add(x: torch.Tensor, hook: Any) -> torch.Tensor:
        x = x.clone()
        x[row] += 10.0
        return x

    cache: dict[str, torch.Tensor] = {}
    keep = ("blocks.0.hook_resid_pre", lambda x, hook: cache.__setitem__("r", x.detach()))
    logits = p.model.run_with_hooks(p.inputs, fwd_hooks=[(hook, add), keep])
    if hook == "hook_vision_out":
        expected = _bare(p, _tower_edit(unit, i * w + j), output_hidden_states=True)
    else:  # the projector output of that tile, at that cell
        calls = []

        def proj(m: Any, args: Any, out: torch.Tensor) -> torch.Tensor | None:
            calls.append(None)
            if len(calls) - 1 != unit:
                return None
            out = out.clone()
            out[0, i // f, j // f] += 10.0
            return out

        handle = p.bare.get_submodule("model.multi_modal_projector").register_forward_hook(proj)
        try:
            expected = _bare(p, output_hidden_states=True)
        finally:
            handle.remove()
    torch.testing.assert_close(logits, expected.logits, rtol=0, atol=1e-5)
    moved = (cache["r"] - _bare(p, output_hidden_states=True).hidden_states[0]).abs().amax(-1) > 1e-6
    assert torch.equal(moved.nonzero(), img.nonzero()[cell][None])


def test_lfm3_vl_one_vision_feature_moves_exactly_its_planned_cell() -> None:
    """The tower's patches come grouped by 2x2 merge block (the processor's order): patch n of image k is in block
    n // 4, which is cell (block // (w / 2), block % (w / 2)) of that image's grid."""
    p = pair_for("lfm3_vl")
    layout = p.model.layout(p.inputs)
    m = p.model.hf_model.config.vision_config.spatial_merge_size
    grids = p.inputs["image_grid_thw"].tolist()
    clean = _bare(p, output_hidden_states=True).hidden_states[0]
    start = 0
    for k, (_, h, w) in enumerate(grids):
        for n in {0, 3, 4, h * w - 1, (h * w) // 2 + 1}:
            block = n // m**2
            cell = (block // (w // m), block % (w // m))

            def hook(mod: Any, args: Any, out: Any, row: int = start + n) -> Any:
                x = out.last_hidden_state.clone()
                x[row, 0] += 10.0  # one channel: a constant shift is what LayerNorm removes
                out.last_hidden_state = x
                return out

            edited = _bare(p, hook, output_hidden_states=True).hidden_states[0]
            moved = ((edited - clean).abs().amax(-1) > 1e-6) & p.real
            at = (layout.image_id == k) & (layout.grid_row == cell[0]) & (layout.grid_col == cell[1])
            assert int(at.sum()) == 1 and torch.equal(moved, at), (k, n, cell)
        start += h * w


def test_lfm3_vl_projector_hooks_hold_the_image_and_the_video_call() -> None:
    """LFM3-VL projects its images and its videos in two calls: hook_projector_out holds both, the image rows
    then the video rows, equal to the model's embeddings at the image positions then the video positions."""
    p = pair_for("lfm3_vl_video")
    _, cache = p.model.run_with_cache(p.inputs, names_filter=["hook_vision_out", "hook_projector_out"])
    embeds = _bare(p, output_hidden_states=True).hidden_states[0]
    layout = p.model.layout(p.inputs)
    img, vid = layout.modality == Modality.IMAGE, layout.modality == Modality.VIDEO
    assert img.any() and vid.any()
    assert torch.equal(cache["hook_projector_out"], torch.cat([embeds[img], embeds[vid]]))
    n = sum(int(g.prod()) for key in ("image_grid_thw", "video_grid_thw") for g in p.inputs[key])
    assert cache["hook_vision_out"].shape[0] == n


@pytest.mark.parametrize("family", ["minicpmv4_6", "minicpmv4_7", "minicpm_ocr"])
def test_minicpm_one_vision_feature_moves_exactly_its_planned_cell(family: str) -> None:
    """16x (MiniCPM-V 4.6): patch (i, j) of a unit entering the window merger (2x2 windows, then the merger's 2x2)
    reaches exactly cell (i // 4, j // 4); 4x (MiniCPM-OCR): the tower's output patch (i, j) reaches (i // 2, j // 2).
    Tile 0 is the source image, tiles 1.. its slices, in target_sizes order."""
    p = pair_for(family)
    config = p.model.hf_model.config
    layout = p.model.layout(p.inputs)
    plans = p.model.adapter.image_plans(config, p.inputs)
    units = _units(plans)
    sizes = p.inputs["target_sizes"].tolist()
    assert len(units) == len(sizes) and [int(plan[:, 0].max()) + 1 for plan in plans] == [4, 1, 4]
    sixteen = config.downsample_mode == "16x"
    d, path = (4, "model.vision_tower.vit_merger") if sixteen else (2, "model.vision_tower")
    clean = _bare(p, output_hidden_states=True).hidden_states[0]
    start = 0
    for unit, (k, t) in enumerate(units):
        h, w = sizes[unit]
        for i, j in {(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, 1)}:
            row = start + i * w + j

            def pre(mod: Any, args: Any, row: int = row) -> Any:
                x = args[0].clone()
                x[0, row, 0] += 10.0
                return (x, *args[1:])

            def post(mod: Any, args: Any, out: Any, row: int = row) -> Any:
                x = out.last_hidden_state.clone()
                x[0, row, 0] += 10.0
                out.last_hidden_state = x
                return out

            module = p.bare.get_submodule(path)
            handle = module.register_forward_pre_hook(pre) if sixteen else module.register_forward_hook(post)
            try:
                with torch.no_grad():
                    edited = p.bare(**p.inputs, output_hidden_states=True).hidden_states[0]
            finally:
                handle.remove()
            moved = ((edited - clean).abs().amax(-1) > 1e-6) & p.real
            at = (layout.image_id == k) & (layout.tile == t) & (layout.grid_row == i // d)
            at &= layout.grid_col == j // d
            assert int(at.sum()) == 1 and torch.equal(moved, at), (family, unit, (i, j))
        start += sizes[unit][0] * sizes[unit][1]


def test_minicpm_merger_list_is_hook_projector_out_and_an_edit_lands() -> None:
    """model.merger returns one tensor per unit: hook_projector_out is their rows, equal to the model's embeddings
    at the image positions; an edit of one row moves that position only."""
    p = pair_for("minicpmv4_6")
    _, cache = p.model.run_with_cache(p.inputs, names_filter=["hook_projector_out"])
    embeds = _bare(p, output_hidden_states=True).hidden_states[0]
    img = p.model.layout(p.inputs).modality == Modality.IMAGE
    assert torch.equal(cache["hook_projector_out"], embeds[img])

    def add(x: torch.Tensor, hook: Any) -> torch.Tensor:
        x = x.clone()
        x[5] += 10.0
        return x

    seen: dict[str, torch.Tensor] = {}
    keep = ("blocks.0.hook_resid_pre", lambda x, hook: seen.__setitem__("r", x.detach()))
    p.model.run_with_hooks(p.inputs, fwd_hooks=[("hook_projector_out", add), keep])
    moved = (seen["r"] - embeds).abs().amax(-1) > 1e-6
    assert torch.equal(moved.nonzero(), img.nonzero()[5][None])


def test_minicpm_videos_are_refused_naming_the_reason() -> None:
    p = pair_for("minicpmv4_6")
    with pytest.raises(ValueError, match="videos are not supported"):
        p.model.layout({**p.inputs, "pixel_values_videos": p.inputs["pixel_values"]})


def test_lfm2_vl_tiles_without_markers_are_refused() -> None:
    """use_image_special_tokens=False writes an image's tiles (and adjacent images) as one run: refused, named."""
    p = pair_for("lfm2_vl")
    ids = p.inputs["input_ids"].clone()
    image = p.model.hf_model.config.image_token_id
    first = int((ids[0] == image).nonzero()[0, 0])
    ids[0, first + 4] = image  # the <|img_row_1_col_2|> marker between the first two crops
    with pytest.raises(ValueError, match="use_image_special_tokens=True"):
        p.model.adapter.image_plans(p.model.hf_model.config, {**p.inputs, "input_ids": ids})
