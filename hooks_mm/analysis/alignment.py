"""Implicit multimodal alignment (Shukor & Cord 2024; methods.md section 2) and attention
flow from the instruction to the image (methods.md section 3).

Any set of modalities (text / image / video / audio) works the same way:
:func:`pooled_by_modality` pools each one per example, :func:`alignment_matrix` gives the
cosine of every pair per layer.

Example::

    emb = pooled_embeddings(model, batches)                 # per example, per layer
    cross_modal_cosine(emb.image, emb.text)                 # per-layer mean/std over N x N
    pooled = pooled_by_modality(model, batches, ("text", "image", "audio"))
    alignment_matrix(pooled)                                # [3, 3, layer] mean cosines
    token_similarity(model, inputs, layer=2)                # MaxSim / MedSim per row
    attention_flow(model, inputs)                           # instruction -> image, per layer
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from hooks_mm.progress import check_progress, progress_bar
from hooks_mm.selectors import After, Audio, Image, Last, Selector, Text, Video

MODALITY_SELECTORS: dict[str, Selector] = {"text": Text(), "image": Image(), "video": Video(), "audio": Audio()}

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM


@dataclass
class Pooled:
    """Mean hidden state per example (row) and layer: ``image`` / ``text`` [N, layer, d]."""

    image: Float[Tensor, "n layer d"]
    text: Float[Tensor, "n layer d"]
    image_norm: Float[Tensor, " layer"]
    text_norm: Float[Tensor, " layer"]


@dataclass
class PooledModalities:
    """Per modality: the mean hidden state per example (rows holding every modality) and
    layer ``[N, layer, d]``, and the median token L2 norm per layer."""

    means: dict[str, Float[Tensor, "n layer d"]]
    norms: dict[str, Float[Tensor, " layer"]]

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.means)


def _selectors(modalities: Iterable[str] | dict[str, Selector]) -> dict[str, Selector]:
    if isinstance(modalities, dict):
        return dict(modalities)
    out = {}
    for m in modalities:
        if m not in MODALITY_SELECTORS:
            raise ValueError(f"unknown modality {m!r}: use {sorted(MODALITY_SELECTORS)}, or pass {{name: Selector}}.")
        out[m] = MODALITY_SELECTORS[m]
    return out


@torch.no_grad()
def pooled_by_modality(
    model: "HookedMLLM",
    batches: Iterable[Any],
    modalities: Iterable[str] | dict[str, Selector] = ("text", "image"),
    hook: str = "hook_resid_post",
    progress: bool | None = None,
) -> PooledModalities:
    """Per example and layer, the mean over the positions of each modality (names from
    text / image / video / audio, or ``{name: Selector}``); only rows that hold every one
    count, so the i-th rows of all modalities come from the same example.

    Example::

        pooled = pooled_by_modality(model, [inputs], ("text", "image", "audio"))
        pooled.means["audio"].shape     # [n_examples, n_layers, d_model]

    ``progress``: a bar over the batches (None: automatic, :mod:`hooks_mm.progress`).
    """
    check_progress(progress, "pooled_by_modality")
    sels = _selectors(modalities)
    if len(sels) < 1:
        raise ValueError("pooled_by_modality: name at least one modality.")
    names = [f"blocks.{l}.{hook}" for l in range(model.cfg.n_layers)]
    means: dict[str, list[Tensor]] = {m: [] for m in sels}
    norms: dict[str, list[Tensor]] = {m: [] for m in sels}
    for inputs in progress_bar(batches, desc="pooled_by_modality", unit="batch", progress=progress):
        batch = model.prepare(inputs)
        masks = {m: batch.layout.select(sel) for m, sel in sels.items()}
        _, cache = model.run_with_cache(batch, names_filter=names)
        acts = torch.stack([cache[n] for n in names], 1)  # [b, L, s, d]
        for r in range(acts.shape[0]):
            if not all(mask[r].any() for mask in masks.values()):
                continue
            for m, mask in masks.items():
                means[m].append(acts[r][:, mask[r]].mean(1))
        for m, mask in masks.items():
            norms[m].append(acts.permute(0, 2, 1, 3)[mask].norm(dim=-1))  # [tokens, L]
    if not means[next(iter(sels))]:
        raise ValueError(f"pooled_by_modality: no row holds positions of every one of {list(sels)}.")
    return PooledModalities(
        {m: torch.stack(v) for m, v in means.items()}, {m: torch.cat(v).median(0).values for m, v in norms.items()}
    )


def alignment_matrix(pooled: PooledModalities, exclude_diagonal: bool = True) -> Float[Tensor, "m m layer"]:
    """Per layer, the mean cosine (over all example pairs) between every two modalities;
    the diagonal (a modality with itself) leaves out i == j when ``exclude_diagonal``."""
    mods = pooled.modalities
    n_layers = next(iter(pooled.means.values())).shape[1]
    out = torch.zeros(len(mods), len(mods), n_layers)
    for i, a in enumerate(mods):
        for j, b in enumerate(mods):
            sims = F.cosine_similarity(pooled.means[a][:, None], pooled.means[b][None], dim=-1)  # [n, n, L]
            if i == j and exclude_diagonal and sims.shape[0] > 1:
                sims = sims[~torch.eye(sims.shape[0], dtype=torch.bool)]
            out[i, j] = sims.reshape(-1, n_layers).mean(0)
    return out


@torch.no_grad()
def pooled_embeddings(
    model: "HookedMLLM",
    batches: Iterable[Any],
    image: Selector | None = None,
    text: Selector | None = None,
    hook: str = "hook_resid_post",
) -> Pooled:
    """Per example and layer: the mean over image positions and over text positions, and
    the median token L2 norm of each modality per layer (the image / text pair of
    :func:`pooled_by_modality`; pass ``image=Audio()`` for another modality)."""
    try:
        pooled = pooled_by_modality(model, batches, {"image": image or Image(), "text": text or Text()}, hook)
    except ValueError as e:
        raise ValueError("pooled_embeddings: no row holds both image and text positions.") from e
    return Pooled(pooled.means["image"], pooled.means["text"], pooled.norms["image"], pooled.norms["text"])


def cross_modal_cosine(
    a: Float[Tensor, "n layer d"], b: Float[Tensor, "m layer d"], exclude_diagonal: bool = False
) -> tuple[Tensor, Tensor]:
    """Per layer: mean and std of the cosine over ALL pairs (a_i, b_j); with
    ``exclude_diagonal`` (a is b, the image-image / text-text controls) i == j is left out."""
    if exclude_diagonal and (a.shape != b.shape or a.shape[0] < 2):
        raise ValueError(
            f"cross_modal_cosine(exclude_diagonal=True) compares a set with itself: pass a is b with at least 2 "
            f"examples (got {tuple(a.shape)} and {tuple(b.shape)})."
        )
    sims = F.cosine_similarity(a[:, None], b[None], dim=-1)  # [n, m, L]
    if exclude_diagonal:
        keep = ~torch.eye(a.shape[0], dtype=torch.bool)
        sims = sims[keep]
    else:
        sims = sims.flatten(0, 1)
    std = sims.std(0) if sims.shape[0] > 1 else torch.zeros_like(sims[0])  # one pair: no spread
    return sims.mean(0), std


def global_cosine(a: Float[Tensor, "n layer d"], b: Float[Tensor, "m layer d"]) -> Float[Tensor, " layer"]:
    """Cosine of the dataset-mean embeddings, per layer."""
    return F.cosine_similarity(a.mean(0), b.mean(0), dim=-1)


def drift(emb: Float[Tensor, "n layer d"], k: int = 1) -> Float[Tensor, " layer_minus_k"]:
    """Mean cosine between layer l and layer l + k of the same example."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < emb.shape[1]:
        raise ValueError(f"drift: k must be an int in 1..{emb.shape[1] - 1} (layers apart), got {k!r}.")
    return F.cosine_similarity(emb[:, :-k], emb[:, k:], dim=-1).mean(0)


