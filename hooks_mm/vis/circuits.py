"""circuitsvis views of a multimodal prompt: offline, escaped, image spans collapsed.

Every function takes one batch row (``row``) of a batch, the row's token strings and its
:class:`~hooks_mm.ModalityLayout`; each image span is shown as ONE labelled token
(``[image0:4x4]``) and its patch grid is drawn below the view (attention from the query
position, the values, the chosen neurons). ``collapse_images=False`` keeps every position.
The result is a :class:`~hooks_mm.vis.html.Vis`: it displays in Jupyter without internet,
``.save(path)`` writes an offline page, and :func:`~hooks_mm.vis.html.page` puts several
on one page.

Example::

    from hooks_mm.vis import attention_heads, colored_tokens, str_tokens
    logits, cache = model.run_with_cache(inputs)
    layout, tokens = model.layout(inputs), str_tokens(model, inputs, row=0)
    attention_heads(cache["blocks.1.attn.hook_pattern"], tokens, layout, row=0, images=[img])
    colored_tokens(tokens, cache["blocks.1.hook_resid_post"][0].norm(dim=-1), layout, row=0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hooks_mm.layout import Modality, ModalityLayout
from hooks_mm.vis.common import to_numpy
from hooks_mm.vis.heatmap import patch_heatmap_html
from hooks_mm.vis.html import Vis, escape_token
from hooks_mm.vis.spans import Reduce, Units, collapse_attention, reduce, units


def _row(x: Any, layout: ModalityLayout | None, row: int, ndim: int, seq_axis: int = -1) -> np.ndarray:
    """One row of ``x``: a leading batch axis is dropped; positions must match the layout."""
    x = to_numpy(x).astype(float)
    if x.ndim == ndim + 1:
        x = x[row]
    if x.ndim != ndim:
        raise ValueError(
            f"expected {ndim} dimensions for one row (or {ndim + 1} with a batch axis first), got shape {x.shape}"
        )
    if layout is not None and x.shape[seq_axis] != layout.shape[1]:
        raise ValueError(f"shape {x.shape} does not match the layout's {layout.shape[1]} positions per row")
    return x


def _square(p: np.ndarray) -> np.ndarray:
    """``p`` ``[..., query, key]``, refused unless every position is a query (a ``pos=`` cache keeps some)."""
    if p.shape[-2] != p.shape[-1]:
        raise ValueError(
            f"attention pattern of shape {p.shape}: {p.shape[-2]} queries for {p.shape[-1]} keys. A "
            "run_with_cache(pos=...) pattern keeps only the selected queries (query k is not position k, and "
            "ragged rows are NaN-padded): cache the pattern without pos=."
        )
    return p


def _grids(values: np.ndarray, layout: ModalityLayout | None, row: int, images: Any, tile_grid: Any, title: str) -> str:
    if layout is None or not bool((layout.modality[row] == Modality.IMAGE).any()):
        return ""
    if all(r == 0 for grid in layout.grids for _, r, _ in grid):  # Mllama: no patch grid
        return ""
    return patch_heatmap_html(values, layout, row, images=images, tile_grid=tile_grid, title=title).html


def _last_real(layout: ModalityLayout | None, row: int, seq: int) -> int:
    if layout is None:
        return seq - 1
    return int(np.flatnonzero(to_numpy(layout.modality[row]) != Modality.PAD)[-1])


def attention_heads(
    pattern: Any,
    tokens: Sequence[str] | None,
    layout: ModalityLayout | None = None,
    row: int = 0,
    *,
    heads: Sequence[int] | None = None,
    query: int | None = None,
    collapse_images: bool = True,
    images: Sequence[Any] | None = None,
    tile_grid: Any = None,
    title: str = "",
    mask_upper_tri: bool | None = None,
) -> Vis:
    """circuitsvis ``AttentionHeads`` of ``pattern`` ``[head, query, key]`` (or with a batch
    axis first, e.g. ``cache["blocks.0.attn.hook_pattern"]``).

    Image blocks: attention summed over the block's keys, averaged over its queries. Below:
    attention from position ``query`` (default: the last real position) to every image
    patch, averaged over the shown heads.
    """
    p = _square(_row(pattern, layout, row, 3))
    seq = p.shape[-1]
    u = units(layout, row, tokens, seq_len=seq, collapse=collapse_images)
    heads = list(range(p.shape[0])) if heads is None else list(heads)
    p = p[heads]
    q = _last_real(layout, row, seq) if query is None else query % seq
    uq = _unit_of(u, q)
    grids = _grids(
        p[:, q, :].mean(0),
        layout,
        row,
        images,
        tile_grid,
        f"attention from unit ({uq}) {u.labels[uq]} = sequence position {q} to the image patches (cells: sequence "
        f"positions), mean over heads {heads}",
    )
    props = {
        "attention": collapse_attention(p, u),
        "tokens": u.labels,  # axis labels are plain text in AttentionHeads
        "attentionHeadNames": [f"head {h}" for h in heads],
        "maskUpperTri": mask_upper_tri,
    }
    return Vis("AttentionHeads", props, title=title, extra=units_note(u) + grids)


def attention_pattern(
    pattern: Any,
    tokens: Sequence[str] | None,
    layout: ModalityLayout | None = None,
    row: int = 0,
    *,
    collapse_images: bool = True,
    title: str = "",
) -> Vis:
    """circuitsvis ``AttentionPattern`` of one head's ``[query, key]`` pattern (WebGL-free
    browsers need ``--enable-unsafe-swiftshader`` to draw it)."""
    p = _square(_row(pattern, layout, row, 2))
    u = units(layout, row, tokens, seq_len=p.shape[-1], collapse=collapse_images)
    props = {"attention": collapse_attention(p, u), "tokens": u.labels}
    return Vis("AttentionPattern", props, title=title, extra=units_note(u))


def units_note(u: Units) -> str:
    """The note under an attention view (issue 20): the axis numbers ``(i)`` circuitsvis prints are display units,
    not sequence positions (the positions of each image block are listed), and an image block's key column is the
    attention SUMMED over its positions, on the same colour scale as single tokens."""
    blocks = [(i, lab, ps) for i, (lab, ps, img) in enumerate(zip(u.labels, u.positions, u.image_id)) if img >= 0]
    if not blocks and u.first == list(range(u.seq_len)):
        return '<div class="hmm-note hmm-units-note">Axis numbers (i) are sequence positions.</div>'
    shift = "" if u.first == list(range(len(u))) else " (padding is left out, so unit i is not position i)"
    text = f"Axis numbers (i) count display units, not sequence positions{shift}; the captions name both."
    if blocks:
        spans = ", ".join(f"({i}) {escape_token(lab)} = positions {ps[0]}-{ps[-1]}" for i, lab, ps in blocks)
        text += (
            f" Image blocks: {spans}. An image block's column is the attention summed over its positions (the mass "
            "on the whole image), on the same colour scale as one token's; its row is the mean over its positions. "
            "Per-patch attention: the grid below, or collapse_images=False."
        )
    return f'<div class="hmm-note hmm-units-note">{text}</div>'


def _unit_of(u: Units, pos: int) -> int:
    for i, ps in enumerate(u.positions):
        if pos in ps:
            return i
    raise ValueError(f"query position {pos} is padding: pick a real position of the row (default: the last one)")


def colored_tokens(
    tokens: Sequence[str] | None,
    values: Any,
    layout: ModalityLayout | None = None,
    row: int = 0,
    *,
    reduce_images: Reduce = "mean",
    collapse_images: bool = True,
    images: Sequence[Any] | None = None,
    tile_grid: Any = None,
    title: str = "",
) -> Vis:
    """circuitsvis ``ColoredTokens`` of one value per position (``[seq]`` or ``[batch, seq]``);
    an image block shows the ``reduce_images`` of its positions, its patch grid below."""
    v = _row(values, layout, row, 1)
    u = units(layout, row, tokens, seq_len=len(v), collapse=collapse_images)
    props = {"tokens": [escape_token(t) for t in u.labels], "values": reduce(v, u, reduce_images)}
    extra = _grids(v, layout, row, images, tile_grid, title or "values over the image patches")
    return Vis("ColoredTokens", props, title=title, extra=extra)


def _acts(activations: Any, layout: ModalityLayout | None, row: int) -> np.ndarray:
    """``[seq, layer, neuron]`` from that, ``[seq, neuron]`` or either with a batch axis first."""
    a = to_numpy(activations).astype(float)
    if a.ndim == 4 or (a.ndim == 3 and layout is not None and a.shape[:2] == tuple(layout.shape)):
        a = a[row]
    if a.ndim == 2:
        a = a[:, None, :]
    return _row(a, layout, row, 3, seq_axis=0)


def neuron_activations(
    tokens: Sequence[str] | None,
    activations: Any,
    layout: ModalityLayout | None = None,
    row: int = 0,
    *,
    layer_labels: Sequence[str] | None = None,
    neuron_labels: Sequence[str] | None = None,
    grid_neurons: Sequence[tuple[int, int]] | None = None,
    reduce_images: Reduce = "mean",
    collapse_images: bool = True,
    images: Sequence[Any] | None = None,
    tile_grid: Any = None,
    title: str = "",
) -> Vis:
    """circuitsvis ``TextNeuronActivations`` of ``[seq, layer, neuron]`` activations.

    Patch grids are drawn for ``grid_neurons`` ``[(layer_index, neuron_index), ...]``
    (default: the up-to-4 with the largest |activation| on image positions).
    """
    a = _acts(activations, layout, row)
    u = units(layout, row, tokens, seq_len=a.shape[0], collapse=collapse_images)
    extra = ""
    if layout is not None and bool((layout.modality[row] == Modality.IMAGE).any()):
        if grid_neurons is None:
            img = to_numpy(layout.modality[row]) == Modality.IMAGE
            score = np.abs(a[img]).max(0)  # [layer, neuron]
            top = np.argsort(score.ravel())[::-1][:4]
            grid_neurons = [tuple(int(i) for i in np.unravel_index(t, score.shape)) for t in top]
        for l, n in grid_neurons:
            name = f"{(layer_labels or range(a.shape[1]))[l]} / {(neuron_labels or range(a.shape[2]))[n]}"
            extra += _grids(a[:, l, n], layout, row, images, tile_grid, f"layer / neuron {name}")
    props = {
        "tokens": [escape_token(t) for t in u.labels],
        "activations": reduce(a, u, reduce_images),
        "firstDimensionName": "Layer",
        "secondDimensionName": "Neuron",
        "firstDimensionLabels": list(layer_labels) if layer_labels is not None else None,
        "secondDimensionLabels": list(neuron_labels) if neuron_labels is not None else None,
    }
    return Vis(
        "TextNeuronActivations", props, title=title, extra=f'<div class="hmm-grids">{extra}</div>' if extra else ""
    )


def topk_tokens(
    tokens: Sequence[Sequence[str]],
    activations: Sequence[Any],
    layouts: Sequence[ModalityLayout | None] | None = None,
    rows: Sequence[int] | None = None,
    *,
    k: int = 10,
    collapse_images: bool = True,
    sample_labels: Sequence[str] | None = None,
    layer_labels: Sequence[str] | None = None,
    title: str = "",
) -> Vis:
    """circuitsvis ``TopkTokens``: per (layer, neuron), the top / bottom ``k`` tokens over
    samples. ``activations[i]`` is sample ``i``'s ``[seq, layer, neuron]``; an image block
    counts as one token (its max for the top list, its min for the bottom list)."""
    layouts = list(layouts) if layouts is not None else [None] * len(tokens)
    rows = list(rows) if rows is not None else [0] * len(tokens)
    if not len(tokens) == len(activations) == len(layouts) == len(rows):
        raise ValueError("topk_tokens needs one token list, activation array, layout and row per sample")
    labels, tv, ti, bv, bi = [], [], [], [], []
    for toks, acts, layout, row in zip(tokens, activations, layouts, rows):
        a = _acts(acts, layout, row)
        u = units(layout, row, toks, seq_len=a.shape[0], collapse=collapse_images)
        hi = reduce(a, u, "max").transpose(1, 0, 2)  # [layer, unit, neuron]
        lo = reduce(a, u, "min").transpose(1, 0, 2)
        kk = min(k, len(u))
        top = np.argsort(-hi, axis=1, kind="stable")[:, :kk]
        bot = np.argsort(lo, axis=1, kind="stable")[:, :kk][:, ::-1]
        labels.append([escape_token(t) for t in u.labels])
        ti.append(top.tolist()), tv.append(np.take_along_axis(hi, top, 1).tolist())
        bi.append(bot.tolist()), bv.append(np.take_along_axis(lo, bot, 1).tolist())
    props = {
        "tokens": labels,
        "topkVals": tv,
        "topkIdxs": ti,
        "bottomkVals": bv,
        "bottomkIdxs": bi,
        "firstDimensionName": "Layer",
        "thirdDimensionName": "Neuron",
        "sampleLabels": list(sample_labels) if sample_labels is not None else None,
        "firstDimensionLabels": list(layer_labels) if layer_labels is not None else None,
    }
    return Vis("TopkTokens", props, title=title)
