"""Issue 20: the Jupyter displays (layout, SweepResult, Graph) rendered in real headless Chromium: offline, nothing
injected by hostile strings, and the drawn geometry matches the numbers (run widths, bar lengths)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from browser import CHROMIUM, Chromium, find_chromium
from graph_synth import synthetic_graph

from hooks_mm import HookedMLLM
from hooks_mm.sweep import SweepResult
from hooks_mm.vis import page
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
