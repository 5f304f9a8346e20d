"""Hook points of a mixture-of-experts MLP (Qwen3-MoE, Mixtral, Qwen2-MoE), in TransformerLens's names.

In a MoE layer ``blocks.{l}.mlp`` holds no dense ``hook_pre`` / ``hook_post``; instead:

- ``mlp.hook_router_logits`` [batch, pos, n_experts]: the router's linear output.
- ``mlp.hook_expert_weights`` [batch, pos, n_experts]: ``softmax(router_logits)`` in float32 over
  every expert, before the top-k (as TransformerLens's ``hook_expert_weights``); for a sigmoid router
  (GLM-4.5, ``Moe.score == "sigmoid"``) the per-expert scores ``sigmoid(router_logits)``, before the
  choice bias, group limit and scaling (see :class:`~hooks_mm.adapters.backbones.Moe`).
- ``mlp.hook_expert_indices`` [batch, pos, top_k]: the experts each token is sent to (int64).
- ``mlp.experts.{e}.hook_pre`` / ``hook_pre_linear`` / ``hook_post`` [n_routed, d_expert]: expert
  ``e``'s gate and up projections and its neurons ``act(gate) * up`` (the input of its down
  projection), on the tokens routed to ``e`` only, one row per token in (batch, pos) order:
  ``(indices == e).any(-1).nonzero()`` (:func:`routed`) gives each row's (batch, pos). Every
  expert's hooks fire, with 0 rows where no token chose it.
- ``mlp.shared_expert.hook_pre`` / ``hook_pre_linear`` / ``hook_post`` [batch, pos, d_shared]
  (Qwen2-MoE, Qwen3.5-MoE, GLM-4.5's ``shared_experts``): the always-on shared expert's neurons,
  before its ``sigmoid(shared_expert_gate)`` where it has one.
- ``hook_mlp_out``: what the MoE block adds to the residual (routed experts, weighted, plus the gated
  shared expert), as for a dense MLP.

Edits take effect: an edited ``hook_router_logits`` or ``hook_expert_weights`` is routed again (the
edited scores chosen, renormalised, scaled and cast as the model's router does: :func:`route`); edited
``hook_expert_indices`` (same shape, ints in [0, n_experts), distinct per token) send the tokens to
those experts with the weights of the slots they replace; an edit of an expert's neurons goes through
its down projection.

The no-hook forward is HF's. While one of these hooks is live the block runs :func:`hooked_forward`
(routing by the model's own router; experts computed per expert, as HF's eager experts do, so the
result equals HF's to float rounding whatever ``experts_implementation`` the model uses).

Example::

    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.startswith("blocks.1.mlp."))
    rows = routed(cache["blocks.1.mlp.hook_expert_indices"], 3)     # [n_routed, 2]: (batch, pos)
    cache["blocks.1.mlp.experts.3.hook_post"].shape                  # [len(rows), d_expert]
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from hooks_mm.hooks import lookup
from hooks_mm.selectors import as_selector

DENSE = re.compile(r"blocks\.(\d+)\.mlp\.hook_(pre|pre_linear|post)")


def routed(indices: Tensor, expert: int) -> Tensor:
    """(batch, pos) of each row of ``mlp.experts.{expert}.*`` hooks, from ``mlp.hook_expert_indices``."""
    return (indices == expert).any(-1).nonzero()


def check_dense(name: str, moe_layers: list[int]) -> None:
    """Raise a KeyError saying why when ``name`` is a dense-MLP hook of a MoE layer (which has none)."""
    m = DENSE.fullmatch(name)
    if m is None or int(m.group(1)) not in moe_layers:
        return
    l, what = m.groups()
    raise KeyError(
        f"layer {l} is a mixture-of-experts block: it has no dense MLP neurons ({name!r}). Its neurons are per "
        f"expert, on the tokens routed to it: 'blocks.{l}.mlp.experts.{{e}}.hook_{what}'; routing is "
        f"'blocks.{l}.mlp.hook_router_logits' / 'hook_expert_indices' (see hooks_mm.model.moe). Neuron ablations, "
        "sweeps and attribution over dense neurons apply to the dense layers only."
    )


def cache_positions(layout: Any, pos: Any, names: list[str]) -> Tensor | None:
    """``run_with_cache``'s kept positions [batch, n_max] for ``pos`` (None: all; -1 in the padded slots of rows
    that select fewer positions, see ``ModalityLayout.padded_indices``), refusing hooks whose rows
    are routed tokens (``mlp.experts.{e}.*``): their rows are not positions, and ``hook_expert_indices``
    sliced by ``pos`` would no longer say which (batch, pos) each row is."""
    if pos is None:
        return None
    routed_hooks = [n for n in names if "routed" in lookup(n).dims]
    if routed_hooks:
        raise ValueError(
            f"run_with_cache(pos=...) keeps positions, but {routed_hooks[0]} (and {len(routed_hooks) - 1} more) hold "
            "one row per token routed to the expert, not positions: cache them without pos= (names_filter= "
            "without the mlp.experts.* hooks for pos=), and map rows with hooks_mm.model.moe.routed."
        )
    return layout.padded_indices(as_selector(pos))[0]


def scores(row: Any, logits: Tensor) -> Tensor:
    """The router's scores of ``logits`` in float32: ``hook_expert_weights`` (softmax, or sigmoid per expert)."""
    return torch.sigmoid(logits.float()) if row.score == "sigmoid" else F.softmax(logits, dim=-1, dtype=torch.float)


