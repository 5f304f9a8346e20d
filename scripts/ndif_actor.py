"""An NDIF model actor that runs on CPU (for the loopback test stack, scripts/ndif-stack.sh).

ndif 0.1.2's stock actor calls ``torch.cuda.set_device/synchronize`` and checks that the
weights sit on a GPU. This one loads the model with nnsight's own loader on the CPU and
leaves everything else (queueing, deserialising, running the block, responding) to
``BaseModelDeployment``.

It serves both of ndif's execution paths, like ndif's ``SandboxModelActor`` (whose
``SandboxHost`` it reuses unchanged): a request marked ``trusted`` runs in this process; any
other request (a public NDIF's users: their key carries no ``trusted`` tag) runs its traced
block in a fresh runner process from a warm pool (``ndif.services.ray.sandbox``), with an
allow-listed environment, driving this actor's model over a Unix socket. The pool size is
``$NDIF_SANDBOX_POOL_SIZE`` (ndif's own variable; this stack's default is 2, ndif's 7: each
runner holds a python + torch + a meta model). The controller is pointed at it with
``NDIF_DEFAULT_MODEL_ACTOR_CLASS=ndif_actor.CpuModelActor``.

Only importable where ``ndif`` and ``ray`` are installed (the stack's own venv).
"""

from __future__ import annotations

import gc
import os
from typing import Any

import ray
from ndif.services.ray.deployments.modeling.base import BaseModelDeployment
from ndif.services.ray.sandbox.host import Pool, Sandbox, spawn
from ndif.services.ray.sandbox.model import SandboxModelDeployment
from nnsight.modeling.huggingface import HuggingFaceModel


class CpuBaseDeployment(BaseModelDeployment):
    """``BaseModelDeployment`` with CPU loading and a CUDA-free cleanup; never parked."""

    CACHEABLE = False

    def load_from_disk(self) -> HuggingFaceModel:
        model = HuggingFaceModel.from_model_key(self.model_key, dispatch=True, dtype=self.dtype_name, **self.kwargs)
        model._module.requires_grad_(False)
        return model

    def cleanup(self) -> None:
        self.kill_switch.clear()
        self.kill_reason = None
        self.execution_ident = None
        self.model.interleaver.cancel()
        gc.collect()


SPAWN_TIMEOUT = float(os.environ.get("NDIF_SANDBOX_SPAWN_TIMEOUT", "180"))


class PatientPool(Pool):
    """ndif's runner pool, waiting ``$NDIF_SANDBOX_SPAWN_TIMEOUT`` s (180) for a runner instead of 30.

    A runner imports torch and nnsight and builds a meta model before its socket opens; on a busy
    2-core test machine that takes longer than ndif's fixed 30 s, and a warm-up that times out kills
    the runner and leaves the pool empty (each request then waits 30 s and spawns one inline).
    """

    def _spawn(self) -> Sandbox:
        return spawn(
            python=self.python,
            quiet=self.quiet,
            peers=self.peers,
            model_key=self.model_key,
            trust_remote_code=self.trust_remote_code,
            timeout=SPAWN_TIMEOUT,
        )

    def acquire(self, timeout: float = SPAWN_TIMEOUT) -> Sandbox:
        return super().acquire(timeout)


class CpuModelDeployment(SandboxModelDeployment, CpuBaseDeployment):
    """Trusted requests in-process, the rest in a sandbox runner (ndif's ``SandboxModelDeployment``) on CPU.

    MRO: ``SandboxModelDeployment`` -> ``SandboxHost`` -> ``CpuBaseDeployment`` -> ``BaseModelDeployment``, so
    ``SandboxHost.cleanup`` discards the request's runner and then runs the CUDA-free cleanup above.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("pool_size", int(os.environ.get("NDIF_SANDBOX_POOL_SIZE", "2")))
        super().__init__(*args, **kwargs)

    def open_pool(self, pool_size: int | None = None, peers: int = 1) -> None:
        """``SandboxHost.open_pool`` with :class:`PatientPool`."""
        self.pool = PatientPool(
            size=2 if pool_size is None else pool_size,
            peers=peers,
            model_key=self.model_key,
            trust_remote_code=self.kwargs.get("trust_remote_code", False),
        )
        self.execution_sandbox = None


CpuModelActor = ray.remote(num_cpus=1, max_restarts=-1)(CpuModelDeployment)
