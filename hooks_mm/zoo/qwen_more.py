"""Tiny random-weight Cosmos3-Omni, VideoLLaMA3, PaddleOCR-VL, HyperCLOVAX-Vision-V2 and EXAONE 4.5
models with their own HF processors, on the batches of :mod:`hooks_mm.zoo.qwen` (row 0: two images, row 1:
one image, left-padded; video builders: row 0 an image and a 4-frame video, row 1 a 2-frame video).

Each processor gets the Qwen-VL WordLevel tokenizer and chat template of :mod:`hooks_mm.zoo.qwen`
and its family's slow (PIL) image processor. Video processors need torchvision in transformers
5.23, so video slots hold PIL re-implementations: :class:`~hooks_mm.media.QwenVideoProcessorPil`
(Qwen3-VL / Qwen2-VL arithmetic) and :class:`VideoLlama3VideoProcessorPil` below.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import BatchFeature

from hooks_mm.media import QwenVideoProcessorPil, moving_square
from hooks_mm.processing import allow_missing_video_processor
from hooks_mm.zoo.base import Tiny, chat_prompts, init_model, lm_config, processor_batch
from hooks_mm.zoo.qwen import (
    CHAT_TEMPLATE,
    FPS,
    SPECIAL_TOKENS,
    VOCAB_SIZE,
    build_image_processor,
    build_qwen_family,
    build_tokenizer,
    mrope,
    processor_inputs,
    qwen_images,
    video_inputs,
    vision_config,
)

PATCH = 14


def _ids(processor: Any) -> dict[str, int]:
    return {t: processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def _text(processor: Any, **extra: Any) -> dict[str, Any]:
    ids = _ids(processor)
    special = dict(pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"])
    return lm_config(VOCAB_SIZE, **special) | extra


# ---------------------------------------------------------------------------------------
# Cosmos3-Omni: Qwen3-VL's modules under another name, Qwen3VLProcessor


def build_cosmos3_omni(seed: int = 0, video: bool = False) -> Tiny:
    """Cosmos3-Omni (the Qwen3-VL tiny config: deepstack after LM layers 0 and 1) with ``Qwen3VLProcessor``."""
    vision = vision_config(16, depth=3, num_position_embeddings=16, deepstack_visual_indexes=[0, 1])
    rope = mrope(4, 2, 2, mrope_interleaved=True)
    return build_qwen_family(
        "Cosmos3Omni", seed, 16, vision, video, "Qwen3VL", num_hidden_layers=3, head_dim=16, rope_parameters=rope
    )


def build_cosmos3_omni_video(seed: int = 0) -> Tiny:
    """Cosmos3-Omni with an image and videos (a ``<t seconds>`` text and a vision span per LM frame)."""
    return build_cosmos3_omni(seed, video=True)


# ---------------------------------------------------------------------------------------
# PaddleOCR-VL


def build_paddleocr_vl(seed: int = 0) -> Tiny:
    """PaddleOCR-VL (patches merged 2 x 2 in the projector, 3-axis M-RoPE) with ``PaddleOCRVLProcessor``."""
    from transformers import PaddleOCRVLConfig, PaddleOCRVLForConditionalGeneration, PaddleOCRVLProcessor
    from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import PaddleOCRVLImageProcessorPil

    factor = PATCH * 2
    image_processor = PaddleOCRVLImageProcessorPil(
        size={"shortest_edge": factor * factor, "longest_edge": (3 * factor) ** 2}, patch_size=PATCH, merge_size=2
    )
    tokenizer = build_tokenizer()
    tokenizer.image_token, tokenizer.image_token_id = "<|image_pad|>", tokenizer.convert_tokens_to_ids("<|image_pad|>")
    processor = PaddleOCRVLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    ids = _ids(processor)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = PaddleOCRVLConfig(
        text_config=_text(processor, head_dim=16, rope_parameters=mrope(2, 3, 3)),
        vision_config=dict(**vision, patch_size=PATCH, image_size=3 * factor, spatial_merge_size=2),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = init_model(PaddleOCRVLForConditionalGeneration, config, seed)
    return Tiny(model=model, inputs=processor_inputs(processor, seed, factor), processor=processor)


# ---------------------------------------------------------------------------------------
# HyperCLOVAX-Vision-V2: Qwen2.5-VL vision, a Linear projector, a Peri-LN MuP LM


def build_hyperclovax_vision_v2(seed: int = 0, video: bool = False) -> Tiny:
    """HyperCLOVAX-Vision-V2 with ``HyperCLOVAXVisionV2Processor``: Peri-LN blocks, residual / embedding
    multipliers and a logit multiplier different from 1, vision windows smaller than an image."""
    from transformers import (
        HyperCLOVAXVisionV2Config,
        HyperCLOVAXVisionV2ForConditionalGeneration,
        HyperCLOVAXVisionV2Processor,
    )

    with allow_missing_video_processor():
        processor = HyperCLOVAXVisionV2Processor(
            image_processor=build_image_processor(PATCH),
            tokenizer=build_tokenizer(),
            video_processor=None,
            chat_template=CHAT_TEMPLATE,
        )
    ids = _ids(processor)
    text = _text(
        processor, model_type="hyperclovax", residual_multiplier=0.5, embedding_multiplier=2.0, logits_scaling=0.7
    )
    config = HyperCLOVAXVisionV2Config(
        text_config=text,
        vision_config=dict(
            vision_config(PATCH, window_size=56, fullatt_block_indexes=[1], out_hidden_size=48),
            model_type="qwen2_5_vl_vision",
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
    )
    model = init_model(HyperCLOVAXVisionV2ForConditionalGeneration, config, seed)
    if video:
        processor.video_processor = QwenVideoProcessorPil(processor.image_processor, fps=FPS)
        return Tiny(model=model, inputs=video_inputs(processor, seed, 2 * PATCH), processor=processor)
    return Tiny(model=model, inputs=processor_inputs(processor, seed, 2 * PATCH, False), processor=processor)


def build_hyperclovax_vision_v2_video(seed: int = 0) -> Tiny:
    """HyperCLOVAX-Vision-V2 with an image and videos (1-D positions: no frame times reach the model)."""
    return build_hyperclovax_vision_v2(seed, video=True)


# ---------------------------------------------------------------------------------------
# VideoLLaMA3: per-item merge sizes, token compression of static video cells


class VideoLlama3VideoProcessorPil:
    """What ``VideoLlama3VideoProcessor`` computes for decoded frames (it imports torchvision), with PIL:
    smart-resize every frame (``max_pixels`` divided by the frame count), rescale, normalize, patchify
    with ``merge_size`` blocks (the image processor's ``patchify`` per frame: ``temporal_patch_size`` 1),
    and the ``video_compression_mask`` (a merged cell is kept when its mean absolute pixel change from the
    previous frame, x 255, exceeds 0.1; every cell of the first frame; at least one per frame).
    """

    model_input_names = ["pixel_values_videos", "video_grid_thw", "video_merge_sizes", "video_compression_mask"]

    def __init__(self, image_processor: Any, merge_size: int = 2, fps: float = FPS, longest_edge: int = 0):
        self.image_processor = image_processor
        self.patch_size, self.merge_size, self.temporal_patch_size = int(image_processor.patch_size), merge_size, 1
        self.fps = fps
        self.size = {"shortest_edge": image_processor.size["shortest_edge"], "longest_edge": longest_edge}

    def _video(self, frames: list[Any]) -> tuple[torch.Tensor, list[int]]:
        from PIL import Image
        from transformers.models.video_llama_3.image_processing_pil_video_llama_3 import smart_resize

        w, h = frames[0].size
        factor = self.patch_size * self.merge_size
        max_pixels = self.size["longest_edge"] // len(frames)
        rh, rw = smart_resize(h, w, factor=factor, min_pixels=self.size["shortest_edge"], max_pixels=max_pixels)
        resized = [f.convert("RGB").resize((rw, rh), resample=Image.Resampling.BICUBIC) for f in frames]
        out = self.image_processor(resized, do_resize=False, merge_size=self.merge_size, return_tensors="pt")
        return out["pixel_values"], [len(frames), rh // self.patch_size, rw // self.patch_size]

    def compression_mask(self, pixels: torch.Tensor, grid: list[int]) -> torch.Tensor:
        t, h, w = grid
        m = self.merge_size
        if t == 1:
            return torch.ones(h * w // m**2, dtype=torch.bool)
        cells = pixels.view(t, (h // m) * (w // m), -1)
        diff = (cells[1:] - cells[:-1]).abs().mean(-1) * 255
        diff = torch.cat([torch.full_like(diff[:1], 1.1), diff])
        mask = diff > 0.1
        mask[mask.sum(1) < 1, :1] = True
        return mask.flatten()

    def __call__(self, videos: Any, return_tensors: str | None = None, fps: float | None = None, **kwargs: Any):
        from transformers.video_utils import VideoMetadata

        pixels, grids, masks, metadata = [], [], [], []
        for frames in videos:
            p, grid = self._video(list(frames))
            pixels.append(p)
            grids.append(grid)
            masks.append(self.compression_mask(p, grid))
            w, h = frames[0].size
            rate = float(fps or self.fps)
            metadata.append(VideoMetadata(len(frames), rate, h, w, frames_indices=list(range(len(frames)))))
        data = {
            "pixel_values_videos": torch.cat(pixels),
            "video_grid_thw": torch.tensor(grids),
            "video_merge_sizes": torch.full((len(grids),), self.merge_size),
            "video_compression_mask": torch.cat(masks),
        }
        out = BatchFeature(data)
        out["video_metadata"] = metadata
        return out


def build_videollama3(seed: int = 0, video: bool = False) -> Tiny:
    """VideoLLaMA3 (Qwen2 LM, images unmerged, videos merged 2 x 2) with ``VideoLlama3Processor``."""
    from transformers import VideoLlama3Config, VideoLlama3ForConditionalGeneration, VideoLlama3Processor
    from transformers.models.video_llama_3.image_processing_pil_video_llama_3 import VideoLlama3ImageProcessorPil

    image_processor = VideoLlama3ImageProcessorPil(
        size={"shortest_edge": PATCH * PATCH, "longest_edge": (3 * PATCH) ** 2}, patch_size=PATCH, merge_size=1
    )
    with allow_missing_video_processor():
        processor = VideoLlama3Processor(
            image_processor=image_processor,
            tokenizer=build_tokenizer(),
            video_processor=None,
            chat_template=CHAT_TEMPLATE,
        )
    ids = _ids(processor)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=PATCH)
    config = VideoLlama3Config(
        text_config=dict(_text(processor), model_type="qwen2"),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
    )
    model = init_model(VideoLlama3ForConditionalGeneration, config, seed)
    if not video:
        return Tiny(model=model, inputs=processor_inputs(processor, seed, PATCH, False), processor=processor)
    factor = 2 * PATCH  # video frames merge 2 x 2 patches: (2f x 3f) pixels -> 2 x 3 cells per frame
    processor.video_processor = VideoLlama3VideoProcessorPil(image_processor, longest_edge=4 * (3 * factor) ** 2)
    texts = chat_prompts(
        processor, (["image", "video"], "what is in this image and left picture ?"), (["video"], "describe")
    )
    videos = [moving_square(4, 2 * factor, 3 * factor, seed), moving_square(2, 3 * factor, 2 * factor, seed + 1)]
    return Tiny(
        model=model,
        inputs=processor_batch(processor, texts, images=qwen_images(seed, PATCH)[:1], videos=videos),
        processor=processor,
    )


def build_videollama3_video(seed: int = 0) -> Tiny:
    """VideoLLaMA3 with an image and videos (frame times reach the model as text only)."""
    return build_videollama3(seed, video=True)


# ---------------------------------------------------------------------------------------
# EXAONE 4.5: a Qwen2.5-VL-style GQA vision tower, 1-D positions, an EXAONE-4 (post-norm) LM


def build_exaone4_5(seed: int = 0, video: bool = False) -> Tiny:
    """EXAONE 4.5 with ``Exaone4_5_Processor``: EXAONE-4 blocks (norms after each branch, QK-norm), layer 0
    sliding (RoPE, a window shorter than the prompts), layer 1 global (no RoPE); vision windows smaller than
    an image, grouped-query vision attention."""
    from transformers import Exaone4_5_Config, Exaone4_5_ForConditionalGeneration, Exaone4_5_Processor

    with allow_missing_video_processor():
        processor = Exaone4_5_Processor(
            image_processor=build_image_processor(PATCH),
            tokenizer=build_tokenizer(),
            video_processor=None,
            chat_template=CHAT_TEMPLATE,
        )
    ids = _ids(processor)
    text = _text(processor, model_type="exaone4", sliding_window=8, layer_types=["sliding_attention", "full_attention"])
    vision = vision_config(PATCH, window_size=56, fullatt_block_indexes=[1], out_hidden_size=64, num_key_value_heads=1)
    config = Exaone4_5_Config(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"]
    )
    model = init_model(Exaone4_5_ForConditionalGeneration, config, seed)
    if video:
        processor.video_processor = QwenVideoProcessorPil(processor.image_processor, fps=FPS)
        return Tiny(model=model, inputs=video_inputs(processor, seed, 2 * PATCH), processor=processor)
    return Tiny(model=model, inputs=processor_inputs(processor, seed, 2 * PATCH, False), processor=processor)


def build_exaone4_5_video(seed: int = 0) -> Tiny:
    """EXAONE 4.5 with an image and videos (1-D positions: no frame times reach the model)."""
    return build_exaone4_5(seed, video=True)
