"""The masking matrix's cells as controlled findings on toy-anygpt (hooks_mm.analysis.findings.neurons): the
text diagonal (``masking(model, "text")``) and each row's own-minus-other increase (``masking_specificity``),
against a bare Hugging Face forward with the neurons zeroed by a hand hook and the modalities read from the
token ids."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_clean
from transformers import LlamaForCausalLM

from hooks_mm import HookedMLLM
from hooks_mm.analysis.controls import random_neurons
from hooks_mm.analysis.findings import batches, masking, masking_specificity, nll_increase, row_nll
from hooks_mm.analysis.neurons import activation_probabilities, top_difference
from hooks_mm.tasks.shapes import make_captions
from hooks_mm.zoo.organisms import ORGANISMS

N = 12


@pytest.fixture(scope="module")
def anygpt() -> HookedMLLM:
    return HookedMLLM.from_pretrained("toy-anygpt")


@pytest.fixture(scope="module")
def bare() -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(ORGANISMS["toy-anygpt"].path).eval()


def _weights(model: HookedMLLM) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.hf_model.state_dict().items()}


def _bare_rows(
    model: HookedMLLM, bare: LlamaForCausalLM, split: str, neurons: list[tuple[int, int]]
) -> dict[str, torch.Tensor]:
    """Per caption of ``split`` (N of them, seed 0), the mean next-token NLL of its image codes and of its text
    tokens, with ``neurons`` zeroed at the input of each layer's down_proj at the real positions. Image = an id
    among the processor's codes; text = any other real token that is not one of the tokenizer's special tokens;
    a token counts when its predecessor is real."""
    codes = set(model.processor.code_ids)
    special = set(model.tokenizer.all_special_ids)
    out: dict[str, list[torch.Tensor]] = {"image": [], "text": []}
    for inputs in batches(model, make_captions(N, split, 0), answers=True):
        ids, real = inputs["input_ids"], inputs["attention_mask"].bool()
        handles = []
        for layer in sorted({l for l, _ in neurons}):
            idx = [j for l, j in neurons if l == layer]

            def pre(mod, args, idx=idx):  # noqa: ANN001, ANN202
                x = args[0].clone()
                x[..., idx] = x[..., idx] * ~real[..., None]
                return (x,)

            handles.append(bare.model.layers[layer].mlp.down_proj.register_forward_pre_hook(pre))
        try:
            with torch.no_grad():
                logits = bare(input_ids=ids, attention_mask=inputs["attention_mask"]).logits
        finally:
            for h in handles:
                h.remove()
        nll = -logits[:, :-1].double().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        is_code = torch.tensor([[int(t) in codes for t in row] for row in ids])
        is_special = torch.tensor([[int(t) in special for t in row] for row in ids])
        kinds = {"image": is_code & real, "text": ~is_code & ~is_special & real}
        for name, kind in kinds.items():
            target = kind[:, 1:] & real[:, :-1]
            out[name].append((nll * target).sum(1) / target.sum(1))
    return {k: torch.cat(v) for k, v in out.items()}


def _selected(model: HookedMLLM, masked: str) -> list[tuple[int, int]]:
    probs = activation_probabilities(model, batches(model, make_captions(N, "train", 0), answers=True))
    return top_difference(probs, 2.0)[masked]


def test_nll_increase_equals_a_bare_forward_with_the_neurons_zeroed(anygpt: HookedMLLM, bare) -> None:  # noqa: ANN001
    held_out = batches(anygpt, make_captions(N, "test", 0), answers=True)
    many = [(l, j) for l in range(anygpt.cfg.n_layers) for j in range(0, anygpt.cfg.d_mlp, 5)]
    clean, masked = _bare_rows(anygpt, bare, "test", []), _bare_rows(anygpt, bare, "test", many)
    for modality in ("image", "text"):
        assert torch.allclose(row_nll(anygpt, held_out, modality), clean[modality], atol=1e-5)
        inc = nll_increase(anygpt, held_out, modality, many)
        assert inc.shape == (N,) and inc.abs().min() > 1e-3  # every caption is hurt by 20 % of the neurons
        assert torch.allclose(inc, masked[modality] - clean[modality], atol=1e-5)
        assert not nll_increase(anygpt, held_out, modality, []).any()
    assert_clean(anygpt)


def test_masking_text_neurons_measures_the_text_diagonal(anygpt: HookedMLLM, bare) -> None:  # noqa: ANN001
    before = _weights(anygpt)
    f = masking(anygpt, "text", "top2", n=N, draws=20)
    neurons = _selected(anygpt, "text")
    assert f.details["n_neurons"] == len(neurons) and f.name == "masking text neurons (top 2%) raises text log-ppl"
    clean = _bare_rows(anygpt, bare, "test", [])
    ours = _bare_rows(anygpt, bare, "test", neurons)
    v = f.verdict
    assert v.effect.value == pytest.approx(float((ours["text"] - clean["text"]).mean()), abs=1e-5)
    assert f.details["other_increase"] == pytest.approx(float((ours["image"] - clean["image"]).mean()), abs=1e-5)
    for s in (0, 13):
        rand = _bare_rows(anygpt, bare, "test", random_neurons(neurons, anygpt.cfg.d_mlp, s))
        assert float(v.control.draws[s]) == pytest.approx(float((rand["text"] - clean["text"]).mean()), abs=1e-5)
    assert len(v.control.draws) == 20 and v.agrees == (v.effect.lo > v.control.interval()[1])
    assert_clean(anygpt)
    assert all(torch.equal(w, before[k]) for k, w in anygpt.hf_model.state_dict().items())


@pytest.mark.parametrize("masked", ["image", "text"])
def test_masking_specificity_is_the_paired_own_minus_other_increase_against_random_neurons(
    anygpt: HookedMLLM,
    bare,  # noqa: ANN001
    masked: str,
) -> None:
    other = {"image": "text", "text": "image"}[masked]
    before = _weights(anygpt)
    f = masking_specificity(anygpt, masked, "top2", n=N, draws=20)
    neurons = _selected(anygpt, masked)
    clean = _bare_rows(anygpt, bare, "test", [])

    def gap(ns: list[tuple[int, int]]) -> torch.Tensor:
        rows = _bare_rows(anygpt, bare, "test", ns)
        return (rows[masked] - clean[masked]) - (rows[other] - clean[other])

    ours = _bare_rows(anygpt, bare, "test", neurons)
    v = f.verdict
    assert f.details["n_neurons"] == len(neurons) == round(anygpt.cfg.n_layers * anygpt.cfg.d_mlp * 0.02)
    assert f.details["own_increase"] == pytest.approx(float((ours[masked] - clean[masked]).mean()), abs=1e-5)
    assert f.details["other_increase"] == pytest.approx(float((ours[other] - clean[other]).mean()), abs=1e-5)
    assert v.effect.value == pytest.approx(float(gap(neurons).mean()), abs=1e-5) and v.effect.n == N
    for s in (0, 7):
        assert float(v.control.draws[s]) == pytest.approx(
            float(gap(random_neurons(neurons, anygpt.cfg.d_mlp, s)).mean()), abs=1e-5
        )
    assert len(v.control.draws) == 20 and v.agrees == (v.effect.lo > v.control.interval()[1])
    assert v.effect.lo <= v.effect.value <= v.effect.hi and f"more than {other}" in f.name
    assert (f"| {'yes' if f.agrees else 'no'} |") in f.row() and "20 draws" in f.row()
    assert_clean(anygpt)
    assert all(torch.equal(w, before[k]) for k, w in anygpt.hf_model.state_dict().items())


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"n": 5}, "n=5"),
        ({"n": True}, "n=True"),
        ({"draws": 5}, "20 random draws"),
        ({"selector": "top3"}, "selector="),
        ({"masked": "audio"}, "modality='audio'"),
        ({"masked": "none"}, "give 'image' or 'text'"),
    ],
)
@pytest.mark.parametrize("finding", [masking, masking_specificity])
def test_masking_findings_misuse(anygpt: HookedMLLM, finding, kw, match) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        finding(anygpt, **{"n": N, **kw})
    assert_clean(anygpt)
