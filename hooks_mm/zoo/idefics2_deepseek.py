"""Tiny random-weight Idefics2 and DeepSeek-VL models with locally built processors.

Idefics2: SigLIP-like tower (32 px, patch 4), perceiver connector (4 latents per sub-image),
Mistral LM; the real ``Idefics2Processor`` over a WordLevel tokenizer and the slow PIL image
processor with ``do_image_splitting`` (each image: 4 crops + the whole image). Row 0 holds two
adjacent images, row 1 one image and is left-padded.
"""

from __future__ import annotations

from typing import Any

from hooks_mm.zoo.base import Tiny, init_model, processor_batch
from hooks_mm.zoo.llava import build_tokenizer, sample_images, tiny_text_config

IMAGE_SIZE, PATCH, LATENTS = 32, 4, 4
IDEFICS2_PROMPTS = [
    "USER: <image><image> compare these two images ? ASSISTANT:",
    "USER: <image> what is in the image ? ASSISTANT:",
]


def build_idefics2_processor() -> Any:
    """Idefics2Processor: WordLevel tokenizer, slow PIL image processor with image splitting."""
    from transformers import Idefics2ImageProcessorPil, Idefics2Processor

    image_processor = Idefics2ImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": IMAGE_SIZE, "shortest_edge": IMAGE_SIZE // 2}
    )
    tokenizer = build_tokenizer(("<image>", "<fake_token_around_image>"))
    return Idefics2Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=LATENTS)


def build_idefics2(seed: int = 0) -> Tiny:
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration, MistralConfig

    processor = build_idefics2_processor()
    tok = processor.tokenizer
    text = tiny_text_config(MistralConfig, tok)
    config = Idefics2Config(
        text_config=text.to_dict(),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=PATCH,
        ),
        perceiver_config=dict(
            hidden_size=text.hidden_size,
            resampler_n_latents=LATENTS,
            resampler_depth=2,
            resampler_n_heads=2,
            resampler_head_dim=8,
            num_key_value_heads=1,
        ),
        image_token_id=processor.image_token_id,
    )
    # tokenizer facts hooks_mm reads (real configs lack them): the separator and the splitting
    config.fake_image_token_id = tok.convert_tokens_to_ids("<fake_token_around_image>")
    config.do_image_splitting = processor.image_processor.do_image_splitting
    model = init_model(Idefics2ForConditionalGeneration, config, seed)
    sizes = [(32, 32), (24, 32), (32, 20)]
    inputs = processor_batch(processor, IDEFICS2_PROMPTS, images=sample_images(seed, sizes))
    return Tiny(model=model, inputs=inputs, processor=processor)


# ---------------------------------------------------------------------------------------
# DeepSeek-VL

DEEPSEEK_IMAGE = "<image_placeholder>"
DEEPSEEK_PROMPTS = [
    f"USER: {DEEPSEEK_IMAGE}\n{DEEPSEEK_IMAGE}\ncompare these two images ? ASSISTANT:",
    f"USER: {DEEPSEEK_IMAGE}\nwhat is in the image ? ASSISTANT:",
]


def build_deepseek_vl_processor() -> Any:
    """DeepseekVLProcessor: WordLevel tokenizer, slow PIL image processor (pad to square, 32 px)."""
    from transformers import DeepseekVLImageProcessorPil, DeepseekVLProcessor

    tokenizer = build_tokenizer((DEEPSEEK_IMAGE,))
    # the processor reads tokenizer.image_token; a named model-specific special token is saved with the
    # tokenizer (a plain attribute would be lost on save / reload)
    tokenizer._set_model_specific_special_tokens(special_tokens={"image_token": DEEPSEEK_IMAGE})
    image_processor = DeepseekVLImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    per = (IMAGE_SIZE // PATCH) ** 2
    return DeepseekVLProcessor(image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=per)


def build_deepseek_vl(seed: int = 0) -> Tiny:
    from transformers import DeepseekVLConfig, DeepseekVLForConditionalGeneration, LlamaConfig

    processor = build_deepseek_vl_processor()
    tok = processor.tokenizer
    config = DeepseekVLConfig(
        text_config=tiny_text_config(LlamaConfig, tok).to_dict(),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=PATCH,
            vision_use_head=False,
        ),
        image_token_id=processor.image_token_id,
    )
    model = init_model(DeepseekVLForConditionalGeneration, config, seed)
    inputs = processor_batch(processor, DEEPSEEK_PROMPTS, images=sample_images(seed, [(32, 32), (24, 32), (32, 20)]))
    return Tiny(model=model, inputs=inputs, processor=processor)
