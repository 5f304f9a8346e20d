"""Tiny random-weight Qwen-VL family models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) with processors,
on images and (Qwen2-VL, Qwen2.5-VL) video.

Each builder returns a real HF ``...ForConditionalGeneration`` (fp32, sdpa, eval) and the
output of the family's own processor for a batch of two chat prompts: row 0 holds two
images, row 1 one image and is left-padded.  Images have non-square patch grids so that a
row/column mix-up shows.  The processor (local WordLevel tokenizer, slow PIL image processor
with tiny min/max pixels, a Qwen-style chat template) is returned as ``Tiny.processor``.

Video: the processor's video slot holds :class:`~hooks_mm.media.QwenVideoProcessorPil`
(transformers' Qwen2VLVideoProcessor needs torchvision). Row 0: an image, then a 4-frame
video (2 LM frames of 2x3 cells); row 1: a 2-frame video (1 LM frame of 3x2 cells),
left-padded. Videos are sampled at 2 fps, so one LM frame (2 decoded frames) lasts 1 s
(``second_per_grid_ts`` in Qwen2.5-VL).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hooks_mm.media import QwenVideoProcessorPil, moving_square
from hooks_mm.processing import allow_missing_video_processor
from hooks_mm.zoo.base import Tiny, chat_prompts, init_model, lm_config, processor_batch

# ---------------------------------------------------------------------------------------
# Tokenizer / processor / configs shared by the three families (and Qwen2.5-Omni's vision)

SPECIAL_TOKENS = [
    "<|endoftext|>",  # 0: pad
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_pad|>",
    "<unk>",
]
WORDS = (
    "system user assistant you are a helpful describe the image images compare two "
    "what is in this and left right picture please answer briefly which one red blue "
    "green colour color shows show . , ? ! :"
).split()
VOCAB_SIZE = 64  # model vocabulary (covers the tokenizer's ids)
FPS = 2.0

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer() -> Any:
    """A WordLevel PreTrainedTokenizerFast with the Qwen-VL special tokens (left padding)."""
    from hooks_mm.zoo.tokenizers import word_level

    tok = word_level(
        SPECIAL_TOKENS + WORDS,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t != "<unk>"],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )
    assert len(tok) <= VOCAB_SIZE
    return tok


def build_image_processor(patch_size: int, merge_size: int = 2) -> Any:
    """The slow (PIL) Qwen2-VL image processor with tiny min/max pixels."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    factor = patch_size * merge_size
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": factor * factor, "longest_edge": (3 * factor) ** 2},
        patch_size=patch_size,
        temporal_patch_size=2,
        merge_size=merge_size,
    )


def build_processor(processor_cls: Any, patch_size: int, merge_size: int = 2) -> Any:
    """``processor_cls`` (Qwen2VLProcessor, ...) with a local tokenizer and the PIL image processor.

    With torchvision installed the family's video processor is attached as usual; without it
    the processor gets ``video_processor=None`` (images and text work; videos,
    ``processor.save_pretrained`` and ``AutoProcessor.from_pretrained`` need torchvision in
    transformers 5.23).
    """
    from transformers.utils import is_torchvision_available

    parts = dict(image_processor=build_image_processor(patch_size, merge_size), tokenizer=build_tokenizer())
    if is_torchvision_available():  # pragma: no cover - not in the CPU test environment
        from transformers.models.auto.video_processing_auto import video_processor_class_from_name

        name = "Qwen3VLVideoProcessor" if processor_cls.__name__.startswith("Qwen3") else "Qwen2VLVideoProcessor"
        video_processor = video_processor_class_from_name(name)(
            patch_size=patch_size, temporal_patch_size=2, merge_size=merge_size
        )
        return processor_cls(**parts, video_processor=video_processor, chat_template=CHAT_TEMPLATE)
    with allow_missing_video_processor():
        return processor_cls(**parts, video_processor=None, chat_template=CHAT_TEMPLATE)


