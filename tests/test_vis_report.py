"""The run-directory report and the plots it draws (the browser side: test_vis_browser)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hooks_mm import HookedMLLM, Image
from hooks_mm.vis import colored_tokens, patch_heatmap, str_tokens
from hooks_mm.vis.plots import layer_curves, layer_distribution, layer_group_heatmap, top_neurons
from hooks_mm.vis.report import main, write_report
from hooks_mm.zoo import toy_image


def neuron_sweep(model: HookedMLLM, inputs, neurons: range) -> list[dict]:
    """Zero-ablate each MLP neuron at the image positions; metric: change of the clean top logit."""
    img = model.layout(inputs).select(Image())
    with torch.no_grad():
        clean = model(inputs)[0, -1]
    target = int(clean.argmax())
    rows = []
    for layer in range(model.cfg.n_layers):
        for n in neurons:

            def ablate(acts, hook, n=n):
                acts[..., n] = acts[..., n].masked_fill(img, 0.0)

            with torch.no_grad():
                out = model.run_with_hooks(inputs, fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", ablate)])[0, -1]
            rows.append(
                {"layer": layer, "neuron": n, "metric": "logit_diff", "value": float(out[target] - clean[target])}
            )
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as a neuron-ablation sweep writes it, with a figure and a view."""
    d = tmp_path_factory.mktemp("run")
    model = HookedMLLM.from_pretrained("tiny-llava")
    images = [toy_image(1)]
    inputs = model.to_inputs(["<image> What colour is the square?"], images=[images])
    write_csv(d / "results.csv", neuron_sweep(model, inputs, range(6)))
    meta = {
        "model": "tiny-llava",
        "command": "sweep <b>neurons</b>",
        "created": "2025-01-01T00:00:00",
        "positions": ["Image()"],
    }
    (d / "meta.json").write_text(json.dumps(meta))
    layout = model.layout(inputs)
    _, cache = model.run_with_cache(inputs)
    attn = cache["blocks.1.attn.hook_pattern"][0, :, -1].mean(0)
    patch_heatmap(attn, layout, images=images).savefig(d / "attention.png")
    colored_tokens(str_tokens(model, inputs), attn, layout, images=images).save(d / "tokens.html")
    return d


def test_report_renders_the_run(run_dir: Path) -> None:
    out = write_report(run_dir)
    assert out == run_dir / "report.html"
    html = out.read_text()
    assert "sweep &lt;b&gt;neurons&lt;/b&gt;" in html and "<b>neurons</b>" not in html  # meta escaped
    with open(run_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    best = max(rows, key=lambda r: abs(float(r["value"])))
    table = html.split("<h2>Results</h2>", 1)[1]
    first = re.search(r"<tr><td>(\d+)</td><td>(\d+)</td>", table).groups()
    assert first == (best["layer"], best["neuron"])  # rows sorted by |value|
    assert f"top {min(20, len(rows))} of {len(rows)} rows by |value|" in html
    assert "top neurons (logit_diff)" in html and "per-layer distribution (logit_diff)" in html
    assert html.count("data:image/png;base64,") >= 3  # two default plots + attention.png
    assert "<iframe title='tokens.html'" in html
    assert not re.search(r"""(src|href)=["']?https?:""", html)


def test_report_column_sets_and_cli(tmp_path: Path, capsys) -> None:
    write_csv(
        tmp_path / "results.csv",
        [
            {"layer": l, "group": g, "metric": "logit_diff", "value": float(l - i)}
            for l in range(3)
            for i, g in enumerate(["text", "image0", "last"])
        ],
    )
    assert main([str(tmp_path), "--out", str(tmp_path / "r.html"), "--top", "4"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert "layer x group (logit_diff)" in html and "first 4" not in html and "top 4 of 9 rows" in html
    write_csv(tmp_path / "results.csv", [{"layer": l, "value": l * 0.5} for l in range(4)])
    assert "value per layer" in write_report(tmp_path).read_text()
    # as `hooks-mm sweep` writes it: value = metric after ablation, delta = its change
    write_csv(
        tmp_path / "results.csv",
        [{"layer": 0, "neuron": n, "value": -3.0 + d, "delta": d} for n, d in enumerate([0.01, -0.5, 0.2])],
    )
    html = write_report(tmp_path).read_text()
    assert "rows by |delta|" in html and "top neurons (delta)" in html
    first = re.search(r"<tr><td>(\d+)</td><td>(\d+)</td>", html.split("<h2>Results</h2>", 1)[1]).groups()
    assert first == ("0", "1")


def test_report_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds nothing to report"):
        write_report(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta.json is not valid JSON"):
        write_report(tmp_path)
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / "results.csv").write_text("")
    with pytest.raises(ValueError, match="results.csv is empty"):
        write_report(tmp_path)
    assert not list(tmp_path.glob("report.html*"))  # nothing half written


def test_plots_draw_their_data() -> None:
    rng = np.random.default_rng(0)
    layer, neuron, value = np.repeat([0, 1, 2], 10), np.tile(np.arange(10), 3), rng.normal(size=30)
    fig = top_neurons(layer, neuron, value, k=5)
    bars = [p.get_width() for p in fig.axes[0].patches]
    assert bars == list(value[np.argsort(-np.abs(value))[:5]][::-1])
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    i = int(np.argmax(np.abs(value)))
    assert labels[-1] == f"L{layer[i]} N{neuron[i]}"
    fig = layer_distribution(layer, value)
    medians = [line.get_ydata()[0] for line in fig.axes[0].lines if line.get_color() in ("C1", "#ff7f0e")]
    np.testing.assert_allclose(medians, [np.median(value[layer == l]) for l in range(3)])
    grid = rng.normal(size=(4, 3))
    fig = layer_group_heatmap(grid, ["text", "image0", "last"])
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), grid)
    lo, hi = fig.axes[0].images[0].get_clim()
    assert lo == -hi == -np.abs(grid).max()  # signed values: symmetric scale
    fig = layer_curves({"flow": [0.1, 0.5, 0.2]}, ylabel="attention mass")
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), [0.1, 0.5, 0.2])
    with pytest.raises(ValueError, match="with 4 groups; got shape"):
        layer_group_heatmap(grid, ["a", "b", "c", "d"])
