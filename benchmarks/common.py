"""Shared by the benchmarks: the machine line and a ~100M-parameter random LLaVA."""

from __future__ import annotations

import os
import platform

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads{load}"


def llava_100m(text_tokens: int = 64, batch: int = 2):  # noqa: ANN201
    """A ~92M-parameter LLaVA (Llama LM 12 x 768, CLIP 4 x 256, 8x8 image tokens), random weights."""
    return llava_random(text_tokens, batch)


def llava_random(  # noqa: ANN201
    text_tokens: int = 64, batch: int = 2, layers: int = 12, d_model: int = 768, d_mlp: int = 2048, heads: int = 12
):
    """A random LLaVA of the ~92M shape (vocab 8000, CLIP 4 x 256, 8x8 image tokens) with the LM's
    ``layers`` x ``d_model`` / ``d_mlp`` / ``heads`` given (the benchmarks' ``--smoke`` runs a tiny one)."""
    torch.manual_seed(0)
    config = LlavaConfig(
        text_config=LlamaConfig(
            vocab_size=8000,
            hidden_size=d_model,
            intermediate_size=d_mlp,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 3),
            max_position_embeddings=1024,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=112,
            patch_size=14,
        ),
        image_token_index=7999,
        vision_feature_select_strategy="default",
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    model = LlavaForConditionalGeneration(config).eval()
    return model, llava_inputs(text_tokens, batch)


def llava_inputs(text_tokens: int, batch: int = 2) -> dict[str, torch.Tensor]:
    n_img = (112 // 14) ** 2
    g = torch.Generator().manual_seed(1)
    text = torch.randint(10, 7990, (batch, text_tokens), generator=g)
    ids = torch.cat([text[:, :4], torch.full((batch, n_img), 7999), text[:, 4:]], dim=1)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(batch, 3, 112, 112, generator=g),
    }
