"""Neuron ablation on ``mlp.hook_post`` (the input of down_proj): zero, mean, resample, scale, set.

Example::

    means = NeuronMeans.fit(model, batches, layers=[2, 3])          # streamed, per modality
    spec = NeuronAblation(layers=3, neurons=[5, 9], positions=Image(), mode="mean", means=means)
    logits = model.run_with_interventions(inputs, spec)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from hooks_mm.interventions.base import Context, Hooks, Intervention, where_positions
from hooks_mm.layout import Modality, NonPad, Selector

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM

MODES = ("zero", "mean", "resample", "scale", "set")


@dataclass
class NeuronMeans:
    """Mean activation of every neuron per layer and per modality (plus ``"all"``)."""

    hook: str
    means: dict[int, dict[str, Float[Tensor, " d"]]]
    counts: dict[int, dict[str, int]] = field(default_factory=dict)

    @classmethod
    @torch.no_grad()
    def fit(
        cls,
        model: "HookedMLLM",
        batches: Iterable[Any],
        layers: int | Sequence[int] | None = None,
        hook: str = "mlp.hook_post",
    ) -> "NeuronMeans":
        """Running means over ``batches`` (model inputs), one forward per batch."""
        n = model.cfg.n_layers
        layers = list(range(n)) if layers is None else [layers] if isinstance(layers, int) else list(layers)
        names = {l: f"blocks.{l}.{hook}" for l in layers}
        sums: dict[int, dict[str, Tensor]] = {l: {} for l in layers}
        counts: dict[int, dict[str, int]] = {l: {} for l in layers}
        for batch in batches:
            inputs = model._as_inputs(batch)
            layout = model._layout(inputs)
            _, cache = model.run_with_cache(inputs, names_filter=list(names.values()))
            groups = {m.name.lower(): layout.modality == m for m in Modality if m != Modality.PAD}
            groups["all"] = layout.modality != Modality.PAD
            for l, name in names.items():
                act = cache[name].double()
                for g, mask in groups.items():
                    if mask.any():
                        sums[l][g] = sums[l].get(g, 0) + act[mask].sum(0)
                        counts[l][g] = counts[l].get(g, 0) + int(mask.sum())
        if not any(counts[l] for l in layers):
            raise ValueError("NeuronMeans.fit got no tokens: pass a non-empty iterable of model inputs.")
        means = {l: {g: (sums[l][g] / counts[l][g]).float() for g in sums[l]} for l in layers}
        return cls(hook, means, counts)

    def for_positions(self, layer: int, layout_modality: Tensor) -> Float[Tensor, "batch seq d"]:
        """The mean of each position's own modality (``"all"`` where that one is missing)."""
        if layer not in self.means:
            raise KeyError(f"NeuronMeans has layers {sorted(self.means)}, not {layer}: fit it on that layer.")
        m = self.means[layer]
        out = m["all"].expand(*layout_modality.shape, -1).clone()
        for mod in Modality:
            name = mod.name.lower()
            if name in m:
                out[layout_modality == mod] = m[name]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "means": {str(l): {g: v.tolist() for g, v in d.items()} for l, d in self.means.items()},
            "counts": {str(l): d for l, d in self.counts.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NeuronMeans":
        means = {int(l): {g: torch.tensor(v) for g, v in m.items()} for l, m in d["means"].items()}
        return cls(d["hook"], means, {int(l): c for l, c in d.get("counts", {}).items()})

    def save(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        save_file({f"{l}/{g}": v.contiguous() for l, d in self.means.items() for g, v in d.items()}, os.path.join(path, "means.safetensors"))
        with open(os.path.join(path, "means.json"), "w") as f:
            json.dump({"hook": self.hook, "counts": {str(l): c for l, c in self.counts.items()}}, f)

    @classmethod
    def load(cls, path: str) -> "NeuronMeans":
        tensors = load_file(os.path.join(path, "means.safetensors"))
        with open(os.path.join(path, "means.json")) as f:
            meta = json.load(f)
        means: dict[int, dict[str, Tensor]] = {}
        for key, v in tensors.items():
            l, g = key.split("/")
            means.setdefault(int(l), {})[g] = v
        return cls(meta["hook"], means, {int(l): c for l, c in meta["counts"].items()})


@dataclass
class NeuronAblation(Intervention):
    """Ablate ``neurons`` (None: all) at ``positions`` in ``layers``.

    ``mode``: "zero"; "mean" (each position's modality mean from ``means``); "resample"
    (the same neurons and positions of the run named ``source``); "scale" (times
    ``value``); "set" (to ``value``).
    """

    layers: int | list[int] | None
    neurons: list[int] | None = None
    positions: Selector = field(default_factory=NonPad)
    mode: str = "zero"
    value: float = 0.0
    means: NeuronMeans | None = None
    source: str = "source"
    hook: str = "mlp.hook_post"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {MODES}.")
        if self.mode == "mean" and self.means is None:
            raise ValueError("mode='mean' needs means=NeuronMeans.fit(model, batches, layers).")

    @classmethod
    def decode_field(cls, key: str, v: Any) -> Any:
        return NeuronMeans.from_dict(v) if key == "means" and isinstance(v, dict) else v

    def _names(self, ctx: Context) -> dict[int, str]:
        return {l: ctx.hook_name(self.hook, l) for l in ctx.layers(self.layers, "NeuronAblation")}

    def needs(self, ctx: Context) -> set[tuple[str, str]]:
        return {(self.source, n) for n in self._names(ctx).values()} if self.mode == "resample" else set()

    def hooks(self, ctx: Context) -> Hooks:
        mask = ctx.mask(self.positions, "NeuronAblation")
        names = self._names(ctx)
        width = ctx.model.cfg.d_mlp if self.hook == "mlp.hook_post" else None
        idx = None if self.neurons is None else torch.as_tensor(self.neurons, dtype=torch.long)
        if idx is not None and width is not None and (idx.numel() == 0 or int(idx.max()) >= width or int(idx.min()) < -width):
            raise IndexError(f"NeuronAblation: neurons must be non-empty and within 0..{width - 1}, got {self.neurons}.")
        out = []
        for l, name in names.items():
            replacement = self._replacement(ctx, l, name)
            out.append((name, _ablate_fn(mask, idx, self.mode, self.value, replacement)))
        return out

    def _replacement(self, ctx: Context, layer: int, name: str) -> Tensor | None:
        if self.mode == "mean":
            return self.means.for_positions(layer, ctx.layout.modality)  # type: ignore[union-attr]
        if self.mode == "resample":
            src = ctx.source_activation(self.source, name)
            if src.shape[:2] != ctx.layout.shape:
                raise ValueError(
                    f"resample source {self.source!r} has shape {tuple(src.shape[:2])}, this run "
                    f"{ctx.layout.shape}: resample from inputs with the same batch and sequence layout."
                )
            return src
        return None


def _ablate_fn(mask: Tensor, idx: Tensor | None, mode: str, value: float, replacement: Tensor | None):  # noqa: ANN202
    def hook(x: Tensor, hook: Any) -> Tensor:
        cols = x if idx is None else x[..., idx]
        if mode == "zero":
            new = torch.zeros_like(cols)
        elif mode == "scale":
            new = cols * value
        elif mode == "set":
            new = torch.full_like(cols, value)
        else:
            rep = replacement.to(x)  # type: ignore[union-attr]
            new = rep if idx is None else rep[..., idx]
        new = where_positions(cols, mask, new)
        if idx is None:
            return new
        x = x.clone()
        x[..., idx] = new
        return x

    return hook
