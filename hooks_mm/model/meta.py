"""A weightless HookedMLLM: a checkpoint's config and processor only, parameters on the meta device.

The point of NDIF is not downloading the model. ``HookedMLLM.from_config(repo)`` reads
config.json and the processor files, builds the HF model on the meta device (no weights read,
no parameter memory) and gives the loaded model's hook names, ``cfg``, layouts, selectors,
spec validation and compilation; inputs stay on the CPU. What needs a forward
(``model(...)``, ``run_with_cache``, ``run_with_hooks``, ``generate``, a metric's own clean
run) raises :class:`WeightlessError` naming the remote route; :func:`hooks_mm.remote.remote_sweep`
computes metric targets (``answer_logprob`` without targets, ``kl_to_clean``) on the server.

Example::

    model = HookedMLLM.from_config("llava-hf/llava-1.5-7b-hf")      # seconds, no weights
    inputs = model.to_inputs("<image> What colour?", images=img, chat=True)
    metric = answer_logprob(model, inputs)                           # targets: the server's clean argmax
    result = remote_sweep(model, inputs, configs, metric, remote="https://ndif.example")
"""

from __future__ import annotations

from typing import Any

import torch

from hooks_mm.model.loading import as_dtype, config_class, load_config
from hooks_mm.processing import load_processor


class WeightlessError(RuntimeError):
    """A forward asked of a HookedMLLM that holds no weights (built with ``HookedMLLM.from_config``)."""


def is_weightless(model: Any) -> bool:
    """True when every parameter of ``model.hf_model`` is on the meta device (and no accelerate offload
    hook would load them): the model can lay out and compile, not run."""
    if model.cfg.device.type != "meta" or getattr(model.hf_model, "hf_device_map", None):
        return False
    return all(p.is_meta for p in model.hf_model.parameters())


def input_device(model: Any) -> torch.device:
    """Where ``model.prepare`` puts inputs: the model's device, the CPU for a weightless model."""
    return torch.device("cpu") if is_weightless(model) else model.cfg.device


def check_forward(model: Any, what: str = "this call runs the model", fix: str = "") -> None:
    """Raise :class:`WeightlessError` when ``model`` holds no weights: ``what`` needs a forward pass."""
    if is_weightless(model):
        raise WeightlessError(
            f"{what}, and this HookedMLLM holds no weights (built from its config with HookedMLLM.from_config: every "
            "parameter is on the meta device): run it remotely, e.g. hooks_mm.remote.remote_sweep(model, inputs, "
            "configs, metric, remote=URL) or NNsightBackend(model, load_nnsight(repo)).run(inputs, spec, remote=URL)"
            f"{fix}, or load the weights with HookedMLLM.from_pretrained(repo)."
        )


def from_config(
    cls: type, name_or_path: Any, *, processor: Any | bool = True, dtype: Any = None
) -> Any:  # a HookedMLLM (``cls``): typed loosely, as hooks_mm.model.core imports this module
    """A weightless HookedMLLM of a checkpoint (hub id, local directory, built-in name, or an HF config
    object): config.json and the processor are read, no weights; parameters live on the meta device.

    ``dtype``: the dtype the server runs (pixels are cast to it; default: the config's ``dtype``,
    as ``from_pretrained(dtype="auto")``); ``processor``: loaded from the checkpoint unless
    ``False`` or an object (needed for a config object without a checkpoint directory).
    Layouts, selectors and spec compilation work; forwards raise :class:`WeightlessError`.

    Example::

        model = HookedMLLM.from_config("llava-hf/llava-1.5-7b-hf")
        sum(p.is_meta for p in model.parameters()) == len(list(model.parameters()))   # True
    """
    if isinstance(name_or_path, str):
        path, config, adapter, model_cls = load_config(name_or_path)
    else:
        config, path = name_or_path, getattr(name_or_path, "_name_or_path", "") or ""
        adapter, model_cls = config_class(config, type(config).__name__)
    if dtype in (None, "auto"):
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    with torch.device("meta"):
        hf_model = model_cls._from_config(config, dtype=as_dtype(dtype)).eval()
    if processor is True:
        if not path:
            raise ValueError(
                "this config names no checkpoint directory to load a processor from: pass processor=... "
                "(e.g. the tokenizer / processor of a checkpoint with the same vocabulary)."
            )
        processor = load_processor(path)
    return cls(hf_model, processor or None, adapter=adapter)


__all__ = ["WeightlessError", "check_forward", "from_config", "input_device", "is_weightless"]
