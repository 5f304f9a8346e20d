"""The finding value, its markdown row, and the data every controlled finding draws (calibration = the
training split, measurement = the held-out test split)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from hooks_mm.analysis.stats import Verdict
from hooks_mm.model import HookedMLLM
from hooks_mm.tasks.evaluate import encode
from hooks_mm.tasks.shapes import ANSWERS, Example, make_qa


@dataclass
class Finding:
    """One finding: what was expected, the verdict (effect interval vs control or null), and numbers around it."""

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
                f"random: {v.control.mean:.3g} [{lo:.3g}, {hi:.3g}] "
                f"({len(v.control.draws)} draws; effect at pct {v.percentile:.0f})"
            )
        else:
            control = f"null {v.null:.3g}"
        return (
            f"| {self.name} | `{self.model}` | {self.expected} | {v.effect} | {control} | {v.effect.n} | "
            f"{'yes' if self.agrees else 'no'} |"
        )


HEADER = "| finding | organism | expected | effect [95 % CI] | control | n held out | agrees |\n" + "|---" * 7 + "|"


def markdown(rows: Sequence[Finding]) -> str:
    return "\n".join([HEADER, *(f.row() for f in rows)])


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


def check_sizes(n: int, draws: int | None = None) -> None:
    """Refuse too few held-out examples or control draws."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 10:
        raise ValueError(f"n={n!r}: give the number of held-out examples (an int >= 10; 200 by default).")
    if draws is not None and (isinstance(draws, bool) or not isinstance(draws, int) or draws < 20):
        raise ValueError(f"draws={draws!r}: a control needs >= 20 random draws (an int).")
