"""Tiny random-weight MiniCPM-V 4.6 / 4.7 and MiniCPM-OCR models over a Qwen3.5 hybrid stack.

Inputs are what ``MiniCPMV4_6Processor`` gives, made with its own parts: the PIL image processor
(``MiniCPMV4_6ImageProcessorPil``: source image + slices, NaViT-packed ``pixel_values``,
``target_sizes``) and the processor's ``replace_image_token`` / ``_prepend_local_ids`` for the text
(the processor itself cannot be built here: its ``__init__`` reads the video processor, which needs
torchvision). Row 0: a wide image cut into 1x3 slices and a small unsliced one; row 1: a tall image
cut into 3x1 slices, left-padded. MiniCPM-OCR (``"4x"``: no window merger) has the same model and
processor classes over other defaults; its inputs come from the same PIL image processor in ``"4x"`` mode.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from hooks_mm.zoo.base import Tiny, init_model, lm_config, token_ids
from hooks_mm.zoo.hybrid import QWEN3_5_LAYERS, QWEN3_5_LINEAR
from hooks_mm.zoo.llava import build_tokenizer, sample_images

MINICPM_TOKENS = dict(
    image_token="<|image_pad|>", video_token="<|video_pad|>", image_start_token="<image>", image_end_token="</image>",
    slice_start_token="<slice>", slice_end_token="</slice>", image_id_start_token="<image_id>",
    image_id_end_token="</image_id>",
)  # fmt: skip
MINICPM_SIZES = [(40, 96), (30, 30), (96, 40)]  # (height, width): 1x3 slices, none, 3x1 slices


def minicpm_inputs(tok: Any, mode: str, seed: int) -> dict[str, torch.Tensor]:
    from transformers import MiniCPMV4_6Processor
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil

    image_processor = MiniCPMV4_6ImageProcessorPil(
        patch_size=4, scale_resolution=32, max_slice_nums=4, downsample_mode=mode
    )
    images = sample_images(seed, MINICPM_SIZES)
    processed = image_processor(images, return_tensors="pt")
    names = SimpleNamespace(slice_mode=True, **MINICPM_TOKENS)
    divisor = 4 if mode == "4x" else 16
    expanded = [
        MiniCPMV4_6Processor.replace_image_token(names, processed, image_idx=i, image_token_divisor=divisor)
        for i in range(len(images))
    ]
    image = MINICPM_TOKENS["image_token"]
    texts = [f"USER : {image} {image} compare these two images ? ASSISTANT :", f"USER : {image} what is in the image ?"]
    expanded = MiniCPMV4_6Processor._prepend_local_ids(names, texts, expanded, image)
    out, k = [], 0
    for text in texts:
        for _ in range(text.count(image)):
            text = text.replace(image, expanded[k].replace(image, "<IMG>"), 1)
            k += 1
        out.append(text.replace("<IMG>", image))
    enc = tok(out, padding=True, return_tensors="pt")
    return {**enc, "pixel_values": processed["pixel_values"], "target_sizes": processed["target_sizes"]}


# MiniCPM-V 4.7's config fields for the canvas M-RoPE markers, and their tokens
CANVAS_IDS = dict(
    image_start_id="<image>",
    image_end_id="</image>",
    slice_start_id="<slice>",
    slice_end_id="</slice>",
    newline_id="\n",
)


def build_minicpm(name: str, seed: int, mode: str, canvas: bool = False) -> Tiny:
    import transformers

    tok = build_tokenizer((*MINICPM_TOKENS.values(), "\n"))  # "\n" parts slice rows
    vocab = (len(tok) + 8) // 8 * 8
    text = transformers.Qwen3_5TextConfig(
        **lm_config(vocab, num_hidden_layers=len(QWEN3_5_LAYERS), **token_ids(tok)),
        layer_types=QWEN3_5_LAYERS,
        head_dim=16,
        **QWEN3_5_LINEAR,
    )
    vision = getattr(transformers, f"{name}VisionConfig")(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4
    )
    config = getattr(transformers, f"{name}Config")(
        text_config=text,
        vision_config=vision,
        insert_layer_id=1,  # the window merger after the last tower layer: a patch reaches one window only
        downsample_mode=mode,
        image_token_id=tok.convert_tokens_to_ids(MINICPM_TOKENS["image_token"]),
        video_token_id=tok.convert_tokens_to_ids(MINICPM_TOKENS["video_token"]),
        **({field: tok.convert_tokens_to_ids(t) for field, t in CANVAS_IDS.items()} if canvas else {}),
    )
    model = init_model(getattr(transformers, f"{name}ForConditionalGeneration"), config, seed)
    inputs = minicpm_inputs(tok, mode, seed)
    if canvas:  # MiniCPMV4_7Processor returns mm_token_type_ids (1 at image tokens): its canvas M-RoPE reads them
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == config.image_token_id).int()
    return Tiny(model=model, inputs=inputs)


def build_minicpmv4_6(seed: int = 0) -> Tiny:
    """MiniCPM-V 4.6 ("16x": window merger + merger, one LM cell per 4x4 patches)."""
    return build_minicpm("MiniCPMV4_6", seed, "16x")


def build_minicpmv4_7(seed: int = 0) -> Tiny:
    """MiniCPM-V 4.7 ("16x", canvas M-RoPE from mm_token_type_ids and the marker ids in its config)."""
    return build_minicpm("MiniCPMV4_7", seed, "16x", canvas=True)


def build_minicpm_ocr(seed: int = 0) -> Tiny:
    """MiniCPM-OCR ("4x": merger only, one LM cell per 2x2 patches)."""
    return build_minicpm("MiniCPMOcr", seed, "4x")
