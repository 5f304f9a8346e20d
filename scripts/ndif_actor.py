"""An NDIF model actor that runs on CPU (for the loopback test stack, scripts/ndif-stack.sh).

ndif 0.1.2's stock actor calls ``torch.cuda.set_device/synchronize`` and checks that the
weights sit on a GPU. This one loads the model with nnsight's own loader on the CPU and
leaves everything else (queueing, deserialising, running the block, responding) to
``BaseModelDeployment``. The controller is pointed at it with
``NDIF_DEFAULT_MODEL_ACTOR_CLASS=hooks_mm.remote.ndif_actor.CpuModelActor``.

Only importable where ``ndif`` and ``ray`` are installed (the stack's own venv).
"""

from __future__ import annotations

import gc

import ray
from ndif.services.ray.deployments.modeling.base import BaseModelDeployment
from nnsight.modeling.huggingface import HuggingFaceModel


class CpuModelDeployment(BaseModelDeployment):
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


CpuModelActor = ray.remote(num_cpus=1, max_restarts=-1)(CpuModelDeployment)
