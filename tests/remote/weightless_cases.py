"""Weightless clients for the tests: tiny-llava from its config, and a 7B-size LLaVA config (meta weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

from hooks_mm import HookedMLLM
from hooks_mm.processing import load_processor

# Vicuna-7B, LLaVA-1.5-7B's language model
VICUNA_7B = dict(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32
)


def big_llava(path: str, dtype: Any = "float32") -> HookedMLLM:
    """A weightless LLaVA whose language model has LLaVA-1.5-7B's shapes (Vicuna-7B: 32 layers, d_model 4096,
    d_mlp 11008, 32 heads), addressed to the checkpoint at ``path`` (tiny-llava: its vocabulary, processor and
    vision tower, so that checkpoint's inputs and a server running it fit)."""
    tiny = transformers.AutoConfig.from_pretrained(path)
    text = transformers.LlamaConfig(
        **VICUNA_7B,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        vocab_size=tiny.text_config.vocab_size,
        bos_token_id=tiny.text_config.bos_token_id,
        eos_token_id=tiny.text_config.eos_token_id,
        pad_token_id=tiny.text_config.pad_token_id,
    )
    config = transformers.LlavaConfig(
        text_config=text,
        vision_config=tiny.vision_config,
        image_token_index=tiny.image_token_index,
        image_seq_length=tiny.image_seq_length,
        vision_feature_layer=tiny.vision_feature_layer,
        projector_hidden_act=tiny.projector_hidden_act,
        architectures=["LlavaForConditionalGeneration"],
    )
    config._name_or_path = str(Path(path).resolve())  # the key the server's checkpoint answers to
    return HookedMLLM.from_config(config, processor=load_processor(path), dtype=dtype)


def rss_bytes() -> int:
    """This process's resident memory now (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def all_meta(model: HookedMLLM) -> bool:
    params = list(model.parameters())
    return bool(params) and all(p.is_meta for p in params)


def same(a: Any, b: Any) -> bool:
    """Deep equality of plans (tensors compared exactly, functions by identity)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b
