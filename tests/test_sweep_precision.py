"""Sweeps of a bf16 model: ``replay_dtype=torch.float32`` deltas against an fp32 model's, the noise floor
in meta, and misuse of the option (refused before anything runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import assert_clean, pair_for

from hooks_mm import HookedMLLM, Last, NonPad, Positions, Text, zoo
from hooks_mm.interventions import NeuronAblation, Steer
from hooks_mm.sweep import CheckpointError, HooksSweep, answer_logprob, modality_nll, single_neurons, sweep
from hooks_mm.sweep.identity import weights_digest

_MODELS: dict[str, HookedMLLM] = {}


def models() -> tuple[HookedMLLM, HookedMLLM, dict]:
    """Tiny LLaVA in bf16, and the same (bf16-rounded) weights in fp32: the reference; the inputs."""
    if not _MODELS:
        low, ref = zoo.build("llava"), zoo.build("llava")
        _MODELS["bf16"] = HookedMLLM(low.model.to(torch.bfloat16), low.processor)
        _MODELS["fp32"] = HookedMLLM(ref.model.to(torch.bfloat16).to(torch.float32), ref.processor)
        _MODELS["inputs"] = low.inputs  # type: ignore[assignment]
    return _MODELS["bf16"], _MODELS["fp32"], _MODELS["inputs"]  # type: ignore[return-value]


def deltas(res) -> torch.Tensor:  # noqa: ANN001
    return res.values - res.clean


@pytest.mark.parametrize("metric_kind", ["answer_logprob", "modality_nll"])
def test_fp32_replay_deltas_match_the_fp32_model_far_better_than_bf16(metric_kind: str) -> None:
    low, ref, inputs = models()
    make = answer_logprob if metric_kind == "answer_logprob" else modality_nll
    cfgs = single_neurons(low, layers=None, positions=NonPad(), neurons=range(10))
    digest = weights_digest(low.hf_model)
    truth = deltas(sweep(ref, inputs, cfgs, make(ref, inputs), method="naive", progress=False))
    plain = sweep(low, inputs, cfgs, make(low, inputs), progress=False)
    fp32 = sweep(low, inputs, cfgs, make(low, inputs), progress=False, replay_dtype=torch.float32)
    err_plain = float((deltas(plain) - truth).abs().median())
    err_fp32 = float((deltas(fp32) - truth).abs().median())
    # measured on this model: answer_logprob 2.9e-4 vs 1.4e-6 (true effects: median 3.2e-4)
    assert err_fp32 * 20 < err_plain, (err_fp32, err_plain)
    assert torch.corrcoef(torch.stack([deltas(fp32), truth]))[0, 1] > 0.99
    assert fp32.meta["fast"] == len(cfgs) and fp32.meta["replay_dtype"] == "torch.float32"
    assert torch.equal(fp32.clean, plain.clean)  # the model's own clean run: deltas are value - clean
    # the noise floor: what model-dtype deltas carry (close to the error measured here), and what is left
    noise = fp32.meta["noise"]
    assert plain.meta["noise_floor"] == noise["model_dtype"]["max"] == plain.meta["noise"]["model_dtype"]["max"]
    assert err_plain < plain.meta["noise_floor"] < 50 * err_plain
    assert 0.2 * err_plain < noise["model_dtype"]["median"] < 20 * err_plain
    resolution = torch.finfo(torch.float32).eps * float(fp32.clean.abs())  # the metric is float32
    assert 0 < fp32.meta["noise_floor"] == max(noise["reported"]["max"], resolution)
    assert fp32.meta["noise_floor"] < noise["model_dtype"]["median"] / 10
    assert noise["sample"] == 8 and noise["reference"] == "float64"
    # the model is untouched: its weights, their dtype, no hooks
    assert weights_digest(low.hf_model) == digest and next(low.hf_model.parameters()).dtype == torch.bfloat16
    assert_clean(low)


def test_replay_dtype_of_the_models_own_dtype_changes_nothing() -> None:
    p = pair_for("llava")
    cfgs = single_neurons(p.model, layers=[0, 1], neurons=range(4))
    metric = answer_logprob(p.model, p.inputs)
    plain = sweep(p.model, p.inputs, cfgs, metric, progress=False)
    same = sweep(p.model, p.inputs, cfgs, metric, progress=False, replay_dtype=torch.float32)
    assert torch.equal(plain.values, same.values) and plain.meta["noise_floor"] is None
    assert "float32 model" in plain.meta["noise"]


def test_replay_dtype_misuse_is_refused_before_anything_runs(tmp_path: Path) -> None:
    low, _, inputs = models()
    p = pair_for("llava")  # float32
    cfgs = single_neurons(low, layers=0, neurons=[1])
    metric = answer_logprob(low, inputs)
    with pytest.raises(TypeError, match="not a floating torch dtype: pass e.g. replay_dtype=torch.float32"):
        sweep(low, inputs, cfgs, metric, replay_dtype="float32")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a floating torch dtype"):
        sweep(low, inputs, cfgs, metric, replay_dtype=torch.int32)
    with pytest.raises(ValueError, match="less precise than the model's torch.float32"):
        sweep(p.model, p.inputs, cfgs, answer_logprob(p.model, p.inputs), replay_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="method='naive' runs none"):
        sweep(low, inputs, cfgs, metric, replay_dtype=torch.float32, method="naive")
    steer = Steer(0, [0.1] * low.cfg.d_model)
    with pytest.raises(ValueError, match=r"config 1 .*Steer.*plain forward in the model's dtype"):
        sweep(low, inputs, [*cfgs, steer], metric, replay_dtype=torch.float32, progress=False)
    with pytest.raises(ValueError, match=r"option of the local backend: pass it as HooksSweep\(replay_dtype=...\)"):
        sweep(low, inputs, cfgs, metric, replay_dtype=torch.float32, backend=HooksSweep())
    assert_clean(low)
    assert_clean(p.model)
    # a checkpoint of a sweep in the model's dtype never serves one replayed in float32 (other values)
    ckpt = str(tmp_path / "s.pt")
    sweep(low, inputs, cfgs, metric, progress=False, checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="the model differs"):
        sweep(low, inputs, cfgs, metric, progress=False, checkpoint=ckpt, replay_dtype=torch.float32)


def test_fp32_replay_at_text_positions_with_suffix_reuse() -> None:
    """Ablations at text positions replay a suffix (the prefix's keys / values from the bf16 clean pass)."""
    low, ref, inputs = models()
    cfgs = [NeuronAblation(l, [j], Text()) for l in (0, 1) for j in range(6)]
    truth = deltas(sweep(ref, inputs, cfgs, answer_logprob(ref, inputs), method="naive", progress=False))
    fp32 = sweep(low, inputs, cfgs, answer_logprob(low, inputs), progress=False, replay_dtype=torch.float32)
    plain = sweep(low, inputs, cfgs, answer_logprob(low, inputs), progress=False)
    assert fp32.meta["suffix"] == "on" and max(g["replayed"] for g in fp32.meta["replayed"]) < fp32.meta["seq_len"]
    assert float((deltas(fp32) - truth).abs().median()) * 10 < float((deltas(plain) - truth).abs().median())


def test_fp32_replay_of_an_unpadded_batch() -> None:
    """No padding: no mask from HF (SDPA's implicit causal one); the suffix's explicit mask follows the replay dtype."""
    low, ref = zoo.build("llama"), zoo.build("llama")
    low_m = HookedMLLM(low.model.to(torch.bfloat16), low.processor)
    ref_m = HookedMLLM(ref.model.to(torch.bfloat16).to(torch.float32), ref.processor)
    ids = torch.randint(3, 40, (2, 9), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    cfgs = [NeuronAblation(l, [j], s) for l in (0, 1) for j in range(4) for s in (Last(), Positions([5]))]
    truth = deltas(sweep(ref_m, inputs, cfgs, answer_logprob(ref_m, inputs), method="naive", progress=False))
    fp32 = sweep(low_m, inputs, cfgs, answer_logprob(low_m, inputs), progress=False, replay_dtype=torch.float32)
    plain = sweep(low_m, inputs, cfgs, answer_logprob(low_m, inputs), progress=False)
    assert sorted({g["replayed"] for g in fp32.meta["replayed"]}) == [1, 4] and fp32.meta["suffix"] == "on"
    assert float((deltas(fp32) - truth).abs().median()) * 10 < float((deltas(plain) - truth).abs().median())
    assert_clean(low_m)


def test_a_failing_float64_reference_leaves_the_sweep_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """An attention kernel without float64 (flash attention) must not break a bf16 sweep: no floor, the reason."""
    from hooks_mm.sweep import engine

    low, _, inputs = models()
    cfgs = single_neurons(low, layers=0, neurons=range(3))
    metric = answer_logprob(low, inputs)
    good = sweep(low, inputs, cfgs, metric, progress=False)

    def fail(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("FlashAttention only supports fp16 and bf16")

    monkeypatch.setattr(engine, "noise_floor", fail)
    res = sweep(low, inputs, cfgs, metric, progress=False)
    assert (
        res.meta["noise_floor"] is None and "float64 replay failed (RuntimeError: FlashAttention" in res.meta["noise"]
    )
    assert torch.equal(res.values, good.values)
