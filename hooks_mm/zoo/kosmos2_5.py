"""Tiny random-weight Kosmos-2.5 with its real HF image processor and tokenizer layout.

``Kosmos2_5ImageProcessorPil`` makes the flattened patches (Pix2Struct style, at most ``max_patches``
with their row / column indices); the perceiver-style projection turns each image into
``latent_query_num`` latents written at the ``<s>`` positions of ``<s><image>`` + ``<s>`` * N +
``</image>`` (``image_embeds_position_mask == 1``). ``Kosmos2_5Processor`` writes that prompt and the
mask for right-padded rows only; the batch here is left-padded, so the mask is shifted with each row
(the same text, the same mask, after the padding). One image per row: row 1 is the shorter, padded one.
"""

from __future__ import annotations

from typing import Any

import torch

from hooks_mm.zoo.base import Tiny, init_model
from hooks_mm.zoo.llava import sample_images
from hooks_mm.zoo.tokenizers import word_level

LATENTS = 8
MAX_PATCHES = 24
SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<image>", "</image>"]
WORDS = "what is written in the image ? read it".split()
PROMPTS = ["what is written in the image ?", "read it"]


def kosmos2_5_processor() -> Any:
    from transformers import Kosmos2_5Processor
    from transformers.models.kosmos2_5.image_processing_pil_kosmos2_5 import Kosmos2_5ImageProcessorPil

    tokenizer = word_level(
        [*SPECIAL, *WORDS],
        SPECIAL,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
        extra_special_tokens={"boi_token": "<image>", "eoi_token": "</image>", "image_token": "<s>"},
    )
    image_processor = Kosmos2_5ImageProcessorPil(patch_size={"height": 4, "width": 4}, max_patches=MAX_PATCHES)
    return Kosmos2_5Processor(image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=LATENTS)


def kosmos2_5_inputs(processor: Any, prompts: list[str], images: list[Any]) -> dict[str, torch.Tensor]:
    """``processor(text=prompts, images=images)`` with left padding and the image mask moved with each row."""
    out = processor(text=prompts, images=images, return_tensors="pt", padding=True, max_patches=MAX_PATCHES)
    ids, am = out["input_ids"], out["attention_mask"]
    mask = torch.zeros_like(ids)
    for b in range(ids.shape[0]):
        start = int((am[b] == 0).sum())  # first real position
        mask[b, start : start + 2 + LATENTS + 1] = torch.tensor([0, -1] + [1] * LATENTS + [-1])
    inputs = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    assert bool((am[1] == 0).any()), "row 1 should be padded"
    return inputs | {"image_embeds_position_mask": mask}


def build_kosmos2_5(seed: int = 0) -> Tiny:
    from transformers import Kosmos2_5Config, Kosmos2_5ForConditionalGeneration

    processor = kosmos2_5_processor()
    tok = processor.tokenizer
    text = dict(
        vocab_size=(len(tok) + 8) // 8 * 8, max_position_embeddings=512, embed_dim=32, layers=2, ffn_dim=64,
        attention_heads=4, dropout=0.0, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    vision = dict(
        hidden_size=32, patch_embed_hidden_size=4 * 4 * 3, intermediate_size=64, head_dim=16, num_hidden_layers=2,
        num_attention_heads=2, max_num_patches=4096,
    )  # fmt: skip
    config = Kosmos2_5Config(text_config=text, vision_config=vision, latent_query_num=LATENTS)
    model = init_model(Kosmos2_5ForConditionalGeneration, config, seed)
    images = sample_images(seed, [(24, 32), (32, 24)])
    return Tiny(model=model, inputs=kosmos2_5_inputs(processor, PROMPTS, images), processor=processor)
