"""Sweep engine: the fast path equals the naive loop; resume, metrics, attribution, kernels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_clean, pair_for

from hooks_mm import Image, NonPad, Text
from hooks_mm.interventions import NeuronAblation, NeuronMeans, Steer
from hooks_mm.sweep import (
    answer_logprob,
    attribution_patching,
    kl_to_clean,
    logit_diff,
    modality_nll,
    neuron_groups,
    single_neurons,
    sweep,
)
from hooks_mm.sweep.kernels import lowrank_update_torch, triton_available

# llava: image after text; paligemma: image tokens first (bidirectional prefix);
# qwen3_vl: deepstack injections between layers; mllama: cross-attention layer (naive there)
FAMILIES = ["llava", "paligemma", "qwen3_vl", "mllama"]


def configs_for(p, mode: str, means=None):  # noqa: ANN001, ANN201
    kw = {"means": means} if means is not None else {}
    return (
        single_neurons(p.model, layers=None, positions=NonPad(), mode=mode, neurons=range(0, 6), **kw)
        + neuron_groups(p.model, layers=0, group_size=24, positions=Image(), mode=mode, **kw)
        + [NeuronAblation(0, None, Text(), mode, **kw)]
    )


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_fast_path_equals_the_naive_loop(family: str, mode: str) -> None:
    p = pair_for(family)
    means = NeuronMeans.fit(p.model, [p.inputs]) if mode == "mean" else None
    cfgs = configs_for(p, mode, means)
    metric = answer_logprob(p.model, p.inputs)
    fast = sweep(p.model, p.inputs, cfgs, metric, progress=False, batch_size=16)
    naive = sweep(p.model, p.inputs, cfgs, metric, method="naive", progress=False)
    assert fast.meta["fast"] > 0.5 * len(cfgs)
    if p.model.cfg.cross_attn_layers:
        assert fast.meta["naive"] > 0  # cross-attention layers run the plain way
    assert (fast.values - naive.values).abs().max().item() <= 1e-5
    assert torch.equal(fast.clean, naive.clean)
    assert list(fast.table.columns[:4]) == ["type", "layer", "neuron", "n_neurons"]
    assert (fast.table["delta"] - (fast.table["value"] - float(fast.clean))).abs().max() < 1e-6
    assert_clean(p.model)


@pytest.mark.parametrize("family", ["llava", "qwen3_vl"])
@pytest.mark.parametrize(
    "mode, extra", [("scale", {"value": 1.7}), ("set", {"value": 0.5}), ("resample", {"source": "other"})]
)
def test_fast_path_equals_the_naive_loop_in_every_ablation_mode(family: str, mode: str, extra: dict) -> None:
    p = pair_for(family)
    other = dict(p.inputs, pixel_values=p.inputs["pixel_values"].flip(0))  # the same layout, other images
    cfgs = [c for c in configs_for(p, mode) for c in [NeuronAblation(c.layers, c.neurons, c.positions, mode, **extra)]]
    metric = answer_logprob(p.model, p.inputs)
    fast = sweep(p.model, p.inputs, cfgs, metric, progress=False, batch_size=16, sources={"other": other})
    naive = sweep(p.model, p.inputs, cfgs, metric, method="naive", progress=False, sources={"other": other})
    assert fast.meta["fast"] == len(cfgs) and (fast.values - fast.clean).abs().max() > 1e-3
    assert (fast.values - naive.values).abs().max().item() <= 1e-5
    assert_clean(p.model)


def test_mixed_configs_and_resume_after_interrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hooks_mm.sweep import engine

    p = pair_for("llava")
    cfgs = single_neurons(p.model, layers=[0, 1], neurons=range(6)) + [Steer(0, [0.1] * p.model.cfg.d_model)]
    base = answer_logprob(p.model, p.inputs)
    full = sweep(p.model, p.inputs, cfgs, base, progress=False, batch_size=4)
    calls = {"n": 0}
    packed = engine.FastGroup.logits

    def flaky(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 2:  # the first chunk of 4 configs is done, then the user hits Ctrl-C
            raise KeyboardInterrupt
        return packed(self, *args, **kwargs)

    ckpt = str(tmp_path / "sweep.pt")
    monkeypatch.setattr(engine.FastGroup, "logits", flaky)
    with pytest.raises(KeyboardInterrupt, match=r"interrupted after 4/13 configs.*resume"):
        sweep(p.model, p.inputs, cfgs, base, progress=False, batch_size=4, checkpoint=ckpt)
    monkeypatch.setattr(engine.FastGroup, "logits", packed)
    again = sweep(p.model, p.inputs, cfgs, base, progress=False, batch_size=4, checkpoint=ckpt)
    assert again.meta["resumed"] == 4 and again.meta["naive"] == 1
    assert torch.equal(again.values, full.values)  # bit-exact
    other = pair_for("qwen2_vl")  # a checkpoint never serves another model or input
    with pytest.raises(ValueError, match="written for another model"):
        sweep(
            other.model,
            other.inputs,
            single_neurons(other.model, 0, neurons=[1]),
            answer_logprob(other.model, other.inputs),
            progress=False,
            checkpoint=ckpt,
        )
    assert_clean(p.model)


def test_bad_input() -> None:
    p = pair_for("llava")
    metric = answer_logprob(p.model, p.inputs)
    with pytest.raises(ValueError, match="empty config list"):
        sweep(p.model, p.inputs, [], metric)
    with pytest.raises(ValueError, match=r"returned shape \(2, 42, 56\).*scalar or a 1-D vector"):
        sweep(p.model, p.inputs, single_neurons(p.model, 0, neurons=[1]), lambda logits: logits, progress=False)
    with pytest.raises(MemoryError, match="too small for one config"):
        sweep(p.model, p.inputs, single_neurons(p.model, 0, neurons=[1]), metric, max_memory=1000)
    with pytest.raises(ValueError, match="method='fast' cannot run"):
        sweep(p.model, p.inputs, [Steer(0, [0.0] * 64)], metric, method="fast", progress=False)
    with pytest.raises(TypeError, match=r"not a sweep backend: pass HooksSweep\(...\) or hooks_mm.remote.NNsightSweep"):
        sweep(p.model, p.inputs, single_neurons(p.model, 0, neurons=[1]), metric, backend="nnsight")
    with pytest.raises(ValueError, match="width 64: give 64 numbers"):  # checked before any config runs
        sweep(p.model, p.inputs, single_neurons(p.model, 0, neurons=[1]) + [Steer(0, [0.0] * 3)], metric)
    assert_clean(p.model)


def test_metrics_equal_independent_computations() -> None:
    p = pair_for("llava")
    with torch.no_grad():
        logits = p.model(p.inputs)
    last = logits[:, -1].log_softmax(-1)
    assert abs(float(answer_logprob(p.model, p.inputs)(logits)) - float(last.max(-1).values.mean())) < 1e-6
    assert float(kl_to_clean(p.model, p.inputs)(logits)) == pytest.approx(0.0, abs=1e-7)
    diff = logit_diff(p.model, p.inputs, [3, 4], [5, 6])(logits)
    assert float(diff) == pytest.approx(
        float(((logits[0, -1, 3] - logits[0, -1, 5]) + (logits[1, -1, 4] - logits[1, -1, 6])) / 2), abs=1e-5
    )
    ids, am = p.inputs["input_ids"], p.inputs["attention_mask"].bool()
    layout = p.model.layout(p.inputs)
    keep = (layout.modality[:, 1:] == 0) & am[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1][keep], ids[:, 1:][keep])
    assert float(modality_nll(p.model, p.inputs, "text")(logits)) == pytest.approx(float(nll), abs=1e-5)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_attribution_estimate_is_gradient_times_difference(family: str) -> None:
    p = pair_for(family)
    metric = answer_logprob(p.model, p.inputs)
    att = attribution_patching(p.model, p.inputs, metric, layers=[0], positions=Image(), verify_top_k=5)
    # independent: autograd on the bare model, d metric / d (down_proj input)
    a = p.model.adapter
    down = p.bare.get_submodule(a.layers)[0].get_submodule(a.mlp).get_submodule(a.down)
    seen = {}

    def keep(m, args):  # noqa: ANN001, ANN202
        args[0].retain_grad()
        seen["x"] = args[0]

    h = down.register_forward_pre_hook(keep)
    try:
        metric(p.bare(**p.inputs).logits).backward()
    finally:
        h.remove()
        p.bare.zero_grad(set_to_none=True)
    img = p.model.layout(p.inputs).select(Image())
    x = seen["x"]
    expected = (x.grad * (0 - x.detach()) * img[..., None]).sum((0, 1))
    assert torch.allclose(att.neurons[0], expected, atol=1e-6)
    assert torch.allclose(att.positions[0].sum(-1).sum(-1), expected.sum(), atol=1e-5)
    top = att.table.head(5)
    assert top["exact"].notna().all()
    assert (top["estimate"] - top["exact"]).abs().max() < 0.2 * top["exact"].abs().max() + 1e-6
    assert_clean(p.model)


def test_lowrank_update_torch_equals_dense_masked_update() -> None:
    g = torch.Generator().manual_seed(0)
    base, w = torch.randn(10, 6, generator=g), torch.randn(6, 20, generator=g)
    idx = torch.tensor([[1, 4, 0], [7, 0, 0]])
    coef = torch.randn(2, 10, 3, generator=g) * torch.tensor([[1, 1, 1], [1, 0, 0]])[:, None, :]
    dense = torch.zeros(2, 10, 20)
    for n in range(2):
        for k in range(3):
            dense[n, :, idx[n, k]] += coef[n, :, k]
    expected = base - torch.einsum("nrm,dm->nrd", dense, w)
    assert torch.allclose(lowrank_update_torch(base, coef, w, idx), expected, atol=1e-5)


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_triton_kernel_matches_torch_in_the_interpreter() -> None:
    """The CUDA kernel's code, run by Triton's CPU interpreter on tiny shapes."""
    code = """
import torch
from hooks_mm.sweep.kernels import lowrank_update_torch
from hooks_mm.sweep.kernels.lowrank_triton import lowrank_update_triton
g = torch.Generator().manual_seed(0)
base, w = torch.randn(37, 70, generator=g), torch.randn(70, 50, generator=g)
idx = torch.randint(0, 50, (3, 5), generator=g)
coef = torch.randn(3, 37, 5, generator=g)
got = lowrank_update_triton(base, coef, w, idx, block_r=16, block_d=32)
ref = lowrank_update_torch(base, coef, w, idx)
print((got - ref).abs().max().item())
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) <= 1e-4
