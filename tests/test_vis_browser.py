"""Every kind of visualization and the report page in real headless Chromium (Debian
``chromium`` at /usr/bin/chromium; ``.ci/run`` installs it).

Offline: each page is loaded from file:// while Playwright's request listener
(``tests/browser.py``) records every URL the page, or any frame in it, asks for;
anything but file:, data:, blob: or about: fails the test.
Not blank: the screenshot of each visualization's own element must hold coloured pixels
(grey text alone does not count), e.g. the WebGL canvas of AttentionPattern.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from browser import CHROMIUM, Chromium, find_chromium

from hooks_mm import HookedMLLM, zoo
from hooks_mm.vis import (
    attention_heads,
    attention_pattern,
    colored_tokens,
    neuron_activations,
    page,
    patch_heatmap_html,
    str_tokens,
    topk_tokens,
)
from hooks_mm.vis.report import write_report
from hooks_mm.zoo import toy_image

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason=f"Chromium is not installed ({CHROMIUM} missing): apt-get install -y chromium (.ci/run does this)",
)

RENDERED = "[...document.querySelectorAll('.hmm-cv')].every(e => e.children.length > 0)"
NASTY = ["<image>", "<s>", "</script>", "a & b", "\"q'", '<img src=x onerror="window.__pwned=1">', "end"]


def coloured_fraction(img) -> float:
    """Share of pixels with a clear hue (max - min channel > 40): text and greys do not count."""
    a = np.asarray(img).astype(int)
    return float(((a.max(-1) - a.min(-1)) > 40).mean())


def ink_fraction(img) -> float:
    """Share of pixels that are not the white page."""
    return float((np.asarray(img).min(-1) < 245).mean())


@pytest.fixture(scope="module")
def browser():
    with Chromium() as b:
        yield b


@pytest.fixture(scope="module")
def llava_views():
    model = HookedMLLM.from_pretrained("tiny-llava")
    images = [toy_image(1), toy_image(2)]
    inputs = model.to_inputs(["<image> <image> what is the red square ?"], images=[images])
    layout, tokens = model.layout(inputs), str_tokens(model, inputs)
    _, cache = model.run_with_cache(inputs)
    acts = torch.stack([cache[f"blocks.{l}.mlp.hook_post"][0] for l in range(model.cfg.n_layers)], 1)
    return [
        attention_heads(cache["blocks.1.attn.hook_pattern"], tokens, layout, images=images, title="AttentionHeads"),
        attention_pattern(cache["blocks.1.attn.hook_pattern"][0, 0], tokens, layout, title="AttentionPattern"),
        colored_tokens(
            tokens, cache["blocks.1.hook_resid_post"][0].norm(dim=-1), layout, images=images, title="ColoredTokens"
        ),
        neuron_activations(tokens, acts, layout, images=images, title="TextNeuronActivations"),
        topk_tokens([tokens], [acts], [layout], title="TopkTokens"),
    ]


def assert_offline(loaded) -> None:
    assert loaded.requests, "the request listener saw nothing (not even the page itself)"
    assert loaded.requests[0].startswith("file://")
    assert not loaded.external, f"requests left the machine: {loaded.external}"
    assert not loaded.errors, f"JavaScript errors: {loaded.errors}"


def test_every_circuitsvis_view_renders_offline_on_one_page(browser, llava_views, tmp_path) -> None:
    path = tmp_path / "views.html"
    path.write_text(page(llava_views))
    loaded = browser.open(path, ready=RENDERED, settle=0.8)
    assert_offline(loaded)
    for i, v in enumerate(llava_views):
        shot = browser.screenshot(".hmm-cv", i)  # the circuitsvis component's own region
        assert ink_fraction(shot) > 0.01, f"{v.element} drew nothing ({shot.size})"
        if v.element != "TopkTokens":  # (its cells are near-white for this random model: see the escaping test)
            assert coloured_fraction(shot) > 0.01, f"{v.element} drew no coloured cells ({shot.size})"
    grids = browser.evaluate("document.querySelectorAll('.hmm-heatmap').length")
    assert grids == 1 + 1 + 4  # attention, values, 4 neurons: patch grids under the views
    assert coloured_fraction(browser.screenshot(".hmm-grid", 0)) > 0.2  # the first patch grid (over its image)


@pytest.mark.parametrize("family", ["llava", "llava_next", "idefics3", "qwen2_vl", "emu3", "chameleon"])
def test_patch_heatmap_html_renders_offline(browser, tmp_path, family) -> None:
    tiny = zoo.build(family)
    layout = HookedMLLM(tiny.model, tiny.processor).layout(tiny.inputs)
    values = torch.rand(layout.shape)  # viridis: every cell has a hue
    items = [patch_heatmap_html(values, layout, row, title=f"{family} row {row}") for row in range(layout.shape[0])]
    items.append(
        patch_heatmap_html(values, layout, 0, images=[toy_image(i) for i in range(3)], title="over the images")
    )
    path = tmp_path / "heat.html"
    path.write_text(page(items))
    assert_offline(browser.open(path))
    n = browser.evaluate("document.querySelectorAll('.hmm-grid').length")
    assert n >= len(items)
    for i in range(n):  # every panel (and separator column) drawn
        assert coloured_fraction(browser.screenshot(".hmm-grid", i)) > 0.5, f"grid {i} of {n}"


def test_tokens_render_as_text_and_break_nothing(browser, tmp_path) -> None:
    vals = np.linspace(-1, 1, len(NASTY))
    acts = np.stack([vals, vals[::-1]], -1)[:, None, :]  # [seq, layer=1, neuron=2]
    views = [
        colored_tokens(NASTY, vals),
        neuron_activations(NASTY, acts),
        topk_tokens([NASTY], [acts], k=len(NASTY)),
        attention_heads(np.tril(np.ones((2, len(NASTY), len(NASTY)))) / np.arange(1, len(NASTY) + 1)[:, None], NASTY),
    ]
    path = tmp_path / "escape.html"
    path.write_text(page(views))
    loaded = browser.open(path, ready=RENDERED, settle=0.5)
    assert_offline(loaded)  # the unescaped <img src=x> would have requested file:///.../x: fine, but see below
    assert not any(u.endswith("/x") for u in loaded.requests)
    assert browser.evaluate("window.__pwned") is None
    assert (
        browser.evaluate("document.querySelectorAll('.hmm-cv s, .hmm-cv image, .hmm-cv img, .hmm-cv script').length")
        == 0
    )
    texts = browser.evaluate("[...document.querySelectorAll('.hmm-cv')].map(e => e.innerText.replace(/\\u00a0/g, ' '))")
    for kind, text in zip(("ColoredTokens", "TextNeuronActivations", "TopkTokens"), texts):
        for token in NASTY:
            assert token in text, f"{kind}: {token!r} not shown as text in {text[:300]!r}"
    for i, v in enumerate(views):
        assert coloured_fraction(browser.screenshot(".hmm-cv", i)) > 0.005, v.element


def test_the_checks_can_fail(browser, tmp_path) -> None:
    """circuitsvis's own output is caught: CDN import (blank offline) and tokens lost as HTML."""
    import circuitsvis

    cdn = tmp_path / "cdn.html"
    cdn.write_text(f"<html><body>{circuitsvis.tokens.colored_tokens(['a', 'b'], [0.2, 0.9])}</body></html>")
    loaded = browser.open(cdn, settle=1.0)
    assert any("unpkg.com" in u for u in loaded.external)
    assert coloured_fraction(browser.screenshot()) == 0.0
    raw = tmp_path / "raw.html"
    raw.write_text(f"<html><body>{circuitsvis.tokens.colored_tokens(['<s>', 'x'], [0.2, 0.9]).local_src}</body></html>")
    assert_offline(browser.open(raw, ready="document.body.innerText.includes('x')"))
    assert "<s>" not in browser.evaluate("document.body.innerText")


