"""The sweep core, shared by every backend: the loop, the result table and the checkpoint store.

A backend (:class:`SweepBackend`) turns configs into metric values: the local hooks
backend (:class:`hooks_mm.sweep.local.HooksSweep`) and the nnsight / NDIF backend
(:class:`hooks_mm.remote.sweep.NNsightSweep`). :func:`run_sweep` validates, resumes from a
checkpoint, runs what is left, saves after every chunk (and on Ctrl-C or a fault), and
builds one table.

Example::

    result = run_sweep(HooksSweep(batch_size=64), model, inputs, configs, metric, checkpoint="s.pt")
    result.table.nsmallest(10, "delta")
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from hooks_mm.interventions import Intervention, NeuronAblation

if TYPE_CHECKING:
    from hooks_mm.model import Batch, HookedMLLM

CLEAN = "__clean__"  # the key of the clean run's value
SAVE = None  # what a backend yields when the finished values so far should be saved
Job = tuple[int, "Intervention | None"]  # (config index, spec); index -1 and spec None: the clean run


@dataclass
class SweepResult:
    """``table``: one row per config; ``values`` [n_configs, *metric shape]; ``clean`` metric."""

    table: pd.DataFrame
    values: Tensor
    clean: Tensor
    meta: dict[str, Any] = field(default_factory=dict)


class SweepBackend(Protocol):
    """Turns configs into metric values on one batch."""

    def start(
        self, model: HookedMLLM, batch: Batch, metric: Callable[[Tensor], Tensor], sources: dict[str, Any] | None
    ) -> bytes:
        """Check everything, before anything runs; returns what the values depend on besides
        the configs and the batch (the model's identity, ...), for the checkpoint."""

    def run(self, jobs: list[Job]) -> Iterator[tuple[int, Tensor] | None]:
        """Yield ``(index, value)`` for each finished job and :data:`SAVE` at chunk ends."""

    def meta(self) -> dict[str, Any]:
        """What the run cost (counts, requests, bytes ...), for ``SweepResult.meta``."""


def metric_value(metric: Callable[[Tensor], Tensor], logits: Tensor, shape: torch.Size | None) -> Tensor:
    """``metric(logits)`` as a CPU float tensor, checked: a scalar or a 1-D vector, of ``shape``."""
    v = torch.as_tensor(metric(logits)).detach().float().cpu()
    if v.dim() > 1:
        raise ValueError(
            f"the metric returned shape {tuple(v.shape)}: it must return a scalar or a 1-D vector "
            "(e.g. one value per answer), reduced over the batch and positions."
        )
    if shape is not None and v.shape != shape:
        raise ValueError(
            f"the metric returned shape {tuple(v.shape)} for one config and {tuple(shape)} for the clean run."
        )
    return v


def config_key(spec: Intervention) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)


def describe(spec: Intervention) -> dict[str, Any]:
    """Table columns for one config."""
    d: dict[str, Any] = {"type": type(spec).__name__}
    if isinstance(spec, NeuronAblation):
        layers = spec.layers
        d["layer"] = layers if isinstance(layers, int) else (layers[0] if layers and len(layers) == 1 else str(layers))
        n = spec.neurons
        d["neuron"] = n[0] if n is not None and len(n) == 1 else -1
        d["n_neurons"] = len(n) if n is not None else -1
        d["neurons"] = "all" if n is None else ",".join(map(str, n)) if len(n) <= 8 else f"{n[0]}..{n[-1]} ({len(n)})"
        d["positions"] = repr(spec.positions)
        d["mode"] = spec.mode
    else:
        d["spec"] = json.dumps(spec.to_dict())[:200]
    return d


def make_result(configs: Sequence[Intervention], done: dict[str, Tensor], meta: dict[str, Any]) -> SweepResult:
    """The table of finished values ``done`` (keyed by :func:`config_key`, the clean run by :data:`CLEAN`)."""
    clean = torch.as_tensor(done[CLEAN])
    values = torch.stack([torch.as_tensor(done[config_key(c)]).reshape(clean.shape) for c in configs])
    rows = []
    for c, v in zip(configs, values):
        row = describe(c)
        if v.dim() == 0:
            row["value"], row["delta"] = float(v), float(v - clean)
        else:
            row.update({f"value_{j}": float(x) for j, x in enumerate(v)})
        rows.append(row)
    return SweepResult(pd.DataFrame(rows), values, clean, meta)


