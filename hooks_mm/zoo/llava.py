"""Tiny LLaVA-family models (random weights) with locally built processors.

Each builder returns a real HF model (fp32, eval, sdpa) and inputs made by the family's
own HF processor (a WordLevel tokenizer built here, the slow PIL image processor), so the
image tokens are expanded exactly as HF expands them. Batch: row 0 has two images, row 1
one image and left padding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from hooks_mm.zoo.base import Tiny

TILE = 32  # vision tower image size (px)
PATCH = 8  # -> 4 x 4 patches per tile
PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]

_WORDS = (
    "USER ASSISTANT SYSTEM user assistant : . , ? ! what is in the this image images picture "
    "describe compare these two a an of and cat dog red blue green left right top bottom "
    "yes no there are how many colors color shape square circle"
).split()

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
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    base = ["<unk>", "<pad>", "<s>", "</s>", *special]
    words = [w for w in dict.fromkeys([*_WORDS, *vocab_extra]) if w not in base]
    vocab = {tok: i for i, tok in enumerate([*base, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(base)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="left",
    )
    return fast


def _vocab_size(tokenizer: Any) -> int:
    # a little headroom, a multiple of 8
    return ((len(tokenizer) + 8) // 8) * 8


def _images(seed: int, sizes: list[tuple[int, int]]) -> list[Any]:
    """Distinct random RGB PIL images of the given (height, width)."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        arr = rng.randint(0, 256, size=(h, w, 3), dtype=np.uint8)
        arr[: h // 2, :, i % 3] = 255 - 40 * i  # a distinct block per image
        out.append(Image.fromarray(arr))
    return out


def _finish(model: Any, cls_name: str) -> Any:
    model.config.architectures = [cls_name]
    return model.eval().to(torch.float32)


def _llama_text(vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )


def _clip_vision(image_size: int = TILE, patch_size: int = PATCH) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )


# ---------------------------------------------------------------------------------------
# Llava


