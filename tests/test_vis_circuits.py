"""circuitsvis wrappers: image spans collapsed exactly, tokens escaped where circuitsvis
inserts HTML, props safe inside <script>, one page for many views (browser: test_vis_browser)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from test_vis_patches import model_and_layout

from hooks_mm import HookedMLLM, Image
from hooks_mm.vis import (
    attention_heads,
    collapse_attention,
    colored_tokens,
    neuron_activations,
    page,
    topk_tokens,
    units,
)
from hooks_mm.vis.html import js_literal

NASTY = ["<image>", "<s>", "</script>", "a & b", "\"q'", "<!--", "\u2028"]


@pytest.fixture(scope="module")
def llava():
    tiny, layout = model_and_layout("llava")
    model = HookedMLLM(tiny.model, tiny.processor)
    _, cache = model.run_with_cache(tiny.inputs)
    tokens = [tiny.processor.tokenizer.convert_ids_to_tokens(r) for r in tiny.inputs["input_ids"].tolist()]
    return model, tiny, layout, cache, tokens


def test_units_collapse_image_spans_and_drop_padding(llava) -> None:
    _, tiny, layout, _, tokens = llava
    u0, u1 = units(layout, 0, tokens[0]), units(layout, 1, tokens[1])
    assert "[image0:4x4]" in u0.labels and "[image1:4x4]" in u0.labels
    assert u0.labels.count("<image>") == 0 and sum(len(p) for p in u0.positions) == layout.shape[1]
    real = int(tiny.inputs["attention_mask"][1].sum())
    assert sum(len(p) for p in u1.positions) == real and len(u1) == real - 15  # 16 image positions -> 1
    assert units(layout, 0, tokens[0], collapse=False).labels == tokens[0]
    _, nxt = model_and_layout("llava_next")
    assert "[image0:4x4+2x12]" in units(nxt, 0).labels
    _, idefics = model_and_layout("idefics3")
    labels = units(idefics, 0).labels
    assert {"[image0:t0:4x4]", "[image0:t1:4x4]", "[image0:t2:4x4]", "[image1:4x4]"} <= set(labels)


def test_collapse_attention_is_exact(llava) -> None:
    _, _, layout, cache, tokens = llava
    pattern = cache["blocks.1.attn.hook_pattern"][0].double().numpy()  # [head, q, k]
    u = units(layout, 0, tokens[0])
    got = collapse_attention(pattern, u)
    want = np.zeros(got.shape)
    for i, qs in enumerate(u.positions):
        for j, ks in enumerate(u.positions):
            want[:, i, j] = np.mean([pattern[:, q, ks].sum(-1) for q in qs], axis=0)
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)  # still a distribution over keys


def test_attention_heads_props(llava) -> None:
    _, _, layout, cache, tokens = llava
    v = attention_heads(cache["blocks.0.attn.hook_pattern"], tokens[0], layout, row=0, heads=[1, 3])
    assert v.element == "AttentionHeads" and v.props["attentionHeadNames"] == ["head 1", "head 3"]
    assert np.asarray(v.props["attention"]).shape == (2, len(v.props["tokens"]), len(v.props["tokens"]))
    assert "[image0:4x4]" in v.props["tokens"]  # axis labels are plain text: not escaped
    assert v.extra.count('class="hmm-panel"') == 2  # one patch grid per image of the row


def test_colored_tokens_reduce_over_image(llava) -> None:
    _, _, layout, cache, tokens = llava
    values = cache["blocks.1.hook_resid_post"][0].norm(dim=-1)
    v = colored_tokens(tokens[0], values, layout, row=0)
    img0 = layout.select(Image(0))[0]
    k = v.props["tokens"].index("[image0:4x4]")
    assert v.props["values"][k] == pytest.approx(float(values[img0].mean()), rel=1e-6)
    vmax = colored_tokens(tokens[0], values, layout, row=0, reduce_images="max")
    assert vmax.props["values"][k] == pytest.approx(float(values[img0].max()), rel=1e-6)


def test_topk_matches_torch_topk(llava) -> None:
    _, _, layout, cache, tokens = llava
    acts = torch.stack([cache[f"blocks.{l}.mlp.hook_post"][0] for l in range(2)], 1)  # [seq, layer, neuron]
    v = topk_tokens([tokens[0]], [acts], [layout], [0], k=5, collapse_images=False)
    vals, idx = acts.double().permute(1, 0, 2).topk(5, dim=1)  # [layer, k, neuron]
    np.testing.assert_allclose(np.asarray(v.props["topkVals"][0]), vals.numpy(), rtol=1e-12)
    assert np.array_equal(np.asarray(v.props["topkIdxs"][0]), idx.numpy())
    low = acts.double().permute(1, 0, 2).topk(5, dim=1, largest=False).values.flip(1)
    np.testing.assert_allclose(np.asarray(v.props["bottomkVals"][0]), low.numpy(), rtol=1e-12)
    # collapsed: an image block's top value is its max position
    c = topk_tokens([tokens[0]], [acts], [layout], [0], k=3)
    k = c.props["tokens"][0].index("[image0:4x4]")
    top = acts[layout.select(Image(0))[0]].double().max(0).values  # [layer, neuron]
    hit = np.asarray(c.props["topkIdxs"][0]) == k
    np.testing.assert_allclose(
        np.asarray(c.props["topkVals"][0])[hit], np.broadcast_to(top.numpy()[:, None], hit.shape)[hit]
    )


def test_neuron_activations_grids(llava) -> None:
    _, _, layout, cache, tokens = llava
    acts = torch.stack([cache[f"blocks.{l}.mlp.hook_post"][0] for l in range(2)], 1)
    v = neuron_activations(tokens[0], acts, layout, row=0, grid_neurons=[(1, 7)])
    assert "layer / neuron 1 / 7" in v.extra and v.extra.count('class="hmm-panel"') == 2
    assert np.asarray(v.props["activations"]).shape == (len(v.props["tokens"]), 2, acts.shape[-1])
    auto = neuron_activations(tokens[0], acts, layout, row=0)
    assert auto.extra.count("layer / neuron") == 4


def test_tokens_escaped_where_circuitsvis_inserts_html() -> None:
    vals = np.linspace(0, 1, len(NASTY))
    assert colored_tokens(NASTY, vals).props["tokens"][:3] == ["&lt;image&gt;", "&lt;s&gt;", "&lt;/script&gt;"]
    acts = vals[:, None, None]
    assert neuron_activations(NASTY, acts).props["tokens"][3] == "a &amp; b"
    assert topk_tokens([NASTY], [acts]).props["tokens"][0][4] == "&quot;q&#x27;"
    assert attention_heads(np.eye(len(NASTY))[None], NASTY).props["tokens"] == NASTY  # plain-text labels


def test_props_cannot_break_the_script() -> None:
    for x in (NASTY, {"a": "</script><script>alert(1)</script>", "b": [1.5, float("nan")]}):
        text = js_literal(x)
        assert "<" not in text and ">" not in text and "&" not in text
        decoded = json.loads(text)
        assert decoded == (x if isinstance(x, list) else {"a": x["a"], "b": [1.5, 0.0]})
    html = page([attention_heads(np.eye(len(NASTY))[None], NASTY), colored_tokens(NASTY, np.ones(len(NASTY)))])
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    assert len(scripts) == 3  # the library once, then one per view: no token ended a script early
    body = html.split("<body>", 1)[1]
    assert body.count("</div>") == body.count("<div")  # every container closed


def test_offline_html_has_no_remote_source(llava) -> None:
    _, _, layout, cache, tokens = llava
    v = attention_heads(cache["blocks.0.attn.hook_pattern"], tokens[0], layout)
    for html in (v._repr_html_(), page([v, v])):
        assert "unpkg.com" not in html and not re.search(r"<script[^>]+src=", html)
        assert "CircuitsVis.render(" in html
    assert page([v, v]).count("var CircuitsVis=") == 1  # the 1.3 MB library once per page


def test_shape_errors_are_named(llava) -> None:
    _, _, layout, cache, tokens = llava
    with pytest.raises(ValueError, match="got 3 tokens for a row of"):
        colored_tokens(["a", "b", "c"], torch.zeros(layout.shape[1]), layout)
    with pytest.raises(ValueError, match="does not match the layout"):
        attention_heads(torch.zeros(2, 5, 5), tokens[0], layout)
    with pytest.raises(ValueError, match="query position 0 is padding"):  # row 1 is left-padded
        attention_heads(cache["blocks.0.attn.hook_pattern"], tokens[1], layout, row=1, query=0)
    with pytest.raises(TypeError, match="cannot put int on a page"):
        page([3])
