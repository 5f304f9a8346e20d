"""What the misuse catalogue (tests/misuse_catalogue.py) is made of: the family environment,
parameter draws, results, and the builders several entries share."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from conftest import pair_for

from hooks_mm import HookedMLLM, NonPad, zoo
from hooks_mm.interventions import CentroidBank, NeuronAblation, NeuronMeans
from hooks_mm.sweep import HooksSweep, kl_to_clean, sweep

FAMILIES6 = ("llava", "qwen2_vl", "idefics3", "gemma3", "mllama", "anygpt")
PIXELS = tuple(f for f in FAMILIES6 if f != "anygpt")  # families whose images come as pixel_values
WITH_PROCESSOR = ("llava", "qwen2_vl", "anygpt")  # the tiny builders of the other three give no processor


class Draw:
    """Where a case's parameters come from: hypothesis (``data.draw``) or a seeded choice."""

    def __init__(self, pick: Callable[[list], Any]):
        self._pick = pick

    def pick(self, options: Any) -> Any:
        return self._pick(list(options))

    def int(self, lo: int, hi: int) -> int:
        return self._pick(list(range(lo, hi + 1)))


@dataclass
class Result:
    """What a call returned (``got``) and the right answer (``want``, None: there is none)."""

    got: Any
    want: Any = None
    must_raise: bool = False


@dataclass(frozen=True)
class Misuse:
    name: str
    run: Callable[[Env, Draw], Result]
    names: tuple[str, ...]  # a clear error names one of these (case-insensitive)
    families: tuple[str, ...] = FAMILIES6

    def __repr__(self) -> str:  # hypothesis prints it
        return self.name


class Env:
    """One family's shared hooked model, its bare twin, its example batch; fresh models on demand."""

    def __init__(self, family: str):
        self.family, self.pair = family, pair_for(family)
        self.model, self.inputs, self.fresh_models = self.pair.model, dict(self.pair.inputs), []
        self.cfg = self.model.cfg

    def fresh(self, seed: int = 0) -> HookedMLLM:
        """A private HookedMLLM (for misuses that change the model itself)."""
        m = HookedMLLM(zoo.build(self.family, seed).model, self.pair.tiny.processor)
        self.fresh_models.append(m)
        return m

    @torch.no_grad()
    def bare(self, inputs: dict | None = None, edit: tuple[int, Callable] | None = None, model: Any = None) -> Any:
        """Logits of the bare HF model; ``edit=(l, fn)`` applies ``fn`` to decoder layer l's output."""
        model = model if model is not None else self.pair.bare
        handle = None
        if edit is not None:
            layer = model.get_submodule(self.model.adapter.layers)[edit[0]]

            def hook(mod: Any, args: Any, out: Any) -> Any:
                return (edit[1](out[0]), *out[1:]) if isinstance(out, tuple) else edit[1](out)

            handle = layer.register_forward_hook(hook)
        try:
            return model(**(self.inputs if inputs is None else inputs)).logits
        finally:
            if handle is not None:
                handle.remove()

    def rows(self, t: Any) -> bool:
        return torch.is_tensor(t) and t.dim() >= 1 and t.shape[0] == self.inputs["input_ids"].shape[0]

    def with_(self, **changes: Any) -> dict:
        """The example batch with keys changed (None: removed)."""
        out = {**self.inputs, **changes}
        return {k: v for k, v in out.items() if v is not None}

    def map_rows(self, fn: Callable, media: Callable | None = None) -> dict:
        """``fn`` on every per-row tensor; ``media`` on per-image tensors (None: kept)."""
        return {
            k: fn(v) if self.rows(v) else (media(k, v) if media and torch.is_tensor(v) else v)
            for k, v in self.inputs.items()
        }

    def reversed_rows(self) -> dict:
        """The same examples, rows in reverse order (per-image media reordered with them)."""
        layout = self.model.layout(self.inputs)
        per_row = [int(r[r >= 0].unique().numel()) for r in layout.image_id]
        grid = self.inputs.get("image_grid_thw")
        sizes = [int(g.prod()) for g in grid] if grid is not None else None

        def media(key: str, v: Any) -> Any:
            if not key.startswith(("pixel_values", "image_grid")):
                return v
            chunks = list(v.split(sizes if key == "pixel_values" and sizes else 1))
            starts = np.cumsum([0, *per_row])
            return torch.cat([c for r in reversed(range(len(per_row))) for c in chunks[starts[r] : starts[r + 1]]])

        return self.map_rows(lambda v: v.flip(0), media)

    def nonzero_d(self, hook: str) -> int:
        return self.cfg.d_mlp if "mlp.hook_post" in hook or "hook_pre" in hook else self.cfg.d_model


def other_family(env: Env, same: str, attr: str) -> str:
    """A family of FAMILIES6 whose ``cfg.attr`` is (same='eq') or is not (same='ne') this one's."""
    mine = getattr(env.cfg, attr)
    for f in FAMILIES6:
        if f != env.family and (getattr(pair_for(f).model.cfg, attr) == mine) == (same == "eq"):
            return f
    raise AssertionError(f"no family with {attr} {same} {mine}")


_FITTED: dict[tuple, Any] = {}


