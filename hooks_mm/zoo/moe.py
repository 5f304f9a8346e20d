"""Tiny random-weight multimodal models over mixture-of-experts decoders.

``build_qwen3_vl_moe`` mirrors :func:`hooks_mm.zoo.qwen.build_qwen3_vl` (the same processor, images and
deepstack vision tower) with a Qwen3-VL-MoE text model: 3 layers, dense block 0
(``mlp_only_layers=[0]``), MoE blocks 1 and 2 with 4 experts, top-2.

``build_qwen3_5_moe`` mirrors :func:`hooks_mm.zoo.hybrid.build_qwen3_5` (the same processor, batch and
4-layer [linear, full, linear, full] hybrid stack) with a MoE (4 experts, top-2, a gated shared
expert) in every layer.

Example::

    tiny = build_qwen3_vl_moe()
    model = HookedMLLM(tiny.model, tiny.processor)
    model.cfg.moe_layers        # [1, 2]
"""

from __future__ import annotations

from hooks_mm.zoo.base import Tiny, init_model, lm_config
from hooks_mm.zoo.hybrid import QWEN3_5_LAYERS, QWEN3_5_LINEAR
from hooks_mm.zoo.qwen import SPECIAL_TOKENS, VOCAB_SIZE, build_processor, mrope, processor_inputs, vision_config

MOE = dict(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, mlp_only_layers=[0])


def build_qwen3_vl_moe(seed: int = 0) -> Tiny:
    import transformers

    processor = build_processor(transformers.Qwen3VLProcessor, 16)
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = lm_config(
        VOCAB_SIZE,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<|im_end|>"],
        num_hidden_layers=3,
        head_dim=16,
        rope_parameters=mrope(4, 2, 2, mrope_interleaved=True),
        **MOE,
    )
    config = transformers.Qwen3VLMoeConfig(
        text_config=text,
        vision_config=vision_config(16, depth=3, num_position_embeddings=16, deepstack_visual_indexes=[0, 1]),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = init_model(transformers.Qwen3VLMoeForConditionalGeneration, config, seed)
    return Tiny(model=model, inputs=processor_inputs(processor, seed, 32), processor=processor)


def build_qwen3_5_moe(seed: int = 0) -> Tiny:
    import transformers

    processor = build_processor(transformers.Qwen3VLProcessor, 16)
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    # as build_qwen3_5: head_dim 16, half of it rotary, 4 frequencies over (t, h, w)
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
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        num_experts=4,
        num_experts_per_tok=2,
        **QWEN3_5_LINEAR,
    )
    text.pop("intermediate_size")  # Qwen3.5-MoE has no dense MLP
    config = transformers.Qwen3_5MoeConfig(
        text_config=text,
        vision_config=vision_config(16, num_position_embeddings=16),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = init_model(transformers.Qwen3_5MoeForConditionalGeneration, config, seed)
    return Tiny(model=model, inputs=processor_inputs(processor, seed, 32), processor=processor)
