"""Intervention specs: declarative, serialisable, composable; resolved to edits, compiled to hooks.

An intervention names a site (hook name template + layers), positions (a layout selector)
and an operation. ``spec.edits(ctx)`` checks it against one batch and resolves it to
:class:`Edit`\\ s (a hook name and a torch-only op of :mod:`hooks_mm.interventions.ops`);
every backend runs those: local hooks (``spec.compile``), nnsight traces, the sweep's fast
path, attribution. ``a + b`` composes (applied in that order); ``to_dict`` / ``from_dict``
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

from hooks_mm.hooks import lookup
from hooks_mm.interventions.ops import apply
from hooks_mm.selectors import Selector

if TYPE_CHECKING:
    from hooks_mm.model import Batch, HookedMLLM

HookFn = Callable[..., Any]
Hooks = list[tuple[str, HookFn]]
INTERVENTIONS: dict[str, type[Intervention]] = {}


@dataclass(frozen=True)
class Edit:
    """One resolved operation: ``op`` (see :mod:`~hooks_mm.interventions.ops`) at hook point ``hook``."""

    hook: str
    op: tuple


def source_key(source: str, hook: str) -> str:
    """The store key of activation ``hook`` of the run named ``source``."""
    return f"{source}|{hook}"


class Context:
    """What resolving a spec needs: the model, this run's :class:`Batch`, named source runs.

    Checks raise here, before any hook is added; ``reads`` collects the (source, hook)
    activations the edits read, which a backend computes once per source.
    """

    def __init__(self, model: HookedMLLM, batch: Batch, sources: dict[str, Any] | None = None):
        self.model, self.batch, self.layout = model, batch, batch.layout
        self.sources = dict(sources or {})
        self.reads: set[tuple[str, str]] = set()
        self._batches: dict[str, Batch] = {}
        self._keys = 0

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
        """The full name of ``template`` (``"mlp.hook_post"`` or ``"blocks.{l}...."``) at ``layer``; checked."""
        return self.model.hook_name(template.format(l=layer) if "{l}" in template else f"blocks.{layer}.{template}")

    def width(self, hook: str) -> int | None:
        """Size of the last axis of hook point ``hook`` on this model (None where it varies)."""
        return lookup(hook).width(self.model.cfg)

    def source(self, name: str) -> Batch:
        """The prepared batch of the run named ``name`` (prepared once)."""
        if name not in self.sources:
            raise KeyError(
                f"this intervention reads the run named {name!r}, but sources has "
                f"{sorted(self.sources) or 'no runs'}: pass sources={{{name!r}: inputs}}."
            )
        if name not in self._batches:
            self._batches[name] = self.model.prepare(self.sources[name])
        return self._batches[name]

    def read(self, source: str, hook: str) -> str:
        """Ask for activation ``hook`` of the run ``source``; the store key it will have."""
        self.source(source)
        self.reads.add((source, hook))
        return source_key(source, hook)

    def new_key(self, what: str) -> str:
        """A store key no other edit of this context uses (values kept within a forward)."""
        self._keys += 1
        return f"{what}|{self._keys}"

    @torch.no_grad()
    def read_sources(self, store: dict[str, Tensor]) -> dict[str, Tensor]:
        """``store`` plus every activation in ``reads`` it lacks: one forward per source run."""
        by_source: dict[str, list[str]] = {}
        for source, hook in sorted(self.reads):
            if source_key(source, hook) not in store:
                by_source.setdefault(source, []).append(hook)
        for source, hooks in by_source.items():
            _, cache = self.model.run_with_cache(self.source(source), names_filter=hooks)
            store.update({source_key(source, h): cache[h] for h in hooks})
        return store


class Intervention:
    """Base of every spec: a dataclass with ``edits(ctx)``, composition and serialisation."""

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        INTERVENTIONS[cls.__name__] = cls

    def __post_init__(self) -> None:
        layers = getattr(self, "layers", None)
        if isinstance(layers, (range, tuple)):  # one canonical form, so specs compare and round-trip
            self.layers = list(layers)  # type: ignore[attr-defined]

    def edits(self, ctx: Context) -> list[Edit]:
        """Check this spec against ``ctx``'s batch and resolve it; raises before anything runs."""
        raise NotImplementedError

    def compile(
        self,
        model: HookedMLLM,
        inputs: Any,
        sources: dict[str, Any] | None = None,
        store: dict[str, Tensor] | None = None,
    ) -> Hooks:
        """Hook functions ``[(hook name, fn)]`` running this spec on ``inputs``.

        ``sources`` names the other runs it reads; ``store`` holds source activations already
        computed (keys from :func:`source_key`), so a caller runs each source once.
        """
        ctx = Context(model, model.prepare(inputs), sources)
        edits = self.edits(ctx)
        store = ctx.read_sources(dict(store or {}))
        return [(e.hook, op_hook(e.op, store)) for e in edits]

    def __add__(self, other: Intervention) -> Compose:
        return Compose([*_flat(self), *_flat(other)])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _encode(getattr(self, f.name))
        return out

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Intervention:
        d = dict(d)
        name = d.pop("type", None)
        if name not in INTERVENTIONS:
            raise ValueError(f"unknown intervention type {name!r}; known: {', '.join(sorted(INTERVENTIONS))}")
        cls = INTERVENTIONS[name]
        return cls(**{k: _decode(cls, k, v) for k, v in d.items()})


def op_hook(op: tuple, store: dict[str, Tensor]) -> HookFn:
    """A TransformerLens hook function running ``op``."""
    return lambda x, hook: apply(x, op, store)


@dataclass
class Compose(Intervention):
    """Several interventions applied in list order (hooks on one site run in that order)."""

    items: list[Intervention]

    def edits(self, ctx: Context) -> list[Edit]:
        return [e for item in self.items for e in item.edits(ctx)]


def compose(items: Sequence[Intervention]) -> Compose:
    """``compose([a, b, c])`` == ``a + b + c``."""
    return Compose([i for item in items for i in _flat(item)])


def _flat(x: Intervention) -> list[Intervention]:
    return list(x.items) if isinstance(x, Compose) else [x]


def _encode(v: Any) -> Any:
    if isinstance(v, (Selector, Intervention)) or (hasattr(v, "to_dict") and not isinstance(v, Tensor)):
        return v.to_dict()
    if isinstance(v, Tensor):
        return v.tolist()
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
