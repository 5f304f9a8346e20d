"""Loading a checkpoint (hub id, local directory or built-in name) as an HF model, its adapter and processor.

Example::

    hf_model, processor, adapter = load("tiny-llava", **load_options("bfloat16", None, None))
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from hooks_mm.adapters import Adapter, adapter_for_names
from hooks_mm.model.saving import load_saved_processor
from hooks_mm.zoo.versions import check_family


def load_options(dtype: Any, device: Any, device_map: Any) -> dict[str, Any]:
    """The HF ``from_pretrained`` keywords for ``HookedMLLM.from_pretrained``'s dtype / device / device_map."""
    if device is not None and device_map is not None:
        raise ValueError("give device= (move the whole model there) or device_map= (let HF place its parts), not both.")
    out: dict[str, Any] = {}
    if device is not None:
        torch.device(device)  # a bad device string fails here, before loading anything
    if device_map is not None:
        out["device_map"] = device_map
    if dtype is not None:
        out["dtype"] = as_dtype(dtype)
    return out


def as_dtype(dtype: Any) -> torch.dtype | str:
    """``torch.bfloat16``, ``"bfloat16"``, ``"torch.bfloat16"`` -> ``torch.bfloat16``; ``"auto"`` stays."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(
            f"dtype={dtype!r} is not a floating torch dtype: use 'float32', 'bfloat16', 'float16', 'auto' "
            "or a torch dtype (torch.bfloat16)."
        )
    return value


def load_config(name_or_path: str) -> tuple[str, Any, Adapter, type]:
    """(resolved path, HF config, adapter, HF model class) of a checkpoint; reads no weights."""
    import transformers

    from hooks_mm.zoo import builtin_names, resolve

    path = resolve(name_or_path)
    if os.path.isfile(os.path.join(path, "config.json")):  # before AutoConfig, which fails on a newer model_type
        with open(os.path.join(path, "config.json")) as f:
            check_family(str(json.load(f).get("model_type")))
    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        if os.path.isdir(path):
            raise
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        names = builtin_names()
        tiny = sorted(n[5:] for n in names if n.startswith("tiny-"))
        other = [n for n in names if not n.startswith("tiny-")]
        raise OSError(
            f"cannot load {name_or_path!r}: it is not a local directory with a config.json nor a built-in name, and "
            f"as a hub id it failed ({reason}). Use a built-in name (an organism: "
            f"{', '.join(n for n in other if '-large' not in n)}, their -large versions; "
            f"or tiny-<family> for {len(tiny)} families: {', '.join(tiny[:4])}, ...; "
            "hooks_mm.zoo.builtin_names() lists them), a local directory holding config.json, or a hub id with the "
            "network on (unset HF_HUB_OFFLINE)."
        ) from e
    check_family(str(getattr(config, "model_type", "")))
    adapter, model_cls = config_class(config, name_or_path)
    return path, config, adapter, model_cls


def config_class(config: Any, name: str) -> tuple[Adapter, type]:
    """(adapter, HF model class) of an HF config, from its ``architectures``."""
    import transformers

    arch = (config.architectures or [None])[0]
    if arch is None:
        raise ValueError(
            f"{name}: config.json names no architecture; load the model yourself and "
            "wrap it with HookedMLLM(hf_model, processor)."
        )
    adapter = adapter_for_names([arch], config)
    model_cls = getattr(transformers, arch, None)
    if model_cls is None:
        raise NotImplementedError(f"transformers {transformers.__version__} has no class {arch}.")
    return adapter, model_cls


def check_all_loaded(path: str, info: dict[str, Any]) -> None:
    """Refuse a model some of whose parameters the checkpoint did not fill: HF initialises them at random
    with only a log line (a checkpoint written by a newer transformers whose module names changed)."""
    import transformers

    missing = sorted(info.get("missing_keys") or [])
    if not missing:
        return
    written = "?"
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        with open(config) as f:
            written = json.load(f).get("transformers_version", "?")
    raise ValueError(
        f"{path}: {len(missing)} parameters of the model are not in the checkpoint and would be random "
        f"(e.g. {', '.join(missing[:3])}; the checkpoint holds {len(info.get('unexpected_keys') or [])} names "
        f"the model does not use). It was written by transformers {written} and this is "
        f"{transformers.__version__}: install the version that wrote it (pip install 'transformers>={written}')."
    )


def load(name_or_path: str, processor: Any | bool = True, **hf_kwargs: Any) -> tuple[Any, Any, Adapter]:
    """(HF model in eval mode, processor or None, adapter) of a checkpoint; see ``HookedMLLM.from_pretrained``."""
    path, _, adapter, model_cls = load_config(name_or_path)
    hf_kwargs.setdefault("dtype", "auto")
    hf_model, info = model_cls.from_pretrained(path, output_loading_info=True, **hf_kwargs)
    check_all_loaded(path, info)
    hf_model.eval()
    if processor is True:
        processor = load_saved_processor(path)
    elif processor is False:
        processor = None
    return hf_model, processor, adapter
