"""Cost of the hook interface: HookedMLLM forward vs the bare HF forward, measured side by side.

For each model: (a) the bare HF model (an unwrapped copy with identical weights), (b) the
HookedMLLM forward with no hooks, (c) run_with_cache of every hook point, (d) run_with_cache
of the residual stream at the image positions only. Runs are interleaved round-robin and the
median is reported, so machine noise hits all variants alike.

    python benchmarks/overhead.py [--reps 30]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from common import llava_100m, machine

from hooks_mm import HookedMLLM, Image, zoo


def bench(name: str, model, inputs, reps: int) -> None:  # noqa: ANN001
    bare = copy.deepcopy(model)
    hooked = HookedMLLM(model)
    n_params = sum(p.numel() for p in bare.parameters())
    variants = {
        "bare HF forward": lambda: bare(**inputs),
        "HookedMLLM, no hooks": lambda: hooked(inputs),
        "run_with_cache, every hook": lambda: hooked.run_with_cache(inputs),
        "run_with_cache, resid at Image(0)": lambda: hooked.run_with_cache(
            inputs, names_filter=lambda n: n.endswith("hook_resid_post"), pos=Image(0)
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(reps):
            for k, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["bare HF forward"])
    seq = tuple(inputs["input_ids"].shape)
    print(
        f"\n{name}: {n_params / 1e6:.1f}M parameters, input_ids {seq}, {len(hooked.hook_dict)} hook points, {reps} reps"
    )
    print(f"  {'variant':<38} {'median ms':>10} {'vs bare':>8}")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"  {k:<38} {med * 1e3:10.2f} {med / base:7.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    tiny = zoo.build("llava")
    bench("tiny-llava", tiny.model, tiny.inputs, args.reps * 4)
    model, inputs = llava_100m()
    bench("llava ~100M (random)", model, inputs, args.reps)


if __name__ == "__main__":
    main()
