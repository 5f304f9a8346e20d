"""Remote sweeps: many intervention configs through nnsight, in few requests, metric values only.

Configs are packed as copies of the batch into one forward (``configs_per_trace`` copies,
each with its own edits on its own rows); up to ``max_configs_per_request`` configs go in
one request, as a session of such traces when there are several (source runs for patching
or resampling run once per request). The metric is reduced on the server, so a request
returns one value (or one vector) per config, never activations. The table has the format
of :func:`hooks_mm.sweep.sweep` (a :class:`~hooks_mm.sweep.SweepResult`).

Faults: transient failures (connection refused or reset, 502/503/504, timeouts) are retried
``retries`` times with exponential backoff; then the sweep stops with
:class:`~hooks_mm.remote.errors.ServerUnavailableError` whose ``partial`` holds every
finished config, also saved to ``checkpoint`` when given (calling again with the same file
resumes). A model not deployed, a refused API key, a client/server version mismatch, a
request over ``max_request_bytes`` and an exception inside the trace are not retried and
raise their own :mod:`hooks_mm.remote.errors` class.

Example::

    result = remote_sweep(model, inputs, single_neurons(model, layers=[0, 1]), answer_logprob(model, inputs),
                          remote="http://127.0.0.1:8001", max_configs_per_request=64)
    print(result.meta["requests"], result.meta["bytes_received"])
    result.table.nsmallest(5, "delta")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from hooks_mm.remote.backend import NNsightBackend, Remote, load_nnsight, poll
from hooks_mm.remote.errors import ModelNotDeployedError, NDIFError, ServerUnavailableError, is_transient
from hooks_mm.sweep.engine import SweepResult, config_key, describe
from hooks_mm.sweep.metrics import PositionMetric

if TYPE_CHECKING:
    from hooks_mm.interventions import Intervention
    from hooks_mm.model import HookedMLLM


def _reduce(metric: Callable[[Tensor], Tensor]) -> tuple[Tensor | None, Callable[[Tensor], Tensor]]:
    """(positions, fn) evaluated on the server for each config's logits."""
    if isinstance(metric, PositionMetric):
        return metric.positions, metric.at
    return None, metric


def backend_for(model: HookedMLLM | NNsightBackend, remote: Remote, **kwargs: Any) -> NNsightBackend:
    """An :class:`NNsightBackend` for ``model``: in process for ``False`` / ``"local"``, else keyed to its checkpoint."""
    if isinstance(model, NNsightBackend):
        return model
    if remote in (False, None, "local"):
        return NNsightBackend(model, **kwargs)
    path = getattr(model.hf_model.config, "_name_or_path", None) or getattr(model.hf_model, "name_or_path", None)
    if not path:
        raise ValueError("this model has no checkpoint name to address a server with: pass an NNsightBackend(model, load_nnsight(repo)).")
    return NNsightBackend(model, load_nnsight(path, processor=model.processor), **kwargs)


def deployed_models(host: str, timeout: float = 10.0) -> list[str]:
    """Model keys an NDIF server reports as deployed (``GET /status``)."""
    with urllib.request.urlopen(f"{host.rstrip('/')}/status", timeout=timeout) as r:
        status = json.loads(r.read().decode())
    # ndif's own /status keys a replica "<id>:<actor class>:<model key>"; NDIF's public one adds "model_key"
    return [v.get("model_key") or name for name, v in (status.get("deployments") or {}).items() if isinstance(v, dict)]


class RemoteSweepJob:
    """A sweep submitted without waiting (``blocking=False``): ``poll()``, ``done()``, ``result()``."""

    def __init__(self, finish: Callable[[dict[str, Tensor]], SweepResult], pending: list[tuple[Any, list[list[int]]]], done: dict[str, Tensor], keys: list[str]):
        self._finish, self._pending, self._done, self._keys = finish, pending, done, keys

    def poll(self) -> float:
        """Fetch finished requests; the fraction of configs done."""
        still = []
        for request, groups in self._pending:
            out = poll(request)
            if out is None:
                still.append((request, groups))
                continue
            for values, ids in zip(out, groups):
                for v, i in zip(torch.as_tensor(values), ids):
                    self._done[self._keys[i]] = v
        self._pending = still
        return sum(k in self._done for k in self._keys) / len(self._keys)

    def done(self) -> bool:
        return self.poll() == 1.0 if self._pending else True

    def result(self, timeout: float = 600.0, interval: float = 0.5) -> SweepResult:
        """Wait (polling every ``interval`` s, at most ``timeout`` s) and return the table."""
        t0 = time.time()
        while not self.done():
            if time.time() - t0 > timeout:
                raise TimeoutError(f"the remote sweep was not finished after {timeout:.0f} s ({len(self._pending)} requests pending).")
            time.sleep(interval)
        return self._finish(self._done)


