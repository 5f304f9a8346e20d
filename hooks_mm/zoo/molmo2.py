"""Tiny random-weight Molmo2 (image-text) with its real HF processor.

``Molmo2Processor`` over a WordLevel tokenizer built here and ``Molmo2ImageProcessor`` whose only
torchvision call (the bilinear tensor resize, no antialias) is done by ``torch.nn.functional.interpolate``:
each image is a low-resolution crop (the whole image resized) and a mosaic of overlapping crops, both
pooled 2 x 2 by ``image_token_pooling``; the text holds ``<low_res_im_start>`` + (``<im_patch>`` * w +
``<im_col>``) * h + ``<im_end>`` for the low-resolution grid, then the same with ``<im_start>`` for the
mosaic. Row 0 holds two images, row 1 one image and left padding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from hooks_mm.zoo.base import Tiny, init_model, processor_batch
from hooks_mm.zoo.llava import sample_images
from hooks_mm.zoo.tokenizers import word_level

PATCH, CROP = 4, 32  # 8 x 8 patches per crop, pooled to 4 x 4
IMAGE_TOKENS = [
    "<|image|>", "<|video|>", "<im_patch>", "<im_col>", "<im_start>", "<low_res_im_start>", "<frame_start>",
    "<im_end>", "<frame_end>", "<im_low>",
]  # fmt: skip
SPECIAL = ["<pad>", "<unk>", "<|endoftext|>", *IMAGE_TOKENS]
WORDS = "user assistant : what is in the image compare these two a red blue ?".split()
PROMPTS = ["user : <|image|> <|image|> compare these two ? assistant :", "user : <|image|> what is in the image ?"]


def _image_processor() -> Any:
    from transformers.models.molmo2.image_processing_molmo2 import Molmo2ImageProcessor

    class Molmo2ImageProcessorTorch(Molmo2ImageProcessor):
        """torchvision's tensor resize (bilinear, antialias off) is F.interpolate; normalize is (x - mean) / std."""

        def resize(self, image: torch.Tensor, size: Any, resample: Any = None, antialias: bool = False, **kw: Any):
            batched = image if image.ndim == 4 else image[None]
            out = F.interpolate(batched, size=(size.height, size.width), mode="bilinear", align_corners=False)
            return out if image.ndim == 4 else out[0]

        def normalize(self, image: torch.Tensor, mean: Any, std: Any, inplace: bool = False, **kw: Any):
            mean, std = (torch.as_tensor(v, dtype=image.dtype).view(-1, 1, 1) for v in (mean, std))
            return (image - mean) / std

    return Molmo2ImageProcessorTorch(
        size={"height": CROP, "width": CROP}, patch_size=PATCH, max_crops=2, overlap_margins=[1, 1]
    )


def molmo2_processor() -> Any:
    from transformers import Molmo2Processor

    from hooks_mm.processing import allow_missing_video_processor

    tokenizer = word_level(
        [*SPECIAL, *WORDS],
        SPECIAL,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|endoftext|>",
        padding_side="left",
        extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
    )
    with allow_missing_video_processor():
        return Molmo2Processor(image_processor=_image_processor(), video_processor=None, tokenizer=tokenizer)


def build_molmo2(seed: int = 0) -> Tiny:
    from transformers import Molmo2Config, Molmo2ForConditionalGeneration

    processor = molmo2_processor()
    tok = processor.tokenizer
    ids = dict(zip(IMAGE_TOKENS, tok.convert_tokens_to_ids(IMAGE_TOKENS)))
    vocab = (len(tok) + 8) // 8 * 8
    text = dict(
        vocab_size=vocab, additional_vocab_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
        qk_norm_type="olmo", rope_scaling_layers=[1],
    )  # fmt: skip
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        head_dim=16, image_size=[CROP, CROP], patch_size=PATCH,
    )  # fmt: skip
    adapter = dict(
        vision_feature_layer=[-2, -1], hidden_size=32, num_attention_heads=2, num_key_value_heads=2, head_dim=16,
        intermediate_size=64, text_hidden_size=32,
    )  # fmt: skip
    config = Molmo2Config(
        text_config=text,
        vision_config=vision,
        adapter_config=adapter,
        image_start_token_id=ids["<im_start>"],
        low_res_image_start_token_id=ids["<low_res_im_start>"],
        image_end_token_id=ids["<im_end>"],
        image_patch_id=ids["<im_patch>"],
        frame_start_token_id=ids["<frame_start>"],
        frame_end_token_id=ids["<frame_end>"],
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config.image_col_token_id = ids["<im_col>"]  # optional id hooks_mm reads (a tokenizer id)
    model = init_model(Molmo2ForConditionalGeneration, config, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # HF's small init leaves the pooled features ~1e-4: too faint for edits to show
        for p in model.model.multi_modal_projector.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    images = sample_images(seed, [(24, 40), (40, 24), (32, 32)])
    inputs = processor_batch(processor, PROMPTS, images=[images[:2], images[2:]])
    return Tiny(model=model, inputs=inputs, processor=processor)
