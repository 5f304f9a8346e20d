"""Memory-safe requests against the loopback NDIF stack: the metric unembedded at its positions on the
server equals the local sweep (<= 1e-6), and images over the request limit are refused before sending.

Marked ``ndif``: skips, saying why, when the stack does not answer (scripts/ndif-stack.sh up).
"""

from __future__ import annotations

import pytest

from hooks_mm import HookedMLLM, Image, NonPad, Text
from hooks_mm.interventions import Steer
from hooks_mm.remote import NNsightBackend, RequestTooLargeError, load_nnsight, remote_sweep
from hooks_mm.sweep import answer_logprob, single_neurons, sweep

from .cases import inputs_for

pytestmark = pytest.mark.ndif
EXACT = 1e-6


def _backend(info: dict, name: str, **kwargs) -> tuple:  # noqa: ANN003
    path = info["models"][name]["path"]
    model = HookedMLLM.from_pretrained(path)
    return model, NNsightBackend(model, load_nnsight(path, processor=model.processor), **kwargs), inputs_for(model)[0]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llava"])
def test_server_side_reduction_equals_the_local_sweep(ndif: dict, name: str) -> None:
    model, backend, inputs = _backend(ndif, name)
    metric = answer_logprob(model, inputs)
    pos = Image() if model.adapter.projector is not None else Text()
    configs = single_neurons(model, layers=[0, 1], positions=pos, neurons=range(0, 128, 4))
    configs += [Steer(1, vector=[0.05 * i] * model.cfg.d_model, positions=NonPad()) for i in range(1, 4)]
    ref = sweep(model, inputs, configs, metric, progress=False)
    out = remote_sweep(backend, inputs, configs, metric, remote=ndif["host"], max_memory=8 << 30, progress=False)
    m, plan = out.meta, out.meta["memory_plan"]
    print(f"\n{name}: {len(configs)} configs, {m['requests']} requests, {m['bytes_received']:,} B back; plan {plan}")
    assert out.table.drop(columns=["value", "delta"]).equals(ref.table.drop(columns=["value", "delta"]))
    assert (out.values - ref.values).abs().max() <= EXACT and (out.clean - ref.clean).abs().max() <= EXACT
    assert plan["configs_per_trace"] == m["configs_per_trace"] and plan["parts"]["logits"] == 2 * model.cfg.d_vocab * 8
    assert m["bytes_received"] < 1000 * m["requests"] + 16 * len(configs)


def test_images_over_the_request_limit_are_refused_before_sending(ndif: dict) -> None:
    model, backend, inputs = _backend(ndif, "tiny-llava")
    pixels = model.prepare(inputs).model_inputs["pixel_values"]
    backend.max_request_bytes = 4000
    with pytest.raises(
        RequestTooLargeError,
        match=r"over max_request_bytes=4,000 .*pixel_values \[2, 3, 32, 32\] float32 = 24,576 bytes",
    ):
        remote_sweep(
            backend,
            inputs,
            single_neurons(model, 0, neurons=range(4)),
            answer_logprob(model, inputs),
            remote=ndif["host"],
            progress=False,
        )
    assert backend.stats.bytes_sent == 0 and pixels.numel() * pixels.element_size() == 24_576  # nothing sent
