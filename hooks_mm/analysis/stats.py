"""Intervals, controls and verdicts for findings.

A finding is an *effect* (a statistic over examples: an accuracy drop, a perplexity ratio, a
cosine gap) judged against a *control* (the same measurement with random neurons or positions of
the same size, drawn many times) or against a null value. :func:`bootstrap` gives the effect's
percentile-bootstrap interval over examples (resampling example indices, so paired quantities stay
paired); :class:`Control` holds the control's draws (mean, 2.5-97.5 % interval, the percentile of a
value among them); :func:`verdict` says whether the effect agrees with the expected direction:
only when its whole interval lies beyond the control's interval (or the null value).

Example::

    drop = clean_correct - ablated_correct                      # [n] per-example 0/1 differences
    effect = bootstrap(drop)                                    # Interval(value, lo, hi)
    control = Control.of([random_drop(seed).mean() for seed in range(20)])
    v = verdict(effect, control, expect="greater")              # v.agrees, v.percentile, str(v)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

Expect = Literal["greater", "less"]


@dataclass(frozen=True)
class Interval:
    """A statistic on the whole sample (``value``) and its bootstrap interval ``[lo, hi]`` at ``level``
    over ``n`` examples (``n_boot`` resamples)."""

    value: float
    lo: float
    hi: float
    level: float
    n: int
    n_boot: int

    def __str__(self) -> str:
        return f"{self.value:.3g} [{self.lo:.3g}, {self.hi:.3g}]"

    def excludes(self, x: float) -> bool:
        return not (self.lo <= x <= self.hi)


def _check_level(level: float) -> None:
    if not (isinstance(level, float) and 0.0 < level < 1.0):
        raise ValueError(f"level={level!r}: give the interval's coverage as a float in (0, 1), e.g. 0.95.")


def bootstrap(
    values: Float[Tensor, "n ..."] | Sequence[float],
    statistic: Callable[[Tensor], Tensor | float] | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile-bootstrap interval of ``statistic`` (default: the mean over dim 0) over examples.

    ``values`` holds one row per example (extra dims ride along, so paired measurements such as
    ``[n, 2]`` clean / ablated are resampled together); each resample draws ``n`` row indices with
    replacement (seeded: the same call gives the same interval).

    Example::

        bootstrap(torch.tensor([0.0, 1, 1, 0, 1]))                                   # mean and 95 % interval
        bootstrap(pairs, statistic=lambda v: v[:, 0].mean() / v[:, 1].mean())       # a ratio of paired means
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.dim() == 0 or v.shape[0] < 2:
        raise ValueError(
            f"bootstrap needs one row per example and at least 2 examples (got shape {tuple(v.shape)}): "
            "pass the per-example values, not their mean."
        )
    if not torch.isfinite(v).all():
        raise ValueError("bootstrap: values contain NaN or inf: drop or fix those examples first.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise ValueError(f"n_boot={n_boot!r}: give an int >= 100 (2000 by default).")
    _check_level(level)
    stat = statistic or (lambda x: x.mean(0))
    value = _scalar(stat(v), "statistic")
    if not math.isfinite(value):
        raise ValueError(f"bootstrap: the statistic is {value} on the whole sample (e.g. a ratio over zeros).")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.shape[0], (n_boot, v.shape[0]), generator=gen)
    draws = torch.tensor([_scalar(stat(v[i]), "statistic") for i in idx], dtype=torch.float64)
    draws = draws[torch.isfinite(draws)]
    if len(draws) < n_boot // 2:
        raise ValueError("bootstrap: the statistic is NaN / inf on most resamples (e.g. a ratio over zeros).")
    a = (1.0 - level) / 2
    lo, hi = torch.quantile(draws, torch.tensor([a, 1 - a], dtype=torch.float64)).tolist()
    return Interval(value, lo, hi, level, int(v.shape[0]), n_boot)


def _scalar(x: Tensor | float, what: str) -> float:
    t = torch.as_tensor(x)
    if t.numel() != 1:
        raise ValueError(f"the {what} must return one number per sample (got shape {tuple(t.shape)}).")
    return float(t)


@dataclass(frozen=True)
class Control:
    """Draws of the control measurement (random neurons / positions of the same size, one per seed)."""

    draws: Float[Tensor, " draw"]

    @classmethod
    def of(cls, draws: Sequence[float] | Tensor) -> "Control":
        d = torch.as_tensor(draws, dtype=torch.float64).flatten()
        if len(d) < 2 or not torch.isfinite(d).all():
            raise ValueError(f"a control needs >= 2 finite draws (got {d.tolist()}): draw 20 or more.")
        return cls(d)

    @property
    def mean(self) -> float:
        return float(self.draws.mean())

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """The central ``level`` range of the draws (2.5-97.5 % by default)."""
        _check_level(level)
        a = (1.0 - level) / 2
        lo, hi = torch.quantile(self.draws, torch.tensor([a, 1 - a], dtype=torch.float64)).tolist()
        return lo, hi

    def percentile(self, x: float) -> float:
        """The % of draws strictly below ``x`` (ties count half)."""
        below = (self.draws < x).double().sum() + 0.5 * (self.draws == x).double().sum()
        return 100.0 * float(below) / len(self.draws)


@dataclass(frozen=True)
class Verdict:
    """Whether ``effect`` agrees with ``expect`` beyond the control (or the null ``null``)."""

    effect: Interval
    expect: Expect
    agrees: bool
    control: Control | None = None
    null: float | None = None

    @property
    def percentile(self) -> float:
        """The effect's percentile among the control's draws (NaN without a control)."""
        return self.control.percentile(self.effect.value) if self.control is not None else math.nan

    def __str__(self) -> str:
        against = (
            f"control {self.control.mean:.3g} [{self.control.interval()[0]:.3g}, {self.control.interval()[1]:.3g}], "
            f"effect at percentile {self.percentile:.0f}"
            if self.control is not None
            else f"null {self.null:.3g}"
        )
        return f"{self.effect} vs {against}: {'agrees' if self.agrees else 'does not agree'}"


def verdict(
    effect: Interval, control: Control | None = None, expect: Expect = "greater", null: float | None = None
) -> Verdict:
    """Agrees only when the effect's whole interval lies beyond the control's central 95 % range
    (``expect="greater"``: ``effect.lo > control hi``; ``"less"``: ``effect.hi < control lo``), or,
    without a control, beyond ``null``.

    Example::

        verdict(bootstrap(drops), Control.of(random_drops), expect="greater").agrees
        verdict(bootstrap(text_minus_visual), null=0.0)             # a paired difference above zero
    """
    if expect not in ("greater", "less"):
        raise ValueError(f"expect={expect!r}: give 'greater' or 'less' (the direction the papers report).")
    if (control is None) == (null is None):
        raise ValueError("verdict: give exactly one of control= (random draws) or null= (a fixed value).")
    if control is not None:
        lo, hi = control.interval(effect.level)
    else:
        lo = hi = float(null)  # type: ignore[arg-type]
    agrees = effect.lo > hi if expect == "greater" else effect.hi < lo
    return Verdict(effect, expect, agrees, control, null)
