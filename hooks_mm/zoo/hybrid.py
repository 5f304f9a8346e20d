"""Tiny random-weight models over hybrid decoder stacks, with their processors.

``build_qwen3_5``: ``Qwen3_5ForConditionalGeneration`` (Qwen3-VL-like vision side, no deepstack)
over a 4-layer ``qwen3_5_text`` stack [linear, full, linear, full] (gated DeltaNet and gated
attention), with ``Qwen3VLProcessor`` (the processor transformers maps ``qwen3_5`` to) on the
Qwen-VL family's batch: row 0 two images, row 1 one image, left-padded.
"""

from __future__ import annotations

from hooks_mm.zoo.base import Tiny, init_model, lm_config
from hooks_mm.zoo.qwen import SPECIAL_TOKENS, VOCAB_SIZE, build_processor, mrope, processor_inputs, vision_config

# a hybrid stack whose first layer is linear attention and whose attention layers are not all at one end
QWEN3_5_LAYERS = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
QWEN3_5_LINEAR = dict(linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4)


def build_qwen3_5(seed: int = 0) -> Tiny:
    import transformers

    processor = build_processor(transformers.Qwen3VLProcessor, 16)
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    # head_dim 16, half of it rotary (Qwen3.5: a quarter of 256): 4 frequencies over (t, h, w)
    rope = mrope(2, 1, 1, mrope_interleaved=True, partial_rotary_factor=0.5)
    text = lm_config(
        VOCAB_SIZE,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<|im_end|>"],
        num_hidden_layers=len(QWEN3_5_LAYERS),
        layer_types=QWEN3_5_LAYERS,
        head_dim=16,
        rope_parameters=rope,
        **QWEN3_5_LINEAR,
    )
    config = transformers.Qwen3_5Config(
        text_config=text,
        vision_config=vision_config(16, num_position_embeddings=16),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = init_model(transformers.Qwen3_5ForConditionalGeneration, config, seed)
    return Tiny(model=model, inputs=processor_inputs(processor, seed, 32), processor=processor)
