"""Issue 21's suffix-reuse case: a random 92M LLaVA (12 layers, 2 x 128 tokens), one neuron per config,
neurons spread over every layer, ablated at Last() (or at the image with --image): configs/s of the
run_with_hooks loop vs the exact fast path without and with suffix reuse, and the worst |fast - loop|.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/sweep_suffix_bench.py [--configs 96] [--loop 12] [--image]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from common import llava_100m, machine  # noqa: E402

from hooks_mm import HookedMLLM, Image, Last  # noqa: E402
from hooks_mm.interventions import NeuronAblation  # noqa: E402
from hooks_mm.sweep import answer_logprob, sweep  # noqa: E402


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", type=int, default=96)
    parser.add_argument("--loop", type=int, default=12, help="configs timed for the loop")
    parser.add_argument("--image", action="store_true", help="ablate at the image positions, not Last()")
    args = parser.parse_args()
    print("machine:", machine())
    hf, inputs = llava_100m()
    model = HookedMLLM(hf)
    n_layers, width = model.cfg.n_layers, model.cfg.d_mlp
    metric = answer_logprob(model, inputs)
    where, cols = (Image(), slice(4, 68)) if args.image else (Last(), slice(-1, None))  # 64 image tokens at 4..67
    g = torch.Generator().manual_seed(0)
    neurons = torch.randint(0, width, (args.configs,), generator=g).tolist()
    cfgs = [NeuronAblation(i % n_layers, [j], where) for i, j in enumerate(neurons)]
    print(f"input {tuple(inputs['input_ids'].shape)}, {args.configs} configs at {where!r} over {n_layers} layers")

    def loop(cs: list[NeuronAblation]) -> list[float]:
        out = []
        for c in cs:

            def zero(x, hook, j=c.neurons[0]):  # noqa: ANN001, ANN202
                x[:, cols, j] = 0

            out.append(
                float(metric(model.run_with_hooks(inputs, fwd_hooks=[(f"blocks.{c.layers}.mlp.hook_post", zero)])))
            )
        return out

    loop(cfgs[:2])  # warm-up
    t0 = time.perf_counter()
    ref = loop(cfgs[: args.loop])
    rate = args.loop / (time.perf_counter() - t0)
    print(f"loop (run_with_hooks per config): {rate:.2f} configs/s")
    for suffix in (False, True):
        r = sweep(model, inputs, cfgs, metric, progress=False, suffix=suffix)
        err = max(abs(float(v) - x) for v, x in zip(r.values[: args.loop], ref))
        fast = args.configs / r.meta["seconds"]
        lengths = sorted({g["replayed"] for g in r.meta["replayed"]})
        print(
            f"fast path, suffix={suffix}: {fast:.2f} configs/s = {fast / rate:.1f}x the loop; max |fast - loop| "
            f"{err:.1e}; positions replayed {lengths} of {r.meta['seq_len']}; suffix {r.meta['suffix']}"
        )


if __name__ == "__main__":
    main()
