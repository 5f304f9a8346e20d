"""Tiny decoder-only models: a text-only Llama baseline and an AnyGPT-style discrete MLLM."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hooks_mm.processing.codebook import CodebookProcessor
from hooks_mm.zoo.base import WORDS, Tiny, toy_image
from hooks_mm.zoo.tokenizers import word_tokenizer

N_CODES = 16
GRID = (4, 4)


def _llama(vocab_size: int, seed: int, **extra: object) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        **extra,
    )
    config.architectures = ["LlamaForCausalLM"]
    return LlamaForCausalLM(config).eval()


def build_llama(seed: int = 0) -> Tiny:
    """Text-only Llama baseline (GQA: 4 query heads, 2 key/value heads)."""
    tok = word_tokenizer(WORDS)
    model = _llama(len(tok), seed)
    tok.padding_side = "left"
    inputs = dict(tok(["what colour is the square ?", "describe the image ."], return_tensors="pt", padding=True))
    return Tiny(model, inputs, tok)


def anygpt_processor() -> CodebookProcessor:
    codes = [f"<img_{k}>" for k in range(N_CODES)]
    tok = word_tokenizer(WORDS, extra_special=("<image>", "<soi>", "<eoi>", *codes))
    g = torch.Generator().manual_seed(1234)
    return CodebookProcessor(tok, torch.rand(N_CODES, 3, generator=g), GRID, image_size=32)


def build_anygpt(seed: int = 0) -> Tiny:
    """AnyGPT-style: a Llama whose vocabulary holds 16 image codes; images are 4x4 codes."""
    proc = anygpt_processor()
    first = proc.code_ids[0]
    model = _llama(
        len(proc.tokenizer),
        seed,
        modality_token_ranges={"image": [first, first + N_CODES]},
        modality_grids={"image": list(GRID)},
        modality_special_ids=[proc.soi, proc.eoi],
    )
    proc.tokenizer.padding_side = "left"
    texts = ["<image> <image> what colour is the square ?", "<image> describe the image ."]
    inputs = dict(proc(texts, images=[toy_image(0), toy_image(1), toy_image(2)]))
    return Tiny(model, inputs, proc)


N_AUDIO_CODES = 16
AUDIO_BANDS = 8
AUDIO_FRAME_SECONDS = 0.04


def anygpt_audio_processor() -> CodebookProcessor:
    codes = [f"<img_{k}>" for k in range(N_CODES)]
    audio = [f"<aud_{k}>" for k in range(N_AUDIO_CODES)]
    tok = word_tokenizer(
        WORDS + ["sound", "hear", "pitch", "high", "low"],
        extra_special=("<image>", "<soi>", "<eoi>", *codes, "<audio>", "<soa>", "<eoa>", *audio),
    )
    g = torch.Generator().manual_seed(1234)
    codebook = torch.rand(N_CODES, 3, generator=g)
    audio_codebook = torch.rand(N_AUDIO_CODES, AUDIO_BANDS, generator=g) * 12  # log1p band energies
    return CodebookProcessor(
        tok, codebook, GRID, image_size=32, audio_codebook=audio_codebook, audio_frame_seconds=AUDIO_FRAME_SECONDS
    )


def build_anygpt_audio(seed: int = 0) -> Tiny:
    """AnyGPT-style with image AND audio codes: 16 image codes (4x4 per image) and 16 audio
    codes (one per 40 ms frame of log band energies), two ranges in one vocabulary."""
    from hooks_mm.media import chirp, tone

    proc = anygpt_audio_processor()
    first, first_audio = proc.code_ids[0], proc.audio_code_ids[0]
    model = _llama(
        len(proc.tokenizer),
        seed,
        modality_token_ranges={"image": [first, first + N_CODES], "audio": [first_audio, first_audio + N_AUDIO_CODES]},
        modality_grids={"image": list(GRID)},
        modality_seconds_per_token={"audio": AUDIO_FRAME_SECONDS},
        modality_special_ids=[proc.soi, proc.eoi, proc.soa, proc.eoa],
    )
    proc.tokenizer.padding_side = "left"
    texts = ["<image> <audio> what colour is the square ?", "<audio> is the pitch high ?"]
    inputs = dict(proc(texts, images=[toy_image(0)], audio=[tone(0.4, 880.0), chirp(0.24)]))
    return Tiny(model, inputs, proc)
