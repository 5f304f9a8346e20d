"""Wire the hook points into the unmodified HF model, per forward, for the hooks that are live.

Only hook points with hook functions get PyTorch hooks, so a forward with no hooks is the
bare HF forward. Most hook points are a module's input or output (named by the adapter
table); the rest are derived inside a decoder layer: ``hook_resid_mid`` (the input of the
second norm, or of the MLP where no norm precedes it), ``hook_attn_out`` / ``hook_mlp_out``
where no module returns the branch output (``mid - pre`` / ``post - mid``), Qwen3-VL's
deepstack injection (the difference between a block's output and the next block's input),
and the attention internals, which the hooked attention function of :mod:`hooks_mm.attention`
reads from the keyword ``hooks_mm_site`` added to that attention module's call.

Example::

    wiring = Wiring(model)
    with wiring.attached(stop_at_layer=None):
        hf_model(**inputs)
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint
from transformers.utils import ModelOutput

from hooks_mm.attention import NAMES
from hooks_mm.model.calls import attach as attach_calls
from hooks_mm.model.calls import edited
from hooks_mm.model.hybrid import attn_out_path, gated_query
from hooks_mm.model.moe import attach as attach_moe

ATTN_SITE = ("hook_attn_scores", "hook_pattern", "hook_rot_q", "hook_rot_k")


class Stop(Exception):
    """Raised at ``stop_at_layer``; carries the residual stream there."""

    def __init__(self, value: Tensor):
        self.value = value


def first(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, ModelOutput)) else out


def replace_first(out: Any, h: Tensor) -> Any:
    if isinstance(out, ModelOutput):  # a module returning a ModelOutput (Molmo2's projector): its first field
        out[next(iter(out.keys()))] = h
        return out
    return (h, *out[1:]) if isinstance(out, tuple) else h


def shaped_out(hp: HookPoint) -> Callable:
    """Forward hook running ``hp`` on a module's output seen in its input's shape (a module that flattens the
    positions, Llama 4's MoE block, still gives [batch, pos, d]), handed back in the module's own shape."""

    def fn(m: nn.Module, i: Any, o: Any) -> Any:
        y = first(o)
        shape = i[0].shape if i and y.shape != i[0].shape and i[0].numel() == y.numel() else y.shape
        return replace_first(o, hp(y.view(shape)).reshape(y.shape))

    return fn


def fused(hps: list[HookPoint | None], sizes: list[int], d_head: int | None = None) -> Callable:
    """Forward hook on a fused projection (Phi-3 ``qkv_proj`` / ``gate_up_proj``): split its output into
    ``sizes``, run each part's hook point (None: not hooked; ``d_head``: parts seen as heads), re-concatenate."""

    def fn(m: nn.Module, i: Any, out: Tensor) -> Tensor:
        parts = list(out.split(sizes, dim=-1))
        for j, hp in enumerate(hps):
            if hp is not None:
                x = parts[j] if d_head is None else parts[j].unflatten(-1, (-1, d_head))
                x = hp(x)
                parts[j] = x if d_head is None else x.flatten(-2)
        return torch.cat(parts, dim=-1)

    return fn


def fused_per_head(hps: list[HookPoint | None], d_head: int) -> Callable:
    """Forward hook on a fused projection laid out per head, [head, (q, k, v), d_head] (Persimmon
    ``query_key_value``): run each of q / k / v's hook points on its [.., head, d_head] view, re-interleave."""

    def fn(m: nn.Module, i: Any, out: Tensor) -> Tensor:
        parts = list(out.unflatten(-1, (-1, len(hps), d_head)).unbind(-2))
        for j, hp in enumerate(hps):
            if hp is not None:
                parts[j] = hp(parts[j])
        return torch.stack(parts, dim=-2).flatten(-3)

    return fn


class Wiring:
    """The PyTorch hooks of one forward: attached from the live hook points, always removed."""

    def __init__(self, model: HookedRootModule):
        """``model``: the HookedMLLM (its hook points, adapter, decoder layers and attention modules)."""
        self.model = model
        self.handles: list[Any] = []
        self.state: dict[Any, Any] = {}

    @contextlib.contextmanager
    def attached(self, stop_at_layer: int | None) -> Iterator[None]:
        try:
            self.attach(stop_at_layer)
            yield
        finally:
            for h in self.handles:
                h.remove()
            self.handles.clear()
            self.state.clear()

    def _fwd(self, m: nn.Module, fn: Callable) -> None:
        self.handles.append(m.register_forward_hook(fn))

    def _pre(self, m: nn.Module, fn: Callable, with_kwargs: bool = False) -> None:
        self.handles.append(m.register_forward_pre_hook(fn, with_kwargs=with_kwargs))

    def attach(self, stop_at_layer: int | None) -> None:
        model = self.model
        hd = model.hook_dict
        live = {n for n, hp in hd.items() if hp.fwd_hooks or hp.bwd_hooks}
        if not live and stop_at_layer is None:
            return
        a, cfg, state = model.adapter, model.cfg, self.state
        d_head = cfg.d_head

        def out_hook(hp: HookPoint) -> Callable:
            return lambda m, i, o: replace_first(o, hp(first(o)))

        def in_hook(hp: HookPoint) -> Callable:
            return lambda m, args: (hp(args[0]), *args[1:])

        def in_first(hp: HookPoint) -> Callable:  # first argument, positional or keyword (embed_vision(inputs_embeds=))
            def fn(m: nn.Module, args: tuple, kwargs: dict) -> tuple:
                if args:
                    return (hp(args[0]), *args[1:]), kwargs
                key = next(iter(kwargs))
                return args, {**kwargs, key: hp(kwargs[key])}

            return fn

        def heads_out(hp: HookPoint, d_head: int) -> Callable:
            return lambda m, i, o: hp(o.unflatten(-1, (-1, d_head))).flatten(-2)

        def heads_in(hp: HookPoint, d_head: int) -> Callable:
            return lambda m, args: (hp(args[0].unflatten(-1, (-1, d_head))).flatten(-2), *args[1:])

        if "hook_embed" in live:  # the embedding call the model uses: the first (Chameleon and Emu3 embed image
            # codes again) unless the adapter's embed_call says otherwise (Granite Speech embeds input_ids twice)

            def embed(m: nn.Module, i: Any, o: Tensor) -> Tensor | None:
                k = state.get("embed_calls", 0)
                state["embed_calls"] = k + 1
                return hd["hook_embed"](o) if k == state.get("embed_used", 0) else None

            def start(m: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
                state["embed_calls"] = 0
                state["embed_used"] = a.embed_call(kwargs) if a.embed_call is not None else 0

            self._pre(model.hf_model, start, with_kwargs=True)
            self._fwd(model.submodule(a.embed), embed)
        for path, pre_name, post_name in (
            (a.projector, "hook_vision_out", "hook_projector_out"),
            (a.audio_projector, "hook_audio_out", "hook_audio_projector_out"),
        ):
            if path is not None and path == a.projector and a.projector_per_call:  # every call (model/calls.py)
                if mine := {h: hd[h] for h in (pre_name, post_name) if h in live}:
                    self.handles += attach_calls(model, mine)
            elif path is not None:
                if pre_name in live:
                    self._pre(model.submodule(path), in_first(hd[pre_name]), True)
                if post_name in live:
                    self._fwd(model.submodule(path), out_hook(hd[post_name]))

        n = cfg.n_layers
        final_norm = model.submodule(a.final_norm)
        for l, layer in enumerate(model.decoder_layers):
            p = f"blocks.{l}."
            cross = l in cfg.cross_attn_layers
            attn_name = "cross_attn" if cross else "attn"
            attn, attn_out = model.attention(l), attn_out_path(model, l)  # hybrid stacks: the mixer's output
            dh = int(getattr(attn, "head_dim", None) or d_head)  # per layer: Gemma-4's full-attention heads are wider
            derived_attn = (cross or attn_out is None) and p + "hook_attn_out" in live
            derived_mlp = (cross or a.mlp_out is None) and p + "hook_mlp_out" in live
            prev_inject = l > 0 and f"blocks.{l - 1}.hook_deepstack" in live
            inject = p + "hook_deepstack" in live

            parallel = a.parallel and not cross
            needs_pre = parallel and (p + "hook_resid_mid" in live or derived_mlp)
            flat = a.flat and any(h.startswith(p) for h in live)  # OPT: the layer's [batch, pos] shape is needed
            sh = (lambda fn, l=l: self._shaped(l, fn)) if a.flat else (lambda fn: fn)  # noqa: E731
            if p + "hook_resid_pre" in live or derived_attn or prev_inject or needs_pre or flat:
                self._pre(layer, self._layer_pre(l, prev_inject), True)
            if p + "ln1.hook_normalized" in live:
                self._fwd(layer.get_submodule(a.ln1), out_hook(hd[p + "ln1.hook_normalized"]))
            qkv = [hd[h] if (h := f"{p}{attn_name}.hook_{key}") in live else None for key in ("q", "k", "v")]
            if a.qkv is not None and not cross and any(qkv) and a.qkv_per_head:
                self._fwd(attn.get_submodule(a.qkv), fused_per_head(qkv, dh))
            elif a.qkv is not None and not cross and any(qkv):  # fused: split [q; k; v], hook, re-concatenate
                sizes = [cfg.n_heads * d_head, *[cfg.n_key_value_heads * d_head] * 2]
                self._fwd(attn.get_submodule(a.qkv), fused(qkv, sizes, d_head))
            else:
                for key, hp in zip(("q", "k", "v"), qkv):
                    if hp is not None and a.qkv_norms:  # the per-head norm's input: [.., head, d_head] already
                        self._pre(attn.get_submodule(getattr(a, key)), in_hook(hp))
                    elif hp is not None:
                        gated = key == "q" and a.q_gated and not cross  # [query; gate] per head (Qwen3.5)
                        self._fwd(
                            attn.get_submodule(getattr(a, key)), gated_query(hp, dh) if gated else heads_out(hp, dh)
                        )
            if f"{p}{attn_name}.hook_z" in live:
                self._pre(attn.get_submodule(a.o), heads_in(hd[f"{p}{attn_name}.hook_z"], dh))
            site = tuple(hd.get(f"{p}{attn_name}.{h}") if f"{p}{attn_name}.{h}" in live else None for h in ATTN_SITE)
            if any(hp is not None for hp in site):
                impl = getattr(getattr(attn, "config", None), "_attn_implementation", None)
                if impl not in NAMES.values():
                    raise NotImplementedError(
                        f"{type(attn).__name__} does not call transformers' AttentionInterface (its attention is "
                        f"{impl!r}), so hooks_mm cannot expose its scores, pattern or rotated q / k; hook "
                        "attn.hook_q / hook_k / hook_v / hook_z or the residual stream instead."
                    )
                self._pre(attn, lambda m, args, kwargs, site=site: (args, {**kwargs, "hooks_mm_site": site}), True)
            if p + "hook_attn_out" in live and not derived_attn:
                self._fwd(layer.get_submodule(attn_out), out_hook(hd[p + "hook_attn_out"]))
            mid = p + "hook_resid_mid" in live
            if mid or derived_attn or derived_mlp:
                fn = self._mid(l, derived_attn, mid)
                if parallel:  # no norm reads resid_mid: it is resid_pre + the attention output, once that exists
                    self._fwd(layer.get_submodule(attn_out), self._after_attn(l, fn))
                else:  # the input of the second norm, or of the MLP itself where none precedes it (EXAONE-4)
                    fn = sh(fn)
                    reads_mid = layer.get_submodule(a.ln2 if a.ln2 is not None else a.mlp)
                    self._pre(reads_mid, lambda m, args, fn=fn: (fn(args[0]), *args[1:]))
            if p + "ln2.hook_normalized" in live:
                self._fwd(layer.get_submodule(a.ln2), out_hook(sh(hd[p + "ln2.hook_normalized"])))
            mlp = layer.get_submodule(a.mlp)
            pre = [hd[h] if (h := p + f"mlp.hook_{key}") in live else None for key in ("pre", "pre_linear")]
            if a.gate_up is not None and any(pre):  # fused: split [gate; up], hook, re-concatenate
                self._fwd(mlp.get_submodule(a.gate_up), fused(pre, [cfg.d_mlp] * 2))
            elif a.gate_up is None:
                if pre[0] is not None:
                    self._fwd(mlp.get_submodule(a.gate or a.up), out_hook(sh(pre[0])))
                if pre[1] is not None:
                    self._fwd(mlp.get_submodule(a.up), out_hook(sh(pre[1])))
            if p + "mlp.hook_post" in live:
                self._pre(mlp.get_submodule(a.down), in_hook(sh(hd[p + "mlp.hook_post"])))
            if l in cfg.moe_layers and (mine := {h: hd[h] for h in live if h.startswith(p + "mlp.")}):
                self.handles += attach_moe(mlp, a.moe, mine, p + "mlp.")  # routing and experts (model/moe.py)
            if p + "hook_mlp_out" in live and not derived_mlp:  # Llama 4's MoE returns [tokens, d]; OPT's fc2 too
                self._fwd(layer.get_submodule(a.mlp_out), shaped_out(sh(hd[p + "hook_mlp_out"])))
            if mid or derived_attn or derived_mlp or p + "hook_resid_post" in live or inject:
                self._fwd(layer, self._layer_post(l, derived_mlp, inject))
        if f"blocks.{n - 1}.hook_deepstack" in live:
            self._pre(final_norm, lambda m, args, kwargs: ((self._injected(n - 1, args[0]), *args[1:]), kwargs), True)
        if "ln_final.hook_normalized" in live:
            self._fwd(final_norm, out_hook(hd["ln_final.hook_normalized"]))
        if stop_at_layer is not None:
            stop_at_layer = stop_at_layer + n if stop_at_layer < 0 else stop_at_layer

            def stop(m: nn.Module, args: tuple, kwargs: dict) -> None:
                raise Stop(args[0] if args else kwargs["hidden_states"])

            self._pre(model.decoder_layers[stop_at_layer] if stop_at_layer < n else final_norm, stop, True)

    def _injected(self, l: int, x: Tensor) -> Tensor:
        """Route the injection after block ``l`` (x - resid_post[l]) through hook_deepstack."""
        post = self.state["post", l]
        new = edited(self.model.hook_dict[f"blocks.{l}.hook_deepstack"], x - post)
        return x if new is None else post + new

    def _layer_pre(self, l: int, prev_inject: bool) -> Callable:
        hp, state = self.model.hook_dict[f"blocks.{l}.hook_resid_pre"], self.state

        def fn(m: nn.Module, args: tuple, kwargs: dict) -> tuple:
            x = args[0] if args else kwargs["hidden_states"]
            if prev_inject:
                x = self._injected(l - 1, x)
            x = hp(x)
            state["pre", l] = x
            state["shape", l] = x.shape[:-1]
            if args:
                return (x, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": x}

        return fn

    def _shaped(self, l: int, fn: Callable) -> Callable:
        """``fn`` on [batch, pos, ...] where the block holds [batch * pos, ...] (OPT's MLP half), flattened back."""

        def call(x: Tensor) -> Tensor:
            if x.dim() != 2:
                return fn(x)
            out = fn(x.reshape(*self.state["shape", l], x.shape[-1]))
            return out.reshape(-1, out.shape[-1])

        return call

    def _mid(self, l: int, derived_attn: bool, mid: bool) -> Callable:
        """resid_mid x0 -> the value the MLP branch reads (after hook_attn_out when derived, hook_resid_mid);
        a change is remembered and added to the block's output, whose residual branch still holds x0."""
        hd, state = self.model.hook_dict, self.state

        def fn(x0: Tensor) -> Tensor:
            x = x0
            if derived_attn:
                resid_pre = state["pre", l]
                new = edited(hd[f"blocks.{l}.hook_attn_out"], x - resid_pre)
                if new is not None:
                    x = resid_pre + new
            if mid:
                x = hd[f"blocks.{l}.hook_resid_mid"](x)
            if x is not x0:  # the residual branch inside the layer still holds x0
                state["delta", l] = x - x0
            state["mid", l] = x
            return x

        return fn

    def _after_attn(self, l: int, mid: Callable) -> Callable:
        """Forward hook on a parallel block's attention output: resid_mid = resid_pre + attn_out (output kept)."""

        def fn(m: nn.Module, args: tuple, out: Tensor) -> None:
            mid(self.state["pre", l] + first(out))

        return fn

    def _layer_post(self, l: int, derived_mlp: bool, inject: bool) -> Callable:
        hd, state, a = self.model.hook_dict, self.state, self.model.adapter

        def fn(m: nn.Module, args: tuple, out: Any) -> Any:
            h = first(out)
            delta = state.pop(("delta", l), None)
            if delta is not None:  # scaled as the block scales its residual branch (Gemma-4 layer_scalar)
                h = h + (delta * getattr(m, a.out_scale) if a.out_scale else delta)
            if derived_mlp:
                mid = state["mid", l]
                new = edited(hd[f"blocks.{l}.hook_mlp_out"], h - mid)
                if new is not None:
                    h = mid + new
            h = hd[f"blocks.{l}.hook_resid_post"](h)
            if inject:
                state["post", l] = h
            return replace_first(out, h)

        return fn


# the HF models a hooks_mm forward is running on now (per HF model: two wrappers of one model share it)
_RUNNING: weakref.WeakSet = weakref.WeakSet()


def check_idle(hf_model: nn.Module) -> None:
    """Raise when a forward of ``hf_model`` is running: a run inside a hook would detach the outer run's hooks."""
    if hf_model in _RUNNING:
        raise RuntimeError(
            "a forward of this model is already running: a hook function (or another HookedMLLM wrapping the "
            "same HF model) called model(...), run_with_cache, run_with_hooks or generate during it. A run inside "
            "a hook would remove the outer run's hooks. Compute what the hook needs before the run (e.g. with "
            "model.run_with_cache(...)) and read it inside the hook."
        )


@contextlib.contextmanager
def exclusive(hf_model: nn.Module) -> Iterator[None]:
    """Mark ``hf_model`` as running for the duration of the block (see :func:`check_idle`)."""
    check_idle(hf_model)
    _RUNNING.add(hf_model)
    try:
        yield
    finally:
        _RUNNING.discard(hf_model)
