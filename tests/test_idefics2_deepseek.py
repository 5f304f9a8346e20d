"""Idefics2 image grouping: split sub-images vs whole images, and no invented patch grid."""

from __future__ import annotations

import pytest
import torch

from hooks_mm import HookedMLLM, zoo
from hooks_mm.layout import Modality
from hooks_mm.zoo.base import processor_batch
from hooks_mm.zoo.idefics2_deepseek import IDEFICS2_PROMPTS
from hooks_mm.zoo.llava import sample_images


@pytest.fixture(scope="module")
def tiny() -> zoo.Tiny:
    return zoo.build("idefics2")


def test_split_images_group_five_tiles_of_latents(tiny: zoo.Tiny) -> None:
    m = HookedMLLM(tiny.model, tiny.processor)
    layout = m.layout(tiny.inputs)
    per = tiny.model.config.perceiver_config.resampler_n_latents
    assert layout.n_images == 3
    assert layout.grids == [[(t, 0, per) for t in range(5)]] * 3
    assert layout.grid(0, 0, 0) is None  # perceiver latents: no (row, col) grid
    img = layout.modality == Modality.IMAGE
    assert bool((layout.grid_row[img] == -1).all())


def test_unpinned_split_is_refused_and_unsplit_is_read_from_the_text(tiny: zoo.Tiny) -> None:
    m = HookedMLLM(tiny.model, tiny.processor)
    m.hf_model.config.do_image_splitting = None
    try:
        with pytest.raises(ValueError, match="do_image_splitting"):
            m.layout(tiny.inputs)
        tiny.processor.image_processor.do_image_splitting = False
        images = sample_images(0, [(32, 32), (24, 32), (32, 20)])
        inputs = processor_batch(tiny.processor, IDEFICS2_PROMPTS, images=images)
        layout = m.layout(inputs)  # adjacent whole images: groups of 2 and 1, so no splitting
        assert layout.n_images == 3
        assert all(len(tiles) == 1 for tiles in layout.grids)
        with torch.no_grad():
            assert torch.equal(m(inputs), tiny.model(**inputs).logits)
    finally:
        tiny.processor.image_processor.do_image_splitting = True
        m.hf_model.config.do_image_splitting = True
