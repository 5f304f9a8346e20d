"""Tiny random-weight GLM-4V family models (GLM-4.1V, GLM-4.6V, GLM-OCR) and Cohere vision
wrappers (AyaVision, Cohere2Vision), with inputs made the way their processors make them.

GLM: the real ``Glm4vProcessor`` / ``Glm46VProcessor`` (WordLevel tokenizer with GLM's special
tokens, the PIL ``Glm4vImageProcessorPil``); videos through
:class:`~hooks_mm.media.QwenVideoProcessorPil` (transformers' Glm4vVideoProcessor needs
torchvision; the patch layout is the same, frames are sized to need no resize), so the processor
itself expands each video into per-frame ``<|begin_of_image|> ... <|end_of_image|>`` groups with
their timestamps. Image batch: row 0 two images, row 1 one (left-padded). Video batch (GLM-4V
cannot mix images and videos in one batch): row 0 a 4-frame video (2 LM frames of 2x3 cells),
row 1 a 2-frame video (1 LM frame of 3x2 cells).
"""

from __future__ import annotations

from typing import Any

from hooks_mm.media import QwenVideoProcessorPil, moving_square
from hooks_mm.processing import allow_missing_video_processor
from hooks_mm.zoo.base import Tiny, chat_prompts, init_model, lm_config, processor_batch
from hooks_mm.zoo.qwen import FPS, WORDS, mrope, qwen_images

GLM_SPECIAL = [
    "<|endoftext|>",  # 0: pad
    "<|user|>",
    "<|assistant|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|video|>",
    "<unk>",
]
GLM_WORDS = [*WORDS, *"0123456789", "seconds"]
VOCAB_SIZE = 96
PATCH = 14

GLM_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif c['type'] == 'video' %}<|begin_of_video|><|video|><|end_of_video|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def glm_processor(processor_cls: Any) -> Any:
    """``processor_cls`` (Glm4vProcessor, Glm46VProcessor) with a WordLevel tokenizer, the PIL image
    processor (tiny min / max pixels) and a PIL video processor."""
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    from hooks_mm.zoo.tokenizers import word_level

    tok = word_level(
        GLM_SPECIAL + GLM_WORDS,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|user|>",
        additional_special_tokens=[t for t in GLM_SPECIAL if t != "<unk>"],
        padding_side="left",
        chat_template=GLM_TEMPLATE,
    )
    assert len(tok) <= VOCAB_SIZE
    factor = 2 * PATCH
    images = Glm4vImageProcessorPil(
        size={"shortest_edge": 2 * factor * factor, "longest_edge": 2 * (3 * factor) ** 2},
        patch_size=PATCH,
        temporal_patch_size=2,
        merge_size=2,
    )
    with allow_missing_video_processor():
        processor = processor_cls(
            image_processor=images, tokenizer=tok, video_processor=None, chat_template=GLM_TEMPLATE
        )
    processor.video_processor = QwenVideoProcessorPil(images, fps=FPS)
    return processor


