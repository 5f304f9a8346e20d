"""Tiny LLaVA-family models (random weights) with locally built processors: LLaVA, LLaVA-NeXT,
LLaVA-OneVision (images, and video frames pooled 2x2 with one newline per video) and
Video-LLaVA (separate image and video CLIP towers, CLS kept per frame).

Each builder returns a real HF model (fp32, eval, sdpa) and inputs made by the family's
own HF code (a WordLevel tokenizer built here, the slow PIL image processor), so the
image and video tokens are expanded exactly as HF expands them. Images: row 0 has two
images, row 1 one image and left padding. Video: row 0 = image + 2-frame video, row 1 =
2-frame video. Frames are preprocessed by :class:`~hooks_mm.media.FramewiseVideoProcessor`
with the family's PIL image transform (HF's video processors need torchvision).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from hooks_mm.media import FramewiseVideoProcessor, moving_square
from hooks_mm.processing import allow_missing_video_processor
from hooks_mm.zoo.base import Tiny, init_model, lm_config, processor_batch, token_ids

TILE = 32  # vision tower image size (px)
PATCH = 8  # -> 4 x 4 patches per tile
PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
ONEVISION_ASPECT = "anyres_max_2"  # small so that the bilinear downsampling path runs
FPS = 1.0

_WORDS = (
    "USER ASSISTANT SYSTEM user assistant : . , ? ! what is in the this image images picture "
    "describe compare these two a an of and cat dog red blue green left right top bottom "
    "yes no there are how many colors color shape square circle"
).split()
PROMPTS = [
    "USER: <image>\n<image>\ncompare these two images ? ASSISTANT:",
    "USER: <image>\nwhat is in the image ? ASSISTANT:",
]
VIDEO_PROMPTS = [
    "USER: <image>\n<video>\nwhat is in the image ? ASSISTANT:",
    "USER: <video>\ndescribe this ? ASSISTANT:",
]

# llava-1.5 style; content may be a string or a list of {"type": "image"|"text"} items
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'system' %}SYSTEM: "
    "{% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tokenizer(special: Iterable[str] = ("<image>",), vocab_extra: Iterable[str] = ()) -> Any:
    """A WordLevel fast tokenizer: <unk> <pad> <s> </s>, then ``special``, then words.

    Left padding; prepends <s>. The ``special`` tokens are added tokens, so
    ``"<image><image>"`` splits into two ids whatever the pre-tokenizer does.
    """
    from tokenizers import processors

    from hooks_mm.zoo.tokenizers import word_level

    base = ["<unk>", "<pad>", "<s>", "</s>", *special]
    return word_level(
        [*base, *_WORDS, *vocab_extra],
        base,
        post_processor=processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", base.index("<s>"))]
        ),
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="left",
    )


def tiny_text_config(config_cls: Any, tokenizer: Any) -> Any:
    # vocabulary: a little headroom, a multiple of 8
    return config_cls(**lm_config((len(tokenizer) + 8) // 8 * 8, **token_ids(tokenizer)))


def sample_images(seed: int, sizes: list[tuple[int, int]]) -> list[Any]:
    """Distinct random RGB PIL images of the given (height, width)."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        arr = rng.randint(0, 256, size=(h, w, 3), dtype=np.uint8)
        arr[: h // 2, :, i % 3] = 255 - 40 * i  # a distinct block per image
        out.append(Image.fromarray(arr))
    return out


def sample_videos(seed: int) -> list[np.ndarray]:
    return [moving_square(2, 40, 40, seed), moving_square(2, 48, 36, seed + 1)]


def clip_vision() -> Any:
    from transformers import CLIPVisionConfig

    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return CLIPVisionConfig(**sizes, image_size=TILE, patch_size=PATCH, projection_dim=32)


def _processor(processor_cls: Any, image_processor: Any, tokenizer: Any, patch_size: int = PATCH, **extra: Any) -> Any:
    """``processor_cls`` (LlavaProcessor, ...) with the llava-1.5 settings and chat template."""
    with allow_missing_video_processor():  # Video-LLaVA's slot is filled afterwards
        return processor_cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # CLIP's CLS, dropped again by "default"
            chat_template=LLAVA_CHAT_TEMPLATE,
            image_token="<image>",
            **extra,
        )


