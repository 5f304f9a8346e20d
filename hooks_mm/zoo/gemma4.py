"""Tiny random-weight Gemma-4 (image-text) with its real HF processor.

The processor is ``Gemma4Processor`` over a WordLevel tokenizer built here, the PIL image
processor (``Gemma4ImageProcessorPil``: aspect-preserving resize to at most
``max_soft_tokens * k^2`` patches, patches row-major, ``image_position_ids`` (x, y), padded
with -1) and the audio feature extractor; its video slot is empty (the video processor needs
torchvision). Each image becomes ``<boi>`` + one ``<|image|>`` per pooled cell + ``<eoi>``.

The text model is a dense ``gemma4_text`` block (sandwich norms, q/k/v norms, sliding and full
layers with different head sizes and key/value heads, ``layer_scalar`` redrawn away from 1,
final logit soft-capping, images bidirectional in sliding layers through ``mm_token_type_ids``).
Row 0 holds two images of different sizes, row 1 one image and left padding.
"""

from __future__ import annotations

from typing import Any

import torch

from hooks_mm.processing import allow_missing_video_processor
from hooks_mm.zoo.base import Tiny, init_model, processor_batch
from hooks_mm.zoo.llava import sample_images
from hooks_mm.zoo.tokenizers import word_level

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<|image|>", "<boi>", "<eoi>", "<|audio|>", "<boa>", "<eoa>"]
WORDS = "user model : what is in the image compare these two a red blue left right ?".split()
PATCH, KERNEL = 4, 2
PROMPTS = ["user : <|image|> <|image|> compare these two ? model :", "user : <|image|> what is in the image ? model :"]


def gemma4_tokenizer() -> Any:
    """WordLevel tokenizer with Gemma-4's special-token attributes (image, boi/eoi, audio, boa/eoa)."""
    return word_level(
        [*SPECIAL, *WORDS],
        SPECIAL,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="left",
        extra_special_tokens={
            "image_token": "<|image|>",
            "boi_token": "<boi>",
            "eoi_token": "<eoi>",
            "audio_token": "<|audio|>",
            "boa_token": "<boa>",
            "eoa_token": "<eoa>",
        },
    )


def gemma4_processor() -> Any:
    from transformers import Gemma4Processor
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    image_processor = Gemma4ImageProcessorPil(patch_size=PATCH, pooling_kernel_size=KERNEL, max_soft_tokens=70)
    with allow_missing_video_processor():
        return Gemma4Processor(
            feature_extractor=Gemma4AudioFeatureExtractor(),
            image_processor=image_processor,
            tokenizer=gemma4_tokenizer(),
            video_processor=None,
            image_seq_length=70,
        )


def gemma4_config(tokenizer: Any) -> Any:
    from transformers import Gemma4Config

    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("image_token_id", "<|image|>"), ("boi_token_id", "<boi>"), ("eoi_token_id", "<eoi>"),
        ("audio_token_id", "<|audio|>"), ("boa_token_id", "<boa>"), ("eoa_token_index", "<eoa>"),
    )}  # fmt: skip
    text = dict(
        vocab_size=(len(tokenizer) + 8) // 8 * 8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        global_head_dim=16,
        num_global_key_value_heads=1,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=16,
        hidden_size_per_layer_input=0,
        final_logit_softcapping=3.0,
        use_bidirectional_attention="vision",
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        head_dim=16, patch_size=PATCH, pooling_kernel_size=KERNEL, position_embedding_size=64,
    )  # fmt: skip
    return Gemma4Config(text_config=text, vision_config=vision, audio_config=None, **ids)


AUDIO_PROMPTS = ["user : <|image|> <|audio|> what is in the image ? model :", "user : <|audio|> what ? model :"]


def _model(processor: Any, seed: int, audio: bool = False) -> Any:
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    config = gemma4_config(processor.tokenizer)
    if audio:  # the subsampling convolutions assume 128 mel bins: channels[0] // 4 * channels[1] = 128 // 4 * 4
        tower = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, conv_kernel_size=3)
        tower |= dict(subsampling_conv_channels=[128, 4], output_proj_dims=32)
        config = Gemma4Config(**{**config.to_dict(), "audio_config": tower})
    model = init_model(Gemma4ForConditionalGeneration, config, seed)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():  # per-layer output scales away from 1, so the hooks must account for them
        for layer in model.model.language_model.layers:
            layer.layer_scalar.copy_(0.5 + torch.rand(1, generator=g))
    return model


def build_gemma4(seed: int = 0) -> Tiny:
    processor = gemma4_processor()
    images = sample_images(seed, [(24, 32), (32, 24), (28, 28)])
    inputs = processor_batch(processor, PROMPTS, images=[images[:2], images[2:]])
    return Tiny(model=_model(processor, seed), inputs=inputs, processor=processor)


def build_gemma4_audio(seed: int = 0) -> Tiny:
    """Gemma-4 with an audio tower (as E2B / E4B): row 0 an image and a 0.5 s clip, row 1 a 0.3 s clip."""
    import numpy as np

    processor = gemma4_processor()
    rng = np.random.RandomState(seed)
    clips = [rng.randn(n).astype(np.float32) * 0.1 for n in (8000, 4800)]
    images = sample_images(seed, [(24, 32)])
    inputs = processor_batch(processor, AUDIO_PROMPTS, images=[images, []], audio=clips)
    return Tiny(model=_model(processor, seed, audio=True), inputs=inputs, processor=processor)
