"""The Batch value: built once per call (layout counted), accepted everywhere, equal results."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_clean, pair_for

from hooks_mm import HookedMLLM, Image, Last, NonPad
from hooks_mm.interventions import NeuronAblation, Patch, Steer
from hooks_mm.model import Batch, core
from hooks_mm.remote import remote_sweep
from hooks_mm.sweep import answer_logprob, attribution_patching, kl_to_clean, single_neurons, sweep


@pytest.fixture()
def count_layouts(monkeypatch):  # noqa: ANN201
    """How many layouts HookedMLLM assembles (monkeypatched counter around the one builder)."""
    calls = {"n": 0}
    build = core.layout_of

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        return build(*args, **kwargs)

    monkeypatch.setattr(core, "layout_of", counted)
    return calls


def _fresh(p) -> dict:  # noqa: ANN001
    """New tensors with the same values: nothing cached about them."""
    return {k: v.clone() for k, v in p.inputs.items()}


def test_one_layout_per_intervention_call(count_layouts) -> None:  # noqa: ANN001
    p = pair_for("llava")
    spec = NeuronAblation(0, [1, 2], Image()) + Steer(1, [0.1] * p.model.cfg.d_model, Last())
    p.model.run_with_interventions(_fresh(p), spec)
    assert count_layouts["n"] == 1
    count_layouts["n"] = 0
    p.model.run_with_interventions(_fresh(p), Patch(layers=[0, 1], source="clean"), sources={"clean": _fresh(p)})
    assert count_layouts["n"] == 2  # this run and the source run, once each
    count_layouts["n"] = 0
    with p.model.interventions(spec, _fresh(p)) as m:
        inputs = _fresh(p)
        m(inputs)
        m(inputs)
    assert count_layouts["n"] == 2  # the compiled batch, then the very same tensors twice (prepared once)


def test_one_layout_and_one_clean_forward_per_sweep(count_layouts) -> None:  # noqa: ANN001
    p = pair_for("llava")
    inputs = _fresh(p)
    forwards = {"n": 0}
    handle = p.model.hf_model.register_forward_pre_hook(lambda m, a: forwards.__setitem__("n", forwards["n"] + 1))
    try:
        metric = answer_logprob(p.model, inputs)  # targets from the clean run: taken from the sweep's own
        configs = single_neurons(p.model, layers=[0, 1], positions=Image(), neurons=range(8))
        configs += [
            NeuronAblation(1, [3], Image(), mode="resample", source="other"),
            Steer(0, [0.2] * p.model.cfg.d_model),
        ]
        result = sweep(p.model, inputs, configs, metric, progress=False, sources={"other": _fresh(p)})
    finally:
        handle.remove()
    assert result.meta["fast"] == 17 and result.meta["naive"] == 1
    assert count_layouts["n"] == 2  # the swept batch and the source run
    assert forwards["n"] == 1 + 1 + 1  # one clean run, the source run once, the one naive config
    with torch.no_grad():  # the bound targets are the clean argmax, as computed without the sweep
        last = p.model(p.inputs)[torch.arange(2), p.model.layout(p.inputs).indices(Last())[:, 0]]
    assert torch.equal(metric.state, last.argmax(-1))
    assert_clean(p.model)


def test_lazy_clean_targets_ignore_hooks_active_when_first_used() -> None:
    p = pair_for("llava")
    with torch.no_grad():
        eager = answer_logprob(p.model, p.inputs, targets=p.model(p.inputs)[:, -1].argmax(-1))
    lazy, kl = answer_logprob(p.model, p.inputs), kl_to_clean(p.model, p.inputs)
    spec = NeuronAblation([0, 1], None, NonPad(), mode="scale", value=-3.0)
    with torch.no_grad(), p.model.interventions(spec, p.inputs):
        ablated = p.model(p.inputs)
        assert ablated[:, -1].argmax(-1).tolist() != eager.state.tolist()  # the intervention changes the answer
        assert torch.equal(lazy(ablated), eager(ablated)) and float(kl(ablated)) > 0
    with torch.no_grad():
        assert float(kl(p.model(p.inputs))) == pytest.approx(0.0, abs=1e-6)


def test_one_layout_per_remote_sweep_and_attribution(count_layouts) -> None:  # noqa: ANN001
    p = pair_for("llama")
    batch = p.model.prepare(_fresh(p))
    assert count_layouts["n"] == 1
    metric = kl_to_clean(p.model, batch)
    configs = single_neurons(p.model, layers=0, neurons=range(4))
    remote_sweep(p.model, batch, configs, metric, remote=False, progress=False)
    attribution_patching(p.model, batch, answer_logprob(p.model, batch), layers=[0, 1], verify_top_k=2)
    assert count_layouts["n"] == 1


def test_batch_is_accepted_everywhere_and_equals_raw_inputs() -> None:
    p = pair_for("qwen2_vl")
    batch = p.model.prepare(p.inputs)
    assert isinstance(batch, Batch) and p.model.prepare(batch) is batch and p.model.prepare(p.inputs) is batch
    assert set(batch) == set(p.inputs) and torch.equal(batch["input_ids"], p.inputs["input_ids"])
    assert batch.layout.describe(0) == p.model.layout(p.inputs).describe(0)
    assert len(batch.str_tokens) == 2 and len(batch.str_tokens[0]) == batch.shape[1]
    with torch.no_grad():
        assert torch.equal(p.model(batch), p.model(p.inputs))
        spec = NeuronAblation(1, [0, 5], NonPad())
        assert torch.equal(
            p.model.run_with_interventions(batch, spec), p.model.run_with_interventions(dict(p.inputs), spec)
        )
        _, cache = p.model.run_with_cache(batch, names_filter="blocks.0.hook_resid_post", pos=Last())
    assert torch.equal(cache.positions[:, 0], batch.layout.indices(Last())[:, 0])


def test_a_batch_of_another_model_is_laid_out_again() -> None:
    p, q = pair_for("llava"), pair_for("llava_next")
    batch = p.model.prepare(p.inputs)
    with pytest.raises(ValueError, match="image token count does not match"):  # not silently llava's layout
        q.model.prepare(batch)
    other = HookedMLLM(p.bare, p.model.processor)  # the same family, another wrapper: its own batch
    assert other.prepare(batch) is not batch and other.prepare(batch).layout.describe(0) == batch.layout.describe(0)


def test_a_modified_tensor_is_prepared_again() -> None:
    p = pair_for("llava")
    inputs = _fresh(p)
    first = p.model.prepare(inputs)
    inputs["attention_mask"][1, -1] = 0  # in place: the cached batch no longer describes these inputs
    second = p.model.prepare(inputs)
    assert second is not first and int(second.layout.summary()["pad"]) == int(first.layout.summary().get("pad", 0)) + 1


def test_batch_without_input_ids_says_why_it_has_no_layout() -> None:
    p = pair_for("llama")
    embeds = p.model.hf_model.get_input_embeddings()(p.inputs["input_ids"])
    batch = p.model.prepare({"inputs_embeds": embeds, "attention_mask": p.inputs["attention_mask"]})
    with torch.no_grad():
        assert p.model(batch).shape[:2] == p.inputs["input_ids"].shape  # a forward needs no layout
    with pytest.raises(ValueError, match="a layout needs input_ids"):
        batch.layout