def grid_images(seed: int, factor: int) -> list[Any]:
    """Three distinct RGB images: (2f x 3f), (3f x 2f), (2f x 2f) pixels (h x w)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(2 * factor, 3 * factor), (3 * factor, 2 * factor), (2 * factor, 2 * factor)]
    out = []
    for i, (h, w) in enumerate(sizes):
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        arr[..., i] = 255  # a dominant colour per image on top of the noise
        out.append(Image.fromarray(arr, "RGB"))
    return out


def processor_inputs(processor: Any, seed: int, factor: int) -> dict[str, torch.Tensor]:
    """Batch of two prompts: row 0 with images 0 and 1, row 1 with image 2 (left-padded)."""
    texts = chat_prompts(
        processor,
        (["image", "image"], "compare the two images . which one is red ?"),
        (["image"], "describe this image"),
    )
    inputs = processor_batch(processor, texts, images=grid_images(seed, factor))
    assert "mm_token_type_ids" in inputs, "processor did not return mm_token_type_ids"
    return inputs


def video_inputs(processor: Any, seed: int, factor: int) -> dict[str, torch.Tensor]:
    """Row 0: image + 4-frame video (h 2f x w 3f); row 1: 2-frame video (3f x 2f), padded."""
    texts = chat_prompts(
        processor, (["image", "video"], "what is in this image and left picture ?"), (["video"], "describe")
    )
    videos = [moving_square(4, 2 * factor, 3 * factor, seed), moving_square(2, 3 * factor, 2 * factor, seed + 1)]
    return processor_batch(processor, texts, images=grid_images(seed, factor)[:1], videos=videos, fps=FPS)


def mrope(*section: int, **extra: Any) -> dict[str, Any]:
    """``rope_parameters`` of a 3-axis M-RoPE with ``section`` frequencies per axis (t, h, w)."""
    return {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(section), **extra}


def vision_config(patch_size: int, **extra: Any) -> dict[str, Any]:
    """A Qwen2.5-VL / Qwen3-VL style vision tower (2 x 2 merge, 2 frames per temporal patch);
    ``extra`` adds or overrides."""
    sizes = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    return dict(**sizes, patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2) | extra


# ---------------------------------------------------------------------------------------
# Builders


def _build_qwen(name: str, seed: int, patch: int, vision: dict[str, Any], video: bool = False, **text: Any) -> Tiny:
    """``{name}ForConditionalGeneration`` (Qwen2VL, Qwen2_5_VL, Qwen3VL) with its processor, on
    images or (``video``) an image and videos; ``text`` adds to the LM config."""
    import transformers

    processor = build_processor(getattr(transformers, f"{name}Processor"), patch)
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = getattr(transformers, f"{name}Config")(
        text_config=lm_config(
            VOCAB_SIZE,
            pad_token_id=ids["<|endoftext|>"],
            bos_token_id=ids["<|im_start|>"],
            eos_token_id=ids["<|im_end|>"],
            **text,
        ),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = init_model(getattr(transformers, f"{name}ForConditionalGeneration"), config, seed)
    if video:
        processor.video_processor = QwenVideoProcessorPil(processor.image_processor, fps=FPS)
        return Tiny(model=model, inputs=video_inputs(processor, seed, patch * 2), processor=processor)
    return Tiny(model=model, inputs=processor_inputs(processor, seed, patch * 2), processor=processor)


def build_qwen2_vl(seed: int = 0, video: bool = False) -> Tiny:
    # vision hidden_size = LM hidden: the output size of the merger
    vision = dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=14)
    vision.update(spatial_merge_size=2, temporal_patch_size=2)
    return _build_qwen("Qwen2VL", seed, 14, vision, video, rope_parameters=mrope(2, 3, 3))


def build_qwen2_5_vl(seed: int = 0, video: bool = False) -> Tiny:
    # window of 2x2 merged tokens: the 2x3 / 3x2 grids split into several windows,
    # so the merger's output order differs from the sequence order (see adapter)
    vision = vision_config(14, window_size=56, fullatt_block_indexes=[1])
    return _build_qwen("Qwen2_5_VL", seed, 14, vision, video, rope_parameters=mrope(2, 3, 3))


def build_qwen3_vl(seed: int = 0) -> Tiny:
    # deepstack: vision blocks whose outputs are injected after LM layers 0 and 1
    vision = vision_config(16, depth=3, num_position_embeddings=16, deepstack_visual_indexes=[0, 1])
    rope = mrope(4, 2, 2, mrope_interleaved=True)
    return _build_qwen("Qwen3VL", seed, 16, vision, num_hidden_layers=3, head_dim=16, rope_parameters=rope)


def build_qwen2_vl_video(seed: int = 0) -> Tiny:
    """Qwen2-VL with an image and videos (no frame rate reaches the model: times are NaN)."""
    return build_qwen2_vl(seed, video=True)


def build_qwen2_5_vl_video(seed: int = 0) -> Tiny:
    """Qwen2.5-VL with an image and videos; ``second_per_grid_ts`` = 1 s per LM frame."""
    return build_qwen2_5_vl(seed, video=True)