class Checkpoint:
    """Finished values on disk, valid only for the same model, inputs and metric (``fingerprint``)."""

    def __init__(self, path: str | None, fingerprint: str):
        self.path, self.fingerprint = path, fingerprint

    def load(self) -> dict[str, Tensor]:
        if self.path is None or not os.path.exists(self.path):
            return {}
        data = torch.load(self.path, weights_only=True)
        if data.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"checkpoint {self.path} was written for another model, inputs or metric: delete it, "
                "or pass another checkpoint path."
            )
        return dict(zip(data["keys"], data["values"]))

    def save(self, done: dict[str, Tensor]) -> None:
        if self.path is None:
            return
        torch.save(
            {"fingerprint": self.fingerprint, "keys": list(done), "values": list(done.values())}, f"{self.path}.tmp"
        )
        os.replace(f"{self.path}.tmp", self.path)


def fingerprint(identity: bytes, batch: Batch) -> str:
    """What a checkpoint's values depend on besides the configs: the backend's ``identity``
    (model, metric) and the inputs."""
    h = hashlib.sha256(identity)
    for k in sorted(batch.inputs):
        v = batch.inputs[k]
        if torch.is_tensor(v):
            h.update(k.encode() + v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def run_sweep(
    backend: SweepBackend,
    model: HookedMLLM,
    inputs: Any,
    configs: Sequence[Intervention],
    metric: Callable[[Tensor], Tensor],
    *,
    checkpoint: str | None = None,
    progress: bool = True,
    sources: dict[str, Any] | None = None,
) -> SweepResult:
    """Run every config on ``inputs`` through ``backend``; a table of ``metric`` per config.

    ``checkpoint``: a file where finished configs are saved after every chunk (and when the
    sweep stops on Ctrl-C or a fault), so calling again with the same file resumes.
    """
    configs = list(configs)
    if not configs:
        raise ValueError(
            "sweep got an empty config list: pass intervention specs, e.g. single_neurons(model, layers=0)."
        )
    t0 = time.perf_counter()
    batch = model.prepare(inputs)
    store = Checkpoint(checkpoint, fingerprint(backend.start(model, batch, metric, sources), batch))
    keys = [config_key(c) for c in configs]
    done = store.load()
    todo = [i for i, k in enumerate(keys) if k not in done]
    jobs: list[Job] = ([(-1, None)] if CLEAN not in done else []) + [(i, configs[i]) for i in todo]
    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), disable=not progress, desc="sweep", unit="cfg")
    try:
        for item in backend.run(jobs):
            if item is SAVE:
                store.save(done)
                continue
            i, value = item
            done[keys[i] if i >= 0 else CLEAN] = value
            bar.update(int(i >= 0))
        store.save(done)
    except KeyboardInterrupt:
        store.save(done)
        raise KeyboardInterrupt(f"sweep interrupted after {_finished(done, keys, checkpoint)}") from None
    except Exception as e:
        store.save(done)
        if getattr(e, "resumable", False):  # a fault the backend could not retry away
            e.partial = {k: done[k] for k in keys if k in done}  # type: ignore[attr-defined]
            e.args = (f"{e}; {_finished(done, keys, checkpoint)}",)
        raise
    finally:
        bar.close()
    meta = {
        "seconds": time.perf_counter() - t0,
        "configs": len(configs),
        "resumed": len(configs) - len(todo),
        **backend.meta(),
    }
    return make_result(configs, done, meta)


def _finished(done: dict[str, Tensor], keys: list[str], checkpoint: str | None) -> str:
    n = sum(k in done for k in keys)
    where = (
        f"; saved to {checkpoint!r}: call again with checkpoint={checkpoint!r} to resume"
        if checkpoint
        else "; pass checkpoint=PATH to make sweeps resumable (finished configs are in this error's .partial)"
    )
    return f"{n}/{len(keys)} configs finished{where}"
