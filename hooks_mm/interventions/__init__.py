"""Composable, serialisable interventions on the HookedMLLM hook interface.

Example::

    from hooks_mm.interventions import NeuronAblation, AttentionKnockout, Steer
    spec = NeuronAblation(layers=2, neurons=[1, 5], positions=Image()) + AttentionKnockout(
        layers=[3, 4], queries=Last(), keys=Image())
    logits = model.run_with_interventions(inputs, spec)
    with model.interventions(spec, inputs):
        logits = model(inputs)
"""

from hooks_mm.interventions.ablation import NeuronAblation, NeuronMeans
from hooks_mm.interventions.base import Compose, Context, Intervention, compile_hooks, compose
from hooks_mm.interventions.centroid import CentroidBank, CentroidReplacement
from hooks_mm.interventions.edits import AttentionKnockout, Skip, Steer, layer_window
from hooks_mm.interventions.patching import Patch, patching_sweep

__all__ = [
    "AttentionKnockout",
    "CentroidBank",
    "CentroidReplacement",
    "Compose",
    "Context",
    "Intervention",
    "NeuronAblation",
    "NeuronMeans",
    "Patch",
    "Skip",
    "Steer",
    "compile_hooks",
    "compose",
    "layer_window",
    "patching_sweep",
]
