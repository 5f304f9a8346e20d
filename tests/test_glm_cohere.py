"""GLM-4V family and Cohere vision wrappers: each plan entry is the feature the model writes there.

The conformance suite checks that image / video positions are the positions the model replaces;
here every (image, tile / frame, row, col) of the layout is traced to its feature: an edit of one
projector output row (GLM: one merged cell) or one tower patch (AyaVision / Cohere2Vision, whose
projector pixel-shuffles each 2x2 block of patches into one cell) must move exactly the position(s)
the plan names for it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hooks_mm import HookedMLLM, zoo
from hooks_mm.layout import Modality


def _moved(model: HookedMLLM, inputs: dict, hook: str, edit) -> torch.Tensor:  # noqa: ANN001
    """Positions whose layer-0 input changes when ``edit(x)`` is applied at ``hook``."""
    _, clean = model.run_with_cache(inputs, names_filter="blocks.0.hook_resid_pre")
    seen = {}
    model.run_with_hooks(
        inputs,
        fwd_hooks=[
            (hook, lambda x, hook: edit(x.clone())),
            ("blocks.0.hook_resid_pre", lambda x, hook: seen.update(r=x)),
        ],
    )
    return (seen["r"] - clean["blocks.0.hook_resid_pre"]).abs().amax(-1) > 1e-5


@pytest.mark.parametrize("family", ["glm4v", "glm46v", "glm_ocr", "glm4v_video"])
def test_glm_merged_cell_j_lands_where_the_plan_puts_it(family: str) -> None:
    tiny = zoo.build(family)
    model = HookedMLLM(tiny.model)
    layout = model.layout(tiny.inputs)
    video = family.endswith("video")
    grid = tiny.inputs["video_grid_thw" if video else "image_grid_thw"].tolist()
    media_id, part = (layout.video_id, layout.frame) if video else (layout.image_id, layout.tile)
    j = 0
    for k, (t, h, w) in enumerate(grid):
        rows, cols = h // 2, w // 2
        for f, r, c in [(0, 0, 1), (t - 1, rows - 1, 0), (t - 1, rows - 1, cols - 1)]:
            row = j + f * rows * cols + r * cols + c  # merger output rows: frames, then row-major cells

            def edit(x, row=row):  # noqa: ANN001, ANN202
                x[row] += 1.0
                return x

            moved = _moved(model, tiny.inputs, "hook_projector_out", edit)
            want = (media_id == k) & (part == f) & (layout.grid_row == r) & (layout.grid_col == c)
            assert int(want.sum()) == 1 and torch.equal(moved, want), (k, f, r, c)
        j += t * rows * cols
    kind = Modality.VIDEO if video else Modality.IMAGE
    assert not (layout.modality == (Modality.IMAGE if video else Modality.VIDEO)).any()
    assert int((layout.modality == kind).sum()) == j


@pytest.mark.parametrize("family", ["aya_vision", "cohere2_vision"])
def test_tower_patch_moves_only_its_pixel_shuffled_cell(family: str) -> None:
    tiny = zoo.build(family)
    model = HookedMLLM(tiny.model)
    layout = model.layout(tiny.inputs)
    side = 4  # tower patches per tile side (32 px, patch 8); 2x2 patches per cell
    tiles = [(k, t) for k in range(layout.n_images) for t in range(int(layout.tile[layout.image_id == k].max()) + 1)]
    assert len(tiles) == tiny.inputs["pixel_values"].shape[0]
    for g in (0, 2, 3, len(tiles) - 1):  # crops, the thumbnail closing image 0, a single-tile image, the last
        k, t = tiles[g]
        for pr, pc in [(0, 3), (3, 1), (2, 2)]:

            def edit(x, g=g, p=pr * side + pc):  # noqa: ANN001, ANN202
                x[g, p] += 1.0
                return x

            moved = _moved(model, tiny.inputs, "hook_vision_out", edit)
            want = (layout.image_id == k) & (layout.tile == t)
            want &= (layout.grid_row == pr // 2) & (layout.grid_col == pc // 2)
            assert int(want.sum()) == 1 and torch.equal(moved, want), (g, pr, pc)


def test_glm_image_and_video_positions_are_told_apart_by_the_video_span() -> None:
    """GLM-4V writes video frames at image_token_id: only the <|begin_of_video|> span makes them video."""
    from hooks_mm.adapters.glm_cohere import glm_image_mask, glm_video_mask

    tiny = zoo.build("glm4v_video")
    config, ids = tiny.model.config, tiny.inputs["input_ids"]
    assert (ids == config.video_token_id).sum() == 0  # <|video|> is expanded away by the processor
    video = glm_video_mask(config, ids)
    assert torch.equal(video, tiny.inputs["mm_token_type_ids"] == 2)
    assert not glm_image_mask(config, ids).any()
    # a config without the span ids (GLM's own config types require them; a hand-made one may not)
    config = SimpleNamespace(image_token_id=config.image_token_id, video_start_token_id=None, video_end_token_id=None)
    with pytest.raises(ValueError, match="video_start_token_id.*cannot be told apart"):
        glm_video_mask(config, ids)


def test_aya_vision_tiles_without_a_common_global_marker_are_refused() -> None:
    tiny = zoo.build("aya_vision")
    model = HookedMLLM(tiny.model)
    bad = dict(tiny.inputs)
    ids = bad["input_ids"].clone()
    img = ids[1] == tiny.model.config.image_token_id
    first = int(img.nonzero()[-4])  # the last tile of row 1: its marker becomes another token
    ids[1, first - 1] = 5
    bad["input_ids"] = ids
    with pytest.raises(ValueError, match="global-tile marker"):
        model.layout(bad)


def test_glm_batch_mixing_images_and_videos_is_refused() -> None:
    """HF scatters GLM-4V images into EVERY image_token_id position (video frames included), so a batch
    with both is refused by its token-count check, never run with image features in video frames."""
    from hooks_mm.media import moving_square
    from hooks_mm.zoo.base import chat_prompts
    from hooks_mm.zoo.qwen import qwen_images

    tiny = zoo.build("glm4v")
    texts = chat_prompts(tiny.processor, (["image", "video"], "what is in this picture ?"), (["video"], "describe"))
    videos = [moving_square(4, 56, 84, 0), moving_square(2, 84, 56, 1)]
    out = tiny.processor(
        text=texts, images=qwen_images(0, 28)[:1], videos=videos, fps=2.0, return_tensors="pt", padding=True
    )
    inputs = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    model = HookedMLLM(tiny.model, tiny.processor)
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model.run_with_cache(inputs)
    with torch.no_grad():
        assert torch.equal(model(zoo.build("glm4v").inputs), tiny.model(**zoo.build("glm4v").inputs).logits)


def test_tiny_glm_ocr_reloads_with_its_processor(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """GLM-OCR's model_type is not in AutoProcessor's map: the saved processor comes back as Glm46VProcessor
    (not a bare tokenizer), so to_inputs expands images as the builder's processor did."""
    monkeypatch.setenv("HOOKS_MM_CACHE", str(tmp_path))
    model = HookedMLLM.from_pretrained("tiny-glm-ocr")
    assert type(model.processor).__name__ == "Glm46VProcessor"
    tiny = zoo.build("glm_ocr")
    texts = [tiny.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe"}]}],
        tokenize=False, add_generation_prompt=True,
    )]  # fmt: skip
    from hooks_mm.zoo.qwen import qwen_images

    image = qwen_images(0, 28)[:1]
    ours = model.processor(text=texts, images=image, return_tensors="pt")
    theirs = tiny.processor(text=texts, images=image, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
