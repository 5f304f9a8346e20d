"""Exact batched ablation sweeps, attribution patching, metrics and config generators.

Example::

    from hooks_mm.sweep import sweep, single_neurons, answer_logprob
    result = sweep(model, inputs, single_neurons(model, layers=[0, 1]), answer_logprob(model, inputs))
    result.table.nsmallest(5, "delta")
"""

from hooks_mm.sweep.attribution import Attribution, attribution_patching
from hooks_mm.sweep.configs import neuron_groups, position_groups, single_neurons
from hooks_mm.sweep.core import CheckpointError, SweepBackend, SweepResult, run_sweep
from hooks_mm.sweep.engine import HooksSweep, sweep
from hooks_mm.sweep.metrics import PositionMetric, answer_logprob, kl_to_clean, logit_diff, modality_nll

__all__ = [
    "Attribution",
    "CheckpointError",
    "HooksSweep",
    "PositionMetric",
    "SweepBackend",
    "SweepResult",
    "answer_logprob",
    "attribution_patching",
    "kl_to_clean",
    "logit_diff",
    "modality_nll",
    "neuron_groups",
    "position_groups",
    "run_sweep",
    "single_neurons",
    "sweep",
]
