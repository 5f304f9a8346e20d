"""Generation under interventions: every spec kind applied during KV-cached HF generation, exactly.

``HookedMLLM.generate(inputs, interventions=spec, sources=..., max_new_tokens=n)`` compiles
``spec`` once on the prompt's batch with its layout extended by ``n`` generated positions
(:func:`~hooks_mm.layout.generation_layout`: text, selector ``Generated()``), so every mask
spans prompt + generated positions. Each forward HF runs (the prefill: all prompt positions;
then one position per new token) computes the positions ``model.positions``, and every
edit's op runs on that slice (:func:`~hooks_mm.interventions.ops.step`): an edit at prompt
positions is applied once, in the prefill, an edit at generated positions at every step
that computes one. The result equals recomputing every step without the cache, with the
spec compiled on the sequence so far (the extended layout cut to its length).

Example::

    spec = Steer(layers=1, vector=v.tolist(), positions=Generated(), scale=4.0)
    out = model.generate(inputs, max_new_tokens=8, interventions=spec)
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from jaxtyping import Int
from torch import Tensor, nn

from hooks_mm.interventions.ops import apply, step
from hooks_mm.layout import generation_layout
from hooks_mm.model.batch import Batch
from hooks_mm.model.checks import check_hook_list
from hooks_mm.model.wiring import exclusive

HookedMLLM = Any  # hooks_mm.model.core imports this module

# generate() keywords that would break the one-forward-per-step, rows-as-given picture the edits are sliced for
REFUSED = {
    "max_length": "pass max_new_tokens (the generated positions the spec is compiled for)",
    "past_key_values": "a cache computed outside this call holds prompt positions the edits never reached: "
    "pass the prompt and let generate compute it",
    "assistant_model": "speculative decoding computes and rolls back several positions per step: "
    "generate without an assistant",
    "prompt_lookup_num_tokens": "prompt-lookup decoding computes several candidate positions per step: leave it out",
}


def check_unbound(model: HookedMLLM) -> None:
    """An error inside a ``model.interventions(...)`` block, whose hooks are compiled for full forwards."""
    if model._bound:
        raise ValueError(
            "generate inside a model.interventions(spec, inputs) block: that block's hooks are compiled for full "
            "forwards of its batch, not for KV-cached generation steps: pass the spec to generate instead, outside "
            "the block: model.generate(inputs, interventions=spec, sources=...)."
        )


def generate_with(
    model: HookedMLLM,
    batch: Batch,
    max_new_tokens: int,
    interventions: Any,
    sources: dict[str, Any] | None,
    fwd_hooks: Any,
    do_sample: bool,
    logits_processor: Any,
    gen_kwargs: dict[str, Any],
) -> Any:
    """The body of :meth:`HookedMLLM.generate` (see there) on a checked, left-padded ``batch``; every check
    before any hook is added."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be a positive int, got {max_new_tokens!r}.")
    raw = [(name, guarded(fn, model)) for name, fn in check_hook_list(fwd_hooks, "fwd_hooks")]
    hooks = raw
    if interventions is not None or sources is not None:
        check_generation(model, interventions, sources, gen_kwargs)
        ext = batch.with_layout(generation_layout(batch.layout, batch.shape[1] + max_new_tokens))
        edits, store = interventions.generation_edits(model, ext, sources)
        hooks = [(e.hook, stepped(e.op, store, model)) for e in edits] + raw  # the spec first, then raw hooks
    if logits_processor is not None:
        gen_kwargs = {**gen_kwargs, "logits_processor": logits_processor}

    done = [0]  # positions computed so far

    def track(module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids")
        ids = ids if ids is not None else kwargs.get("inputs_embeds")
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None else 0
        n = ids.shape[1]
        lost = past not in (0, done[0]) or (past == 0 and done[0] and n != done[0] + 1)  # cached, or all from 0
        if lost and interventions is not None:
            raise RuntimeError(
                f"generate: this step computes {n} position(s) after a cache of {past}, but {done[0]} were computed "
                "so far: the spec's edits cannot be placed on positions that cannot be told: generate one token per "
                "step from this prompt (a plain generate call, no speculative or chunked decoding)."
            )
        done[0] = past + n
        model.positions = torch.arange(past, past + n, device=ids.device)

    handle = model.hf_model.register_forward_pre_hook(track, with_kwargs=True)
    try:
        with exclusive(model.hf_model), model.hooks(fwd_hooks=hooks), model._wiring.attached(None):
            return model.hf_model.generate(
                **batch.model_inputs, max_new_tokens=max_new_tokens, do_sample=do_sample, **gen_kwargs
            )
    finally:
        handle.remove()
        model.positions = None


def check_generation(model: HookedMLLM, spec: Any, sources: Any, gen_kwargs: dict[str, Any]) -> None:
    """An error naming the fix for an intervention generate cannot run exactly."""
    if spec is None:
        raise ValueError(
            "generate: sources= given without interventions=: sources name the runs a spec reads "
            "(Patch(source='clean'), NeuronAblation(mode='resample')): pass the spec as interventions=, "
            "or drop sources."
        )
    if not callable(getattr(spec, "generation_edits", None)):
        raise TypeError(
            f"generate: interventions= takes an intervention spec (hooks_mm.interventions: Steer(...), "
            f"NeuronAblation(...), a + b, ...), got {type(spec).__name__}: for raw hook functions use fwd_hooks=."
        )
    if sources is not None and not isinstance(sources, dict):
        raise TypeError(f"generate: sources must be a dict {{name: inputs}}, got {type(sources).__name__}.")
    config = gen_kwargs.get("generation_config") or model.hf_model.generation_config
    for key in ("num_beams", "num_return_sequences"):
        n = gen_kwargs.get(key, getattr(config, key, None)) or 1
        if n > 1:
            raise ValueError(
                f"generate: {key}={n} with interventions: HF generate multiplies the rows (one per beam or "
                "returned sequence), while the spec's positions have one row per prompt row: generate one sequence "
                "per row (num_beams=1, num_return_sequences=1); for several samples, repeat the rows of the inputs."
            )
    for key, fix in REFUSED.items():
        if gen_kwargs.get(key) is not None:
            raise ValueError(f"generate: {key}= with interventions: {fix}.")


def stepped(op: tuple, store: dict[str, Tensor], model: HookedMLLM) -> Callable:
    """A hook function running ``op`` on the positions of each generation step (``model.positions``)."""

    def fn(x: Tensor, hook: Any) -> Tensor:
        if model.positions is None:
            raise RuntimeError(
                f"generate: {hook.name} ran outside a tracked generation forward, so the positions its edit belongs "
                "to are unknown: run the spec through model.generate(inputs, interventions=spec)."
            )
        n_keys = x.shape[-1] if op[0] == "knock" else None  # scores [b, head, q, k]: the keys this step sees
        s = step(op, model.positions, n_keys, store)
        return x if s is None else apply(x, s, store)

    return fn


def guarded(fn: Callable, model: HookedMLLM) -> Callable:
    """``fn`` (a raw hook) with its errors during generation explained: which hook, at which positions."""

    def run(x: Tensor, hook: Any) -> Any:
        try:
            out = fn(x, hook=hook)
            if isinstance(out, Tensor) and out.shape != x.shape:  # e.g. broadcast against a [batch, seq] mask
                raise ValueError(f"the hook returned shape {tuple(out.shape)} for an activation of {tuple(x.shape)}")
            return out
        except (RuntimeError, IndexError, ValueError) as e:
            pos: Int[Tensor, " n"] | None = model.positions
            where = "positions (none tracked)" if pos is None else f"position {int(pos[0])}"
            if pos is not None and len(pos) > 1:
                where = f"positions {int(pos[0])}..{int(pos[-1])}"
            name = getattr(fn, "__qualname__", repr(fn))
            raise ValueError(
                f"generate: the hook {name!r} on {hook.name} failed on an activation of shape {tuple(x.shape)}, "
                f"which holds the {where} this generation step computes ({type(e).__name__}: {e}). A hook "
                "written for full sequences (indexing with a [batch, seq] mask) does not fit a cached step: pass "
                "the edit as generate(inputs, interventions=spec), or make the hook step-aware: model.positions "
                "holds the positions of the step (mask[:, model.positions])."
            ) from e

    run.__qualname__ = getattr(fn, "__qualname__", "hook")
    return run
