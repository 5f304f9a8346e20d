"""Attribution patching: every neuron's (or position's) ablation effect from one forward and
one backward pass, ``effect ~ grad_metric(act) . (replacement - act)``, with an option to
check the top candidates exactly through :func:`hooks_mm.sweep.sweep`.

Example::

    att = attribution_patching(model, inputs, answer_logprob(model, inputs), layers=[0, 1],
                               positions=Image(), verify_top_k=10)
    att.table.head()        # layer, neuron, estimate, exact (for the top 10)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from hooks_mm.interventions import Context, NeuronAblation, NeuronMeans
from hooks_mm.interventions.ops import apply
from hooks_mm.selectors import NonPad, Selector
from hooks_mm.sweep.core import check_value
from hooks_mm.sweep.engine import sweep
from hooks_mm.sweep.metrics import check_metric_batch

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM


@dataclass
class Attribution:
    """``neurons`` [layer, d_mlp] and ``positions`` [layer, batch, seq] estimates; ``table``
    ranks neurons by |estimate| (with the exact effect of the verified top k)."""

    neurons: Float[Tensor, "layer d_mlp"]
    positions: Float[Tensor, "layer batch seq"]
    layers: list[int]
    table: pd.DataFrame

    def __repr__(self) -> str:  # issue 20: short text; Jupyter shows the top neurons and a plot
        from hooks_mm.vis.display import attribution_repr

        return attribution_repr(self)

    def _repr_html_(self) -> str:
        from hooks_mm.vis.display import attribution_html

        return attribution_html(self)


def attribution_patching(
    model: HookedMLLM,
    inputs: Any,
    metric: Callable[[Tensor], Tensor],
    *,
    layers: Sequence[int] | None = None,
    positions: Selector | None = None,
    mode: str = "zero",
    value: float = 0.0,
    means: NeuronMeans | None = None,
    sources: dict[str, Any] | None = None,
    verify_top_k: int = 0,
) -> Attribution:
    """First-order ablation effects of every neuron at ``positions`` in ``layers``.

    ``mode`` / ``value`` / ``means`` / ``sources``: as in :class:`NeuronAblation` (the
    replacement is that spec's own op). The per-position estimate is the effect of ablating
    all neurons of a layer at one position. ``layers`` default: every layer with a dense MLP
    (mixture-of-experts layers, ``model.cfg.moe_layers``, have per-expert neurons only and are
    refused when named).
    """
    batch = model.prepare(inputs)
    check_metric_batch(metric, batch)
    if layers is None:
        layers = [l for l in range(model.cfg.n_layers) if l not in model.cfg.moe_layers]
        if not layers:
            raise ValueError(
                f"attribution_patching: every layer of this {model.cfg.architecture} is a mixture of experts, with "
                "no dense MLP neurons to attribute; patch its residual stream instead (e.g. Patch / sweep over "
                "hook_resid_post specs)."
            )
    layers = list(layers)
    positions = positions or NonPad()
    ctx = Context(model, batch, sources)
    specs = [NeuronAblation(l, None, positions, mode, value, means) for l in layers]
    edits = [spec.edits(ctx)[0] for spec in specs]  # checks every layer, mode and position before running
    store = ctx.read_sources({})
    acts: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}
    names = [e.hook for e in edits]
    fwd = [(n, lambda x, hook: acts.__setitem__(hook.name, x.detach())) for n in names]
    bwd = [(n, lambda g, hook: grads.__setitem__(hook.name, g.detach())) for n in names]
    with torch.enable_grad(), model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
        out = metric(model(batch))
        value_ = out if torch.is_tensor(out) else check_value(out, metric, None)  # None, a str ...: a clear error
        if value_.dim() != 0:
            raise ValueError(
                f"attribution_patching needs a scalar metric, got shape {tuple(value_.shape)}: reduce it "
                "(e.g. .mean()) or pick one entry."
            )
        if not value_.requires_grad:
            raise ValueError(
                "attribution_patching: the metric's value does not depend on the logits through autograd (it is "
                "constant, a Python number, or detached): compute it from the logits with torch operations."
            )
        value_.backward()
    model.hf_model.zero_grad(set_to_none=True)
    per_neuron, per_pos = [], []
    for e in edits:
        act = acts[e.hook]
        grad = grads.get(e.hook, torch.zeros_like(act))  # no gradient reached this layer: the metric ignores it
        contrib = grad * (apply(act, e.op, store) - act)  # zero outside the positions
        per_neuron.append(contrib.sum((0, 1)))
        per_pos.append(contrib.sum(-1))
    neurons, pos = torch.stack(per_neuron), torch.stack(per_pos)
    d = neurons.shape[1]
    flat = neurons.flatten()
    order = flat.abs().argsort(descending=True)
    table = pd.DataFrame(
        {
            "layer": [layers[int(i) // d] for i in order],
            "neuron": [int(i) % d for i in order],
            "estimate": flat[order].tolist(),
        }
    )
    if verify_top_k:
        top = table.head(verify_top_k)
        configs = [
            NeuronAblation(int(l), [int(j)], positions, mode, value, means) for l, j in zip(top.layer, top.neuron)
        ]
        exact = sweep(model, batch, configs, metric, progress=False, sources=sources)
        table["exact"] = float("nan")
        table.loc[: verify_top_k - 1, "exact"] = exact.table["delta"].to_numpy()
    return Attribution(neurons, pos, layers, table)
