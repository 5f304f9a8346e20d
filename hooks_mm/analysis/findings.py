"""Findings with controls: selection on a calibration split, measurement on a held-out split, a bootstrap
interval over held-out examples, random draws of the same size as the control, and a verdict that
agrees only when the effect's interval lies beyond the control's range.

    python -m hooks_mm.analysis.findings [--n 200] [--draws 20] [--seed 0]

So far: ablating modality-specific neurons (LAPE, or the top 5 % by probability difference) on
``toy-llava``'s image-dependent questions, against random neurons of the same count in the same
layers. (The README's other findings are still measured by ``scripts/findings.py`` without controls.)

Example::

    from hooks_mm.analysis.findings import neuron_ablation
    f = neuron_ablation(HookedMLLM.from_pretrained("toy-llava"), selector="lape", n=200, draws=20)
    print(f.row())            # effect [interval], control mean [range], percentile, verdict
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from jaxtyping import Float

from hooks_mm.analysis.controls import random_neurons
from hooks_mm.analysis.erasure import accuracy, choice_score
from hooks_mm.analysis.neurons import activation_probabilities, lape, mask_spec, top_difference
from hooks_mm.analysis.stats import Control, Verdict, bootstrap, verdict
from hooks_mm.model import HookedMLLM
from hooks_mm.tasks.evaluate import encode, word_ids
from hooks_mm.tasks.shapes import ANSWERS, Example, make_qa

Selector = Literal["lape", "top5"]


@dataclass
class Finding:
    """One finding: what was expected, the verdict (effect interval vs control), and the numbers around it."""

    name: str
    model: str
    expected: str
    verdict: Verdict
    details: dict[str, float] = field(default_factory=dict)

    @property
    def agrees(self) -> bool:
        return self.verdict.agrees

    def row(self) -> str:
        """A markdown row: finding, organism, expected, effect [95 % interval], control, n, agrees."""
        v = self.verdict
        if v.control is not None:
            lo, hi = v.control.interval()
            control = (
                f"{v.control.mean:.3g} [{lo:.3g}, {hi:.3g}] "
                f"({len(v.control.draws)} draws; effect at pct {v.percentile:.0f})"
            )
        else:
            control = f"null {v.null:.3g}"
        return (
            f"| {self.name} | `{self.model}` | {self.expected} | {v.effect} | {control} | {v.effect.n} | "
            f"{'yes' if self.agrees else 'no'} |"
        )


HEADER = "| finding | organism | expected | effect [95 % CI] | control | n held out | agrees |\n" + "|---" * 7 + "|"


def batches(model: HookedMLLM, examples: Sequence[Example], size: int = 64, answers: bool = False) -> list[Any]:
    """``examples`` encoded for ``model`` in batches of ``size``."""
    return [encode(model, examples[i : i + size], answers=answers) for i in range(0, len(examples), size)]


def image_questions(model: HookedMLLM, n: int, split: str, seed: int) -> tuple[list[Any], list[torch.Tensor]]:
    """``n`` image-dependent questions of ``split`` in batches, and their answers (indices into ANSWERS)."""
    qa = [e for e in make_qa(3 * n, split, seed) if e.needs_image][:n]  # type: ignore[arg-type]
    if len(qa) < n:
        raise ValueError(f"only {len(qa)} image-dependent questions among {3 * n} drawn: ask for fewer (n={n}).")
    answers = [torch.tensor([ANSWERS.index(e.answer) for e in qa[i : i + 64]]) for i in range(0, len(qa), 64)]
    return batches(model, qa), answers


def _check(n: int, draws: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 10:
        raise ValueError(f"n={n!r}: give the number of held-out examples (an int >= 10; 200 by default).")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 20:
        raise ValueError(f"draws={draws!r}: a control needs >= 20 random draws (an int).")


@torch.no_grad()
def ablation_drop(
    model: HookedMLLM,
    qa: Sequence[Any],
    answers: Sequence[torch.Tensor],
    neurons: Sequence[tuple[int, int]],
    clean: Float[torch.Tensor, " example"] | None = None,
) -> Float[torch.Tensor, " example"]:
    """Per held-out example, correct (1) / wrong (0) clean minus the same with ``neurons`` zeroed at every
    real position (answer = argmax over every answer word at the last position); ``clean``: the clean
    per-example scores when already computed (``accuracy(..., per_example=True)``).

    Example::

        ablation_drop(model, *image_questions(model, 200, "test", 0), [(1, 5), (2, 17)]).mean()
    """
    score = choice_score(word_ids(model, ANSWERS).tolist())
    if clean is None:
        clean = accuracy(model, qa, answers, score, per_example=True)
    if not neurons:
        return clean - clean
    return clean - accuracy(model, qa, answers, score, mask_spec(list(neurons)), per_example=True)


@torch.no_grad()
def neuron_ablation(
    model: HookedMLLM,
    modality: str = "image",
    selector: Selector = "lape",
    n: int = 200,
    draws: int = 20,
    seed: int = 0,
    name: str = "toy-llava",
) -> Finding:
    """Zero the ``modality``-specific MLP neurons (selected on ``n`` training-split prompts: LAPE with
    its published defaults, or the top 5 % by probability difference) at every position of ``n``
    held-out image-dependent questions; the effect is the per-example accuracy drop (answer = argmax
    over every answer word), the control the mean drop with random neurons of the same count in the
    same layers (``draws`` seeds).

    Example::

        neuron_ablation(model, selector="top5", n=200, draws=20).verdict.agrees
    """
    _check(n, draws)
    if selector not in ("lape", "top5"):
        raise ValueError(f"selector={selector!r}: give 'lape' or 'top5'.")
    if modality not in ("text", "image"):
        raise ValueError(f"modality={modality!r}: give 'image' or 'text'.")
    probs = activation_probabilities(model, batches(model, make_qa(n, "train", seed)), ("text", "image"))
    neurons = lape(probs).specific[modality] if selector == "lape" else top_difference(probs, 5.0)[modality]
    label = "LAPE" if selector == "lape" else "top 5%"
    if not neurons:
        raise ValueError(f"{label} selected no {modality} neurons in {name}: nothing to ablate; try selector='top5'.")
    qa, answers = image_questions(model, n, "test", seed)
    clean = accuracy(model, qa, answers, choice_score(word_ids(model, ANSWERS).tolist()), per_example=True)
    effect = bootstrap(ablation_drop(model, qa, answers, neurons, clean), seed=seed)
    rand = [random_neurons(neurons, model.cfg.d_mlp, s) for s in range(draws)]
    control = Control.of([float(ablation_drop(model, qa, answers, r, clean).mean()) for r in rand])
    return Finding(
        f"ablating {modality} neurons ({label}) drops accuracy",
        name,
        "drop > drop with random neurons",
        verdict(effect, control, expect="greater"),
        {"n_neurons": float(len(neurons)), "clean_accuracy": float(clean.mean())},
    )


def findings(
    n: int = 200, draws: int = 20, seed: int = 0, models: dict[str, HookedMLLM] | None = None
) -> list[Finding]:
    """Every controlled finding (module docstring), organisms loaded once each or taken from ``models``."""
    models = dict(models or {})
    if "toy-llava" not in models:
        models["toy-llava"] = HookedMLLM.from_pretrained("toy-llava")
    return [neuron_ablation(models["toy-llava"], "image", s, n, draws, seed) for s in ("lape", "top5")]


def markdown(rows: Sequence[Finding]) -> str:
    return "\n".join([HEADER, *(f.row() for f in rows)])


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m hooks_mm.analysis.findings", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200, help="calibration and held-out examples each")
    p.add_argument("--draws", type=int, default=20, help="random draws for each control")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(markdown(findings(args.n, args.draws, args.seed)))


if __name__ == "__main__":
    main()
