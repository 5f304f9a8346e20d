"""HookedMLLM and Batch (see :mod:`hooks_mm.model.core`); the hook tree, its wiring into the HF
model, input building, loading and the batch value each live in a module of their own."""

from hooks_mm.model.batch import Batch
from hooks_mm.model.concat import concat_inputs  # issue 16: contrastive decoding
from hooks_mm.model.core import HookedMLLM

__all__ = ["Batch", "HookedMLLM", "concat_inputs"]
