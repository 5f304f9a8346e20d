"""Neuron-ablation sweep speed: hooks_mm's exact fast path vs the other ways, in one run.

Same model (a ~92M-parameter random LLaVA, 2 x 128 tokens), same configs (zero-ablate one
MLP neuron at every position), same metric (log-prob of the clean answer):

  (a) one run_with_hooks forward per config (the TransformerLens way)
  (b) one nnsight trace per config
  (c) nnsight, configs batched as invokes of one trace (MultimodalNNsight)
  (d) hooks_mm.sweep exact fast path
  (e) attribution patching (one forward + backward estimates every neuron of the layer)

It prints configs/s and ratios to (a), the machine's fp32 matmul GFLOP/s and what the fast
path achieves, and how the fast path's cost grows with configs and sequence length.

    python benchmarks/sweep.py [--layer 10] [--configs 48]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import llava_100m, llava_inputs, machine
from nnsight_baseline import MultimodalNNsight

from hooks_mm import HookedMLLM, NonPad
from hooks_mm.sweep import answer_logprob, attribution_patching, single_neurons, sweep


def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(ts) / 1e9


def fast_path_flops(model: HookedMLLM, layer: int, batch: int, seq: int) -> float:
    """FLOPs the fast path spends per config: the replayed layers, the head at the metric's
    position, the low-rank update."""
    layer_params = sum(p.numel() for l in model.decoder_layers[layer + 1 :] for p in l.parameters())
    head = model.hf_model.get_output_embeddings().weight.numel()
    tokens = batch * seq
    attn = 4 * seq * seq * model.cfg.d_model * batch * (model.cfg.n_layers - layer - 1)
    return 2 * layer_params * tokens + 2 * head * batch + attn + 2 * tokens * model.cfg.d_model


def timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--configs", type=int, default=48)
    parser.add_argument("--slow-configs", type=int, default=8, help="configs timed for the slow ways (a)-(c)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"fp32 matmul (1024^3): {matmul_gflops():.0f} GFLOP/s")
    hf, inputs = llava_100m()
    model = HookedMLLM(hf)
    b, s = inputs["input_ids"].shape
    L = args.layer
    metric = answer_logprob(model, inputs)
    neurons = list(range(args.slow_configs))
    print(
        f"model: {sum(p.numel() for p in hf.parameters()) / 1e6:.0f}M params, {model.cfg.n_layers} layers, "
        f"d_mlp {model.cfg.d_mlp}; input {b} x {s}; ablated layer {L}"
    )

    def naive() -> None:
        for j in neurons:

            def zero(x, hook, j=j):  # noqa: ANN001, ANN202
                x[..., j] = 0

            metric(model.run_with_hooks(inputs, fwd_hooks=[(f"blocks.{L}.mlp.hook_post", zero)]))

    nn_model = MultimodalNNsight(hf)
    layer_env = nn_model.model.language_model.layers[L].mlp.down_proj

    def nnsight_each() -> None:
        for j in neurons:
            with nn_model.trace(**inputs):
                layer_env.input[:, :, j] = 0
                out = nn_model.output.logits.save()
            metric(out)

    def nnsight_batched() -> None:
        outs: list = []
        with nn_model.trace() as tracer:
            for j in neurons:
                with tracer.invoke(**inputs):
                    layer_env.input[:, :, j] = 0
                    outs.append(nn_model.output.logits.save())
        for o in outs:
            metric(o)

    configs = single_neurons(model, layers=L, positions=NonPad(), neurons=range(args.configs))
    results = {}
    naive()  # warm-up
    results["(a) run_with_hooks per config"] = (len(neurons), timed(naive))
    results["(b) nnsight trace per config"] = (len(neurons), timed(nnsight_each))
    results["(c) nnsight batched invokes"] = (len(neurons), timed(nnsight_batched))
    fast = sweep(model, inputs, configs, metric, progress=False, batch_size=16)
    results["(d) hooks_mm fast path"] = (len(configs), fast.meta["seconds"])
    t_att = timed(lambda: attribution_patching(model, inputs, metric, layers=[L]))
    results["(e) attribution patching"] = (model.cfg.d_mlp, t_att)
    check = sweep(model, inputs, configs[:4], metric, method="naive", progress=False)
    err = (fast.values[:4] - check.values).abs().max().item()

    base = results["(a) run_with_hooks per config"]
    base_rate = base[0] / base[1]
    print(f"\n{'variant':<34} {'configs':>8} {'seconds':>9} {'configs/s':>10} {'vs (a)':>8}")
    for name, (n, t) in results.items():
        print(f"{name:<34} {n:8d} {t:9.2f} {n / t:10.1f} {n / t / base_rate:7.1f}x")
    print(f"max |fast - naive| over 4 configs = {err:.1e}")

    print("\nfast path cost growth (same layer):")
    print(f"  {'configs':>8} {'seq':>5} {'seconds':>8} {'ms/config':>10}")
    times = {}
    for n in (16, 64, 256):
        cfgs = single_neurons(model, layers=L, positions=NonPad(), neurons=range(n))
        times[n] = sweep(model, inputs, cfgs, metric, progress=False, batch_size=16).meta["seconds"]
        print(f"  {n:8d} {s:5d} {times[n]:8.2f} {1e3 * times[n] / n:10.1f}")
    marginal = (times[256] - times[16]) / 240
    gflops = fast_path_flops(model, L, b, s) / marginal / 1e9
    print(
        f"  marginal cost {1e3 * marginal:.1f} ms/config = {gflops:.0f} GFLOP/s achieved (fixed cost: one clean pass)"
    )
    for text in (32, 192):
        inp = llava_inputs(text)
        met = answer_logprob(model, inp)
        cfgs = single_neurons(model, layers=L, positions=NonPad(), neurons=range(32))
        t = sweep(model, inp, cfgs, met, progress=False, batch_size=16).meta["seconds"]
        print(f"  {32:8d} {inp['input_ids'].shape[1]:5d} {t:8.2f} {1e3 * t / 32:10.1f}")
    layer0 = single_neurons(model, layers=0, positions=NonPad(), neurons=range(16))
    t0 = sweep(model, inputs, layer0, metric, progress=False, batch_size=16).meta["seconds"]
    print(f"  layer 0 (every layer replayed): 16 configs in {t0:.2f} s, {1e3 * t0 / 16:.1f} ms/config")


if __name__ == "__main__":
    main()
