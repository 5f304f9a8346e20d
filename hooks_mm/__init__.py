"""hooks_mm: mechanistic interpretability of multimodal LLMs on one hook interface."""

from hooks_mm.adapters import Adapter, adapter_for, register
from hooks_mm.layout import Modality, ModalityLayout, Segment
from hooks_mm.model import Batch, HookedMLLM
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
    Rows,  # issue 16: contrastive decoding (batch rows)
    Selector,
    Special,
    System,
    Text,
    Video,
    Where,
)

__version__ = "0.1.0"

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
from hooks_mm.model.meta import WeightlessError  # noqa: E402  issue 17: the weightless client (HookedMLLM.from_config)

__all__ += ["WeightlessError"]  # issue 17: the weightless client
