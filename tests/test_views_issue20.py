"""Issue 20's view fixes: the attention views speak of one index space (the display units circuitsvis numbers,
with their sequence positions), say that an image block's attention is summed over its keys, and the colour-bar
label of ``layer_group_heatmap`` lies inside the figure."""

from __future__ import annotations

import html
import re
import warnings

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from hooks_mm import HookedMLLM, Modality
from hooks_mm.vis import attention_heads, attention_pattern, str_tokens
from hooks_mm.vis.plots import layer_group_heatmap
from hooks_mm.zoo import toy_image


@pytest.fixture(scope="module")
def run():
    model = HookedMLLM.from_pretrained("tiny-llava")
    inputs = model.to_inputs(
        ["<image> a?", "<image> <image> which one is red?"], images=[[toy_image(1)], [toy_image(2), toy_image(3)]]
    )
    _, cache = model.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_pattern"))
    return model, inputs, model.layout(inputs), cache["blocks.0.attn.hook_pattern"]


def test_attention_captions_use_the_axis_numbers(run) -> None:
    model, inputs, layout, pattern = run
    row = 0  # left-padded: unit i is not position i
    tokens = str_tokens(model, inputs, row)
    v = attention_heads(pattern, tokens, layout, row=row)
    labels = v.props["tokens"]
    unit, label, pos = re.search(r"attention from unit \((\d+)\) (.*?) = sequence position (\d+)", v.extra).groups()
    real = np.flatnonzero(layout.modality[row].numpy() != Modality.PAD)
    assert int(pos) == real[-1]  # the default query: the last real position
    assert labels[int(unit)] == label == tokens[int(pos)] and int(unit) == len(labels) - 1 != int(pos)
    # each image block named with its axis number and its positions, from the layout itself
    image = np.flatnonzero(layout.modality[row].numpy() == Modality.IMAGE)
    k = labels.index("[image0:4x4]")
    assert f"({k}) [image0:4x4] = positions {image[0]}-{image[-1]}" in v.extra
    assert "padding is left out" in v.extra
    q = int(real[-2])  # an explicit query position (a text token: one position, one unit)
    v = attention_heads(pattern, tokens, layout, row=row, query=q)
    caption = f"attention from unit ({len(labels) - 2}) {html.escape(tokens[q])} = sequence position {q} "
    assert caption in v.extra


def test_attention_views_say_image_columns_are_summed(run) -> None:
    model, inputs, layout, pattern = run
    tokens = str_tokens(model, inputs, 1)
    for view in (attention_heads(pattern, tokens, layout, row=1), attention_pattern(pattern[1, 0], tokens, layout, 1)):
        assert "summed over its positions" in view.extra and "same colour scale" in view.extra
        labels = view.props["tokens"]
        k = labels.index("[image1:4x4]")
        image1 = np.flatnonzero((layout.image_index[1] == 1).numpy() & (layout.modality[1] == Modality.IMAGE).numpy())
        att = np.asarray(view.props["attention"])
        last = pattern[1, :, -1].double().numpy() if att.ndim == 3 else pattern[1, 0, -1].double().numpy()
        got = att[..., -1, k]
        want = last[..., image1].sum(-1)  # the summed mass the note describes
        np.testing.assert_allclose(got, want, atol=1e-6)
    flat = attention_pattern(pattern[1, 0], tokens, layout, 1, collapse_images=False)
    assert "Image blocks" not in flat.extra and "Axis numbers (i) are sequence positions." in flat.extra


@pytest.mark.parametrize(
    "layers, groups, label",
    [
        (1, ["x"], "effect"),
        (2, ["text"], "logit diff"),
        (4, ["text", "image0", "last"], "a long value label here (nats)"),
        (3, ["instruction", "image0/t0"], "logit difference after patching the residual stream (nats per token)"),
        (40, ["g"] * 8, "effect"),
    ],
)
def test_layer_group_heatmap_colour_bar_label_is_inside(layers, groups, label) -> None:
    values = np.random.default_rng(0).normal(size=(layers, len(groups)))
    fig = layer_group_heatmap(values, groups, value_label=label)
    FigureCanvasAgg(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied": the figure was too small
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (bar,) = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    text = bar.yaxis.label
    assert text.get_text().replace("\n", " ") == label
    box, page = text.get_window_extent(renderer), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, (box, page)
    tight = fig.get_tightbbox(renderer)  # inches: everything drawn lies on the figure
    w, h = fig.get_size_inches()
    assert tight.x0 >= 0 and tight.y0 >= 0 and tight.x1 <= w + 1e-6 and tight.y1 <= h + 1e-6
