"""Tiny random-weight Fuyu (Persimmon decoder) with its real HF processor.

``FuyuProcessor`` over a WordLevel tokenizer built here and the PIL image processor
(``FuyuImageProcessorPil``: images only shrunk to fit ``size``, padded, cut to whole patches):
each image becomes ``|SPEAKER|`` per patch, row-major, with ``|NEWLINE|`` closing every patch row,
then ``<s>``, the prompt and ``<0x04>`` (begin of answer); rows left-padded. ``pixel_values`` are
the raw patches of all images concatenated, which ``vision_embed_tokens`` (a linear layer)
embeds. Fuyu takes one image per prompt: row 0 a 3 x 4-patch image, row 1 a 4 x 3-patch one.
"""

from __future__ import annotations

from typing import Any

import torch

from hooks_mm.zoo.base import Tiny, init_model
from hooks_mm.zoo.llava import sample_images
from hooks_mm.zoo.tokenizers import word_level

PATCH = 8
SPECIAL = ["<unk>", "<pad>", "<s>", "|ENDOFTEXT|", "|SPEAKER|", "|NEWLINE|", "<0x04>"]
WORDS = "what is in the image ? describe it a red blue left right".split()
PROMPTS = ["what is in the image ?", "describe it"]


def _image_processor_cls() -> Any:
    """``FuyuImageProcessorPil`` whose ``patchify_image`` takes the torch tensors FuyuProcessor hands it
    (transformers 5.23's PIL patchify is numpy-only and the torchvision one cannot be installed here)."""
    import numpy as np
    from transformers.models.fuyu.image_processing_pil_fuyu import FuyuImageProcessorPil

    class FuyuImageProcessorPilTorch(FuyuImageProcessorPil):
        def patchify_image(self, image: Any, patch_size: Any = None) -> torch.Tensor:
            return torch.as_tensor(super().patchify_image(np.asarray(image), patch_size))

    return FuyuImageProcessorPilTorch


def fuyu_processor() -> Any:
    from transformers import FuyuProcessor

    tokenizer = word_level(
        [*SPECIAL, *WORDS],
        SPECIAL,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="|ENDOFTEXT|",
        padding_side="left",
    )
    image_processor = _image_processor_cls()(
        size={"height": 48, "width": 48}, patch_size={"height": PATCH, "width": PATCH}
    )
    return FuyuProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_fuyu(seed: int = 0) -> Tiny:
    from transformers import FuyuConfig, FuyuForCausalLM

    processor = fuyu_processor()
    tok = processor.tokenizer
    text = dict(
        vocab_size=(len(tok) + 8) // 8 * 8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        qk_layernorm=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = FuyuConfig(
        text_config=text,
        patch_size=PATCH,
        num_channels=3,
        image_token_id=processor.image_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config.image_newline_token_id = processor.image_newline_id  # optional id hooks_mm reads (a tokenizer id)
    model = init_model(FuyuForCausalLM, config, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # layer norms away from 1 / 0, so that they matter
        for name, p in model.named_parameters():
            if "layernorm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    images = sample_images(seed, [(24, 32), (32, 24)])
    return Tiny(model=model, inputs=fuyu_inputs(processor, PROMPTS, images), processor=processor)


def fuyu_inputs(processor: Any, prompts: list[str], images: list[Any]) -> dict[str, torch.Tensor]:
    """What ``processor(text=prompts, images=images)`` returns, one image per prompt: HF's own patches and
    placeholder text (``_process_images``: ``|SPEAKER|`` * cols + ``|NEWLINE|`` per patch row, then ``<s>``),
    then the prompt and ``<0x04>``, left-padded. Tokenised here because FuyuProcessor drops the first id of
    the placeholder text, the ``_`` its sentencepiece tokenizer puts there and a WordLevel one does not."""
    processed, replacements = processor._process_images(images, return_legacy_image_output=False, return_tensors="pt")
    tok = processor.tokenizer
    rows = [
        tok(placeholder, add_special_tokens=False)["input_ids"]
        + tok(prompt + " <0x04>", add_special_tokens=False)["input_ids"]
        for placeholder, prompt in zip(replacements, prompts)
    ]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    assert int(mask[1].eq(0).sum()) > 0, "row 1 should be padded"
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": processed["pixel_values"]}
