"""The hooked passes of :func:`hooks_mm.circuits.eap_graph`: a corrupted forward (no grad) and ``m`` clean /
interpolated forwards with gradients at every node's input, activations read at the hook points.

Gradients come from ``torch.autograd.grad`` on the hooked activations (nothing accumulates in parameters'
``.grad``); the embedding is replaced at ``blocks.0.hook_resid_pre`` by a tensor that requires grad, so a model
with frozen parameters works as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

from hooks_mm.model.branches import has_heads, head_parts
from hooks_mm.progress import progress_bar

if TYPE_CHECKING:
    from hooks_mm.model import Batch, HookedMLLM


@dataclass
class Passes:
    """What the passes read: differences of activations (corrupted - clean) and gradients (averaged over steps)."""

    ediff: Tensor
    g_pre0: Tensor
    g_pre: list[Tensor] = field(default_factory=list)
    g_mid: list[Tensor] = field(default_factory=list)
    g_post: list[Tensor] = field(default_factory=list)
    g_heads: dict[int, Tensor] = field(default_factory=dict)
    head_diff: dict[int, Tensor] = field(default_factory=dict)
    attn_diff: dict[int, Tensor] = field(default_factory=dict)
    mlp_diff: list[Tensor] = field(default_factory=list)
    metric_clean: float = float("nan")
    metric_corrupted: float = float("nan")


def _sources(model: HookedMLLM, store: dict[str, Tensor]) -> tuple[dict[int, Tensor], dict[int, Tensor], list[Tensor]]:
    """Per layer, the heads' outputs [b p h d] (or the whole attention output) and the MLP output."""
    heads, attn, mlp = {}, {}, []
    for l in range(model.cfg.n_layers):
        if has_heads(model, l):
            heads[l] = head_parts(model, l, store[f"blocks.{l}.attn.hook_z"], out=store[f"blocks.{l}.hook_attn_out"])[0]
        else:
            attn[l] = store[f"blocks.{l}.hook_attn_out"]
        mlp.append(store[f"blocks.{l}.hook_mlp_out"])
    return heads, attn, mlp


def _names(model: HookedMLLM) -> list[str]:
    out = []
    for l in range(model.cfg.n_layers):
        out += [f"blocks.{l}.hook_attn_out", f"blocks.{l}.hook_mlp_out"]
        out += [f"blocks.{l}.attn.hook_z"] if has_heads(model, l) else []
    return out


def ablate_inputs(kind: str, masks: Sequence[Tensor] | Tensor) -> Callable[..., Tensor]:
    """A hook ``(x, hook=None) -> x`` on the embeddings (``blocks.0.hook_resid_pre``) replacing, for each mask
    [batch, pos] (a list, or a stacked [node, batch, pos] tensor), its positions by zeros (``"zero"``) or by their
    mean over the mask (``"mean"``): the ``"zero"`` / ``"mean"`` corruption of :func:`hooks_mm.circuits.eap_graph`
    and of exact edge patching.

    Example::

        model.run_with_hooks(clean, fwd_hooks=[("blocks.0.hook_resid_pre", ablate_inputs("mean", [image_mask]))])
    """
    if kind not in ("zero", "mean"):
        raise ValueError(f"ablation {kind!r}: give 'zero' or 'mean'.")

    def fn(x: Tensor, hook: Any = None) -> Tensor:
        out = x.clone()
        for m in masks:
            m = m.to(x.device)
            fill = torch.zeros_like(x[0, 0]) if kind == "zero" else x[m].mean(0)
            out[m] = fill.to(x.dtype)
        return out

    return fn


