"""Small helpers shared by the vis modules: arrays, token strings, colours, PNG data URIs, and the
heatmap panels (matplotlib axes, HTML cell grids) that image, video and audio views all draw."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np


def to_numpy(x: Any) -> np.ndarray:
    """Tensor / array / list -> numpy (float tensors as float64, on CPU, detached)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.double() if x.is_floating_point() else x
        return x.numpy()
    return np.asarray(x)


def str_tokens(model: Any, inputs: dict[str, Any], row: int = 0) -> list[str]:
    """One string per position of ``inputs["input_ids"][row]`` (special tokens kept).

    ``model`` is a :class:`~hooks_mm.HookedMLLM` (its processor's tokenizer is used), a
    processor or a tokenizer.

    Example::

        tokens = str_tokens(model, inputs, row=0)   # ['<s>', 'USER', ':', '<image>', ...]
    """
    proc = getattr(model, "processor", model)
    tok = getattr(proc, "tokenizer", proc)
    if tok is None or not hasattr(tok, "batch_decode"):
        raise ValueError(
            "str_tokens needs a tokenizer: load the model with its processor, or pass token strings yourself."
        )
    ids = to_numpy(inputs["input_ids"][row]).tolist()
    return tok.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)


def color_limits(
    *arrays: np.ndarray, vmin: float | None = None, vmax: float | None = None, cmap: str | None = None
) -> tuple[float, float, str]:
    """(vmin, vmax, cmap) shared by ``arrays``: ``cmap`` when given, else a symmetric ``RdBu_r``
    scale for signed values, ``viridis`` otherwise."""
    values = np.concatenate([np.ravel(a) for a in arrays])
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    if lo < 0 < hi and vmin is None and vmax is None:
        m = max(-lo, hi)
        return -m, m, cmap or "RdBu_r"
    lo = lo if vmin is None else vmin
    hi = hi if vmax is None else vmax
    if hi <= lo and vmin is None and vmax is None:  # one value everywhere: a scale around it (a 1e-9 wide one
        pad = abs(lo) / 2 if lo else 0.5  # gave colour bars of junk ticks that collapsed the figure's layout)
        lo, hi = lo - pad, hi + pad
    if hi <= lo:
        hi = lo + 1e-9
    return lo, hi, cmap or "viridis"


def pick(items: list[Any], which: int | None, attr: str, kind: str) -> list[Any]:
    """The ``items`` whose ``attr`` is ``which`` (all when None); an error names the ones there are."""
    if which is None:
        return items
    chosen = [m for m in items if getattr(m, attr) == which]
    if not chosen:
        raise ValueError(f"{kind} {which} is not in this row; it holds {kind}s {[getattr(m, attr) for m in items]}.")
    return chosen


def css_colors(values: np.ndarray, vmin: float, vmax: float, cmap: str, alpha: float = 1.0) -> list[str]:
    """CSS rgba() colours of ``values`` under a matplotlib colormap (NaN -> transparent)."""
    from matplotlib import colormaps

    cm = colormaps[cmap]
    out = []
    for v in np.asarray(values, dtype=float).ravel():
        if not np.isfinite(v):
            out.append("transparent")
            continue
        r, g, b, _ = cm(float(np.clip((v - vmin) / (vmax - vmin), 0, 1)))
        out.append(f"rgba({round(r * 255)},{round(g * 255)},{round(b * 255)},{alpha:g})")
    return out


def png_data_uri(obj: Any, dpi: int = 110) -> str:
    """``data:image/png;base64,...`` of a matplotlib Figure, a PIL image or PNG bytes."""
    if isinstance(obj, (bytes, bytearray)):
        data = bytes(obj)
    else:
        buf = io.BytesIO()
        if hasattr(obj, "savefig"):
            obj.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        else:
            obj.convert("RGB").save(buf, format="PNG")
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------------------------------
# heatmap panels

UNDERLAY_FLOOR = 0.55  # the darkest an underlay pixel gets (share of white): values' colours stay dominant


def underlay(image: Any) -> Any:
    """The PIL ``image`` as drawn under a heatmap: greyscale, faded to ``[UNDERLAY_FLOOR, 1]`` of white (issue 20).

    Under a value map every hue on the panel must be a value's: a yellow triangle under a ``viridis`` scale
    would read as high values (and a value's yellow as the triangle). Grey keeps the image's shapes, edges
    and light / dark, and cannot be mistaken for any colour of a scale; the faded range keeps the overlay's
    colours readable on black regions. The image's own colours: the image itself (the HTML views show it
    beside the panels).
    """
    grey = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    faded = (UNDERLAY_FLOOR + (1 - UNDERLAY_FLOOR) * grey) * 255.0
    from PIL import Image

    return Image.fromarray(np.repeat(faded.round().astype(np.uint8)[..., None], 3, -1), "RGB")


