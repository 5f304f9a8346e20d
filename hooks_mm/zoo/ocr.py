"""Tiny random-weight GOT-OCR2, LightOnOCR, Qianfan-OCR, DeepSeek-VL hybrid and Ovis2 models, inputs made by
their own HF processors (WordLevel tokenizer, the slow PIL image processors; no torchvision, no hub).

Every batch: row 0 holds two images, row 1 one image and left padding. The tile-cropping families
(GOT-OCR2, Qianfan-OCR, Ovis2) get one wide and one tall image that are cropped into tiles (plus a
thumbnail) and one small image that is not.
"""

from __future__ import annotations

from typing import Any

from hooks_mm.zoo.base import Tiny, init_model, lm_config, processor_batch, token_ids
from hooks_mm.zoo.llava import build_tokenizer, sample_images

# (height, width): wide -> crops, square -> one tile, tall -> crops
TILED_SIZES = [(40, 96), (30, 30), (96, 40)]
GOT_SIZES = [(128, 64), (60, 60), (64, 130)]  # 64 px tiles


def _prompts(image: str) -> list[str]:
    return [
        f"USER: {image}\n{image}\ncompare these two images ? ASSISTANT:",
        f"USER: {image}\nwhat is in the image ? ASSISTANT:",
    ]


def _tokenizer(special: tuple[str, ...], named: dict[str, str] | None = None) -> Any:
    """``build_tokenizer(special)``; ``named`` tokens become model-specific special-token attributes
    (``tokenizer.image_token``, ``tokenizer.image_token_id``), saved with the tokenizer."""
    tok = build_tokenizer(special)
    if named:
        tok._set_model_specific_special_tokens(special_tokens=named)
    return tok


def _text(config_cls: Any, tok: Any, **extra: Any) -> Any:
    vocab = (len(tok) + 8) // 8 * 8
    return config_cls(**lm_config(vocab, max_position_embeddings=1024, **token_ids(tok), **extra))


# ---------------------------------------------------------------------------------------
# GOT-OCR2

GOT_PER_TILE = 16  # 64 px / 4 px patches = 16 -> two stride-2 convs -> 4 x 4


def build_got_ocr2(seed: int = 0) -> Tiny:
    """GOT-OCR2: SAM tower (64 px tiles, 4 px patches, window 4 + one global layer), Qwen2 LM. Inputs from
    ``GotOcr2Processor`` with ``crop_to_patches`` (at most 4 crops + thumbnail) and 16 tokens per tile. No
    processor is returned: its tokens per tile (``num_image_tokens``) is a call option that a saved processor
    does not keep (it would expand 256 per tile)."""
    from transformers import (
        GotOcr2Config,
        GotOcr2ForConditionalGeneration,
        GotOcr2ImageProcessorPil,
        GotOcr2Processor,
        GotOcr2VisionConfig,
        Qwen2Config,
    )

    tok = _tokenizer(("<img>", "</img>", "<imgpad>"))
    processor = GotOcr2Processor(
        image_processor=GotOcr2ImageProcessorPil(size={"height": 64, "width": 64}), tokenizer=tok
    )
    vision = GotOcr2VisionConfig(
        hidden_size=32,
        output_channels=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=4,
        window_size=4,
        global_attn_indexes=(1,),
        mlp_dim=64,
    )
    config = GotOcr2Config(
        text_config=_text(Qwen2Config, tok),
        vision_config=vision,
        image_token_index=processor.image_token_id,
        image_seq_length=GOT_PER_TILE,
    )
    config.img_start_token_id = tok.convert_tokens_to_ids("<img>")  # tokenizer ids hooks_mm reads (special_ids)
    config.img_end_token_id = tok.convert_tokens_to_ids("</img>")
    model = init_model(GotOcr2ForConditionalGeneration, config, seed)
    inputs = processor_batch(
        processor,
        _prompts("<img><imgpad></img>"),
        images=sample_images(seed, GOT_SIZES),
        crop_to_patches=True,
        max_patches=4,
        num_image_tokens=GOT_PER_TILE,
    )
    return Tiny(model=model, inputs=inputs)


