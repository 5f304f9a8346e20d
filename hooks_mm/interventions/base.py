"""Intervention specs: declarative, serialisable, composable; compiled to hook functions.

An intervention names a site (hook name template + layers), positions (a layout selector)
and an operation. ``a + b`` composes (applied in that order); ``to_dict`` / ``from_dict``
round-trip through JSON. Tensors that belong to a run (a clean source input, another
image) are not part of a spec: they are passed by name at run time as ``sources``.

Example::

    spec = NeuronAblation(layers=3, neurons=[7, 42], positions=Image()) + Steer(
        layers=5, vector=v.tolist(), positions=Last(), scale=4.0)
    logits = model.run_with_interventions(inputs, spec)
    json.dumps(spec.to_dict())   # and Intervention.from_dict(...) back
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor

from hooks_mm.layout import ModalityLayout, Selector

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM

HookFn = Callable[..., Any]
Hooks = list[tuple[str, HookFn]]
INTERVENTIONS: dict[str, type["Intervention"]] = {}


@dataclass
class Context:
    """What compiling a spec needs: the model, this run's inputs and layout, named sources."""

    model: "HookedMLLM"
    inputs: dict[str, Any]
    layout: ModalityLayout
    sources: dict[str, Any]
    _caches: dict[tuple[str, str], Tensor] = dataclasses.field(default_factory=dict)
    _pending: set[tuple[str, str]] = dataclasses.field(default_factory=set)

    def mask(self, selector: Selector, what: str) -> Tensor:
        """Bool [batch, seq] of ``selector``; an error when it selects nothing."""
        m = self.layout.select(selector)
        if not bool(m.any()):
            raise ValueError(
                f"{what}: positions {selector!r} select nothing in this batch "
                f"(present: {self.layout.summary()}); pick positions that exist."
            )
        return m

    def layers(self, layers: int | Sequence[int] | None, what: str) -> list[int]:
        n = self.model.cfg.n_layers
        out = list(range(n)) if layers is None else [layers] if isinstance(layers, int) else list(layers)
        bad = [l for l in out if not -n <= l < n]
        if bad:
            raise IndexError(f"{what}: layers {bad} out of range for a {n}-layer model (0..{n - 1}).")
        return [l % n for l in out]

    def hook_name(self, template: str, layer: int) -> str:
        name = template.format(l=layer) if "{l}" in template else f"blocks.{layer}.{template}"
        self.model._check_name(name)
        return name

    def source(self, name: str) -> tuple[dict[str, Any], ModalityLayout]:
        if name not in self.sources:
            raise KeyError(
                f"this intervention reads the run named {name!r}, but sources has "
                f"{sorted(self.sources) or 'no runs'}: pass sources={{{name!r}: inputs}}."
            )
        inputs = self.model._as_inputs(self.sources[name])
        return inputs, self.model._layout(inputs)

    def source_activation(self, source: str, hook: str) -> Tensor:
        """Activation ``hook`` of the named source run (one cached forward per source)."""
        key = (source, hook)
        if key not in self._caches:
            wanted = sorted({h for (s, h) in self._pending if s == source} | {hook})
            inputs, _ = self.source(source)
            with torch.no_grad():
                _, cache = self.model.run_with_cache(inputs, names_filter=wanted)
            for h in wanted:
                self._caches[(source, h)] = cache[h]
        return self._caches[key]


class Intervention:
    """Base of every spec: a dataclass with ``hooks(ctx)``, composition and serialisation."""

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        INTERVENTIONS[cls.__name__] = cls

    def __post_init__(self) -> None:
        layers = getattr(self, "layers", None)
        if isinstance(layers, (range, tuple)):  # one canonical form, so specs compare and round-trip
            self.layers = list(layers)  # type: ignore[attr-defined]

    def hooks(self, ctx: Context) -> Hooks:
        raise NotImplementedError

    def needs(self, ctx: Context) -> set[tuple[str, str]]:
        """(source, hook name) activations this spec reads from other runs."""
        return set()

    def __add__(self, other: "Intervention") -> "Compose":
        return Compose([*_flat(self), *_flat(other)])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _encode(getattr(self, f.name))
        return out

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Intervention":
        d = dict(d)
        name = d.pop("type", None)
        if name not in INTERVENTIONS:
            raise ValueError(f"unknown intervention type {name!r}; known: {', '.join(sorted(INTERVENTIONS))}")
        cls = INTERVENTIONS[name]
        return cls(**{k: _decode(cls, k, v) for k, v in d.items()})


@dataclass
class Compose(Intervention):
    """Several interventions applied in list order (hooks on one site run in that order)."""

    items: list[Intervention]

    def hooks(self, ctx: Context) -> Hooks:
        return [h for item in self.items for h in item.hooks(ctx)]

    def needs(self, ctx: Context) -> set[tuple[str, str]]:
        return set().union(*(i.needs(ctx) for i in self.items)) if self.items else set()


def compose(items: Sequence[Intervention]) -> Compose:
    """``compose([a, b, c])`` == ``a + b + c``."""
    return Compose([i for item in items for i in _flat(item)])


def _flat(x: Intervention) -> list[Intervention]:
    return list(x.items) if isinstance(x, Compose) else [x]


def _encode(v: Any) -> Any:
    if isinstance(v, Selector):
        return v.to_dict()
    if isinstance(v, Intervention):
        return v.to_dict()
    if isinstance(v, Tensor):
        return v.tolist()
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, (list, tuple, range)):
        return [_encode(x) for x in v]
    return v


def _decode(cls: type, key: str, v: Any) -> Any:
    if isinstance(v, dict) and "selector" in v:
        return Selector.from_dict(v)
    if isinstance(v, dict) and "type" in v and v["type"] in INTERVENTIONS:
        return Intervention.from_dict(v)
    if isinstance(v, list) and v and isinstance(v[0], dict) and "type" in v[0]:
        return [Intervention.from_dict(x) for x in v]
    decoder = getattr(cls, "decode_field", None)
    return decoder(key, v) if decoder else v


def compile_hooks(
    model: "HookedMLLM",
    spec: Intervention,
    inputs: Any,
    sources: dict[str, Any] | None = None,
    source_caches: dict[tuple[str, str], Tensor] | None = None,
) -> Hooks:
    """Hook functions for ``spec`` on this batch; raises before any hook is added.

    ``source_caches`` maps (source name, hook name) to activations already computed, so a
    sweep runs each source once.
    """
    inputs = model._as_inputs(inputs)
    ctx = Context(model, inputs, model._layout(inputs), dict(sources or {}), dict(source_caches or {}))
    ctx._pending = spec.needs(ctx)
    return spec.hooks(ctx)


def where_positions(x: Tensor, mask: Tensor, new: Tensor, pos_dim: int = 1) -> Tensor:
    """``x`` with ``new`` at the positions ``mask`` [batch, seq] selects (out of place)."""
    if x.shape[0] != mask.shape[0] or x.shape[pos_dim] != mask.shape[1]:
        raise ValueError(
            f"activation shape {tuple(x.shape)} does not match the layout {tuple(mask.shape)}: "
            "position-selected interventions apply to a full forward of the inputs they were "
            "compiled for (not to KV-cached generation steps)."
        )
    shape = [1] * x.dim()
    shape[0], shape[pos_dim] = mask.shape
    return torch.where(mask.view(shape), new, x)
