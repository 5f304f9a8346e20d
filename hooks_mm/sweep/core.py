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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from hooks_mm.interventions import Intervention, NeuronAblation
from hooks_mm.sweep.identity import held_state, metric_identity

if TYPE_CHECKING:
    from hooks_mm.model import Batch, HookedMLLM

CLEAN = "__clean__"  # the key of the clean run's value
SAVE = None  # what a backend yields when the finished values so far should be saved
Job = tuple[int, "Intervention | None"]  # (config index, spec); index -1 and spec None: the clean run


@dataclass
class SweepResult:
    """``table``: one row per config (``value`` and ``delta`` = value - clean for a scalar metric;
    ``value_j`` and ``delta_j`` per entry of a vector metric); ``values`` [n_configs, *metric shape]
    in config order; ``clean`` metric."""

    table: pd.DataFrame
    values: Tensor
    clean: Tensor
    meta: dict[str, Any] = field(default_factory=dict)


class SweepBackend(Protocol):
    """Turns configs into metric values on one batch."""

    def start(
        self, model: HookedMLLM, batch: Batch, metric: Callable[[Tensor], Tensor], sources: dict[str, Any] | None
    ) -> bytes:
        """Check everything, before anything runs (the metric on the clean run included); returns
        the identity of the model whose values it computes (a digest of the weights it runs, or
        the deployed model's key and revision), for the checkpoint. The inputs, source runs and
        metric identity are added by :func:`run_sweep`."""

    def run(self, jobs: list[Job]) -> Iterator[tuple[int, Tensor] | None]:
        """Yield ``(index, value)`` for each finished job and :data:`SAVE` at chunk ends."""

    def meta(self) -> dict[str, Any]:
        """What the run cost (counts, requests, bytes ...), for ``SweepResult.meta``."""


def metric_value(metric: Callable[[Tensor], Tensor], logits: Tensor, shape: torch.Size | None) -> Tensor:
    """``metric(logits)`` as a CPU float tensor, checked by :func:`check_value`."""
    return check_value(metric(logits), metric, shape)


def check_value(out: Any, metric: Any, shape: torch.Size | None) -> Tensor:
    """A metric's value as a CPU float tensor: a scalar or a 1-D vector, of ``shape`` (``None``:
    the clean run, whose value sets the shape every config must give); a clear error otherwise."""
    name = getattr(metric, "__qualname__", None) or repr(metric)
    try:
        v = torch.as_tensor(out).detach().float().cpu()
    except (TypeError, RuntimeError, ValueError) as e:
        raise TypeError(
            f"the metric {name} returned {type(out).__name__} {str(out)[:60]!r}: return a tensor or a "
            "number, a scalar or a 1-D vector (e.g. `return logits[:, -1].log_softmax(-1)[:, tok].mean()`)."
        ) from e
    if v.dim() > 1:
        raise ValueError(
            f"the metric {name} returned shape {tuple(v.shape)}: it must return a scalar or a 1-D vector "
            "(e.g. one value per answer): reduce it over the batch and positions."
        )
    if shape is not None and v.shape != shape:
        raise ValueError(
            f"the metric {name} returned shape {tuple(v.shape)} for one config and {tuple(shape)} for the clean run: "
            "it must return the same shape for every run."
        )
    return v


def check_configs(configs: Any) -> list[Intervention]:
    """``configs`` as a list of specs; a clear error for anything else (checked before anything runs)."""
    if isinstance(configs, Intervention):
        raise TypeError(f"sweep takes a list of configs, got one {type(configs).__name__}: pass [spec].")
    if isinstance(configs, (str, bytes, dict)) or not isinstance(configs, Iterable):
        raise TypeError(
            f"sweep configs must be a list of intervention specs, got a {type(configs).__name__}: pass e.g. "
            "single_neurons(model, layers=0), or [Intervention.from_dict(d) for d in dicts]."
        )
    out = list(configs)
    for i, c in enumerate(out):
        if not isinstance(c, Intervention):
            fix = "Intervention.from_dict(d)" if isinstance(c, dict) else "an Intervention (NeuronAblation(...), ...)"
            raise TypeError(f"sweep config {i} is a {type(c).__name__} ({str(c)[:80]}), not a spec: pass {fix}.")
    if not out:
        raise ValueError(
            "sweep got an empty config list: pass intervention specs, e.g. single_neurons(model, layers=0)."
        )
    return out


def check_edits(spec: Intervention, edits: list[Any], index: int) -> list[Any]:
    """A config's edits; an error when it changes nothing (its value would be the clean one, silently)."""
    if not edits:
        raise ValueError(
            f"sweep config {index} ({json.dumps(spec.to_dict())[:120]}) edits nothing on this model (empty layers?): "
            "every config must change the run; drop it or give it layers / neurons."
        )
    return edits


def config_key(spec: Intervention, cache: dict[int, str] | None = None) -> str:
    """A config's key in results and checkpoints: its serialised form, plus a digest of the
    objects it holds by reference (:func:`~hooks_mm.sweep.identity.held_state`)."""
    held = held_state(spec, cache)
    return json.dumps(spec.to_dict(), sort_keys=True) + (f"|{held}" if held else "")


