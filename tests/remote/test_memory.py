"""Memory-safe remote sweeps: the metric unembedded at its positions on the server, the memory planner
(estimate vs a measured peak, its scaling, a 7B plan), inputs sent once per request, the request-size check."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

import hooks_mm.remote.compile as compile_mod
from hooks_mm import HookedMLLM, Image, NonPad, Text
from hooks_mm.interventions import Steer
from hooks_mm.remote import NNsightBackend, NNsightSweep, remote_sweep
from hooks_mm.remote.budget import (
    DEFAULT_MAX_MEMORY,
    HEADROOM,
    describe_request,
    estimate_per_copy,
    peak_tensor_bytes,
    plan_memory,
    request_parts,
)
from hooks_mm.remote.runner import tile
from hooks_mm.sweep import answer_logprob, single_neurons, sweep
from hooks_mm.zoo import toy_image

from .cases import inputs_for
from .weightless_cases import VICUNA_7B

EXACT = 1e-6
_CACHE: dict[str, tuple] = {}


def setup(name: str) -> tuple:
    if name not in _CACHE:
        model = HookedMLLM.from_pretrained(name)
        inputs, source = inputs_for(model)
        _CACHE[name] = (model, NNsightBackend(model), inputs, source)
    return _CACHE[name]


def _configs(model: HookedMLLM) -> list:
    pos = Image() if model.adapter.projector is not None else Text()
    configs = single_neurons(model, layers=[0, 1], positions=pos, neurons=range(0, 64, 8))
    return configs + [Steer(1, vector=[0.05 * i] * model.cfg.d_model, positions=NonPad()) for i in range(1, 4)]


def _head_shapes(model: HookedMLLM) -> tuple[list, object]:
    shapes: list = []
    hook = model.hf_model.get_output_embeddings().register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    return shapes, hook


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llava"])
@pytest.mark.parametrize("remote", [False, "local"])
def test_metric_is_unembedded_only_at_its_positions_and_equals_the_local_sweep(name: str, remote) -> None:  # noqa: ANN001
    model, backend, inputs, _ = setup(name)
    metric, configs = answer_logprob(model, inputs), _configs(model)
    ref = sweep(model, inputs, configs, metric, progress=False)
    with torch.no_grad():  # independent: the bare HF forward and the metric on its whole logits
        clean = metric(model.hf_model(**model.prepare(inputs).model_inputs).logits)
    shapes, hook = _head_shapes(model)
    caches: list = []
    top = model.hf_model.register_forward_hook(lambda m, i, o: caches.append(o.past_key_values))
    try:
        out = remote_sweep(
            backend,
            inputs,
            configs,
            metric,
            remote=remote,
            max_configs_per_request=8,
            configs_per_trace=4,
            progress=False,
        )
    finally:
        hook.remove()
        top.remove()
    b, seq = model.prepare(inputs).shape[:2]
    vocab = model.cfg.d_vocab
    assert len(caches) > 1 and all(c is None for c in caches[1:])  # the plans' forwards build no KV cache
    nnsight_runs = [s for s in shapes if s[0] != b]  # the local clean forward (check_weights) has b rows
    assert nnsight_runs and all(s[1:] == (1, vocab) for s in nnsight_runs), shapes  # never [copies*b, seq, vocab]
    assert out.table.drop(columns=["value", "delta"]).equals(ref.table.drop(columns=["value", "delta"]))
    assert (out.values - ref.values).abs().max() <= EXACT and (out.clean - ref.clean).abs().max() <= EXACT
    assert (out.clean - clean).abs().max() <= EXACT
    assert out.meta["memory_plan"]["parts"]["logits"] == b * vocab * (4 + 4)  # float32: reduced at positions
    assert seq > 1


def test_a_metric_of_the_whole_logits_still_gets_them() -> None:
    model, backend, inputs, _ = setup("tiny-llama")
    mask = model.prepare(inputs).model_inputs["attention_mask"].bool()

    def mean_logprob(logits):  # no positions: a function of every position's logits
        return logits.log_softmax(-1)[..., 0][mask].mean()

    configs = _configs(model)[:5]
    ref = sweep(model, inputs, configs, mean_logprob, progress=False)
    shapes, hook = _head_shapes(model)
    try:
        out = remote_sweep(backend, inputs, configs, mean_logprob, remote="local", progress=False)
    finally:
        hook.remove()
    b, seq = model.prepare(inputs).shape[:2]
    assert (out.values - ref.values).abs().max() <= EXACT
    assert any(s[1] == seq for s in shapes if s[0] != b)
    assert out.meta["memory_plan"]["parts"]["logits"] == b * seq * model.cfg.d_vocab * 8


def test_peak_tensor_bytes_counts_what_is_alive_at_once() -> None:
    x = torch.ones(1000)  # made before: not counted, nor its views

    def work():
        a = x * 2  # 4000
        b = a + 1  # 8000 alive
        del a
        c = b[:10]  # a view: nothing new
        d = torch.cat([b, b])  # 4000 + 8000 = 12000 alive
        return d.sum() + c.sum() + x.view(10, 100).sum()

    _, peak = peak_tensor_bytes(work)
    assert 12000 <= peak <= 12000 + 64


def _measured(model: HookedMLLM, inputs: dict, copies: int) -> tuple[int, int]:
    """(measured peak of ``copies`` tiled copies in one no-cache forward, estimated)."""
    mi = model.prepare(inputs).model_inputs
    tiled = {k: tile(v, copies) for k, v in mi.items()}
    with torch.no_grad():
        _, peak = peak_tensor_bytes(lambda: model.hf_model(**tiled, use_cache=False).logits)
    est = sum(estimate_per_copy(model.hf_model.config, mi, model.cfg.dtype, reduced=False, kv_cache=False).values())
    return peak, copies * est


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llava"])
def test_estimate_bounds_the_measured_peak_and_scales_with_copies_and_tokens(name: str) -> None:
    model, _, inputs, _ = setup(name)
    if model.adapter.projector is None:
        long = model.to_inputs(["a b c d " * 12, "b c " * 10])
    else:
        long = model.to_inputs(
            ["<image> " + "what colour is it " * 8, "<image> where ?"], images=[toy_image(1), toy_image(2)]
        )
    rows = {}
    for label, x in (("short", inputs), ("long", long)):
        for copies in (1, 8):
            rows[label, copies] = peak, est = _measured(model, x, copies)
            print(f"{name} {label} x{copies}: measured {peak:,} B, estimated {est:,} B ({est / peak:.2f}x)")
            assert peak <= est <= 2.5 * peak  # an upper bound, and not a loose one
    for label in ("short", "long"):  # linear in copies, as the estimate
        assert 7 <= rows[label, 8][0] / rows[label, 1][0] <= 8.5
    grow_measured = rows["long", 1][0] / rows["short", 1][0]
    grow_estimate = rows["long", 1][1] / rows["short", 1][1]
    assert grow_measured > 1.5 and 0.6 <= grow_estimate / grow_measured <= 1.6  # the tokens really grew


def _llava_7b() -> LlavaForConditionalGeneration:
    """LLaVA-1.5-7B's shapes (Vicuna-7B + CLIP ViT-L/14-336), weightless (meta)."""
    text = LlamaConfig(**VICUNA_7B, vocab_size=32064)
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
    )
    with torch.device("meta"):
        return LlavaForConditionalGeneration(LlavaConfig(text_config=text, vision_config=vision)).to(torch.float16)


