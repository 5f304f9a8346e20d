"""The logit lens at every image patch: what each patch's residual would predict, layer by layer, on the patch grid.

:func:`patch_logit_lens` reads the residual stream at the positions of one image of every row (only those positions
are kept during the forward: memory follows the image, not the sequence) at ``blocks.0.hook_resid_pre`` (the
embeddings, layer index 0) and after every block (``blocks.{l}.hook_resid_post``, layer index ``l + 1``, as
TransformerLens's ``accumulated_resid``), and turns each through the model's own head
(:meth:`~hooks_mm.model.weights.WeightViews.resid_to_logits`: the family's final norm, unembedding and logit
post-processing). Per cell it keeps the top-k tokens (ids, strings, probabilities) and the log-probabilities of the
``tokens`` asked for, and lays them out on the image's patch grid ``[layer, tile, rows, cols]`` as the layout says
(LLaVA's square grid, Qwen2-VL's merged 2x2 patches, Idefics3's tiles; tiles of different shapes are padded).

Example::

    lens = patch_logit_lens(model, inputs, image=0, top_k=3, tokens=[red_id])
    r = lens[0]                           # batch row 0
    r.on_grid(r.top_probs[..., 0])        # [layer, tile, rows, cols] probability of each cell's top token
    r.on_grid(r.logprobs[..., 0])         # [layer, tile, rows, cols] log-prob of "red"
    r.top_tokens[-1][5]                   # the top-3 strings of position r.positions[5] at the last layer
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooks_mm.layout import Modality, ModalityLayout
from hooks_mm.selectors import is_int

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM


# ------------------------------------------------------------------ the image's positions and grid


@dataclass
class ImagePositions:
    """Where image ``image`` of batch row ``row`` sits: its positions and their patch grid.

    ``positions`` [n]: every position of the image (patch cells, and separators such as newline tokens, in
    sequence order); ``grid`` [tile, rows, cols]: the sequence position of each patch cell (-1: none, where a
    tile is smaller than the largest one); ``index`` [tile, rows, cols]: the same cells as indices into
    ``positions`` (-1: none).
    """

    row: int
    image: int
    positions: Int[Tensor, " n"]
    grid: Int[Tensor, "tile rows cols"]
    index: Int[Tensor, "tile rows cols"] = field(init=False)

    def __post_init__(self) -> None:
        where = torch.full((int(self.positions.max()) + 1,), -1, dtype=torch.long)
        where[self.positions.cpu()] = torch.arange(len(self.positions))
        g = self.grid.cpu()
        self.index = torch.where(g >= 0, where[g.clamp(min=0)], -1)

    def on_grid(self, values: Tensor) -> Tensor:
        """``values`` [..., n] (one per position of ``positions``) as [..., tile, rows, cols]: NaN (floats) or -1
        (integers) where a tile has no cell."""
        if values.shape[-1] != len(self.positions):
            raise ValueError(
                f"on_grid: values have {values.shape[-1]} entries on their last axis, but image {self.image} of row "
                f"{self.row} has {len(self.positions)} positions: pass one value per position (e.g. top_probs[..., 0])."
            )
        idx = self.index.to(values.device)
        out = values[..., idx.clamp(min=0)]
        fill = float("nan") if values.is_floating_point() else -1
        return out.masked_fill(idx < 0, fill)


def image_positions(layout: ModalityLayout, image: int) -> dict[int, ImagePositions]:
    """Per batch row holding image ``image`` (its ``image_index``), its positions and patch grid; a clear error when
    no row holds it, or when the image has no patch grid of positions (cross-attention keys, resampler latents)."""
    if not is_int(image) or image < 0:
        raise TypeError(f"image={image!r}: give the index of an image of the row (0 is the first).")
    img = layout.modality == Modality.IMAGE
    if not bool(img.any()):
        raise ValueError(
            f"the inputs hold no image positions ({layout.summary()}): pass inputs with an image "
            "(model.to_inputs(text, images=...)), not text alone."
        )
    n = int(layout.image_index.max()) + 1
    if image >= n:
        raise ValueError(f"image={image} is out of range: rows hold at most {n} image(s) (0..{n - 1}).")
    out = {}
    for row in range(layout.shape[0]):
        at = img[row] & (layout.image_index[row] == image)
        if not bool(at.any()):
            continue
        tiles = layout.tiles(row, image)
        grids = [layout.grid(row, image, t) for t in tiles]
        if not tiles or any(g is None for g in grids):
            raise ValueError(
                f"image {image} of row {row} has no patch grid of positions (Mllama's patches are cross-attention "
                "keys, Idefics2's image positions are resampler latents): a per-patch lens or attribution has no "
                "grid to draw on; read the positions' residuals with run_with_cache(pos=Image(i)) instead."
            )
        rows, cols = max(g.shape[0] for g in grids), max(g.shape[1] for g in grids)
        grid = torch.full((len(tiles), rows, cols), -1, dtype=torch.long)
        for k, g in enumerate(grids):
            grid[k, : g.shape[0], : g.shape[1]] = g.cpu()
        out[row] = ImagePositions(row, image, at.nonzero().flatten().cpu(), grid)
    return out


# ------------------------------------------------------------------ argument checks shared with the DLA


def check_layers(layers: Any, n: int, what: str) -> list[int]:
    """Layer indices in ``0..n - 1`` (negative: from the end), checked; None: all."""
    if layers is None:
        return list(range(n))
    items = [layers] if is_int(layers) else layers
    if isinstance(items, Tensor):
        items = items.tolist()
    if not isinstance(items, (list, tuple, range)) or not items or not all(is_int(l) for l in items):
        raise TypeError(f"{what}={layers!r}: give a layer index or a non-empty list of them.")
    bad = [l for l in items if not -n <= l < n]
    if bad:
        raise ValueError(f"{what} {bad} out of range: this model has {n} of them (0..{n - 1}, or -{n}..-1).")
    return sorted({int(l) % n for l in items})


def check_token_ids(tokens: Any, d_vocab: int, what: str) -> Tensor:
    """Token ids as a 1-D long tensor, each in ``0..d_vocab - 1``."""
    if isinstance(tokens, str) or (isinstance(tokens, (list, tuple)) and any(isinstance(t, str) for t in tokens)):
        raise TypeError(f"{what} takes token ids, not strings: convert with model.to_tokens(...) or tokenizer ids.")
    t = torch.as_tensor(tokens)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.dim() > 1 or t.numel() == 0:
        raise TypeError(f"{what}={tokens!r:.80}: give one token id or a 1-D list of integer token ids.")
    t = t.reshape(-1).long()
    bad = t[(t < 0) | (t >= d_vocab)]
    if len(bad):
        raise ValueError(f"{what} {bad.tolist()} outside the vocabulary 0..{d_vocab - 1}: pass this model's token ids.")
    return t


def token_strings(model: HookedMLLM, ids: Tensor) -> list[str]:
    """One string per id (the tokenizer's decoding of the id alone; ``"#id"`` when the model has no tokenizer)."""
    flat = ids.reshape(-1).tolist()
    try:
        tok = model.tokenizer
    except ValueError:
        return [f"#{i}" for i in flat]
    return [tok.decode([i]) for i in flat]


# ------------------------------------------------------------------ the logit lens


@dataclass
class LensRow:
    """The logit lens at image ``image`` of one batch row (see :func:`patch_logit_lens`).

    Per-position arrays follow ``positions`` (the image's positions in sequence order, separators included);
    ``on_grid`` lays any of them on the patch grid ``[..., tile, rows, cols]``.
    """

    where: ImagePositions
    top_ids: Int[Tensor, "layer n k"]
    top_probs: Float[Tensor, "layer n k"]
    top_tokens: list[list[list[str]]]  # [layer][n][k]
    logprobs: Float[Tensor, "layer n n_tokens"] | None

    @property
    def row(self) -> int:
        return self.where.row

    @property
    def positions(self) -> Int[Tensor, " n"]:
        return self.where.positions

    @property
    def grid(self) -> Int[Tensor, "tile rows cols"]:
        """The sequence position of each patch cell (-1: none)."""
        return self.where.grid

    def on_grid(self, values: Tensor) -> Tensor:
        """``values`` [..., n] as [..., tile, rows, cols] (NaN / -1 where a tile has no cell)."""
        return self.where.on_grid(values)

    def grid_tokens(self, layer: int, k: int = 0) -> list[list[list[str | None]]]:
        """The ``k``-th top token string of every cell at lens layer ``layer`` (an index into ``layers``), as
        [tile][rows][cols] (None where a tile has no cell)."""
        idx = self.where.index
        return [[[self.top_tokens[layer][i][k] if i >= 0 else None for i in r] for r in t] for t in idx.tolist()]


@dataclass
class PatchLens:
    """:func:`patch_logit_lens`'s result: one :class:`LensRow` per batch row holding the image (``lens[row]``)."""

    image: int
    layers: list[int]  # 0: blocks.0.hook_resid_pre (the embeddings); l + 1: blocks.l.hook_resid_post
    hook_names: list[str]
    top_k: int
    tokens: Int[Tensor, " n_tokens"] | None
    rows: dict[int, LensRow]
    layout: ModalityLayout = field(repr=False)  # the batch's layout (the views lay the cells out with it)

    def __getitem__(self, row: int) -> LensRow:
        if row not in self.rows:
            raise KeyError(f"row {row} holds no image {self.image}; rows holding it: {sorted(self.rows)}.")
        return self.rows[row]


def lens_hook_name(layer: int) -> str:
    """The hook of lens layer ``layer``: 0 the embeddings (``blocks.0.hook_resid_pre``), ``l + 1`` the output of
    block ``l`` (``blocks.{l}.hook_resid_post``)."""
    return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"


@torch.no_grad()
def patch_logit_lens(
    model: HookedMLLM,
    inputs: Any,
    layers: int | Sequence[int] | None = None,
    image: int = 0,
    top_k: int = 5,
    tokens: int | Sequence[int] | Tensor | None = None,
) -> PatchLens:
    """The logit lens at every patch of image ``image`` of each row (see the module docstring).

    ``layers``: lens layers in ``0..n_layers`` (0: the embeddings entering block 0; ``l + 1``: the residual
    after block ``l``; negative from the end; default all). ``tokens``: token ids whose log-probability is kept
    per cell (``logprobs[..., j]``). Probabilities are the softmax of the head's logits, over the whole vocabulary.

    Example::

        lens = patch_logit_lens(model, inputs, top_k=3, tokens=model.to_tokens("red")[0, -1:])
        lens[0].on_grid(lens[0].top_probs[..., 0]).shape     # [n_layers + 1, tiles, rows, cols]
    """
    batch = model.prepare(inputs)
    where = image_positions(batch.layout, image)
    layers = check_layers(layers, model.cfg.n_layers + 1, "layers")
    d_vocab = int(model.cfg.d_vocab)
    if not is_int(top_k) or not 1 <= top_k <= d_vocab:
        raise ValueError(f"top_k={top_k!r}: give an int in 1..{d_vocab} (the vocabulary size).")
    ids = None if tokens is None else check_token_ids(tokens, d_vocab, "tokens")
    names = [lens_hook_name(l) for l in layers]
    kept: dict[str, dict[int, Tensor]] = {}

    def save(t: Tensor, hook: Any) -> None:
        kept[hook.name] = {r: t[r, w.positions.to(t.device)].detach() for r, w in where.items()}

    model.run_with_hooks(batch, fwd_hooks=[(n, save) for n in names], return_type=None)
    rows = {}
    for r, w in where.items():
        resid = torch.stack([kept[n][r] for n in names])  # [layer, n, d_model]
        logp = model.resid_to_logits(resid).float().log_softmax(-1)
        top_lp, top_ids = logp.topk(top_k, dim=-1)
        strs = iter(token_strings(model, top_ids))
        nested = [[[next(strs) for _ in range(top_k)] for _ in w.positions] for _ in names]
        chosen = logp[..., ids.to(logp.device)] if ids is not None else None
        rows[r] = LensRow(w, top_ids.cpu(), top_lp.exp().cpu(), nested, None if chosen is None else chosen.cpu())
    return PatchLens(int(image), layers, names, int(top_k), ids, rows, batch.layout)