def test_report_page_renders_offline(browser, llava_views, tmp_path) -> None:
    rng = np.random.default_rng(0)
    with open(tmp_path / "results.csv", "w") as f:
        f.write("layer,neuron,metric,value\n")
        for l in range(2):
            f.writelines(f"{l},{n},logit_diff,{rng.normal():.6f}\n" for n in range(16))
    (tmp_path / "meta.json").write_text('{"model": "tiny-llava", "command": "hooks-mm sweep", "created": "2025-01-01"}')
    llava_views[0].save(tmp_path / "attention.html")
    report = write_report(tmp_path)
    frame = "document.querySelector('iframe').contentDocument"
    loaded = browser.open(
        report,
        ready=f"{frame} && {frame}.querySelector('.hmm-cv') && {frame}.querySelector('.hmm-cv').children.length",
        settle=0.8,
    )
    assert_offline(loaded)
    assert browser.evaluate("document.querySelectorAll('figure img').length") == 2  # top neurons, per layer
    assert browser.evaluate(
        "[...document.querySelectorAll('figure img')].every(i => i.complete && i.naturalWidth > 100)"
    )
    for i in range(2):  # bars / jittered points
        assert coloured_fraction(browser.screenshot("figure img", i)) > 0.002
    assert browser.evaluate("document.querySelectorAll('table.hmm-table tr').length") == 3 + 21  # meta + results
    assert coloured_fraction(browser.screenshot("iframe")) > 0.01
