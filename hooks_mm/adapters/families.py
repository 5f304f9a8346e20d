"""Imports every family table so that each registers its architectures."""

import importlib

from hooks_mm.adapters import VARIANTS, register

for _module in (
    "text",
    "llava",
    "qwen",
    "idefics_gemma",
    "discrete_cross",
    "audio",
    "idefics2_deepseek",
    "llava_more",
    "qwen_more",
    "audio_more",
    "glm_cohere",
    "hybrid",
    "ocr",
    "gemma4_fuyu",
    "llama4_aria",
    "blip",
    "moe_families",
    "minicpm",
):
    _mod = importlib.import_module(f"hooks_mm.adapters.{_module}")
    for _adapter in _mod.ADAPTERS:
        register(_adapter)
    VARIANTS.update(getattr(_mod, "VARIANTS", {}))
