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


def test_a_bank_with_a_centroid_per_distinct_state_warns_and_the_curve_marks_it(toy: HookedMLLM) -> None:
    """At block 0's input the text after the image is the token embeddings: few distinct states, so a bank
    of that many centroids erases nothing; the bank says so, and the curve's row names it."""
    import warnings

    from hooks_mm import After, Image
    from hooks_mm.analysis.findings import batches
    from hooks_mm.interventions import CentroidBank
    from hooks_mm.tasks.shapes import make_qa

    fit = batches(toy, make_qa(48, "train", 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = CentroidBank.fit(toy, fit, layer=0, positions=After(Image()), k=1)
    distinct = probe.meta["n_distinct"]
    assert 1 < distinct < 200
    with pytest.warns(UserWarning, match=f"{distinct} distinct states .* erases nothing"):
        CentroidBank.fit(toy, fit, layer=0, positions=After(Image()), k=distinct)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one fewer centroid: something is erased, no warning
        CentroidBank.fit(toy, fit, layer=0, positions=After(Image()), k=distinct - 1)
    t = erasure_by_depth(toy, n=12, ks=(distinct, 1))
    first = t[(t.site == "blocks.0.hook_resid_pre") & (t.k == distinct)].iloc[0]
    assert "text" in first.erases_nothing.split(",") and first.text_cost == 0
    assert (t[t.k == 1].erases_nothing == "").all()