def remote_sweep(
    model: HookedMLLM | NNsightBackend,
    inputs: Any,
    configs: Sequence[Intervention],
    metric: Callable[[Tensor], Tensor],
    *,
    remote: Remote = True,
    max_configs_per_request: int = 64,
    configs_per_trace: int | None = 32,
    max_request_bytes: int | None = 16 << 20,
    retries: int = 3,
    backoff: float = 1.0,
    progress: bool = True,
    blocking: bool = True,
    checkpoint: str | None = None,
    sources: dict[str, Any] | None = None,
    api_key: str | None = None,
    check_deployed: bool = True,
    callback: Callable[[int, int], None] | None = None,
) -> SweepResult | RemoteSweepJob:
    """Run every config on ``inputs`` through nnsight (``remote``: True / host URL / "local" / False).

    ``max_configs_per_request``: configs per request (the first also runs the clean
    copy); ``configs_per_trace``: configs batched into one forward (default: all of a
    request in one forward; lower it to bound the server's memory, and a request becomes
    a session of several traces); ``max_request_bytes``: a request whose payload is
    larger is refused before sending; ``retries`` / ``backoff``: transient failures are
    retried after ``backoff * 2**attempt`` s; ``blocking=False`` submits every request
    and returns a :class:`RemoteSweepJob`; ``checkpoint``: finished configs are saved
    there after every request, and a call with the same file resumes; ``check_deployed``:
    ask the server's ``/status`` first and fail fast when the model is not deployed;
    ``callback(requests_done, requests_total)`` runs after each finished request.

    Returns the :class:`~hooks_mm.sweep.SweepResult` of :func:`hooks_mm.sweep.sweep`
    (``table``, ``values``, ``clean``, ``meta``), with ``meta`` adding ``requests``,
    ``bytes_sent``, ``bytes_received``, ``retries`` and ``latencies``.
    """
    configs = list(configs)
    if not configs:
        raise ValueError("remote_sweep got an empty config list: pass intervention specs, e.g. single_neurons(model, layers=0).")
    if max_configs_per_request < 1 or (configs_per_trace is not None and configs_per_trace < 1):
        raise ValueError("max_configs_per_request and configs_per_trace must be >= 1.")
    if not blocking and remote in (False, None, "local"):
        raise ValueError("blocking=False needs a server (remote=True or a host URL): local runs finish before returning.")
    t0 = time.perf_counter()
    backend = backend_for(model, remote, api_key=api_key, max_request_bytes=max_request_bytes)
    start = dataclasses.replace(backend.stats, latencies=[])
    n_lat = len(backend.stats.latencies)
    per_trace = configs_per_trace or max_configs_per_request
    if check_deployed and remote not in (False, None, "local"):
        _with_retries(lambda: _check_deployed(backend, remote), retries, backoff, backend, {}, [], (None, ""))
    reduce = _reduce(metric)
    keys = [config_key(c) for c in configs]
    fingerprint = _fingerprint(backend, inputs, reduce)
    done: dict[str, Tensor] = _load(checkpoint, fingerprint) if checkpoint else {}
    clean_key = "__clean__"
    todo = [i for i, k in enumerate(keys) if k not in done]
    # request r: a list of traces, each a list of config indices (-1: the clean copy)
    ids = ([-1] if clean_key not in done else []) + todo
    requests = [ids[s : s + max_configs_per_request] for s in range(0, len(ids), max_configs_per_request)]
    groups = [[r[s : s + per_trace] for s in range(0, len(r), per_trace)] for r in requests]
    all_keys = [*keys, clean_key]

    def spec(i: int) -> Any:
        return None if i < 0 else configs[i]

    # compile everything first: bad configs fail before any request is sent
    plans = [[backend.plan([spec(i) for i in g], inputs, sources=sources, reduce=reduce) for g in req] for req in groups]

    def finish(done: dict[str, Tensor]) -> SweepResult:
        clean = torch.as_tensor(done[clean_key])
        values = torch.stack([torch.as_tensor(done[k]).reshape(clean.shape) for k in keys])
        rows = []
        for c, v in zip(configs, values):
            row = describe(c)
            if v.dim() == 0:
                row["value"], row["delta"] = float(v), float(v - clean)
            else:
                row.update({f"value_{j}": float(x) for j, x in enumerate(v)})
            rows.append(row)
        st = backend.stats
        meta = {
            "seconds": time.perf_counter() - t0, "configs": len(configs), "chunk": max_configs_per_request,
            "configs_per_trace": per_trace, "backend": "nnsight", "remote": remote, "resumed": len(configs) - len(todo),
            "fast": 0, "nnsight": len(todo),
            "requests": st.requests - start.requests, "bytes_sent": st.bytes_sent - start.bytes_sent,
            "bytes_received": st.bytes_received - start.bytes_received, "retries": st.retries - start.retries,
            "latencies": list(st.latencies[n_lat:]),
        }
        return SweepResult(pd.DataFrame(rows), values, clean, meta)

    def store(out: list[Tensor], req: list[list[int]]) -> None:
        for values, g in zip(out, req):
            for v, i in zip(torch.as_tensor(values), g):
                done[all_keys[i] if i >= 0 else clean_key] = v

    if not blocking:
        pending = [(backend.execute(p, remote=remote, blocking=False), [[i if i >= 0 else len(keys) for i in g] for g in req]) for p, req in zip(plans, groups)]
        return RemoteSweepJob(finish, pending, done, all_keys)

    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), disable=not progress, desc="remote sweep", unit="cfg")
    try:
        for n, (p, req) in enumerate(zip(plans, groups)):
            out = _with_retries(lambda p=p: backend.execute(p, remote=remote), retries, backoff, backend, done, keys, (checkpoint, fingerprint))
            store(out, req)
            _save(checkpoint, done, fingerprint)
            bar.update(sum(1 for g in req for i in g if i >= 0))
            bar.set_postfix_str(f"{backend.stats.requests} req, {backend.stats.bytes_received:,} B back")
            if callback is not None:
                callback(n + 1, len(plans))
    finally:
        bar.close()
    return finish(done)


