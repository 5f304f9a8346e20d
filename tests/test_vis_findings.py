"""Findings drawn with their controls (hooks_mm.vis.findings): real findings and curves of the organisms on small
n, and the figure's artists hold their numbers (the effect's interval, one dot per control draw, the control's
range, the null line, each curve's value and band)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection, PathCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from hooks_mm import HookedMLLM
from hooks_mm.analysis.findings import Finding, alignment, neuron_ablation
from hooks_mm.analysis.findings.curves import alignment_by_layer, erasure_by_depth
from hooks_mm.analysis.stats import Control, Verdict, bootstrap, verdict
from hooks_mm.vis.findings import EFFECT_AGREES, EFFECT_DISAGREES, curve_figure, finding_figure


@pytest.fixture(scope="module")
def toy() -> HookedMLLM:
    return HookedMLLM.from_pretrained("toy-llava")


@pytest.fixture(scope="module")
def ablation(toy: HookedMLLM) -> Finding:
    return neuron_ablation(toy, selector="top5", n=24, draws=20)


@pytest.fixture(scope="module")
def aligned(toy: HookedMLLM) -> Finding:
    return alignment(toy, n=12)


def _labelled(ax, cls, label: str) -> list:  # noqa: ANN001
    return [a for a in ax.get_children() if isinstance(a, cls) and a.get_label() == label]


def _one(ax, cls, label: str):  # noqa: ANN001, ANN202
    found = _labelled(ax, cls, label)
    assert len(found) == 1, f"{len(found)} {cls.__name__} labelled {label!r}"
    return found[0]


def _vertical(segment: np.ndarray) -> tuple[float, float, float]:
    """(x, y0, y1) of a vertical segment."""
    (x0, y0), (x1, y1) = segment
    assert x0 == x1
    return float(x0), float(y0), float(y1)


def test_the_effect_its_interval_and_every_control_draw_are_drawn(ablation: Finding) -> None:
    v = ablation.verdict
    fig = finding_figure(ablation)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    x, lo, hi = _vertical(_one(ax, LineCollection, "effect 95% interval").get_segments()[0])
    assert (lo, hi) == (v.effect.lo, v.effect.hi)
    point = _one(ax, Line2D, "effect")
    assert list(point.get_xdata()) == [x] and list(point.get_ydata()) == [v.effect.value]
    assert point.get_color() == (EFFECT_AGREES if v.agrees else EFFECT_DISAGREES)
    dots = _one(ax, PathCollection, "control (20 draws)").get_offsets()
    assert len(dots) == 20 and sorted(dots[:, 1].tolist()) == sorted(v.control.draws.tolist())
    cx, clo, chi = _vertical(_one(ax, LineCollection, "control 95% range").get_segments()[0])
    assert (clo, chi) == v.control.interval() and cx > x and np.abs(dots[:, 0] - cx).max() < 0.1
    (a, ya), (b, yb) = _one(ax, LineCollection, "control bound").get_segments()[0]
    assert ya == yb == chi and a < x < cx < b  # expect="greater": the effect must clear the control's top
    word = "agrees" if v.agrees else "does not agree"
    assert f"toy-llava: {word}, effect at pct {v.percentile:.0f}" in ax.get_title()
    assert not _labelled(ax, LineCollection, "null 0")


def test_a_null_finding_draws_the_null_line_and_no_draws(aligned: Finding) -> None:
    v = aligned.verdict
    ax = finding_figure([aligned]).axes[0]
    (a, ya), (b, yb) = _one(ax, LineCollection, "null 0").get_segments()[0]
    assert ya == yb == v.null == 0.0
    _, lo, hi = _vertical(_one(ax, LineCollection, "effect 95% interval").get_segments()[0])
    assert (lo, hi) == (v.effect.lo, v.effect.hi)
    assert not [c for c in ax.get_children() if isinstance(c, PathCollection)]
    assert ax.get_title().endswith("agrees" if v.agrees else "does not agree")


def test_a_less_finding_is_bounded_by_the_control_bottom() -> None:
    effect = bootstrap(torch.linspace(-3.0, -1.0, 30))
    f = Finding("lowers it", "toy", "less", verdict(effect, Control.of(torch.linspace(0.0, 1.0, 25)), expect="less"))
    ax = finding_figure(f).axes[0]
    (_, ya), (_, yb) = _one(ax, LineCollection, "control bound").get_segments()[0]
    assert ya == yb == f.verdict.control.interval()[0] and f.agrees
    assert _one(ax, Line2D, "effect").get_color() == EFFECT_AGREES


def test_a_list_gets_a_panel_each_or_shares_the_given_axes(ablation: Finding, aligned: Finding) -> None:
    fig = finding_figure([ablation, aligned])
    assert len(fig.axes) == 2
    assert _labelled(fig.axes[0], PathCollection, "control (20 draws)")
    assert _labelled(fig.axes[1], LineCollection, "null 0")
    own = Figure()
    ax = own.subplots()
    assert finding_figure([ablation, aligned], ax=ax) is own and len(own.axes) == 1
    points = _labelled(ax, Line2D, "effect")
    drawn = [v for p in points for v in (float(p.get_xdata()[0]), float(p.get_ydata()[0]))]
    assert drawn == pytest.approx([-0.18, ablation.verdict.effect.value, 0.82, aligned.verdict.effect.value], abs=1e-12)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ([], ValueError, "empty list"),
        ("a finding", TypeError, "not str"),
        ({"effect": 1.0}, TypeError, "not dict"),
        (3.0, TypeError, "not float"),
    ],
)
def test_finding_figure_misuse(bad, error, match) -> None:  # noqa: ANN001
    with pytest.raises(error, match=match):
        finding_figure(bad)


def test_finding_figure_refuses_parts_of_findings_and_a_wrong_ax(ablation: Finding) -> None:
    with pytest.raises(TypeError, match="item 1 is a Verdict, not a Finding"):
        finding_figure([ablation, ablation.verdict])
    with pytest.raises(TypeError, match="item 0 is a Interval"):
        finding_figure([ablation.verdict.effect])
    with pytest.raises(TypeError, match="pass a matplotlib Axes"):
        finding_figure(ablation, ax=Figure())
    e = ablation.verdict.effect
    neither = Finding("x", "toy", "?", Verdict(e, "greater", False))
    with pytest.raises(ValueError, match="exactly one of a control or a null"):
        finding_figure(neither)


@pytest.fixture(scope="module")
def layers(toy: HookedMLLM):  # noqa: ANN201
    return alignment_by_layer(toy, n=12)


def _band_ends(poly: PolyCollection, xs: np.ndarray) -> list[float]:
    """The band's bottom and top at each x, flattened: [lo_0, hi_0, lo_1, hi_1, ...]."""
    v = np.concatenate([p.vertices for p in poly.get_paths()])
    return [float(f(v[v[:, 0] == x, 1])) for x in xs for f in (np.min, np.max)]