def test_a_7b_plan_is_sane() -> None:
    hf = _llava_7b()
    inputs = {"input_ids": torch.zeros(16, 600, dtype=torch.long), "pixel_values": torch.zeros(16, 3, 336, 336)}
    plan = plan_memory(hf, inputs, max_memory=80 * 10**9)
    print("\n7B:", plan)
    assert 13.5e9 < plan.weights < 14.5e9  # 7.06 B fp16 parameters
    assert 1e9 < plan.per_copy < 5e9 and 8 <= plan.configs_per_trace <= 40
    assert plan.peak(plan.configs_per_trace) <= 80 * 10**9 * (1 - HEADROOM) < plan.peak(plan.configs_per_trace + 1)
    assert plan.max_configs_per_request % plan.configs_per_trace == 0 and plan.max_configs_per_request >= 64
    full = plan_memory(hf, inputs, max_memory=80 * 10**9, reduced=False)  # whole logits: 16 x 600 x 32k x (2 + 4) B
    assert full.parts["logits"] == 16 * 600 * 32064 * 6 and full.configs_per_trace < plan.configs_per_trace
    with_cache = plan_memory(hf, inputs, max_memory=80 * 10**9, kv_cache=True)
    assert with_cache.parts["kv_cache"] == 2 * 32 * 16 * 600 * 4096 * 2
    with pytest.warns(UserWarning, match=r"configs_per_trace=64 needs an estimated .* at most \d+ copies fit"):
        plan_memory(hf, inputs, max_memory=80 * 10**9, configs_per_trace=64)
    with pytest.raises(ValueError, match="one copy of this batch .* over max_memory=15.0 GiB"):
        plan_memory(hf, inputs, max_memory=15 << 30)
    for bad in ({"configs_per_trace": 0}, {"max_configs_per_request": 2.5}, {"max_memory": -1}):
        with pytest.raises(ValueError, match="pass"):
            plan_memory(hf, inputs, **bad)
    assert plan_memory(hf, inputs).max_memory == DEFAULT_MAX_MEMORY


