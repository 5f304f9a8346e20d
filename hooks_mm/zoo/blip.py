"""Tiny random-weight BLIP-2 and InstructBLIP models over an OPT language model.

BLIP-2: a ViT tower (32 px, patch 8), a Q-Former (``num_query_tokens`` learned queries
cross-attending to the patches), ``language_projection`` onto the LM width, an OPT decoder;
the real ``Blip2Processor`` (slow PIL BLIP image processor, WordLevel tokenizer), which writes
``num_query_tokens`` ``<image>`` placeholders before each row's text (one image per row; the
text is padded before the placeholders are prepended, so row 1's padding sits after them).
InstructBLIP: the same, plus the instruction tokenised for the Q-Former (``qformer_input_ids``).
InstructBLIP-Video: the frames of one video go through the Q-Former one by one; the processor
writes ``4 * num_query_tokens`` ``<video>`` placeholders (4 frames per video, fixed in transformers).
"""

from __future__ import annotations

from typing import Any

import torch

from hooks_mm.zoo.base import Tiny, init_model, lm_config, token_ids
from hooks_mm.zoo.llava import build_tokenizer, sample_images

IMAGE_SIZE, PATCH, QUERIES, FRAMES = 32, 8, 4, 4
PROMPTS = ["what is in the image ? answer :", "which colour ? answer :"]


def opt_config(tokenizer: Any, **extra: Any) -> Any:
    """A tiny OPT text config (pre-LN, as OPT-125m / 2.7b / 6.7b): 2 layers, hidden 64, 4 heads, MLP 128."""
    from transformers import OPTConfig

    base = lm_config((len(tokenizer) + 8) // 8 * 8, **token_ids(tokenizer))
    for key in ("intermediate_size", "num_key_value_heads"):  # OPT: ffn_dim, one key / value head per head
        base.pop(key)
    return OPTConfig(**(base | dict(ffn_dim=128, word_embed_proj_dim=64, do_layer_norm_before=True) | extra))


def _vision() -> dict[str, Any]:
    return dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH,
    )  # fmt: skip


def _qformer(vocab: int | None = None) -> dict[str, Any]:
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    return sizes | dict(encoder_hidden_size=32, cross_attention_frequency=1) | ({"vocab_size": vocab} if vocab else {})


def _image_processor() -> Any:
    from transformers import BlipImageProcessorPil

    return BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def _batch(processor: Any, text: list[str], **media: Any) -> dict[str, torch.Tensor]:
    out = processor(text=text, **media, return_tensors="pt", padding=True)
    inputs = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    assert bool((inputs["attention_mask"][1] == 0).any()), "row 1 should be padded"
    return inputs


def build_blip2_processor() -> Any:
    from transformers import Blip2Processor

    tokenizer = build_tokenizer(("<image>",))
    return Blip2Processor(image_processor=_image_processor(), tokenizer=tokenizer, num_query_tokens=QUERIES)


def build_blip2(seed: int = 0) -> Tiny:
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    processor = build_blip2_processor()
    tok = processor.tokenizer
    config = Blip2Config(
        vision_config=_vision(),
        qformer_config=_qformer(),
        text_config=opt_config(tok).to_dict(),
        num_query_tokens=QUERIES,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    model = init_model(Blip2ForConditionalGeneration, config, seed)
    inputs = _batch(processor, PROMPTS, images=sample_images(seed, [(32, 32), (24, 32)]))
    return Tiny(model=model, inputs=inputs, processor=processor)


def build_instructblip_processor() -> Any:
    from transformers import InstructBlipProcessor

    tokenizer = build_tokenizer(("<image>",))
    qformer_tokenizer = build_tokenizer(())
    return InstructBlipProcessor(
        image_processor=_image_processor(),
        tokenizer=tokenizer,
        qformer_tokenizer=qformer_tokenizer,
        num_query_tokens=QUERIES,
    )


def build_instructblip(seed: int = 0) -> Tiny:
    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration

    processor = build_instructblip_processor()
    tok = processor.tokenizer
    config = InstructBlipConfig(
        vision_config=_vision(),
        qformer_config=_qformer(len(processor.qformer_tokenizer) + 8),
        text_config=opt_config(tok).to_dict(),
        num_query_tokens=QUERIES,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    model = init_model(InstructBlipForConditionalGeneration, config, seed)
    inputs = _batch(processor, PROMPTS, images=sample_images(seed, [(32, 32), (24, 32)]))
    return Tiny(model=model, inputs=inputs, processor=processor)


def build_instructblipvideo_processor() -> Any:
    """InstructBlipVideoProcessor whose video processor runs the slow BLIP image processor on every frame."""
    from transformers import BatchFeature, InstructBlipVideoProcessor

    from hooks_mm.media import FramewiseVideoProcessor
    from hooks_mm.processing import allow_missing_video_processor

    class Frames(FramewiseVideoProcessor):
        """``pixel_values`` [n_videos, frames, 3, H, W], as InstructBlipVideoVideoProcessor names them."""

        model_input_names = ["pixel_values"]

        def __call__(self, videos: Any, return_tensors: str | None = "pt", **kwargs: Any) -> Any:
            out = super().__call__(videos, return_tensors=return_tensors, **kwargs)
            return BatchFeature({"pixel_values": out["pixel_values_videos"]}, tensor_type=return_tensors)

    tokenizer = build_tokenizer(("<video>",))
    with allow_missing_video_processor():
        processor = InstructBlipVideoProcessor(
            video_processor=None, tokenizer=tokenizer, qformer_tokenizer=build_tokenizer(()), num_query_tokens=QUERIES
        )
    processor.video_processor = Frames(_image_processor())
    return processor


def build_instructblipvideo(seed: int = 0) -> Tiny:
    import numpy as np
    from transformers import InstructBlipVideoConfig, InstructBlipVideoForConditionalGeneration

    from hooks_mm.media import moving_square

    processor = build_instructblipvideo_processor()
    tok = processor.tokenizer
    video_id = tok.convert_tokens_to_ids("<video>")
    config = InstructBlipVideoConfig(
        vision_config=_vision(),
        qformer_config=_qformer(len(processor.qformer_tokenizer) + 8),
        text_config=opt_config(tok).to_dict(),
        num_query_tokens=QUERIES,
        video_token_index=video_id,
    )
    config.image_token_id = video_id  # the forward finds the placeholders with config.image_token_id
    model = init_model(InstructBlipVideoForConditionalGeneration, config, seed)
    videos = [np.stack([np.asarray(f) for f in moving_square(FRAMES, 32, 32, seed=seed + k)]) for k in range(2)]
    inputs = _batch(processor, PROMPTS, images=videos)
    return Tiny(model=model, inputs=inputs, processor=processor)
