"""Replay the decoder layers above a layer on a packed batch, reusing the clean run.

A clean forward records, for every decoder layer, the keyword arguments HF passed it
(attention masks, rotary / M-RoPE embeddings, cross-attention states), the residual stream
around it, and anything injected between layers (Qwen3-VL deepstack). ``Replay.run(h, l)``
then runs layers ``l+1 ..`` and the head on ``h`` = ``n`` configurations x ``batch`` rows,
with every recorded tensor tiled to the packed batch: no model code is copied, and what
the configurations share (the vision tower, the projector, every layer up to ``l``) is
computed once. ``Replay.verify()`` checks on the clean run that replayed logits equal the
model's own; callers fall back to plain forwards when it does not hold.

Suffix reuse (:mod:`hooks_mm.sweep.suffix`): ``Replay.run(h, l, start=s)`` replays only the
positions ``s..`` of every layer above ``l``, with the clean keys / values of the prefix;
:meth:`Replay.suffix_start` gives the first position a change can reach (from the masks), and
:meth:`Replay.verify_suffix` checks the suffix replay of the clean run like :meth:`verify`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from hooks_mm.sweep.precision import Head, call_in, cast
from hooks_mm.sweep.suffix import KVRecorder, PrefixCache, Unsliceable, allowed_of, slice_inputs, suffix_start

if TYPE_CHECKING:
    from hooks_mm.model import Batch, HookedMLLM


def _tile(v: Any, batch: int, n: int) -> Any:
    """Tile batch-leading tensors ``n`` times (config-major); size-1 dims broadcast as they are."""
    if torch.is_tensor(v):
        if v.dim() and v.shape[0] > 1 and v.shape[0] % batch == 0:
            return v.repeat(n, *([1] * (v.dim() - 1)))
        return v
    if isinstance(v, tuple):
        return tuple(_tile(x, batch, n) for x in v)
    if isinstance(v, list):
        return [_tile(x, batch, n) for x in v]
    return v


def tensor_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of the distinct tensor storages reachable through dicts, tuples and lists (each counted once)."""
    seen = set() if seen is None else seen
    if torch.is_tensor(obj):
        key = obj.untyped_storage().data_ptr()
        if key in seen or obj.device.type == "meta":
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict) or callable(getattr(obj, "items", None)):  # dicts and activation caches
        return sum(tensor_bytes(v, seen) for _, v in obj.items())
    if isinstance(obj, (tuple, list)):
        return sum(tensor_bytes(v, seen) for v in obj)
    return 0


