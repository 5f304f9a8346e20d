"""Centroid banks and centroid replacement (centroid erasure; methods.md section 4).

A bank is K-means over residual-stream vectors at chosen positions of one layer (the text
after the image, or the image span). Replacement moves each selected vector to its nearest
centroid: ``x' = mu + a_interp * (x - mu)`` (``a_interp = 0``: full collapse; 1: identity).

Depth: "f of depth" is the residual stream after ``L = floor(f n + 1/2)`` of the model's
``n`` blocks, the input of block L: ``blocks.{L}.hook_resid_pre`` (= ``blocks.{L-1}.hook_resid_post``
= HF ``hidden_states[L]``), with L at most ``n - 1`` so that at least one block (its
attention) follows and every position can still reach the answer. The paper's layers
(text: output of decoder module 12, visual: of module 16) are ``layer=13`` / ``layer=17``
with the default hook, or ``layer=12, hook="hook_resid_post"``.

A bank records the model it was fitted on (architecture, n_layers, d_model) and refuses
another; a bank where no attention follows (the last block's output) changes only the
positions it replaces, and says so.

Example::

    bank = CentroidBank.fit(model, batches, positions=After(Image()))   # text bank, ~0.4 depth
    bank.save("banks/text")
    erased = model.run_with_interventions(inputs, CentroidReplacement(bank, After(Image()), 0.0))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from hooks_mm.interventions.base import Context, Edit, Intervention
from hooks_mm.progress import check_progress, progress_bar
from hooks_mm.selectors import After, Image, Last, Selector

if TYPE_CHECKING:
    from hooks_mm.layout import ModalityLayout
    from hooks_mm.model import HookedMLLM

IDENTITY = ("architecture", "n_layers", "d_model")  # what a bank records of the model it was fitted on
MIXING_HOOKS = ("hook_resid_pre", "ln1.hook_normalized")  # hooks of a block that its own attention reads


def default_layer(n_layers: int, positions: Selector) -> int:
    """The published protocol's depth: text bank at ~0.4 of depth, visual bank (``Image()``) at ~0.5.

    Returns ``L = floor(f n + 1/2)`` (at most ``n - 1``): with the default hook
    ``hook_resid_pre`` the bank reads the residual stream after L of the n blocks, the input
    of block L. E.g. 3 blocks: text L = 1, visual L = 2; 28 blocks: 11 and 14.
    """
    if n_layers < 1:
        raise ValueError(f"default_layer: a model with {n_layers} blocks has no residual stream to bank.")
    f = 0.5 if isinstance(positions, Image) else 0.4
    return min(n_layers - 1, math.floor(f * n_layers + 0.5))


def identity(model: "HookedMLLM") -> dict[str, Any]:
    """What a bank records of its model: architecture, n_layers, d_model."""
    return {"architecture": model.cfg.architecture, "n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model}


def attention_follows(model: "HookedMLLM", layer: int, hook: str) -> bool:
    """Whether a self-attention runs after ``blocks.{layer}.{hook}``: only then can an edit
    there reach positions other than the ones it edits (the answer at the last position)."""
    n, cross = model.cfg.n_layers, set(model.cfg.cross_attn_layers)
    first = layer if hook in MIXING_HOOKS else layer + 1
    return any(l not in cross for l in range(first, n))


@dataclass
class CentroidBank:
    """K centroids of ``blocks.{layer}.{hook}`` and how they were fit.

    The default hook is ``hook_resid_pre``: ``layer`` L is the residual stream entering block L
    (after L blocks). ``meta`` records the model (architecture, n_layers, d_model) and the fit;
    two banks are equal when their centroids, layer, hook and meta (but the save path) are.
    """

    centroids: Float[Tensor, "k d"]
    layer: int
    hook: str = "hook_resid_pre"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = self.centroids
        if not isinstance(c, Tensor) or c.ndim != 2 or c.shape[0] < 1 or not c.is_floating_point():
            got = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
            raise ValueError(f"CentroidBank: centroids must be a float tensor [k, d_model] with k >= 1, got {got}.")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CentroidBank):
            return NotImplemented
        return (
            (self.layer, self.hook) == (other.layer, other.hook)
            and self.centroids.shape == other.centroids.shape
            and torch.equal(self.centroids.detach().cpu().double(), other.centroids.detach().cpu().double())
            and as_saved(_content(self.meta)) == as_saved(_content(other.meta))
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by content

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.{self.hook}"

    @classmethod
    @torch.no_grad()
    def fit(
        cls,
        model: "HookedMLLM",
        batches: Iterable[Any],
        layer: int | None = None,
        positions: Selector | None = None,
        k: int = 256,
        seed: int = 42,
        n_iter: int = 20,
        hook: str = "hook_resid_pre",
        max_tokens: int | None = None,
        progress: bool | None = None,
    ) -> "CentroidBank":
        """Stream ``batches`` (model inputs), collect vectors at ``positions``, fit K-means.

        Defaults follow the published protocol: K = 256, seed 42, 20 iterations, the text
        after the image (``After(Image())``) at ~0.4 of depth, ``Image()`` at ~0.5
        (:func:`default_layer`: the input of block ``floor(f n + 1/2)``).
        K-means is scikit-learn's (k-means++ init, one run, ``max_iter=n_iter``). ``progress``: a bar over the
        batches (None: automatic, :mod:`hooks_mm.progress`).
        """
        check_progress(progress, "CentroidBank.fit")
        from sklearn.cluster import KMeans

        positions = positions if positions is not None else After(Image())
        n_layers = model.cfg.n_layers
        layer = default_layer(n_layers, positions) if layer is None else layer
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise IndexError(
                f"CentroidBank.fit: layer {layer!r} out of range for a {n_layers}-layer model: "
                f"pass an int in 0..{n_layers - 1}, or leave it out for the protocol's depth."
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"CentroidBank.fit: k must be a positive int (number of centroids), got {k!r}.")
        name = model.hook_name(f"blocks.{layer}.{hook}")
        _warn_if_isolated(model, layer, hook, positions)
        chunks: list[Tensor] = []
        n = 0
        with progress_bar(batches, desc="CentroidBank.fit", unit="batch", progress=progress) as bar:
            for inputs in bar:
                batch = model.prepare(inputs)
                mask = batch.layout.select(positions)
                _, cache = model.run_with_cache(batch, names_filter=[name], stop_at_layer=min(layer + 1, n_layers))
                chunks.append(cache[name][mask].float().cpu())
                n += chunks[-1].shape[0]
                if max_tokens is not None and n >= max_tokens:
                    break
        x = torch.cat(chunks)[:max_tokens] if chunks else torch.empty(0)
        if x.shape[0] < k:
            raise ValueError(
                f"CentroidBank.fit: {x.shape[0]} vectors at {positions!r} for k={k} centroids; "
                "give more data or lower k."
            )
        n_distinct = int(torch.unique(x, dim=0).shape[0])
        if n_distinct <= k:
            warnings.warn(
                f"CentroidBank.fit: {n_distinct} distinct states at {positions!r} for k={k} centroids, so each "
                "state is its own centroid and replacing a state by its nearest centroid erases nothing (a cost "
                f"of 0 by construction, not a finding): lower k below {n_distinct} (k=1 is the mean).",
                stacklevel=2,
            )
        with warnings.catch_warnings():  # said above, in the bank's terms
            warnings.filterwarnings("ignore", message="Number of distinct clusters")
            km = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=n_iter, random_state=seed).fit(x.numpy())
        meta = {
            **identity(model),
            "positions": positions.to_dict(),
            "k": k,
            "seed": seed,
            "n_iter": n_iter,
            "n_tokens": int(x.shape[0]),
            "n_distinct": n_distinct,
            "inertia": float(km.inertia_),
        }
        return cls(torch.from_numpy(np.asarray(km.cluster_centers_, dtype=np.float32)), layer, hook, meta)

    def check(self, model: "HookedMLLM") -> None:
        """Raise unless this bank fits ``model``: same width and recorded identity, layer in range."""
        cfg, d_bank = model.cfg, self.centroids.shape[1]
        if d_bank != cfg.d_model:
            raise ValueError(
                f"this centroid bank was fitted on width {d_bank} "
                f"({self.meta.get('architecture', 'another model')}), but the model's residual "
                f"width is {cfg.d_model}: fit a bank on this model with CentroidBank.fit(model, ...)."
            )
        mine, theirs = {k: self.meta[k] for k in IDENTITY if k in self.meta}, identity(model)
        if any(mine[k] != theirs[k] for k in mine):
            raise ValueError(
                f"this centroid bank was fitted on {_describe(mine)}, but the model is {_describe(theirs)}: "
                "a bank holds one model's residual states; fit one on this model with CentroidBank.fit(model, ...)."
            )
        if not 0 <= self.layer < cfg.n_layers:
            raise IndexError(
                f"this centroid bank is at layer {self.layer}, out of range for a {cfg.n_layers}-layer model "
                f"(0..{cfg.n_layers - 1}): fit a bank on this model with CentroidBank.fit(model, ...)."
            )

    def nearest(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
        """The nearest centroid of each row (Euclidean)."""
        c = self.centroids.to(x)
        return c[torch.cdist(x, c).argmin(-1)]

    def save(self, path: str) -> str:
        """Write ``centroids.safetensors`` and ``bank.json`` (layer, hook, meta) under ``path``."""
        os.makedirs(path, exist_ok=True)
        save_file({"centroids": self.centroids.contiguous()}, os.path.join(path, "centroids.safetensors"))
        with open(os.path.join(path, "bank.json"), "w") as f:
            json.dump({"layer": self.layer, "hook": self.hook, **_content(self.meta)}, f, indent=1)
        self.meta["path"] = os.path.abspath(path)
        return path

    @classmethod
    def load(cls, path: str) -> "CentroidBank":
        """The bank saved under ``path`` (by :meth:`save`)."""
        files = [os.path.join(path, f) for f in ("bank.json", "centroids.safetensors")]
        if not all(os.path.isfile(f) for f in files):
            raise FileNotFoundError(
                f"no centroid bank at {path!r} (it needs bank.json and centroids.safetensors): "
                "give the directory a bank was saved to with bank.save(path)."
            )
        try:
            with open(files[0]) as f:
                meta = json.load(f)
            centroids = load_file(files[1])["centroids"]
            layer, hook = meta.pop("layer"), meta.pop("hook")
        except (ValueError, KeyError, OSError) as e:
            raise ValueError(
                f"the centroid bank at {path!r} is unreadable ({type(e).__name__}: {e}): delete it and save it again."
            ) from e
        return cls(centroids, layer, hook, {**meta, "path": os.path.abspath(path)})

    def digest(self) -> str:
        """A short hash of the centroids, layer and hook (what a spec checks on reload)."""
        h = hashlib.sha256(self.centroids.detach().cpu().float().contiguous().numpy().tobytes())
        h.update(f"{self.layer}|{self.hook}".encode())
        return h.hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The saved bank's path and digest (a spec refers to a bank; it is not copied)."""
        if "path" not in self.meta:
            raise ValueError("save the bank first (bank.save(dir)): a spec refers to a bank by its path.")
        return {"path": self.meta["path"], "digest": self.digest()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CentroidBank":
        """The bank at ``d["path"]``; an error if it is not the bank the spec was written with."""
        bank = cls.load(d["path"])
        if d.get("digest") not in (None, bank.digest()):
            raise ValueError(
                f"the centroid bank at {d['path']!r} changed since this spec was written (digest {d['digest']}, "
                f"now {bank.digest()}): point the spec at the bank it was written with, or rebuild the spec."
            )
        return bank


def _content(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k != "path"}


def as_saved(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so saved and fresh compare."""
    return json.loads(json.dumps(value, default=str))


def _describe(ident: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in ident.items())


def _warn_if_isolated(model: "HookedMLLM", layer: int, hook: str, positions: Selector) -> None:
    if not attention_follows(model, layer, hook):
        warnings.warn(
            f"centroid bank at blocks.{layer}.{hook}: no attention follows it in this {model.cfg.n_layers}-block "
            f"model, so replacing {positions!r} there changes only the logits at those positions (never the "
            "answer at another position): bank an earlier layer (CentroidBank.fit's default depth).",
            stacklevel=3,
        )


@dataclass
class CentroidReplacement(Intervention):
    """Replace each vector at ``positions`` by ``mu + a_interp (x - mu)``, mu its nearest centroid."""

    bank: CentroidBank
    positions: Selector = field(default_factory=lambda: After(Image()))
    a_interp: float = 0.0

    @classmethod
    def decode_field(cls, key: str, v: Any) -> Any:
        return CentroidBank.from_dict(v) if key == "bank" and isinstance(v, dict) else v

    def edits(self, ctx: Context) -> list[Edit]:
        self.bank.check(ctx.model)
        if (
            isinstance(self.a_interp, bool)
            or not isinstance(self.a_interp, (int, float))
            or not math.isfinite(self.a_interp)
        ):
            raise ValueError(
                f"CentroidReplacement: a_interp must be a finite number (0: collapse), got {self.a_interp!r}."
            )
        mask = ctx.mask(self.positions, "CentroidReplacement")
        name = ctx.hook_name(self.bank.hook, self.bank.layer)
        _warn_if_isolated(ctx.model, self.bank.layer, self.bank.hook, self.positions)
        return [Edit(name, ("centroid", mask, self.bank.centroids.float(), float(self.a_interp)))]

    def rows_unreached(
        self, model: "HookedMLLM", layout: "ModalityLayout", target: Selector | None = None
    ) -> list[int]:
        """Rows of ``layout`` where this replacement cannot change ``target`` (default the last
        position): no replaced position at or before it, or, with no attention after the bank,
        none at it."""
        sel, tgt = layout.select(self.positions), layout.select(target or Last())
        pos = torch.arange(sel.shape[1], device=sel.device)[None]
        if attention_follows(model, self.bank.layer, self.bank.hook):
            reach = sel & (pos <= torch.where(tgt, pos, -1).amax(-1, keepdim=True))
        else:
            reach = sel & tgt
        return [int(r) for r in (~reach.any(-1)).nonzero().flatten()]
