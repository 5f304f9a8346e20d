"""Attention flow per layer and knockout per window (findings/flow.py) on toy-llava, against a bare HF
eager forward: flow = a hand sum of its output_attentions; knockout = its logits under a 4-D additive mask."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from hooks_mm.analysis.erasure import accuracy, choice_score
from hooks_mm.analysis.findings import flow
from hooks_mm.analysis.findings.common import image_questions
from hooks_mm.analysis.findings.flow import (
    EDGES,
    QUESTION,
    attention_knockout,
    control_keys,
    flow_by_layer,
    knockout_by_window,
    knockout_spec,
    row_flow,
)
from hooks_mm.interventions import AttentionKnockout
from hooks_mm.model import HookedMLLM
from hooks_mm.selectors import Image, Last
from hooks_mm.tasks.evaluate import word_ids
from hooks_mm.tasks.shapes import ANSWERS, make_qa
from hooks_mm.zoo.organisms import DIR
from tests.conftest import assert_clean, pair_for


@pytest.fixture(scope="module")
def model() -> HookedMLLM:
    return HookedMLLM.from_pretrained("toy-llava")


@pytest.fixture(scope="module")
def bare() -> LlavaForConditionalGeneration:
    return LlavaForConditionalGeneration.from_pretrained(
        os.path.join(DIR, "toy-llava"), attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def held_out(model: HookedMLLM) -> tuple[dict, torch.Tensor]:
    qa, answers = image_questions(model, 10, "test", 0)
    return qa[0], answers[0]


def hf(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "pixel_values")}


def hand_masks(bare: LlavaForConditionalGeneration, inputs: dict) -> tuple[torch.Tensor, ...]:
    """From the token ids alone: image, question (text after the image but the last) and last positions."""
    ids, real = inputs["input_ids"], inputs["attention_mask"].bool()
    s = ids.shape[1]
    image = ids == bare.config.image_token_id
    pos = torch.arange(s)[None].expand_as(ids)
    after = pos > torch.where(image, pos, -1).max(1).values[:, None]
    last = pos == s - 1  # left padding: the last column is every row's last real position
    question = after & real & ~last & (ids != bare.config.text_config.bos_token_id)
    return real, image, question, last


def additive(real: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """A 4-D additive mask [b, 1, q, k]: causal over real keys minus ``block`` [b, q, k] (padding sees itself)."""
    s = real.shape[1]
    ok = real[:, None, :] & torch.ones(s, s, dtype=torch.bool).tril()[None] & ~block
    ok = ok | torch.eye(s, dtype=torch.bool)[None] & ~real[:, :, None]
    return torch.zeros(ok.shape).masked_fill(~ok, torch.finfo(torch.float32).min)[:, None]


def test_flow_equals_hand_sum_of_hf_attentions(model: HookedMLLM, bare, held_out) -> None:  # noqa: ANN001
    inputs, _ = held_out
    with torch.no_grad():
        att = bare(**hf(inputs), output_attentions=True).attentions
    real, image, question, last = hand_masks(bare, inputs)
    s = real.shape[1]
    seen = real[:, None, :] & torch.ones(s, s, dtype=torch.bool).tril()[None]
    table = flow_by_layer(model, n=10)
    for name, q, sel in (("question", question, QUESTION), ("last", last, Last())):
        mass, share = row_flow(model, inputs, sel)
        hand_share = ((seen & image[:, None]).sum(-1).double() / seen.sum(-1).clamp(min=1) * q).sum(-1) / q.sum(-1)
        for l, a in enumerate(att):
            hand = ((a.double().mean(1) * image[:, None]).sum(-1) * q).sum(-1) / q.sum(-1)  # [b]
            assert torch.allclose(mass[:, l], hand, atol=1e-5), (name, l)
            assert torch.allclose(share[:, l], hand_share, atol=1e-9)
            assert table[name][l] == pytest.approx(float(hand.mean()), abs=1e-5)
            assert table[f"{name}_share"][l] == pytest.approx(float(hand_share.mean()), abs=1e-9)
    assert (table["question_lo"] <= table["question"]).all() and (table["question"] <= table["question_hi"]).all()
    assert_clean(model)


@pytest.mark.parametrize("edge", sorted(EDGES))
def test_control_keys_are_earlier_real_non_image_and_never_the_query(model: HookedMLLM, held_out, edge) -> None:  # noqa: ANN001
    inputs, _ = held_out
    layout = model.prepare(inputs).layout
    queries, keys = EDGES[edge]
    real, image = layout.select(~Image() & ~Last() | Last()), layout.select(Image())
    pairs = control_keys(layout, queries, keys, seed=3)
    assert sum(q.sum() for q, _ in pairs) == layout.select(queries).sum()  # every query, once
    pos = torch.arange(real.shape[1])
    for q, k in pairs:
        assert int(q.sum(-1).max()) <= 1
        for r in q.any(-1).nonzero().flatten().tolist():
            p = int(q[r].nonzero())
            ks = k[r].nonzero().flatten()
            assert (ks < p).all() and not image[r, ks].any() and real[r, ks].all()  # never itself, never later
            available = int((real[r] & ~image[r] & (pos < p)).sum())
            assert len(ks) == min(int(image[r, :p].sum()), available)
    if edge == "last->image":
        assert all(int(k[r].sum()) == 9 for q, k in pairs for r in range(k.shape[0]))
    other = control_keys(layout, queries, keys, seed=4)
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(pairs, other))  # seeded draws differ


@pytest.mark.parametrize("edge", sorted(EDGES))
def test_knockouts_equal_hf_forward_with_4d_mask(model: HookedMLLM, bare, held_out, edge) -> None:  # noqa: ANN001
    inputs, _ = held_out
    layout = model.prepare(inputs).layout
    real, image, question, last = hand_masks(bare, inputs)
    queries, keys = EDGES[edge]
    layers = list(range(model.cfg.n_layers))  # a 4-D mask reaches every layer
    hand_q = last if edge == "last->image" else question
    pairs = control_keys(layout, queries, keys, seed=1)
    control = torch.zeros(real.shape[0], real.shape[1], real.shape[1], dtype=torch.bool)
    for q, k in pairs:
        control |= q[:, :, None] & k[:, None, :]
    for spec, block in (
        (AttentionKnockout(layers, queries, keys), hand_q[:, :, None] & image[:, None, :]),
        (knockout_spec(layers, pairs), control),
    ):
        ours = model.run_with_interventions(inputs, spec)[:, -1]
        with torch.no_grad():
            ref = bare(**{**hf(inputs), "attention_mask": additive(real, block)}).logits[:, -1]
            clean = bare(**hf(inputs)).logits[:, -1]
        assert (ours - ref).abs().max() <= 1e-4
        assert (ours - clean).abs().max() > 1e-2  # the knockout changes the answer logits
    assert_clean(model)


def test_knockout_only_inside_the_window(model: HookedMLLM, held_out) -> None:  # noqa: ANN001
    inputs, _ = held_out
    batch = model.prepare(inputs)
    pairs = control_keys(batch.layout, QUESTION, Image(), seed=0)
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    got: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, hook) -> None:  # noqa: ANN001
        got[hook.name] = x.detach().clone()

    model.run_with_hooks(
        batch, fwd_hooks=[*knockout_spec([1], pairs).compile(model, batch), *((n, keep) for n in names)]
    )
    _, clean = model.run_with_cache(batch, names_filter=names)
    block = sum(q[:, :, None] & k[:, None, :] for q, k in pairs).bool()[:, None].expand_as(got[names[1]])
    assert got[names[1]][block].abs().max() == 0  # knocked edges carry no attention in the window
    assert clean[names[1]][block].abs().min() > 0
    assert torch.equal(got[names[0]], clean[names[0]])  # before the window: untouched
    assert got[names[2]][block].abs().min() > 0  # after it: those edges attend again
    assert_clean(model)


def test_knockout_by_window_drop_equals_hand_accuracy(model: HookedMLLM, bare, held_out) -> None:  # noqa: ANN001
    inputs, answers = held_out
    weights = {k: v.clone() for k, v in model.hf_model.state_dict().items()}
    n_layers = model.cfg.n_layers
    table = knockout_by_window(model, n=10, window=n_layers, draws=20)
    assert list(table["layers"]) == [f"0-{n_layers - 1}"] * 2 and set(table["edge"]) == set(EDGES)
    real, image, question, last = hand_masks(bare, inputs)
    opts = word_ids(model, ANSWERS)
    with torch.no_grad():
        clean = bare(**hf(inputs)).logits[:, -1, opts].argmax(-1) == answers
        for edge, q in (("last->image", last), ("question->image", question)):
            mask = additive(real, q[:, :, None] & image[:, None, :])
            knocked = bare(**{**hf(inputs), "attention_mask": mask}).logits[:, -1, opts].argmax(-1) == answers
            row = table[table["edge"] == edge].iloc[0]
            assert row["drop"] == pytest.approx(float((clean.double() - knocked.double()).mean()), abs=1e-12)
            assert row["control_lo"] <= row["control"] <= row["control_hi"]
            assert row["agrees"] == (row["drop_lo"] > row["control_hi"])
    assert table.loc[table["edge"] == "last->image", "control_keys"].item() == 9
    assert all(torch.equal(v, model.hf_model.state_dict()[k]) for k, v in weights.items())
    assert_clean(model)


def test_windows_slide_by_one(model: HookedMLLM) -> None:
    table = knockout_by_window(model, n=10, window=2, draws=20)
    assert list(table["layers"]) == ["0-1", "0-1", "1-2", "1-2"]


def test_attention_knockout_finding_measures_on_held_out(model: HookedMLLM) -> None:
    f = attention_knockout(model, n=20, draws=20, window=1)  # n=20: train and test choose different windows
    first = int(f.details["first_layer"])
    row = knockout_by_window(model, n=20, window=1, draws=20)
    row = row[(row["layers"] == f"{first}-{first}") & (row["edge"] == "last->image")].iloc[0]
    assert f.verdict.effect.value == pytest.approx(row["drop"]) and f.verdict.effect.n == 20
    assert len(f.verdict.control.draws) == 20 and f.verdict.control.mean == pytest.approx(row["control"])
    assert "|" in f.row()
    cal, cal_answers = image_questions(model, 20, "train", 0)  # the window is chosen on the training split
    score = choice_score(word_ids(model, ANSWERS).tolist())
    clean = accuracy(model, cal, cal_answers, score)
    drops = [clean - accuracy(model, cal, cal_answers, score, AttentionKnockout(l, Last(), Image())) for l in range(3)]
    assert f.details["calibration_drop"] == pytest.approx(max(drops)) and first == drops.index(max(drops))
    assert_clean(model)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: knockout_by_window(m, n=10, window=0), "window=0"),
        (lambda m: knockout_by_window(m, n=10, window=m.cfg.n_layers + 1), "window=4"),
        (lambda m: knockout_by_window(m, n=10, window=True), "window=True"),
        (lambda m: knockout_by_window(m, n=9), "n=9"),
        (lambda m: knockout_by_window(m, n=10, draws=19), "draws=19"),
        (lambda m: flow_by_layer(m, n=5), "n=5"),
        (lambda m: attention_knockout(m, n=10, edge="image->last"), "edge="),
        (lambda m: attention_knockout(m, n=10, window=9), "window=9"),
    ],
)
def test_misuse_raises_before_hooks(model: HookedMLLM, call, match) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        call(model)
    assert_clean(model)


def test_model_without_image_positions_is_refused(model: HookedMLLM, monkeypatch) -> None:  # noqa: ANN001
    text_only = pair_for("llama").model  # no image processor: refused while encoding, before any hook
    with pytest.raises(ValueError, match="images given would be dropped"):
        flow_by_layer(text_only, n=10)
    assert_clean(text_only)

    def no_images(m: HookedMLLM, n: int, split: str, seed: int) -> tuple[list, list]:
        qa = [e for e in make_qa(3 * n, split, seed) if e.needs_image][:n]
        return [m.to_inputs([e.prompt.replace("<image>", "") for e in qa], chat=True)], [
            torch.tensor([ANSWERS.index(e.answer) for e in qa])
        ]

    monkeypatch.setattr(flow, "image_questions", no_images)  # the same prompts, no image in the sequence
    for call in (flow_by_layer, knockout_by_window, attention_knockout):
        with pytest.raises(ValueError, match="hold no image positions in the sequence"):
            call(model, n=10)
        assert_clean(model)