def config_keys(configs: Sequence[Intervention]) -> list[str]:
    cache: dict[int, str] = {}
    return [config_key(c, cache) for c in configs]


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
    values = torch.stack([torch.as_tensor(done[k]).reshape(clean.shape) for k in config_keys(configs)])
    rows = []
    for c, v in zip(configs, values):
        row = describe(c)
        if v.dim() == 0:
            row["value"], row["delta"] = float(v), float(v - clean)
        else:
            row.update({f"value_{j}": float(x) for j, x in enumerate(v)})
            row.update({f"delta_{j}": float(x) for j, x in enumerate(v - clean)})
        rows.append(row)
    return SweepResult(pd.DataFrame(rows), values, clean, meta)


class CheckpointError(ValueError):
    """A checkpoint file that cannot serve this sweep (unreadable, or written for another one)."""


class Checkpoint:
    """Finished values on disk, valid only for the same model, inputs and metric.

    ``Checkpoint(path)`` checks the path and reads the file (before anything runs);
    :meth:`load` compares what the values depend on besides the configs (``parts``, each a
    digest: ``"model"``, ``"inputs"``, ``"metric"``, ``"sources"``) with those the file was
    written for, and refuses another sweep's file naming the parts that differ.
    """

    def __init__(self, path: str | None):
        self.path, self.parts, self.fingerprint = path, {}, ""
        self.data: dict[str, Any] | None = None
        if path is None:
            return
        if os.path.isdir(path):
            raise CheckpointError(f"checkpoint {path} is a directory: pass a file path, e.g. {path}/sweep.pt.")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise CheckpointError(
                f"checkpoint {path}: its directory {parent} does not exist: create it, or pass another path."
            )
        if not os.path.exists(path):
            return
        try:
            data = torch.load(path, weights_only=True)
        except Exception as e:  # noqa: BLE001 - empty, truncated, not a torch file, unreadable
            kind = "is empty" if os.path.getsize(path) == 0 else "is corrupt or truncated (not a sweep checkpoint)"
            raise self._fail(f"{kind} ({type(e).__name__} when reading it)") from e
        if not isinstance(data, dict) or not {"fingerprint", "keys", "values"} <= set(data):
            raise self._fail("is not a sweep checkpoint")
        if (
            not isinstance(data["keys"], list)
            or not isinstance(data["values"], list)
            or len(data["keys"]) != len(data["values"])
        ):
            raise self._fail("is corrupt (its keys and values do not pair up)")
        self.data = data

    def _fail(self, problem: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {self.path} {problem}: delete it, or pass another checkpoint path.")

    def load(self, parts: dict[str, str]) -> dict[str, Tensor]:
        """The finished values of the file, if it was written for ``parts``; else an error."""
        self.parts = parts
        self.fingerprint = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
        data = self.data
        if data is None:
            return {}
        if data["fingerprint"] != self.fingerprint:
            old = data.get("parts") or {}
            differ = [k for k in parts if k in old and old[k] != parts[k]]
            which = f" (here the {' and the '.join(differ)} differ{'s' if len(differ) == 1 else ''})" if differ else ""
            raise self._fail(f"was written for another model, inputs or metric{which}")
        return dict(zip(data["keys"], data["values"]))

    def save(self, done: dict[str, Tensor]) -> None:
        if self.path is None:
            return
        data = {"fingerprint": self.fingerprint, "parts": self.parts, "keys": list(done), "values": list(done.values())}
        torch.save(data, f"{self.path}.tmp")
        os.replace(f"{self.path}.tmp", self.path)


def _inputs_digest(batch: Batch) -> str:
    h = hashlib.sha256()
    for k in sorted(batch.inputs):
        v = batch.inputs[k]
        if torch.is_tensor(v):
            raw = v.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # bf16 too (numpy has none)
            h.update(f"{k}{tuple(v.shape)}{v.dtype}".encode() + raw.numpy().tobytes())
    return h.hexdigest()


def fingerprint(
    model_identity: bytes, batch: Batch, metric: Callable[[Tensor], Tensor], sources: dict[str, Any] | None, model: Any
) -> dict[str, str]:
    """What a checkpoint's values depend on besides the configs, each part a digest: the backend's
    model identity (weights or deployed model key), the inputs, the metric
    (:func:`~hooks_mm.sweep.identity.metric_identity`) and the source runs' inputs."""
    src = hashlib.sha256()
    for name in sorted(sources or {}):
        src.update(name.encode() + _inputs_digest(model.prepare(sources[name])).encode())  # type: ignore[index]
    return {
        "model": hashlib.sha256(model_identity).hexdigest(),
        "inputs": _inputs_digest(batch),
        "metric": metric_identity(metric),
        "sources": src.hexdigest(),
    }


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
    sweep stops on Ctrl-C or a fault), so calling again with the same file resumes. The file
    serves only the same model weights, inputs, source runs and metric: another sweep's file,
    or an empty or corrupt one, raises :class:`CheckpointError` naming what differs.
    ``configs``: a list of specs (``Intervention.from_dict(d)`` for dicts); ``metric(logits)``
    returns a scalar or a 1-D vector, checked on the clean run before any config runs.
    """
    configs = check_configs(configs)
    if not callable(metric):
        raise TypeError(
            f"metric must be a function of logits, got a {type(metric).__name__}: e.g. answer_logprob(model, inputs)."
        )
    t0 = time.perf_counter()
    store = Checkpoint(checkpoint)  # a bad path or file: said before anything runs
    batch = model.prepare(inputs)
    identity = backend.start(model, batch, metric, sources)
    done = store.load(fingerprint(identity, batch, metric, sources, model) if checkpoint else {})
    keys = config_keys(configs)
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