Scale = tuple[float, float, str]  # (vmin, vmax, cmap), from color_limits


def draw_panel(
    ax: Any,
    values: np.ndarray,
    scale: Scale,
    *,
    title: str,
    label: str,
    image: Any = None,
    alpha: float = 1.0,
    separators: np.ndarray | None = None,
    fontsize: int = 8,
) -> Any:
    """Draw a ``rows x cols`` grid of values on ``ax`` (over the PIL ``image`` when given, row
    separators as a narrow column on the right) and return its mappable."""
    lo, hi, cm = scale
    rows, cols = values.shape
    extent = (0, cols, rows, 0)
    if image is not None:
        ax.imshow(np.asarray(underlay(image)), extent=extent, interpolation="bilinear")
    over = np.ma.masked_invalid(values)
    mappable = ax.imshow(over, extent=extent, cmap=cm, vmin=lo, vmax=hi, alpha=alpha, interpolation="nearest")
    right = cols
    if separators is not None:
        sep = np.ma.masked_invalid(separators[:, None])
        ax.imshow(sep, extent=(cols + 0.25, cols + 1.0, rows, 0), cmap=cm, vmin=lo, vmax=hi, interpolation="nearest")
        ax.text(cols + 0.625, -0.1, "\u21b5", ha="center", va="bottom", fontsize=8)
        right = cols + 1.0
    ax.set(xlim=(0, right), ylim=(rows, 0), xticks=[], yticks=[])
    ax.set_title(title, fontsize=fontsize)
    ax.set_label(label)
    return mappable


def finish_figure(fig: Any, mappable: Any, axes: Any, title: str | None, **colorbar: Any) -> Any:
    """Add the shared colour bar and the title to ``fig``; returns it."""
    fig.colorbar(mappable, ax=list(axes), fraction=0.03, **colorbar)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def scale_html(scale: Scale, title: str | None) -> str:
    """The note above an HTML heatmap: its title and the colour bar from vmin to vmax."""
    lo, hi, cm = scale
    bar = ",".join(css_colors(np.linspace(lo, hi, 9), lo, hi, cm))
    label = html.escape(title) + " &middot; " if title else ""
    return (
        f'<div class="hmm-note">{label}'
        f'{lo:.3g}<span class="hmm-bar" style="background:linear-gradient(to right,{bar})"></span>{hi:.3g}</div>'
    )


def thumbnail_uri(image: Any, size: int) -> str | None:
    """PNG data URI of the PIL ``image`` as a heatmap's :func:`underlay`, shrunk to at most ``2 * size``
    pixels a side (None: None)."""
    if image is None:
        return None
    thumb = underlay(image)
    thumb.thumbnail((2 * size, 2 * size))  # enough for the panel, keeps the page small
    return png_data_uri(thumb)


def grid_html(
    values: np.ndarray, positions: np.ndarray, colors: list[str], w: int, h: int, cls: str = "hmm-grid", style: str = ""
) -> str:
    """A ``rows x cols`` CSS grid of cells (``data-pos``, ``data-r``, ``data-c``, ``data-v``; hover: value)."""
    rows, cols = values.shape
    cells = []
    for k, (v, p, c) in enumerate(zip(values.ravel(), positions.ravel(), colors)):
        r, q = divmod(k, cols)
        tip = f"pos {p} \u00b7 ({r}, {q}) \u00b7 {v:.4g}" if p >= 0 else "no position"
        cells.append(
            f'<div class="hmm-cell" data-pos="{p}" data-r="{r}" data-c="{q}" data-v="{v:.6g}" '
            f'style="background:{c}" title="{html.escape(tip)}"></div>'
        )
    return (
        f'<div class="{cls}" style="grid-template-columns:repeat({cols},1fr);grid-template-rows:repeat({rows},1fr);'
        f'width:{w}px;height:{h}px;{style}">{"".join(cells)}</div>'
    )


def panel_html(
    values: np.ndarray, positions: np.ndarray, scale: Scale, cell: int, uri: Any = None, alpha: float = 1
) -> str:
    """:func:`grid_html` of ``values`` with ``cell`` pixels a cell, over the image ``uri`` (its
    colours then ``alpha`` opaque) when given."""
    rows, cols = values.shape
    w, h = cell * cols, cell * rows
    if uri is None:
        return grid_html(values, positions, css_colors(values, *scale), w, h)
    style = "position:absolute;inset:0;gap:0;background:transparent;border:0"
    grid = grid_html(values, positions, css_colors(values, *scale, alpha), w, h, style=style)
    return f'<div class="hmm-grid-bg" style="width:{w}px;height:{h}px"><img src="{uri}" alt="">{grid}</div>'
