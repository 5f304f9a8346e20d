"""The benchmarks' nnsight baseline: batched invokes equal one trace per config equal hooks_mm's own run."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from conftest import pair_for

from hooks_mm import NonPad
from hooks_mm.interventions import NeuronAblation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from nnsight_baseline import MultimodalNNsight  # noqa: E402


def test_batched_invokes_equal_single_traces_and_hooks_mm() -> None:
    p = pair_for("qwen2_vl")
    nn_model = MultimodalNNsight(p.model.hf_model)
    down = nn_model.model.language_model.layers[1].mlp.down_proj
    singles, batched = [], []
    with torch.no_grad():
        for j in range(3):
            with nn_model.trace(**p.inputs):
                down.input[:, :, j] = 0
                singles.append(nn_model.output.logits.save())
        with nn_model.trace() as tracer:
            for j in range(3):
                with tracer.invoke(**p.inputs):
                    down.input[:, :, j] = 0
                    batched.append(nn_model.output.logits.save())
        ours = [p.model.run_with_interventions(p.inputs, NeuronAblation(1, [j], NonPad())) for j in range(3)]
    real = p.real
    for s, b, o in zip(singles, batched, ours):
        assert (s - o)[real].abs().max() <= 1e-5
        assert (b - o)[real].abs().max() <= 1e-5