def test_curve_figure_draws_each_value_and_its_band(layers) -> None:  # noqa: ANN001
    ax = curve_figure(layers, "layer", "cross", controls=("image_image", "text_text"), null=0.0).axes[0]
    lines = {ln.get_label(): ln for ln in ax.lines if ln.get_label() != "null 0"}
    assert list(lines) == ["cross", "control: image_image", "control: text_text"]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 3
    for (name, line), band in zip(lines.items(), bands):
        col = name.removeprefix("control: ")
        assert list(line.get_xdata()) == list(layers.layer) and list(line.get_ydata()) == list(layers[col])
        assert line.get_linestyle() == ("-" if col == "cross" else "--")
        want = [float(b) for pair in zip(layers[f"{col}_lo"], layers[f"{col}_hi"]) for b in pair]
        assert _band_ends(band, layers.layer.to_numpy(float)) == pytest.approx(want, abs=1e-12)
    assert [tuple(ln.get_ydata()) for ln in ax.get_lines() if ln.get_label() == "null 0"] == [(0.0, 0.0)]


def test_curve_figure_splits_by_a_column_and_places_sites_in_order(toy: HookedMLLM) -> None:
    t = erasure_by_depth(toy, n=12, ks=(8, 1))
    ax = curve_figure(t, "site", "gap", by="k", null=0.0).axes[0]
    for k in (8, 1):
        (line,) = [ln for ln in ax.lines if ln.get_label() == f"gap (k={k})"]
        rows = t[t.k == k]
        assert list(line.get_xdata()) == list(range(toy.cfg.n_layers)) and list(line.get_ydata()) == list(rows.gap)
    assert [tick.get_text() for tick in ax.get_xticklabels()] == list(dict.fromkeys(t.site))
    with pytest.raises(ValueError, match="repeats within one curve.*pass by="):
        curve_figure(t, "site", "gap")


@pytest.mark.parametrize(
    "kw, error, match",
    [
        ({"y": "gain"}, ValueError, "y='gain' is not a column"),
        ({"x": "depth"}, ValueError, "x='depth' is not a column"),
        ({"controls": ("layer",)}, ValueError, "controls='layer' has no interval \\(no column layer_lo, layer_hi\\)"),
        ({"controls": ("nope",)}, ValueError, "controls='nope' is not a column"),
        ({"by": "k"}, ValueError, "by='k' is not a column"),
        ({"y": []}, ValueError, "at least one column"),
        ({"null": float("nan")}, ValueError, "null=nan"),
        ({"ax": "axes"}, TypeError, "pass a matplotlib Axes"),
    ],
)
def test_curve_figure_misuse(layers, kw, error, match) -> None:  # noqa: ANN001
    args = {"x": "layer", "y": "cross", **kw}
    with pytest.raises(error, match=match):
        curve_figure(layers, args.pop("x"), args.pop("y"), **args)


def test_curve_figure_refuses_tables_it_cannot_draw(layers) -> None:  # noqa: ANN001
    with pytest.raises(TypeError, match="not dict"):
        curve_figure(layers.to_dict(), "layer", "cross")
    with pytest.raises(ValueError, match="empty table"):
        curve_figure(layers.iloc[:0], "layer", "cross")
    holed = layers.copy()
    holed.loc[1, "cross_hi"] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf in cross"):
        curve_figure(holed, "layer", "cross")
