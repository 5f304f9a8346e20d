"""Tiny random-weight Qwen-VL family models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) with processors.

Each builder returns a real HF ``...ForConditionalGeneration`` (fp32, sdpa, eval) and the
output of the family's own processor for a batch of two chat prompts: row 0 holds two
images, row 1 one image and is left-padded.  Images have non-square patch grids so that a
row/column mix-up shows.  The processor (local WordLevel tokenizer, slow PIL image processor
with tiny min/max pixels, a Qwen-style chat template) is returned as ``Tiny.processor``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hooks_mm.processing import allow_missing_video_processor
from hooks_mm.zoo.base import Tiny

# ---------------------------------------------------------------------------------------
# Tokenizer / processor shared by the three families

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
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in SPECIAL_TOKENS + WORDS:
        vocab.setdefault(tok, len(vocab))
    assert len(vocab) <= VOCAB_SIZE
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<unk>",)],
        padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def token_ids() -> dict[str, int]:
    tok = build_tokenizer()
    return {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


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

    image_processor = build_image_processor(patch_size, merge_size)
    tokenizer = build_tokenizer()
    if is_torchvision_available():  # pragma: no cover - not in the CPU test environment
        from transformers.models.auto.video_processing_auto import video_processor_class_from_name

        qwen3 = processor_cls.__name__.startswith("Qwen3")
        name = "Qwen3VLVideoProcessor" if qwen3 else "Qwen2VLVideoProcessor"
        video_processor = video_processor_class_from_name(name)(
            patch_size=patch_size, temporal_patch_size=2, merge_size=merge_size
        )
        return processor_cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=video_processor,
            chat_template=CHAT_TEMPLATE,
        )
    with allow_missing_video_processor():
        return processor_cls(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=CHAT_TEMPLATE
        )


def _images(seed: int, factor: int) -> list[Any]:
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


def _messages(n_images: int, text: str) -> list[dict[str, Any]]:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def processor_inputs(processor: Any, seed: int, factor: int) -> dict[str, torch.Tensor]:
    """Batch of two prompts: row 0 with images 0 and 1, row 1 with image 2 (left-padded)."""
    imgs = _images(seed, factor)
    texts = [
        processor.apply_chat_template(
            _messages(2, "compare the two images . which one is red ?"), tokenize=False, add_generation_prompt=True
        ),
        processor.apply_chat_template(_messages(1, "describe this image"), tokenize=False, add_generation_prompt=True),
    ]
    out = processor(text=texts, images=[imgs[0], imgs[1], imgs[2]], return_tensors="pt", padding=True)
    inputs = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    assert "mm_token_type_ids" in inputs, "processor did not return mm_token_type_ids"
    assert bool((inputs["attention_mask"][1] == 0).any()), "row 1 should be padded"
    return inputs


def _text_config(n_layers: int, **extra: Any) -> dict[str, Any]:
    ids = token_ids()
    cfg = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    cfg.update(extra)
    return cfg


def _top_ids() -> dict[str, int]:
    ids = token_ids()
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def _finish(model: Any, arch: str) -> Any:
    model.config.architectures = [arch]
    return model.float().eval()


# ---------------------------------------------------------------------------------------
# Builders


def build_qwen2_vl(seed: int = 0) -> Tiny:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    patch = 14
    config = Qwen2VLConfig(
        text_config=_text_config(
            2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        ),
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=64,  # = LM hidden: output size of the merger
            mlp_ratio=2,
            num_heads=2,
            patch_size=patch,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        **_top_ids(),
    )
    torch.manual_seed(seed)
    model = _finish(Qwen2VLForConditionalGeneration(config), "Qwen2VLForConditionalGeneration")
    processor = build_processor(Qwen2VLProcessor, patch)
    inputs = processor_inputs(processor, seed, patch * 2)
    return Tiny(model=model, inputs=inputs, processor=processor)


def build_qwen2_5_vl(seed: int = 0) -> Tiny:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    patch = 14
    config = Qwen2_5_VLConfig(
        text_config=_text_config(
            2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=patch,
            spatial_merge_size=2,
            temporal_patch_size=2,
            # window of 2x2 merged tokens: the 2x3 / 3x2 grids split into several windows,
            # so the merger's output order differs from the sequence order (see adapter)
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        **_top_ids(),
    )
    torch.manual_seed(seed)
    model = _finish(Qwen2_5_VLForConditionalGeneration(config), "Qwen2_5_VLForConditionalGeneration")
    processor = build_processor(Qwen2_5_VLProcessor, patch)
    inputs = processor_inputs(processor, seed, patch * 2)
    return Tiny(model=model, inputs=inputs, processor=processor)


def build_qwen3_vl(seed: int = 0) -> Tiny:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    patch = 16
    config = Qwen3VLConfig(
        text_config=_text_config(
            3,
            head_dim=16,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
        ),
        vision_config=dict(
            depth=3,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=patch,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=16,
            # vision blocks whose outputs are injected after LM layers 0 and 1
            deepstack_visual_indexes=[0, 1],
        ),
        **_top_ids(),
    )
    torch.manual_seed(seed)
    model = _finish(Qwen3VLForConditionalGeneration(config), "Qwen3VLForConditionalGeneration")
    processor = build_processor(Qwen3VLProcessor, patch)
    inputs = processor_inputs(processor, seed, patch * 2)
    return Tiny(model=model, inputs=inputs, processor=processor)
