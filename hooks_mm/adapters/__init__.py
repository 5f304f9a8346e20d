"""Adapter registry: one small table per Hugging Face family, keyed by architecture."""

from __future__ import annotations

import difflib
from typing import Any, Callable

from hooks_mm.adapters.base import (
    Adapter,
    ImagePlan,
    MediaPlan,
    check_backbone,
    config_get,
    grid_plan,
    square_side,
    token_id_mask,
)

ADAPTERS: dict[str, Adapter] = {}
# architectures whose HF class covers several layouts: config -> Adapter
VARIANTS: dict[str, Callable[[Any], Adapter]] = {}


def register(adapter: Adapter) -> Adapter:
    """Make ``adapter`` the one used for each of its HF architecture names."""
    for arch in adapter.architectures:
        ADAPTERS[arch] = adapter
    return adapter


def adapter_for(model: Any) -> Adapter:
    """The adapter of an HF model, chosen from its class name (then config.architectures)."""
    names = [type(model).__name__, *(getattr(model.config, "architectures", None) or [])]
    return adapter_for_names(names, model.config)


def adapter_for_names(names: list[str], config: Any = None) -> Adapter:
    """The adapter registered for the first of ``names`` (HF architecture class names)."""
    for name in names:
        if name in VARIANTS and config is not None:
            return VARIANTS[name](config)
        if name in ADAPTERS:
            return ADAPTERS[name]
    close = difflib.get_close_matches(names[0], list(ADAPTERS), n=3)
    hint = f" Closest supported: {', '.join(close)}." if close else ""
    raise NotImplementedError(
        f"No hooks_mm adapter for architecture {names[0]!r}.{hint} Supported: "
        f"{', '.join(sorted(ADAPTERS))}. To add one, register a table with "
        "hooks_mm.adapters.register(Adapter(name=..., architectures=(...,), layers=..., "
        "embed=..., final_norm=...)) giving the dotted paths of the decoder layers, "
        "embedding and final norm (see hooks_mm/adapters/base.py)."
    )


# the family tables register themselves on import
from hooks_mm.adapters import families  # noqa: E402,F401

__all__ = [
    "ADAPTERS",
    "Adapter",
    "ImagePlan",
    "MediaPlan",
    "adapter_for",
    "adapter_for_names",
    "check_backbone",
    "config_get",
    "grid_plan",
    "register",
    "square_side",
    "token_id_mask",
]
