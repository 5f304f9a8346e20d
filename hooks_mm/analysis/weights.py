"""Activated-weight overlap (implicit alignment paper; methods.md section 2): Wanda scores
``|W_ij| * ||X_j||_2`` with X the linear's inputs over calibration tokens of one modality,
the top ``1 - sparsity`` of each output row kept, and the IoU of image- vs text-calibrated
masks per layer and linear.

In a mixture-of-experts block (``model.cfg.moe_layers``) the MLP linears are the router
(``router``, its [n_experts, d_model] weight on every token); the experts' 3-D weights (each
expert sees only its routed tokens) are not scored.

Example::

    iou = wanda_overlap(model, batches, sparsity=0.5)      # DataFrame: layer, linear, iou
    iou.groupby("linear").iou.mean()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from hooks_mm.progress import check_progress, progress_bar
from hooks_mm.selectors import Image, Selector, Text

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM


def wanda_mask(
    weight: Float[Tensor, "out inp"], input_norm: Float[Tensor, " inp"], sparsity: float
) -> Bool[Tensor, "out inp"]:
    """Keep the top ``1 - sparsity`` of each output row by ``|W_ij| * ||X_j||``."""
    score = weight.abs() * input_norm[None, :]
    keep = max(1, round(weight.shape[1] * (1 - sparsity)))
    mask = torch.zeros_like(weight, dtype=torch.bool)
    mask.scatter_(1, score.topk(keep, dim=1).indices, True)
    return mask


def _linears(model: "HookedMLLM") -> dict[str, nn.Module]:
    a, out = model.adapter, {}
    for l, layer in enumerate(model.decoder_layers):
        attn = model.attention(l)
        mlp = layer.get_submodule(a.mlp)
        # every linear the backbone row names (Phi-3: the fused qkv / gate_up, one linear each)
        # (a hybrid stack's linear-attention / conv layers have no q / k / v / o: their MLP linears only)
        fields = () if l in model.cfg.mixer_layers else ("q", "k", "v", "qkv", "o")
        parts = {f: (attn, getattr(a, f)) for f in fields if getattr(a, f)}
        if l in model.cfg.moe_layers:  # the router; the experts' 3-D weights are not linears
            parts["router"] = (mlp, a.moe.router)
        else:
            parts |= {f: (mlp, getattr(a, f)) for f in ("gate", "up", "gate_up", "down") if getattr(a, f)}
        for name, (root, path) in parts.items():
            out[f"{l}.{name}"] = root.get_submodule(path)
    return out


@torch.no_grad()
def input_norms(
    model: "HookedMLLM", batches: Iterable[Any], positions: Selector, progress: bool | None = None
) -> dict[str, Tensor]:
    """Per linear: ``||X_j||_2`` of its inputs over the calibration tokens at ``positions`` (``progress``: a bar
    over the batches, None: automatic, :mod:`hooks_mm.progress`)."""
    check_progress(progress, "input_norms")
    linears = _linears(model)
    sums = {k: torch.zeros(m.weight.shape[1], dtype=torch.float64) for k, m in linears.items()}
    state: dict[str, Tensor] = {}

    def grab(key: str):  # noqa: ANN202
        def hook(m: nn.Module, args: tuple) -> None:
            x = args[0]
            mask = state["mask"]
            if x.shape[:2] == mask.shape:  # position-indexed inputs only (not cross-attention K/V)
                sums[key] += (x[mask].double() ** 2).sum(0)
            elif x.dim() == 2 and x.shape[0] == mask.numel():  # a MoE router reads [batch * pos, d_model]
                sums[key] += (x[mask.flatten()].double() ** 2).sum(0)

        return hook

    handles = [m.register_forward_pre_hook(grab(k)) for k, m in linears.items()]
    n = 0
    try:
        for inputs in progress_bar(batches, desc="input_norms", unit="batch", progress=progress):
            batch = model.prepare(inputs)
            state["mask"] = batch.layout.select(positions)
            n += int(state["mask"].sum())
            model(batch)
    finally:
        for h in handles:
            h.remove()
    if n == 0:
        raise ValueError(
            f"input_norms: {positions!r} selects no calibration token in these batches: norms would all be 0 "
            "(and the masks arbitrary); give batches holding those positions."
        )
    return {k: v.sqrt().float() for k, v in sums.items()}


def wanda_overlap(
    model: "HookedMLLM", batches: list[Any], sparsity: float = 0.5, a: Selector | None = None, b: Selector | None = None
) -> pd.DataFrame:
    """IoU of the Wanda masks calibrated on positions ``a`` (image) and ``b`` (text)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}.")
    na, nb = input_norms(model, batches, a or Image()), input_norms(model, batches, b or Text())
    rows = []
    for key, lin in _linears(model).items():
        ma, mb = wanda_mask(lin.weight, na[key], sparsity), wanda_mask(lin.weight, nb[key], sparsity)
        layer, name = key.split(".")
        rows.append({"layer": int(layer), "linear": name, "iou": float((ma & mb).sum() / (ma | mb).sum())})
    return pd.DataFrame(rows)