# ---------------------------------------------------------------------------------------
# LightOnOCR

LIGHTON_SPECIAL = {
    "image_token": "<|image_pad|>",
    "image_break_token": "<|vision_pad|>",
    "image_end_token": "<|vision_end|>",
}


def build_lighton_ocr_processor(patch: int = 8, merge: int = 2) -> Any:
    """LightOnOcrProcessor over a Pixtral PIL image processor with ``patch``-px patches (so an odd number of
    patches per side happens, and the 2x2 merger drops the last one), longest edge 64."""
    from transformers import LightOnOcrProcessor, PixtralImageProcessorPil

    tok = _tokenizer(("<|vision_start|>", *LIGHTON_SPECIAL.values()), LIGHTON_SPECIAL)
    image_processor = PixtralImageProcessorPil(size={"longest_edge": 64}, patch_size=patch)
    return LightOnOcrProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=patch, spatial_merge_size=merge
    )


def build_lighton_ocr(seed: int = 0) -> Tiny:
    from transformers import LightOnOcrConfig, LightOnOcrForConditionalGeneration, PixtralVisionConfig, Qwen3Config

    processor = build_lighton_ocr_processor()
    tok = processor.tokenizer
    vision = PixtralVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        head_dim=8,
        image_size=64,
        patch_size=8,
    )
    config = LightOnOcrConfig(
        text_config=_text(Qwen3Config, tok, head_dim=16),
        vision_config=vision,
        image_token_id=processor.image_token_id,
        spatial_merge_size=2,
    )
    config.image_break_token_id = processor.image_break_token_id  # tokenizer ids hooks_mm reads (special_ids)
    config.image_end_token_id = processor.image_end_token_id
    model = init_model(LightOnOcrForConditionalGeneration, config, seed)
    texts = _prompts("<|vision_start|><|image_pad|><|vision_end|>")
    inputs = processor_batch(processor, texts, images=sample_images(seed, [(40, 30), (50, 50), (37, 61)]))
    return Tiny(model=model, inputs=inputs, processor=processor)


# ---------------------------------------------------------------------------------------
# Qianfan-OCR

QIANFAN_SPECIAL = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"}


def build_qianfan_ocr_processor(per_tile: int = 16) -> Any:
    """QianfanOCRProcessor: GOT-OCR2 PIL image processor (32 px tiles, crops + thumbnail, at most 4 crops)."""
    from transformers import GotOcr2ImageProcessorPil, QianfanOCRProcessor

    tok = _tokenizer(("<image>", *QIANFAN_SPECIAL.values()), QIANFAN_SPECIAL)
    image_processor = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, max_patches=4)
    return QianfanOCRProcessor(image_processor=image_processor, tokenizer=tok, image_seq_length=per_tile)


def build_qianfan_ocr(seed: int = 0) -> Tiny:
    from transformers import QianfanOCRConfig, QianfanOCRForConditionalGeneration, QianfanOCRVisionConfig, Qwen3Config

    processor = build_qianfan_ocr_processor()
    tok = processor.tokenizer
    vision = QianfanOCRVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4
    )
    config = QianfanOCRConfig(
        text_config=_text(Qwen3Config, tok, head_dim=16),
        vision_config=vision,
        image_token_id=processor.image_token_id,
        image_seq_length=processor.image_seq_length,
        downsample_ratio=0.5,
    )
    config.start_image_token_id = processor.start_image_token_id  # tokenizer ids hooks_mm reads (special_ids)
    config.end_image_token_id = processor.end_image_token_id
    model = init_model(QianfanOCRForConditionalGeneration, config, seed)
    inputs = processor_batch(processor, _prompts("<image>"), images=sample_images(seed, TILED_SIZES))
    return Tiny(model=model, inputs=inputs, processor=processor)