class Replay:
    """Recorded clean run of ``model`` on ``inputs``: residuals, layer kwargs, clean logits."""

    def __init__(self, model: HookedMLLM, batch: Batch, suffix: bool = True):
        self.model = model
        self.batch, self.seq = batch.shape
        self.calls: dict[int, tuple[tuple, dict]] = {}
        layers = model.decoder_layers

        def record(l: int):  # noqa: ANN202
            def hook(m: Any, args: tuple, kwargs: dict) -> None:
                kw = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "use_cache", "hidden_states")}
                self.calls[l] = (args[1:], kw)

            return hook

        names = [
            f"blocks.{l}.{h}"
            for l in range(len(layers))
            for h in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "mlp.hook_post")
            if f"blocks.{l}.{h}" in model.hook_dict  # no dense mlp.hook_post in a mixture-of-experts block
        ]
        handles = [layer.register_forward_pre_hook(record(l), with_kwargs=True) for l, layer in enumerate(layers)]
        try:
            with torch.no_grad():
                self.logits, cache = model.run_with_cache(batch, names_filter=names + ["ln_final.hook_normalized"])
        finally:
            for h in handles:
                h.remove()
        self.cache = cache
        self.dtype = cache["blocks.0.hook_resid_pre"].dtype  # the model's: the clean pass ran in it
        self.head_in = Head(model)  # the head in another dtype (a replay in float32 of a bf16 model)
        n = model.cfg.n_layers
        # what is added between block l's output and block l+1's input (zero but for injections)
        self.injected = {
            l: cache[f"blocks.{l + 1}.hook_resid_pre"] - cache[f"blocks.{l}.hook_resid_post"]
            for l in range(n - 1)
            if not torch.equal(cache[f"blocks.{l + 1}.hook_resid_pre"], cache[f"blocks.{l}.hook_resid_post"])
        }
        self.verified: dict[int, bool] = {}
        # suffix reuse: None while it may be used, else why not; the clean keys / values, recorded on first use
        self.suffix_off: str | None = None if suffix else "off: turned off (suffix=False)"
        self.kv: dict[int, tuple[Tensor, Tensor]] | None = None
        self.kv_layers: set[int] = set()  # decoder layers whose attention reads the prefix cache
        self.sliced: dict[tuple[int, int], tuple[tuple, dict]] = {}
        self.allowed_above: dict[int, Tensor] = {}
        self.verified_suffix: dict[tuple[int, int], bool] = {}

    def held_bytes(self) -> int:
        """What the recorded clean run holds for the whole sweep: its residuals, logits, layer arguments and
        injections, plus the prefix keys / values suffix reuse records on first use (estimated from the config)."""
        held = tensor_bytes([self.cache, self.logits, self.calls, self.injected])
        if self.suffix_off is None:
            c = self.model.cfg
            kv_heads, d_head = c.n_key_value_heads or c.n_heads or 1, c.d_head or 0
            held += 2 * c.n_layers * self.batch * self.seq * kv_heads * d_head * self.dtype.itemsize
        return held

    @torch.no_grad()
    def run(
        self,
        h: Float[Tensor, "nb seq d"],
        after: int,
        positions: Tensor | None = None,
        start: int = 0,
        full: bool = True,
    ) -> Tensor:
        """Logits of the packed residual ``h`` = the output of block ``after``.

        With ``positions`` ([batch] indices), only those positions are unembedded:
        [n * batch, vocab] instead of [n * batch, seq, vocab]. With ``start`` > 0, ``h`` holds the
        positions ``start..`` only (see :meth:`suffix_start`): the prefix is the clean run's, its keys and
        values come from the recorded clean run, and full logits get the clean prefix logits in front
        (``full=False``: the suffix's logits only).
        """
        n = h.shape[0] // self.batch
        model = self.model
        other = h.dtype != self.dtype  # replayed in another dtype: weights cast per layer, on the fly
        cache = PrefixCache(self.kv, start, n) if start else None  # type: ignore[arg-type]
        for l in range(after, model.cfg.n_layers):
            if l > after:
                args, kw = self.layer_inputs(l, start)
                if cache is not None and l in self.kv_layers:
                    kw = {**kw, "past_key_values": cache}
                args, kw = _tile(args, self.batch, n), {k: _tile(v, self.batch, n) for k, v in kw.items()}
                layer = model.decoder_layers[l]
                out = call_in(layer, h.dtype, h, *args, **kw) if other else layer(h, *args, **kw)
                h = out[0] if isinstance(out, tuple) else out
            if l in self.injected:
                h = h + cast(self.injected[l][:, start:], h.dtype).repeat(n, 1, 1)
        head = self.head_in if other else self.head
        if positions is not None:
            return head(h[torch.arange(h.shape[0]), (positions.to(h.device) - start).repeat(n)])
        logits = head(h)
        if start and full:
            logits = torch.cat([cast(self.logits[:, :start], logits.dtype).repeat(n, 1, 1), logits], 1)
        return logits

    def layer_inputs(self, l: int, start: int) -> tuple[tuple, dict]:
        """Layer ``l``'s recorded inputs, cut to the positions ``start..``."""
        if not start:
            return self.calls[l]
        if (l, start) not in self.sliced:
            args, kw = self.calls[l]
            dtype = self.cache[f"blocks.{l}.hook_resid_pre"].dtype
            self.sliced[l, start] = slice_inputs(args, kw, start, self.seq, dtype)
        return self.sliced[l, start]

    def head(self, h: Tensor) -> Tensor:
        """Final norm, unembedding and the family's logit post-processing (``model.resid_to_logits``)."""
        return self.model.resid_to_logits(h)

    def verify(self, after: int, atol: float = 1e-4) -> bool:
        """Does replaying from block ``after`` (two packed copies) give the clean logits?"""
        h = self.cache[f"blocks.{after}.hook_resid_post"]
        got = self.run(torch.cat([h, h]), after)
        b = self.batch
        ok = all(torch.allclose(got[i * b : (i + 1) * b], self.logits, atol=atol) for i in range(2))
        return bool(ok)

    def suffix_start(self, after: int, first: int) -> int:
        """The first position that can differ from the clean run in the layers above ``after`` when
        block ``after``'s output changes at positions ``first..``; 0 when suffix reuse is off."""
        if not self._record() or first <= 0:  # recorded even at 0: meta says whether reuse works here
            return 0
        if after not in self.allowed_above:
            allowed = torch.zeros(self.seq, self.seq, dtype=torch.bool)
            layers = self.model.decoder_layers
            try:
                for l in range(after + 1, self.model.cfg.n_layers):
                    allowed |= allowed_of(self.calls[l][1].get("attention_mask"), self.seq, layers[l])
            except Unsliceable as e:
                self.suffix_off = f"off: {e}"
                return 0
            self.allowed_above[after] = allowed
        return suffix_start(self.allowed_above[after], first)

    def verify_suffix(self, after: int, start: int, atol: float = 1e-4) -> bool:
        """Does replaying positions ``start..`` from block ``after`` (two packed copies) give the clean logits?"""
        if (after, start) not in self.verified_suffix:
            h = self.cache[f"blocks.{after}.hook_resid_post"][:, start:]
            try:
                got = self.run(torch.cat([h, h]), after, start=start, full=False)
            except Unsliceable as e:
                self.suffix_off = f"off: {e}"
                return False
            b, clean = self.batch, self.logits[:, start:]
            ok = all(torch.allclose(got[i * b : (i + 1) * b], clean, atol=atol) for i in range(2))
            self.verified_suffix[after, start] = bool(ok)
        return self.verified_suffix[after, start]

    @torch.no_grad()
    def _record(self) -> bool:
        """Record the clean keys / values of every layer (once): a clean replay of all layers with a
        :class:`~hooks_mm.sweep.suffix.KVRecorder` as the cache. False (with ``suffix_off`` saying why)
        when a layer keeps a state that is not keys / values, or the replay is not the clean run."""
        if self.suffix_off is not None or self.kv is not None:
            return self.suffix_off is None
        model, rec = self.model, KVRecorder()
        cross = set(model.cfg.cross_attn_layers)
        h = self.cache["blocks.0.hook_resid_pre"]
        try:
            for l, layer in enumerate(model.decoder_layers):
                args, kw = self.calls[l]
                for a in args:
                    if a is not None:
                        raise Unsliceable("positional layer inputs")
                rec.layer = l
                out = layer(h, *args, **kw, **({} if l in cross else {"past_key_values": rec}))
                h = out[0] if isinstance(out, tuple) else out
                if l in self.injected:
                    h = h + self.injected[l]
                if l not in cross and [k.shape[-2] for i in rec.owner.get(l, []) for k in rec.kv[i]] != [self.seq] * 2:
                    raise Unsliceable("its cache updates are not one set of keys / values per position")
            ok = torch.allclose(self.head(h), self.logits, atol=1e-4)
        except Exception as e:  # noqa: BLE001 - a layer that wants a real cache (recurrent state ...): no reuse
            why = str(e) if isinstance(e, Unsliceable) else f"{type(e).__name__}: {str(e)[:160]}"
            self.suffix_off = (
                f"off: layer {rec.layer}: {why} (suffix reuse needs keys / values as a layer's only state)"
            )
            return False
        if not ok:
            self.suffix_off = "off: the recorded clean replay differs from the model's clean run"
            return False
        self.kv = rec.kv
        self.kv_layers = {l for l in rec.owner if l not in cross}
        return True
