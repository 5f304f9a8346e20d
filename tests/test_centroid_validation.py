"""Centroid banks and the erasure analyses: the depth convention, banks of another model,
bank / spec equality, and the inputs that used to give a silent wrong number (answers as
token ids, wrong lengths, rows without the erased positions, tuning on the reported batch)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import assert_clean, pair_for

from hooks_mm import After, Image, Text
from hooks_mm.analysis import accuracy, attention_flow, choice_score, erasure_cost, tccd_logits, tune_tccd
from hooks_mm.interventions import CentroidBank, CentroidReplacement, Intervention
from hooks_mm.interventions.centroid import default_layer
from hooks_mm.selectors import Last
from hooks_mm.tasks.evaluate import encode, word_ids
from hooks_mm.tasks.shapes import ANSWERS, make_qa
from hooks_mm.zoo import toy_image


def last_logits(model, inputs, spec=None):  # noqa: ANN001, ANN201
    with torch.no_grad():
        out = model(inputs) if spec is None else model.run_with_interventions(inputs, spec)
    idx = model.layout(inputs).indices(Last())[:, 0]
    return out[torch.arange(len(idx)), idx]


def test_default_depth_is_the_input_of_block_round_f_n() -> None:
    for n in range(1, 40):
        for positions, f in ((After(Image()), 0.4), (Image(), 0.5)):
            layer = default_layer(n, positions)
            assert layer == min(n - 1, math.floor(f * n + 0.5)) and 0 <= layer <= n - 1
    assert (default_layer(3, After(Image())), default_layer(3, Image())) == (1, 2)
    assert (default_layer(28, After(Image())), default_layer(28, Image())) == (11, 14)


def test_the_default_visual_bank_reaches_the_answer_and_reads_hidden_states_l() -> None:
    """On a 2-block model the visual bank used to be the last block's output: erasing the
    image there changed the last-position logits by exactly 0."""
    p = pair_for("llava")
    bank = CentroidBank.fit(p.model, [p.inputs], positions=Image(), k=1, n_iter=5)
    n = p.model.cfg.n_layers
    assert (bank.layer, bank.hook) == (default_layer(n, Image()), "hook_resid_pre")
    _, cache = p.model.run_with_cache(p.inputs, names_filter=[bank.hook_name])
    with torch.no_grad():
        hs = p.bare(**p.inputs, output_hidden_states=True).hidden_states[bank.layer]  # after `layer` blocks
    assert torch.allclose(cache[bank.hook_name][p.real], hs[p.real], atol=1e-5)
    img = p.model.layout(p.inputs).select(Image())
    assert torch.allclose(bank.centroids[0], hs[img].mean(0), atol=1e-4)  # K = 1: the mean
    moved = last_logits(p.model, p.inputs, CentroidReplacement(bank, Image(), 0.0)) - last_logits(p.model, p.inputs)
    assert moved.abs().max().item() > 1e-3
    assert_clean(p.model)


def test_a_bank_after_the_last_attention_warns_and_erasure_refuses_it() -> None:
    p = pair_for("llava")
    last = p.model.cfg.n_layers - 1
    with pytest.warns(UserWarning, match="no attention follows"):
        bank = CentroidBank.fit(p.model, [p.inputs], layer=last, hook="hook_resid_post", positions=Image(), k=2)
    spec = CentroidReplacement(bank, Image(), 0.0)
    with pytest.warns(UserWarning, match="no attention follows"):
        moved = last_logits(p.model, p.inputs, spec) - last_logits(p.model, p.inputs)
    assert moved.abs().max().item() == 0.0  # why it is refused: the answer cannot move
    answers = [last_logits(p.model, p.inputs)[:, [5, 9]].argmax(-1)]
    with pytest.raises(ValueError, match=r"cannot change the last position of rows \[0, 1\].*earlier layer"):
        accuracy(p.model, [p.inputs], answers, choice_score([5, 9]), spec)
    assert_clean(p.model)


def test_rows_without_the_erased_positions_are_refused_not_counted_as_zero_cost() -> None:
    p = pair_for("toy-llava")
    mixed = p.model.to_inputs(
        ["<image> what colour is the circle ?", "there is a red circle . what colour is the circle ?"],
        images=[toy_image(1)],
        chat=True,
    )
    banks = {
        pos: CentroidBank.fit(p.model, [p.inputs], positions=pos, k=2, n_iter=5) for pos in (After(Image()), Image())
    }
    score, answers = choice_score([5, 9]), [torch.tensor([0, 1])]
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        erasure_cost(p.model, [mixed], answers, score, banks[After(Image())], banks[Image()])
    with pytest.raises(ValueError, match="fitted at positions .*text_bank"):  # banks swapped
        erasure_cost(p.model, [p.inputs], [torch.zeros(4, dtype=torch.long)], score, banks[Image()], banks[Image()])
    # attention flow: the text-only row does not add a flow of 0
    both = p.model.to_inputs(["<image> what colour is the circle ?"], images=[toy_image(1)], chat=True)
    assert attention_flow(p.model, mixed)[0].item() == pytest.approx(attention_flow(p.model, both)[0].item(), rel=1e-4)
    assert_clean(p.model)


def test_a_bank_of_another_model_or_layer_is_refused_before_any_hook() -> None:
    llava, qwen = pair_for("llava"), pair_for("qwen2_vl")
    assert llava.model.cfg.d_model == qwen.model.cfg.d_model  # same width: only the identity tells
    bank = CentroidBank.fit(qwen.model, [qwen.inputs], positions=Text(), k=2, n_iter=5)
    assert bank.meta["architecture"] == "Qwen2VLForConditionalGeneration" and bank.meta["n_layers"] == 2
    with pytest.raises(
        ValueError, match="fitted on architecture=Qwen2VL.*model is architecture=Llava.*CentroidBank.fit"
    ):
        llava.model.run_with_interventions(llava.inputs, CentroidReplacement(bank, Text(), 0.0))
    deep = CentroidBank(bank.centroids, layer=5)
    with pytest.raises(IndexError, match="layer 5, out of range for a 2-layer model"):
        qwen.model.run_with_interventions(qwen.inputs, CentroidReplacement(deep, Text(), 0.0))
    with pytest.raises(IndexError, match="layer 7 out of range"):
        CentroidBank.fit(qwen.model, [qwen.inputs], layer=7, positions=Text(), k=2)
    assert_clean(llava.model) and assert_clean(qwen.model)


def test_bank_and_spec_equality_and_the_saved_identity(tmp_path) -> None:  # noqa: ANN001
    p = pair_for("llava")
    bank = CentroidBank.fit(p.model, [p.inputs], positions=Text(), k=3, n_iter=5)
    bank.save(str(tmp_path / "bank"))
    saved = json.loads((tmp_path / "bank" / "bank.json").read_text())
    assert {k: saved[k] for k in ("architecture", "n_layers", "d_model", "layer", "hook")} == {
        "architecture": "LlavaForConditionalGeneration",
        "n_layers": 2,
        "d_model": 64,
        "layer": bank.layer,
        "hook": "hook_resid_pre",
    }
    loaded = CentroidBank.load(str(tmp_path / "bank"))
    assert loaded == bank and not (loaded != bank)
    spec = CentroidReplacement(loaded, Text(), 0.4)
    assert Intervention.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    other = CentroidBank(bank.centroids + 1e-3, bank.layer, bank.hook, dict(bank.meta))
    assert other != bank and CentroidReplacement(other, Text(), 0.4) != spec
    assert CentroidBank(bank.centroids, bank.layer + 1, bank.hook, dict(bank.meta)) != bank
    written = json.loads(json.dumps(spec.to_dict()))
    other.save(str(tmp_path / "bank"))  # another bank at the same path: the spec must not pick it up
    with pytest.raises(ValueError, match="changed since this spec was written"):
        Intervention.from_dict(written)
    with pytest.raises(FileNotFoundError, match="no centroid bank at"):
        CentroidBank.load(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match=r"float tensor \[k, d_model\]"):
        CentroidBank(torch.zeros(5), layer=0)


def test_accuracy_refuses_token_ids_wrong_lengths_and_wrong_score_shapes() -> None:
    p = pair_for("llava")
    options = [5, 9, 11]
    score = choice_score(options)
    best = last_logits(p.model, p.inputs)[:, options].argmax(-1)
    assert accuracy(p.model, [p.inputs], [best], score) == 1.0
    token_ids = torch.tensor([options[i] for i in best])  # what the issue passed: 0.0 before
    with pytest.raises(ValueError, match=r"option indices 0\.\.2, not token ids: pass options\.index"):
        accuracy(p.model, [p.inputs], [token_ids], score)
    with pytest.raises(ValueError, match="integer option indices"):
        accuracy(p.model, [p.inputs], [best.float()], score)
    with pytest.raises(ValueError, match=r"1 batches and 2 answer tensors"):
        accuracy(p.model, [p.inputs], [best, best], score)
    with pytest.raises(ValueError, match=r"shape \(1,\), but batch 0 has 2 rows"):
        accuracy(p.model, [p.inputs], [best[:1]], score)
    with pytest.raises(ValueError, match=r"score returned shape \(\)"):
        accuracy(p.model, [p.inputs], [best], lambda logits, ans: (logits.argmax(-1) == ans).float().mean())
    assert_clean(p.model)


def test_tune_tccd_selects_on_dev_and_reports_the_held_out_split() -> None:
    p = pair_for("toy-llava")
    model = p.model
    qa = [e for e in make_qa(24, "test", 3) if e.needs_image]
    dev, test = [encode(model, qa[:8])], [encode(model, qa[8:16])]
    answers = lambda xs: [torch.tensor([ANSWERS.index(e.answer) for e in xs])]  # noqa: E731
    score = choice_score(word_ids(model, ANSWERS).tolist())
    bank = CentroidBank.fit(model, dev + test, positions=After(Image()), k=4, n_iter=5)
    out = tune_tccd(
        model, dev, answers(qa[:8]), score, bank, test, answers(qa[8:16]), alphas=(0.5, 2.0), a_interps=(0.0, 0.8)
    )
    assert out["dev_accuracy"] == max(out["grid"].values()) == out["grid"][(out["alpha"], out["a_interp"])]
    expected = accuracy(
        model,
        test,
        answers(qa[8:16]),
        score,
        logits_fn=lambda b: tccd_logits(model, b, bank, out["alpha"], out["a_interp"]),
    )
    assert out["test_accuracy"] == expected and out["test_clean"] == accuracy(model, test, answers(qa[8:16]), score)
    assert out["test_gain"] == pytest.approx(out["test_accuracy"] - out["test_clean"])
    with pytest.raises(ValueError, match="test batch 0 repeats dev batch 0"):
        tune_tccd(model, dev, answers(qa[:8]), score, bank, dev, answers(qa[:8]), alphas=(1.0,), a_interps=(0.4,))
    assert_clean(model)


def test_a_nan_a_interp_and_unpaired_bias_inputs_are_refused() -> None:
    from hooks_mm.analysis import text_centric_bias

    p = pair_for("llava")
    bank = CentroidBank.fit(p.model, [p.inputs], positions=Text(), k=2, n_iter=5)
    with pytest.raises(ValueError, match="a_interp must be a finite number"):
        p.model.run_with_interventions(p.inputs, CentroidReplacement(bank, Text(), float("nan")))
    anygpt = pair_for("anygpt")
    with pytest.raises(ValueError, match="2 texts and 1 images: give one image per text"):
        text_centric_bias(anygpt.model, ["a red square", "a blue circle"], [toy_image(1)])
    assert_clean(p.model) and assert_clean(anygpt.model)
