"""Analyses: each metric against an independent computation on small hand-made inputs, and
every analysis run on three families."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_clean, pair_for

from hooks_mm import After, Image, Last, Modality
from hooks_mm.analysis import (
    activation_probabilities,
    attention_flow,
    cross_modal_cosine,
    drift,
    gak_similarity,
    global_cosine,
    lape,
    last_token_heatmaps,
    log_gak,
    max_med_sim,
    neuron_masking_matrix,
    pooled_embeddings,
    sequence_elements,
    soft_dtw,
    token_similarity,
    top_difference,
)
from hooks_mm.analysis.neurons import ActivationProbabilities
from hooks_mm.analysis.sequence import all_alignments

RUN_EVERYWHERE = ["llava", "qwen2_vl", "anygpt"]


@pytest.mark.parametrize("n, m", [(1, 1), (2, 3), (3, 4), (4, 4)])
def test_gak_and_soft_dtw_equal_brute_force_sums_over_alignments(n: int, m: int) -> None:
    g = torch.Generator().manual_seed(n * 10 + m)
    x, y = torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randn(m, 5, generator=g, dtype=torch.float64)
    paths = all_alignments(n, m)
    delannoy = [[1, 1, 1, 1], [1, 3, 5, 7], [1, 5, 13, 25], [1, 7, 25, 63]]
    assert len(paths) == delannoy[n - 1][m - 1]
    sigma, gamma = 1.3, 0.25
    d = torch.cdist(x, y) ** 2 / (2 * sigma**2)
    k = torch.exp(-d - torch.log(2 - torch.exp(-d)))
    brute = sum(math.prod(k[i, j].item() for i, j in p) for p in paths)
    assert log_gak(x, y, sigma).item() == pytest.approx(math.log(brute), rel=1e-9)
    c = 1 - torch.nn.functional.cosine_similarity(x[:, None], y[None], dim=-1)
    brute_sdtw = -gamma * math.log(sum(math.exp(-sum(c[i, j].item() for i, j in p) / gamma) for p in paths))
    assert soft_dtw(x, y, gamma).item() == pytest.approx(brute_sdtw, rel=1e-9)
    assert gak_similarity(x, x, sigma).item() == pytest.approx(1.0)
    assert 0 < gak_similarity(x, y, sigma).item() <= 1
    with pytest.raises(ValueError, match="sigma"):
        log_gak(x, y, sigma=0.0)


def test_lape_finds_a_planted_neuron_and_its_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.rand(2, 100, 2, generator=g) * 0.5
    p[1, 7] = torch.tensor([0.001, 0.99])  # fires on image tokens only
    p[0, 3] = torch.tensor([0.98, 0.97])  # fires on both: high entropy
    probs = ActivationProbabilities(p, ("text", "image"), {"text": 10, "image": 10})
    found = lape(probs, top_rate=0.005)
    q = p[1, 7] / p[1, 7].sum()
    assert found.entropy[1, 7].item() == pytest.approx(float(-(q * q.log()).sum()), abs=1e-6)
    assert (1, 7) in found.selected and (1, 7) in found.specific["image"] and (1, 7) not in found.specific["text"]
    assert (0, 3) not in found.selected
    assert top_difference(probs, top_percent=0.5)["image"][0] == (1, 7)


def test_activation_probabilities_count_positive_activations_per_modality() -> None:
    p = pair_for("llava")
    probs = activation_probabilities(p.model, [p.inputs], layers=[1])
    _, cache = p.model.run_with_cache(p.inputs, names_filter="blocks.1.ln2.hook_normalized")
    mlp = p.model.decoder_layers[1].mlp  # the gate activation act_fn(gate_proj(x)), as published LAPE counts it
    with torch.no_grad():
        gate = mlp.act_fn(mlp.gate_proj(cache["blocks.1.ln2.hook_normalized"]))
    layout = p.model.layout(p.inputs)
    img = layout.modality == Modality.IMAGE
    expected = (gate[img] > 0).float().mean(0)
    assert torch.allclose(probs.probs[0, :, 1], expected, atol=1e-6)
    assert probs.tokens["image"] == int(img.sum())


def test_max_med_sim_and_cosines_on_known_vectors() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    mx, med = max_med_sim(x, y)
    assert mx.item() == pytest.approx(1.0) and med.item() == pytest.approx(1 / math.sqrt(2))
    a = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # 2 examples, 1 layer
    b = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    mean, std = cross_modal_cosine(a, b)
    assert mean.item() == pytest.approx(0.5)  # pairs: 1, 1, 0, 0
    mean_ii, _ = cross_modal_cosine(a, a, exclude_diagonal=True)
    assert mean_ii.item() == pytest.approx(0.0)
    assert global_cosine(a, b).item() == pytest.approx(1 / math.sqrt(2))
    e = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    assert drift(e, 1).tolist() == pytest.approx([1 / math.sqrt(2)] * 2)
    assert drift(e, 2).tolist() == pytest.approx([0.0])


def test_attention_flow_equals_the_pattern_sum() -> None:
    p = pair_for("llava")
    flow = attention_flow(p.model, p.inputs)
    _, cache = p.model.run_with_cache(p.inputs, names_filter=lambda n: n.endswith("hook_pattern"))
    layout = p.model.layout(p.inputs)
    q, k = layout.select(After(Image())), layout.select(Image())
    for l in range(p.model.cfg.n_layers):
        a = cache[f"blocks.{l}.attn.hook_pattern"].mean(1)
        manual = torch.stack([a[r, i][k[r]].sum() for r in range(2) for i in q[r].nonzero().flatten()]).mean()
        assert flow[l].item() == pytest.approx(manual.item(), abs=1e-6)
    maps = last_token_heatmaps(p.model, p.inputs, layer=1, row=0)
    assert len(maps) == 2 and maps[0].shape == (4, 4)  # row 0 holds two 4x4 images


@pytest.mark.parametrize("family", ["mllama", "qwen3_5"])
def test_attention_flow_is_indexed_by_layer_number(family: str) -> None:
    """Cross-attention (Mllama) and linear-attention (Qwen3.5) layers have no self-attention pattern: their
    entries are NaN, and every other entry is the flow of the layer of that number."""
    p = pair_for(family)
    flow = attention_flow(p.model, p.inputs, queries=Last())
    assert flow.shape == (p.model.cfg.n_layers,)
    layout = p.model.layout(p.inputs)
    q, k = layout.select(Last()), layout.select(Image())
    q = q & k.any(-1, keepdim=True)
    with_attn = [l for l in range(p.model.cfg.n_layers) if f"blocks.{l}.attn.hook_pattern" in p.model.hook_dict]
    assert 0 < len(with_attn) < p.model.cfg.n_layers
    _, cache = p.model.run_with_cache(p.inputs, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    for l in range(p.model.cfg.n_layers):
        if l not in with_attn:
            assert torch.isnan(flow[l])
            continue
        a = cache[f"blocks.{l}.attn.hook_pattern"].mean(1)
        manual = torch.stack([(a[r, i] * k[r]).sum() for r, i in q.nonzero().tolist()]).mean()
        assert flow[l].item() == pytest.approx(manual.item(), abs=1e-6)


@pytest.mark.parametrize("family", RUN_EVERYWHERE)
def test_every_analysis_runs(family: str) -> None:
    p = pair_for(family)
    batches = [p.inputs]
    probs = activation_probabilities(p.model, batches)
    found = lape(probs, top_rate=0.02)
    matrix = neuron_masking_matrix(p.model, batches, found.specific)
    assert list(matrix.index) == ["none", "text", "image"] and (matrix.to_numpy() > 0).all()
    emb = pooled_embeddings(p.model, batches)
    assert emb.image.shape[1] == p.model.cfg.n_layers
    mean, _ = cross_modal_cosine(emb.image, emb.text)
    assert mean.shape == (p.model.cfg.n_layers,)
    mx, med = token_similarity(p.model, p.inputs, layer=1)
    assert (mx >= med).all()
    assert attention_flow(p.model, p.inputs).shape == (p.model.cfg.n_layers,)
    elems = sequence_elements(p.model, p.inputs, layer=1)
    assert len(elems) == 2 and all(e.shape[0] >= 2 for e in elems)
    assert 0 < gak_similarity(elems[0].double(), elems[1].double(), sigma=5.0).item() <= 1


def test_erasure_tccd_vcd_identities() -> None:
    from hooks_mm.analysis.erasure import accuracy, choice_score, diffusion_noise, erasure_cost, tccd_logits, vcd_logits
    from hooks_mm.interventions import CentroidBank

    score = choice_score([5, 9])
    last = torch.tensor([[0.0] * 5 + [2.0] + [0.0] * 3 + [1.0], [0.0] * 5 + [1.0] + [0.0] * 3 + [3.0]])
    assert score(last, torch.tensor([0, 0])).tolist() == [1.0, 0.0]

    p = pair_for("llava")
    batches = [p.inputs]
    bank_t = CentroidBank.fit(p.model, batches * 3, positions=After(Image()), k=4, n_iter=5)
    bank_v = CentroidBank.fit(p.model, batches, positions=Image(), k=4, n_iter=5)
    with torch.no_grad():
        clean_last = p.model(p.inputs)[:, -1]
    answers = [clean_last[:, [5, 9]].argmax(-1)]
    assert accuracy(p.model, batches, answers, score) == 1.0
    cost = erasure_cost(p.model, batches, answers, score, bank_t, bank_v, a_interp=1.0)
    assert cost["text_cost"] == 0.0 and cost["visual_cost"] == 0.0
    assert torch.allclose(tccd_logits(p.model, p.inputs, bank_t, alpha=0.0), clean_last, atol=1e-5)
    assert torch.allclose(tccd_logits(p.model, p.inputs, bank_t, alpha=3.0, a_interp=1.0), clean_last, atol=1e-4)
    x = torch.zeros(4000)
    abar = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(500))
    assert diffusion_noise(x, t=500).std().item() == pytest.approx(math.sqrt(1 - abar), rel=0.05)
    v = vcd_logits(p.model, p.inputs, alpha=0.0, beta=0.1)
    lp = clean_last.log_softmax(-1)
    keep = lp >= math.log(0.1) + lp.max(-1, keepdim=True).values
    assert torch.allclose(v[keep], lp[keep], atol=1e-5) and torch.isinf(v[~keep]).all()


def test_text_centric_bias_probe_on_a_discrete_model() -> None:
    from hooks_mm.analysis.erasure import text_centric_bias
    from hooks_mm.zoo import toy_image

    p = pair_for("anygpt")
    texts, images = ["a red square", "a blue circle"], [toy_image(1), toy_image(2)]
    out = text_centric_bias(p.model, texts, images)
    # independent: image-token NLL of "<image>" sequences from the raw logits
    tok = p.model.processor.image_token
    inputs = p.model.to_inputs([tok, tok], images=images)
    with torch.no_grad():
        logits = p.model(inputs)
    lo, hi = p.model.hf_model.config.modality_token_ranges["image"]
    ids = inputs["input_ids"]
    target = (ids[:, 1:] >= lo) & (ids[:, 1:] < hi)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1][target], ids[:, 1:][target])
    assert out["image_ppl_alone"] == pytest.approx(float(nll.exp()), rel=1e-5)
    assert out["bias"] == pytest.approx(out["image_gain"] / out["text_gain"])


def test_skip_tradeoff_counts_the_skipped_share() -> None:
    from hooks_mm.analysis.erasure import choice_score, skip_tradeoff

    p = pair_for("llava")
    with torch.no_grad():
        answers = [p.model(p.inputs)[:, -1, [5, 9]].argmax(-1)]
    rows = skip_tradeoff(p.model, [p.inputs], answers, choice_score([5, 9]), intervals=(1, 2))
    layout = p.model.layout(p.inputs)
    share = int(layout.select(Image()).sum()) / int((layout.modality != Modality.PAD).sum())
    assert rows[0]["accuracy"] == 1.0 and rows[0]["mlp_flops_saved"] == 0.0
    assert rows[1]["mlp_flops_saved"] == pytest.approx(share) and rows[2]["mlp_flops_saved"] == pytest.approx(share / 2)


def test_wanda_mask_and_overlap() -> None:
    from hooks_mm.analysis import input_norms, wanda_mask, wanda_overlap

    w = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.1, 0.2, -0.3, 0.4]])
    norm = torch.tensor([1.0, 0.1, 10.0, 1.0])  # scores row 0: 1, 0.2, 5, 3 ; row 1: .1, .02, 3, .4
    mask = wanda_mask(w, norm, sparsity=0.5)
    assert mask.tolist() == [[False, False, True, True], [False, False, True, True]]
    p = pair_for("llava")
    norms = input_norms(p.model, [p.inputs], Image())
    _, cache = p.model.run_with_cache(p.inputs, names_filter="blocks.0.ln1.hook_normalized")
    img = p.model.layout(p.inputs).select(Image())
    expected = cache["blocks.0.ln1.hook_normalized"][img].pow(2).sum(0).sqrt()  # the q projection's input
    assert torch.allclose(norms["0.q"], expected, rtol=1e-4)
    table = wanda_overlap(p.model, [p.inputs], sparsity=0.5)
    assert set(table.linear) == {"q", "k", "v", "o", "gate", "up", "down"} and table.iou.between(0, 1).all()
    assert (wanda_overlap(p.model, [p.inputs], sparsity=0.0).iou == 1.0).all()  # nothing pruned: identical


def test_analysis_inputs_that_gave_empty_or_nan_results_are_refused() -> None:
    from hooks_mm.analysis import input_norms

    p = pair_for("toy-llava")
    text_only = p.model.to_inputs(["there is a red circle . what colour is the circle ?"], chat=True)
    with pytest.raises(ValueError, match="no row holds both image and text"):
        token_similarity(p.model, text_only, layer=1)
    with pytest.raises(ValueError, match="row 0 holds no image"):
        last_token_heatmaps(p.model, text_only, layer=1)
    with pytest.raises(IndexError, match="row 9 out of range for a batch of 4 rows"):
        last_token_heatmaps(p.model, p.inputs, layer=1, row=9)
    with pytest.raises(ValueError, match="selects no calibration token"):
        input_norms(p.model, [text_only], Image())
    one = torch.randn(1, 3, 4)
    with pytest.raises(ValueError, match="at least 2 examples"):
        cross_modal_cosine(one, one, exclude_diagonal=True)
    with pytest.raises(ValueError, match=r"drift: k must be an int in 1\.\.2"):
        drift(torch.randn(2, 3, 4), 3)


def test_lape_and_top_difference_refuse_rates_outside_their_range() -> None:
    p = pair_for("llava")
    probs = activation_probabilities(p.model, [p.inputs], layers=[1])
    for kwargs in ({"top_rate": 0.0}, {"top_rate": 1.5}, {"filter_rate": -0.1}, {"activation_bar": 95}):
        with pytest.raises(ValueError, match=r"is a fraction: pass a value in \(0, 1\]"):
            lape(probs, **kwargs)
    assert lape(probs, top_rate=1.0).selected  # the whole range is accepted
    for bad in (0, -1, 150):
        with pytest.raises(ValueError, match=r"is a percentage: pass a value in \(0, 100\]"):
            top_difference(probs, bad)


def test_masking_matrix_perplexity_is_over_all_tokens_of_unequal_batches() -> None:
    p = pair_for("anygpt")
    rows = p.inputs["input_ids"].shape[0]
    parts = [{k: v[:1] for k, v in p.inputs.items()}, {k: v[1:] for k, v in p.inputs.items()}]
    got = neuron_masking_matrix(p.model, parts, {}, evaluate=("text",)).loc["none", "text"]
    nll, count = 0.0, 0
    for part in parts:  # independent: cross-entropy of every text token predicted from a real position
        mod = p.model.layout(part).modality
        target = (mod[:, 1:] == Modality.TEXT) & (mod[:, :-1] != Modality.PAD)
        with torch.no_grad():
            logits = p.bare(**{k: v for k, v in part.items() if k in ("input_ids", "attention_mask")}).logits
        ids = part["input_ids"][:, 1:]
        nll += torch.nn.functional.cross_entropy(logits[:, :-1][target], ids[target], reduction="sum").item()
        count += int(target.sum())
    assert rows >= 2 and got == pytest.approx(math.exp(nll / count), rel=1e-4)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "chameleon"])
def test_image_perplexity_is_refused_where_image_positions_hold_a_placeholder(family: str) -> None:
    """A model that replaces a placeholder token by features has no image tokens to predict: the image NLL
    (and the text-centric bias built on it) would score the placeholder and is refused, naming the fix."""
    from hooks_mm.analysis.erasure import text_centric_bias
    from hooks_mm.sweep.metrics import modality_nll
    from hooks_mm.zoo import toy_image

    p = pair_for(family)
    with pytest.raises(ValueError, match="holds a placeholder token .* use modality='text'"):
        modality_nll(p.model, p.inputs, "image")
    modality_nll(p.model, p.inputs, "text")  # text is still a perplexity
    if family == "llava":
        with pytest.raises(ValueError, match="placeholder token"):
            text_centric_bias(p.model, ["a red square"], [toy_image(1)])
    assert_clean(p.model)


def test_image_perplexity_of_a_discrete_model_is_not_refused() -> None:
    from hooks_mm.sweep.metrics import modality_nll

    p = pair_for("anygpt")
    nll = modality_nll(p.model, p.inputs, "image")(p.model(p.inputs))
    assert torch.isfinite(nll)
