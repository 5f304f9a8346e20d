"""Alignment of interleaved image-text sequences of hidden states (methods.md section 5).

An interleaved sequence becomes a short sequence of element embeddings (a text segment =
the hidden state of its last token, an image = the mean over its image tokens); two such
sequences are compared with the Global Alignment Kernel (a sum over all DTW alignments,
computed in log space) or soft-DTW with a cosine cost.

Example::

    a = sequence_elements(model, inputs_a, layer=4)[0]     # [n_elements, d] of row 0
    b = sequence_elements(model, inputs_b, layer=4)[0]
    gak_similarity(a, b, sigma=1.0)                        # normalised kernel in (0, 1]
    soft_dtw(a, b, gamma=0.1)                              # cosine cost
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from hooks_mm.layout import Modality

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM


def _alignment_dp(log_local: Float[Tensor, "n m"], combine) -> Tensor:  # noqa: ANN001
    """R[i+1, j+1] = combine(R[i, j+1], R[i+1, j], R[i, j]) + log_local[i, j], R[0,0] = 0."""
    n, m = log_local.shape
    inf = torch.tensor(float("inf"), dtype=log_local.dtype)
    rows = [torch.cat([torch.zeros(1, dtype=log_local.dtype), inf.expand(m)])]
    for i in range(n):
        row = [inf]
        for j in range(m):
            row.append(combine(rows[i][j + 1], row[j], rows[i][j]) + log_local[i, j])
        rows.append(torch.stack(row))
    return rows[n][m]


def log_gak(x: Float[Tensor, "n d"], y: Float[Tensor, "m d"], sigma: float = 1.0) -> Tensor:
    """log of the Global Alignment Kernel (Cuturi 2007): log sum over alignments of prod k_ij,
    ``k = exp(-D - log(2 - exp(-D)))``, ``D = ||x_i - y_j||^2 / (2 sigma^2)``."""
    _check_sigma(sigma)
    d = torch.cdist(x.double(), y.double()) ** 2 / (2 * sigma**2)
    log_k = -d - torch.log(2 - torch.exp(-d))
    # in "cost" form: cost = -log_k, combine = -logsumexp(-a, -b, -c)
    neg = _alignment_dp(-log_k, lambda a, b, c: -torch.logsumexp(-torch.stack([a, b, c]), 0))
    return -neg


def gak_similarity(x: Float[Tensor, "n d"], y: Float[Tensor, "m d"], sigma: float = 1.0) -> Tensor:
    """``K(x, y) / sqrt(K(x, x) K(y, y))``, computed from log kernels."""
    return torch.exp(log_gak(x, y, sigma) - 0.5 * (log_gak(x, x, sigma) + log_gak(y, y, sigma)))


def soft_dtw(x: Float[Tensor, "n d"], y: Float[Tensor, "m d"], gamma: float = 0.1) -> Tensor:
    """Soft-DTW (Cuturi & Blondel 2017) with the cosine cost ``1 - cos(x_i, y_j)``:
    ``-gamma log sum over alignments exp(-cost(path) / gamma)``. Differentiable."""
    cost = 1 - torch.nn.functional.cosine_similarity(x[:, None, :], y[None, :, :], dim=-1)
    return _alignment_dp(cost, lambda a, b, c: -gamma * torch.logsumexp(-torch.stack([a, b, c]) / gamma, 0))


def all_alignments(n: int, m: int) -> list[list[tuple[int, int]]]:
    """Every monotone alignment path from (0, 0) to (n-1, m-1) (for brute-force checks)."""
    if n == 1 and m == 1:
        return [[(0, 0)]]
    out = []
    for di, dj in ((1, 0), (0, 1), (1, 1)):
        if n - di >= 1 and m - dj >= 1 and not (n - di == 0 or m - dj == 0):
            out += [p + [(n - 1, m - 1)] for p in all_alignments(n - di, m - dj)]
    return out


def sequence_elements(
    model: "HookedMLLM", inputs: Any, layer: int, hook: str = "hook_resid_post"
) -> list[Float[Tensor, "elements d"]]:
    """Per row: one embedding per text segment (its last token) and per image (its mean)."""
    batch = model.prepare(inputs)
    layout = batch.layout
    name = f"blocks.{layer}.{hook}"
    _, cache = model.run_with_cache(batch, names_filter=[name])
    acts = cache[name]
    out = []
    for r in range(acts.shape[0]):
        mod, img = layout.modality[r].tolist(), layout.image_index[r].tolist()
        elems, start = [], None
        for i in range(len(mod) + 1):
            key = (mod[i], img[i]) if i < len(mod) else None
            prev = (mod[start], img[start]) if start is not None else None
            if key != prev:
                if prev is not None and prev[0] == Modality.TEXT:
                    elems.append(acts[r, i - 1])
                elif prev is not None and prev[0] == Modality.IMAGE:
                    elems.append(acts[r, start:i].mean(0))
                start = i if key is not None and key[0] in (Modality.TEXT, Modality.IMAGE) else None
        out.append(torch.stack(elems) if elems else acts.new_zeros(0, acts.shape[-1]))
    return out


def _check_sigma(sigma: float) -> None:
    if not sigma > 0 or math.isinf(sigma):
        raise ValueError(f"sigma must be a positive number, got {sigma}.")
