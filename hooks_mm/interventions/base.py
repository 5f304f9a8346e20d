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
import json
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor

from hooks_mm.hooks import lookup
from hooks_mm.interventions.ops import apply
from hooks_mm.layout import Modality, generation_layout
from hooks_mm.selectors import Selector, as_selector, is_int

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


def equal_values(a: Any, b: Any) -> bool:
    """Value equality that holds for tensors, lists, dicts and objects holding them.

    A tensor equals a tensor or list of the same shape and values (so a spec holding a tensor
    equals its JSON round trip); lists and dicts compare element-wise; anything else with ``==``.
    """
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        try:
            ta, tb = torch.as_tensor(a).detach().cpu(), torch.as_tensor(b).detach().cpu()
        except (TypeError, ValueError, RuntimeError):
            return False
        return ta.shape == tb.shape and torch.equal(ta.double(), tb.double())
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(equal_values(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal_values(a[k], b[k]) for k in a)
    return bool(a == b)


class ValueEq:
    """Mixin for dataclasses holding tensors: ``==`` compares fields with :func:`equal_values`.

    (A dataclass's own ``__eq__`` compares field tuples, which raises "Boolean value of Tensor
    is ambiguous" for tensor fields.) Subclasses get this ``__eq__`` even when decorated with
    ``@dataclass``, which keeps an ``__eq__`` the class already has.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__eq__" not in cls.__dict__:
            cls.__eq__ = ValueEq.__eq__  # type: ignore[method-assign]

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return all(
            equal_values(getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.compare
        )

    __hash__ = None  # type: ignore[assignment]  # mutable values: unhashable, as dataclasses are


def check_layers(layers: Any, what: str) -> int | list[int] | None:
    """``layers`` in canonical form (None, an int, or a non-empty list of ints); an error otherwise."""
    if layers is None:
        return None
    if isinstance(layers, Tensor) and layers.dim() <= 1 and layers.dtype in (torch.int32, torch.int64):
        layers = layers.tolist()
    if is_int(layers):
        return int(layers)
    if isinstance(layers, (list, tuple, range)):
        out = list(layers)
        if out and all(map(is_int, out)):
            return [int(l) for l in out]
        if not out:
            raise ValueError(f"{what}: layers=[] selects no layer: give layer indices, or layers=None for all layers.")
    raise TypeError(
        f"{what}: layers must be None (all layers), an int, or a list / range of ints, got {layers!r}: "
        f"pass e.g. layers=3, layers=[2, 3] or layers=range(0, 4) (one flat list of layer indices)."
    )


def check_finite(x: Any, what: str) -> None:
    """An error naming ``what`` when the number or tensor ``x`` holds NaN or infinity."""
    t = torch.as_tensor(x, dtype=torch.float64) if not isinstance(x, Tensor) else x.detach().double()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} holds NaN or infinity ({x!r:.80}): give finite numbers.")


def check_number(x: Any, what: str) -> float:
    """``x`` as a float; an error unless it is a finite real number (not a bool)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{what} must be a number, got {x!r:.40}.")
    check_finite(x, what)
    return float(x)


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

    def mask(self, selector: Selector, what: str, layout: Any = None, padding: str = "drop") -> Tensor:
        """Bool [batch, seq] of ``selector`` on this run's layout (or ``layout``, a source run's).

        Padding is never edited: an edit there reaches no real token. ``padding="drop"`` leaves
        padding out; ``"error"`` refuses it (where padding would be read, as a patch source).
        An error when nothing real is selected.
        """
        layout = self.layout if layout is None else layout
        m = layout.select(selector)
        pad = m & (layout.modality == Modality.PAD)
        if padding == "error" and bool(pad.any()):
            rows = sorted(set(pad.nonzero()[:, 0].tolist()))
            raise ValueError(
                f"{what}: positions {selector!r} select padding in rows {rows}, whose activations mean nothing; "
                "select real positions (add `& NonPad()`)."
            )
        m = m & ~pad
        if not bool(m.any()):
            raise ValueError(
                f"{what}: positions {selector!r} select nothing{' but padding' if bool(pad.any()) else ''} in this "
                f"batch (present: {layout.summary()}); pick positions that exist."
            )
        return m

    def same_positions(self, selector: Selector, source: str, what: str) -> Tensor:
        """:meth:`mask` of ``selector``, for an edit that writes position p of the run ``source`` to
        position p of this run: an error when the layouts differ in shape, or when a selected
        position is padding in the source or holds media (image, video, audio) in one run only."""
        return self.check_same(self.mask(selector, what), selector, source, what)

    def check_same(self, m: Tensor, selector: Selector, source: str, what: str, layout: Any = None) -> Tensor:
        """``m`` (the mask of ``selector`` on ``layout``, default this run's) when reading position p of
        the run ``source`` at position p is sound there; the error of :meth:`same_positions` otherwise."""
        layout = self.layout if layout is None else layout
        src = self.source(source).layout
        if src.shape != layout.shape:
            where = f"the source's layout is {src.shape}, this run's {layout.shape}"
        else:
            media = [Modality.IMAGE, Modality.VIDEO, Modality.AUDIO]
            s_mod, t_mod = src.modality, layout.modality
            in_media = torch.isin(s_mod, torch.tensor(media, device=s_mod.device)) | torch.isin(
                t_mod, torch.tensor(media, device=t_mod.device)
            )
            bad = m & ((s_mod == Modality.PAD) | (in_media & (s_mod != t_mod)))
            if not bool(bad.any()):
                return m
            where = f"rows {sorted(set(bad.nonzero()[:, 0].tolist()))} read padding or another modality there"
        raise ValueError(
            f"{what}: positions {selector!r} are read at the same index of the run {source!r}, but {where}. "
            "Give both runs the same layout (same prompt lengths, padding and media positions), or map "
            "positions explicitly: Patch(map='order', source_positions=...), or map='grid' to resample image patches."
        )

    def layers(self, layers: int | Sequence[int] | None, what: str) -> list[int]:
        """The layer indices of ``layers`` (None: all) on this model, checked; negative count from the end."""
        n = self.model.cfg.n_layers
        layers = check_layers(layers, what)
        out = list(range(n)) if layers is None else [layers] if isinstance(layers, int) else list(layers)
        bad = [l for l in out if not -n <= l < n]
        if bad:
            raise IndexError(
                f"{what}: layers {bad} out of range for a {n}-layer model: "
                f"pass layers within 0..{n - 1} (negative ones count from the end, down to {-n})."
            )
        out = [l % n for l in out]
        if len(set(out)) != len(out):
            raise ValueError(
                f"{what}: layers {layers} name a layer more than once on this {n}-layer model "
                f"(as {out}); give each layer once (compose two specs to apply an edit twice)."
            )
        return out

    def hook_name(self, template: str, layer: int, what: str = "this intervention") -> str:
        """The full name of ``template`` (``"mlp.hook_post"`` or ``"blocks.{l}...."``) at ``layer``; checked."""
        if "{l}" not in template and template.startswith("blocks."):
            raise ValueError(
                f"{what}: hook {template!r} is a full hook name, but hook= is relative to the block "
                f"(e.g. 'mlp.hook_post', or the template 'blocks.{{l}}.mlp.hook_post'); give layers in layers=."
            )
        return self.model.hook_name(template.format(l=layer) if "{l}" in template else f"blocks.{layer}.{template}")

    def position_hook(self, template: str, layer: int, what: str) -> str:
        """:meth:`hook_name`, for edits at LM positions: the hook's axis 1 must be the position axis."""
        name = self.hook_name(template, layer, what)
        spec = lookup(name)
        if spec.pos_dim != 1:
            raise ValueError(
                f"{what}: {name} has shape [{spec.shape}], whose axis 1 is not the sequence position, so "
                "positions cannot select in it; edit a residual, MLP or per-position attention hook "
                "(hook_resid_post, mlp.hook_post, attn.hook_z, ...)."
            )
        return name

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


class GenerationContext(Context):
    """A :class:`Context` for ``HookedMLLM.generate``: ``batch`` holds the prompt's inputs and a
    layout over the prompt and the generated positions (:func:`~hooks_mm.layout.generation_layout`).

    Source runs are forwards of their own prompts, read once: an edit that reads position p of a
    source at target position p (``Patch(map="same")``, ``NeuronAblation(mode="resample")``) is
    refused at generated positions, where the source has nothing; explicit maps reading source
    prompt positions (``Patch(map="order")``) work at any position.
    """

    def same_positions(self, selector: Selector, source: str, what: str) -> Tensor:
        m = self.mask(selector, what)
        n = self.batch.shape[1]
        generated = m[:, n:]
        if bool(generated.any()):
            rows = sorted(set(generated.nonzero()[:, 0].tolist()))
            raise ValueError(
                f"{what}: positions {selector!r} select generated positions (rows {rows}), read at the same index "
                f"of the run {source!r}, but that run is a forward of its own prompt ({self.source(source).shape[1]} "
                "positions), read once: it has nothing at generated positions. Keep the edit on the prompt "
                "(positions=... & ~Generated(); Last() during generation is the current step, generated positions "
                "included), or read source prompt positions through an explicit map: "
                "Patch(map='order', positions=Generated(), source_positions=...)."
            )
        self.check_same(m[:, :n], selector, source, what, layout=generation_layout(self.layout, n))
        return m


SELECTOR_FIELDS = ("positions", "source_positions", "queries", "keys")


class Intervention(ValueEq):
    """Base of every spec: a dataclass with ``edits(ctx)``, composition and serialisation.

    Specs compare by value (``==`` holds for tensor fields too, and between a tensor and its
    JSON list). The constructor checks what it can without a model (types, finite numbers,
    known names); ``edits(ctx)`` checks the rest against the model and batch.
    """

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        INTERVENTIONS[cls.__name__] = cls

    def __post_init__(self) -> None:
        what = type(self).__name__
        if hasattr(self, "layers"):  # one canonical form, so specs compare and round-trip
            self.layers = check_layers(self.layers, what)  # type: ignore[attr-defined]
        for name in SELECTOR_FIELDS:
            value = getattr(self, name, None)
            if value is not None and not isinstance(value, Selector):
                try:
                    setattr(self, name, as_selector(value))
                except TypeError as e:
                    raise TypeError(f"{what}: {name}= {e}") from None

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

    def generation_edits(
        self, model: HookedMLLM, batch: Batch, sources: dict[str, Any] | None = None
    ) -> tuple[list[Edit], dict[str, Tensor]]:
        """This spec resolved for ``HookedMLLM.generate`` on ``batch`` (the prompt's inputs with the
        layout extended over the generated positions), and the source activations its edits read
        (one forward per source). Checks raise here, before any hook is added."""
        ctx = GenerationContext(model, batch, sources)
        edits = self.edits(ctx)
        return edits, ctx.read_sources({})

    def __add__(self, other: Intervention) -> Compose:
        if not isinstance(other, Intervention):
            return NotImplemented
        return Compose([*_flat(self), *_flat(other)])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _encode(getattr(self, f.name))
        return out

    @staticmethod
    def from_dict(d: dict[str, Any] | str) -> Intervention:
        """The spec of ``spec.to_dict()`` (a dict, or its JSON text)."""
        if isinstance(d, (str, bytes)):
            try:
                d = json.loads(d)
            except json.JSONDecodeError as e:
                raise ValueError(f"Intervention.from_dict: not JSON text ({e}); pass spec.to_dict().") from None
        if not isinstance(d, dict):
            raise TypeError(
                f"Intervention.from_dict needs the dict of spec.to_dict() (or its JSON text), got {type(d).__name__}."
            )
        d = dict(d)
        name = d.pop("type", None)
        if name not in INTERVENTIONS:
            raise ValueError(
                f"unknown intervention type {name!r} (the 'type' key of spec.to_dict()); "
                f"known: {', '.join(sorted(INTERVENTIONS))}"
            )
        cls = INTERVENTIONS[name]
        fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"{name}: unknown fields {unknown} in the dict; {name} has fields {fields}.")
        return cls(**{k: _decode(cls, k, v) for k, v in d.items()})


def op_hook(op: tuple, store: dict[str, Tensor]) -> HookFn:
    """A TransformerLens hook function running ``op``."""
    return lambda x, hook: apply(x, op, store)


@dataclass
class Compose(Intervention):
    """Several interventions applied in list order (hooks on one site run in that order)."""

    items: list[Intervention]

    def __post_init__(self) -> None:
        self.items = list(self.items)
        bad = [x for x in self.items if not isinstance(x, Intervention)]
        if bad:
            raise TypeError(f"Compose: items must be intervention specs, got {bad[0]!r:.80}.")

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
