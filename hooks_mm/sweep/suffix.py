"""Suffix reuse for the sweep replay: replay only the positions an ablation can change.

In a causal decoder, a change at position ``p`` of block ``l``'s output changes no position
before ``p`` in any layer above. :func:`suffix_start` works out, from the attention masks the
layers above really use (bidirectional image blocks, prefix-LM prompts, sliding windows), the
first position that can change: every position before it is provably the clean one. The
replay then runs only the suffix, with the clean keys / values of the prefix (recorded once by
:class:`KVRecorder` on a clean replay, served by :class:`PrefixCache` through the attention's
own ``past_key_values.update``) and every layer input sliced to the suffix
(:func:`slice_inputs`: masks, rotary / M-RoPE embeddings, position ids, cross-attention masks).
Layers whose inputs cannot be sliced (a linear-attention / recurrent state, shared key-value
layers, an unknown sequence-aligned input) turn suffix reuse off, with the reason.

Example::

    allowed = causal_allowed(6)                 # [q, k] True where query q reads key k
    allowed[:3, :3] = True                      # a bidirectional block over positions 0..2
    suffix_start(allowed, first=2)              # -> 0: the block's earlier positions change too
    suffix_start(allowed, first=4)              # -> 4
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

# layer inputs with the sequence on dim -2 (query rows of masks, rotary tables)
_SEQ_ROWS = ("attention_mask", "position_embeddings", "cross_attention_mask", "full_text_row_masked_out_mask")
_NO_SEQ = ("cross_attention_states",)  # sequence-free inputs, passed as they are


class Unsliceable(ValueError):
    """A layer input that cannot be cut to a suffix: suffix reuse is off for the model."""


class KVRecorder:
    """An HF cache stand-in for one clean replay: keeps every layer's keys and values, returns them
    unchanged (so the layer computes what it computes without a cache)."""

    def __init__(self) -> None:
        self.kv: dict[int, tuple[Tensor, Tensor]] = {}
        self.layer = -1  # the decoder layer being run
        self.owner: dict[int, list[int]] = {}  # decoder layer -> the cache indices it updated

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any):  # noqa: ANN201
        self.kv[layer_idx] = (key_states, value_states)
        self.owner.setdefault(self.layer, []).append(layer_idx)
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions seen before this forward (Llama 4's attention temperature reads it)


def _join(prefix: Tensor, new: Tensor, n: int) -> Tensor:
    """``[prefix; new]`` on the sequence dim (-2), the prefix ([batch, ...]) shared by ``n`` packed configs."""
    b = prefix.shape[0]
    out = new.new_empty(*new.shape[:-2], prefix.shape[-2] + new.shape[-2], new.shape[-1])
    s = prefix.shape[-2]
    out.view(n, b, *out.shape[1:])[..., :s, :] = prefix.to(new.dtype)
    out[..., s:, :] = new
    return out


class PrefixCache:
    """An HF cache stand-in for a suffix replay: each attention's ``update`` returns the clean prefix's
    keys / values followed by the suffix's own (nothing is stored: one object serves every chunk)."""

    def __init__(self, kv: dict[int, tuple[Tensor, Tensor]], start: int, n: int):
        self.kv = {i: (k[..., :start, :], v[..., :start, :]) for i, (k, v) in kv.items()}
        self.start, self.n = start, n

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any):  # noqa: ANN201
        pk, pv = self.kv[layer_idx]
        return _join(pk, key_states, self.n), _join(pv, value_states, self.n)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.start


def causal_allowed(seq: int, device: Any = None) -> Bool[Tensor, "q k"]:
    """The causal pattern: query ``q`` reads keys ``0..q``."""
    return torch.ones(seq, seq, dtype=torch.bool, device=device).tril()


def allowed_of(mask: Tensor | None, seq: int, layer: nn.Module) -> Bool[Tensor, "q k"]:
    """Which keys each query reads in any row of a layer's attention ``mask`` ([batch, 1, q, k]: bool
    True = read, or additive float 0 = read); ``None`` (SDPA's implicit causal mask): causal, or
    everything when an attention of ``layer`` is not causal."""
    if mask is None:
        bidirectional = any(getattr(m, "is_causal", True) is False for m in layer.modules())
        return torch.ones(seq, seq, dtype=torch.bool) if bidirectional else causal_allowed(seq)
    if mask.dim() != 4 or mask.shape[-2:] != (seq, seq):
        raise Unsliceable(f"an attention mask of shape {tuple(mask.shape)} (not [batch, 1, {seq}, {seq}])")
    read = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    return read.reshape(-1, seq, seq).any(0).cpu()


def suffix_start(allowed: Bool[Tensor, "q k"], first: int) -> int:
    """The first position that can differ from the clean run when positions ``first..`` change, given
    ``allowed`` (the union over layers and rows of which keys each query reads): the smallest ``s <=
    first`` such that no query before ``s`` reads a key at ``s`` or after (a bidirectional block that
    contains or follows ``first`` pulls ``s`` back to its start)."""
    s = first
    while s > 0:
        hit = allowed[:s, s:].any(-1).nonzero()
        if len(hit) == 0:
            return s
        s = int(hit[0])
    return 0


def _rows(v: Tensor, start: int, seq: int, name: str) -> Tensor:
    if v.dim() < 2 or v.shape[-2] != seq:
        raise Unsliceable(f"layer input {name!r} of shape {tuple(v.shape)} (no sequence dim of {seq} at -2)")
    return v[..., start:, :]


def slice_inputs(args: tuple, kw: dict[str, Any], start: int, seq: int, dtype: torch.dtype) -> tuple[tuple, dict]:
    """A layer's recorded positional / keyword inputs cut to the positions ``start..`` (queries); keys
    keep the whole sequence (the prefix comes from the cache). :class:`Unsliceable` when an input is
    not one this knows how to cut."""
    if any(a is not None for a in args):
        raise Unsliceable(f"positional layer inputs {[type(a).__name__ for a in args]}")
    out: dict[str, Any] = {}
    for k, v in kw.items():
        if k == "attention_mask" and v is None:  # SDPA's implicit causal mask: made explicit for the suffix
            q = torch.arange(start, seq)[:, None]
            read = torch.arange(seq)[None, :] <= q
            out[k] = torch.zeros(read.shape, dtype=dtype).masked_fill(~read, torch.finfo(dtype).min)[None, None]
        elif v is None or isinstance(v, (bool, int, float, str)) or k in _NO_SEQ:
            out[k] = v
        elif k in _SEQ_ROWS and torch.is_tensor(v):
            if k == "attention_mask" and (v.dim() != 4 or v.shape[-1] != seq):
                raise Unsliceable(f"an attention mask of shape {tuple(v.shape)} (a linear-attention / recurrent layer)")
            out[k] = _rows(v, start, seq, k)
        elif k == "position_embeddings" and isinstance(v, (tuple, list)):
            out[k] = type(v)(_rows(x, start, seq, k) for x in v)
        elif k == "position_ids" and torch.is_tensor(v) and v.shape[-1] == seq:
            out[k] = v[..., start:]
        else:
            raise Unsliceable(f"layer input {k!r} ({type(v).__name__})")
    return args, out


def first_changed(diff: Float[Tensor, "batch pos m"]) -> int | None:
    """The first position where ``diff`` (what an edit changes) is non-zero in any row, or None."""
    hit = (diff != 0).flatten(2).any(-1).any(0).nonzero()
    return int(hit[0]) if len(hit) else None
