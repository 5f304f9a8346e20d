"""Triton kernel for the batched masked low-rank update (see ``hooks_mm.sweep.kernels``).

One program computes a [BLOCK_R, BLOCK_D] tile of ``out[n]``: it starts from ``base`` and
subtracts ``coef[n, rows, k] * weight[d, idx[n, k]]`` for every slot ``k``, gathering the
ablated columns of the down projection directly (no dense mask, no materialised gather).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _lowrank_kernel(
    base_ptr,
    coef_ptr,
    w_ptr,
    idx_ptr,
    out_ptr,
    R,
    D,
    K,
    stride_br,
    stride_bd,
    stride_cn,
    stride_cr,
    stride_ck,
    stride_wd,
    stride_wm,
    stride_in,
    stride_ik,
    stride_on,
    stride_or,
    stride_od,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask, dmask = rows < R, cols < D
    mask = rmask[:, None] & dmask[None, :]
    acc = tl.load(base_ptr + rows[:, None] * stride_br + cols[None, :] * stride_bd, mask=mask, other=0.0).to(tl.float32)
    for k in range(0, K):
        j = tl.load(idx_ptr + n * stride_in + k * stride_ik)
        c = tl.load(coef_ptr + n * stride_cn + rows * stride_cr + k * stride_ck, mask=rmask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols * stride_wd + j * stride_wm, mask=dmask, other=0.0).to(tl.float32)
        acc -= c[:, None] * w[None, :]
    tl.store(out_ptr + n * stride_on + rows[:, None] * stride_or + cols[None, :] * stride_od, acc, mask=mask)


def lowrank_update_triton(
    base: Tensor, coef: Tensor, weight: Tensor, idx: Tensor, block_r: int = 32, block_d: int = 64
) -> Tensor:
    n, r, k = coef.shape
    d = base.shape[1]
    out = torch.empty(n, r, d, device=base.device, dtype=base.dtype)
    grid = (n, triton.cdiv(r, block_r), triton.cdiv(d, block_d))
    _lowrank_kernel[grid](
        base,
        coef,
        weight,
        idx,
        out,
        r,
        d,
        k,
        base.stride(0),
        base.stride(1),
        coef.stride(0),
        coef.stride(1),
        coef.stride(2),
        weight.stride(0),
        weight.stride(1),
        idx.stride(0),
        idx.stride(1),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        BLOCK_R=block_r,
        BLOCK_D=block_d,
    )
    return out
