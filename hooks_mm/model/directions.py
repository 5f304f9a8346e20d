"""Residual-stream directions of tokens (columns of ``W_U``) and projections of a stack onto directions.

Example::

    dirs = token_directions(model, torch.tensor([5, 9]))        # [2, d_model]: W_U[:, 5], W_U[:, 9]
    scores = project(cache.decompose_resid(), model.W_U[:, 5])  # [component, batch, pos]
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn


def token_directions(model: nn.Module, tokens: Any) -> Float[Tensor, "... d_model"]:
    """``W_U[:, tokens]`` with the token axes first: [*tokens.shape, d_model]. ``tokens``: a string of one
    token, an id, or integer ids of any shape."""
    if isinstance(tokens, str):
        ids = model.tokenizer.encode(tokens, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"logit_attrs: {tokens!r} is {len(ids)} tokens ({ids}), not one: pass a single token's string "
                "or its id (model.to_tokens / model.to_str_tokens show the split)."
            )
        tokens = ids[0]
    ids = torch.as_tensor(tokens)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"logit_attrs: tokens must be integer ids, not {ids.dtype}.")
    d_vocab = model.cfg.d_vocab
    if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < d_vocab):
        raise ValueError(f"logit_attrs: token ids must be in [0, {d_vocab}); got {int(ids.min())}..{int(ids.max())}.")
    w_u = model.W_U
    return w_u.T[ids.to(w_u.device).long()]


def project(stack: Tensor, onto: Tensor | None) -> Tensor:
    """``stack @ onto`` for ``onto`` [d_model] (the last axis goes) or [d_model, k]; None: ``stack``."""
    if onto is None:
        return stack
    if not torch.is_tensor(onto) or onto.dim() not in (1, 2) or onto.shape[0] != stack.shape[-1]:
        raise ValueError(
            f"project_output_onto must be [d_model] or [d_model, k] with d_model={stack.shape[-1]}, not "
            f"{tuple(onto.shape) if torch.is_tensor(onto) else type(onto).__name__}."
        )
    return stack @ onto.to(stack.device, stack.dtype)
