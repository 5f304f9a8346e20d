"""Tiny LLaVA-like models (random weights) with locally built processors: VipLlava (CLIP
features from several layers), Mistral3 (Pixtral tower + patch merger, Mistral LM) and
LlavaNextVideo (LLaVA-NeXT images and 2x2-pooled video frames).

Same conventions as hooks_mm/zoo/llava.py: a real HF model (fp32, eval), inputs made by the
family's own HF processor code (WordLevel tokenizer, slow PIL image processor).
"""

from __future__ import annotations

from hooks_mm.zoo.base import Tiny, init_model, processor_batch
from hooks_mm.zoo.llava import PATCH, PROMPTS, TILE, build_llava_processor
from hooks_mm.zoo.llava import _clip_vision as clip_vision
from hooks_mm.zoo.llava import _images as images
from hooks_mm.zoo.llava import _text_config as text_config


def build_vipllava(seed: int = 0) -> Tiny:
    """VipLlava: the projector reads CLIP layers -1 and -2 concatenated (CLS dropped from each)."""
    from transformers import LlamaConfig, VipLlavaConfig, VipLlavaForConditionalGeneration

    processor = build_llava_processor()
    tok = processor.tokenizer
    config = VipLlavaConfig(
        text_config=text_config(LlamaConfig, tok),
        vision_config=clip_vision(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=[-1, -2],
        image_seq_length=(TILE // PATCH) ** 2,
    )
    model = init_model(VipLlavaForConditionalGeneration, config, seed)
    inputs = processor_batch(processor, PROMPTS, images=images(seed, [(40, 30), (50, 50), (37, 61)]))
    return Tiny(model=model, inputs=inputs, processor=processor)
