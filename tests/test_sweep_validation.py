"""Sweep misuse: checkpoints of another model / metric / source, unreadable files, bad metrics,
configs and targets each get an error that names the problem and the fix, before anything runs."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
from conftest import assert_clean, pair_for

from hooks_mm import HookedMLLM, NonPad, zoo
from hooks_mm.interventions import Compose, NeuronAblation
from hooks_mm.sweep import (
    CheckpointError,
    answer_logprob,
    attribution_patching,
    kl_to_clean,
    logit_diff,
    modality_nll,
    single_neurons,
    sweep,
)
from hooks_mm.sweep.identity import UnidentifiableMetric, metric_identity, weights_digest


def _sweep(model, inputs, metric, ckpt, n=4, **kw):  # noqa: ANN001, ANN003, ANN202
    return sweep(
        model, inputs, single_neurons(model, 0, neurons=range(n)), metric, progress=False, checkpoint=ckpt, **kw
    )


def test_a_checkpoint_of_another_metric_on_the_same_inputs_is_refused(tmp_path: Path) -> None:
    p = pair_for("llava")
    ckpt = str(tmp_path / "s.pt")
    first = _sweep(p.model, p.inputs, answer_logprob(p.model, p.inputs), ckpt)
    with pytest.raises(
        CheckpointError, match=r"written for another model, inputs or metric \(here the metric differs\)"
    ):
        _sweep(p.model, p.inputs, logit_diff(p.model, p.inputs, [3, 4], [5, 6]), ckpt)
    with pytest.raises(CheckpointError, match="the metric differs"):  # same kind, other targets
        _sweep(p.model, p.inputs, answer_logprob(p.model, p.inputs, [1, 2]), ckpt)
    again = _sweep(p.model, p.inputs, answer_logprob(p.model, p.inputs), ckpt)  # a new, equal metric resumes
    assert again.meta["resumed"] == 4 and torch.equal(again.values, first.values)
    assert_clean(p.model)


def test_a_checkpoint_of_a_same_shape_model_with_other_weights_is_refused(tmp_path: Path) -> None:
    """kl_to_clean is 0 on every clean run: the clean value can not tell the models apart."""
    p = pair_for("llava")
    other_tiny = zoo.build("llava", seed=1)
    other = HookedMLLM(other_tiny.model, other_tiny.processor)
    assert [x.shape for x in other.hf_model.parameters()] == [x.shape for x in p.model.hf_model.parameters()]
    ckpt = str(tmp_path / "s.pt")
    first = _sweep(p.model, p.inputs, kl_to_clean(p.model, p.inputs), ckpt)
    assert float(first.clean) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(CheckpointError, match=r"another model, inputs or metric \(here the model differs\)"):
        _sweep(other, p.inputs, kl_to_clean(other, p.inputs), ckpt)
    assert_clean(other)


def test_weights_digest_sees_a_neuron_zeroed_in_the_weights_and_equal_copies_agree() -> None:
    p = pair_for("llava")
    digest = weights_digest(p.model.hf_model)
    assert weights_digest(p.bare) == digest  # an independent copy with the same weights
    edited = copy.deepcopy(p.bare)
    a = p.model.adapter
    down = edited.get_submodule(a.layers)[1].get_submodule(a.mlp).get_submodule(a.down)
    with torch.no_grad():
        down.weight[:, 37] = 0  # one neuron's output column: in place, the cache must notice
    assert weights_digest(edited) != digest
    with torch.no_grad():
        down.weight[5, :] = 0  # one row
    assert weights_digest(edited) not in (digest, weights_digest(p.bare))


def test_metric_identity_of_plain_functions() -> None:
    def make(tok: int):  # noqa: ANN202
        return lambda logits: logits[:, -1, tok].mean()

    assert metric_identity(make(3)) == metric_identity(make(3))
    assert metric_identity(make(3)) != metric_identity(make(4))  # closure
    scale = torch.tensor([1.0, 2.0])

    def weighted(logits: torch.Tensor, w: torch.Tensor = scale) -> torch.Tensor:
        return (logits[:, -1, 0] * w).mean()

    def weighted2(logits: torch.Tensor, w: torch.Tensor = scale * 2) -> torch.Tensor:
        return (logits[:, -1, 0] * w).mean()

    assert metric_identity(weighted) != metric_identity(weighted2)  # defaults (and qualified names)
    part = functools.partial(weighted, w=torch.ones(2))
    assert metric_identity(part) != metric_identity(functools.partial(weighted, w=torch.zeros(2)))

    class Metric:
        def __call__(self, logits: torch.Tensor) -> torch.Tensor:
            return logits[:, -1, 0].mean()

    with pytest.raises(UnidentifiableMetric, match="cannot identify the metric.*run without checkpoint="):
        metric_identity(Metric())


def test_an_unidentifiable_metric_needs_no_identity_without_a_checkpoint(tmp_path: Path) -> None:
    p = pair_for("llava")

    class Metric:
        def __call__(self, logits: torch.Tensor) -> torch.Tensor:
            return logits[:, -1, 0].mean()

    assert len(_sweep(p.model, p.inputs, Metric(), None, n=2).table) == 2
    with pytest.raises(UnidentifiableMetric, match="Pass a function, a lambda or a PositionMetric"):
        _sweep(p.model, p.inputs, Metric(), str(tmp_path / "s.pt"), n=2)
    assert_clean(p.model)


def test_a_checkpoint_of_other_source_runs_is_refused(tmp_path: Path) -> None:
    p = pair_for("llava")
    metric = answer_logprob(p.model, p.inputs)
    cfgs = [NeuronAblation(0, [j], NonPad(), "resample", source="other") for j in range(3)]
    flipped = dict(p.inputs, pixel_values=p.inputs["pixel_values"].flip(0))
    ckpt = str(tmp_path / "s.pt")
    sweep(p.model, p.inputs, cfgs, metric, progress=False, checkpoint=ckpt, sources={"other": flipped})
    with pytest.raises(CheckpointError, match="the sources differ"):
        sweep(p.model, p.inputs, cfgs, metric, progress=False, checkpoint=ckpt, sources={"other": p.inputs})


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "is empty"),
        (b"garbage" * 20, "is corrupt or truncated"),
        (None, "is corrupt or truncated"),  # a real checkpoint, cut in half
        ("other", "is not a sweep checkpoint"),
    ],
)
def test_unreadable_checkpoint_files_name_the_file_and_the_fix(tmp_path: Path, content, problem: str) -> None:  # noqa: ANN001
    p = pair_for("llava")
    metric = answer_logprob(p.model, p.inputs)
    path = tmp_path / "s.pt"
    if content is None:
        _sweep(p.model, p.inputs, metric, str(path))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "other":
        torch.save({"weights": torch.ones(3)}, path)
    else:
        path.write_bytes(content)
    runs = []
    h = p.model.hf_model.register_forward_hook(lambda *a: runs.append(1))
    try:
        with pytest.raises(CheckpointError, match=rf"checkpoint {path} {problem}.*: delete it, or pass another") as e:
            _sweep(p.model, p.inputs, metric, str(path))
    finally:
        h.remove()
    assert "weights_only" not in str(e.value) and not runs  # no PyTorch advice; refused before any forward


def test_checkpoint_paths_that_are_directories_or_have_no_directory(tmp_path: Path) -> None:
    p = pair_for("llava")
    metric = answer_logprob(p.model, p.inputs)
    with pytest.raises(CheckpointError, match=rf"checkpoint {tmp_path} is a directory: pass a file path"):
        _sweep(p.model, p.inputs, metric, str(tmp_path))
    with pytest.raises(CheckpointError, match="does not exist: create it"):
        _sweep(p.model, p.inputs, metric, str(tmp_path / "no" / "s.pt"))


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda logits: None, r"returned NoneType 'None': return a tensor or a number"),
        (lambda logits: "high", r"returned str 'high'"),
        (lambda logits: logits[:, -1], r"returned shape \(2, 56\): it must return a scalar or a 1-D vector"),
    ],
)
def test_a_bad_metric_is_refused_at_the_clean_run(bad, match: str) -> None:  # noqa: ANN001
    p = pair_for("llava")
    calls = []

    def metric(logits: torch.Tensor):  # noqa: ANN202
        calls.append(1)
        return bad(logits)

    with pytest.raises((TypeError, ValueError), match=match):
        _sweep(p.model, p.inputs, metric, None)
    assert len(calls) == 1  # the clean run: no config ran
    assert_clean(p.model)


def test_configs_that_are_not_a_list_of_specs() -> None:
    p = pair_for("llava")
    metric = answer_logprob(p.model, p.inputs)
    spec = NeuronAblation(0, [1], NonPad())
    for configs, match in [
        (spec.to_dict(), r"got a dict: pass e.g. single_neurons.*Intervention.from_dict"),
        ([spec, spec.to_dict()], r"sweep config 1 is a dict .* pass Intervention.from_dict\(d\)"),
        ("NeuronAblation", "got a str"),
        (spec, r"got one NeuronAblation: pass \[spec\]"),
    ]:
        with pytest.raises(TypeError, match=match):
            sweep(p.model, p.inputs, configs, metric, progress=False)
    with pytest.raises(ValueError, match=r"sweep config 1 .* edits nothing on this model \(empty layers\?\)"):
        sweep(p.model, p.inputs, [spec, Compose([])], metric, progress=False)
    assert_clean(p.model)


def test_targets_must_give_one_token_id_per_row() -> None:
    p = pair_for("llava")  # 2 rows, vocabulary 56
    with pytest.raises(ValueError, match="targets has 1 token ids for a batch of 2 rows: give one id per row"):
        answer_logprob(p.model, p.inputs, [5])
    with pytest.raises(ValueError, match="targets has 3 token ids"):
        answer_logprob(p.model, p.inputs, [5, 6, 7])
    with pytest.raises(ValueError, match=r"correct has 1 token ids"):
        logit_diff(p.model, p.inputs, [5], [6, 7])
    with pytest.raises(ValueError, match=r"outside the vocabulary 0..55"):
        answer_logprob(p.model, p.inputs, [5, 56])
    with pytest.raises(TypeError, match="must be integer token ids"):
        answer_logprob(p.model, p.inputs, [5.0, 6.0])
    # one int is the same answer for every row, computed by hand
    with torch.no_grad():
        logits = p.model(p.inputs)
    expected = logits[:, -1].log_softmax(-1)[:, 5].mean()
    assert float(answer_logprob(p.model, p.inputs, 5)(logits)) == pytest.approx(float(expected), abs=1e-6)


def test_attribution_with_a_metric_it_cannot_differentiate() -> None:
    p = pair_for("llava")
    with pytest.raises(TypeError, match="returned NoneType"):
        attribution_patching(p.model, p.inputs, lambda logits: None, layers=[0])
    with pytest.raises(ValueError, match="does not depend on the logits through autograd"):
        attribution_patching(p.model, p.inputs, lambda logits: torch.tensor(1.0), layers=[0])
    with pytest.raises(ValueError, match=r"needs a scalar metric, got shape \(2,\): reduce it"):
        attribution_patching(p.model, p.inputs, lambda logits: logits[:, -1, 0], layers=[0])
    assert_clean(p.model)


def test_a_position_metric_made_for_other_inputs_is_refused() -> None:
    """Rows swapped: same shapes, other positions, targets and clean reference (kl_to_clean was 0.012, not 0)."""
    p = pair_for("llava")
    swapped = {k: v.flip(0) if torch.is_tensor(v) else v for k, v in p.inputs.items()}
    cfgs = single_neurons(p.model, 0, neurons=[1])
    for make in (answer_logprob, kl_to_clean, lambda m, x: logit_diff(m, x, [1, 2], [3, 4])):
        with pytest.raises(ValueError, match="metric was made for other inputs .* Make it with the inputs you run"):
            sweep(p.model, swapped, cfgs, make(p.model, p.inputs), progress=False)
    with pytest.raises(ValueError, match="made for other inputs"):
        attribution_patching(p.model, swapped, answer_logprob(p.model, p.inputs), layers=[0])
    equal = {k: v.clone() if torch.is_tensor(v) else v for k, v in p.inputs.items()}  # equal content: accepted
    out = sweep(p.model, equal, cfgs, kl_to_clean(p.model, p.inputs), progress=False)
    assert float(out.clean) == pytest.approx(0.0, abs=1e-6)
    assert_clean(p.model)


def test_a_vector_metric_gets_a_delta_per_entry() -> None:
    p = pair_for("llava")
    out = sweep(
        p.model, p.inputs, single_neurons(p.model, 0, neurons=[1, 2]), lambda l: l[:, -1, :3].mean(0), progress=False
    )
    expected = out.values - out.clean
    assert torch.allclose(torch.tensor(out.table[["delta_0", "delta_1", "delta_2"]].to_numpy()).float(), expected)


def test_sweep_options_out_of_range() -> None:
    p = pair_for("llava")
    with pytest.raises(ValueError, match=r"batch_size=-1: give a positive int"):
        _sweep(p.model, p.inputs, answer_logprob(p.model, p.inputs), None, batch_size=-1)


def test_a_clean_referenced_metric_compares_with_the_clean_run_of_the_model_swept() -> None:
    """kl_to_clean / answer_logprob made on model A, swept on B (or on A after its weights changed):
    the reference is the swept model's clean run (was A's: clean KL 0.023, not 0)."""
    p = pair_for("llava")
    tiny = zoo.build("llava", seed=1)
    other = HookedMLLM(tiny.model, tiny.processor)
    cfgs = single_neurons(other, 0, neurons=[1])
    kl = kl_to_clean(p.model, p.inputs)
    assert float(sweep(other, p.inputs, cfgs, kl, progress=False).clean) == pytest.approx(0.0, abs=1e-6)
    made_on_a = sweep(other, p.inputs, cfgs, answer_logprob(p.model, p.inputs), progress=False)
    with torch.no_grad():
        expected = other.hf_model(**p.inputs).logits[:, -1].log_softmax(-1).max(-1).values.mean()
    assert float(made_on_a.clean) == pytest.approx(float(expected), abs=1e-5)
    with torch.no_grad():
        for w in other.hf_model.parameters():
            w.mul_(1.3)
    assert float(sweep(other, p.inputs, cfgs, kl, progress=False).clean) == pytest.approx(0.0, abs=1e-6)


def test_modality_nll_made_for_other_inputs_is_refused() -> None:
    p = pair_for("llava")
    swapped = {k: v.flip(0) if torch.is_tensor(v) else v for k, v in p.inputs.items()}
    with pytest.raises(ValueError, match="modality_nll metric was made for other inputs"):
        sweep(
            p.model, swapped, single_neurons(p.model, 0, neurons=[1]), modality_nll(p.model, p.inputs), progress=False
        )


def test_weights_digest_of_a_tensor_larger_than_float32_counts() -> None:
    """2**25 + 1 entries: float32 index arithmetic would sample past the end (a 7B model has such tensors)."""
    module = torch.nn.Module()
    module.register_buffer("big", torch.zeros(2**25 + 1, dtype=torch.int8))
    digest = weights_digest(module)
    module.big[-1] = 1  # the last entry is in the sample
    assert weights_digest(module) != digest


def test_config_generators_refuse_what_would_fail_obscurely() -> None:
    from hooks_mm import Image
    from hooks_mm.sweep import neuron_groups, position_groups

    p = pair_for("llava")
    with pytest.raises(ValueError, match="group_size=0: give a positive number"):
        neuron_groups(p.model, 0, group_size=0)
    with pytest.raises(TypeError, match=r"takes a dict of name -> selector, got a list"):
        position_groups(p.model, [Image()], layers=0)


def test_a_bank_refitted_and_saved_to_the_same_path_is_not_resumed(tmp_path: Path) -> None:
    """A CentroidReplacement serialises as its bank's path: the key must still see the centroids."""
    from hooks_mm.interventions import CentroidBank, CentroidReplacement

    p = pair_for("llava")
    metric = answer_logprob(p.model, p.inputs)
    ckpt, where = str(tmp_path / "s.pt"), str(tmp_path / "bank")
    bank = CentroidBank.fit(p.model, [p.inputs], layer=0, positions=NonPad(), k=2, hook="hook_resid_post")
    bank.save(where)
    first = sweep(p.model, p.inputs, [CentroidReplacement(bank, NonPad())], metric, progress=False, checkpoint=ckpt)
    refit = CentroidBank.load(where)
    refit.centroids = refit.centroids * 3  # re-fitted, saved to the same path
    refit.save(where)
    refit = CentroidBank.load(where)
    spec = CentroidReplacement(refit, NonPad())
    again = sweep(p.model, p.inputs, [spec], metric, progress=False, checkpoint=ckpt)
    with torch.no_grad():
        expected = metric(p.model.run_with_interventions(p.inputs, spec))
    assert again.meta["resumed"] == 0 and float(again.values[0]) == pytest.approx(float(expected), abs=1e-5)
    assert float(again.values[0]) != pytest.approx(float(first.values[0]), abs=1e-4)


def test_weights_digest_of_inference_mode_weights() -> None:
    with torch.inference_mode():
        module = torch.nn.Linear(4, 3)
    digest = weights_digest(module)
    with torch.inference_mode():
        module.weight[:, 1] = 0
    assert weights_digest(module) != digest


def test_a_metric_called_on_its_own_follows_weight_changes() -> None:
    """kl_to_clean kept the first clean reference: after a weight edit, the clean run's KL was not 0."""
    tiny = zoo.build("llava", seed=2)
    model = HookedMLLM(tiny.model, tiny.processor)
    kl, top = kl_to_clean(model, tiny.inputs), answer_logprob(model, tiny.inputs)
    with torch.no_grad():
        assert float(kl(model(tiny.inputs))) == pytest.approx(0.0, abs=1e-6)
        top(model(tiny.inputs))
        for w in model.hf_model.parameters():
            w.mul_(1.3)
        logits = model(tiny.inputs)
    assert float(kl(logits)) == pytest.approx(0.0, abs=1e-6)
    expected = logits[:, -1].log_softmax(-1).max(-1).values.mean()
    assert float(top(logits)) == pytest.approx(float(expected), abs=1e-5)
