"""Views of the per-patch logit lens and DLA (hooks_mm.vis.lens): offline HTML in headless Chromium (no request
leaves the machine, not blank, a planted value in the cell the input ids say, token strings shown as text) and
matplotlib figures (the planted cell's colour and label read back)."""

from __future__ import annotations

import copy
import html
import re

import numpy as np
import pytest
import torch
from browser import CHROMIUM, Chromium, find_chromium
from conftest import pair_for
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from test_lens import expected_tiles
from test_vis_browser import assert_offline, coloured_fraction

from hooks_mm.analysis import patch_dla, patch_logit_lens
from hooks_mm.vis import dla_heatmap, dla_heatmap_html, logit_lens_figure, logit_lens_html, page
from hooks_mm.zoo import toy_image

NASTY = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
HOT = np.array(colormaps["viridis"](1.0)[:3]) * 255
RED = np.array(colormaps["RdBu_r"](1.0)[:3]) * 255
MID = np.array(colormaps["RdBu_r"](0.5)[:3]) * 255


@pytest.fixture(scope="module")
def planted():
    """A llava lens and DLA with one planted cell: image 1 of row 0, patch (2, 1), from the ids."""
    pair = pair_for("llava")
    cell = (2, 1)
    pos = int(expected_tiles("llava", 0)[1][0][cell])
    lens = patch_logit_lens(pair.model, pair.inputs, image=1, top_k=2, tokens=[3])
    r = lens[0]
    k = int((r.positions == pos).nonzero())
    r.top_probs[:, :, 0] = 0.2
    r.top_probs[:, k, 0] = 1.0  # the planted cell is the only one at the top of the scale
    for layer in r.top_tokens:
        layer[k][0] = NASTY
    dla = copy.copy(patch_dla(pair.model, pair.inputs, target=3, image=1))
    dla.per_source = torch.zeros_like(dla.per_source)
    dla.per_source[0, -1, 0, pos] = 0.5
    return pair, lens, dla, pos, cell


def test_lens_figure_labels_and_colours_the_planted_cell(planted) -> None:
    _, lens, _, pos, (i, j) = planted
    fig = logit_lens_figure(lens, row=0, layers=[0, 2])
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    buf = np.asarray(canvas.buffer_rgba())[..., :3].astype(float)
    axes = {ax.get_label(): ax for ax in fig.axes}
    for layer in (0, 2):
        ax = axes[f"layer{layer}/patches"]
        x, y = ax.transData.transform((j + 0.5, i + 0.5))
        assert np.abs(buf[round(buf.shape[0] - y) + 6, round(x) + 6] - HOT).max() < 8  # off the label's ink
        texts = {(round(t.get_position()[0] - 0.5), round(t.get_position()[1] - 0.5)): t.get_text() for t in ax.texts}
        assert texts[(j, i)] == NASTY and sum(t == NASTY for t in texts.values()) == 1
    with pytest.raises(ValueError, match="layers \\[7\\] are not in this lens"):
        logit_lens_figure(lens, layers=[7])
    with pytest.raises(ValueError, match="color='logprob' needs the lens's tokens"):
        logit_lens_figure(patch_logit_lens(planted[0].model, planted[0].inputs), color="logprob")
    with pytest.raises(ValueError, match="token=4: give the index"):
        logit_lens_html(lens, color="logprob", token=4)


def test_dla_figure_is_diverging_and_centred(planted) -> None:
    _, _, dla, pos, (i, j) = planted
    fig = dla_heatmap(dla, row=0)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    buf = np.asarray(canvas.buffer_rgba())[..., :3].astype(float)
    ax = next(a for a in fig.axes if a.get_label() == "image1/patches")
    for r in range(4):
        for c in range(4):
            x, y = ax.transData.transform((c + 0.5, r + 0.5))
            want = RED if (r, c) == (i, j) else MID  # 0 is the middle of the diverging scale
            assert np.abs(buf[round(buf.shape[0] - y), round(x)] - want).max() < 8, (r, c)


pytestmark_browser = pytest.mark.skipif(
    find_chromium() is None, reason=f"Chromium is not installed ({CHROMIUM} missing): apt-get install -y chromium"
)


