"""Controlled findings (hooks_mm.analysis.findings) and their random controls (hooks_mm.analysis.controls):
controls of the same size, the effect against a bare-HF computation, verdicts that follow from the numbers."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from hooks_mm import HookedMLLM
from hooks_mm.analysis.controls import random_neurons, random_positions
from hooks_mm.analysis.erasure import text_centric_bias
from hooks_mm.analysis.findings import (
    ablation_drop,
    alignment,
    batches,
    bias,
    erasure,
    image_questions,
    log_bias,
    markdown,
    masking,
    neuron_ablation,
    norms,
)
from hooks_mm.analysis.neurons import activation_probabilities, top_difference
from hooks_mm.layout import Modality
from hooks_mm.sweep.metrics import modality_nll
from hooks_mm.tasks.evaluate import word_ids
from hooks_mm.tasks.shapes import ANSWERS, make_captions, make_drawings, make_qa
from hooks_mm.zoo.organisms import ORGANISMS


@pytest.fixture(scope="module")
def toy() -> HookedMLLM:
    return HookedMLLM.from_pretrained("toy-llava")


def test_random_neurons_keep_the_count_per_layer_and_avoid_the_selection() -> None:
    sel = [(0, 3), (0, 7), (2, 1), (2, 2), (2, 5)]
    draws = [random_neurons(sel, d_mlp=16, seed=s) for s in range(30)]
    for d in draws:
        assert Counter(l for l, _ in d) == Counter(l for l, _ in sel)
        assert not set(d) & set(sel) and len(set(d)) == len(d) and all(0 <= j < 16 for _, j in d)
    assert draws[0] == random_neurons(sel, 16, seed=0) and len({tuple(d) for d in draws}) > 25
    # uniform over the other neurons of the layer: every one of layer 0's 14 others is drawn in 30 draws
    assert {j for d in draws for l, j in d if l == 0} == set(range(16)) - {3, 7}


@pytest.mark.parametrize(
    "sel, match",
    [
        ([(0, 1), (0, 1)], "twice"),
        ([(0, 16)], "d_mlp=16"),
        ([(-1, 0)], "layer >= 0"),
        ([(0, j) for j in range(9)], "only 7"),
    ],
)
def test_random_neurons_misuse(sel, match) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        random_neurons(sel, d_mlp=16, seed=0)


def test_random_positions_keep_the_count_per_row_inside_allowed() -> None:
    sel = torch.zeros(2, 10, dtype=torch.bool)
    sel[0, 2:5], sel[1, 7] = True, True
    allowed = torch.ones(2, 10, dtype=torch.bool)
    allowed[:, :1] = False  # padding
    out = random_positions(sel, allowed, seed=0)
    assert out.sum(1).tolist() == [3, 1] and not (out & sel).any() and not (out & ~allowed).any()
    assert torch.equal(out, random_positions(sel, allowed, seed=0))
    with pytest.raises(ValueError, match="row 0 selects 3"):
        random_positions(sel, allowed & (torch.arange(10) < 5), seed=0)
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        random_positions(sel[0], allowed[0], seed=0)


def _bare_drop(model: HookedMLLM, neurons: list[tuple[int, int]], n: int) -> float:
    """Accuracy drop with ``neurons`` zeroed at the input of each HF down_proj at the real positions,
    scored at the last position by argmax over the answer words: on a bare HF model loaded from the files."""
    qa, answers = image_questions(model, n, "test", 0)
    a = model.adapter
    bare = LlavaForConditionalGeneration.from_pretrained(ORGANISMS["toy-llava"].path).eval()
    layers = list(bare.get_submodule(a.layers))
    opts = word_ids(model, ANSWERS)
    hits = {True: 0.0, False: 0.0}
    for inputs, ans in zip(qa, answers):
        real = inputs["attention_mask"].bool()
        for ablate in (False, True):
            handles = []
            if ablate:
                for l in {l for l, _ in neurons}:
                    idx = [j for m, j in neurons if m == l]

                    def pre(mod, args, idx=idx):  # noqa: ANN001, ANN202
                        x = args[0].clone()
                        x[..., idx] = x[..., idx] * ~real[..., None]  # zero at the real positions
                        return (x,)

                    down = layers[l].get_submodule(a.mlp).get_submodule(a.down)
                    handles.append(down.register_forward_pre_hook(pre))
            try:
                with torch.no_grad():
                    logits = bare(**{k: v for k, v in inputs.items() if not k.startswith("hooks_mm")}).logits
            finally:
                for h in handles:
                    h.remove()
            hits[ablate] += float((logits[:, -1][:, opts].argmax(-1) == ans).sum())
    return (hits[False] - hits[True]) / n


def test_ablation_drop_equals_bare_hf(toy: HookedMLLM) -> None:
    qa, answers = image_questions(toy, 24, "test", 0)
    many = [(l, j) for l in range(toy.cfg.n_layers) for j in range(0, toy.cfg.d_mlp, 3)]
    drop = ablation_drop(toy, qa, answers, many)
    assert drop.shape == (24,) and set(drop.tolist()) <= {-1.0, 0.0, 1.0}
    assert float(drop.mean()) == pytest.approx(_bare_drop(toy, many, 24), abs=1e-12) and drop.abs().sum() > 0
    assert not ablation_drop(toy, qa, answers, []).any()


def test_neuron_ablation_measures_its_selection_and_the_verdict_follows(toy: HookedMLLM) -> None:
    f = neuron_ablation(toy, selector="top5", n=24, draws=20)
    probs = activation_probabilities(toy, batches(toy, make_qa(24, "train", 0)), ("text", "image"))
    neurons = top_difference(probs, 5.0)["image"]
    assert f.details["n_neurons"] == len(neurons) == round(toy.cfg.n_layers * toy.cfg.d_mlp * 0.05)
    qa, answers = image_questions(toy, 24, "test", 0)
    v = f.verdict
    assert v.effect.value == pytest.approx(float(ablation_drop(toy, qa, answers, neurons).mean()), abs=1e-12)
    control = [float(ablation_drop(toy, qa, answers, random_neurons(neurons, toy.cfg.d_mlp, s)).mean()) for s in (0, 7)]
    assert control == [float(v.control.draws[0]), float(v.control.draws[7])]
    assert v.agrees == (v.effect.lo > v.control.interval()[1]) and len(v.control.draws) == 20
    assert v.effect.n == 24 and v.effect.lo <= v.effect.value <= v.effect.hi
    table = markdown([f])
    assert f.row() in table and ("| yes |" in table) == f.agrees and "20 draws" in table


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"n": 5}, "n=5"),
        ({"draws": 5}, "20 random draws"),
        ({"selector": "top3"}, "selector"),
        ({"modality": "audio"}, "modality"),
    ],
)
def test_neuron_ablation_misuse(toy: HookedMLLM, kw, match) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        neuron_ablation(toy, **{"n": 10, **kw})


@pytest.fixture(scope="module")
def anygpt() -> tuple[HookedMLLM, HookedMLLM]:
    return HookedMLLM.from_pretrained("toy-anygpt"), HookedMLLM.from_pretrained("toy-anygpt-monotune")


def test_modality_nll_per_row_weights_back_to_the_pooled_value(anygpt) -> None:  # noqa: ANN001
    model = anygpt[0]
    inputs = batches(model, make_captions(6, "test", 0), answers=True)[0]
    batch = model.prepare(inputs)
    with torch.no_grad():
        logits = model(batch)
    rows = modality_nll(model, batch, "text", per_row=True)(logits)
    counts = ((batch.layout.modality[:, 1:] == Modality.TEXT) & (batch.layout.modality[:, :-1] != Modality.PAD)).sum(1)
    assert rows.shape == (6,) and float((rows * counts).sum() / counts.sum()) == pytest.approx(
        float(modality_nll(model, batch, "text")(logits)), rel=1e-6
    )


def test_log_bias_of_one_example_is_the_log_ratio_of_text_centric_bias(anygpt) -> None:  # noqa: ANN001
    model = anygpt[0]
    d = make_drawings(2, "test", 0)[1]
    ours = float(log_bias(model, [d.scene.caption()], [d.image])[0])
    ref = text_centric_bias(model, [d.scene.caption()], [d.image])
    assert ours == pytest.approx(math.log(ref["image_gain"]) - math.log(ref["text_gain"]), rel=1e-5)


def test_paired_findings_report_their_own_difference_and_judge_it(toy: HookedMLLM, anygpt) -> None:  # noqa: ANN001
    e = erasure(toy, n=12, k=8)
    assert e.verdict.effect.value == pytest.approx(e.details["text_cost"] - e.details["visual_cost"], abs=1e-12)
    a = alignment(toy, n=12)
    assert a.verdict.effect.value == pytest.approx(a.details["cos_image_image"] - a.details["cos_image_text"], 1e-5)
    b = bias(*anygpt, n=12)
    assert b.verdict.effect.value == pytest.approx(b.details["log_bias_paired"] - b.details["log_bias_monotune"])
    for f in (e, a, b, norms(toy, n=12)):
        assert f.verdict.null == 0.0 and f.agrees == (f.verdict.effect.lo > 0) and f.verdict.effect.n == 12


def test_masking_measures_against_random_neurons(anygpt) -> None:  # noqa: ANN001
    f = masking(anygpt[0], "image", "top2", n=12, draws=20)
    v = f.verdict
    assert len(v.control.draws) == 20 and v.agrees == (v.effect.lo > v.control.interval()[1])
    assert f.details["n_neurons"] == round(anygpt[0].cfg.n_layers * anygpt[0].cfg.d_mlp * 0.02)
    assert math.isfinite(f.details["other_increase"])
    with pytest.raises(ValueError, match="modality="):
        masking(anygpt[0], "audio", n=12)


def test_findings_sizes_name_their_organisms_and_refuse_unknown_ones() -> None:
    from hooks_mm.analysis.findings import SIZES, findings, organisms

    assert organisms("small") == ("toy-llava", "toy-anygpt", "toy-anygpt-monotune")
    assert all(name in ORGANISMS for names in SIZES.values() for name in names)
    with pytest.raises(ValueError, match="size='huge': give one of"):
        findings(n=10, size="huge")  # refused before any model loads


def test_erasure_finding_fits_its_banks_at_the_protocol_depths(toy: HookedMLLM) -> None:
    """(From the retired scripts/findings.py test.) The erasure finding banks the text after the image at the input
    of block floor(0.4 n + 1/2) and the image at floor(0.5 n + 1/2) (3 blocks: 1 and 2), and its costs are clean
    accuracy minus erased accuracy."""
    e = erasure(toy, n=12, k=8)
    n = toy.cfg.n_layers
    depths = (math.floor(0.4 * n + 0.5), math.floor(0.5 * n + 0.5))
    assert (e.details["text_layer"], e.details["visual_layer"]) == depths == (1, 2)
    assert 0 <= e.details["clean"] <= 1 and e.details["clean"] - 1 <= e.details["text_cost"] <= e.details["clean"]
