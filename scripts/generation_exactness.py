"""Measure generate(interventions=...) against recomputing each step without the KV cache.

For every family and spec kind of tests/test_generate_interventions.py (prompt and generated positions): the worst
per-step logit difference and whether the tokens agree; then the cost of a spec on tiny-llava generation.

Usage::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/generation_exactness.py [family ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_generate_interventions as T  # noqa: E402  (the test's cases and its recompute loop)

MORE = ["paligemma", "mllama", "llava_next", "qwen2_5_vl", "qwen3_vl", "smolvlm", "internvl", "gemma4"]


def main(families: list[str]) -> None:
    worst, runs, same = 0.0, 0, 0
    for family in families:
        family_worst = 0.0
        for kind in T.KINDS:
            try:
                p, spec, ref, reads = T.case(family, kind)
                sources = {"src": T.source_of(p)} if reads else None
                out = T.cached(p, spec, sources, None)
                ids, logits = T.recompute(p, ref, sources, None)
            except ValueError as e:  # a spec this family refuses (knockout on cross-attention, ...)
                print(f"  {family} {kind}: refused: {str(e)[:100]}")
                continue
            d = max(float((out.logits[k].float() - logits[k]).abs().max()) for k in range(T.N_NEW))
            family_worst, runs, same = max(family_worst, d), runs + 1, same + int(torch.equal(out.sequences, ids))
        worst = max(worst, family_worst)
        print(f"{family}: worst |d logit| {family_worst:.1e}", flush=True)
    print(f"{runs} runs, tokens equal in {same}, worst |d logit| {worst:.1e}")
    p = T.pair_for("llava")
    spec = T.case("llava", "compose/prompt+generated")[1]
    for name, kw in [("plain", {}), ("spec", {"interventions": spec})]:
        t = time.perf_counter()
        for _ in range(20):
            p.model.generate(p.inputs, max_new_tokens=8, **kw)
        print(f"{name}: {(time.perf_counter() - t) / 20 * 1000:.1f} ms per generate (tiny llava, 2 rows, 8 tokens)")


if __name__ == "__main__":
    main(sys.argv[1:] or T.FAMILIES + MORE)
