"""Issue 20: Jupyter displays (``_repr_html_``) and short reprs of the layout, sweep results, attributions, caches,
circuit graphs and views; each display's content checked against an independent reading of the object."""

from __future__ import annotations

import html
import re

import pandas as pd
import pytest
import torch
from conftest import assert_clean
from graph_synth import NASTY_LABEL, synthetic_graph

from hooks_mm import HookedMLLM
from hooks_mm.sweep import SweepResult, answer_logprob, attribution_patching, single_neurons, sweep
from hooks_mm.vis import GraphHTML, Vis, graph_html, patch_heatmap_html
from hooks_mm.vis.display import MODALITY_COLORS, cache_groups
from hooks_mm.zoo import toy_image

NASTY = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> & "q"'


@pytest.fixture(scope="module")
def run():
    model = HookedMLLM.from_pretrained("tiny-llava")
    images = [[toy_image(1)], [toy_image(2), toy_image(3)]]
    inputs = model.to_inputs(
        ["<image> what colour is it?", "<image> <image> which one?"], images=images, answer=["red", "left"]
    )
    return model, inputs


def _no_raw(markup: str) -> None:
    """No data string reached the markup unescaped: no script / img tag, no event handler."""
    assert "<script" not in markup and "<img" not in markup and "onerror=" not in markup.replace("onerror=&quot;", "")


def test_layout_display_shows_every_run_in_its_modality_colour(run) -> None:
    model, inputs = run
    layout = model.layout(inputs)
    markup = layout._repr_html_()
    for row in range(2):
        line = layout.describe(row)
        assert html.escape(line) in markup
        assert f"row {row}: {line}" in repr(layout)
    # independent reading of the layout: each maximal run of one (modality, image) key
    runs = re.findall(
        r'data-modality="(\w+)" data-start="(\d+)" data-end="(\d+)" style="flex:(\d+) 0 0;background:(#\w+)', markup
    )
    for row in range(2):
        mod, img = layout.modality[row].tolist(), layout.image_id[row].tolist()
        expected, start = [], 0
        for i in range(1, len(mod) + 1):
            if i == len(mod) or (mod[i], img[i]) != (mod[start], img[start]):
                expected.append((start, i))
                start = i
        got = [(int(s), int(e)) for _, s, e, _, _ in runs[: len(expected)]]
        assert got == expected
        assert all(int(f) == int(e) - int(s) for _, s, e, f, _ in runs[: len(expected)])  # width = positions
        names = [n for n, *_ in runs[: len(expected)]]
        assert [MODALITY_COLORS[n] for n in names] == [c for *_, c in runs[: len(expected)]]
        assert {"image", "text", "special"} <= set(names)
        runs = runs[len(expected) :]
    assert not runs


def test_sweep_result_display_ranks_top_rows_and_plots_them(run) -> None:
    model, inputs = run
    result = sweep(model, inputs, single_neurons(model, layers=0)[:16], answer_logprob(model, inputs), progress=False)
    assert_clean(model)
    markup = result._repr_html_()
    delta = result.values - result.clean  # independent of the table
    top = delta.abs().argsort(descending=True)[:10].tolist()
    bars = [float(v) for v in re.findall(r'class="hmm-bar-rect"[^>]*data-v="([^"]+)"', markup)]
    assert bars == pytest.approx([float(delta[i]) for i in top], rel=1e-5)
    neurons = [int(n) for n in re.findall(r">L0 N(\d+)<", markup)]
    assert neurons == [int(result.table.neuron[i]) for i in top]
    cells = re.findall(r"<tr>(.*?)</tr>", markup)[1:]
    assert len(cells) == 10
    assert "16 configs" in repr(result) and f"{float(result.clean):.4g}" in repr(result)
    assert "<svg" in markup and "http" not in markup.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_sweep_display_of_a_vector_metric_ranks_by_the_norm() -> None:
    values = torch.tensor([[0.0, 0.0], [3.0, -4.0], [1.0, 1.0]])
    clean = torch.zeros(2)
    table = pd.DataFrame({"type": ["A", "B", NASTY], "delta_0": values[:, 0], "delta_1": values[:, 1]})
    markup = SweepResult(table, values, clean)._repr_html_()
    bars = [float(v) for v in re.findall(r'data-v="([^"]+)"', markup)]
    assert bars == pytest.approx([5.0, 2**0.5, 0.0], rel=1e-5)
    _no_raw(markup)
    assert html.escape(NASTY) in markup
    with pytest.raises(ValueError, match="no delta column"):
        SweepResult(pd.DataFrame({"value": [1.0]}), values[:1], clean)._repr_html_()


