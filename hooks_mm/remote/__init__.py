"""nnsight backend: hooks_mm models under nnsight (local, or remote on NDIF)."""

from hooks_mm.remote.nnsight_model import MultimodalNNsight

__all__ = ["MultimodalNNsight"]
