"""Ragged position selections: rows that select different numbers of positions.

``run_with_cache(inputs, pos=Image())`` on a batch whose rows hold images of different sizes
(Qwen2-VL, LLaVA-NeXT) or a row without an image returns every position-indexed activation
padded to ``[batch, n_max, ...]``: ``cache.positions`` [batch, n_max] holds the kept sequence
indices (-1 in padded slots) and ``cache.position_mask`` [batch, n_max] is True where real (all
True when every row selects the same count; then nothing is padded). Padded activation slots
are NaN, so a reduction that forgets the mask gives NaN rather than a plausible wrong number.
Slot ``k`` of row ``r`` is sequence position ``cache.positions[r, k]``, not ``k``; do not index a
full tensor with ``cache.positions`` as is (-1 would read the last position): mask it first, or
use :func:`to_sequence`. Reduce with the mask:

Example::

    _, cache = model.run_with_cache(inputs, pos=Image())
    acts, real = cache["blocks.1.hook_resid_post"], cache.position_mask   # [b, n_max, d], [b, n_max]
    masked_mean(acts, real)           # [b, d]: each row's mean over its own image tokens
    acts[real]                        # [n_real, d]: every real position of the batch, rows in order
    to_sequence(acts[..., 0], cache.positions, inputs["input_ids"].shape[1])   # [b, seq], NaN elsewhere
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def _check(x: Tensor, mask: Tensor, what: str) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{what}: mask must be a bool tensor (cache.position_mask), got {type(mask).__name__}.")
    if x.dim() < 2 or tuple(x.shape[:2]) != tuple(mask.shape):
        raise ValueError(
            f"{what}: values of shape {tuple(x.shape)} do not start with the mask's [batch, n_max] "
            f"{tuple(mask.shape)}: pass a pos= cache entry whose axis 1 is the position (e.g. hook_resid_post), "
            "and cache.position_mask of the same run."
        )


def masked_mean(x: Float[Tensor, "batch n_max ..."], mask: Bool[Tensor, "batch n_max"]) -> Float[Tensor, "batch ..."]:
    """Per row, the mean over the real slots (``mask`` True) of axis 1; NaN for a row with none.

    Example::

        masked_mean(cache["blocks.0.hook_resid_post"], cache.position_mask)   # [batch, d_model]
    """
    _check(x, mask, "masked_mean")
    m = mask.to(x.device).view(*mask.shape, *([1] * (x.dim() - 2)))
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1)
    return total / mask.to(x.device).sum(1).view(-1, *([1] * (x.dim() - 2))).to(x.dtype)


def to_sequence(
    x: Float[Tensor, "batch n_max ..."], positions: Int[Tensor, "batch n_max"], seq_len: int
) -> Float[Tensor, "batch seq ..."]:
    """Values of a ``pos=`` cache put back at their sequence positions: ``[batch, seq_len, ...]``,
    NaN at positions that were not kept (e.g. for ``hooks_mm.vis.patch_heatmap``, which takes
    one value per sequence position and leaves NaN cells blank).

    Example::

        v = to_sequence(cache["blocks.1.hook_resid_post"].norm(dim=-1), cache.positions, seq_len)
        patch_heatmap(v, layout, row=1)
    """
    _check(x, positions >= 0, "to_sequence")
    positions = positions.to(x.device)
    if not x.is_floating_point():
        raise TypeError(f"to_sequence: values are {x.dtype}; NaN marks positions not kept, so pass floats.")
    if int(positions.max()) >= seq_len:
        raise ValueError(f"to_sequence: positions reach {int(positions.max())}, past seq_len={seq_len}.")
    out = x.new_full((x.shape[0], seq_len, *x.shape[2:]), float("nan"))
    rows, slots = (positions >= 0).nonzero(as_tuple=True)
    out[rows, positions[rows, slots]] = x[rows, slots]
    return out


__all__ = ["masked_mean", "to_sequence"]
