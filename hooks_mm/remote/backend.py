"""Run intervention specs through nnsight: in process, ``remote="local"``, or on an NDIF server.

``NNsightBackend(model, lm)`` pairs a :class:`~hooks_mm.HookedMLLM` (layout, adapter table,
validation; its weights may stay on the meta device for a model only the server holds)
with an nnsight ``TransformersModel`` of the same checkpoint. Specs compile to plain-data
plans (:mod:`hooks_mm.remote.compile`) executed in the trace by :mod:`hooks_mm.remote.ops`,
which is shipped by value, so the server needs nothing of hooks_mm.

``remote``: ``False`` (this process), ``"local"`` (nnsight's serialisation round-trip, run
here with hooks_mm hidden, exactly as the server would deserialise it), ``True`` (the
host in ``nnsight.CONFIG.API.HOST`` / ``$NDIF_HOST``) or a host URL. The API key comes
from ``api_key=``, else nnsight's config (``nnsight.CONFIG.set_default_api_key`` /
``$NDIF_API_KEY``).

Example::

    lm = load_nnsight("/models/tiny-llava", task="image-text-to-text")
    backend = NNsightBackend(HookedMLLM(lm._module, processor), lm)
    logits = backend.run(inputs, NeuronAblation(0, [3], Image()), remote="http://127.0.0.1:8001")
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nnsight
import torch
from jaxtyping import Float
from nnsight.intervention.backends.remote import RemoteBackend, RemoteError
from torch import Tensor

from hooks_mm.remote import ops
from hooks_mm.remote.compile import compile_plan
from hooks_mm.remote.errors import (
    AuthenticationError,
    ModelNotDeployedError,
    NDIFError,
    RemoteExecutionError,
    RequestTooLargeError,
    ServerUnavailableError,
    VersionMismatchError,
    classify,
    is_transient,
)

if TYPE_CHECKING:
    from hooks_mm.interventions import Intervention
    from hooks_mm.model import HookedMLLM

nnsight.register(ops)  # ship the executor's source with every request

Remote = bool | str


def load_nnsight(repo_or_path: str, *, task: str | None = None, processor: Any = None, dispatch: bool = False, **kwargs: Any) -> Any:
    """An nnsight ``TransformersModel`` of a hub id or local directory (meta weights unless ``dispatch``).

    Its model key is the one an NDIF deployment of the same checkpoint answers to. A local
    directory is registered with nnsight so no hub look-up happens; ``task`` defaults to
    ``image-text-to-text`` when the directory has a processor config, else ``text-generation``.
    """
    from nnsight.modeling import huggingface
    from nnsight.modeling.transformers import TransformersModel

    from hooks_mm.processing import load_processor

    if os.path.isdir(repo_or_path):
        repo_or_path = os.path.abspath(repo_or_path)
        huggingface._ID_CACHE[repo_or_path] = repo_or_path
        if task is None:
            task = "image-text-to-text" if os.path.exists(os.path.join(repo_or_path, "processor_config.json")) else "text-generation"
    if processor is None:
        processor = load_processor(repo_or_path)
    key = "processor" if task == "image-text-to-text" else "tokenizer"
    return TransformersModel(repo_or_path, task=task, dispatch=dispatch, **{key: processor}, **kwargs)


@dataclass
class Stats:
    """What the remote path cost: requests sent, payload bytes, result bytes, retries, seconds."""

    requests: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    retries: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.requests} requests, {self.bytes_sent:,} bytes sent, {self.bytes_received:,} bytes returned, "
            f"{self.retries} retries, {self.seconds:.2f} s"
        )


class _Backend(RemoteBackend):
    """nnsight's RemoteBackend that meters bytes and refuses a payload over ``max_request_bytes``."""

    def __init__(self, *args: Any, stats: Stats, max_request_bytes: int | None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.stats, self.max_request_bytes = stats, max_request_bytes

    def _serialize(self, tracer: Any) -> bytes:
        blob = super()._serialize(tracer)
        if self.max_request_bytes is not None and len(blob) > self.max_request_bytes:
            raise RequestTooLargeError(
                f"this request serialises to {len(blob):,} bytes, over max_request_bytes={self.max_request_bytes:,}: "
                "lower max_configs_per_request, send smaller inputs, or raise the limit."
            )
        self.stats.bytes_sent += len(blob)
        return blob

    def finalize(self, content: bytes) -> Any:
        self.stats.bytes_received += len(content)
        return super().finalize(content)


class NNsightBackend:
    """Compile specs to nnsight traces; run them here, through ``remote="local"``, or on NDIF.

    ``model``: the HookedMLLM of the checkpoint (for layouts, the adapter table and
    validation). ``lm``: its nnsight model (default: ``model.hf_model`` wrapped in process,
    which can run ``remote=False`` / ``"local"`` but has no server identity; use
    :func:`load_nnsight` for a deployed checkpoint).
    """

    def __init__(
        self, model: HookedMLLM, lm: Any = None, *, api_key: str | None = None, max_request_bytes: int | None = None, verbose: bool = False
    ):
        self.model = model
        self.verbose = verbose
        if lm is None:
            from nnsight.modeling.transformers import TransformersModel

            proc = model.processor
            key = "processor" if model.adapter.image_mask is not None and hasattr(proc, "tokenizer") else "tokenizer"
            task = "image-text-to-text" if key == "processor" else "text-generation"
            lm = TransformersModel(model.hf_model, task=task, **{key: proc})
        self.lm = lm
        self.api_key = api_key
        self.max_request_bytes = max_request_bytes
        self.stats = Stats()
        impl = getattr(getattr(lm._module, "config", None), "_attn_implementation", None)
        self.attn_implementation = impl

    # ------------------------------------------------------------------ public

    def run(
        self, inputs: Any, spec: Intervention | None, *, sources: dict[str, Any] | None = None, remote: Remote = False
    ) -> Float[Tensor, "batch seq vocab"]:
        """Logits of ``inputs`` under ``spec`` (None: clean), run as one nnsight request."""
        plan = self.plan([spec], inputs, sources=sources)
        return self.execute([plan], remote=remote)[0]

    def plan(self, specs: list[Intervention | None], inputs: Any, *, sources: dict[str, Any] | None = None, reduce: Any = None) -> dict[str, Any]:
        """Compile ``specs`` (one batched forward, one copy of ``inputs`` per spec); raises before any request."""
        impl = self.attn_implementation
        if any(_has_knockout(s) for s in specs) and impl is not None and not impl.endswith(("eager", "sdpa")):
            raise NotImplementedError(
                f"attention knockout edits the attention mask, which {self.attn_implementation!r} attention does not "
                "take as a tensor: load the model with attn_implementation='sdpa' or 'eager'."
            )
        return compile_plan(self.model, specs, inputs, sources, reduce)

    def execute(self, plans: list[dict[str, Any]], *, remote: Remote = False, blocking: bool = True) -> Any:
        """Run plans (sharing inputs and sources) as one request; their results in order.

        One plan without sources is one trace; otherwise a session runs the source traces
        once, then one trace per plan. ``blocking=False`` (remote only) returns the
        submitted request, for :func:`poll`.
        """
        backend = self._backend(remote, blocking)
        t0 = time.perf_counter()
        try:
            result = _trace(self.lm, plans, backend)
        except NDIFError:
            raise
        except RemoteError as e:
            raise classify(e, self._host(remote), self.lm) from e
        except Exception as e:
            if isinstance(e, (OSError, ConnectionError)) or type(e).__module__.startswith("websocket") or is_transient(e):
                raise ServerUnavailableError(f"NDIF at {self._host(remote)} did not answer: {type(e).__name__}: {e}") from e
            raise
        finally:
            if remote not in (False, None):
                self.stats.requests += 1
        dt = time.perf_counter() - t0
        self.stats.seconds += dt
        if remote not in (False, None, "local"):
            self.stats.latencies.append(dt)  # one request to a server, submit to result
        return result

    # ------------------------------------------------------------------ internals

    def _host(self, remote: Remote) -> str:
        return remote if isinstance(remote, str) and remote != "local" else nnsight.CONFIG.API.HOST

    def _backend(self, remote: Remote, blocking: bool) -> Any:
        if remote in (False, None):
            return None
        if remote == "local":
            from nnsight.intervention.backends.local import LocalSimulationBackend

            return LocalSimulationBackend(self.lm)
        try:
            key = self.lm.to_model_key()
        except Exception as e:
            raise ValueError(
                "this nnsight model has no server identity (it wraps an in-process module): load it with "
                "hooks_mm.remote.load_nnsight(repo_or_dir) to run it on NDIF."
            ) from e
        host = self._host(remote)
        backend = _Backend(
            key,
            host=host,
            api_key=self.api_key,
            env=self.lm._remoteable_get_env(),
            blocking=blocking,
            stats=self.stats,
            max_request_bytes=self.max_request_bytes,
        )
        backend.display.enabled = self.verbose
        return backend


def _has_knockout(spec: Any) -> bool:
    from hooks_mm.interventions import AttentionKnockout, Compose

    if isinstance(spec, Compose):
        return any(_has_knockout(s) for s in spec.items)
    return isinstance(spec, AttentionKnockout)


def _trace(lm: Any, plans: list[dict[str, Any]], backend: Any) -> Any:
    """One nnsight request: a trace for one plan, else a session (source traces, then one trace per plan)."""
    run = ops.run
    store: dict[str, Any] = {}
    sources = list(plans[0]["sources"].values())
    with torch.no_grad():
        if len(plans) == 1 and not sources:
            plan = plans[0]
            with lm.trace(plan["inputs"], backend=backend):
                out = nnsight.save(run(lm, plan, store))
            if isinstance(backend, RemoteBackend) and not backend.blocking:
                return backend
            out = [out]
        else:
            with lm.session(backend=backend):
                for source in sources:
                    with lm.trace(source["inputs"]):
                        run(lm, source, store)
                out = []
                for plan in plans:
                    with lm.trace(plan["inputs"]):
                        out.append(run(lm, plan, store))
                out = nnsight.save(out)
    if isinstance(backend, RemoteBackend) and not backend.blocking:
        return backend
    return out


def poll(backend: RemoteBackend) -> list[Any] | None:
    """Poll a non-blocking request: its per-plan results once finished, else None."""
    try:
        result = backend()
    except RemoteError as e:
        raise classify(e, backend.host, None) from e
    except (OSError, ConnectionError) as e:
        raise ServerUnavailableError(f"NDIF at {backend.host} did not answer: {e}") from e
    if result is None:
        return None
    out = result["out"] if isinstance(result, dict) else result
    return out if isinstance(out, list) else [out]


__all__ = [
    "AuthenticationError",
    "ModelNotDeployedError",
    "NDIFError",
    "NNsightBackend",
    "RemoteExecutionError",
    "RequestTooLargeError",
    "ServerUnavailableError",
    "Stats",
    "VersionMismatchError",
    "load_nnsight",
    "poll",
]
