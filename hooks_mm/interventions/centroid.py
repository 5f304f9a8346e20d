"""Centroid banks and centroid replacement (centroid erasure; methods.md section 4).

A bank is K-means over residual-stream vectors at chosen positions of one layer (the text
after the image, or the image span). Replacement moves each selected vector to its nearest
centroid: ``x' = mu + a_interp * (x - mu)`` (``a_interp = 0``: full collapse; 1: identity).

Example::

    bank = CentroidBank.fit(model, batches, positions=After(Image()))   # text bank, ~0.4 depth
    bank.save("banks/text")
    erased = model.run_with_interventions(inputs, CentroidReplacement(bank, After(Image()), 0.0))
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from hooks_mm.interventions.base import Context, Edit, Intervention
from hooks_mm.selectors import After, Image, Selector

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM


def default_layer(n_layers: int, positions: Selector) -> int:
    """The published protocol: text bank at ~0.4 of depth, visual bank at ~0.5."""
    visual = isinstance(positions, Image)
    return min(n_layers - 1, round((0.5 if visual else 0.4) * n_layers))


@dataclass
class CentroidBank:
    """K centroids of ``hook`` at ``layer`` (``blocks.{layer}.{hook}``) and how they were fit."""

    centroids: Float[Tensor, "k d"]
    layer: int
    hook: str = "hook_resid_post"
    meta: dict[str, Any] = field(default_factory=dict)

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
        hook: str = "hook_resid_post",
        max_tokens: int | None = None,
    ) -> "CentroidBank":
        """Stream ``batches`` (model inputs), collect vectors at ``positions``, fit K-means.

        Defaults follow the published protocol: K = 256, seed 42, 20 iterations, the text
        after the image (``After(Image())``) at ~0.4 of depth, ``Image()`` at ~0.5.
        K-means is scikit-learn's (k-means++ init, one run, ``max_iter=n_iter``).
        """
        from sklearn.cluster import KMeans

        positions = positions if positions is not None else After(Image())
        layer = default_layer(model.cfg.n_layers, positions) if layer is None else layer
        name = model.hook_name(f"blocks.{layer}.{hook}")
        chunks: list[Tensor] = []
        n = 0
        for inputs in batches:
            batch = model.prepare(inputs)
            mask = batch.layout.select(positions)
            _, cache = model.run_with_cache(
                batch, names_filter=[name], stop_at_layer=min(layer + 1, model.cfg.n_layers)
            )
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
        km = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=n_iter, random_state=seed).fit(x.numpy())
        meta = {
            "architecture": model.cfg.architecture,
            "d_model": int(x.shape[1]),
            "positions": positions.to_dict(),
            "k": k,
            "seed": seed,
            "n_iter": n_iter,
            "n_tokens": int(x.shape[0]),
            "inertia": float(km.inertia_),
        }
        return cls(torch.from_numpy(np.asarray(km.cluster_centers_, dtype=np.float32)), layer, hook, meta)

    def nearest(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
        """The nearest centroid of each row (Euclidean)."""
        c = self.centroids.to(x)
        return c[torch.cdist(x, c).argmin(-1)]

    def save(self, path: str) -> str:
        os.makedirs(path, exist_ok=True)
        save_file({"centroids": self.centroids.contiguous()}, os.path.join(path, "centroids.safetensors"))
        with open(os.path.join(path, "bank.json"), "w") as f:
            json.dump({"layer": self.layer, "hook": self.hook, **self.meta}, f, indent=1)
        self.meta["path"] = os.path.abspath(path)
        return path

    @classmethod
    def load(cls, path: str) -> "CentroidBank":
        with open(os.path.join(path, "bank.json")) as f:
            meta = json.load(f)
        centroids = load_file(os.path.join(path, "centroids.safetensors"))["centroids"]
        layer, hook = meta.pop("layer"), meta.pop("hook")
        return cls(centroids, layer, hook, {**meta, "path": os.path.abspath(path)})

    def to_dict(self) -> dict[str, Any]:
        if "path" not in self.meta:
            raise ValueError("save the bank first (bank.save(dir)): a spec refers to a bank by its path.")
        return {"path": self.meta["path"]}


@dataclass
class CentroidReplacement(Intervention):
    """Replace each vector at ``positions`` by ``mu + a_interp (x - mu)``, mu its nearest centroid."""

    bank: CentroidBank
    positions: Selector = field(default_factory=lambda: After(Image()))
    a_interp: float = 0.0

    @classmethod
    def decode_field(cls, key: str, v: Any) -> Any:
        return CentroidBank.load(v["path"]) if key == "bank" and isinstance(v, dict) else v

    def edits(self, ctx: Context) -> list[Edit]:
        d_model, d_bank = ctx.model.cfg.d_model, self.bank.centroids.shape[1]
        if d_bank != d_model:
            raise ValueError(
                f"this centroid bank was fitted on width {d_bank} "
                f"({self.bank.meta.get('architecture', 'another model')}), but the model's residual "
                f"width is {d_model}: fit a bank on this model with CentroidBank.fit(model, ...)."
            )
        mask = ctx.mask(self.positions, "CentroidReplacement")
        name = ctx.hook_name(self.bank.hook, self.bank.layer)
        return [Edit(name, ("centroid", mask, self.bank.centroids.float(), float(self.a_interp)))]