# ---------------------------------------------------------------------------------------
# DeepSeek-VL hybrid

DEEPSEEK_IMAGE = "<image_placeholder>"


def build_deepseek_vl_hybrid_processor() -> Any:
    """DeepseekVLHybridProcessor: 16 px low-resolution (SigLIP, 4 px patches -> 4 x 4) and 32 px high-resolution
    (SAM) images, both padded to square by the PIL image processor."""
    from transformers import DeepseekVLHybridImageProcessorPil, DeepseekVLHybridProcessor

    tok = _tokenizer((DEEPSEEK_IMAGE,), {"image_token": DEEPSEEK_IMAGE})
    image_processor = DeepseekVLHybridImageProcessorPil(
        size={"height": 16, "width": 16}, high_res_size={"height": 32, "width": 32}, min_size=4
    )
    return DeepseekVLHybridProcessor(image_processor=image_processor, tokenizer=tok, num_image_tokens=16)


def build_deepseek_vl_hybrid(seed: int = 0) -> Tiny:
    from transformers import DeepseekVLHybridConfig, DeepseekVLHybridForConditionalGeneration, LlamaConfig

    processor = build_deepseek_vl_hybrid_processor()
    tok = processor.tokenizer
    config = DeepseekVLHybridConfig(
        text_config=_text(LlamaConfig, tok).to_dict(),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=4,
            vision_use_head=False,
        ),
        high_res_vision_config=dict(
            model_type="sam_vision_model",
            hidden_size=32,
            output_channels=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=4,
            window_size=4,
            global_attn_indexes=[1],
            mlp_dim=64,
        ),
        image_token_id=processor.image_token_id,
    )
    model = init_model(DeepseekVLHybridForConditionalGeneration, config, seed)
    # the SAM branch is added with a learned gate that starts at zero: open it so both towers matter
    model.model.high_res_vision_alpha.data.fill_(0.5)
    inputs = processor_batch(
        processor, _prompts(DEEPSEEK_IMAGE), images=sample_images(seed, [(32, 32), (24, 32), (32, 20)])
    )
    return Tiny(model=model, inputs=inputs, processor=processor)


# ---------------------------------------------------------------------------------------
# Ovis2

OVIS2_INDICATORS = ("<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>")


def build_ovis2_processor(per_tile: int = 16) -> Any:
    """Ovis2Processor: Ovis2 PIL image processor (32 px tiles, covering-area crops + a leading thumbnail)."""
    from transformers import Ovis2ImageProcessorPil, Ovis2Processor

    tok = _tokenizer(("<image>", "<IMG_ATOM>", *OVIS2_INDICATORS))
    image_processor = Ovis2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, max_patches=4)
    return Ovis2Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=per_tile)


def build_ovis2(seed: int = 0) -> Tiny:
    """Ovis2: 32 px tiles, 4 px patches (8 x 8, grouped 2 x 2 by hidden_stride: 16 cells), a 64-entry visual
    vocabulary, Qwen2 LM. (A patch grid that is not a multiple of hidden_stride crashes HF's padding.)"""
    from transformers import Ovis2Config, Ovis2ForConditionalGeneration, Ovis2VisionConfig, Qwen2Config

    processor = build_ovis2_processor()
    tok = processor.tokenizer
    text = _text(Qwen2Config, tok)
    vision = Ovis2VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=4,
        vocab_size=64,
        hidden_stride=2,
        num_visual_indicator_tokens=len(OVIS2_INDICATORS),
    )
    config = Ovis2Config(
        text_config=text,
        vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids("<IMG_ATOM>"),
        visual_indicator_token_ids=[tok.convert_tokens_to_ids(t) for t in OVIS2_INDICATORS],
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
    )
    model = init_model(Ovis2ForConditionalGeneration, config, seed)
    inputs = processor_batch(processor, _prompts("<image>"), images=sample_images(seed, TILED_SIZES))
    return Tiny(model=model, inputs=inputs, processor=processor)