def route(router: nn.Module, row: Any, probs: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(weights, indices) [tokens, top_k] from the scores ``probs`` (:func:`scores`), as the model's router
    computes them: softmax rows take the top-k scores; sigmoid rows choose by the scores plus the router's
    bias within its best groups and weigh by the unbiased scores (see ``Moe``)."""
    if row.score == "softmax" and not (row.bias or row.groups):
        top, idx = torch.topk(probs, router.top_k, dim=-1)
    else:
        choice = probs + getattr(router, row.bias) if row.bias else probs
        if row.groups:
            n, keep = (getattr(router, a) for a in row.groups)
            grouped = choice.view(-1, n, choice.shape[-1] // n)
            best = torch.topk(grouped.topk(2, dim=-1)[0].sum(dim=-1), k=keep, dim=-1, sorted=False)[1]
            kept = torch.zeros_like(grouped[..., 0]).scatter_(1, best, 1).bool()
            choice = choice.masked_fill(~kept.unsqueeze(-1).expand_as(grouped).reshape(choice.shape), float("-inf"))
        idx = torch.topk(choice, k=router.top_k, dim=-1, sorted=False)[1]
        top = probs.gather(1, idx)
    if row.renorm is True or (isinstance(row.renorm, str) and getattr(router, row.renorm)):
        top = top / (top.sum(dim=-1, keepdim=True) + row.eps) if row.eps else top / top.sum(dim=-1, keepdim=True)
    if row.scale:
        top = top * getattr(router, row.scale)
    return (top.to(dtype) if row.cast else top), idx


def _edit(hp: HookPoint, value: Tensor) -> Tensor | None:
    before = value.clone()
    out = hp(value)
    return None if (out is value and torch.equal(value, before)) else out


def _check_indices(new: Tensor, old: Tensor, n_experts: int, name: str) -> Tensor:
    bad = None
    if new.shape != old.shape or new.dtype.is_floating_point or new.dtype == torch.bool:
        bad = f"shape {tuple(new.shape)} dtype {new.dtype}"
    elif new.numel() and (new.min() < 0 or new.max() >= n_experts):
        bad = f"values outside [0, {n_experts})"
    elif new.shape[-1] > 1 and (new.sort(-1).values.diff(dim=-1) == 0).any():
        bad = "an expert chosen twice for one token"
    if bad:
        raise ValueError(
            f"{name}: the edit returned {bad}; return integer expert indices of shape {tuple(old.shape)} in "
            f"[0, {n_experts}), distinct per token (edit hook_router_logits to change the routing softly)."
        )
    return new


def hooked_forward(block: nn.Module, row: Any, hooks: dict[str, HookPoint], prefix: str) -> Callable:
    """The MoE block's forward with its live hook points ``hooks`` (full name -> HookPoint) run in place.

    ``prefix``: ``"blocks.{l}.mlp."``. Used only while one of them is live (see the module docstring).
    """
    router, experts = block.get_submodule(row.router), block.get_submodule(row.experts)
    shared = block.get_submodule(row.shared) if row.shared else None
    shared_gate = block.get_submodule(row.shared_gate) if row.shared_gate else None
    n_experts = experts.gate_up_proj.shape[0]
    live = lambda key: hooks.get(prefix + key)  # noqa: E731
    own = any(k.startswith(prefix + "experts.") for k in hooks)

    def forward(hidden_states: Tensor) -> Tensor:
        if block.training and getattr(block, "jitter_noise", 0):
            raise NotImplementedError(
                f"{type(block).__name__} in training mode multiplies its input by random jitter: MoE hooks would "
                "not see what the block computes; call model.eval() first."
            )
        b, s, d = hidden_states.shape
        flat = hidden_states.reshape(-1, d)
        logits, weights, idx = router(flat)
        reroute = False
        if (hp := live("hook_router_logits")) is not None:
            new = _edit(hp, logits.view(b, s, -1))
            if new is not None:
                logits, reroute = new.reshape(b * s, -1), True
        if (hp := live("hook_expert_weights")) is not None or reroute:
            probs = scores(row, logits)
            if hp is not None:
                new = _edit(hp, probs.view(b, s, -1))
                if new is not None:
                    probs, reroute = new.reshape(b * s, -1), True
            if reroute:
                weights, idx = route(router, row, probs, logits.dtype)
        if (hp := live("hook_expert_indices")) is not None:
            new = _edit(hp, idx.view(b, s, -1))
            if new is not None:
                idx = _check_indices(new, idx.view(b, s, -1), n_experts, prefix + "hook_expert_indices")
                idx = idx.reshape(b * s, -1)
        out = (
            _experts(experts, flat, idx, weights, hooks, prefix, getattr(experts, "is_transposed", False))
            if own
            else experts(flat, idx, weights)
        )
        if shared is not None:
            x = shared(hidden_states)  # per position: its hook points see [batch, pos, d_shared]
            gated = x if shared_gate is None else torch.sigmoid(shared_gate(hidden_states)) * x  # Aria: ungated
            out = out + gated.reshape(b * s, d)
        return out.reshape(b, s, d)

    return forward


def _experts(
    experts: nn.Module,
    flat: Tensor,
    idx: Tensor,
    weights: Tensor,
    hooks: dict[str, HookPoint],
    prefix: str,
    transposed: bool = False,
    scale_input: bool = False,
) -> Tensor:
    """HF's eager experts loop, with each expert's hook points on its routed tokens (in token order). A token's
    weight scales the expert's output, or its input (``scale_input``: Llama 4); ``transposed``: weights stored
    ``[n_experts, d_in, d_out]`` (Aria, Llama 4)."""
    out = torch.zeros_like(flat)
    for e in range(experts.gate_up_proj.shape[0]):
        chosen = idx == e
        tok = chosen.any(-1).nonzero().squeeze(-1)
        p = f"{prefix}experts.{e}."
        names = [p + "hook_pre", p + "hook_pre_linear", p + "hook_post"]
        if tok.numel() == 0 and not any(n in hooks for n in names):
            continue
        w = (weights * chosen).sum(-1)[tok, None]
        x = flat[tok] * w if scale_input else flat[tok]
        gate_up = experts.gate_up_proj[e]
        gate, up = (x @ gate_up if transposed else F.linear(x, gate_up)).chunk(2, -1)
        gate = hooks[names[0]](gate) if names[0] in hooks else gate
        up = hooks[names[1]](up) if names[1] in hooks else up
        h = experts.act_fn(gate) * up
        h = hooks[names[2]](h) if names[2] in hooks else h
        down = h @ experts.down_proj[e] if transposed else F.linear(h, experts.down_proj[e])
        out.index_add_(0, tok, (down if scale_input else down * w).to(out.dtype))
    return out


class _Patched:
    """The block's forward replaced by an instance attribute; ``remove()`` restores the class's (HF's)."""

    def __init__(self, module: nn.Module, forward: Callable):
        module.forward = forward
        self.module = module

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


def attach(block: nn.Module, row: Any, hooks: dict[str, HookPoint], prefix: str) -> list[Any]:
    """Run the live MoE hook points ``hooks`` of one block; the handles to remove afterwards."""
    make = sigmoid_input_forward if row.score == "sigmoid_input" else hooked_forward
    handles: list[Any] = [_Patched(block, make(block, row, hooks, prefix))]
    if row.shared:
        shared = block.get_submodule(row.shared)
        p = prefix + "shared_expert."
        for key, path in (("hook_pre", "gate_proj"), ("hook_pre_linear", "up_proj")):
            if p + key in hooks:
                hp = hooks[p + key]
                handles.append(shared.get_submodule(path).register_forward_hook(lambda m, i, o, hp=hp: hp(o)))
        if p + "hook_post" in hooks:
            hp = hooks[p + "hook_post"]
            handles.append(shared.down_proj.register_forward_pre_hook(lambda m, args: (hp(args[0]), *args[1:])))
    return handles


def moe_sizes(adapter: Any, layer: nn.Module) -> tuple[int, int, int, int | None]:
    """(n_experts, top_k, d_expert, d_shared) of a MoE layer."""
    block = layer.get_submodule(adapter.mlp)
    experts, row = block.get_submodule(adapter.moe.experts), adapter.moe
    shared = block.get_submodule(row.shared).down_proj.in_features if row.shared else None
    d_expert = experts.down_proj.shape[1 if getattr(row, "transposed", False) else -1]
    return experts.gate_up_proj.shape[0], block.get_submodule(row.router).top_k, d_expert, shared


def moe_cfg(moe: dict[int, tuple], dense_width: int | None, n_self: int) -> dict[str, Any]:
    """``cfg`` fields: ``d_mlp`` (``dense_width``, the dense MLP width; None when all ``n_self`` blocks are
    MoE), ``moe_layers`` and the sizes of their blocks (None without MoE layers)."""
    sizes = next(iter(moe.values()), (None,) * 4)
    d_mlp = dense_width if len(moe) < n_self else None
    names = ("n_experts", "top_k", "d_expert", "d_shared")
    return {"d_mlp": d_mlp, "moe_layers": sorted(moe), **dict(zip(names, sizes))}


# ---------------------------------------------------------------------------------------
# Llama 4 (Moe(score="sigmoid_input", transposed=True)): the router's top-k logits through a sigmoid scale
# each chosen expert's INPUT; experts' weights are [n_experts, d_in, d_out]; an ungated shared expert is added;
# the block returns (flat output [tokens, d_model], router logits). hook_expert_weights is sigmoid(logits) in
# float32 over every expert; an edited hook_router_logits is routed again by the top-k of the logits, an edited
# hook_expert_weights by its own top-k (those values then scale the inputs).


def sigmoid_input_forward(block: nn.Module, row: Any, hooks: dict[str, HookPoint], prefix: str) -> Callable:
    """Llama 4's ``Llama4TextMoe.forward`` with the live hook points ``hooks`` run in place."""
    router, experts, shared = block.router, block.get_submodule(row.experts), block.get_submodule(row.shared)
    n_experts, k = experts.gate_up_proj.shape[0], router.top_k
    live = lambda key: hooks.get(prefix + key)  # noqa: E731
    own = any(h.startswith(prefix + "experts.") for h in hooks)

    def forward(hidden_states: Tensor) -> tuple[Tensor, Tensor]:
        b, s, d = hidden_states.shape
        flat = hidden_states.reshape(-1, d)
        logits = F.linear(flat, router.weight)
        if (hp := live("hook_router_logits")) is not None:
            new = _edit(hp, logits.view(b, s, -1))
            logits = logits if new is None else new.reshape(b * s, -1)
        top, idx = torch.topk(logits, k, dim=1)
        weights = torch.sigmoid(top.float()).to(logits.dtype)  # as Llama4Router: sigmoid of the top-k logits
        if (hp := live("hook_expert_weights")) is not None:
            new = _edit(hp, torch.sigmoid(logits.float()).view(b, s, -1))
            if new is not None:
                top, idx = torch.topk(new.reshape(b * s, -1), k, dim=-1)
                weights = top.to(logits.dtype)
        if (hp := live("hook_expert_indices")) is not None:
            new = _edit(hp, idx.view(b, s, -1))
            if new is not None:
                idx = _check_indices(new, idx.view(b, s, -1), n_experts, prefix + "hook_expert_indices").reshape(
                    b * s, -1
                )
        if own:
            routed = _experts(experts, flat, idx, weights, hooks, prefix, transposed=True, scale_input=True)
        else:  # HF's computation: every expert on every token, its input scaled by its score (0 off the top-k)
            scores = torch.zeros_like(logits).scatter_(1, idx, weights)
            routed_in = flat.repeat(n_experts, 1) * scores.transpose(0, 1).reshape(-1, 1)
            routed = experts(routed_in).reshape(n_experts, -1, d).sum(dim=0)
        out = shared(hidden_states).reshape(b * s, d)  # per position: its hook points see [batch, pos, d_shared]
        return out.add_(routed), logits

    return forward