def build_llava_processor(image_size: int = TILE, patch_size: int = PATCH, vocab_extra: Iterable[str] = ()) -> Any:
    """LlavaProcessor: local WordLevel tokenizer, slow CLIP image processor, chat template."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    tokenizer = build_tokenizer(("<image>",), vocab_extra)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped again by "default"
        chat_template=LLAVA_CHAT_TEMPLATE,
        image_token="<image>",
    )


def build_llava(seed: int = 0) -> Tiny:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    processor = build_llava_processor(TILE, PATCH)
    tok = processor.tokenizer
    side = TILE // PATCH
    config = LlavaConfig(
        text_config=_llama_text(_vocab_size(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id),
        vision_config=_clip_vision(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=side * side,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = _finish(LlavaForConditionalGeneration(config), "LlavaForConditionalGeneration")
    images = _images(seed, [(40, 30), (50, 50), (37, 61)])
    text = [
        "USER: <image>\n<image>\ncompare these two images ? ASSISTANT:",
        "USER: <image>\nwhat is in the image ? ASSISTANT:",
    ]
    inputs = dict(processor(text=text, images=images, return_tensors="pt", padding=True))
    return Tiny(model=model, inputs=inputs, processor=processor)


# ---------------------------------------------------------------------------------------
# LlavaNext


def build_llava_next_processor(image_size: int = TILE, patch_size: int = PATCH, vocab_extra: Iterable[str] = ()) -> Any:
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    tokenizer = build_tokenizer(("<image>",), vocab_extra)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=PINPOINTS,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
        image_token="<image>",
    )


def build_llava_next(seed: int = 0) -> Tiny:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    processor = build_llava_next_processor(TILE, PATCH)
    tok = processor.tokenizer
    config = LlavaNextConfig(
        text_config=_llama_text(_vocab_size(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id),
        vision_config=_clip_vision(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = _finish(LlavaNextForConditionalGeneration(config), "LlavaNextForConditionalGeneration")
    # wide (unpad crops rows), tall (unpad crops cols), square-ish: three grids
    images = _images(seed, [(16, 90), (70, 50), (60, 64)])
    text = [
        "USER: <image>\n<image>\ncompare these two images ? ASSISTANT:",
        "USER: <image>\nwhat is in the image ? ASSISTANT:",
    ]
    inputs = dict(processor(text=text, images=images, return_tensors="pt", padding=True))
    return Tiny(model=model, inputs=inputs, processor=processor)


# ---------------------------------------------------------------------------------------
# LlavaOnevision

ONEVISION_ASPECT = "anyres_max_2"  # small so that the bilinear downsampling path runs


def build_llava_onevision_image_processor(image_size: int = TILE, pinpoints: list | None = None) -> Any:
    from transformers import LlavaOnevisionImageProcessorPil

    return LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints or PINPOINTS
    )


def _onevision_expand(
    text: list[str],
    image_inputs: dict[str, Any],
    image_processor: Any,
    num_image_tokens: int,
    strategy: str,
    aspect: str,
) -> list[str]:
    """Expand ``<image>`` with HF's own LlavaOnevisionProcessor.replace_image_token.

    LlavaOnevisionProcessor cannot be instantiated here (its video-processor slot needs
    torchvision), so the method runs on a bare instance holding the fields it reads.
    """
    from transformers import LlavaOnevisionProcessor

    bare = LlavaOnevisionProcessor.__new__(LlavaOnevisionProcessor)
    bare.image_processor = image_processor
    bare.num_image_tokens = num_image_tokens
    bare.vision_feature_select_strategy = strategy
    bare.vision_aspect_ratio = aspect
    bare.image_token = "<image>"
    image_idx = 0
    out = []
    for sample in text:
        pieces = sample.split("<image>")
        expanded = pieces[0]
        for piece in pieces[1:]:
            expanded += bare.replace_image_token(image_inputs, image_idx) + piece
            image_idx += 1
        out.append(expanded)
    return out


def build_llava_onevision_model(seed: int = 0) -> tuple[Any, Any, Any]:
    """A tiny LlavaOnevision model, its tokenizer (``<image>``, ``<video>``) and PIL image processor.

    Example::

        model, tok, image_processor = build_llava_onevision_model(seed=0)
    """
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    # no LlavaOnevisionProcessor: its video_processor slot needs torchvision, absent here
    tok = build_tokenizer(("<image>", "<video>"))
    image_processor = build_llava_onevision_image_processor(TILE)
    text_config = Qwen2Config(
        vocab_size=_vocab_size(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    vision_config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=TILE,
        patch_size=PATCH,
        vision_use_head=False,
    )
    config = LlavaOnevisionConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=PINPOINTS,
        vision_aspect_ratio=ONEVISION_ASPECT,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = _finish(LlavaOnevisionForConditionalGeneration(config), "LlavaOnevisionForConditionalGeneration")
    return model, tok, image_processor


def build_llava_onevision(seed: int = 0) -> Tiny:
    model, tok, image_processor = build_llava_onevision_model(seed)
    # row 0: two images -> base tile + newline each (batch_num_images = 2);
    # row 1: one large image -> anyres 2x2 tiles, downsampled by anyres_max_2
    images = _images(seed, [(40, 90), (70, 50), (64, 60)])
    text = [
        "USER: <image>\n<image>\ncompare these two images ? ASSISTANT:",
        "USER: <image>\nwhat is in the image ? ASSISTANT:",
    ]
    image_inputs = image_processor([images[:2], images[2:]], return_tensors="pt")
    side = TILE // PATCH
    text = _onevision_expand(text, image_inputs, image_processor, side * side, "full", ONEVISION_ASPECT)
    inputs = dict(tok(text, return_tensors="pt", padding=True))
    inputs.pop("token_type_ids", None)
    inputs.update(image_inputs)
    return Tiny(model=model, inputs=inputs)
