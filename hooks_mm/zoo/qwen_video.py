"""Video input to the Qwen-VL families (the same tiny Qwen2-VL / Qwen2.5-VL models).

The family's own HF processor builds the batch; its video slot holds
:class:`~hooks_mm.media.QwenVideoProcessorPil` (transformers' Qwen2VLVideoProcessor needs
torchvision). Row 0: an image, then a 4-frame video (2 LM frames of 2x3 cells); row 1: a
2-frame video (1 LM frame of 3x2 cells), left-padded. Videos are sampled at 2 fps, so one
LM frame (2 decoded frames) lasts 1 s (``second_per_grid_ts`` in Qwen2.5-VL).
"""

from __future__ import annotations

from typing import Any

import torch

from hooks_mm.media import QwenVideoProcessorPil, moving_square
from hooks_mm.zoo.base import Tiny
from hooks_mm.zoo.qwen import _images, build_qwen2_5_vl, build_qwen2_vl

FPS = 2.0


def attach_video_processor(processor: Any, fps: float = FPS) -> Any:
    """Give a Qwen-VL processor built with ``video_processor=None`` the PIL video processor."""
    processor.video_processor = QwenVideoProcessorPil(processor.image_processor, fps=fps)
    return processor


def video_inputs(processor: Any, seed: int, factor: int) -> dict[str, torch.Tensor]:
    """Row 0: image + 4-frame video (h 2f x w 3f); row 1: 2-frame video (3f x 2f), padded."""
    image = _images(seed, factor)[0]
    videos = [moving_square(4, 2 * factor, 3 * factor, seed), moving_square(2, 3 * factor, 2 * factor, seed + 1)]
    chat = processor.apply_chat_template
    texts = [
        chat(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image"},
                        {"type": "video"},
                        {"type": "text", "text": "what is in this image and left picture ?"},
                    ],
                }
            ],
            tokenize=False,
            add_generation_prompt=True,
        ),
        chat(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "describe"}]}],
            tokenize=False,
            add_generation_prompt=True,
        ),
    ]
    out = processor(text=texts, images=[image], videos=videos, fps=FPS, return_tensors="pt", padding=True)
    inputs = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    assert bool((inputs["attention_mask"][1] == 0).any()), "row 1 should be padded"
    return inputs


def _with_video(tiny: Tiny, seed: int, patch: int) -> Tiny:
    processor = attach_video_processor(tiny.processor)
    inputs = video_inputs(processor, seed, patch * 2)
    return Tiny(model=tiny.model, inputs=inputs, processor=processor)


def build_qwen2_vl_video(seed: int = 0) -> Tiny:
    """Qwen2-VL with an image and videos (no frame rate reaches the model: times are NaN)."""
    return _with_video(build_qwen2_vl(seed), seed, 14)


def build_qwen2_5_vl_video(seed: int = 0) -> Tiny:
    """Qwen2.5-VL with an image and videos; ``second_per_grid_ts`` = 1 s per LM frame."""
    return _with_video(build_qwen2_5_vl(seed), seed, 14)
