"""Faithfulness curves of the circuit selection rules on toy-llava's colour questions (README "Circuits").

For each corruption, one EAP-IG graph (5 steps, cell input nodes, metric: logit difference clean answer - corrupted
answer, or the answer's log-probability for the other-scene corruption), then for each rule (top edges; top
edges pruned to input -> logit paths; top nodes and their edges; the same pruned) the faithfulness over k with 20
random controls (the same rule on random rankings): faithfulness, the circuit's edge count, the control's mean and
2.5-97.5 % interval, the circuit's percentile among the controls. Before them, per case: the input nodes' scores
summed (EAP, EAP-IG 5 and 50 steps) against the metric's real change, and the Spearman correlation of EAP and
EAP-IG 5 with single-edge exact patching.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/circuit_selection.py [CASE]   # ~2 min a case, 1 core

``CASE``: a part of a case's name ("asked", "every", "other scenes", "all kinds"); all four without it.
"""

from __future__ import annotations

import sys
import time

import pandas as pd
import torch

from hooks_mm import HookedMLLM
from hooks_mm.circuits import eap_agreement, eap_graph, faithfulness_curve
from hooks_mm.sweep.metrics import answer_logprob, logit_diff
from hooks_mm.tasks import make_qa
from hooks_mm.tasks.corrupt import colour_questions, recolour
from hooks_mm.tasks.evaluate import answer_ids, encode

EDGE_KS = [5, 10, 20, 40, 80, 160]
NODE_KS = [2, 4, 6, 8, 12, 16]
RULES = [("edges", False, EDGE_KS), ("edges", True, EDGE_KS), ("nodes", False, NODE_KS), ("nodes", True, NODE_KS)]


def cases(model: HookedMLLM) -> dict[str, tuple]:
    qa = colour_questions(8, cell=(1, 1))
    clean = model.prepare(encode(model, qa))
    out = {}
    for name, objects in (("asked object recoloured", "asked"), ("every object recoloured", "all")):
        bad = [recolour(e, objects) for e in qa]
        corrupted = model.prepare(encode(model, bad))
        out[name] = (clean, corrupted, logit_diff(model, clean, answer_ids(model, qa), answer_ids(model, bad)))
    mixed = colour_questions(8)  # asked objects anywhere, the images of other scenes: a large corruption
    other = make_qa(8, split="test", seed=1, p_text=0.0)
    clean = model.prepare(encode(model, mixed))
    corrupted = model.to_inputs([e.prompt for e in mixed], images=[e.image for e in other])
    out["other scenes"] = (clean, corrupted, answer_logprob(model, clean, answer_ids(model, mixed)))
    # the batch README's figures used before (make_qa's kind_weights={"colour": 1} keeps every kind at weight 1:
    # questions of all kinds), the images of other scenes
    kinds = make_qa(8, split="test", seed=0, p_text=0.0, kind_weights={"colour": 1})
    clean = model.prepare(encode(model, kinds))
    corrupted = model.to_inputs([e.prompt for e in kinds], images=[e.image for e in other])
    out["all kinds, other scenes"] = (clean, corrupted, answer_logprob(model, clean, answer_ids(model, kinds)))
    return out


def main() -> None:
    torch.set_num_threads(1)
    model = HookedMLLM.from_pretrained("toy-llava")
    pd.set_option("display.width", 160)
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    for name, (clean, corrupted, metric) in cases(model).items():
        if only not in name:
            continue
        t = time.perf_counter()
        g = eap_graph(model, clean, corrupted, metric, inputs="cell", method="eap-ig", steps=5)
        print(f"\n## {name}: {g.n_edges} edges, metric clean {g.meta['metric_clean']:.3f} corrupted "
              f"{g.meta['metric_corrupted']:.3f}")  # fmt: skip
        sums = {}
        for method, steps in (("eap", 1), ("eap-ig", 5), ("eap-ig", 50)):
            h = (
                g
                if steps == 5
                else eap_graph(model, clean, corrupted, metric, inputs="cell", method=method, steps=steps)
            )
            sums[f"{method} {steps}"] = float(sum(h.node_scores[i] for i, n in enumerate(h.nodes) if n.kind == "input"))
            if steps < 50:
                sums[f"{method} {steps} Spearman"] = eap_agreement(model, h, clean, corrupted, metric).spearman
        real = g.meta["metric_corrupted"] - g.meta["metric_clean"]
        print(f"input nodes' scores summed vs the metric's change {real:.3f}; Spearman with single-edge patching:",
              {key: round(v, 3) for key, v in sums.items()})  # fmt: skip
        for rule, connected, ks in RULES:
            c = faithfulness_curve(model, g, clean, corrupted, metric, ks=ks, rule=rule, connected=connected)
            c = c[["k", "edges", "faithfulness", "random_mean", "random_lo", "random_hi", "percentile"]]
            print(f"\nrule={rule!r} connected={connected}\n{c.round(3).to_string(index=False)}")
        print(f"({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