def max_med_sim(x: Float[Tensor, "p d"], y: Float[Tensor, "t d"]) -> tuple[Tensor, Tensor]:
    """MaxSim and MedSim: max and median of the token-level cosine matrix."""
    sims = F.cosine_similarity(x[:, None], y[None], dim=-1)
    return sims.max(), sims.flatten().median()


@torch.no_grad()
def token_similarity(
    model: "HookedMLLM", inputs: Any, layer: int, image: Selector | None = None, text: Selector | None = None
) -> tuple[Tensor, Tensor]:
    """Per row holding both: MaxSim and MedSim between its image tokens and its text tokens
    at ``layer`` (rows without one of them are left out)."""
    batch = model.prepare(inputs)
    im, tm = batch.layout.select(image or Image()), batch.layout.select(text or Text())
    name = f"blocks.{layer}.hook_resid_post"
    _, cache = model.run_with_cache(batch, names_filter=[name])
    out = [
        max_med_sim(cache[name][r][im[r]], cache[name][r][tm[r]])
        for r in range(im.shape[0])
        if im[r].any() and tm[r].any()
    ]
    if not out:
        raise ValueError(
            f"token_similarity: no row holds both image and text positions (present: {batch.layout.summary()})."
        )
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])


@torch.no_grad()
def attention_flow(
    model: "HookedMLLM", inputs: Any, queries: Selector | None = None, keys: Selector | None = None, reduce: str = "sum"
) -> Float[Tensor, " layer"]:
    """Per layer: head-mean attention from the query positions (default the text after the
    image) to the key positions (default the image), summed (or averaged) over keys and
    averaged over queries and rows (the FastV convention). Rows without key positions are
    left out (their flow would be 0 by construction).

    Index ``l`` is layer ``l``; a layer without a self-attention pattern (Mllama's
    cross-attention layers, a hybrid stack's linear-attention / convolution layers) holds NaN.
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', not {reduce!r}.")
    batch = model.prepare(inputs)
    layout = batch.layout
    q, k = layout.select(queries or After(Image())), layout.select(keys or Image())
    q = q & k.any(-1, keepdim=True)  # a row without keys would add flows of 0 by construction
    if not (q.any() and k.any()):
        raise ValueError(
            f"attention_flow: no row holds both query and key positions (present: {layout.summary()}): "
            "give rows with an image and text after it, or other queries / keys."
        )
    names = {l: f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)}
    names = {l: n for l, n in names.items() if n in model.hook_dict}  # layers with self-attention
    _, cache = model.run_with_cache(batch, names_filter=list(names.values()))
    flows = torch.full((model.cfg.n_layers,), float("nan"))
    for l, n in names.items():
        a = cache[n].mean(1)  # [b, q, k]
        to_keys = (a * k[:, None, :]).sum(-1)
        if reduce == "mean":
            to_keys = to_keys / k.sum(-1, keepdim=True).clamp(min=1)
        flows[l] = to_keys[q].mean().float().cpu()
    return flows


@torch.no_grad()
def last_token_heatmaps(model: "HookedMLLM", inputs: Any, layer: int, row: int = 0) -> list[Tensor]:
    """Head-mean attention from the last position to each image of ``row``, on its patch grid
    (one [rows, cols] map per image tile)."""
    batch = model.prepare(inputs)
    layout = batch.layout
    rows = layout.modality.shape[0]
    if not -rows <= row < rows:
        raise IndexError(f"last_token_heatmaps: row {row} out of range for a batch of {rows} rows.")
    if int(layout.image_index[row].max()) < 0:
        raise ValueError(f"last_token_heatmaps: row {row} holds no image (present: {layout.summary()}).")
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(batch, names_filter=[name])
    last = layout.indices(Last())[row, 0]
    att = cache[name][row, :, last].mean(0)  # [k]
    maps = []
    for image in range(int(layout.image_index[row].max()) + 1):
        for tile in layout.tiles(row, image):
            grid = layout.grid(row, image, tile)
            if grid is None:
                raise ValueError(f"image {image} tile {tile} of row {row} has no complete patch grid in this layout.")
            maps.append(att[grid].float().cpu())
    return maps
