"""Families of hooks_mm/adapters/qwen_more.py beyond the conformance suite: VideoLLaMA3's compressed
video cells, and EXAONE 4.5 refused (its decoder has no pre-norms)."""

from __future__ import annotations

import torch

from hooks_mm import HookedMLLM, Modality
from hooks_mm.media import moving_square
from hooks_mm.zoo.base import chat_prompts, processor_batch
from hooks_mm.zoo.qwen_more import PATCH, build_hyperclovax_vision_v2, build_videollama3_video


def test_videollama3_layout_follows_the_video_compression_mask() -> None:
    """A video whose frames repeat: the processor drops the static cells of frames 1.. and HF drops their
    features before the scatter. Each video position must show the projector row of its (frame, row, col)."""
    tiny = build_videollama3_video()
    processor, factor = tiny.processor, 2 * PATCH
    frames = moving_square(4, 2 * factor, 3 * factor, seed=3)
    frames[2] = frames[1]  # frame 2 repeats frame 1: its cells are dropped (but one)
    frames[3] = frames[0].copy()  # frame 3 differs from frame 2 everywhere the square moved
    texts = chat_prompts(processor, (["video"], "describe"), (["image"], "describe this image"))
    img = moving_square(1, factor, factor, seed=4)
    inputs = processor_batch(processor, texts, videos=[frames], images=img)
    keep = inputs["video_compression_mask"]
    assert 0 < int(keep.sum()) < len(keep)  # some cells compressed away, not all

    model = HookedMLLM(tiny.model, processor)
    layout = model.layout(inputs)
    video = layout.modality == Modality.VIDEO
    assert int(video.sum()) == int(keep.sum())
    # independent: the video features the projector returns (all cells, frame-major) and the embeddings
    # the language model receives
    projected: list[torch.Tensor] = []  # HF projects the images, then the videos
    seen: dict[str, torch.Tensor] = {}
    hf = tiny.model
    handles = [
        hf.model.projector.register_forward_hook(lambda m, i, o: projected.append(o)),
        hf.model.language_model.register_forward_pre_hook(
            lambda m, a, k: seen.__setitem__("embeds", k["inputs_embeds"]), with_kwargs=True
        ),
    ]
    try:
        with torch.no_grad():
            hf(**inputs)
    finally:
        for h in handles:
            h.remove()
    rows, cols = int(inputs["video_grid_thw"][0][1]) // 2, int(inputs["video_grid_thw"][0][2]) // 2
    for b, p in video.nonzero().tolist():
        f, r, c = int(layout.frame[b, p]), int(layout.grid_row[b, p]), int(layout.grid_col[b, p])
        assert keep[f * rows * cols + r * cols + c]
        assert torch.equal(seen["embeds"][b, p], projected[1][f * rows * cols + r * cols + c])


def test_hyperclovax_logits_post_is_its_head() -> None:
    """HyperCLOVAX-Vision-V2's head multiplies the logits by logits_scaling (0.7 in the tiny config):
    unembedding ln_final's output and applying the row's logits_post gives the model's logits."""
    tiny = build_hyperclovax_vision_v2()
    model = HookedMLLM(tiny.model, tiny.processor)
    logits, cache = model.run_with_cache(tiny.inputs, names_filter="ln_final.hook_normalized")
    unembedded = tiny.model.get_output_embeddings()(cache["ln_final.hook_normalized"])
    assert not torch.allclose(unembedded, logits, atol=1e-3)  # the scaling matters here
    assert torch.allclose(model.adapter.logits_post(tiny.model, unembedded), logits, atol=1e-5)
