"""``hooks-mm report RUN_DIR``: one self-contained, offline HTML page for a run directory.

A run directory holds ``meta.json`` (model, command, created, any other fields),
``results.csv`` (a tidy table, one row per configuration) and optionally ``*.png``
figures and ``*.html`` fragments. The report shows the meta data, the table's top rows,
default plots for the column sets it knows, and every figure and fragment, all inlined
(images as data URIs, fragments in sandbox-free ``srcdoc`` iframes) so the file opens
without a network.

The *effect* column is ``delta`` when the table has one (the change a configuration made,
as ``hooks-mm sweep`` writes it), else ``effect``, else ``value``; rows are ranked by its
absolute value. Known column sets (a ``metric`` column, when present, gives one set of
plots per metric):

* ``layer, neuron, <effect>``: top neurons by |effect|, and the per-layer distribution;
* ``layer, group, <effect>`` (also ``position`` / ``position_group``): layer x group heatmap;
* ``layer, <effect>``: the effect per layer (mean over rows).

Example::

    from hooks_mm.vis.report import write_report
    path = write_report("runs/ablate-llava")      # runs/ablate-llava/report.html
"""

from __future__ import annotations

import argparse
import csv
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hooks_mm.vis.common import png_data_uri
from hooks_mm.vis.html import page
from hooks_mm.vis.plots import layer_curves, layer_distribution, layer_group_heatmap, top_neurons

REPORT_NAME = "report.html"
GROUP_COLUMNS = ("group", "position_group", "position")
EFFECT_COLUMNS = ("delta", "effect", "value")


def read_table(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of a CSV file; numeric cells become floats (ints stay ints)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ValueError(f"{path} is empty: a results table needs a header row (e.g. layer,neuron,metric,value).")
        rows = [{k: _number(v) for k, v in r.items()} for r in reader]
    return list(reader.fieldnames), rows


def _number(text: Any) -> Any:
    if text is None:
        return ""
    try:
        f = float(text)
    except ValueError:
        return text
    return int(f) if f.is_integer() and "." not in text and "e" not in text.lower() else f


def _is_numeric(rows: list[dict[str, Any]], col: str) -> bool:
    return bool(rows) and all(isinstance(r[col], (int, float)) for r in rows)


def _meta_html(meta: dict[str, Any], run_dir: Path, title: str) -> str:
    items = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td style='text-align:left'>"
        f"{html.escape(v if isinstance(v, str) else json.dumps(v, default=str))}</td></tr>"
        for k, v in meta.items()
    )
    return f"<h1>{html.escape(title)}</h1><p class='hmm-note'>run directory: {html.escape(str(run_dir))}</p>" + (
        f"<table class='hmm-table'>{items}</table>" if items else ""
    )


def effect_column(cols: list[str], rows: list[dict[str, Any]]) -> str | None:
    """The column rows are ranked and plotted by (see the module docstring)."""
    return next((c for c in EFFECT_COLUMNS if c in cols and _is_numeric(rows, c)), None)


def _table_html(cols: list[str], rows: list[dict[str, Any]], top: int) -> str:
    shown, note = rows, f"first {min(top, len(rows))} of {len(rows)} rows"
    effect = effect_column(cols, rows)
    if effect is not None:
        shown = sorted(rows, key=lambda r: -abs(r[effect]))
        note = f"top {min(top, len(rows))} of {len(rows)} rows by |{effect}|"

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r[c]))}</td>" for c in cols) + "</tr>" for r in shown[:top])
    return f"<h2>Results</h2><p class='hmm-note'>{note}</p><table class='hmm-table'><tr>{head}</tr>{body}</table>"


