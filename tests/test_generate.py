"""generate(): hooks fire at every step, and the KV cache changes nothing."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_clean, pair_for


@pytest.mark.parametrize("family", ["llama", "llava", "qwen2_vl"])
def test_hooks_fire_at_every_step_with_kv_cache(family: str) -> None:
    p = pair_for(family)
    steps: list[tuple[int, list[int]]] = []
    record = lambda x, hook: steps.append((x.shape[1], p.model.positions.tolist()))  # noqa: E731
    n_new, seq = 4, p.inputs["input_ids"].shape[1]
    out = p.model.generate(
        p.inputs, max_new_tokens=n_new, min_new_tokens=n_new, fwd_hooks=[("blocks.1.hook_resid_post", record)]
    )
    assert out.shape[1] == seq + n_new
    assert [s for s, _ in steps] == [seq] + [1] * (n_new - 1)  # cached steps see one position
    assert steps[0][1] == list(range(seq)) and [pos for _, pos in steps[1:]] == [[seq + i] for i in range(n_new - 1)]
    assert_clean(p.model) and p.model.positions is None


@pytest.mark.parametrize("family", ["llama", "llava"])
def test_edit_during_generation_is_kv_cache_consistent(family: str) -> None:
    p = pair_for(family)
    steer = torch.randn(p.model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 4
    hooks = [("blocks.0.hook_resid_post", lambda x, hook: x + steer)]
    kw = dict(max_new_tokens=6, min_new_tokens=6)
    plain = p.model.generate(p.inputs, **kw)
    cached = p.model.generate(p.inputs, fwd_hooks=hooks, **kw)
    uncached = p.model.generate(p.inputs, fwd_hooks=hooks, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, plain)
    assert torch.equal(p.model.generate(p.inputs, **kw), plain)
    assert_clean(p.model)
