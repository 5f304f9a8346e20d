"""The findings' curves (hooks_mm.analysis.findings.curves): each point equals the corresponding finding where
they meet, intervals hold their value, and the alpha = 0 control is exactly zero."""

from __future__ import annotations

import pytest

from hooks_mm import HookedMLLM
from hooks_mm.analysis.findings import alignment, erasure
from hooks_mm.analysis.findings.curves import alignment_by_layer, erasure_by_depth, tccd_by_alpha


@pytest.fixture(scope="module")
def toy() -> HookedMLLM:
    return HookedMLLM.from_pretrained("toy-llava")


def _intervals_hold(table, names) -> None:  # noqa: ANN001
    for name in names:
        assert ((table[f"{name}_lo"] <= table[name] + 1e-12) & (table[name] <= table[f"{name}_hi"] + 1e-12)).all()


def test_erasure_by_depth_meets_the_erasure_finding_at_the_protocol_depths(toy: HookedMLLM) -> None:
    t = erasure_by_depth(toy, n=12, ks=(8, 1))
    assert len(t) == toy.cfg.n_layers * 2 and set(t.k) == {8, 1}
    _intervals_hold(t, ("text_cost", "visual_cost", "gap"))
    assert (t.gap - (t.text_cost - t.visual_cost)).abs().max() < 1e-12
    f = erasure(toy, n=12, k=8)
    at = lambda layer: t[(t.site == f"blocks.{layer}.hook_resid_pre") & (t.k == 8)].iloc[0]  # noqa: E731
    assert at(int(f.details["text_layer"])).text_cost == pytest.approx(f.details["text_cost"], abs=1e-12)
    assert at(int(f.details["visual_layer"])).visual_cost == pytest.approx(f.details["visual_cost"], abs=1e-12)


def test_tccd_by_alpha_is_zero_at_alpha_zero(toy: HookedMLLM) -> None:
    t = tccd_by_alpha(toy, n=12, alphas=(0.0, 5.0), k=8)
    zero = t[t.alpha == 0.0].iloc[0]
    assert (zero.gain, zero.gain_lo, zero.gain_hi) == (0.0, 0.0, 0.0)
    _intervals_hold(t, ("gain",))


def test_alignment_by_layer_meets_the_alignment_finding_at_its_layer(toy: HookedMLLM) -> None:
    t = alignment_by_layer(toy, n=12)
    assert list(t.layer) == list(range(toy.cfg.n_layers))
    _intervals_hold(t, ("cross", "image_image", "text_text", "gap"))
    f = alignment(toy, n=12)
    row = t[t.layer == int(f.details["layer"])].iloc[0]
    assert row.gap == pytest.approx(f.verdict.effect.value, abs=1e-6)
    assert row.cross == pytest.approx(f.details["cos_image_text"], abs=1e-6)