def test_attribution_display(run) -> None:
    model, inputs = run
    att = attribution_patching(model, inputs, answer_logprob(model, inputs), layers=[0, 1], verify_top_k=2)
    markup = att._repr_html_()
    flat = att.neurons.flatten()
    top = flat.abs().argsort(descending=True)[:10]
    bars = [float(v) for v in re.findall(r'data-v="([^"]+)"', markup)]
    assert bars == pytest.approx(flat[top].tolist(), rel=1e-5)
    d = att.neurons.shape[1]
    labels = re.findall(r">L(\d) N(\d+)<", markup)
    assert [(int(l), int(n)) for l, n in labels] == [([0, 1][int(i) // d], int(i) % d) for i in top]
    assert "exact" in markup and "Attribution(layers [0, 1]" in repr(att)


def _layers(text: str) -> list[int]:
    out = []
    for part in text.split(", "):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def test_cache_display_lists_every_activation(run) -> None:
    model, inputs = run
    _, cache = model.run_with_cache(inputs)
    markup, text = cache._repr_html_(), repr(cache)
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td>", markup)
    covered = 0
    for name, layers, shape, dtype in rows:
        for l in [None] if layers == "-" else _layers(layers):
            key = name if l is None else name.replace("*", str(l))
            assert list(cache[key].shape) == [int(x) for x in shape.strip("[]").split(", ")]
            assert str(cache[key].dtype) == f"torch.{dtype}"
            covered += 1
    assert covered == len(cache.cache_dict)
    total = sum(v.numel() * v.element_size() for v in cache.cache_dict.values())
    assert sum(r[4] for r in cache_groups(cache.cache_dict)) == total
    assert f"{len(cache.cache_dict)} activations" in markup and text.startswith("MLLMCache(")
    assert len(text) < 2000


def test_cache_groups_merge_layers_only_for_equal_shapes() -> None:
    d = {f"blocks.{l}.hook_x": torch.zeros(2, 3) for l in (0, 1, 2, 5)} | {"blocks.3.hook_x": torch.zeros(2, 4)}
    rows = {(n, l, s) for n, l, s, _, _ in cache_groups(d)}
    assert rows == {("blocks.*.hook_x", "0-2, 5", "[2, 3]"), ("blocks.*.hook_x", "3", "[2, 4]")}


def test_graph_display_escapes_labels_and_lists_top_edges() -> None:
    g = synthetic_graph()
    markup = g._repr_html_()
    _no_raw(markup)
    for s, d, v in g.top_edges(10):
        assert f"<td>{html.escape(s)}</td>" in markup and f"<td>{html.escape(d)}</td>" in markup
    assert "graph_html(graph)" in markup and f"{len(g.nodes)} nodes" in markup
    g.nodes[0].label = NASTY_LABEL  # a label in the listed edges
    g.scores[0] = 100.0
    markup = g._repr_html_()
    _no_raw(markup)
    assert html.escape(NASTY_LABEL, quote=True) in markup


def test_every_view_displays_with_its_style_and_a_short_repr(run) -> None:
    model, inputs = run
    layout = model.layout(inputs)
    view = patch_heatmap_html(torch.arange(layout.shape[1], dtype=torch.float), layout, row=0)
    assert view._repr_html_().startswith("<style>") and ".hmm-grid{display:grid" in view._repr_html_()
    assert repr(view).startswith("PatchHeatmapHTML(1 panels")
    vis = Vis("ColoredTokens", {"tokens": ["a"] * 1000, "values": [0.0] * 1000})
    assert len(repr(vis)) < 100
    gh = graph_html(synthetic_graph())
    assert isinstance(gh, GraphHTML) and len(repr(gh)) < 100 and gh._repr_html_().startswith("<style>")


def test_images_under_heatmaps_are_grey(run) -> None:
    """The matplotlib panels draw the image grey (hooks_mm.vis.common.underlay): no hue of the image under values."""
    from PIL import Image as PILImage

    from hooks_mm.vis import patch_heatmap
    from hooks_mm.vis.common import UNDERLAY_FLOOR

    model, _ = run
    picture = PILImage.new("RGB", (32, 32), (255, 230, 0))
    inputs = model.to_inputs(["<image> what colour?"], images=[[picture]])
    layout = model.layout(inputs)
    fig = patch_heatmap(torch.zeros(layout.shape), layout, row=0, images=[picture])
    under = fig.axes[0].images[0].get_array()
    assert under.shape[-1] == 3 and (under[..., 0] == under[..., 1]).all() and (under[..., 1] == under[..., 2]).all()
    assert under.min() >= round(UNDERLAY_FLOOR * 255)


def test_ipython_formats_each_object_as_html_and_short_text(run) -> None:
    """What a notebook cell shows: IPython's own display formatter on each object."""
    from IPython.core.formatters import DisplayFormatter

    model, inputs = run
    _, cache = model.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_resid_post"))
    result = sweep(model, inputs, single_neurons(model, layers=0)[:4], answer_logprob(model, inputs))
    formatter = DisplayFormatter()
    for obj, kind in [
        (model.layout(inputs), "layout"),
        (cache, "cache"),
        (result, "sweep"),
        (synthetic_graph(), "graph"),
    ]:
        data, _ = formatter.format(obj)
        assert f'data-kind="{kind}"' in data["text/html"]
        assert len(data["text/plain"]) < 1500 and "tensor(" not in data["text/plain"]
