"""Tiny decoder-only models: a text-only Llama baseline and AnyGPT-style discrete MLLMs."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hooks_mm.processing.codebook import CodebookProcessor
from hooks_mm.zoo.base import WORDS, Tiny, init_model, lm_config, token_ids, toy_image
from hooks_mm.zoo.tokenizers import word_tokenizer

N_CODES = 16
GRID = (4, 4)
N_AUDIO_CODES = 16
AUDIO_BANDS = 8
AUDIO_FRAME_SECONDS = 0.04


def _llama(tokenizer: Any, seed: int, **extra: object) -> LlamaForCausalLM:
    config = LlamaConfig(**lm_config(len(tokenizer), max_position_embeddings=256, **token_ids(tokenizer), **extra))
    return init_model(LlamaForCausalLM, config, seed)


def build_llama(seed: int = 0) -> Tiny:
    """Text-only Llama baseline (GQA: 4 query heads, 2 key/value heads)."""
    tok = word_tokenizer(WORDS)
    tok.padding_side = "left"
    inputs = dict(tok(["what colour is the square ?", "describe the image ."], return_tensors="pt", padding=True))
    return Tiny(_llama(tok, seed), inputs, tok)


def anygpt_processor(audio: bool = False) -> CodebookProcessor:
    """AnyGPT-style processor (left padding): 16 image codes, 4 x 4 per image; with ``audio``
    also 16 audio codes, one per 40 ms frame of log band energies."""
    special = ["<image>", "<soi>", "<eoi>", *(f"<img_{k}>" for k in range(N_CODES))]
    words = WORDS
    if audio:
        special += ["<audio>", "<soa>", "<eoa>", *(f"<aud_{k}>" for k in range(N_AUDIO_CODES))]
        words = WORDS + ["sound", "hear", "pitch", "high", "low"]
    tok = word_tokenizer(words, extra_special=special)
    tok.padding_side = "left"
    g = torch.Generator().manual_seed(1234)
    codebook = torch.rand(N_CODES, 3, generator=g)
    if not audio:
        return CodebookProcessor(tok, codebook, GRID, image_size=32)
    audio_codebook = torch.rand(N_AUDIO_CODES, AUDIO_BANDS, generator=g) * 12  # log1p band energies
    return CodebookProcessor(
        tok, codebook, GRID, image_size=32, audio_codebook=audio_codebook, audio_frame_seconds=AUDIO_FRAME_SECONDS
    )


def _anygpt(proc: CodebookProcessor, seed: int, texts: list[str], **media: Any) -> Tiny:
    """A Llama over the processor's vocabulary; its config names the code ranges (hooks_mm reads them)."""
    ranges = {"image": [proc.code_ids[0], proc.code_ids[0] + N_CODES]}
    extra: dict[str, Any] = dict(modality_grids={"image": list(GRID)}, modality_special_ids=[proc.soi, proc.eoi])
    if proc.audio_codebook is not None:
        ranges["audio"] = [proc.audio_code_ids[0], proc.audio_code_ids[0] + N_AUDIO_CODES]
        extra["modality_seconds_per_token"] = {"audio": AUDIO_FRAME_SECONDS}
        extra["modality_special_ids"] += [proc.soa, proc.eoa]
    model = _llama(proc.tokenizer, seed, modality_token_ranges=ranges, **extra)
    return Tiny(model, dict(proc(texts, **media)), proc)


def build_anygpt(seed: int = 0) -> Tiny:
    """AnyGPT-style: a Llama whose vocabulary holds 16 image codes; images are 4x4 codes."""
    texts = ["<image> <image> what colour is the square ?", "<image> describe the image ."]
    return _anygpt(anygpt_processor(), seed, texts, images=[toy_image(0), toy_image(1), toy_image(2)])


def build_anygpt_audio(seed: int = 0) -> Tiny:
    """AnyGPT-style with image AND audio codes: 16 image codes (4x4 per image) and 16 audio
    codes (one per 40 ms frame of log band energies), two ranges in one vocabulary."""
    from hooks_mm.media import chirp, tone

    texts = ["<image> <audio> what colour is the square ?", "<audio> is the pitch high ?"]
    return _anygpt(
        anygpt_processor(audio=True), seed, texts, images=[toy_image(0)], audio=[tone(0.4, 880.0), chirp(0.24)]
    )
