"""Remote vs local sweep cost per config, and the effect of chunk size, in one run.

Needs the loopback NDIF stack (``scripts/ndif-stack.sh up``); uses its deployed tiny LLaVA
(2 rows, images, d_mlp 128) and single-neuron zero ablations at the image positions with
``answer_logprob``. Side by side:

  (a) hooks_mm.sweep (local exact fast path)
  (b) remote_sweep, remote=False (nnsight in this process)
  (c) remote_sweep, remote="local" (nnsight's serialisation round-trip, in this process)
  (d) remote_sweep on the NDIF server, for several ``max_configs_per_request``
  (e) the same with ``configs_per_trace`` < request size (a session of traces)

and the latency of a one-config request (submit to result). Every table is checked
against (a) (max abs diff printed). The tiny model makes this a measure of overhead: on a
large model the forward dominates and chunking matters less per config.

    python benchmarks/remote.py [--configs 256] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import nnsight
from common import machine

from hooks_mm import HookedMLLM, Image
from hooks_mm.remote import NNsightBackend, load_nnsight, remote_sweep
from hooks_mm.sweep import answer_logprob, single_neurons, sweep
from hooks_mm.zoo import toy_image


def timed(fn, reps: int):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--state", default=os.environ.get("NDIF_STATE", ".ndif-state"))
    args = ap.parse_args()
    with open(os.path.join(args.state, "stack.json")) as f:
        info = json.load(f)
    host, path = info["host"], info["models"]["tiny-llava"]["path"]
    nnsight.CONFIG.APP.REMOTE_LOGGING = False

    model = HookedMLLM.from_pretrained(path)
    inputs = model.to_inputs(["<image> what colour is it", "<image> where ?"], images=[toy_image(1), toy_image(2)])
    metric = answer_logprob(model, inputs)
    configs = single_neurons(model, layers=[0, 1], positions=Image())[: args.configs]
    backend = NNsightBackend(model, load_nnsight(path, processor=model.processor, dispatch=True))
    n = len(configs)
    print(
        f"machine: {machine()}\nmodel: tiny LLaVA ({path}), {n} configs, batch {inputs['input_ids'].shape[0]} x "
        f"{inputs['input_ids'].shape[1]} tokens, NDIF at {host} (one CPU actor)\n"
    )

    # one-config request latency (submit to result), warm
    plan = [backend.plan([configs[0]], inputs, reduce=(metric.positions, metric.at))]
    backend.execute(plan, remote=host)
    lat = []
    for _ in range(20):
        t0 = time.perf_counter()
        backend.execute(plan, remote=host)
        lat.append(time.perf_counter() - t0)
    print(
        f"one-config request latency: median {statistics.median(lat) * 1e3:.0f} ms, "
        f"min {min(lat) * 1e3:.0f} ms (20 requests)\n"
    )

    t_ref, ref = timed(lambda: sweep(model, inputs, configs, metric, progress=False), args.reps)
    rows = [("(a) hooks_mm.sweep, local fast path", t_ref, 0, 0, 0.0)]

    def run(label: str, **kw):
        t, out = timed(
            lambda: remote_sweep(backend, inputs, configs, metric, progress=False, check_deployed=False, **kw),
            args.reps,
        )
        diff = float((out.values - ref.values).abs().max())
        rows.append((label, t, out.meta["requests"], out.meta["bytes_received"], diff))

    run("(b) nnsight in process, 64/request", remote=False, max_configs_per_request=64)
    run("(c) nnsight remote='local', 64/request", remote="local", max_configs_per_request=64)
    for chunk in (1, 8, 32, 64, 128, 256):
        if chunk == 1 and n > 64:  # 1 config per request: time a slice, scale per config
            sub = configs[:64]
            t, out = timed(
                lambda sub=sub: remote_sweep(
                    backend,
                    inputs,
                    sub,
                    metric,
                    remote=host,
                    max_configs_per_request=1,
                    progress=False,
                    check_deployed=False,
                ),
                1,
            )
            rows.append(
                (
                    f"(d) NDIF, 1/request (first {len(sub)} configs)",
                    t * n / len(sub),
                    out.meta["requests"] * n // len(sub),
                    out.meta["bytes_received"] * n // len(sub),
                    float((out.values - ref.values[: len(sub)]).abs().max()),
                )
            )
            continue
        run(f"(d) NDIF, {chunk}/request", remote=host, max_configs_per_request=chunk)
    run("(e) NDIF, 256/request as 8 traces of 32", remote=host, max_configs_per_request=256, configs_per_trace=32)

    print(
        f"{'way':<48} {'s total':>8} {'ms/config':>10} {'vs (a)':>8} {'requests':>9} {'bytes back':>11} {'max diff':>9}"
    )
    for label, t, req, back, diff in rows:
        print(f"{label:<48} {t:8.2f} {t / n * 1e3:10.2f} {t / t_ref:8.1f} {req:9d} {back:11,d} {diff:9.1e}")


if __name__ == "__main__":
    main()