def _with_retries(
    call: Callable[[], Any], retries: int, backoff: float, backend: NNsightBackend, done: dict[str, Tensor], keys: list[str], ckpt: tuple[str | None, str]
) -> Any:
    checkpoint = ckpt[0]
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as e:
            if not is_transient(e):
                raise
            if attempt == retries:
                _save(checkpoint, done, ckpt[1])
                n = sum(k in done for k in keys)
                where = f"; saved to {checkpoint!r}: call remote_sweep again with it to resume" if checkpoint else (
                    "; pass checkpoint=PATH to resume later (finished configs are in this error's .partial)"
                )
                err = ServerUnavailableError(f"the server failed {retries + 1} times ({e}); {n}/{len(keys)} configs finished{where}.")
                err.partial = {k: v for k, v in done.items() if k in set(keys)}  # type: ignore[attr-defined]
                raise err from e
            backend.stats.retries += 1
            time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


def _fingerprint(backend: NNsightBackend, inputs: Any, reduce: Any) -> str:
    """What a checkpoint's values depend on besides the configs: the model key, inputs, metric positions."""
    h = hashlib.sha256()
    try:
        h.update(backend.lm.to_model_key().encode())
    except Exception:  # noqa: BLE001 - an in-process model: its architecture and size
        h.update(backend.model.cfg.architecture.encode() + str(sum(p.numel() for p in backend.model.hf_model.parameters())).encode())
    enc = backend.model._as_inputs(inputs)
    for k in sorted(enc):
        if torch.is_tensor(enc[k]):
            h.update(k.encode() + enc[k].detach().cpu().numpy().tobytes())
    if reduce[0] is not None:
        h.update(reduce[0].cpu().numpy().tobytes())
    return h.hexdigest()


def _load(path: str, fingerprint: str) -> dict[str, Tensor]:
    if not os.path.exists(path):
        return {}
    data = torch.load(path, weights_only=True)
    if data.get("fingerprint") != fingerprint:
        raise ValueError(f"checkpoint {path} was written for another model or inputs: delete it, or pass another path.")
    return dict(zip(data["keys"], data["values"]))


def _save(path: str | None, done: dict[str, Tensor], fingerprint: str) -> None:
    if path is None:
        return
    torch.save({"fingerprint": fingerprint, "keys": list(done), "values": list(done.values())}, f"{path}.tmp")
    os.replace(f"{path}.tmp", path)


def _check_deployed(backend: NNsightBackend, remote: Remote) -> None:
    host = backend._host(remote)
    key = backend.lm.to_model_key()
    try:
        keys = deployed_models(host)
    except (OSError, ValueError) as e:
        raise ServerUnavailableError(f"NDIF at {host} did not answer GET /status: {e}") from e
    if not any(k == key or k.endswith(":" + key) for k in keys):
        listed = "\n  ".join(keys) or "(none)"
        raise ModelNotDeployedError(
            f"{key}\nis not deployed on {host}; deployed:\n  {listed}\n"
            "Deploy it (`ndif deploy`), or pass check_deployed=False if the server deploys models on demand."
        )


__all__ = ["NDIFError", "RemoteSweepJob", "backend_for", "deployed_models", "remote_sweep"]
