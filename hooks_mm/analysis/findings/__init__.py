"""Findings with controls: selection on a calibration split (the training split), measurement on a
held-out split (test), a bootstrap interval over held-out examples, and a verdict that agrees only when
the effect's interval lies beyond its control: random neurons of the same count in the same layers
(>= 20 draws), or zero for a paired per-example difference.

    python -m hooks_mm.analysis.findings [--n 200] [--draws 20] [--seed 0] [--size small|large]
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

# i19-flow: attention flow per layer and knockout per window, with controls (findings/flow.py)
from hooks_mm.analysis.findings.flow import attention_knockout, flow_by_layer, knockout_by_window
from hooks_mm.analysis.findings.llava import alignment, erasure, norms, tccd_gain
from hooks_mm.analysis.findings.neurons import ablation_drop, masking, neuron_ablation, row_nll, select
from hooks_mm.model import HookedMLLM

# isort: split
# i19-clean: the masking matrix's other cells (masking(model, "text", ...) is the text diagonal)
from hooks_mm.analysis.findings.neurons import caption_neurons, masking_specificity, nll_increase

__all__ = [
    # i19-flow
    "attention_knockout",
    "flow_by_layer",
    "knockout_by_window",
    # (the rest)
    "HEADER",
    "SIZES",
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
    "organisms",
    "row_nll",
    "select",
    "tccd_gain",
]
__all__ += ["caption_neurons", "masking_specificity", "nll_increase"]  # i19-clean

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


# the organisms of each size: (llava-style, anygpt paired, anygpt after the unimodal stage)
SIZES = {
    "small": ("toy-llava", "toy-anygpt", "toy-anygpt-monotune"),
    "large": ("toy-llava-large", "toy-anygpt-large", "toy-anygpt-large-monotune"),
}


def organisms(size: str) -> tuple[str, str, str]:
    """The organisms the findings run on at ``size`` ("small": 3 blocks, d 128; "large": 6 blocks, d 256)."""
    if size not in SIZES:
        raise ValueError(f"size={size!r}: give one of {sorted(SIZES)}.")
    return SIZES[size]


def findings(
    n: int = 200, draws: int = 20, seed: int = 0, models: dict[str, HookedMLLM] | None = None, size: str = "small"
) -> list[Finding]:
    """Every controlled finding (module docstring) on the organisms of ``size``, each loaded once or taken
    from ``models`` (name -> model)."""
    names = organisms(size)
    models = dict(models or {})
    for name in names:
        if name not in models:
            models[name] = HookedMLLM.from_pretrained(name)
    ln, an, mn = names
    llava, anygpt = models[ln], models[an]
    return [
        erasure(llava, n, seed=seed, name=ln),
        tccd_gain(llava, n, seed=seed, name=ln),
        bias(anygpt, models[mn], n, seed, names=(an, mn)),
        *(neuron_ablation(llava, "image", s, n, draws, seed, name=ln) for s in ("lape", "top5")),
        *(masking(anygpt, "image", s, n, draws, seed, name=an) for s in ("lape", "top2")),
        *(masking(anygpt, "text", s, n, draws, seed, name=an) for s in ("lape", "top2")),
        *(
            masking_specificity(anygpt, m, s, n, draws, seed, name=an)
            for m in ("image", "text")
            for s in ("lape", "top2")
        ),
        alignment(llava, n, seed, name=ln),
        norms(llava, n, seed, name=ln),
        *(attention_knockout(llava, n, draws, seed, edge=e, name=ln) for e in ("last->image", "question->image")),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m hooks_mm.analysis.findings", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200, help="calibration and held-out examples each")
    p.add_argument("--draws", type=int, default=20, help="random draws for each neuron control")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curves", action="store_true", help="the curves on the llava-style organism of --size instead")
    # --- checkpoints (issue 19 item 2) ---
    p.add_argument(
        "--checkpoints",
        nargs="+",
        metavar="DIR",
        help="curves over these training checkpoints (step-N "
        "directories or their roots: paired run then monotune run) instead",
    )
    # --- end checkpoints ---

    p.add_argument(
        "--size", choices=sorted(SIZES), default="small", help="small (3 blocks) or large (6 blocks) organisms"
    )
    args = p.parse_args(argv)
    # --- checkpoints (issue 19 item 2) ---
    if args.checkpoints:
        from hooks_mm.analysis.findings.checkpoints import report

        print(report(args.checkpoints, n=args.n, seed=args.seed))
        return
    # --- end checkpoints ---
    if args.curves:
        from hooks_mm.analysis.findings.curves import alignment_by_layer, erasure_by_depth, tccd_by_alpha

        llava = organisms(args.size)[0]
        model = HookedMLLM.from_pretrained(llava)
        for curve in (erasure_by_depth, tccd_by_alpha, alignment_by_layer):
            print(f"\n{curve.__name__} ({llava}, n={args.n} held out; value [95 % interval]):")
            print(curve(model, n=args.n, seed=args.seed).to_string(index=False, float_format="{:.3g}".format))
        # i19-flow: attention flow per layer, knockout per window against random non-image keys
        print(f"\nflow_by_layer ({llava}, n={args.n} held out; value [95 % interval]):")
        print(flow_by_layer(model, n=args.n, seed=args.seed).to_string(index=False, float_format="{:.3g}".format))
        print(f"\nknockout_by_window ({llava}, n={args.n} held out, {args.draws} control draws):")
        table = knockout_by_window(model, n=args.n, draws=args.draws, seed=args.seed)
        print(table.to_string(index=False, float_format="{:.3g}".format))
        return
    print(markdown(findings(args.n, args.draws, args.seed, size=args.size)))