def fitted(kind: str, family: str) -> Any:
    """A NeuronMeans or a CentroidBank fitted (once) on another family's example batch."""
    if (kind, family) not in _FITTED:
        p = pair_for(family)
        if kind == "means":
            _FITTED[kind, family] = NeuronMeans.fit(p.model, [p.inputs], layers=[0])
        else:
            _FITTED[kind, family] = CentroidBank.fit(p.model, [p.inputs], layer=0, positions=NonPad(), k=2)
    return _FITTED[kind, family]


def ablate(env: Env, d: Draw, **kw: Any) -> Result:
    """NeuronAblation with keywords ``kw`` (misused), which must be refused."""
    spec = NeuronAblation(**{"layers": 0, "neurons": [1], **kw})
    return Result(env.model.run_with_interventions(env.inputs, spec), must_raise=True)


def refused(call: Callable[[], Any]) -> Result:
    return Result(call(), must_raise=True)


def refused_vs_bare(env: Env, inputs: dict) -> Result:
    """Inputs that must be refused; if they run, the gap to the bare run of the example batch."""
    got = env.model(inputs)
    return Result(got, env.bare() if got.shape == env.bare().shape else None, must_raise=True)


def resid_edit(env: Env, d: Draw) -> tuple[int, str, Callable]:
    l = d.int(0, env.cfg.n_layers - 1)
    return l, f"blocks.{l}.hook_resid_post", lambda x, hook=None: x + 1.0


def sweep_kl(env: Env, model: HookedMLLM, path: str | None, metric: Any = None) -> Any:
    configs = [NeuronAblation(layers=0, neurons=[i]) for i in range(3)]
    metric = metric if metric is not None else kl_to_clean(model, env.inputs)
    return sweep(model, env.inputs, configs, metric, checkpoint=path, progress=False).values


@torch.no_grad()
def max_change(env: Env, model: HookedMLLM) -> Callable:
    """A metric that is 0 on the clean run: the largest change of a last-position logit."""
    clean = model(env.inputs)[:, -1]
    return lambda logits: (logits[:, -1] - clean).abs().amax()


def saved_bank(env: Env) -> CentroidBank:
    bank = fitted("bank", env.family)
    if "path" not in bank.meta:
        bank.save(tempfile.mkdtemp())
    return bank


def nested(env: Env, d: Draw, two_wrappers: bool) -> Result:
    """A hook runs a forward (once, or each time it fires) of the same wrapper or of a second one
    on the same HF model; the outer run's edit at a later hook must still apply, once."""
    outer = env.fresh()
    inner = HookedMLLM(outer.hf_model, env.pair.tiny.processor) if two_wrappers else outer
    l, name, fn = resid_edit(env, d)
    calls, once = [], d.pick([True, False])

    def run_inner(x: torch.Tensor, hook: Any) -> None:
        if once and not calls:  # the inner run fires this hook too
            calls.append(True)
            inner.run_with_cache(env.inputs, names_filter=["blocks.0.hook_resid_post"])
        elif not once:  # every time: recursion unless nested runs are kept apart
            inner(env.inputs)

    at = d.pick([f"blocks.{l}.hook_resid_pre", "hook_embed"])
    got = outer.run_with_hooks(env.inputs, fwd_hooks=[(at, run_inner), (name, fn)])
    return Result(got, env.bare(edit=(l, fn)))


def checkpoint_file(env: Env, content: str) -> Result:
    path = os.path.join(tempfile.mkdtemp(), "sweep.pt")
    if content == "truncated":
        sweep_kl(env, env.model, path)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    else:
        open(path, "wb").write(b"" if content == "empty" else os.urandom(64))
    return Result(sweep_kl(env, env.model, path), must_raise=True)


def resumed(env: Env, first: tuple, second: tuple) -> Result:
    """Sweep (model, metric) ``first`` into a checkpoint, then ``second`` on the same file."""
    path = os.path.join(tempfile.mkdtemp(), "sweep.pt")
    sweep_kl(env, first[0], path, first[1])
    return Result(sweep_kl(env, second[0], path, second[1]), sweep_kl(env, second[0], None, second[1]))


def nnsight_resumed(env: Env, resume: bool = True) -> Result:
    """On the nnsight backend: sweep one metric into a checkpoint, then another metric on the same file."""
    from hooks_mm.remote import NNsightSweep
    from hooks_mm.sweep import answer_logprob, logit_diff

    path = os.path.join(tempfile.mkdtemp(), "sweep.pt")
    configs = [NeuronAblation(layers=0, neurons=[i]) for i in range(3)]
    second = logit_diff(env.model, env.inputs, [1, 1], [2, 2])

    def run(metric: Any, checkpoint: str | None, backend: Any = None) -> Any:
        backend = backend or NNsightSweep(remote=False)
        return sweep(env.model, env.inputs, configs, metric, checkpoint=checkpoint, progress=False, backend=backend)

    if not resume:  # the nnsight path on a model wrapped without a processor: as the local path
        return Result(run(second, None).values, run(second, None, backend=HooksSweep()).values)
    run(answer_logprob(env.model, env.inputs), path)
    return Result(run(second, path).values, run(second, None, backend=HooksSweep()).values)
