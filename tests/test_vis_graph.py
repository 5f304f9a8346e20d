"""The circuit graph views: the offline HTML view in headless Chromium (tests/browser.py) and the matplotlib figure.

A synthetic graph (tests/graph_synth.py) plants the strongest edge (an image cell -> L1.H0, +3), a strong negative
one (L0.MLP -> logit, -2) among small random scores, and a hostile node label; the views must show them where and
how the scores say: the planted edge widest, in the top colour of the diverging scale, the label as text.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from browser import CHROMIUM, Chromium, find_chromium
from graph_synth import NASTY_LABEL, NEGATIVE, STRONG, synthetic_graph
from matplotlib import colormaps
from test_vis_browser import assert_offline, coloured_fraction

from hooks_mm.circuits import Graph, eap_graph
from hooks_mm.vis import graph_figure, graph_html, page, patch_heatmap_html
from hooks_mm.zoo import toy_image

chromium = pytest.mark.skipif(find_chromium() is None, reason=f"Chromium is not installed ({CHROMIUM} missing)")
RDBU = colormaps["RdBu_r"]
READY = "document.querySelector('.hmm-graph .hmm-edge')"


def rgb(x: float) -> np.ndarray:
    return np.array(RDBU(x)[:3]) * 255


def parse_rgba(css: str) -> np.ndarray:
    return np.array([float(v) for v in re.findall(r"[\d.]+", css)[:3]])


@pytest.fixture(scope="module")
def browser():
    with Chromium(width=1100, height=1000) as b:
        yield b


@pytest.fixture(scope="module")
def opened(browser, tmp_path_factory):
    g = synthetic_graph()
    path = tmp_path_factory.mktemp("graph") / "graph.html"
    graph_html(g, images=[toy_image(1)], k=len(g.scores)).save(path)
    return g, browser.open(path, ready=READY, settle=0.3)


@chromium
def test_graph_html_offline_not_blank_planted_edge_widest_and_coloured(browser, opened) -> None:
    g, loaded = opened
    assert_offline(loaded)
    assert coloured_fraction(browser.screenshot(".hmm-graph-svg")) > 0.02
    edges = browser.evaluate(
        "[...document.querySelectorAll('.hmm-edge')].map(e => ({src: e.dataset.src, dst: e.dataset.dst, "
        "w: +e.getAttribute('stroke-width'), c: e.getAttribute('stroke'), shown: e.getAttribute('display') === null,"
        "mid: (() => { const p = e.getPointAtLength(e.getTotalLength() / 2);"
        " const b = e.ownerSVGElement.getBoundingClientRect(); return [p.x + b.left, p.y + b.top]; })()}))"
    )
    assert len(edges) == g.n_edges and all(e["shown"] for e in edges)
    hover = browser.evaluate(
        f'document.querySelector(\'.hmm-edge[data-src="{STRONG[0]}"][data-dst="{STRONG[1]}"] title\').textContent'
    )
    assert hover == f"{g.node(STRONG[0]).label} \u2192 {g.node(STRONG[1]).label}: 3"
    widest = max(edges, key=lambda e: e["w"])
    assert (widest["src"], widest["dst"]) == STRONG[:2] and edges[-1] == widest  # drawn last: on top
    assert np.abs(parse_rgba(widest["c"]) - rgb(1.0)).max() <= 1  # +max: the top of RdBu_r
    neg = next(e for e in edges if (e["src"], e["dst"]) == NEGATIVE[:2])
    assert np.abs(parse_rgba(neg["c"]) - rgb(1 / 6)).max() <= 2  # -2 on a +-3 scale
    assert sorted(e["w"] for e in edges)[-2] == neg["w"]
    # the pixels: the planted edge's midpoint is drawn in its colour (alpha .85 over white)
    shot = np.asarray(browser.screenshot()).astype(float)
    x, y = (round(v) for v in widest["mid"])
    want = 0.85 * rgb(1.0) + 0.15 * 255
    assert np.abs(shot[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3) - want).min(0).max() < 25


@chromium
def test_graph_html_label_is_text_and_click_shows_details(browser, opened) -> None:
    g, _ = opened
    assert browser.evaluate("window.__pwned") is None
    assert browser.evaluate("document.querySelectorAll('.hmm-graph svg script, .hmm-graph-details script').length") == 0
    tips = browser.evaluate("[...document.querySelectorAll('.hmm-node title')].map(t => t.textContent)")
    assert any(t.startswith(NASTY_LABEL) for t in tips)
    browser.page.click('.hmm-node[data-id="input:instruction"]')
    assert browser.evaluate("document.querySelector('.hmm-graph-picked-label').textContent").startswith(NASTY_LABEL)
    browser.page.click('.hmm-node[data-id="L1.H0"]')
    details = browser.evaluate("document.querySelector('.hmm-graph-details').innerText")
    assert "L1.H0" in details and "strongest edges in" in details
    first = browser.evaluate(
        "[...document.querySelector('.hmm-graph-details table').rows[0].cells].map(c => c.textContent)"
    )
    assert first == [g.node(STRONG[0]).label, "3"]
    cells = browser.evaluate(
        "[...document.querySelectorAll('.hmm-graph-cellmap .hmm-cell')].map(c => [c.dataset.v, c.style.background])"
    )
    assert len(cells) == 9
    v, color = cells[1 * 3 + 2]  # row 1, col 2: the planted cell
    assert float(v) == 3.0 and np.abs(parse_rgba(color) - rgb(1.0)).max() <= 1


@chromium
def test_graph_html_topk_and_threshold_controls(browser, opened) -> None:
    shown = "[...document.querySelectorAll('.hmm-edge')].filter(e => e.getAttribute('display') === null)"

    def set_(cls: str, value: str) -> list:
        browser.evaluate(
            f"(() => {{ const i = document.querySelector('.{cls}'); i.value = '{value}';"
            " i.dispatchEvent(new Event('input')); })()"
        )
        return browser.evaluate(f"{shown}.map(e => [e.dataset.src, e.dataset.dst])")

    assert set_("hmm-graph-k", "1") == [list(STRONG[:2])]
    assert sorted(set_("hmm-graph-k", "2")) == sorted([list(STRONG[:2]), list(NEGATIVE[:2])])
    set_("hmm-graph-k", "1000")
    assert set_("hmm-graph-thr", "2.5") == [list(STRONG[:2])]
    assert len(set_("hmm-graph-thr", "1.5")) == 2
    assert len(set_("hmm-graph-thr", "")) == opened[0].n_edges
    assert (
        browser.evaluate("document.querySelector('.hmm-graph-count').textContent") == f"{opened[0].n_edges} edges shown"
    )


@chromium
def test_graph_html_details_attached_and_in_jupyter(browser, tmp_path) -> None:
    """Attached views (an attention heatmap of a real model) show on click; the Jupyter fragment stays offline."""
    from test_vis_patches import model_and_layout

    tiny, layout = model_and_layout("llava")
    heat = patch_heatmap_html(torch.rand(layout.shape), layout, 0, title="attention of L1.H0")
    view = graph_html(synthetic_graph(), k=10, details={"L1.H0": heat})
    fragment = view._repr_html_()
    assert not re.search(r"""(?<![-\w])(src|href)=["'](?!data:)""", fragment) and "<style>" in fragment
    path = tmp_path / "g.html"
    path.write_text(page([view]))
    assert_offline(browser.open(path, ready=READY))
    assert browser.evaluate("document.querySelector('.hmm-graph-extra').hidden")
    browser.page.click('.hmm-node[data-id="L1.H0"]')
    assert not browser.evaluate("document.querySelector('.hmm-graph-extra').hidden")
    assert coloured_fraction(browser.screenshot(".hmm-graph-extra .hmm-grid")) > 0.5


