"""Configuration lists for sweeps: every single neuron, neuron groups, position groups.

Example::

    configs = single_neurons(model, layers=[0, 1], positions=Image())      # d_mlp per layer
    configs = neuron_groups(model, layers=2, group_size=16)                 # contiguous blocks
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from hooks_mm.interventions import NeuronAblation
from hooks_mm.selectors import NonPad, Selector

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM


def _d_mlp(model: "HookedMLLM") -> int:
    if not model.cfg.d_mlp:
        raise ValueError(f"{model.cfg.architecture} has no MLP width (cfg.d_mlp): pass neurons= explicitly.")
    return model.cfg.d_mlp


def _layers(model: "HookedMLLM", layers: int | Sequence[int] | None) -> list[int]:
    n = model.cfg.n_layers
    return list(range(n)) if layers is None else [layers] if isinstance(layers, int) else list(layers)


def single_neurons(
    model: "HookedMLLM",
    layers: int | Sequence[int] | None = None,
    positions: Selector | None = None,
    mode: str = "zero",
    neurons: Sequence[int] | None = None,
    **kwargs: Any,
) -> list[NeuronAblation]:
    """One ablation per neuron (all of ``d_mlp`` unless ``neurons``) of each layer."""
    positions = positions or NonPad()
    units = list(range(_d_mlp(model))) if neurons is None else list(neurons)
    return [NeuronAblation(l, [j], positions, mode, **kwargs) for l in _layers(model, layers) for j in units]


def neuron_groups(
    model: "HookedMLLM",
    layers: int | Sequence[int] | None = None,
    group_size: int = 16,
    positions: Selector | None = None,
    mode: str = "zero",
    **kwargs: Any,
) -> list[NeuronAblation]:
    """Contiguous blocks of ``group_size`` neurons in each layer."""
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size={group_size!r}: give a positive number of neurons per group.")
    positions = positions or NonPad()
    d = _d_mlp(model)
    return [
        NeuronAblation(l, list(range(s, min(s + group_size, d))), positions, mode, **kwargs)
        for l in _layers(model, layers)
        for s in range(0, d, group_size)
    ]


def position_groups(
    model: "HookedMLLM",
    groups: dict[str, Selector],
    layers: int | Sequence[int] | None = None,
    neurons: Sequence[int] | None = None,
    mode: str = "zero",
    **kwargs: Any,
) -> list[NeuronAblation]:
    """Ablate ``neurons`` (default all) at each group of positions, in each layer.

    ``groups``: a dict of name -> selector, e.g. ``{"image": Image(), "text": Text()}``.
    """
    if not isinstance(groups, dict):
        raise TypeError(
            f"position_groups takes a dict of name -> selector, got a {type(groups).__name__}: "
            'e.g. {"image": Image(), "text": Text()}.'
        )
    return [
        NeuronAblation(l, None if neurons is None else list(neurons), sel, mode, **kwargs)
        for l in _layers(model, layers)
        for sel in groups.values()
    ]
