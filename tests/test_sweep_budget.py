"""The sweep's memory budget counts what the recorded clean run holds for the whole sweep, so the packing it
chooses keeps the measured peak under ``max_memory``."""

from __future__ import annotations

import pytest
from conftest import assert_clean, pair_for

from hooks_mm.remote.budget import peak_tensor_bytes
from hooks_mm.sweep import answer_logprob, single_neurons, sweep
from hooks_mm.sweep.engine import bytes_per_config
from hooks_mm.sweep.replay import Replay, tensor_bytes


def _setup():  # noqa: ANN202
    p = pair_for("llava")
    batch = p.model.prepare(p.inputs)
    metric = answer_logprob(p.model, p.inputs)
    return p, batch, metric


def test_held_bytes_count_the_record_and_the_prefix_keys_values() -> None:
    p, batch, _ = _setup()
    r = Replay(p.model, batch)
    c, (b, s) = p.model.cfg, batch.shape
    distinct = {t.untyped_storage().data_ptr(): t.nbytes for _, t in r.cache.items()}  # resid_pre[l+1] is resid_post[l]
    cache = sum(distinct.values())
    kv = 2 * c.n_layers * b * s * (c.n_key_value_heads or c.n_heads) * c.d_head * r.dtype.itemsize
    assert r.held_bytes() >= cache + r.logits.nbytes + kv
    assert r.held_bytes() <= cache + r.logits.nbytes + kv + tensor_bytes(r.calls) + tensor_bytes(r.injected)
    assert Replay(p.model, batch, suffix=False).held_bytes() == r.held_bytes() - kv  # no prefix keys / values


def test_the_chunk_leaves_room_for_the_record_and_the_peak_stays_under_max_memory() -> None:
    p, batch, metric = _setup()
    held = Replay(p.model, batch).held_bytes()
    per = bytes_per_config(p.model, *batch.shape, all_logits=False)
    configs = single_neurons(p.model, [0, 1], neurons=range(8))
    budget = held + 3 * per + per // 2
    res, peak = peak_tensor_bytes(lambda: sweep(p.model, p.inputs, configs, metric, max_memory=budget, progress=False))
    assert res.meta["chunk"] == 3 and res.meta["held_bytes"] == held
    assert peak <= budget, (peak, budget)
    ref = sweep(p.model, p.inputs, configs, metric, batch_size=16, progress=False)  # packing changes no value
    assert (res.table["value"] - ref.table["value"]).abs().max() < 1e-6
    assert_clean(p.model)


def test_a_budget_the_record_alone_fills_is_refused_with_the_size_needed() -> None:
    p, batch, metric = _setup()
    held = Replay(p.model, batch).held_bytes()
    per = bytes_per_config(p.model, *batch.shape, all_logits=False)
    configs = single_neurons(p.model, 0, neurons=[1])
    with pytest.raises(MemoryError, match=r"cannot hold the recorded clean run .* raise max_memory to at least"):
        sweep(p.model, p.inputs, configs, metric, max_memory=held + per - 1, progress=False)
    res = sweep(p.model, p.inputs, configs, metric, max_memory=held + per - 1, batch_size=1, progress=False)
    assert res.meta["chunk"] == 1  # an explicit batch_size is the user's own sizing
    assert_clean(p.model)