def _build_glm(
    name: str, seed: int, video: bool, vision_type: str = "Glm4v", text_type: str = "Glm4v", **text_extra: Any
) -> Tiny:
    """``{name}ForConditionalGeneration`` on images (row 0 two, row 1 one) or videos; ``text_extra``: text
    config fields."""
    import transformers

    # GLM-4.6V and GLM-OCR checkpoints ship Glm46VProcessor (frame times "0.0 seconds"); GLM-4.5V Glm4vProcessor
    processor_cls = "Glm4vProcessor" if name in ("Glm4v", "Glm4vMoe") else "Glm46VProcessor"
    processor = glm_processor(getattr(transformers, processor_cls))
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in GLM_SPECIAL}
    text = getattr(transformers, f"{text_type}TextConfig")(
        **lm_config(VOCAB_SIZE, pad_token_id=ids["<|endoftext|>"], **text_extra),
        rope_parameters=mrope(2, 1, 1, partial_rotary_factor=0.5),
    )
    vision = getattr(transformers, f"{vision_type}VisionConfig")(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=PATCH,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=64,
        image_size=4 * PATCH,
    )
    config = getattr(transformers, f"{name}Config")(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
    )
    model = init_model(getattr(transformers, f"{name}ForConditionalGeneration"), config, seed)
    f = 2 * PATCH
    if video:
        texts = chat_prompts(processor, (["video"], "what is in this picture ?"), (["video"], "describe"))
        videos = [moving_square(4, 2 * f, 3 * f, seed), moving_square(2, 3 * f, 2 * f, seed + 1)]
        inputs = processor_batch(processor, texts, videos=videos, fps=FPS)
    else:
        texts = chat_prompts(
            processor,
            (["image", "image"], "compare the two images . which one is red ?"),
            (["image"], "describe this image"),
        )
        inputs = processor_batch(processor, texts, images=qwen_images(seed, f))
    assert "mm_token_type_ids" in inputs, "processor did not return mm_token_type_ids"
    return Tiny(model=model, inputs=inputs, processor=processor)


def build_glm4v(seed: int = 0) -> Tiny:
    return _build_glm("Glm4v", seed, video=False)


def build_glm4v_video(seed: int = 0) -> Tiny:
    return _build_glm("Glm4v", seed, video=True)


def build_glm46v(seed: int = 0) -> Tiny:
    return _build_glm("Glm46V", seed, video=False)


def build_glm_ocr(seed: int = 0) -> Tiny:
    return _build_glm("GlmOcr", seed, video=False, vision_type="GlmOcr", text_type="GlmOcr")


# GLM-4.5V's text model: dense layer 0 (first_k_dense_replace), MoE layers 1-2 with GLM-4.5 routing: 8 experts in
# 4 groups, 2 groups kept, top-3, scaled weights, a shared expert
GLM4V_MOE_TEXT = dict(
    num_hidden_layers=3,
    first_k_dense_replace=1,
    moe_intermediate_size=32,
    n_routed_experts=8,
    num_experts_per_tok=3,
    n_group=4,
    topk_group=2,
    routed_scaling_factor=2.5,
)


def _build_glm4v_moe(seed: int, video: bool) -> Tiny:
    import torch

    tiny = _build_glm("Glm4vMoe", seed, video, vision_type="Glm4vMoe", text_type="Glm4vMoe", **GLM4V_MOE_TEXT)
    g = torch.Generator().manual_seed(seed)
    # a choice bias (zeros at init) that changes which experts some tokens are sent to, small enough that every
    # expert still gets tokens in both batches (an expert no token chooses has hook points no edit can reach)
    with torch.no_grad():
        for name, b in tiny.model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.003)
    return tiny


def build_glm4v_moe(seed: int = 0) -> Tiny:
    return _build_glm4v_moe(seed, video=False)


def build_glm4v_moe_video(seed: int = 0) -> Tiny:
    return _build_glm4v_moe(seed, video=True)


# ---------------------------------------------------------------------------------------
# AyaVision, Cohere2Vision

AYA_SPECIAL = ["<PAD>", "<unk>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>"]
AYA_SPECIAL += ["<|USER|>", "<|CHATBOT|>", "<image>"]
AYA_WORDS = [*WORDS, "TILE_1", "TILE_2", "TILE_3", "TILE_4", "TILE_GLOBAL"]
TILE = 32  # pixels per tile side: a 4x4 SigLIP grid (patch 8), 2x2 cells after the pixel shuffle
AYA_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] | upper }}|>"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% elif c['type'] == 'text' %} {{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}<|CHATBOT|>{% endif %}"
)


def _cohere_tokenizer() -> Any:
    from hooks_mm.zoo.tokenizers import word_level

    return word_level(
        AYA_SPECIAL + AYA_WORDS,
        unk_token="<unk>",
        pad_token="<PAD>",
        additional_special_tokens=[t for t in AYA_SPECIAL if t != "<unk>"],
        padding_side="left",
        chat_template=AYA_TEMPLATE,
    )