def test_sweep_sizes_come_from_the_budget_and_explicit_ones_are_checked() -> None:
    model, backend, inputs, _ = setup("tiny-llava")
    metric, configs = answer_logprob(model, inputs), _configs(model)
    base = plan_memory(model, model.prepare(inputs))
    budget = int((base.weights + 5 * base.per_copy) / (1 - HEADROOM)) + 1  # weights + 5 copies
    out = remote_sweep(backend, inputs, configs, metric, remote=False, max_memory=budget, progress=False)
    plan = out.meta["memory_plan"]
    assert plan["configs_per_trace"] == out.meta["configs_per_trace"] == 5 and plan["peak"] <= budget
    with pytest.warns(UserWarning, match="configs_per_trace=32 needs"):
        remote_sweep(backend, inputs, configs, metric, remote=False, max_memory=budget, configs_per_trace=32)
    with pytest.raises(ValueError, match="configs_per_trace=0"):
        NNsightSweep(configs_per_trace=0)


def _clone(x):  # noqa: ANN001, ANN202
    if torch.is_tensor(x):
        return x.clone()
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    return x


def test_images_go_once_per_request_and_the_request_size_error_names_them(monkeypatch) -> None:  # noqa: ANN001
    model, backend, inputs, _ = setup("tiny-llava")
    # as for a model on a GPU, where each plan's .cpu() makes its own copy of the inputs
    monkeypatch.setattr(compile_mod, "to_cpu", lambda x, f=compile_mod.to_cpu: _clone(f(x)))
    metric, configs = answer_logprob(model, inputs), _configs(model)[:8]
    nn_sweep = NNsightSweep(backend, remote="local", max_configs_per_request=8, configs_per_trace=2)
    batch = model.prepare(inputs)
    nn_sweep.start(model, batch, metric, None)
    (plans, ids), *_ = nn_sweep.plans([(i, c) for i, c in enumerate(configs)])
    assert len(plans) == 4 and all(p["inputs"]["pixel_values"] is plans[0]["inputs"]["pixel_values"] for p in plans)
    pixels = batch.model_inputs["pixel_values"]
    parts = request_parts(plans)
    assert parts["pixel_values"] == pixels.numel() * 4  # once, not once per trace
    assert f"pixel_values [2, 3, 32, 32] float32 = {pixels.numel() * 4:,} bytes" in describe_request(plans)
    assert describe_request(plans).startswith("8 configs")
    assert 336 * 336 * 3 * 4 == 1_354_752  # one 336 px float32 image, as the README says


def test_a_tuple_patch_size_counts_like_the_square_one() -> None:
    """InternVL / Qianfan-OCR give ``patch_size`` as (h, w): the vision estimate equals the int one's."""
    model, _, inputs, _ = setup("tiny-llava")
    mi = model.prepare(inputs).model_inputs
    config = LlavaConfig.from_dict(model.hf_model.config.to_dict())
    square = estimate_per_copy(config, mi, model.cfg.dtype)["vision"]
    p = config.vision_config.patch_size
    config.vision_config.patch_size = (p, p)
    assert square > 0 and estimate_per_copy(config, mi, model.cfg.dtype)["vision"] == square
    config.vision_config.patch_size = (p, 2 * p)  # half the patches: fewer tokens
    assert estimate_per_copy(config, mi, model.cfg.dtype)["vision"] < square
