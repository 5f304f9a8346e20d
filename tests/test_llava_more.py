"""VipLlava / Mistral3 / LlavaNextVideo layouts refuse inputs their plans cannot describe."""

import pytest
from conftest import pair_for


def test_llava_next_video_refuses_frames_that_are_not_exactly_the_patch_grid() -> None:
    # "full" keeps CLIP's CLS: HF cannot pool 17 tokens as a square; the layout must not guess
    p = pair_for("llava_next_video")
    with pytest.raises(ValueError, match="pools a square grid of frame tokens"):
        p.model.layout({**p.inputs, "vision_feature_select_strategy": "full"})


def test_mistral3_layout_needs_image_sizes() -> None:
    p = pair_for("mistral3")
    inputs = {k: v for k, v in p.inputs.items() if k != "image_sizes"}
    with pytest.raises(ValueError, match="no image_sizes: pass"):
        p.model.layout(inputs)
