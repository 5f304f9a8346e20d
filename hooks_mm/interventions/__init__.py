"""Composable, serialisable interventions on the HookedMLLM hook interface.

Each spec lives in a file of its own (its checks and its edits); what the edits do to an
activation is :mod:`hooks_mm.interventions.ops`, shared by every backend.

Example::

    from hooks_mm.interventions import NeuronAblation, AttentionKnockout, Steer
    spec = NeuronAblation(layers=2, neurons=[1, 5], positions=Image()) + AttentionKnockout(
        layers=[3, 4], queries=Last(), keys=Image())
    logits = model.run_with_interventions(inputs, spec)
    with model.interventions(spec, inputs):
        logits = model(inputs)
"""

from hooks_mm.interventions.ablation import NeuronAblation, NeuronMeans
from hooks_mm.interventions.base import Compose, Context, Edit, Intervention, compose, source_key
from hooks_mm.interventions.centroid import CentroidBank, CentroidReplacement
from hooks_mm.interventions.knockout import AttentionKnockout
from hooks_mm.interventions.patching import Patch, patching_sweep
from hooks_mm.interventions.skip import Skip, layer_window
from hooks_mm.interventions.steer import Steer

__all__ = [
    "AttentionKnockout",
    "CentroidBank",
    "CentroidReplacement",
    "Compose",
    "Context",
    "Edit",
    "Intervention",
    "NeuronAblation",
    "NeuronMeans",
    "Patch",
    "Skip",
    "Steer",
    "compose",
    "layer_window",
    "patching_sweep",
    "source_key",
]
