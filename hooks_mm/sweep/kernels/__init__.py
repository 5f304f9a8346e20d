"""The sweep's hot inner step: a batched masked low-rank update of the MLP output.

``lowrank_update(base, coef, weight, idx)`` returns, for every configuration ``n``,
``base - sum_k coef[n, :, k] * weight[:, idx[n, k]]``: the down-projection output after
ablating the neuron set ``idx[n]`` (``coef`` = clean minus replacement activation at the
ablated positions, 0 elsewhere and on padding slots). A Triton kernel runs it on CUDA
tensors; the torch path runs everywhere else.
"""

from __future__ import annotations

import os

import torch
from jaxtyping import Float, Int
from torch import Tensor


def lowrank_update_torch(
    base: Float[Tensor, "rows d"],
    coef: Float[Tensor, "n rows k"],
    weight: Float[Tensor, "d m"],
    idx: Int[Tensor, "n k"],
) -> Float[Tensor, "n rows d"]:
    cols = weight[:, idx].permute(1, 2, 0)  # [n, k, d]
    return base.unsqueeze(0) - torch.bmm(coef, cols.to(coef.dtype)).to(base.dtype)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def lowrank_update(
    base: Float[Tensor, "rows d"],
    coef: Float[Tensor, "n rows k"],
    weight: Float[Tensor, "d m"],
    idx: Int[Tensor, "n k"],
) -> Float[Tensor, "n rows d"]:
    """Triton on CUDA (or under ``TRITON_INTERPRET=1`` when asked), torch elsewhere."""
    use_triton = triton_available() and (base.is_cuda or os.environ.get("HOOKS_MM_FORCE_TRITON") == "1")
    if use_triton:
        from hooks_mm.sweep.kernels.lowrank_triton import lowrank_update_triton

        return lowrank_update_triton(base, coef, weight, idx)
    return lowrank_update_torch(base, coef, weight, idx)
