"""Tiny-config builders for every supported family, and built-in model names.

``hooks_mm.zoo.build("llava")`` returns a :class:`Tiny` (random weights, example inputs);
``HookedMLLM.from_pretrained("tiny-llava")`` saves that model (and its processor) once
under ``$HOOKS_MM_CACHE`` (default ``~/.cache/hooks_mm``) and loads it from there through
the same ``from_pretrained`` path as a hub model.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable

from hooks_mm.processing import save_processor
from hooks_mm.zoo.base import Tiny, toy_image

BUILDERS: dict[str, Callable[..., Tiny]] = {}
for _module in ("text", "llava", "qwen", "idefics_gemma", "discrete_cross", "qwen_video", "omni", "audio", "llava_video"):
    BUILDERS.update(importlib.import_module(f"hooks_mm.zoo.{_module}").BUILDERS)

DEFAULT_MODEL = "toy-llava"  # a trained organism shipped in the package


def build(name: str, seed: int = 0) -> Tiny:
    """Build the tiny model of a family (``llava``, ``qwen2_vl``, ``anygpt``, ...)."""
    if name not in BUILDERS:
        raise KeyError(f"no tiny builder {name!r}; known: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name](seed=seed)


def cache_dir() -> str:
    return os.environ.get("HOOKS_MM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hooks_mm"))


def save(tiny: Tiny, path: str) -> str:
    """``save_pretrained`` the model and its processor into ``path``."""
    os.makedirs(path, exist_ok=True)
    tiny.model.save_pretrained(path)
    if tiny.processor is not None:
        save_processor(tiny.processor, path)
    return path


def resolve(name_or_path: str) -> str:
    """A built-in name becomes a local directory; others pass through.

    ``tiny-<family>``: random weights, saved once under :func:`cache_dir`. ``toy-llava``,
    ``toy-anygpt``, ``toy-anygpt-monotune``: the trained organisms shipped in the package.
    """
    from hooks_mm.zoo.organisms import ORGANISMS

    if name_or_path in ORGANISMS:
        path = ORGANISMS[name_or_path].path
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"organism {name_or_path!r}: no weights in {path}; train them with "
                f"`python -m hooks_mm.zoo.train {name_or_path}`."
            )
        return path
    if name_or_path.startswith("tiny-") and name_or_path[5:].replace("-", "_") in BUILDERS:
        family = name_or_path[5:].replace("-", "_")
        path = os.path.join(cache_dir(), name_or_path)
        if not os.path.isfile(os.path.join(path, "config.json")):
            save(build(family), path + ".tmp")
            os.replace(path + ".tmp", path) if not os.path.exists(path) else None
        return path
    return name_or_path


__all__ = ["BUILDERS", "DEFAULT_MODEL", "Tiny", "build", "cache_dir", "resolve", "save", "toy_image"]
