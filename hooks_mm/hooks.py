"""The one table of hook names: where each hook point lives, its shape, and how nnsight reaches it.

The hook tree of :class:`~hooks_mm.HookedMLLM`, the position slicing of ``run_with_cache``,
the width checks of intervention specs and the nnsight compiler all read this table.

- ``shape``: the activation's dims. The position axis is ``pos`` (``q`` in attention
  scores and patterns); an activation without one is not indexed by LM position.
- ``where``: which blocks or models have the hook point: every block (``block``),
  self-attention or cross-attention layers (``self`` / ``cross``), gated MLPs
  (``gated``), layers followed by an injection (``injection``), once per model
  (``model``), models with a vision or audio projector (``projector`` / ``audio``), blocks
  with a norm before attention (``ln1``: not EXAONE-4's post-norm block) or before the MLP (``ln2``: not a
  parallel block such as Cohere's, nor EXAONE-4's), dense MLPs (``dense``),
  mixture-of-experts MLPs (``moe``; ``expert``: once per expert ``e``, named
  ``mlp.experts.{e}.…``; ``shared``: MoE blocks with a shared expert; see
  :mod:`hooks_mm.model.moe` for the scheme and the ``routed`` axis). A hybrid stack's
  linear-attention / convolution layers (Qwen3.5, LFM2) have no ``self`` rows: there
  ``hook_attn_out`` is the mixer's output (see :mod:`hooks_mm.model.hybrid`).
- ``nnsight``: the module input / output that is the same activation, as adapter fields
  relative to the decoder layer (``()`` = the layer itself), or None where only a hooks_mm
  bridge inside a module's forward exposes it. ``"mask"`` is the ``attention_mask`` keyword of
  the attention module: only attention knockout is expressed there.

Example::

    from hooks_mm.hooks import lookup
    lookup("blocks.3.mlp.hook_post").pos_dim       # 1
    lookup("blocks.0.attn.hook_pattern").pos_dim   # 2 (the query axis)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HookSpec:
    name: str
    shape: str
    where: str = "block"
    nnsight: tuple[tuple[str, ...], str] | None = None

    @property
    def dims(self) -> list[str]:
        return self.shape.split()

    @property
    def pos_dim(self) -> int | None:
        """The position axis (``pos`` or the query axis ``q``), or None."""
        for axis in ("pos", "q"):
            if axis in self.dims:
                return self.dims.index(axis)
        return None

    def width(self, cfg: Any) -> int | None:
        """Size of the last axis on a model with config ``cfg`` (None where it varies)."""
        return getattr(cfg, self.dims[-1], None)


_ATTN = [
    ("hook_q", "batch pos head d_head"),
    ("hook_k", "batch pos kv_head d_head"),
    ("hook_v", "batch pos kv_head d_head"),
    ("hook_rot_q", "batch pos head d_head"),
    ("hook_rot_k", "batch pos kv_head d_head"),
    ("hook_attn_scores", "batch head q k"),
    ("hook_pattern", "batch head q k"),
    ("hook_z", "batch pos head d_head"),
]
# cross-attention keys and values are vision tiles, not LM positions
_CROSS_KV = {
    "hook_k": "batch kv kv_head d_head",
    "hook_v": "batch kv kv_head d_head",
    "hook_rot_k": "batch kv kv_head d_head",
    "hook_attn_scores": "batch head q kv",
    "hook_pattern": "batch head q kv",
}

BLOCK_HOOKS: tuple[HookSpec, ...] = (
    HookSpec("hook_resid_pre", "batch pos d_model", nnsight=((), "input")),
    HookSpec("ln1.hook_normalized", "batch pos d_model", "ln1"),
    *(
        HookSpec(f"attn.{n}", s, "self", nnsight=(("attn",), "mask") if n == "hook_attn_scores" else None)
        for n, s in _ATTN
    ),
    *(HookSpec(f"cross_attn.{n}", _CROSS_KV.get(n, s), "cross") for n, s in _ATTN),
    HookSpec("hook_attn_out", "batch pos d_model", nnsight=(("attn_out",), "output")),
    HookSpec("hook_resid_mid", "batch pos d_model"),
    HookSpec("ln2.hook_normalized", "batch pos d_model", "ln2"),
    HookSpec("mlp.hook_pre", "batch pos d_mlp", "dense"),
    HookSpec("mlp.hook_pre_linear", "batch pos d_mlp", "gated"),
    HookSpec("mlp.hook_post", "batch pos d_mlp", "dense", nnsight=(("mlp", "down"), "input")),
    # mixture-of-experts MLP (hooks_mm.model.moe): routing, then each expert's neurons on its routed tokens
    HookSpec("mlp.hook_router_logits", "batch pos n_experts", "moe"),
    HookSpec("mlp.hook_expert_weights", "batch pos n_experts", "moe"),
    HookSpec("mlp.hook_expert_indices", "batch pos top_k", "moe"),
    HookSpec("mlp.experts.{e}.hook_pre", "routed d_expert", "expert"),
    HookSpec("mlp.experts.{e}.hook_pre_linear", "routed d_expert", "expert"),
    HookSpec("mlp.experts.{e}.hook_post", "routed d_expert", "expert"),
    HookSpec("mlp.shared_expert.hook_pre", "batch pos d_shared", "shared"),
    HookSpec("mlp.shared_expert.hook_pre_linear", "batch pos d_shared", "shared"),
    HookSpec("mlp.shared_expert.hook_post", "batch pos d_shared", "shared"),
    HookSpec("hook_mlp_out", "batch pos d_model", nnsight=(("mlp_out",), "output")),
    HookSpec("hook_resid_post", "batch pos d_model", nnsight=((), "output")),
    HookSpec("hook_deepstack", "batch pos d_model", "injection"),
)

MODEL_HOOKS: tuple[HookSpec, ...] = (
    HookSpec("hook_embed", "batch pos d_model", "model"),
    HookSpec("ln_final.hook_normalized", "batch pos d_model", "model"),
    HookSpec("hook_vision_out", "features d_vision", "projector"),
    HookSpec("hook_projector_out", "features d_model", "projector"),
    HookSpec("hook_audio_out", "features d_audio", "audio"),
    HookSpec("hook_audio_projector_out", "features d_model", "audio"),
)

_BLOCK = {h.name: h for h in BLOCK_HOOKS}
_MODEL = {h.name: h for h in MODEL_HOOKS}
_NAME = re.compile(r"blocks\.(\d+)\.(.+)")
_EXPERT = re.compile(r"mlp\.experts\.\d+\.")


def split(name: str) -> tuple[int | None, str]:
    """``"blocks.3.mlp.hook_post"`` -> ``(3, "mlp.hook_post")``; top-level names -> ``(None, name)``."""
    m = _NAME.fullmatch(name)
    return (int(m.group(1)), m.group(2)) if m else (None, name)


def lookup(name: str) -> HookSpec:
    """The table row of a full hook name (``blocks.{l}.…`` or top-level)."""
    layer, suffix = split(name)
    spec = (_BLOCK if layer is not None else _MODEL).get(_EXPERT.sub("mlp.experts.{e}.", suffix, count=1))
    if spec is None:
        raise KeyError(f"{name!r} is not a hooks_mm hook name; see hooks_mm.hooks.BLOCK_HOOKS and MODEL_HOOKS.")
    return spec


def block_hooks(
    cross: bool,
    gated: bool,
    injection: bool,
    ln2: bool = True,
    experts: int = 0,
    shared: bool = False,
    attention: bool = True,
    ln1: bool = True,
) -> list[HookSpec]:
    """The rows one decoder block has (``experts`` > 0: a MoE MLP with that many experts, no dense MLP;
    ``attention=False``: a hybrid stack's non-attention mixer layer; ``ln1`` / ``ln2`` False: no norm
    before attention / the MLP, as in EXAONE-4's block)."""
    have = (
        {"block", "cross" if cross else "self" if attention else "block"}
        | ({"moe", "expert"} | ({"shared"} if shared else set()) if experts else {"dense"})
        | ({"gated"} if gated and not experts else set())
        | ({"injection"} if injection else set())
        | ({"ln2"} if ln2 else set())
        | ({"ln1"} if ln1 else set())
    )
    rows = [h for h in BLOCK_HOOKS if h.where in have]
    per_expert = [h for h in rows if h.where == "expert"]
    at = rows.index(per_expert[0]) if per_expert else len(rows)  # expert 0's rows, expert 1's, ... in place
    each = [HookSpec(h.name.format(e=e), h.shape, h.where) for e in range(experts) for h in per_expert]
    return rows[:at] + each + [h for h in rows[at:] if h.where != "expert"]
