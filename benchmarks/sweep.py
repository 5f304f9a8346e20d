"""Neuron-ablation sweep speed: hooks_mm's exact fast path vs the other ways, side by side in one run.

Same model (a ~92M-parameter random LLaVA, 2 x 128 tokens: 64 image tokens), same metric
(log-prob of the clean answer at the last position), configs zeroing one MLP neuron:

  whole model, image positions   neurons spread over EVERY layer, zeroed at the image positions
  whole model, Last()            neurons spread over every layer, zeroed at the last position only
                                 (with and without suffix reuse: ``sweep(..., suffix=False)``)
  best case (layer n-2, image)   one late layer: the fast path replays only the layer above

Ways (benchmarks/ways.py): the TransformerLens-style ``run_with_hooks`` loop, one nnsight
trace per config, nnsight batched invokes, the fast path, attribution patching (every neuron
of every layer at once; its Spearman to the exact whole-model deltas). The loop and nnsight
cost one full forward per config whatever the layer or position; they are timed on the
whole-model image configs. Everything is timed round-robin (``--rounds``), medians and the
min-max over rounds are printed, and the ways' values are checked against each other.
Then the fast path's cost growth with configs and with sequence length (vs the loop).

    python benchmarks/sweep.py [--rounds 3] [--threads 1] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from common import llava_inputs, llava_random, machine
from nnsight_baseline import MultimodalNNsight
from ways import Ways, interleave, one_layer, report, spearman, spread, timed

from hooks_mm import HookedMLLM, Image, Last
from hooks_mm.sweep import answer_logprob


def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(ts) / 1e9


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="round-robin repetitions of every way")
    p.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly: the machine may be shared)")
    p.add_argument("--per-layer", type=int, default=2, help="fast-path configs per layer (whole-model cases)")
    p.add_argument("--slow-every", type=int, default=2, help="the loop and nnsight run one config of every k-th layer")
    p.add_argument("--text", type=int, default=64, help="text tokens per row (plus 64 image tokens)")
    p.add_argument("--growth-text", type=int, nargs="*", default=[32, 192], help="other text lengths for the growth")
    p.add_argument("--growth-only", action="store_true", help="skip the side-by-side: only the cost growth")
    p.add_argument("--smoke", action="store_true", help="a tiny model and sizes: checks the script runs (tests)")
    return p.parse_args()


def growth(ways: Ways, model: HookedMLLM, positions: Any, pers: list[int], loop_ms: float) -> None:
    """The fast path's time for more configs per layer: its marginal cost per config and its fixed cost."""
    s = ways.batch.shape[1]
    grown = []
    for per in pers:
        cfgs = spread(model, per, positions)
        t, _ = timed(lambda cfgs=cfgs: ways.fast(cfgs))
        grown.append((len(cfgs), t))
        ms = 1e3 * t / len(cfgs)
        print(f"  {len(cfgs):8d} {s:5d} {t:8.2f} {ms:15.1f} {loop_ms:15.1f} {loop_ms / ms:5.1f}x  {positions!r}")
    (n0, t0), (n1, t1) = grown[0], grown[-1]
    marginal = (t1 - t0) / (n1 - n0)
    fixed = t0 - n0 * marginal
    if marginal <= 0:
        print("  -> marginal cost not resolved (noise): run with more --per-layer")
    else:
        print(
            f"  -> {positions!r}: marginal {1e3 * marginal:.0f} ms/config ({loop_ms / 1e3 / marginal:.1f}x the loop), "
            f"fixed {fixed:.1f} s per sweep = {fixed * 1e3 / loop_ms:.1f} loop configs (the clean pass and each swept "
            "layer's replay check)"
        )


