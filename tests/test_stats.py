"""hooks_mm.analysis.stats: bootstrap intervals against the normal-theory interval and their coverage,
control percentiles by hand, verdicts at the boundary, and misuse refused."""

from __future__ import annotations

import math

import pytest
import torch

from hooks_mm.analysis.stats import Control, Interval, bootstrap, verdict


def test_bootstrap_matches_the_normal_interval_on_a_large_sample() -> None:
    x = torch.randn(4000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 + 3
    ci = bootstrap(x)
    half = 1.959964 * float(x.std()) / math.sqrt(len(x))
    assert ci.value == pytest.approx(float(x.mean()))
    assert ci.lo == pytest.approx(float(x.mean()) - half, abs=0.15 * half)
    assert ci.hi == pytest.approx(float(x.mean()) + half, abs=0.15 * half)
    assert (ci.n, ci.level) == (4000, 0.95)


def test_bootstrap_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    gen = torch.Generator().manual_seed(0)
    hits = 0
    for t in range(200):
        ci = bootstrap(torch.randn(60, generator=gen, dtype=torch.float64), n_boot=400, seed=t)
        hits += ci.lo <= 0.0 <= ci.hi
    assert 0.88 <= hits / 200 <= 0.99


def test_paired_rows_are_resampled_together_and_seeded() -> None:
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(300, generator=gen, dtype=torch.float64) + 1
    pairs = torch.stack([a, 2 * a], 1)  # the ratio is exactly 2 in every resample only if rows stay paired
    ratio = bootstrap(pairs, statistic=lambda v: v[:, 1].sum() / v[:, 0].sum())
    assert ratio.lo == pytest.approx(2.0) and ratio.hi == pytest.approx(2.0)
    assert bootstrap(a, seed=5) == bootstrap(a, seed=5) and bootstrap(a, seed=5) != bootstrap(a, seed=6)


def test_control_percentile_and_interval_by_hand() -> None:
    c = Control.of([1.0, 2.0, 3.0, 4.0])
    assert c.percentile(2.5) == 50.0 and c.percentile(2.0) == 37.5 and c.percentile(0.0) == 0.0
    assert c.mean == 2.5
    assert c.interval(0.5) == pytest.approx((1.75, 3.25))  # torch.quantile's linear interpolation


def _only_the_sample_itself(v: torch.Tensor) -> float:
    return 1.0 if torch.equal(v.sort().values, torch.arange(1.0, 5.0, dtype=v.dtype)) else math.nan


def _iv(lo: float, hi: float) -> Interval:
    return Interval((lo + hi) / 2, lo, hi, 0.95, 10, 2000)


def test_verdict_needs_the_whole_interval_beyond_the_control() -> None:
    control = Control.of(torch.linspace(-1, 1, 41))  # 2.5-97.5 %: [-0.95, 0.95]
    assert verdict(_iv(0.96, 2.0), control).agrees
    assert not verdict(_iv(0.90, 2.0), control).agrees  # overlaps the control's range
    assert verdict(_iv(-3.0, -0.96), control, expect="less").agrees
    assert not verdict(_iv(-3.0, -0.96), control, expect="greater").agrees
    assert verdict(_iv(0.01, 0.2), null=0.0).agrees and not verdict(_iv(-0.01, 0.2), null=0.0).agrees
    v = verdict(_iv(0.96, 2.0), control)
    assert v.percentile == 100.0 and "agrees" in str(v) and "percentile 100" in str(v)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: bootstrap(torch.tensor(1.0)), "one row per example"),
        (lambda: bootstrap([1.0]), "at least 2 examples"),
        (lambda: bootstrap([1.0, float("nan")]), "NaN"),
        (lambda: bootstrap([1.0, 2.0], n_boot=10), "n_boot"),
        (lambda: bootstrap([1.0, 2.0], level=95), "level"),
        (lambda: bootstrap(torch.ones(5, 2)), "one number"),
        (lambda: bootstrap([0.0, 0.0, 1.0], statistic=lambda v: v.sum() / 0.0), "whole sample"),
        (lambda: bootstrap([1.0, 2.0, 3.0, 4.0], statistic=_only_the_sample_itself), "most resamples"),
        (lambda: Control.of([1.0]), "2 finite draws"),
        (lambda: verdict(_iv(0, 1)), "exactly one"),
        (lambda: verdict(_iv(0, 1), Control.of([0, 1]), null=0.0), "exactly one"),
        (lambda: verdict(_iv(0, 1), null=0.0, expect="more"), "expect"),
    ],
)
def test_misuse_is_refused_with_the_fix(call, match) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        call()
