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
from hooks_mm.zoo.hybrid import build_qwen3_5
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
    """Qwen3.5-MoE: :func:`hooks_mm.zoo.hybrid.build_qwen3_5` with a mixture of experts in every layer."""
    return build_qwen3_5(seed, moe=True)


def build_qwen3_omni_moe(seed: int = 0) -> Tiny:
    """Qwen3-Omni thinker with image, video, audio and text in one prompt."""
    import transformers

    from hooks_mm.media import QwenVideoProcessorPil, chirp, moving_square, tone
    from hooks_mm.processing import allow_missing_video_processor
    from hooks_mm.zoo import omni
    from hooks_mm.zoo.base import chat_prompts, processor_batch, token_ids
    from hooks_mm.zoo.qwen import build_image_processor, qwen_images

    image_processor = build_image_processor(16)
    with allow_missing_video_processor():
        processor = transformers.Qwen3OmniMoeProcessor(
            image_processor=image_processor,
            video_processor=None,
            feature_extractor=omni.build_feature_extractor(),
            tokenizer=omni.build_tokenizer(),
            chat_template=omni.CHAT_TEMPLATE,
        )
    processor.video_processor = QwenVideoProcessorPil(image_processor, fps=omni.FPS)
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in omni.SPECIAL}
    text = lm_config(
        omni.VOCAB,
        max_position_embeddings=1024,
        num_hidden_layers=3,
        head_dim=16,
        rope_parameters=mrope(4, 2, 2),
        **MOE,
        **token_ids(tok),
    )
    config = transformers.Qwen3OmniMoeThinkerConfig(
        audio_config=dict(
            num_mel_bins=omni.N_MELS,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            d_model=32,
            output_dim=64,
            downsample_hidden_size=8,
            max_source_positions=100,
        ),
        vision_config=vision_config(16, depth=3, num_position_embeddings=16, deepstack_visual_indexes=[0, 1]),
        text_config=text,
        audio_token_id=ids["<|AUDIO|>"],
        image_token_id=ids["<|IMAGE|>"],
        video_token_id=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"],
        vision_end_token_id=ids["<|vision_eos|>"],
        position_id_per_seconds=25,
    )
    model = init_model(transformers.Qwen3OmniMoeThinkerForConditionalGeneration, config, seed)
    texts = chat_prompts(
        processor,
        (["image", "audio", "video"], "what is in this image video and sound ?"),
        (["audio"], "describe the pitch"),
    )
    factor = 32
    inputs = processor_batch(
        processor,
        texts,
        images=qwen_images(seed, factor)[:1],
        videos=[moving_square(4, 2 * factor, 3 * factor, seed)],
        audio=[tone(0.9, 440.0), chirp(0.6)],  # under one 1 s encoder chunk each
        fps=omni.FPS,
    )
    return Tiny(model=model, inputs=inputs, processor=processor)
