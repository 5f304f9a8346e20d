"""Saving a HookedMLLM so that ``HookedMLLM.from_pretrained(dir)`` gives the same model back.

``model.save_pretrained(dir)`` writes the HF weights and config, the processor (or tokenizer), the
organism's training record when the model is one (``hooks_mm_training.json``), and ``hooks_mm.json``:
what hooks_mm adds to an HF checkpoint (the adapter table the layout was built with, the model's
shape, the organism's name, the versions that wrote it). ``from_pretrained(dir)`` checks that file
against what it built, so a reload that would lay the model out differently fails instead of
giving other numbers.

Example::

    model = HookedMLLM.from_pretrained("toy-llava")
    model.save_pretrained("runs/my-llava")
    same = HookedMLLM.from_pretrained("runs/my-llava")   # same logits, same layout
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

from hooks_mm.processing import load_processor, save_processor

META_FILE = "hooks_mm.json"
FORMAT = 1
CARRIED = ("hooks_mm_training.json",)  # copied from the directory the model was loaded from
CFG_FIELDS = ("architecture", "family", "backbone", "n_layers", "d_model", "n_heads", "d_vocab")


def _source(model: Any) -> str:
    """The local directory the HF model was loaded from, or ``""``."""
    source = str(getattr(model.hf_model.config, "_name_or_path", "") or "")
    return source if os.path.isdir(source) else ""


def _organism(source: str) -> str | None:
    from hooks_mm.zoo.organisms import ORGANISMS

    for name, organism in ORGANISMS.items():
        if source and os.path.isdir(organism.path) and os.path.samefile(source, organism.path):
            return name
    return read_meta(source).get("organism") if source else None


def read_meta(path: str) -> dict[str, Any]:
    """The ``hooks_mm.json`` of a saved directory (``{}`` when there is none)."""
    file = os.path.join(path, META_FILE)
    if not os.path.isfile(file):
        return {}
    with open(file) as f:
        meta = json.load(f)
    if meta.get("format", 0) > FORMAT:
        raise ValueError(
            f"{file} was written by a newer hooks_mm (format {meta.get('format')}, this one reads {FORMAT}): "
            "upgrade hooks_mm (pip install -U hooks_mm) to load it."
        )
    return meta


def check_target(model: Any, path: str, overwrite: bool) -> None:
    """Refuse a save that cannot give the model back or would destroy files; raises before writing."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise TypeError(f"save_pretrained(path): path is {path!r}; pass a directory path such as 'runs/my-model'.")
    offloaded = getattr(model.hf_model, "hf_device_map", None)  # accelerate loads those weights when saving
    if not offloaded and any(p.is_meta for p in model.hf_model.parameters()):
        raise ValueError(
            "save_pretrained writes the weights, and this HookedMLLM holds none (parameters on the meta device: "
            "built with HookedMLLM.from_config): load the weights with HookedMLLM.from_pretrained(repo) and save "
            "that, or keep the config alone with model.hf_model.config.save_pretrained(dir)."
        )
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"save_pretrained: {path!r} is a file, not a directory: choose a directory path.")
    source = _source(model)
    if source and os.path.isdir(path) and os.path.samefile(source, path):
        raise ValueError(
            f"save_pretrained: {path!r} is the directory this model was loaded from (its weights are read from "
            "there): save into another directory."
        )
    if os.path.isdir(path) and os.listdir(path):
        if not overwrite:
            raise FileExistsError(
                f"save_pretrained: {path!r} exists and is not empty: pass overwrite=True to replace the model saved "
                "there, or choose a new or empty directory."
            )
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileExistsError(
                f"save_pretrained(overwrite=True): {path!r} holds files but no saved model (no config.json), so "
                "they are not deleted: choose a new or empty directory."
            )


def save(model: Any, path: str, *, overwrite: bool = False, **hf_kwargs: Any) -> str:
    """Write ``model`` (a HookedMLLM) into directory ``path``; see :meth:`HookedMLLM.save_pretrained`.

    The files are written into a sibling temporary directory first, which then replaces ``path``:
    no file of an earlier save (a stale processor file, a shard) is left behind.
    """
    __version__ = sys.modules["hooks_mm"].__version__  # the package is imported (this is its module), no cycle

    check_target(model, path, overwrite)
    path = os.path.abspath(os.fspath(path))
    source = _source(model)
    tmp = f"{path}.saving-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.hf_model.save_pretrained(tmp, **hf_kwargs)
        if model.processor is not None:
            save_processor(model.processor, tmp)
        for name in CARRIED:
            if source and os.path.isfile(os.path.join(source, name)):
                shutil.copyfile(os.path.join(source, name), os.path.join(tmp, name))
        import transformers

        meta = {
            "format": FORMAT,
            "adapter": model.adapter.name,
            "cfg": {k: getattr(model.cfg, k) for k in CFG_FIELDS},
            "organism": _organism(source),
            "processor": type(model.processor).__name__ if model.processor is not None else None,
            "dtype": str(model.cfg.dtype).removeprefix("torch."),
            "written_by": {"hooks_mm": __version__, "transformers": transformers.__version__},
        }
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_saved_processor(path: str) -> Any | None:
    """The processor of ``path`` (:func:`hooks_mm.processing.load_processor`); for a directory written by
    ``save_pretrained``: None when it was saved without one, and the class it was saved with."""
    meta = read_meta(path) if os.path.isdir(path) else {}
    if "processor" in meta and meta["processor"] is None:
        return None
    processor = load_processor(path)
    if meta.get("processor") and type(processor).__name__ != meta["processor"]:
        raise ValueError(
            f"{path} was saved with a {meta['processor']} and loads as a {type(processor).__name__}: load it with "
            f"the versions that wrote it ({meta.get('written_by')}), or pass processor=... yourself."
        )
    return processor


def check_loaded(model: Any) -> None:
    """After ``from_pretrained(dir)`` of a saved directory: the adapter and shape it was saved with."""
    source = _source(model)
    meta = read_meta(source) if source else {}
    if not meta:
        return
    if meta.get("adapter") != model.adapter.name:
        raise ValueError(
            f"{source} was saved from a HookedMLLM laid out by adapter {meta.get('adapter')!r}, and the registry now "
            f"gives {model.adapter.name!r} for {model.cfg.architecture}: register the adapter it was saved with "
            "(hooks_mm.adapters.register(adapter)) before from_pretrained, or wrap the HF model yourself with "
            "HookedMLLM(hf_model, processor, adapter=adapter)."
        )
    saved = meta.get("cfg", {})
    differ = {k: (saved[k], getattr(model.cfg, k)) for k in saved if saved[k] != getattr(model.cfg, k, None)}
    if differ:
        what = ", ".join(f"{k}: saved {a!r}, loaded {b!r}" for k, (a, b) in differ.items())
        raise ValueError(
            f"{source}: the model loaded differs from the one saved ({what}; written by {meta.get('written_by')}): "
            "load it with the versions that wrote it."
        )


__all__ = ["META_FILE", "check_loaded", "check_target", "load_saved_processor", "read_meta", "save"]
