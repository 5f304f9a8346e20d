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

from hooks_mm.interventions import NeuronAblation, NeuronMeans
from hooks_mm.layout import NonPad, Selector

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


def attribution_patching(
    model: "HookedMLLM",
    inputs: Any,
    metric: Callable[[Tensor], Tensor],
    *,
    layers: Sequence[int] | None = None,
    positions: Selector | None = None,
    mode: str = "zero",
    means: NeuronMeans | None = None,
    verify_top_k: int = 0,
) -> Attribution:
    """First-order ablation effects of every neuron at ``positions`` in ``layers``.

    ``mode``: "zero" or "mean" (with ``means``), as in :class:`NeuronAblation`. The
    per-position estimate is the effect of ablating all neurons of a layer at one position.
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"attribution_patching supports mode 'zero' or 'mean', not {mode!r}.")
    if mode == "mean" and means is None:
        raise ValueError("mode='mean' needs means=NeuronMeans.fit(model, batches, layers).")
    inputs = model._as_inputs(inputs)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    positions = positions or NonPad()
    layout = model._layout(inputs)
    mask = layout.select(positions)
    if not bool(mask.any()):
        raise ValueError(f"attribution_patching: positions {positions!r} select nothing in this batch.")
    acts: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}
    names = [f"blocks.{l}.mlp.hook_post" for l in layers]
    fwd = [(n, lambda x, hook: acts.__setitem__(hook.name, x.detach())) for n in names]
    bwd = [(n, lambda g, hook: grads.__setitem__(hook.name, g.detach())) for n in names]
    with torch.enable_grad(), model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
        value = torch.as_tensor(metric(model(inputs)))
        if value.dim() != 0:
            raise ValueError(f"attribution_patching needs a scalar metric, got shape {tuple(value.shape)}.")
        value.backward()
    model.hf_model.zero_grad(set_to_none=True)
    per_neuron, per_pos = [], []
    for l, n in zip(layers, names):
        act = acts[n]
        new = torch.zeros_like(act) if mode == "zero" else means.for_positions(l, layout.modality).to(act)  # type: ignore[union-attr]
        contrib = grads[n] * (new - act) * mask[..., None]
        per_neuron.append(contrib.sum((0, 1)))
        per_pos.append(contrib.sum(-1))
    neurons, pos = torch.stack(per_neuron), torch.stack(per_pos)
    d = neurons.shape[1]
    flat = neurons.flatten()
    order = flat.abs().argsort(descending=True)
    table = pd.DataFrame(
        {"layer": [layers[int(i) // d] for i in order], "neuron": [int(i) % d for i in order], "estimate": flat[order].tolist()}
    )
    if verify_top_k:
        from hooks_mm.sweep.engine import sweep

        top = table.head(verify_top_k)
        configs = [NeuronAblation(int(l), [int(j)], positions, mode, means=means) for l, j in zip(top.layer, top.neuron)]
        exact = sweep(model, inputs, configs, metric, progress=False)
        table["exact"] = float("nan")
        table.loc[: verify_top_k - 1, "exact"] = exact.table["delta"].to_numpy()
    return Attribution(neurons, pos, layers, table)
