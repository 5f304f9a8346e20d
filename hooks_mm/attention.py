"""One attention function for every hooked decoder: the model's own path unless hooked.

HookedMLLM registers this function with transformers' ``AttentionInterface`` (next to the
mask function the model already used) and sets it as the language model's attention
implementation (``set_attn_implementation``). For an attention call without hooked
internals it calls the original implementation (sdpa) unchanged, so logits stay identical
to the bare model. When scores, pattern or rotated q / k are hooked, the wiring adds the
keyword ``hooks_mm_site`` (the four hook points, None where not hooked) to that attention
module's call, and this function computes eager attention explicitly, routing them through
the hook points.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

NAMES = {"sdpa": "hooks_mm_sdpa", "eager": "hooks_mm_eager"}


def hooked_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    site = kwargs.pop("hooks_mm_site", None)
    if site is None and module.config._attn_implementation == NAMES["sdpa"]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, softcap=softcap, **kwargs
        )
    return eager_attention(module, query, key, value, attention_mask, dropout, scaling, softcap, site, **kwargs)


def eager_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    site: tuple[Any, Any] | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """Explicit attention: scores [b, h, q, k] (masked), pattern = softmax(scores)."""
    scores_hp, pattern_hp, rot_q_hp, rot_k_hp = site if site is not None else (None,) * 4
    if rot_q_hp is not None:  # hook points take [batch, pos, head, d_head]
        query = rot_q_hp(query.transpose(1, 2)).transpose(1, 2)
    if rot_k_hp is not None:
        key = rot_k_hp(key.transpose(1, 2)).transpose(1, 2)
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    q_len, k_len = query.shape[2], key.shape[2]
    if attention_mask is None:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
        if causal and q_len > 1:
            q_pos = torch.arange(k_len - q_len, k_len, device=query.device)
            attention_mask = q_pos[:, None] >= torch.arange(k_len, device=query.device)[None, :]
    if attention_mask is not None:
        attention_mask = attention_mask[..., :k_len]
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    if scores_hp is not None:
        scores = scores_hp(scores)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if pattern_hp is not None:
        pattern = pattern_hp(pattern)
    if dropout and module.training:
        pattern = nn.functional.dropout(pattern, p=dropout, training=True)
    out = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    return out, pattern


def install(language_model: Any) -> str:
    """Make the hooked function the attention of ``language_model`` (a PreTrainedModel) and
    its sub-models; returns the implementation it had ("sdpa" or "eager" kind)."""
    original = language_model.config._attn_implementation or "sdpa"
    if original in NAMES.values():
        return original
    kind = "sdpa" if original == "sdpa" else "eager"
    AttentionInterface.register(NAMES[kind], hooked_attention)
    AttentionMaskInterface.register(NAMES[kind], sdpa_mask if kind == "sdpa" else eager_mask)
    language_model.set_attn_implementation(NAMES[kind])
    return original
