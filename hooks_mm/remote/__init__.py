"""nnsight backend: hooks_mm intervention specs as nnsight traces, in process or on NDIF.

- :class:`NNsightBackend` / :func:`load_nnsight`: compile specs (neuron ablation, centroid
  replacement, steering, patching, skipping, attention knockout) into nnsight trace code on
  the module paths of hooks_mm's adapter tables; run with ``remote=False``, ``"local"``,
  ``True`` or a host URL.
- :class:`NNsightSweep` / :func:`remote_sweep`: the sweep backend, in few requests that
  return only metric values.

Example::

    from hooks_mm.remote import remote_sweep
    result = remote_sweep(model, inputs, configs, metric, remote="http://127.0.0.1:8001")
"""

from hooks_mm.remote.backend import NNsightBackend, Stats, load_nnsight
from hooks_mm.remote.errors import (
    AuthenticationError,
    DeployError,
    ModelMismatchError,
    ModelNotDeployedError,
    NDIFError,
    RemoteExecutionError,
    RequestTooLargeError,
    ServerUnavailableError,
    VersionMismatchError,
)
from hooks_mm.remote.sweep import NNsightSweep, RemoteSweepJob, deployed_models, remote_sweep

__all__ = [
    "AuthenticationError",
    "DeployError",
    "ModelMismatchError",
    "ModelNotDeployedError",
    "NDIFError",
    "NNsightBackend",
    "NNsightSweep",
    "RemoteExecutionError",
    "RemoteSweepJob",
    "RequestTooLargeError",
    "ServerUnavailableError",
    "Stats",
    "VersionMismatchError",
    "deployed_models",
    "load_nnsight",
    "remote_sweep",
]
