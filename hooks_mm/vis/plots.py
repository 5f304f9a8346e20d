"""Plots of experiments: per-layer curves, layer x position-group heatmaps, sweep results.

Each function returns a matplotlib ``Figure`` (no pyplot state): ``fig.savefig(path)``,
or display it in Jupyter.

Example::

    from hooks_mm.vis.plots import layer_curves, layer_group_heatmap, top_neurons
    layer_curves({"instruction -> image": flow}, ylabel="attention mass").savefig("flow.png")
    layer_group_heatmap(effect, ["text", "image0", "last"], value_label="logit diff")
    top_neurons(df.layer, df.neuron, df.value, k=20)
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hooks_mm.vis.common import color_limits, to_numpy


def _figure(w: float, h: float):
    """A ``w x h`` inch Figure and its one axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    return fig, fig.subplots()


def layer_curves(
    curves: Mapping[str, Any] | Any,
    *,
    layers: Sequence[int] | None = None,
    xlabel: str = "layer",
    ylabel: str = "value",
    title: str | None = None,
):
    """One line per series over layers: ``{"label": [v_layer0, v_layer1, ...]}`` or an
    array ``[series, layers]`` (e.g. attention mass instruction -> image, alignment)."""
    if not isinstance(curves, Mapping):
        arr = to_numpy(curves).astype(float)
        arr = arr[None] if arr.ndim == 1 else arr
        curves = {f"series {i}": a for i, a in enumerate(arr)}
    fig, ax = _figure(5.5, 3.2)
    for label, ys in curves.items():
        ys = to_numpy(ys).astype(float).ravel()
        xs = np.arange(len(ys)) if layers is None else np.asarray(layers)
        if len(xs) != len(ys):
            raise ValueError(f"series {label!r} has {len(ys)} values for {len(xs)} layers")
        ax.plot(xs, ys, marker="o", ms=3, label=str(label))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def layer_group_heatmap(
    values: Any,
    groups: Sequence[str],
    *,
    layers: Sequence[Any] | None = None,
    value_label: str = "effect",
    title: str | None = None,
    cmap: str | None = None,
    annotate: bool | None = None,
):
    """Heatmap of ``values[layer, group]`` (e.g. patching effect of each layer at each
    position group); signed values get a symmetric diverging scale."""
    v = to_numpy(values).astype(float)
    if v.ndim != 2 or v.shape[1] != len(groups):
        raise ValueError(f"values must be [layers, groups] with {len(groups)} groups; got shape {v.shape}")
    layers = list(range(v.shape[0])) if layers is None else list(layers)
    lo, hi, cm = color_limits(v, cmap=cmap)
    height = max(2.0, 1.0 + 0.32 * len(layers))  # room for the colour bar's label (issue 20: it was clipped)
    fig, ax = _figure(max(2.6, 1.4 + 0.7 * len(groups)), height)
    im = ax.imshow(v, aspect="auto", cmap=cm, vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_xticks(range(len(groups)), [str(g) for g in groups], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), [str(l) for l in layers], fontsize=8)
    ax.set_ylabel("layer")
    if annotate or (annotate is None and v.size <= 150):
        for (i, j), x in np.ndenumerate(v):
            ax.text(j, i, f"{x:.2g}", ha="center", va="center", fontsize=6, color="k")
    # a vertical label longer than the bar is wrapped onto lines that fit the figure's height (~0.09 in a char)
    fig.colorbar(im, ax=ax, label=textwrap.fill(str(value_label), max(6, int((height - 0.6) / 0.09))))
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def top_neurons(
    layer: Any, neuron: Any, value: Any, *, k: int = 20, title: str | None = None, value_label: str = "value"
):
    """Horizontal bars of the ``k`` (layer, neuron) pairs with the largest |value|."""
    l, n, v = (to_numpy(x).ravel() for x in (layer, neuron, value))
    v = v.astype(float)
    order = np.argsort(-np.abs(v), kind="stable")[:k][::-1]
    fig, ax = _figure(5.0, 0.8 + 0.22 * len(order))
    ax.barh(range(len(order)), v[order], color=["#c0392b" if x > 0 else "#2c7fb8" for x in v[order]])
    ax.set_yticks(range(len(order)), [f"L{int(l[i])} N{int(n[i])}" for i in order], fontsize=7)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel(value_label)
    ax.set_title(title or f"top {len(order)} neurons by |{value_label}|", fontsize=10)
    return fig


def layer_distribution(layer: Any, value: Any, *, title: str | None = None, value_label: str = "value"):
    """Per-layer distribution of ``value`` (box plot with every point jittered on top)."""
    l, v = to_numpy(layer).ravel(), to_numpy(value).ravel().astype(float)
    layers = sorted(set(l.tolist()))
    data = [v[l == x] for x in layers]
    fig, ax = _figure(1.5 + 0.45 * len(layers), 3.2)
    ax.boxplot(data, positions=range(len(layers)), widths=0.6, showfliers=False)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data):
        ax.scatter(i + rng.uniform(-0.18, 0.18, len(d)), d, s=4, alpha=0.5, color="#2c7fb8")
    ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=8)
    ax.set_xlabel("layer")
    ax.set_ylabel(value_label)
    ax.set_title(title or f"{value_label} per layer", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return fig
