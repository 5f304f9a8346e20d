"""Spec misuse: every misuse raises an error naming the problem and the fix before any hook is added,
or gives the result of an independent computation; specs compare by value and round-trip through JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import assert_clean, pair_for
from hypothesis import given, settings
from hypothesis import strategies as st

from hooks_mm import After, Frame, Image, Last, NonPad, Positions, Selector, Special, Text, Where
from hooks_mm.interventions import (
    AttentionKnockout,
    Compose,
    Intervention,
    NeuronAblation,
    NeuronMeans,
    Patch,
    Skip,
    Steer,
    patching_sweep,
)

D = 64  # tiny llava: d_model 64, d_mlp 128, 2 layers, 4 heads


@pytest.fixture(scope="module")
def llava():  # noqa: ANN201
    return pair_for("llava")


@pytest.fixture(scope="module")
def means(llava):  # noqa: ANN001, ANN201
    return NeuronMeans.fit(llava.model, [llava.inputs], layers=[0, 1])


def _json(spec: Intervention) -> Intervention:
    return Intervention.from_dict(json.loads(json.dumps(spec.to_dict())))


def _specs(means: NeuronMeans) -> dict[str, Intervention]:
    v = torch.randn(D, generator=torch.Generator().manual_seed(0))
    return {
        "ablation": NeuronAblation([0, 1], torch.tensor([1, 5]), Image(0) | Last()),
        "mean": NeuronAblation(1, [3, 4], Text(), "mean", means=means),
        "scale": NeuronAblation(0, None, After(Image()), "scale", value=0.5),
        "steer_tensor": Steer(1, v, Text(), scale=2.0),
        "steer_list": Steer(0, v.tolist(), Last()),
        "patch": Patch(range(2), "a", "resid_post", Last(), Positions([0]), "order"),
        "knockout": AttentionKnockout(1, Last(), Image(), heads=[0, 2]),
        "skip": Skip(0, "block", Image()),
    }


def test_every_spec_kind_round_trips_and_compares_by_value(means) -> None:  # noqa: ANN001
    specs = _specs(means)
    specs["compose"] = Compose(list(specs.values()))
    for label, spec in specs.items():
        again = _json(spec)
        assert again == spec and spec == again, label  # was: "Boolean value of Tensor is ambiguous"
        assert Intervention.from_dict(json.dumps(spec.to_dict())) == spec, label  # JSON text is accepted
        assert again.to_dict() == spec.to_dict(), label
    other = NeuronMeans(means.hook, {l: {g: v + 1e-3 for g, v in d.items()} for l, d in means.means.items()})
    unequal = {
        "ablation": NeuronAblation([0, 1], torch.tensor([1, 6]), Image(0) | Last()),
        "mean": NeuronAblation(1, [3, 4], Text(), "mean", means=other),
        "scale": NeuronAblation(0, None, After(Image()), "scale", value=0.25),
        "steer_tensor": Steer(1, specs["steer_tensor"].vector * 1.5, Text(), scale=2.0),
        "steer_list": Steer(0, [*specs["steer_list"].vector[:-1], 9.0], Last()),
        "patch": Patch(range(2), "a", "resid_post", Last(), Positions([1]), "order"),
        "knockout": AttentionKnockout(1, Last(), Image(), heads=[0]),
        "skip": Skip(0, "mlp", Image()),
    }
    for label, spec in unequal.items():
        assert spec != specs[label] and specs[label] != spec, label
    assert Compose(list(unequal.values())) != specs["compose"]
    assert Steer(0, [1.0, 2.0]) != Steer(0, [1.0, 2.0, 3.0]) and Steer(0, [1.0]) != Skip(0)


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
tensor_specs = st.one_of(
    st.builds(lambda v, s: Steer(0, torch.tensor(v), Text(), s), st.lists(finite, min_size=1, max_size=8), finite),
    st.builds(
        lambda n, v: NeuronAblation([0, 1], torch.tensor(n), Image(), "set", value=v),
        st.lists(st.integers(0, 127), min_size=1, max_size=6),
        finite,
    ),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(tensor_specs, min_size=1, max_size=3), st.data())
def test_specs_holding_tensors_round_trip_and_differ_when_a_number_differs(items, data) -> None:  # noqa: ANN001
    spec = items[0] if len(items) == 1 else Compose(items)
    assert _json(spec) == spec
    i = data.draw(st.integers(0, len(items) - 1))
    changed = [*items]
    item = items[i]
    if isinstance(item, Steer):
        j = data.draw(st.integers(0, len(item.vector) - 1))
        vec = item.vector.clone()
        vec[j] = vec[j] + 1.0 if abs(float(vec[j])) < 1e3 else 0.0
        changed[i] = Steer(0, vec, Text(), item.scale)
    else:
        changed[i] = NeuronAblation([0, 1], [*item.neurons, 1000], Image(), "set", value=item.value)
    other = changed[0] if len(items) == 1 else Compose(changed)
    assert other != spec and _json(other) != spec


def test_round_tripped_mean_ablation_gives_the_same_logits(llava, means) -> None:  # noqa: ANN001
    spec = NeuronAblation(1, [3, 4], Text(), "mean", means=means)
    with torch.no_grad():
        a = llava.model.run_with_interventions(llava.inputs, spec)
        b = llava.model.run_with_interventions(llava.inputs, _json(spec))
    assert torch.equal(a, b)


def test_neuron_means_of_another_model_are_refused(llava, means, tmp_path) -> None:  # noqa: ANN001
    gemma = pair_for("gemma3")  # 64 neurons per layer; tiny llava has 128
    gm = NeuronMeans.fit(gemma.model, [gemma.inputs], layers=0)
    assert gm.model == {"architecture": "Gemma3ForConditionalGeneration", "n_layers": 2, "widths": {"0": 64}}
    run = lambda spec: llava.model.run_with_interventions(llava.inputs, spec)  # noqa: E731
    with pytest.raises(ValueError, match="fitted on a 2-layer Gemma3.*this model is a 2-layer Llava.*refit"):
        run(NeuronAblation(0, [1], mode="mean", means=gm))  # ran silently before
    from hooks_mm import HookedMLLM

    toy = HookedMLLM.from_pretrained("toy-llava")  # same architecture, 3 layers, 384 neurons
    tm = NeuronMeans.fit(toy, [toy.to_inputs("a red square")], layers=0)
    with pytest.raises(ValueError, match="3-layer LlavaForConditionalGeneration.*2-layer Llava"):
        run(NeuronAblation(0, [1], mode="mean", means=tm))
    with pytest.raises(ValueError, match="fitted on 'mlp.hook_post'.*edits 'mlp.hook_pre'"):
        run(NeuronAblation(0, [1], mode="mean", means=means, hook="mlp.hook_pre"))
    # the record survives save / load and to_dict / from_dict
    gm.save(str(tmp_path / "gm"))
    assert NeuronMeans.load(str(tmp_path / "gm")) == gm
    assert NeuronMeans.from_dict(json.loads(json.dumps(gm.to_dict()))) == gm
    # means saved before the record existed: a warning on load, and their width is still checked
    meta = json.loads((tmp_path / "gm" / "means.json").read_text())
    del meta["model"]
    (tmp_path / "gm" / "means.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="saved without the model.*refit"):
        old = NeuronMeans.load(str(tmp_path / "gm"))
    with pytest.raises(ValueError, match="fitted on 64 neurons.*has 128.*refit"):
        run(NeuronAblation(0, [1], mode="mean", means=old))
    assert_clean(llava.model)


CONSTRUCTION = [
    (lambda: Steer(0, 1.0), TypeError, r"vector must be a non-empty list.*Steer\(layers, vector, positions, scale"),
    (lambda: Steer(0), TypeError, "vector must be a non-empty list"),
    (lambda: Steer(0, torch.ones(1, D)), TypeError, "1-D tensor"),
    (lambda: Steer(0, [1.0, math.nan]), ValueError, "vector holds NaN or infinity.*finite"),
    (lambda: Steer(0, [math.inf, 0.0]), ValueError, "vector holds NaN or infinity"),
    (lambda: Steer(0, [1.0], scale=math.nan), ValueError, "scale holds NaN"),
    (lambda: Skip(0.5), TypeError, r"layers must be None \(all layers\), an int, or a list"),
    (lambda: Skip("0"), TypeError, "layers must be None"),
    (lambda: Skip(True), TypeError, "layers must be None"),
    (lambda: Skip([[0, 1]]), TypeError, "one flat list"),
    (lambda: Skip([]), ValueError, r"layers=\[\] selects no layer"),
    (lambda: Skip(0, "MLP"), ValueError, "component 'MLP' is not one of"),
    (lambda: NeuronAblation(0, [True, False, True]), TypeError, "list of int indices.*nonzero"),
    (lambda: NeuronAblation(0, torch.ones(8, dtype=torch.bool)), TypeError, "bool tensor.*nonzero"),
    (lambda: NeuronAblation(0, [1.7]), TypeError, "list of int indices"),
    (lambda: NeuronAblation(0, []), ValueError, r"neurons=\[\] selects no neuron"),
    (lambda: Frame(True), TypeError, r"Frame\(True\): give one int frame index"),
    (lambda: NeuronAblation(0, [1], mode="Mean"), ValueError, "mode 'Mean' is not one of"),
    (lambda: NeuronAblation(0, [1], mode="scale", value=math.nan), ValueError, "value holds NaN"),
    (lambda: NeuronAblation(0, [1], mode="mean", means={"0": [0.0]}), TypeError, "means must be a NeuronMeans"),
    (lambda: Patch(0, component="resid_pree"), ValueError, r"component 'resid_pree' is not one of \['attn_out'"),
    (lambda: Patch(0, source={"input_ids": 1}), TypeError, "source names a run.*sources="),
    (lambda: AttentionKnockout(0, heads=[True]), TypeError, "heads must be a list of head indices"),
    (lambda: Steer(0, [1.0], positions="image"), TypeError, r"positions= cannot select positions with 'image'"),
    (lambda: Positions([True, False]), TypeError, r"a bool mask is not positions: use Where"),
    (lambda: Image(True), TypeError, r"Image\(i=True\): give a non-negative int"),
    (lambda: Image(-1), TypeError, r"Image\(i=-1\)"),
    (lambda: Skip(0) + 5, TypeError, "unsupported operand"),
    (lambda: Compose([{"type": "Skip"}]), TypeError, "items must be intervention specs"),
    (lambda: Intervention.from_dict(7), TypeError, r"needs the dict of spec.to_dict\(\)"),
    (lambda: Intervention.from_dict("{not json"), ValueError, "not JSON text"),
    (lambda: Intervention.from_dict({"layers": 0}), ValueError, "unknown intervention type None.*'type' key.*Skip"),
    (
        lambda: Intervention.from_dict({"type": "Skip", "layers": 0, "comp": 1}),
        ValueError,
        r"unknown fields \['comp'\]",
    ),
    (lambda: Selector.from_dict({"selector": "Imag"}), ValueError, "unknown selector 'Imag'.*use one of After.*Image"),
    (lambda: Selector.from_dict({"selector": "Where"}), ValueError, "not serialisable"),
]


@pytest.mark.parametrize(("make", "error", "match"), CONSTRUCTION)
def test_misuse_caught_by_the_constructor(make, error, match) -> None:  # noqa: ANN001
    with pytest.raises(error, match=match):
        make()


def test_canonical_forms_compare_and_serialise() -> None:
    assert Selector.from_dict(json.dumps(After(Image(0)).to_dict())) == After(Image(0))
    assert Steer(np.int64(1), np.ones(3)) == Steer(1, [1.0, 1.0, 1.0])
    assert NeuronAblation(torch.tensor([0, 1]), 5) == NeuronAblation([0, 1], [5])
    assert Steer(0, [1.0], positions=[0, -1]) == Steer(0, [1.0], positions=Positions([0, -1]))
    assert AttentionKnockout(range(2), heads=(0, 1)) == _json(AttentionKnockout([0, 1], heads=[0, 1]))


RUN = [
    (Steer([1, -1], [0.5] * D), ValueError, r"name a layer more than once.*as \[1, 1\]"),
    (NeuronAblation(0, [1, 1], mode="scale", value=2.0), ValueError, "name a neuron more than once"),
    (NeuronAblation(0, [5, -123]), ValueError, r"more than once \(as \[5, 5\]\)"),
    (NeuronAblation(0, [1], hook="attn.hook_pattern"), ValueError, "axis 1 is not the sequence position"),
    (NeuronAblation(0, [16], hook="attn.hook_z"), IndexError, r"within 0..15"),
    (NeuronAblation(0, [1], value=3.0), ValueError, "value=3.0 is used only by mode='scale' or 'set'"),
    (NeuronAblation(0, [1], source="other"), ValueError, "source='other' is used only by mode='resample'"),
    (
        Steer(0, [1.0] * D, hook="mlp.hook_post"),
        ValueError,
        "vector has 64 numbers but blocks.0.mlp.hook_post has width 128",
    ),
    (Steer(0, [1.0] * 16, hook="attn.hook_attn_scores"), ValueError, "axis 1 is not the sequence position"),
    (Steer(0, [1.0] * D, hook="blocks.0.hook_resid_post"), ValueError, "full hook name.*relative to the block"),
    (Steer(0, [1.0] * D, hook="hook_resid_psot"), KeyError, "Did you mean 'blocks.0.hook_resid_post'"),
    (Steer(0, [1.0] * D, positions=Where(lambda L: L.grid_row)), ValueError, "Where.*int64.*must return a bool"),
    (Steer(0, [1.0] * D, positions=Where(lambda L: L.grid_row[0] > 0)), ValueError, r"shape \(42,\).*\[batch, seq\]"),
    (AttentionKnockout(0, Last(), NonPad()), ValueError, "no key left to attend to.*Keep at least one key"),
    (AttentionKnockout(0, Text(), Text() | Special()), ValueError, "no key left"),
    (AttentionKnockout(0, Last(), Image(), heads=[]), IndexError, r"heads \[\] must be a non-empty list"),
    (
        Patch(0, "clean", positions=Positions([-2, -1]), source_positions=Positions([0, 1]), map="order"),
        ValueError,
        r"Patch source: .* select padding in rows \[1\]",
    ),
]


@pytest.mark.parametrize(("spec", "error", "match"), RUN)
def test_misuse_caught_before_any_hook_is_added(llava, spec, error, match) -> None:  # noqa: ANN001
    with torch.no_grad():
        clean = llava.model(llava.inputs)
        with pytest.raises(error, match=match):
            llava.model.run_with_interventions(llava.inputs, spec, sources={"clean": llava.inputs})
        assert_clean(llava.model)
        assert torch.equal(llava.model(llava.inputs), clean)


def test_patch_during_generation_names_the_kv_cache(llava) -> None:  # noqa: ANN001
    for spec in (Patch(0, positions=Image()), Patch(0, positions=Last(), source_positions=Last(), map="order")):
        with llava.model.interventions(spec, llava.inputs, sources={"clean": llava.inputs}):
            # was IndexError; then a shape error at the first cached step; now refused before any step
            with pytest.raises(ValueError, match=r"KV-cached generation steps.*generate\(inputs, interventions=spec"):
                llava.model.generate(llava.inputs, max_new_tokens=3)
        assert_clean(llava.model)


def _hand(model, inputs, name: str, fn):  # noqa: ANN001, ANN202
    """Logits with a hand-written TransformerLens hook ``fn(x)`` at ``name``."""
    with torch.no_grad():
        return model.run_with_hooks(inputs, fwd_hooks=[(name, lambda x, hook: fn(x))])


def test_negative_neurons_and_positions_on_padding_equal_hand_written_hooks(llava) -> None:  # noqa: ANN001
    m, x = llava.model, llava.inputs
    layout = m.layout(x)
    real = layout.select(NonPad())
    with torch.no_grad():
        got = m.run_with_interventions(x, NeuronAblation(0, [-1, 3], Image()))
    img = layout.select(Image())[..., None]
    name = "blocks.0.mlp.hook_post"
    want = _hand(
        m, x, name, lambda a: torch.cat([a[..., :3], a[..., 3:4] * ~img, a[..., 4:-1], a[..., -1:] * ~img], -1)
    )
    assert torch.equal(got, want)
    # position 0 is padding in row 1: the edit applies to row 0 only, and matches a hook that edits every row
    v = torch.randn(D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = m.run_with_interventions(x, Steer(0, v, positions=Positions([0])))
    want = _hand(m, x, "blocks.0.hook_resid_post", lambda a: torch.cat([a[:, :1] + v, a[:, 1:]], 1))
    assert torch.equal(got[real], want[real])
    assert_clean(m)


def test_skipping_every_block_is_the_unembedded_embedding(llava) -> None:  # noqa: ANN001
    m, x = llava.model, llava.inputs
    with torch.no_grad():
        got = m.run_with_interventions(x, Skip(None, "block"))
        _, cache = m.run_with_cache(x, names_filter=["blocks.0.hook_resid_pre"])
        bare = llava.bare
        want = bare.lm_head(bare.model.language_model.norm(cache["blocks.0.hook_resid_pre"]))
    real = m.layout(x).select(NonPad())
    assert (got - want)[real].abs().max().item() <= 1e-5


def test_a_spec_composed_with_itself_applies_twice(llava) -> None:  # noqa: ANN001
    m, x = llava.model, llava.inputs
    v = torch.randn(D, generator=torch.Generator().manual_seed(2))
    steer, skip = Steer(1, v, Text()), Skip(0, "block", Image())
    txt = m.layout(x).select(Text())[..., None]
    with torch.no_grad():
        twice = m.run_with_interventions(x, steer + steer)
        once_skip, twice_skip = (m.run_with_interventions(x, s) for s in (skip, skip + skip))
    assert torch.allclose(twice, _hand(m, x, "blocks.1.hook_resid_post", lambda a: a + 2 * v * txt), atol=1e-5)
    assert torch.equal(once_skip, twice_skip)
    assert_clean(m)


def test_same_position_reads_of_padding_or_another_modality_are_refused() -> None:
    from hooks_mm import HookedMLLM
    from hooks_mm.zoo import toy_image

    text = HookedMLLM.from_pretrained("tiny-llama")
    a, b = text.to_inputs(["a b c d", "b c"]), text.to_inputs(["b c", "a b c d"])  # same shape, padding swapped
    assert a["input_ids"].shape == b["input_ids"].shape
    for spec in (Patch(0, positions=NonPad()), NeuronAblation(0, [1], NonPad(), "resample", source="clean")):
        with pytest.raises(ValueError, match=r"rows \[0\] read padding or another modality.*map='order'"):
            text.run_with_interventions(a, spec, sources={"clean": b})  # copied padding into row 0 before
    with pytest.raises(ValueError, match="source 'clean' has 1 rows, this run 2"):
        text.run_with_interventions(a, Patch(0), sources={"clean": text.to_inputs(["a b c d"])})
    vlm = HookedMLLM.from_pretrained("tiny-llava")
    imgs = [toy_image(1)]
    first, last = vlm.to_inputs(["<image> what is it"], images=imgs), vlm.to_inputs(["what is it <image>"], images=imgs)
    assert first["input_ids"].shape == last["input_ids"].shape
    with pytest.raises(ValueError, match="read padding or another modality"):
        vlm.run_with_interventions(first, Patch(0, positions=Image()), sources={"clean": last})
    assert_clean(text) and assert_clean(vlm)


def test_patching_sweep_checks_its_metric_and_groups(llava) -> None:  # noqa: ANN001
    m, x = llava.model, llava.inputs
    last = m.layout(x).select(Last())
    corrupted = {**x, "pixel_values": x["pixel_values"] + 1.0}
    good = lambda l: l[last][:, 0]  # noqa: E731
    cases = [
        (lambda l: None, "metric\\(logits\\) gave NoneType on the clean run"),
        (lambda l: l[last], "gave shape \\(2, \\d+\\).*one value per row \\(2\\)"),
        (lambda l: l[last][:, 0] * float("nan"), "not finite on the clean run"),
    ]
    for metric, match in cases:
        with pytest.raises(ValueError, match=match):
            patching_sweep(m, x, corrupted, metric, layers=[0])
    with pytest.raises(ValueError, match="positions=\\{\\} has no group"):
        patching_sweep(m, x, corrupted, good, positions={})
    effect = patching_sweep(m, x, corrupted, good, layers=[-1], positions={"image": Image()})
    assert torch.equal(effect, patching_sweep(m, x, corrupted, good, layers=[1], positions={"image": Image()}))
    assert_clean(m)


def test_mean_ablation_of_a_modality_the_means_never_saw_is_refused(llava) -> None:  # noqa: ANN001
    m = llava.model
    text_only = NeuronMeans.fit(m, [m.to_inputs(["a red square", "where is it"])], layers=0)
    with pytest.raises(ValueError, match=r"no mean of \['image'\] positions.*fit them on batches"):
        m.run_with_interventions(llava.inputs, NeuronAblation(0, [1], Image(), "mean", means=text_only))  # was "all"
    with torch.no_grad():  # text positions have their own mean: allowed, and equal to a hand-written hook
        got = m.run_with_interventions(llava.inputs, NeuronAblation(0, [1], Text(), "mean", means=text_only))
    txt = m.layout(llava.inputs).select(Text())
    mean = text_only.means[0]["text"][1]
    want = _hand(m, llava.inputs, "blocks.0.mlp.hook_post", lambda a: a.index_put((txt, torch.tensor(1)), mean))
    assert torch.equal(got, want)
    assert_clean(m)