def test_graph_figure_planted_edge() -> None:
    g = synthetic_graph()
    fig = graph_figure(g, images=[toy_image(1)], k=20)
    ax = fig.axes[0]
    edges = {p.get_gid(): p for p in ax.patches if (p.get_gid() or "").startswith("edge:")}
    assert len(edges) == 20
    strong = edges[f"edge:{STRONG[0]}->{STRONG[1]}"]
    widths = sorted(p.get_linewidth() for p in edges.values())
    assert strong.get_linewidth() == widths[-1] > widths[-2] > widths[0]
    assert [p for p in ax.patches if p in edges.values()][-1] is strong  # drawn last: on top
    assert np.allclose(strong.get_edgecolor()[:3], RDBU(1.0)[:3])
    assert np.allclose(edges[f"edge:{NEGATIVE[0]}->{NEGATIVE[1]}"].get_edgecolor()[:3], RDBU(1 / 6)[:3])
    nodes = {p.get_gid() for p in ax.patches if (p.get_gid() or "").startswith("node:")}
    assert nodes == {f"node:{n.id}" for n in g.nodes}
    texts = [t for t in ax.texts if "<script>" in t.get_text()]
    assert texts and all(not t.get_parse_math() for t in ax.texts)  # `$x$` stays text
    assert len(graph_figure(g, k=100, threshold=1.5).axes[0].patches) == len(g.nodes) + 2
    fig.canvas.draw()  # renders (no mathtext error on the '$x$' label)