def build_llava_processor(image_size: int = TILE, patch_size: int = PATCH, vocab_extra: Iterable[str] = ()) -> Any:
    """LlavaProcessor: local WordLevel tokenizer, slow CLIP image processor, chat template.

    Example::

        processor = build_llava_processor(48, 16, vocab_extra=["triangle"])  # 3 x 3 patches
    """
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return _processor(LlavaProcessor, image_processor, build_tokenizer(("<image>",), vocab_extra), patch_size)


def _build_llava(name: str, processor: Any, seed: int, sizes: list[tuple[int, int]], **config: Any) -> Tiny:
    """``{name}ForConditionalGeneration`` (CLIP tower, Llama LM) and the llava-1.5 prompts over
    images of ``sizes`` (height, width)."""
    import transformers

    tok = processor.tokenizer
    config = getattr(transformers, f"{name}Config")(
        text_config=tiny_text_config(transformers.LlamaConfig, tok),
        vision_config=clip_vision(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        **config,
    )
    model = init_model(getattr(transformers, f"{name}ForConditionalGeneration"), config, seed)
    inputs = processor_batch(processor, PROMPTS, images=sample_images(seed, sizes))
    return Tiny(model=model, inputs=inputs, processor=processor)


def build_llava(seed: int = 0) -> Tiny:
    sizes = [(40, 30), (50, 50), (37, 61)]
    return _build_llava("Llava", build_llava_processor(), seed, sizes, image_seq_length=(TILE // PATCH) ** 2)


def build_llava_next(seed: int = 0) -> Tiny:
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS
    )
    processor = _processor(LlavaNextProcessor, image_processor, build_tokenizer())
    # wide (unpad crops rows), tall (unpad crops cols), square-ish: three grids
    sizes = [(16, 90), (70, 50), (60, 64)]
    return _build_llava("LlavaNext", processor, seed, sizes, image_grid_pinpoints=PINPOINTS)


# ---------------------------------------------------------------------------------------
# LlavaOnevision (no LlavaOnevisionProcessor: its video_processor slot needs torchvision)


def build_llava_onevision_model(seed: int = 0) -> tuple[Any, Any, Any]:
    """A tiny LlavaOnevision model, its tokenizer (``<image>``, ``<video>``) and PIL image processor.

    Example::

        model, tok, image_processor = build_llava_onevision_model(seed=0)
    """
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tok = build_tokenizer(("<image>", "<video>"))
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS
    )
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = LlavaOnevisionConfig(
        text_config=tiny_text_config(Qwen2Config, tok),
        vision_config=SiglipVisionConfig(**sizes, image_size=TILE, patch_size=PATCH, vision_use_head=False),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=PINPOINTS,
        vision_aspect_ratio=ONEVISION_ASPECT,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    return init_model(LlavaOnevisionForConditionalGeneration, config, seed), tok, image_processor


def _expand(texts: list[str], token: str, replace: Callable[[int], str]) -> list[str]:
    """Every ``token`` in ``texts`` replaced by ``replace(k)``, ``k`` counting them across the rows."""
    k = itertools.count()
    return [re.sub(re.escape(token), lambda _: replace(next(k)), text) for text in texts]


def _onevision_inputs(
    tok: Any, image_processor: Any, texts: list[str], image_inputs: Any, video_inputs: Any = None
) -> dict[str, Any]:
    """Tokenized ``texts`` with ``<image>`` (and ``<video>``) expanded by HF's own
    ``LlavaOnevisionProcessor.replace_image_token`` / ``replace_video_token``, then the image inputs.

    LlavaOnevisionProcessor cannot be instantiated here (its video-processor slot needs
    torchvision), so the methods run on a bare instance holding the fields they read.
    """
    from transformers import LlavaOnevisionProcessor

    bare = LlavaOnevisionProcessor.__new__(LlavaOnevisionProcessor)
    bare.image_processor, bare.num_image_tokens = image_processor, (TILE // PATCH) ** 2
    bare.vision_feature_select_strategy, bare.vision_aspect_ratio = "full", ONEVISION_ASPECT
    bare.image_token, bare.video_token = "<image>", "<video>"
    texts = _expand(texts, "<image>", lambda k: bare.replace_image_token(image_inputs, k))
    if video_inputs is not None:
        texts = _expand(texts, "<video>", lambda k: bare.replace_video_token(video_inputs, k))
    inputs = dict(tok(texts, return_tensors="pt", padding=True))
    inputs.pop("token_type_ids", None)
    inputs.update(image_inputs)
    return inputs


def build_llava_onevision(seed: int = 0) -> Tiny:
    model, tok, image_processor = build_llava_onevision_model(seed)
    # row 0: two images -> base tile + newline each (batch_num_images = 2);
    # row 1: one large image -> anyres 2x2 tiles, downsampled by anyres_max_2
    images = sample_images(seed, [(40, 90), (70, 50), (64, 60)])
    image_inputs = image_processor([images[:2], images[2:]], return_tensors="pt")
    return Tiny(model=model, inputs=_onevision_inputs(tok, image_processor, PROMPTS, image_inputs))


def build_llava_onevision_video(seed: int = 0) -> Tiny:
    """LlavaOnevision: row 0 = image + 2-frame video, row 1 = 2-frame video (left-padded).

    ``pixel_values_videos`` is one ``[n_videos, frames, C, H, W]`` tensor, so the videos of a
    batch share their frame count."""
    from transformers import CLIPImageProcessorPil

    model, tok, image_processor = build_llava_onevision_model(seed)
    frames = CLIPImageProcessorPil(
        size={"height": TILE, "width": TILE},
        do_center_crop=False,
        image_mean=image_processor.image_mean,
        image_std=image_processor.image_std,
    )
    video_processor = FramewiseVideoProcessor(frames, fps=FPS)
    image_inputs = image_processor([sample_images(seed, [(40, 90)])], return_tensors="pt")
    videos = [video_processor([v])["pixel_values_videos"][0] for v in sample_videos(seed)]
    inputs = _onevision_inputs(tok, image_processor, VIDEO_PROMPTS, image_inputs, {"pixel_values_videos": videos})
    inputs["pixel_values_videos"] = torch.stack(videos)
    return Tiny(model=model, inputs=inputs)


# ---------------------------------------------------------------------------------------
# Video-LLaVA


def build_video_llava(seed: int = 0) -> Tiny:
    """Video-LLaVA: row 0 = image + 2-frame video, row 1 = 2-frame video (left-padded)."""
    from transformers import (
        LlamaConfig,
        VideoLlavaConfig,
        VideoLlavaForConditionalGeneration,
        VideoLlavaImageProcessor,
        VideoLlavaProcessor,
    )

    tok = build_tokenizer(("<image>", "<video>"))
    image_processor = VideoLlavaImageProcessor(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE})
    processor = _processor(VideoLlavaProcessor, image_processor, tok, video_processor=None)
    processor.video_processor = FramewiseVideoProcessor(image_processor, fps=FPS)
    config = VideoLlavaConfig(
        text_config=tiny_text_config(LlamaConfig, tok).to_dict(),
        vision_config=clip_vision().to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(TILE // PATCH) ** 2,
        video_seq_length=2 * ((TILE // PATCH) ** 2 + 1),
    )
    model = init_model(VideoLlavaForConditionalGeneration, config, seed)
    media = {"images": sample_images(seed, [(40, 30)]), "videos": sample_videos(seed)}
    inputs = processor_batch(processor, VIDEO_PROMPTS, **media)
    return Tiny(model=model, inputs=inputs, processor=processor)
