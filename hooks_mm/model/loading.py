"""Loading a checkpoint (hub id, local directory or built-in name) as an HF model, its adapter and processor.

Example::

    hf_model, processor, adapter = load("tiny-llava")
"""

from __future__ import annotations

from typing import Any

from hooks_mm.adapters import Adapter, adapter_for_names
from hooks_mm.processing import load_processor


def load(name_or_path: str, processor: Any | bool = True, **hf_kwargs: Any) -> tuple[Any, Any, Adapter]:
    """(HF model in eval mode, processor or None, adapter) of a checkpoint; see ``HookedMLLM.from_pretrained``."""
    import transformers

    from hooks_mm.zoo import resolve

    path = resolve(name_or_path)
    config = transformers.AutoConfig.from_pretrained(path)
    arch = (config.architectures or [None])[0]
    if arch is None:
        raise ValueError(
            f"{name_or_path}: config.json names no architecture; load the model yourself and "
            "wrap it with HookedMLLM(hf_model, processor)."
        )
    adapter = adapter_for_names([arch], config)
    model_cls = getattr(transformers, arch, None)
    if model_cls is None:
        raise NotImplementedError(f"transformers {transformers.__version__} has no class {arch}.")
    hf_kwargs.setdefault("dtype", "auto")
    hf_model = model_cls.from_pretrained(path, **hf_kwargs).eval()
    if processor is True:
        processor = load_processor(path)
    elif processor is False:
        processor = None
    return hf_model, processor, adapter
