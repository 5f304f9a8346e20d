"""Tiny LLaVA-like models (random weights) with locally built processors: VipLlava (CLIP
features from several layers), Mistral3 (Pixtral tower + patch merger, Mistral LM) and
LlavaNextVideo (LLaVA-NeXT images and 2x2-pooled video frames).

Same conventions as hooks_mm/zoo/llava.py: a real HF model (fp32, eval), inputs made by the
family's own HF processor code (WordLevel tokenizer, slow PIL image processor).
"""

from __future__ import annotations

import re

from hooks_mm.media import FramewiseVideoProcessor
from hooks_mm.processing import allow_missing_video_processor
from hooks_mm.zoo.base import Tiny, init_model, processor_batch
from hooks_mm.zoo.llava import (
    FPS,
    LLAVA_CHAT_TEMPLATE,
    PATCH,
    PINPOINTS,
    PROMPTS,
    TILE,
    VIDEO_PROMPTS,
    build_llava_processor,
    build_tokenizer,
    clip_vision,
    sample_images,
    sample_videos,
    tiny_text_config,
)


def build_vipllava(seed: int = 0) -> Tiny:
    """VipLlava: the projector reads CLIP layers -1 and -2 concatenated (CLS dropped from each)."""
    from transformers import LlamaConfig, VipLlavaConfig, VipLlavaForConditionalGeneration

    processor = build_llava_processor()
    tok = processor.tokenizer
    config = VipLlavaConfig(
        text_config=tiny_text_config(LlamaConfig, tok),
        vision_config=clip_vision(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=[-1, -2],
        image_seq_length=(TILE // PATCH) ** 2,
    )
    model = init_model(VipLlavaForConditionalGeneration, config, seed)
    inputs = processor_batch(processor, PROMPTS, images=sample_images(seed, [(40, 30), (50, 50), (37, 61)]))
    return Tiny(model=model, inputs=inputs, processor=processor)


def pixtral_image_tokens(height: int, width: int, cell: int) -> str:
    """HF ``PixtralProcessor.replace_image_token`` (same arithmetic; that module imports
    torchvision): ``[IMG]`` per ``cell`` px square, ``[IMG_BREAK]`` after each row, the last
    one replaced by ``[IMG_END]``."""
    rows = [["[IMG]"] * (width // cell) + ["[IMG_BREAK]"]] * (height // cell)
    tokens = [t for row in rows for t in row]
    tokens[-1] = "[IMG_END]"
    return "".join(tokens)


def build_mistral3(seed: int = 0) -> Tiny:
    """Mistral3: Pixtral tower (8 px patches) whose 2x2 patches are merged, Mistral LM. The
    prompt is expanded as PixtralProcessor does (:func:`pixtral_image_tokens`); images keep
    their own (resized) sizes: three different grids. No processor (PixtralProcessor needs
    torchvision)."""
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralImageProcessorPil,
        PixtralVisionConfig,
    )

    merge = 2
    tok = build_tokenizer(("[IMG]", "[IMG_BREAK]", "[IMG_END]"))
    image_processor = PixtralImageProcessorPil(size={"longest_edge": 64}, patch_size=PATCH * merge)
    vision = PixtralVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=64,
        patch_size=PATCH,
    )
    config = Mistral3Config(
        text_config=tiny_text_config(MistralConfig, tok),
        vision_config=vision,
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        vision_feature_layer=-1,
        spatial_merge_size=merge,
        tie_word_embeddings=False,
    )
    model = init_model(Mistral3ForConditionalGeneration, config, seed)
    image_inputs = image_processor(sample_images(seed, [(40, 30), (50, 50), (37, 61)]), return_tensors="pt")
    sizes = iter(image_inputs["image_sizes"].tolist())
    texts = [p.replace("<image>\n", "[IMG]") for p in PROMPTS]
    texts = [re.sub(r"\[IMG\]", lambda _: pixtral_image_tokens(*next(sizes), PATCH * merge), t) for t in texts]
    inputs = dict(tok(texts, return_tensors="pt", padding=True))
    inputs.pop("token_type_ids", None)
    inputs.update(image_inputs)
    return Tiny(model=model, inputs=inputs)


def build_llava_next_video(seed: int = 0) -> Tiny:
    """LlavaNextVideo: row 0 = anyres image + 2-frame video, row 1 = 2-frame video (left-padded);
    frames are 4x4 CLIP grids average-pooled 2x2. Frames are preprocessed by
    :class:`~hooks_mm.media.FramewiseVideoProcessor` (resize + crop, as LlavaNextVideoVideoProcessor)."""
    from transformers import (
        CLIPImageProcessorPil,
        LlamaConfig,
        LlavaNextImageProcessorPil,
        LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration,
        LlavaNextVideoProcessor,
    )

    tok = build_tokenizer(("<image>", "<video>"))
    square = {"shortest_edge": TILE}, {"height": TILE, "width": TILE}
    image_processor = LlavaNextImageProcessorPil(size=square[0], crop_size=square[1], image_grid_pinpoints=PINPOINTS)
    with allow_missing_video_processor():
        processor = LlavaNextVideoProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            video_processor=None,
            patch_size=PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=LLAVA_CHAT_TEMPLATE,
        )
    frames = CLIPImageProcessorPil(size=square[0], crop_size=square[1])
    processor.video_processor = FramewiseVideoProcessor(frames, fps=FPS)
    config = LlavaNextVideoConfig(
        text_config=tiny_text_config(LlamaConfig, tok),
        vision_config=clip_vision(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        spatial_pool_mode="average",
        spatial_pool_stride=2,
        image_seq_length=(TILE // PATCH) ** 2,
        video_seq_length=2 * (TILE // PATCH // 2) ** 2,
    )
    model = init_model(LlavaNextVideoForConditionalGeneration, config, seed)
    media = {"images": sample_images(seed, [(40, 90)]), "videos": sample_videos(seed)}
    inputs = processor_batch(processor, VIDEO_PROMPTS, **media)
    return Tiny(model=model, inputs=inputs, processor=processor)
