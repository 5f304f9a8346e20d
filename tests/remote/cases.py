"""Models, inputs and specs shared by the nnsight-backend tests (local and NDIF tiers)."""

from __future__ import annotations

from typing import Any

import torch

from hooks_mm import HookedMLLM, Image, Last, NonPad, Positions, Text
from hooks_mm.interventions import (
    AttentionKnockout,
    CentroidBank,
    CentroidReplacement,
    NeuronAblation,
    NeuronMeans,
    Patch,
    Skip,
    Steer,
)
from hooks_mm.zoo import toy_image

TOL = 1e-5


def inputs_for(model: HookedMLLM) -> tuple[dict[str, Any], dict[str, Any]]:
    """(inputs, a source run of the same shape): two rows, left padding, images for a VLM."""
    if model.adapter.projector is not None:
        prompts = ["<image> what colour is it", "<image> where ?"]
        return (
            model.to_inputs(prompts, images=[toy_image(1), toy_image(2)]),
            model.to_inputs(prompts, images=[toy_image(3), toy_image(4)]),
        )
    return model.to_inputs(["a b c d", "b c"]), model.to_inputs(["c d a b", "a a"])


def specs_for(model: HookedMLLM, inputs: dict[str, Any]) -> dict[str, Any]:
    """One spec of every kind the nnsight backend compiles, on positions this model has."""
    pos = Image() if model.adapter.projector is not None else Text()
    g = torch.Generator().manual_seed(0)
    bank = CentroidBank.fit(model, [inputs], layer=1, positions=NonPad(), k=3, hook="hook_resid_post")
    means = NeuronMeans.fit(model, [inputs], layers=[0])
    return {
        "ablate_zero": NeuronAblation(0, [3, 7], pos),
        "ablate_mean_all_layers": NeuronAblation(
            None, [1, 2], NonPad(), mode="mean", means=NeuronMeans.fit(model, [inputs])
        ),
        "ablate_scale": NeuronAblation(1, None, pos, mode="scale", value=0.5),
        "ablate_set": NeuronAblation(0, [5], Last(), mode="set", value=2.0),
        "resample": NeuronAblation(1, [1, 2, 5], pos, mode="resample", source="clean"),
        "centroid": CentroidReplacement(bank, NonPad(), a_interp=0.25),
        "steer": Steer(1, vector=torch.randn(model.cfg.d_model, generator=g).tolist(), positions=Last(), scale=2.0),
        "patch_resid_pre": Patch([0, 1], source="clean", component="resid_pre", positions=pos),
        "patch_mlp_out": Patch(1, source="clean", component="mlp_out", positions=NonPad()),
        "patch_attn_out": Patch(0, source="clean", component="attn_out", positions=Last()),
        "knockout": AttentionKnockout([0, 1], queries=Last(), keys=pos & ~Last()),
        "knockout_heads": AttentionKnockout(1, queries=NonPad(), keys=Positions([1]), heads=[0, 2]),
        "skip": Skip(0, "block", positions=pos) + Skip(1, "mlp", positions=Last()) + Skip(1, "attn", positions=pos),
        "compose": NeuronAblation(0, [3], pos, mode="mean", means=means)
        + Steer(0, vector=[0.1] * model.cfg.d_model, positions=pos),
    }


def max_diff(a: torch.Tensor, b: torch.Tensor, inputs: dict[str, Any]) -> float:
    real = inputs["attention_mask"].bool()
    return float((a - b)[real].abs().max())