def test_views_refuse_misuse() -> None:
    g = synthetic_graph()
    for fn in (graph_html, graph_figure):
        with pytest.raises(ValueError, match="k=-1"):
            fn(g, k=-1)
        with pytest.raises(ValueError, match="threshold=-0.5"):
            fn(g, threshold=-0.5)
        with pytest.raises(ValueError, match=r"images \[0\] but images= holds 0"):
            fn(g, images=[])
        with pytest.raises(TypeError, match="PIL images"):
            fn(g, images=[np.zeros((4, 4, 3))])
        with pytest.raises(TypeError, match="not a circuit graph"):
            fn({"nodes": []})
    with pytest.raises(ValueError, match="unknown node ids"):
        graph_html(g, details={"L9.H9": "<p>x</p>"})
    with pytest.raises(TypeError, match="HTML string or a view"):
        graph_html(g, details={"L1.H0": np.zeros(3)})
    with pytest.raises(ValueError, match="max_edges"):
        graph_html(g, max_edges=0)
    bad = Graph(g.nodes, g.src, g.dst, g.scores.clone(), g.node_scores, g.method, g.metric, g.meta)
    bad.scores[3] = float("nan")
    with pytest.raises(ValueError, match="1 edge scores are NaN"):
        graph_html(bad)
    few = graph_html(g, max_edges=5, k=3)
    assert few.html.count('class="hmm-edge"') == 5 and f"5 of {g.n_edges} edges in this page" in few.html


@chromium
def test_real_toy_llava_graph_view(browser, tmp_path) -> None:
    """eap_graph's value on toy-llava: every node drawn, the image under its 3x3 cell nodes, the top edge widest."""
    from graph_synth import toy_llava_graph

    g, images = toy_llava_graph()
    path = tmp_path / "real.html"
    graph_html(g, images=images, k=30).save(path)
    assert_offline(browser.open(path, ready=READY))
    drawn = browser.evaluate("[...document.querySelectorAll('.hmm-node')].map(e => e.dataset.id)")
    assert sorted(drawn) == sorted(n.id for n in g.nodes)
    assert browser.evaluate("document.querySelectorAll('.hmm-graph-svg image').length") == 1
    cells = [n for n in g.nodes if n.row >= 0]
    assert len(cells) == 9 and browser.evaluate("document.querySelectorAll('.hmm-cellnode').length") == 9
    shown = browser.evaluate(
        "[...document.querySelectorAll('.hmm-edge')].filter(e => e.getAttribute('display') === null)"
        ".map(e => [e.dataset.src, e.dataset.dst, +e.getAttribute('stroke-width')])"
    )
    top = g.top_edges(30)
    assert sorted((s, d) for s, d, _ in shown) == sorted((s, d) for s, d, _ in top)
    assert max(shown, key=lambda e: e[2])[:2] == list(top[0][:2])
    assert coloured_fraction(browser.screenshot(".hmm-graph-svg")) > 0.02
    fig = graph_figure(g, images=images, k=30)
    gids = [p.get_gid() for p in fig.axes[0].patches if (p.get_gid() or "").startswith("edge:")]
    assert gids[-1] == f"edge:{top[0][0]}->{top[0][1]}" and len(gids) == 30


@pytest.mark.parametrize("inputs", ["cell", "tile", "image"])
def test_layout_of_anyres_graphs(inputs) -> None:
    """LLaVA-NeXT (base + high-res tiles, newline separators): one panel per image tile (cells on it), the
    separators as their own box, every node inside the picture and no two input nodes overlapping."""
    from hooks_mm import HookedMLLM, zoo
    from hooks_mm.vis.graph_layout import graph_view, layout

    tiny = zoo.build("llava_next")
    model = HookedMLLM(tiny.model, tiny.processor)
    g = eap_graph(model, tiny.inputs, "zero", lambda logits: logits[:, -1].log_softmax(-1)[:, 5].mean(), inputs=inputs)
    lay = layout(graph_view(g))
    panels = sorted((p.image, p.tile) for p in lay.panels)
    assert panels == ([(0, None), (1, None)] if inputs == "image" else [(0, 0), (0, 1), (1, 0), (1, 1)])
    for n, (x, y, w, h), shape in zip(g.nodes, lay.boxes, lay.shapes):
        assert 0 <= x and x + w <= lay.width and 0 <= y and y + h <= lay.height, n.id
        assert (shape == "cell") == (n.row >= 0)
    boxes = [b for n, b, s in zip(g.nodes, lay.boxes, lay.shapes) if n.kind == "input" and s != "cell"]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0], (a, b)  # side by side on the input row
    if inputs == "cell":
        assert {"input:image0/sep", "input:image1/sep"} <= {n.id for n, s in zip(g.nodes, lay.shapes) if s == "rect"}
