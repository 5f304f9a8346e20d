"""Imports every family table so that each registers its architectures."""

import importlib

from hooks_mm.adapters import VARIANTS, register

for _module in ("text", "llava", "qwen", "idefics_gemma", "discrete_cross"):
    try:
        _mod = importlib.import_module(f"hooks_mm.adapters.{_module}")
    except ModuleNotFoundError as e:  # a family file not yet written
        if e.name != f"hooks_mm.adapters.{_module}":
            raise
        continue
    for _adapter in _mod.ADAPTERS:
        register(_adapter)
    VARIANTS.update(getattr(_mod, "VARIANTS", {}))
