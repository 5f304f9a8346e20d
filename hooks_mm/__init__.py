"""hooks_mm: mechanistic interpretability of multimodal LLMs on one hook interface.

``import hooks_mm`` is instant: it imports neither torch nor transformers. Each public name
below is imported from its module on first use (PEP 562), so ``from hooks_mm import Image``
costs torch only, and ``from hooks_mm import HookedMLLM`` what a model needs (transformers,
TransformerLens).

Example::

    import hooks_mm                       # no torch yet
    from hooks_mm import HookedMLLM, Image
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it, imported on first use (a block per issue: add yours as a new update)
LAZY: dict[str, str] = {
    "Adapter": "hooks_mm.adapters",
    "adapter_for": "hooks_mm.adapters",
    "register": "hooks_mm.adapters",
    "Modality": "hooks_mm.layout",
    "ModalityLayout": "hooks_mm.layout",
    "Segment": "hooks_mm.layout",
    "Batch": "hooks_mm.model",
    "HookedMLLM": "hooks_mm.model",
    **{
        name: "hooks_mm.selectors"
        for name in (
            "After",
            "Answer",
            "Audio",
            "AudioTime",
            "First",
            "Frame",
            "Generated",
            "Image",
            "Instruction",
            "Last",
            "LastN",
            "NonPad",
            "Positions",
            "Rows",
            "Selector",
            "Special",
            "System",
            "Text",
            "Video",
            "Where",
        )
    },
}

__all__ = [
    "Adapter",
    "After",
    "Answer",
    "Audio",
    "AudioTime",
    "Batch",
    "Frame",
    "HookedMLLM",
    "Image",
    "Instruction",
    "Last",
    "Modality",
    "ModalityLayout",
    "NonPad",
    "Positions",
    "Segment",
    "Selector",
    "Special",
    "System",
    "Text",
    "Video",
    "Where",
    "Generated",
    "adapter_for",
    "register",
]
__all__ += ["First", "LastN"]  # issue 16: ragged batches
__all__ += ["Rows"]  # issue 16: contrastive decoding
LAZY["WeightlessError"] = "hooks_mm.model.meta"  # issue 17: the weightless client (HookedMLLM.from_config)
__all__ += ["WeightlessError"]  # issue 17: the weightless client


def __getattr__(name: str) -> Any:
    """``hooks_mm.X`` for a public name: imported from its module now, then cached here."""
    module = LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hooks_mm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(LAZY))


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from hooks_mm.adapters import Adapter, adapter_for, register
    from hooks_mm.layout import Modality, ModalityLayout, Segment
    from hooks_mm.model import Batch, HookedMLLM
    from hooks_mm.model.meta import WeightlessError
    from hooks_mm.selectors import (
        After,
        Answer,
        Audio,
        AudioTime,
        First,
        Frame,
        Generated,
        Image,
        Instruction,
        Last,
        LastN,
        NonPad,
        Positions,
        Rows,
        Selector,
        Special,
        System,
        Text,
        Video,
        Where,
    )
