"""Adapter registry: one wrapper table per Hugging Face family, keyed by architecture, over the
backbone table of its decoder block, keyed by the text config's ``model_type``."""

from __future__ import annotations

import difflib
from typing import Any, Callable

from hooks_mm.adapters.backbones import BACKBONES, Backbone, backbone_for
from hooks_mm.adapters.base import Adapter, ImagePlan, MediaPlan, config_get, grid_plan, square_side, token_id_mask
from hooks_mm.adapters.block_check import check_backbone

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
    """The adapter registered for the first of ``names`` (HF architecture class names), over the
    backbone row of ``config``'s text model when a config is given."""
    for name in names:
        adapter = VARIANTS[name](config) if name in VARIANTS and config is not None else ADAPTERS.get(name)
        if adapter is not None:
            return adapter if config is None else adapter.with_backbone(config)
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
    "BACKBONES",
    "Backbone",
    "ImagePlan",
    "MediaPlan",
    "adapter_for",
    "adapter_for_names",
    "backbone_for",
    "check_backbone",
    "config_get",
    "grid_plan",
    "register",
    "square_side",
    "token_id_mask",
]
