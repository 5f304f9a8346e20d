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

from hooks_mm.interventions.base import Context, Edit, Intervention
from hooks_mm.layout import Modality
from hooks_mm.selectors import NonPad, Selector

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
        for inputs in batches:
            batch = model.prepare(inputs)
            layout = batch.layout
            _, cache = model.run_with_cache(batch, names_filter=list(names.values()))
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

    def table(self, layer: int, layout_modality: Tensor) -> tuple[Float[Tensor, "n d"], Tensor]:
        """(rows [n, d], index [batch, seq]): row ``index[b, s]`` is the mean of that position's
        own modality (``"all"`` where that one is missing)."""
        if layer not in self.means:
            raise KeyError(f"NeuronMeans has layers {sorted(self.means)}, not {layer}: fit it on that layer.")
        m = self.means[layer]
        rows, index = [m["all"]], torch.zeros(layout_modality.shape, dtype=torch.long, device=layout_modality.device)
        for mod in Modality:
            if mod.name.lower() in m:
                rows.append(m[mod.name.lower()])
                index[layout_modality == mod] = len(rows) - 1
        return torch.stack(rows).float(), index

    def for_positions(self, layer: int, layout_modality: Tensor) -> Float[Tensor, "batch seq d"]:
        """The mean of each position's own modality (``"all"`` where that one is missing)."""
        table, index = self.table(layer, layout_modality)
        return table.to(index.device)[index]

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
        save_file(
            {f"{l}/{g}": v.contiguous() for l, d in self.means.items() for g, v in d.items()},
            os.path.join(path, "means.safetensors"),
        )
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

    def neuron_index(self, width: int | None) -> Tensor | None:
        """The neurons as an index tensor (None: all), checked against the hook's ``width``."""
        if self.neurons is None:
            return None
        idx = torch.as_tensor(self.neurons, dtype=torch.long)
        if idx.numel() == 0 or (width is not None and (int(idx.max()) >= width or int(idx.min()) < -width)):
            limit = f"within 0..{width - 1}" if width is not None else "valid for the hook"
            raise IndexError(f"NeuronAblation: neurons must be non-empty and {limit}, got {self.neurons}.")
        return idx

    def edits(self, ctx: Context) -> list[Edit]:
        mask = ctx.mask(self.positions, "NeuronAblation")
        out = []
        for l in ctx.layers(self.layers, "NeuronAblation"):
            name = ctx.hook_name(self.hook, l)
            idx = self.neuron_index(ctx.width(name))
            rep: Any = None
            if self.mode == "mean":
                rep = self.means.table(l, ctx.layout.modality)  # type: ignore[union-attr]
            elif self.mode == "resample":
                src = ctx.source(self.source).layout.shape
                if src != ctx.layout.shape:
                    raise ValueError(
                        f"resample source {self.source!r} has shape {src}, this run {ctx.layout.shape}: "
                        "resample from inputs with the same batch and sequence layout."
                    )
                rep = ctx.read(self.source, name)
            out.append(Edit(name, ("ablate", mask, idx, self.mode, float(self.value), rep)))
        return out