def run_passes(
    model: HookedMLLM,
    batch: Batch,
    corr: Batch | str,
    masks: Tensor,
    metric: Any,
    m: int,
    scalar: Callable,
    progress: bool | None = None,
) -> Passes:
    """The corrupted pass, then ``m`` gradient passes along the path from clean to corrupted embeddings
    (``progress``: a bar over the gradient passes)."""
    L = model.cfg.n_layers
    names = _names(model)
    store: dict[str, Tensor] = {}
    save = lambda x, hook: store.__setitem__(hook.name, x.detach())  # noqa: E731
    pre0 = "blocks.0.hook_resid_pre"
    ablate = ablate_inputs(corr, masks) if isinstance(corr, str) else None

    def corrupt(x: Tensor, hook: Any) -> Tensor:
        x = ablate(x) if ablate is not None else x
        store[pre0] = x.detach()
        return x

    with torch.no_grad(), model.hooks(fwd_hooks=[(pre0, corrupt)] + [(n, save) for n in names]):
        logits = model(batch if isinstance(corr, str) else corr)
    e_corr = store[pre0]
    heads_c, attn_c, mlp_c = _sources(model, store)
    value_corr = metric(logits)
    grads: dict[str, Tensor] = {}
    clean_store: dict[str, Tensor] = {}
    value_clean = float("nan")
    for k in progress_bar(range(m), desc="eap_graph", unit="pass", progress=progress):
        alpha = k / m
        store = {}
        live: dict[str, Tensor] = {}

        def start(x: Tensor, hook: Any, alpha: float = alpha) -> Tensor:
            store[pre0] = x.detach()
            x = (x + alpha * (e_corr - x)).detach().requires_grad_(True)
            live[hook.name] = x
            return x

        keep = lambda x, hook: live.__setitem__(hook.name, x)  # noqa: E731
        resid = [f"blocks.{l}.hook_resid_{w}" for l in range(L) for w in ("pre", "mid", "post")][1:]
        zs = [f"blocks.{l}.attn.hook_z" for l in range(L) if has_heads(model, l)]
        outs = [f"blocks.{l}.hook_{w}_out" for l in range(L) for w in ("attn", "mlp")]
        fwd = [(pre0, start)] + [(n, keep) for n in resid + zs + outs] + [(n, save) for n in names]
        with torch.enable_grad(), model.hooks(fwd_hooks=fwd):
            value = scalar(metric(model(batch)), metric)
        order = [pre0] + resid + zs
        got = torch.autograd.grad(value, [live[n] for n in order], retain_graph=True, allow_unused=True)
        got = {n: (torch.zeros_like(live[n]) if g is None else g) for n, g in zip(order, got)}
        for z in zs:  # each head's own input gradient: dM/dz_h back to resid_pre through the attention branch
            l = int(z.split(".")[1])
            pre = live[f"blocks.{l}.hook_resid_pre"]
            per = []
            for h in range(live[z].shape[-2]):
                gz = torch.zeros_like(got[z])
                gz[..., h, :] = got[z][..., h, :]
                (gh,) = torch.autograd.grad(live[z], pre, gz, retain_graph=True, allow_unused=True)
                per.append(torch.zeros_like(pre) if gh is None else gh)
            got[f"heads{l}"] = torch.stack(per)
        for l in range(L):  # each branch's input gradient by its own VJP, to check the differences of residuals
            mid, post = f"blocks.{l}.hook_resid_mid", f"blocks.{l}.hook_resid_post"
            got[f"mlp_vjp{l}"] = _vjp(live[f"blocks.{l}.hook_mlp_out"], live[mid], got[post])
            if f"heads{l}" not in got:
                pre = pre0 if l == 0 else f"blocks.{l}.hook_resid_pre"
                got[f"attn_vjp{l}"] = _vjp(live[f"blocks.{l}.hook_attn_out"], live[pre], got[mid])
        for n, g in got.items():  # float32 sums: half-precision gradients would lose the small edges
            grads[n] = grads.get(n, 0) + g.detach().float() / m
        if k == 0:
            clean_store, value_clean = store, float(value.detach())
        live.clear()
    heads_0, attn_0, mlp_0 = _sources(model, clean_store)
    run = Passes(
        ediff=(e_corr - clean_store[pre0]).float(),
        g_pre0=grads[pre0],
        metric_clean=value_clean,
        metric_corrupted=float(torch.as_tensor(value_corr).detach().float().mean()),
    )
    for l in range(L):
        run.g_pre.append(grads[pre0] if l == 0 else grads[f"blocks.{l}.hook_resid_pre"])
        run.g_mid.append(grads[f"blocks.{l}.hook_resid_mid"])
        run.g_post.append(grads[f"blocks.{l}.hook_resid_post"])
        if l in heads_c:
            run.g_heads[l] = grads[f"heads{l}"]
            run.head_diff[l] = (heads_c[l] - heads_0[l]).float()
            check_split(model, l, run.g_heads[l].sum(0), run.g_pre[l] - run.g_mid[l], "heads'")
        else:
            run.attn_diff[l] = (attn_c[l] - attn_0[l]).float()
            check_split(model, l, grads[f"attn_vjp{l}"], run.g_pre[l] - run.g_mid[l], "attention branch's")
        check_split(model, l, grads[f"mlp_vjp{l}"], run.g_mid[l] - run.g_post[l], "MLP branch's")
        run.mlp_diff.append((mlp_c[l] - mlp_0[l]).float())
    return run


def _vjp(out: Tensor, inp: Tensor, grad: Tensor) -> Tensor:
    """``grad`` at a branch's output carried back to its input through that branch alone (zeros: not connected)."""
    (g,) = torch.autograd.grad(out, inp, grad, retain_graph=True, allow_unused=True)
    return torch.zeros_like(inp) if g is None else g


def check_split(model: HookedMLLM, layer: int, vjp: Tensor, diff: Tensor, what: str) -> None:
    """A branch's input gradient by its own VJP (``what``) must equal the difference of the residual gradients
    around it (``dM/d pre - dM/d mid``, ``dM/d mid - dM/d post``): the bookkeeping every edge score relies on."""
    tol = 1e-3 * max(float(diff.abs().max()), float(vjp.abs().max()), 1e-6)  # float32 sums (gradients upcast)
    gap = float((vjp - diff).abs().max())
    if gap > tol:
        raise RuntimeError(
            f"eap_graph: at layer {layer} the {what} input gradient differs from the residual stream's (max gap "
            f"{gap:.3g}): this {model.cfg.architecture} block does not read and write the residual stream as "
            "hooks_mm's hook points say, so its edge scores would be wrong; not supported (please report it)."
        )
