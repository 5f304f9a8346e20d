"""Neuron ablation on ``mlp.hook_post`` (the input of down_proj): zero, mean, resample, scale, set.

Example::

    means = NeuronMeans.fit(model, batches, layers=[2, 3])          # streamed, per modality
    spec = NeuronAblation(layers=3, neurons=[5, 9], positions=Image(), mode="mean", means=means)
    logits = model.run_with_interventions(inputs, spec)
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from hooks_mm.interventions.base import Context, Edit, Intervention, ValueEq, check_layers, check_number
from hooks_mm.layout import Modality
from hooks_mm.progress import check_progress, progress_bar
from hooks_mm.selectors import NonPad, Selector, is_int

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM

MODES = ("zero", "mean", "resample", "scale", "set")


@dataclass
class NeuronMeans(ValueEq):
    """Mean activation of every neuron per layer and per modality (plus ``"all"``).

    ``model`` records the model the means were fitted on: ``architecture``, ``n_layers`` and
    the ``widths`` (neurons per fitted layer). Applying the means to another model is an error
    (``NeuronAblation(mode="mean")`` checks it before any hook is added). Means saved before
    this record existed load with a warning, and only their widths can be checked then.
    """

    hook: str
    means: dict[int, dict[str, Float[Tensor, " d"]]]
    counts: dict[int, dict[str, int]] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)

    @classmethod
    @torch.no_grad()
    def fit(
        cls,
        model: "HookedMLLM",
        batches: Iterable[Any],
        layers: int | Sequence[int] | None = None,
        hook: str = "mlp.hook_post",
        progress: bool | None = None,
    ) -> "NeuronMeans":
        """Running means over ``batches`` (model inputs), one forward per batch; ``progress``: a bar over the
        batches (None: automatic, :mod:`hooks_mm.progress`)."""
        check_progress(progress, "NeuronMeans.fit")
        n = model.cfg.n_layers
        layers = check_layers(layers, "NeuronMeans.fit")
        layers = list(range(n)) if layers is None else [layers] if isinstance(layers, int) else list(layers)
        bad = [l for l in layers if not 0 <= l < n]
        if bad:
            raise IndexError(
                f"NeuronMeans.fit: layers {bad} out of range for a {n}-layer model: pass layers within 0..{n - 1}."
            )
        names = {l: f"blocks.{l}.{hook}" for l in layers}
        sums: dict[int, dict[str, Tensor]] = {l: {} for l in layers}
        counts: dict[int, dict[str, int]] = {l: {} for l in layers}
        for inputs in progress_bar(batches, desc="NeuronMeans.fit", unit="batch", progress=progress):
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
        ident = {
            "architecture": model.cfg.architecture,
            "n_layers": n,
            "widths": {str(l): int(means[l]["all"].shape[-1]) for l in layers},
        }
        return cls(hook, means, counts, ident)

    def check(
        self, model: "HookedMLLM", layer: int, hook: str, width: int | None, used: set[str] = frozenset()
    ) -> None:
        """An error unless these means fit ``model`` at ``layer`` of ``hook`` (``width`` neurons) and
        hold a mean for each modality in ``used`` (those of the positions to ablate)."""
        fix = "refit on this model: NeuronMeans.fit(model, batches, layers)"
        if hook != self.hook:
            raise ValueError(f"NeuronMeans were fitted on {self.hook!r}, but this ablation edits {hook!r}: {fix}.")
        arch, n = self.model.get("architecture"), self.model.get("n_layers")
        if arch is not None and (arch != model.cfg.architecture or n != model.cfg.n_layers):
            raise ValueError(
                f"NeuronMeans were fitted on a {n}-layer {arch}, but this model is a {model.cfg.n_layers}-layer "
                f"{model.cfg.architecture}: {fix}."
            )
        if layer not in self.means:
            raise KeyError(f"NeuronMeans has layers {sorted(self.means)}, not {layer}: fit it on that layer.")
        fitted = int(self.means[layer]["all"].shape[-1])
        if width is not None and fitted != width:
            raise ValueError(
                f"NeuronMeans of layer {layer} were fitted on {fitted} neurons ({arch or 'another model'}), but "
                f"{hook} of this {model.cfg.architecture} has {width}: {fix}."
            )
        missing = sorted(set(used) - set(self.means[layer]))
        if missing:
            have = sorted(set(self.means[layer]) - {"all"})
            raise ValueError(
                f"NeuronMeans of layer {layer} have no mean of {missing} positions (fitted on {have} only), "
                f"which this ablation selects: fit them on batches that hold {missing} inputs."
            )

    def table(self, layer: int, layout_modality: Tensor) -> tuple[Float[Tensor, "n d"], Tensor]:
        """(rows [n, d], index [batch, seq]): row ``index[b, s]`` is the mean of that position's
        own modality (``"all"`` where that one is missing: padding)."""
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
            "model": self.model,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NeuronMeans":
        means = {int(l): {g: torch.tensor(v) for g, v in m.items()} for l, m in d["means"].items()}
        return cls._with_model(d["hook"], means, {int(l): c for l, c in d.get("counts", {}).items()}, d.get("model"))

    @classmethod
    def _with_model(cls, hook: str, means: dict, counts: dict, model: dict | None) -> "NeuronMeans":
        if not model:
            warnings.warn(
                "these NeuronMeans were saved without the model they were fitted on (an older hooks_mm), so only "
                "their widths can be checked against a model: refit with NeuronMeans.fit(model, ...) and save "
                "again to record it.",
                stacklevel=3,
            )
        return cls(hook, means, counts, dict(model or {}))

    def save(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        save_file(
            {f"{l}/{g}": v.contiguous() for l, d in self.means.items() for g, v in d.items()},
            os.path.join(path, "means.safetensors"),
        )
        with open(os.path.join(path, "means.json"), "w") as f:
            meta = {"hook": self.hook, "counts": {str(l): c for l, c in self.counts.items()}, "model": self.model}
            json.dump(meta, f)

    @classmethod
    def load(cls, path: str) -> "NeuronMeans":
        tensors = load_file(os.path.join(path, "means.safetensors"))
        with open(os.path.join(path, "means.json")) as f:
            meta = json.load(f)
        means: dict[int, dict[str, Tensor]] = {}
        for key, v in tensors.items():
            l, g = key.split("/")
            means.setdefault(int(l), {})[g] = v
        return cls._with_model(meta["hook"], means, {int(l): c for l, c in meta["counts"].items()}, meta.get("model"))


@dataclass
class NeuronAblation(Intervention):
    """Ablate ``neurons`` (None: all) at ``positions`` in ``layers``.

    ``mode``: "zero"; "mean" (each position's modality mean from ``means``, fitted on this
    model); "resample" (the same neurons and positions of the run named ``source``, which
    must have this run's layout); "scale" (times ``value``); "set" (to ``value``).
    ``neurons``: distinct int indices (negative count from the end). An argument the mode
    does not use (``value`` without "scale"/"set", ``means`` without "mean", ``source``
    without "resample") is an error, not ignored.

    Example::

        NeuronAblation(layers=1, neurons=[3, -1], positions=Image(), mode="scale", value=0.5)
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
            raise ValueError(f"NeuronAblation: mode {self.mode!r} is not one of {MODES}: pass one of these.")
        if self.mode == "mean" and self.means is None:
            raise ValueError("mode='mean' needs means=NeuronMeans.fit(model, batches, layers).")
        if self.means is not None and not isinstance(self.means, NeuronMeans):
            raise TypeError(
                f"NeuronAblation: means must be a NeuronMeans (NeuronMeans.fit(...)), got {type(self.means)}."
            )
        check_number(self.value, "NeuronAblation: value")
        self.neurons = _neuron_list(self.neurons)

    @classmethod
    def decode_field(cls, key: str, v: Any) -> Any:
        return NeuronMeans.from_dict(v) if key == "means" and isinstance(v, dict) else v

    def neuron_index(self, width: int | None) -> Tensor | None:
        """The neurons as an index tensor (None: all), checked against the hook's ``width``;
        negative indices count from the end (``-1``: the last neuron)."""
        if self.neurons is None:
            return None
        idx = torch.as_tensor(self.neurons, dtype=torch.long)
        if idx.numel() == 0 or (width is not None and (int(idx.max()) >= width or int(idx.min()) < -width)):
            limit = f"within 0..{width - 1}" if width is not None else "valid for the hook"
            raise IndexError(
                f"NeuronAblation: neurons must be non-empty and {limit}, got {self.neurons}: "
                "pass neuron indices of this hook's width (model.cfg.d_mlp for mlp.hook_post)."
            )
        if width is None and int(idx.min()) < 0:
            raise IndexError(
                f"NeuronAblation: this hook's width varies, so give neurons counted from 0, not {self.neurons}."
            )
        idx = idx % width if width is not None else idx
        if len(set(idx.tolist())) != idx.numel():
            raise ValueError(
                f"NeuronAblation: neurons {self.neurons} name a neuron more than once (as {idx.tolist()}); "
                "give each neuron once."
            )
        return idx

    def _check_arguments(self) -> None:
        """Arguments the mode would ignore: an error, not a silent default ablation."""
        if self.means is not None and self.mode != "mean":
            raise ValueError(
                f"NeuronAblation: means= is used only by mode='mean' (mode is {self.mode!r}): "
                "pass mode='mean', or drop means."
            )
        if self.value != 0.0 and self.mode not in ("scale", "set"):
            raise ValueError(
                f"NeuronAblation: value={self.value} is used only by mode='scale' or 'set' "
                f"(mode is {self.mode!r}): pass the mode, or drop value."
            )
        if self.source != "source" and self.mode != "resample":
            raise ValueError(
                f"NeuronAblation: source={self.source!r} is used only by mode='resample' "
                f"(mode is {self.mode!r}): pass mode='resample', or drop source."
            )

    def edits(self, ctx: Context) -> list[Edit]:
        self._check_arguments()
        mask = ctx.mask(self.positions, "NeuronAblation")
        out = []
        for l in ctx.layers(self.layers, "NeuronAblation"):
            name = ctx.position_hook(self.hook, l, "NeuronAblation")
            width = ctx.width(name)
            idx = self.neuron_index(width)
            rep: Any = None
            if self.mode == "mean":
                used = {Modality(int(v)).name.lower() for v in ctx.layout.modality[mask].unique()}
                self.means.check(ctx.model, l, self.hook, width, used)  # type: ignore[union-attr]
                rep = self.means.table(l, ctx.layout.modality)  # type: ignore[union-attr]
            elif self.mode == "resample":
                ctx.same_positions(self.positions, self.source, "NeuronAblation(mode='resample')")
                rep = ctx.read(self.source, name)
            out.append(Edit(name, ("ablate", mask, idx, self.mode, float(self.value), rep)))
        return out


def _neuron_list(neurons: Any) -> list[int] | None:
    """``neurons`` as a list of ints (None: all); an error for bools, floats and masks."""
    if neurons is None:
        return None
    if isinstance(neurons, Tensor):
        if neurons.dtype == torch.bool or neurons.is_floating_point() or neurons.dim() > 1:
            raise TypeError(
                f"NeuronAblation: neurons got a {neurons.dtype} tensor of shape {tuple(neurons.shape)}; give neuron "
                "indices (for a bool mask: mask.nonzero().flatten().tolist())."
            )
        neurons = neurons.tolist()
    items = [neurons] if is_int(neurons) else neurons
    if not isinstance(items, (list, tuple, range)) or not all(map(is_int, items)):
        raise TypeError(
            f"NeuronAblation: neurons must be None (all) or a list of int indices, got {neurons!r:.60}: "
            "pass int indices (for a bool mask: mask.nonzero().flatten().tolist())."
        )
    if len(items) == 0:
        raise ValueError("NeuronAblation: neurons=[] selects no neuron; give neuron indices, or None for all.")
    return [int(j) for j in items]