def default_plots(cols: list[str], rows: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(caption, Figure) for the column sets this module knows (see the module docstring)."""
    effect = effect_column(cols, rows)
    if not rows or "layer" not in cols or effect is None:
        return []
    metrics = sorted({str(r["metric"]) for r in rows}) if "metric" in cols else [None]
    group = next((c for c in GROUP_COLUMNS if c in cols), None)
    out = []
    for metric in metrics:
        sub = [r for r in rows if metric is None or str(r["metric"]) == metric]
        name = metric or effect
        layer = np.array([r["layer"] for r in sub])
        value = np.array([r[effect] for r in sub], dtype=float)
        if "neuron" in cols and _is_numeric(sub, "neuron"):
            neuron = np.array([r["neuron"] for r in sub])
            out.append((f"top neurons ({name})", top_neurons(layer, neuron, value, value_label=name)))
            out.append((f"per-layer distribution ({name})", layer_distribution(layer, value, value_label=name)))
        elif group is not None:
            layers = sorted(set(layer.tolist()))
            groups = list(dict.fromkeys(str(r[group]) for r in sub))
            grid = np.full((len(layers), len(groups)), np.nan)
            for r in sub:
                grid[layers.index(r["layer"]), groups.index(str(r[group]))] = r[effect]
            out.append(
                (f"layer x {group} ({name})", layer_group_heatmap(grid, groups, layers=layers, value_label=name))
            )
        else:
            layers = sorted(set(layer.tolist()))
            mean = [float(value[layer == l].mean()) for l in layers]
            out.append((f"{name} per layer", layer_curves({name: mean}, layers=layers, ylabel=name)))
    return out


def _figure_html(caption: str, uri: str) -> str:
    text = html.escape(caption)
    img = f"<img class='hmm-fig' src='{uri}' alt='{text}'>"
    return f"<figure>{img}<figcaption class='hmm-note'>{text}</figcaption></figure>"


def _fragment_html(path: Path) -> str:
    doc = path.read_text(encoding="utf-8")
    fit = "this.style.height=(this.contentDocument.documentElement.scrollHeight+20)+'px'"
    return (
        f"<h3>{html.escape(path.name)}</h3><iframe title='{html.escape(path.name)}' "
        f'srcdoc="{html.escape(doc, quote=True)}" '
        f"style='width:100%;height:600px;border:1px solid #ddd' onload=\"{fit}\"></iframe>"
    )


def write_report(run_dir: str | Path, out: str | Path | None = None, top: int = 20) -> Path:
    """Write ``RUN_DIR/report.html`` (or ``out``) and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run directory {run_dir} does not exist; pass the directory holding meta.json / results.csv."
        )
    out = Path(out) if out is not None else run_dir / REPORT_NAME
    meta: dict[str, Any] = {}
    if (run_dir / "meta.json").is_file():
        try:
            meta = json.loads((run_dir / "meta.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{run_dir / 'meta.json'} is not valid JSON ({e}); fix or remove it.") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{run_dir / 'meta.json'} must hold a JSON object of fields, not {type(meta).__name__}.")
    pngs = sorted(run_dir.glob("*.png"))
    frags = sorted(p for p in run_dir.glob("*.html") if p.resolve() != out.resolve() and p.name != REPORT_NAME)
    results = run_dir / "results.csv"
    if not meta and not results.is_file() and not pngs and not frags:
        raise ValueError(f"{run_dir} holds nothing to report: expected meta.json, results.csv, *.png or *.html.")
    title = str(meta.get("title") or meta.get("command") or run_dir.name)
    parts = [_meta_html(meta, run_dir, title)]
    if results.is_file():
        cols, rows = read_table(results)
        parts.append(_table_html(cols, rows, top))
        plots = default_plots(cols, rows)
        if plots:
            parts.append("<h2>Plots</h2>" + "".join(_figure_html(c, png_data_uri(f)) for c, f in plots))
    if pngs:
        parts.append("<h2>Figures</h2>" + "".join(_figure_html(p.name, png_data_uri(p.read_bytes())) for p in pngs))
    if frags:
        parts.append("<h2>Views</h2>" + "".join(_fragment_html(p) for p in frags))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page(parts, title=title), encoding="utf-8")
    tmp.replace(out)  # never a half-written report
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``hooks-mm report RUN_DIR [--out FILE] [--top N]``."""
    parser = argparse.ArgumentParser(
        prog="hooks-mm report", description="Write one self-contained offline HTML page for a run directory."
    )
    parser.add_argument("run_dir", help="directory with meta.json, results.csv, *.png, *.html")
    parser.add_argument("--out", default=None, help=f"output file (default RUN_DIR/{REPORT_NAME})")
    parser.add_argument("--top", type=int, default=20, help="table rows to show (default 20)")
    args = parser.parse_args(argv)
    print(write_report(args.run_dir, args.out, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
