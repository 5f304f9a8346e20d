"""Intervention specs: JSON round trip and composition, as properties (hypothesis)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from hooks_mm import After, Image, Last, NonPad, Positions, Selector, Special, Text
from hooks_mm.interventions import AttentionKnockout, Intervention, NeuronAblation, Patch, Skip, Steer, compose

leaf = st.one_of(
    st.builds(Image, st.none() | st.integers(0, 3), st.none() | st.integers(0, 2), st.booleans()),
    st.just(Text()),
    st.just(Last()),
    st.just(NonPad()),
    st.just(Special()),
    st.builds(Positions, st.lists(st.integers(-8, 8), min_size=1, max_size=4)),
)
selectors = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.builds(lambda a, b: a | b, inner, inner),
        st.builds(lambda a, b: a & b, inner, inner),
        st.builds(lambda a: ~a, inner),
        st.builds(After, inner),
    ),
    max_leaves=6,
)
layers = st.none() | st.integers(0, 5) | st.lists(st.integers(0, 5), min_size=1, max_size=4)
floats = st.floats(-10, 10, allow_nan=False)
interventions = st.one_of(
    st.builds(
        NeuronAblation,
        layers,
        st.none() | st.lists(st.integers(0, 100), min_size=1, max_size=5),
        selectors,
        st.sampled_from(["zero", "scale", "set", "resample"]),
        floats,
    ),
    st.builds(Steer, layers, st.lists(floats, min_size=1, max_size=6), selectors, floats),
    st.builds(AttentionKnockout, layers, selectors, selectors, st.none() | st.lists(st.integers(0, 3), max_size=3)),
    st.builds(Skip, layers, st.sampled_from(["mlp", "attn", "block"]), selectors),
    st.builds(
        Patch,
        layers,
        st.sampled_from(["clean", "other"]),
        st.sampled_from(["resid_pre", "resid_post", "attn_out", "mlp_out"]),
        selectors,
        st.none() | selectors,
        st.sampled_from(["same", "order", "grid"]),
    ),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(interventions, min_size=1, max_size=4))
def test_json_round_trip(items: list[Intervention]) -> None:
    spec = compose(items) if len(items) > 1 else items[0]
    again = Intervention.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.to_dict() == spec.to_dict()


@settings(max_examples=100, deadline=None)
@given(interventions, interventions, interventions)
def test_composition_is_associative_and_flat(a: Intervention, b: Intervention, c: Intervention) -> None:
    assert (a + b) + c == a + (b + c) == compose([a, b, c]) == compose([a + b, c])
    assert (a + b + c).items == [a, b, c]


@settings(max_examples=100, deadline=None)
@given(selectors)
def test_selector_round_trip(sel: Selector) -> None:
    assert Selector.from_dict(json.loads(json.dumps(sel.to_dict()))) == sel


def test_layer_ranges_are_lists() -> None:
    assert Steer(range(2, 5), [1.0]).layers == [2, 3, 4]
    assert Intervention.from_dict(json.loads(json.dumps(Skip(range(0, 8, 2)).to_dict()))) == Skip([0, 2, 4, 6])