@pytestmark_browser
def test_views_render_offline_with_tokens_as_text(planted, tmp_path) -> None:
    pair, lens, dla, pos, (i, j) = planted
    images = [toy_image(1), toy_image(2)]
    path = tmp_path / "lens.html"
    path.write_text(
        page(
            [
                logit_lens_html(lens, row=0),
                logit_lens_html(lens, row=0, color="logprob", slider=True),
                dla_heatmap_html(dla, row=0, images=images),
            ]
        )
    )
    with Chromium() as browser:
        assert_offline(browser.open(path))
        assert browser.evaluate("window.__pwned") is None
        assert browser.evaluate("document.querySelectorAll('.hmm-lens-cell script, .hmm-lens-cell img').length") == 0
        # small multiples: one grid per lens layer; the planted cell shows the token as text, hot, at (2, 1)
        n_layers = len(lens.layers)
        assert (
            browser.evaluate("document.querySelectorAll('.hmm-lens')[0].querySelectorAll('.hmm-lens-grid').length")
            == n_layers
        )
        cells = browser.evaluate(
            f"[...document.querySelectorAll('.hmm-lens')[0].querySelectorAll('.hmm-lens-cell[data-pos=\"{pos}\"]')]"
            ".map(e => [e.innerText, e.dataset.r, e.dataset.c, getComputedStyle(e).backgroundColor])"
        )
        hot = "rgb({}, {}, {})".format(*(round(x) for x in HOT))
        assert cells == [[NASTY, str(i), str(j), hot]] * n_layers
        for k in range(n_layers):
            assert coloured_fraction(browser.screenshot(".hmm-lens-grid", k)) > 0.3, f"grid {k} blank"
        # the slider shows one layer at a time
        visible = (
            "[...document.querySelectorAll('.hmm-lens')[1].querySelectorAll('.hmm-lens-layer')].map(e => !e.hidden)"
        )
        assert browser.evaluate(visible) == [False] * (n_layers - 1) + [True]
        browser.evaluate(
            "(() => {const s = document.querySelectorAll('.hmm-lens')[1].querySelector('input[type=range]');"
            "s.value = 0; s.dispatchEvent(new Event('input'));})()"
        )
        assert browser.evaluate(visible) == [True] + [False] * (n_layers - 1)
        # the DLA heatmap: the planted patch red, every other cell the scale's white middle
        red = "rgba({},{},{},0.65)".format(*(round(x) for x in RED))
        dla_cells = browser.evaluate(
            "[...document.querySelectorAll('.hmm-heatmap:not(.hmm-lens) .hmm-cell')]"
            ".map(e => [e.dataset.pos, e.dataset.r, e.dataset.c, e.getAttribute('style')])"
        )
        assert len(dla_cells) == 16
        hot_cells = [c[:3] for c in dla_cells if red in c[3]]
        assert hot_cells == [[str(pos), str(i), str(j)]]
        assert coloured_fraction(browser.screenshot(".hmm-grid-bg", 0)) > 0.05  # over the image: not blank


@pytest.mark.parametrize("family", ["llava_next", "idefics3", "qwen2_vl", "emu3"])
def test_every_image_position_is_one_labelled_cell_per_layer(family: str) -> None:
    """Patch cells, stitched tiles and newline / end-of-row tokens: each position of the image once per layer,
    labelled with its own top token."""
    pair = pair_for(family)
    lens = patch_logit_lens(pair.model, pair.inputs, top_k=1)
    for row, r in lens.rows.items():
        markup = logit_lens_html(lens, row=row).html
        cells = re.findall(r'class="hmm-cell hmm-lens-cell" data-pos="(-?\d+)"[^>]*>([^<]*)</div>', markup)
        shown = [(int(p), t) for p, t in cells if int(p) >= 0]
        want = [
            (int(p), html.escape(r.top_tokens[li][k][0]))
            for li in range(len(lens.layers))
            for k, p in enumerate(r.positions.tolist())
        ]
        assert sorted(shown) == sorted(want), f"{family} row {row}"