@torch.no_grad()
def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    if args.smoke:
        hf, inputs = llava_random(text_tokens=8, layers=2, d_model=64, d_mlp=128, heads=4)
        args.rounds, args.per_layer, args.growth_text = 1, 2, [4]
    else:
        hf, inputs = llava_random(text_tokens=args.text)
    print(f"machine: {machine()}")
    print(f"fp32 matmul (1024^3): {matmul_gflops():.0f} GFLOP/s")
    model = HookedMLLM(hf)
    n_layers = model.cfg.n_layers
    b, s = inputs["input_ids"].shape
    metric = answer_logprob(model, inputs)
    ways = Ways(model, MultimodalNNsight(hf), inputs, metric, batch_size=16)
    print(
        f"model: {sum(p.numel() for p in hf.parameters()) / 1e6:.0f}M params, {n_layers} layers, "
        f"d_mlp {model.cfg.d_mlp}; input {b} x {s} (64 image tokens); metric: answer log-prob at Last()"
    )
    image = spread(model, args.per_layer, Image())
    last = spread(model, args.per_layer, Last())
    late = one_layer(model, max(0, n_layers - 2), len(image), Image())
    slow = image[:n_layers][:: args.slow_every]
    cases = {
        "(a) loop: run_with_hooks per config": (lambda: ways.loop(slow), len(slow)),
        "(b) nnsight: one trace per config": (lambda: ways.nnsight_each(slow), len(slow)),
        "(c) nnsight: batched invokes": (lambda: ways.nnsight_batched(slow), len(slow)),
        "(d) fast, whole model, image positions": (lambda: ways.fast(image), len(image)),
        "(d) fast, whole model, Last()": (lambda: ways.fast(last), len(last)),
        "(d) fast, whole model, Last(), suffix=False": (lambda: ways.fast(last, suffix=False), len(last)),
        f"(d) fast, BEST CASE layer {n_layers - 2}, image": (lambda: ways.fast(late), len(late)),
        "(e) attribution, every neuron, image": (lambda: ways.attribution(Image()), n_layers * model.cfg.d_mlp),
    }
    if not args.growth_only:
        print(f"\nside by side, {args.rounds} rounds round-robin ((a)-(c) on {len(slow)} whole-model image configs):")
        rates, outs = interleave(cases, args.rounds)
        report(rates, base="(a) loop: run_with_hooks per config")
        fast_image = outs["(d) fast, whole model, image positions"]
        shared = fast_image[:n_layers][:: args.slow_every]  # the fast path's values of the configs in `slow`
        errs = {n: (outs[n] - shared).abs().max().item() for n in list(cases)[:3]}
        print("  max |way - fast| on the shared configs: " + ", ".join(f"{n[:3]} {e:.1e}" for n, e in errs.items()))
        last_err = (
            (outs["(d) fast, whole model, Last()"] - outs["(d) fast, whole model, Last(), suffix=False"]).abs().max()
        )
        meta = ways.metas[(repr(Last()), True)]
        print(
            f"  max |Last() with - without suffix reuse| = {last_err.item():.1e}; suffix reuse {meta.get('suffix')}, "
            f"positions replayed above each layer: {sorted({g['replayed'] for g in meta.get('replayed', [])})}"
        )
        att = outs["(e) attribution, every neuron, image"]
        est = torch.stack([att.neurons[c.layers, c.neurons[0]] for c in image])
        rho = spearman(est, fast_image - ways.clean)
        print(f"  (e) Spearman(attribution estimate, exact delta) over the {len(image)} whole-model configs: {rho:.2f}")

    print("\nfast path cost growth (whole model), vs the loop at the same length:")
    print(
        f"  {'configs':>8} {'seq':>5} {'fast s':>8} {'fast ms/config':>15} {'loop ms/config':>15} {'ratio':>6}"
        "  positions"
    )
    if args.growth_only:
        t, _ = timed(lambda: ways.loop(slow))
        loop_ms = 1e3 * t / len(slow)
    else:
        loop_ms = 1e3 / statistics.median(rates["(a) loop: run_with_hooks per config"])
    for positions in (Image(), Last()):
        growth(ways, model, positions, sorted({1, args.per_layer, 2 * args.per_layer}), loop_ms)
    for text in args.growth_text:
        inp = llava_inputs(text)
        other = Ways(model, None, inp, answer_logprob(model, inp), batch_size=16)
        cfgs = spread(model, args.per_layer, Image())
        t, _ = timed(lambda other=other, cfgs=cfgs: other.fast(cfgs))
        few = cfgs[:n_layers][:: args.slow_every]
        tl, _ = timed(lambda other=other, few=few: other.loop(few))
        ms, lms = 1e3 * t / len(cfgs), 1e3 * tl / len(few)
        print(f"  {len(cfgs):8d} {inp['input_ids'].shape[1]:5d} {t:8.2f} {ms:15.1f} {lms:15.1f} {lms / ms:5.1f}x")
    meta = ways.last_sweep.meta
    shown = ", ".join(f"{k}={v}" for k, v in meta.items() if isinstance(v, (int, float, str)) and k != "noise")
    print(f"  (last sweep's meta: {shown})")


if __name__ == "__main__":
    main()
