"""Findings with controls: selection on a calibration split (the training split), measurement on a
held-out split (test), a bootstrap interval over held-out examples, and a verdict that agrees only when
the effect's interval lies beyond its control: random neurons of the same count in the same layers
(>= 20 draws), or zero for a paired per-example difference.

    python -m hooks_mm.analysis.findings [--n 200] [--draws 20] [--seed 0]
    python -m hooks_mm.analysis.findings --curves     # erasure per depth and K, TCCD per alpha, alignment per layer
    python -m hooks_mm.analysis.findings --checkpoints DIR [DIR ...]   # bias / alignment vs accuracy per checkpoint

Example::

    from hooks_mm.analysis.findings import findings, markdown
    print(markdown(findings(n=200, draws=20)))
"""

from __future__ import annotations

from typing import Sequence

from hooks_mm.analysis.findings.anygpt import bias, log_bias
from hooks_mm.analysis.findings.common import HEADER, Finding, batches, image_questions, markdown
from hooks_mm.analysis.findings.llava import alignment, erasure, norms, tccd_gain
from hooks_mm.analysis.findings.neurons import ablation_drop, masking, neuron_ablation, row_nll, select
from hooks_mm.model import HookedMLLM

__all__ = [
    "HEADER",
    "Finding",
    "ablation_drop",
    "alignment",
    "batches",
    "bias",
    "erasure",
    "findings",
    "image_questions",
    "log_bias",
    "markdown",
    "masking",
    "neuron_ablation",
    "norms",
    "row_nll",
    "select",
    "tccd_gain",
]

# --- issue 19 item 2: curves over training checkpoints (findings/checkpoints.py) ---
from hooks_mm.analysis.findings.checkpoints import (  # noqa: E402
    Checkpoint,
    Correlations,
    alignment_and_accuracy,
    alignment_vs_accuracy,
    bias_over_checkpoints,
    checkpoint_correlations,
    checkpoint_dirs,
    read_checkpoints,
)

__all__ += [
    "Checkpoint",
    "Correlations",
    "alignment_and_accuracy",
    "alignment_vs_accuracy",
    "bias_over_checkpoints",
    "checkpoint_correlations",
    "checkpoint_dirs",
    "read_checkpoints",
]
# --- end checkpoints ---

ORGANISMS = ("toy-llava", "toy-anygpt", "toy-anygpt-monotune")


def findings(
    n: int = 200, draws: int = 20, seed: int = 0, models: dict[str, HookedMLLM] | None = None
) -> list[Finding]:
    """Every controlled finding (module docstring), organisms loaded once each or taken from ``models``."""
    models = dict(models or {})
    for name in ORGANISMS:
        if name not in models:
            models[name] = HookedMLLM.from_pretrained(name)
    llava, anygpt = models["toy-llava"], models["toy-anygpt"]
    return [
        erasure(llava, n, seed=seed),
        tccd_gain(llava, n, seed=seed),
        bias(anygpt, models["toy-anygpt-monotune"], n, seed),
        *(neuron_ablation(llava, "image", s, n, draws, seed) for s in ("lape", "top5")),
        *(masking(anygpt, "image", s, n, draws, seed) for s in ("lape", "top2")),
        alignment(llava, n, seed),
        norms(llava, n, seed),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m hooks_mm.analysis.findings", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200, help="calibration and held-out examples each")
    p.add_argument("--draws", type=int, default=20, help="random draws for each neuron control")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curves", action="store_true", help="the curves (findings.curves) on toy-llava instead")
    # --- checkpoints (issue 19 item 2) ---
    p.add_argument(
        "--checkpoints",
        nargs="+",
        metavar="DIR",
        help="curves over these training checkpoints (step-N "
        "directories or their roots: paired run then monotune run) instead",
    )
    # --- end checkpoints ---
    args = p.parse_args(argv)
    # --- checkpoints (issue 19 item 2) ---
    if args.checkpoints:
        from hooks_mm.analysis.findings.checkpoints import report

        print(report(args.checkpoints, n=args.n, seed=args.seed))
        return
    # --- end checkpoints ---
    if args.curves:
        from hooks_mm.analysis.findings.curves import alignment_by_layer, erasure_by_depth, tccd_by_alpha

        model = HookedMLLM.from_pretrained("toy-llava")
        for curve in (erasure_by_depth, tccd_by_alpha, alignment_by_layer):
            print(f"\n{curve.__name__} (toy-llava, n={args.n} held out; value [95 % interval]):")
            print(curve(model, n=args.n, seed=args.seed).to_string(index=False, float_format="{:.3g}".format))
        return
    print(markdown(findings(args.n, args.draws, args.seed)))
