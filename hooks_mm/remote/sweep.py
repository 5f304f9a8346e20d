"""Remote sweeps: many intervention configs through nnsight, in few requests, metric values only.

:class:`NNsightSweep` is the nnsight backend of :func:`hooks_mm.sweep.sweep` (the loop,
table and checkpoints are the sweep core's). Configs are packed as copies of the batch into
one forward (``configs_per_trace`` copies, each with its own edits on its own rows); up to
``max_configs_per_request`` configs go in one request, as a session of such traces when
there are several (source runs for patching or resampling run once per request). The
metric is reduced on the server, so a request returns one value (or one vector) per
config, never activations.

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
    # the same: sweep(model, inputs, configs, metric, backend=NNsightSweep(remote="http://127.0.0.1:8001"))
    print(result.meta["requests"], result.meta["bytes_received"])
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from hooks_mm.interventions import Context
from hooks_mm.model.meta import is_weightless
from hooks_mm.remote.backend import NNsightBackend, Remote, load_nnsight, model_key, poll
from hooks_mm.remote.budget import plan_memory
from hooks_mm.remote.client import SKIPPED, bind_remotely
from hooks_mm.remote.compile import takes_use_cache
from hooks_mm.remote.errors import NDIFError, ServerUnavailableError, is_transient
from hooks_mm.remote.nnsight_compat import wrapped_module
from hooks_mm.remote.versions import resolve_key, server_info
from hooks_mm.sweep.core import (
    CLEAN,
    SAVE,
    Checkpoint,
    Job,
    SweepResult,
    check_configs,
    check_edits,
    check_value,
    config_keys,
    fingerprint,
    make_result,
    metric_value,
    run_sweep,
)
from hooks_mm.sweep.identity import weights_digest
from hooks_mm.sweep.metrics import PositionMetric, check_metric_batch

if TYPE_CHECKING:
    from hooks_mm.interventions import Intervention
    from hooks_mm.model import Batch, HookedMLLM


def backend_for(model: HookedMLLM | NNsightBackend, remote: Remote, **kwargs: Any) -> NNsightBackend:
    """An :class:`NNsightBackend` for ``model``: in process for ``False`` / ``"local"``, else keyed to its
    checkpoint."""
    if isinstance(model, NNsightBackend):
        return model
    if remote in (False, None, "local") and not is_weightless(model):  # weightless: nnsight's copy of the checkpoint
        return NNsightBackend(model, **kwargs)
    path = getattr(model.hf_model.config, "_name_or_path", None) or getattr(model.hf_model, "name_or_path", None)
    if not path:
        raise ValueError(
            "this model has no checkpoint name to address a server with: pass "
            "NNsightBackend(model, load_nnsight(repo))."
        )
    return NNsightBackend(model, load_nnsight(path, processor=model.processor), **kwargs)


def deployed_models(host: str, timeout: float = 10.0) -> list[str]:
    """Model keys an NDIF server reports as deployed (``GET /status``)."""
    return server_info(host, timeout).keys


class NNsightSweep:
    """The nnsight backend of a sweep: in process (``remote=False``), nnsight's serialisation
    round trip (``"local"``), or an NDIF server (``True`` / a host URL).

    ``max_configs_per_request``: configs per request (the first also runs the clean copy);
    ``configs_per_trace``: configs batched into one forward (a request of more becomes a
    session of several traces); both None: sized from ``max_memory`` (bytes of the server
    device, weights included; default 40 GiB) by :func:`hooks_mm.remote.budget.plan_memory`,
    whose plan is ``result.meta["memory_plan"]``; explicit values are checked against it (a
    warning when over). A metric with positions is unembedded at those positions only, on the
    server; ``max_request_bytes``: a request whose payload (inputs and images, sent once per
    request, and the configs' edits) is larger is refused before sending;
    ``retries`` / ``backoff``: transient failures are retried after ``backoff * 2**attempt``
    s; ``check_deployed``: ask the server's ``/status`` and ``/env`` first and fail fast when the
    model is not deployed, or deployed only under another nnsight series' key
    (:func:`hooks_mm.remote.versions.resolve_key`; ``meta["server_nnsight"]`` records the server's
    version); ``check_weights``: compare the server's clean metric with the local model's
    (one local forward) and warn when they differ (the deployed weights are not the local ones);
    ``callback(requests_done, requests_total)`` runs after each request.
    ``backend``: an :class:`NNsightBackend` to use (default: one for the swept model).
    """

    def __init__(
        self,
        backend: NNsightBackend | None = None,
        *,
        remote: Remote = True,
        max_configs_per_request: int | None = None,
        configs_per_trace: int | None = None,
        max_memory: int | None = None,
        max_request_bytes: int | None = 16 << 20,
        retries: int = 3,
        backoff: float = 1.0,
        api_key: str | None = None,
        check_deployed: bool = True,
        check_weights: bool = True,
        callback: Callable[[int, int], None] | None = None,
    ):
        sizes = {"max_configs_per_request": max_configs_per_request, "configs_per_trace": configs_per_trace}
        for name, value in sizes.items():
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r}: pass an integer >= 1, or None to size it from max_memory.")
        if retries < 0 or backoff < 0:
            raise ValueError(f"retries={retries} and backoff={backoff} must be >= 0.")
        self.backend, self.remote, self.max_memory = backend, remote, max_memory
        self.asked = (configs_per_trace, max_configs_per_request)
        self.per_trace, self.per_request, self.memory = configs_per_trace, max_configs_per_request, None
        self.max_request_bytes, self.retries, self.backoff = max_request_bytes, retries, backoff
        self.api_key, self.check_deployed, self.callback = api_key, check_deployed, callback
        self.check_weights, self.answered = check_weights, False
        self.server = None  # the ServerInfo read by check_deployed

    def start(
        self, model: HookedMLLM, batch: Batch, metric: Callable[[Tensor], Tensor], sources: dict[str, Any] | None
    ) -> bytes:
        nn = self.nn = backend_for(
            self.backend or model, self.remote, api_key=self.api_key, max_request_bytes=self.max_request_bytes
        )
        self.batch, self.sources = batch, sources
        check_metric_batch(metric, batch)
        self.stats0, self.n_lat, self.n_configs = (
            dataclasses.replace(nn.stats, latencies=[]),
            len(nn.stats.latencies),
            0,
        )
        if self.check_deployed and self.remote not in (False, None, "local"):
            self._with_retries(self._check_deployed)
        self.model, self.metric, self.shape = model, metric, None
        self.local_clean = None  # the metric on the local model's clean run: checks it before any request
        if not next(model.hf_model.parameters()).is_meta and (
            self.check_weights or self.remote in (False, None, "local")
        ):
            with torch.no_grad():
                logits = model.hf_model(**batch.model_inputs).logits
            if isinstance(metric, PositionMetric):
                metric.bind(batch, logits, model)
            self.local_clean = metric_value(metric, logits, None)
        self.weightless = is_weightless(model)  # then the clean reference comes from the server (remote/client.py)
        bind_remotely(nn, model, batch, metric, self._with_retries, self.remote)
        self.reduce = (metric.positions, metric.reducer()) if isinstance(metric, PositionMetric) else (None, metric)
        if self.remote in (False, None, "local") and not self.weightless:  # the weights this process runs
            return f"{model.cfg.architecture}|{weights_digest(wrapped_module(nn.lm))}".encode()
        return model_key(nn.lm).encode()  # the deployed checkpoint: repo id or path, revision, task

    def plans(self, jobs: list[Job]) -> list[tuple[list[dict[str, Any]], list[list[int]]]]:
        """Per request: the plan of each trace and the job indices it runs (compiled before anything is sent)."""
        ctx = Context(self.nn.model, self.batch, self.sources)
        for i, spec in jobs:
            if spec is not None:
                check_edits(spec, spec.edits(ctx), i)
        per_trace, per_request = self.asked
        self.memory = plan_memory(
            self.model,
            self.batch,
            max_memory=self.max_memory,
            configs_per_trace=per_trace,
            max_configs_per_request=per_request,
            reduced=self.reduce[0] is not None,
            captures=len(ctx.reads),
            kv_cache=not takes_use_cache(self.model.hf_model),
        )
        self.per_trace, self.per_request = self.memory.configs_per_trace, self.memory.max_configs_per_request
        out = []
        for r in range(0, len(jobs), self.per_request):
            request = jobs[r : r + self.per_request]
            traces = [request[t : t + self.per_trace] for t in range(0, len(request), self.per_trace)]
            plans = [
                self.nn.plan([spec for _, spec in trace], self.batch, sources=self.sources, reduce=self.reduce)
                for trace in traces
            ]
            for plan in plans[1:]:  # one inputs dict per request: its tensors (images) are serialised once
                plan["inputs"], plan["sources"] = plans[0]["inputs"], plans[0]["sources"]
            out.append((plans, [[i for i, _ in trace] for trace in traces]))
        return out

    def run(self, jobs: list[Job]) -> Iterator[tuple[int, Tensor] | None]:
        requests = self.plans(jobs)
        for n, (plans, ids) in enumerate(requests, 1):
            out = self._with_retries(lambda plans=plans: self.nn.execute(plans, remote=self.remote))
            for values, trace in zip(out, ids):
                for v, i in zip(values, trace):
                    v = check_value(v, self.metric, None if i < 0 else self.shape)
                    self.n_configs += int(i >= 0)
                    if i < 0:
                        self.shape = v.shape
                        self.compare_clean(v)
                    yield i, v
            yield SAVE
            if self.callback is not None:
                self.callback(n, len(requests))

    def meta(self) -> dict[str, Any]:
        st, s0 = self.nn.stats, self.stats0
        return {
            "chunk": self.per_request,
            "configs_per_trace": self.per_trace,
            "backend": "nnsight",
            "remote": self.remote,
            "fast": 0,
            "nnsight": self.n_configs,
            "requests": st.requests - s0.requests,
            "bytes_sent": st.bytes_sent - s0.bytes_sent,
            "bytes_received": st.bytes_received - s0.bytes_received,
            "retries": st.retries - s0.retries,
            "latencies": list(st.latencies[self.n_lat :]),
            **({"weights_check": SKIPPED} if self.weightless else {}),
            "memory_plan": None if self.memory is None else self.memory.as_dict(),
            **({"server_nnsight": self.server.nnsight} if self.server is not None else {}),
        }

    def compare_clean(self, remote_clean: Tensor) -> None:
        """Warn when the server's clean metric is not the local model's: the weights differ, so the
        layouts, widths and checks made here may not describe the model that ran."""
        local = self.local_clean
        if not self.check_weights or self.remote in (False, None, "local") or local is None:
            return
        gap = float((local - remote_clean).abs().max()) if local.shape == remote_clean.shape else None
        if gap is None or gap > 1e-3 * max(1.0, float(local.abs().max())):
            warnings.warn(
                f"the deployed model gives clean metric {remote_clean.tolist()} and the local model "
                f"{local.tolist()}: its weights differ from the local ones (another checkpoint, revision or "
                "fine-tune?). The sweep's values are the deployed model's; load the HookedMLLM from the deployed "
                "checkpoint, or pass check_weights=False if the difference is expected (e.g. another dtype).",
                stacklevel=2,
            )

    def _with_retries(self, call: Callable[[], Any]) -> Any:
        for attempt in range(self.retries + 1):
            try:
                out = call()
                self.answered = True
                return out
            except Exception as e:
                if not is_transient(e):
                    raise
                if attempt == self.retries:
                    host = self.nn.host(self.remote)
                    tries = f"{self.retries + 1} attempt{'s' if self.retries else ''}"
                    if not self.answered:  # nothing came back yet: the host, not this sweep
                        err = ServerUnavailableError(
                            f"NDIF at {host} is unreachable ({tries}: {e}). Check the URL and that the server is "
                            f"up (`curl {host.rstrip('/')}/ping`), then call again."
                        )
                    else:
                        err = ServerUnavailableError(f"NDIF at {host} failed {tries} ({e})")
                    err.resumable = True  # type: ignore[attr-defined]
                    raise err from e
                self.nn.stats.retries += 1
                time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def _check_deployed(self) -> None:
        """Ask the server which nnsight it runs and what it deploys; keep the key it knows this checkpoint by
        (raises VersionMismatchError / ModelNotDeployedError before any request)."""
        host = self.nn.host(self.remote)
        try:
            info = server_info(host)
        except (OSError, ValueError) as e:
            raise ServerUnavailableError(f"NDIF at {host} did not answer GET /status: {e}") from e
        self.server = info
        resolve_key(self.nn.lm, info)


class RemoteSweepJob:
    """A sweep submitted without waiting (``blocking=False``): ``poll()``, ``done()``, ``result()``."""

    def __init__(
        self,
        finish: Callable[[dict[str, Tensor]], SweepResult],
        pending: list[tuple[Any, list[list[str]]]],
        done: dict[str, Tensor],
        keys: list[str],
        on_fetch: Callable[[dict[str, Tensor]], None] | None = None,
    ):
        self._finish, self._pending, self._done, self._keys = finish, pending, done, keys
        self._on_fetch = on_fetch

    def poll(self) -> float:
        """Fetch finished requests; the fraction of configs done."""
        still = []
        for request, groups in self._pending:
            out = poll(request)
            if out is None:
                still.append((request, groups))
                continue
            new = {k: v for values, keys in zip(out, groups) for k, v in zip(keys, values)}
            if self._on_fetch is not None:
                self._on_fetch(new)  # checks the values, saves the checkpoint
            self._done.update(new)
        self._pending = still
        return sum(k in self._done for k in self._keys) / len(self._keys)

    def done(self) -> bool:
        return self.poll() == 1.0 if self._pending else True

    def result(self, timeout: float = 600.0, interval: float = 0.5) -> SweepResult:
        """Wait (polling every ``interval`` s, at most ``timeout`` s) and return the table."""
        t0 = time.time()
        while not self.done():
            if time.time() - t0 > timeout:
                raise TimeoutError(
                    f"the remote sweep was not finished after {timeout:.0f} s ({len(self._pending)} requests pending)."
                )
            time.sleep(interval)
        return self._finish(self._done)


def remote_sweep(
    model: HookedMLLM | NNsightBackend,
    inputs: Any,
    configs: Sequence[Intervention],
    metric: Callable[[Tensor], Tensor],
    *,
    remote: Remote = True,
    blocking: bool = True,
    checkpoint: str | None = None,
    progress: bool | None = None,
    sources: dict[str, Any] | None = None,
    **options: Any,
) -> SweepResult | RemoteSweepJob:
    """Run every config on ``inputs`` through nnsight (``remote``: True / host URL / "local" / False).

    ``options`` are :class:`NNsightSweep`'s (``max_configs_per_request``, ``configs_per_trace``,
    ``max_memory``, ``max_request_bytes``, ``retries``, ``backoff``, ``api_key``, ``check_deployed``,
    ``callback``); ``checkpoint``: finished configs are saved there after every request, and
    a call with the same file resumes; ``blocking=False`` submits every request and returns
    a :class:`RemoteSweepJob` (finished requests are checked and saved to ``checkpoint`` as
    they are fetched).

    Returns the :class:`~hooks_mm.sweep.SweepResult` of :func:`hooks_mm.sweep.sweep`, with
    ``meta`` adding ``requests``, ``bytes_sent``, ``bytes_received``, ``retries``, ``latencies`` and
    ``memory_plan`` (:class:`hooks_mm.remote.budget.MemoryPlan`: estimated bytes, chosen sizes).
    """
    if not blocking and remote in (False, None, "local"):
        raise ValueError(
            "blocking=False needs a server (remote=True or a host URL): local runs finish before returning."
        )
    nn = model if isinstance(model, NNsightBackend) else None
    hooked = model.model if isinstance(model, NNsightBackend) else model
    backend = NNsightSweep(nn, remote=remote, **options)
    if blocking:
        return run_sweep(
            backend, hooked, inputs, configs, metric, checkpoint=checkpoint, progress=progress, sources=sources
        )
    configs = check_configs(configs)
    if not callable(metric):
        raise TypeError(f"metric must be a function of logits, got a {type(metric).__name__}.")
    store = Checkpoint(checkpoint)
    t0, batch = time.perf_counter(), hooked.prepare(inputs)
    identity = backend.start(hooked, batch, metric, sources)
    done = store.load(fingerprint(identity, batch, metric, sources, hooked) if checkpoint else {})
    keys = config_keys(configs)
    jobs: list[Job] = ([(-1, None)] if CLEAN not in done else []) + [
        (i, c) for i, (k, c) in enumerate(zip(keys, configs)) if k not in done
    ]
    n_jobs = sum(i >= 0 for i, _ in jobs)
    pending = [
        (
            backend.nn.execute(plans, remote=remote, blocking=False),
            [[keys[i] if i >= 0 else CLEAN for i in trace] for trace in ids],
        )
        for plans, ids in backend.plans(jobs)
    ]

    def finish(done: dict[str, Tensor]) -> SweepResult:
        meta = {
            "seconds": time.perf_counter() - t0,
            "configs": len(configs),
            "resumed": len(configs) - n_jobs,
            **backend.meta(),
            "nnsight": n_jobs,
        }
        return make_result(configs, done, meta)

    def on_fetch(new: dict[str, Tensor]) -> None:
        shape = None if backend.local_clean is None else backend.local_clean.shape
        for k, v in new.items():
            new[k] = check_value(v, metric, shape)
        if CLEAN in new:
            backend.compare_clean(new[CLEAN])
        store.save({**done, **new})

    return RemoteSweepJob(finish, pending, done, [*keys, CLEAN], on_fetch)


__all__ = ["NDIFError", "NNsightSweep", "RemoteSweepJob", "backend_for", "deployed_models", "remote_sweep"]
