"""Issue 20: the Jupyter displays (layout, SweepResult, Graph) rendered in real headless Chromium: offline, nothing
injected by hostile strings, and the drawn geometry matches the numbers (run widths, bar lengths)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from browser import CHROMIUM, Chromium, find_chromium
from graph_synth import synthetic_graph

from hooks_mm import HookedMLLM
from hooks_mm.sweep import SweepResult
from hooks_mm.vis import page, patch_heatmap_html
from hooks_mm.zoo import toy_image

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason=f"Chromium is not installed ({CHROMIUM} missing): apt-get install -y chromium (.ci/run does this)",
)
NASTY = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


@pytest.fixture(scope="module")
def browser():
    with Chromium() as b:
        yield b


def _open(browser, tmp_path, obj, name):
    path = tmp_path / f"{name}.html"
    path.write_text(page([obj]), encoding="utf-8")  # page() takes the object's _repr_html_
    loaded = browser.open(path)
    assert not loaded.external and not loaded.errors
    assert browser.evaluate("window.__pwned") is None
    return loaded


def test_layout_display_in_chromium(browser, tmp_path) -> None:
    model = HookedMLLM.from_pretrained("tiny-llava")
    inputs = model.to_inputs(
        ["<image> what colour?", "<image> <image> which one is red?"],
        images=[[toy_image(1)], [toy_image(2), toy_image(3)]],
    )
    layout = model.layout(inputs)
    _open(browser, tmp_path, layout, "layout")
    runs = browser.evaluate(
        "[...document.querySelectorAll('.hmm-runs')].map(r => [...r.children].map(c => "
        "[+c.dataset.start, +c.dataset.end, c.getBoundingClientRect().width, getComputedStyle(c).backgroundColor]))"
    )
    assert len(runs) == 2
    for row in runs:
        per = [w / (e - s) for s, e, w, _ in row]  # every run drawn as wide as its positions (+-1 px border)
        total = sum(w for *_, w, _ in row)
        assert all(abs(w - (e - s) * total / row[-1][1]) < 1.5 for s, e, w, _ in row), per
    colours = {c for row in runs for *_, c in row}
    assert "rgb(245, 133, 24)" in colours  # image runs are orange (#f58518)
    text = browser.evaluate("document.body.innerText")
    assert layout.describe(1) in text


def test_sweep_display_in_chromium(browser, tmp_path) -> None:
    values = torch.tensor([0.5, -2.0, 1.0, 0.0])
    table = pd.DataFrame({"type": ["a", NASTY, "c", "d"], "value": values, "delta": values - 1.0})
    result = SweepResult(table, values, torch.tensor(1.0), {"seconds": 0.5})
    _open(browser, tmp_path, result, "sweep")
    assert NASTY in browser.evaluate("document.body.innerText")  # shown as text
    rows = browser.evaluate("document.querySelectorAll('table.hmm-table tr').length")
    assert rows == 1 + 4
    bars = browser.evaluate(
        "[...document.querySelectorAll('rect.hmm-bar-rect')].map(r => [+r.dataset.v, r.getBoundingClientRect().width, "
        "r.getBoundingClientRect().left])"
    )
    deltas = [-3.0, -1.0, -0.5, 0.0]  # by |delta|, largest first; independent of the display code
    assert [v for v, _, _ in bars] == deltas
    widths = [w for _, w, _ in bars]
    assert widths[0] > 0 and all(abs(w / widths[0] - abs(d) / 3.0) < 0.02 for w, d in zip(widths, deltas[:3]))


def test_graph_display_in_chromium(browser, tmp_path) -> None:
    g = synthetic_graph()
    g.nodes[0].label = NASTY
    g.scores[0] = 100.0  # its edge is listed
    _open(browser, tmp_path, g, "graph")
    assert NASTY in browser.evaluate("document.body.innerText")
    assert browser.evaluate("document.querySelectorAll('rect.hmm-bar-rect').length") == 10


def _cell_rgb(img, rows: int, cols: int) -> np.ndarray:
    """Mean colour of the centre of each cell of a screenshot of a ``rows x cols`` grid: [rows, cols, 3]."""
    a = np.asarray(img).astype(float)
    h, w = a.shape[0] / rows, a.shape[1] / cols
    return np.array(
        [
            [
                a[int((r + 0.3) * h) : int((r + 0.7) * h), int((c + 0.3) * w) : int((c + 0.7) * w)].mean((0, 1))
                for c in range(cols)
            ]
            for r in range(rows)
        ]
    )


def _hue_cos(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine between two colours' chroma (the colour minus its grey level): 1 = the same hue."""
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def test_values_over_a_saturated_image_keep_their_own_colours(browser, tmp_path) -> None:
    """A planted value over a half-yellow, half-blue image: every cell's hue is its value's (cells of one value
    have one hue over yellow and over blue), and the planted cell stands out in the scale's top colour."""
    from matplotlib import colormaps
    from PIL import Image as PILImage

    model = HookedMLLM.from_pretrained("tiny-llava")
    picture = PILImage.new("RGB", (64, 64), (0, 0, 255))
    picture.paste((255, 230, 0), (0, 0, 64, 32))  # top half: saturated yellow (the colour question's triangle)
    inputs = model.to_inputs(["<image> what colour is the triangle?"], images=[[picture]])
    layout = model.layout(inputs)
    grid = layout.grid(0, 0, 0)
    values = torch.zeros(layout.shape)
    values[0, int(grid[0, 1])] = 1.0  # planted: over the yellow half
    path = tmp_path / "over.html"
    path.write_text(page([patch_heatmap_html(values, layout, row=0, images=[picture])]), encoding="utf-8")
    assert not browser.open(path).external
    cells = _cell_rgb(browser.screenshot(".hmm-grid-bg"), *grid.shape)
    rows, cols = grid.shape
    zero_yellow, zero_blue = cells[0, 2], cells[rows - 1, 2]
    assert _hue_cos(zero_yellow, zero_blue) > 0.98, (zero_yellow, zero_blue)  # the image adds no hue
    top = np.array(colormaps["viridis"](1.0)[:3]) * 255
    assert _hue_cos(cells[0, 1], top) > 0.95, cells[0, 1]  # the planted cell: the scale's top colour
    far = np.linalg.norm(cells - cells[0, 1], axis=-1)
    assert sorted(far.ravel())[1] > 60  # no other cell looks like it, over yellow or blue
    assert browser.evaluate("document.querySelectorAll('.hmm-original img').length") == 1  # its colours beside