def _cohere_vision_config(name: str, tok: Any, **extra: Any) -> Any:
    import transformers

    text = transformers.Cohere2Config(
        **lm_config(VOCAB_SIZE, pad_token_id=tok.pad_token_id, bos_token_id=None, eos_token_id=None),
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
    )
    vision = transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=TILE, patch_size=8
    )
    return getattr(transformers, f"{name}Config")(
        text_config=text,
        vision_config=vision,
        downsample_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<|IMG_PATCH|>"),
        **extra,
    )


def build_aya_vision(seed: int = 0) -> Tiny:
    """AyaVision through the real AyaVisionProcessor (GotOcr2ImageProcessorPil tiling): row 0 a 2x1-cropped
    image (2 crops + global tile) and a square one (global tile only), row 1 one cropped image (padded)."""
    from transformers import AyaVisionForConditionalGeneration, AyaVisionProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    tok = _cohere_tokenizer()
    images = GotOcr2ImageProcessorPil(
        size={"height": TILE, "width": TILE}, crop_to_patches=True, min_patches=1, max_patches=4
    )
    processor = AyaVisionProcessor(
        image_processor=images, tokenizer=tok, patch_size=8, img_size=TILE, downsample_factor=2,
        chat_template=AYA_TEMPLATE,
    )  # fmt: skip
    config = _cohere_vision_config("AyaVision", tok, alignment_intermediate_size=64)
    model = init_model(AyaVisionForConditionalGeneration, config, seed)
    texts = chat_prompts(
        processor, (["image", "image"], "compare the two images . which one is red ?"), (["image"], "describe")
    )
    pictures = qwen_images(seed, 16)  # 32x48, 48x32, 32x32 pixels
    inputs = processor_batch(processor, texts, images=[pictures[1], pictures[2], pictures[0]])
    return Tiny(model=model, inputs=inputs, processor=processor)


def build_cohere2_vision(seed: int = 0) -> Tiny:
    """Cohere2Vision (Cohere2VisionImageProcessor needs torchvision): tiles from GotOcr2ImageProcessorPil
    (the same crops-then-thumbnail tiling), each ``<image>`` expanded by hand as
    ``Cohere2VisionProcessor.replace_image_token`` does: ``<|START_OF_IMG|> (<|IMG_PATCH|> * cells
    <|IMG_LINE_BREAK|>) * tiles <|END_OF_IMG|>``. Images and rows as :func:`build_aya_vision`."""
    from transformers import Cohere2VisionForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    tok = _cohere_tokenizer()
    config = _cohere_vision_config("Cohere2Vision", tok, alignment_intermediate_size=64)
    model = init_model(Cohere2VisionForConditionalGeneration, config, seed)
    images = GotOcr2ImageProcessorPil(
        size={"height": TILE, "width": TILE}, crop_to_patches=True, min_patches=1, max_patches=4
    )
    pictures = qwen_images(seed, 16)
    pixels = images([pictures[1], pictures[2], pictures[0]], return_tensors="pt")
    tile = "<|IMG_PATCH|>" * (TILE // 8 // 2) ** 2 + "<|IMG_LINE_BREAK|>"
    expansions = iter("<|START_OF_IMG|>" + tile * int(n) + "<|END_OF_IMG|>" for n in pixels["num_patches"])
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}] * k + [{"type": "text", "text": text}]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for k, text in ((2, "compare the two images . which one is red ?"), (1, "describe"))
    ]
    for i in range(len(texts)):  # each <image> in turn, as the processor expands them
        while "<image>" in texts[i]:
            texts[i] = texts[i].replace("<image>", next(expansions), 1)
    inputs = {k: v for k, v in tok(texts, return_tensors="pt", padding=True).items() if k != "token_type_ids"}
    inputs["pixel_values"] = pixels["pixel_values"]
    return Tiny(model=model, inputs=inputs)
