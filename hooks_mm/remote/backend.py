"""Run intervention specs through nnsight: in process, ``remote="local"``, or on an NDIF server.

``NNsightBackend(model, lm)`` pairs a :class:`~hooks_mm.HookedMLLM` (layout, adapter table,
validation) with an nnsight ``TransformersModel`` of the same checkpoint. Specs compile to
plain-data plans (:mod:`hooks_mm.remote.compile`) executed in the trace by
:mod:`hooks_mm.remote.runner` with the specs' own ops (:mod:`hooks_mm.interventions.ops`);
both are shipped by value, so the server needs nothing of hooks_mm.

``remote``: ``False`` (this process), ``"local"`` (nnsight's serialisation round-trip, run
here with hooks_mm hidden, exactly as the server would deserialise it), ``True`` (the
host in ``nnsight.CONFIG.API.HOST`` / ``$NDIF_HOST``) or a host URL. The API key comes
from ``api_key=``, else nnsight's config (``nnsight.CONFIG.set_default_api_key`` /
``$NDIF_API_KEY``).

Example::

    lm = load_nnsight("/models/tiny-llava", task="image-text-to-text")
    backend = NNsightBackend(HookedMLLM.from_pretrained("/models/tiny-llava"), lm)
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
from torch import Tensor

import hooks_mm.interventions.ops as ops
import hooks_mm.remote.runner as runner
from hooks_mm.remote.budget import describe_request
from hooks_mm.remote.compile import compile_plan
from hooks_mm.remote.errors import ModelMismatchError, NDIFError, ServerUnavailableError, classify, is_transient
from hooks_mm.remote.nnsight_compat import (
    MeteredRemoteBackend,
    RemoteBackend,
    RemoteError,
    local_simulation,
    nnsight_model,
    register_local_checkpoint,
    remote_env,
    ship_by_value,
    show_status,
    wrapped_module,
)

if TYPE_CHECKING:
    from hooks_mm.interventions import Intervention
    from hooks_mm.model import HookedMLLM

ship_by_value(ops, runner)  # the executor's and the ops' source go with every request

Remote = bool | str


def load_nnsight(
    repo_or_path: str, *, task: str | None = None, processor: Any = None, dispatch: bool = False, **kwargs: Any
) -> Any:
    """An nnsight ``TransformersModel`` of a hub id or local directory (meta weights unless ``dispatch``).

    Its model key is the one an NDIF deployment of the same checkpoint answers to. A local
    directory is registered with nnsight so no hub look-up happens; ``task`` defaults to
    ``image-text-to-text`` when the directory has a processor config, else ``text-generation``.
    """
    from hooks_mm.processing import load_processor

    if os.path.isdir(repo_or_path):
        repo_or_path = os.path.abspath(repo_or_path)
        register_local_checkpoint(repo_or_path)
        if task is None:
            task = (
                "image-text-to-text"
                if os.path.exists(os.path.join(repo_or_path, "processor_config.json"))
                else "text-generation"
            )
    if processor is None:
        processor = load_processor(repo_or_path)
    return nnsight_model(repo_or_path, task, processor, dispatch=dispatch, **kwargs)


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


class NNsightBackend:
    """Compile specs to nnsight traces; run them here, through ``remote="local"``, or on NDIF.

    ``model``: the HookedMLLM of the checkpoint (for layouts, the adapter table and
    validation). ``lm``: its nnsight model (default: ``model.hf_model`` wrapped in process,
    which can run ``remote=False`` / ``"local"`` but has no server identity; use
    :func:`load_nnsight` for a deployed checkpoint). ``check_model=False`` skips
    :func:`check_same_model` (a stand-in server model of another size: the values are then that
    model's, and every edit must fit its shapes; for tests of the client path only).
    """

    def __init__(
        self,
        model: HookedMLLM,
        lm: Any = None,
        *,
        api_key: str | None = None,
        max_request_bytes: int | None = None,
        verbose: bool = False,
        check_model: bool = True,
    ):
        self.model = model
        self.verbose = verbose
        if lm is None:
            proc = model.processor
            if proc is None:
                raise ValueError(
                    "the nnsight path needs the model's processor or tokenizer (nnsight wraps the model in a "
                    "transformers pipeline), and this HookedMLLM has none: wrap it as HookedMLLM(hf_model, processor) "
                    "or load it with HookedMLLM.from_pretrained(dir) from a directory holding the processor."
                )
            vlm = model.adapter.image_mask is not None and hasattr(proc, "tokenizer")
            lm = nnsight_model(model.hf_model, "image-text-to-text" if vlm else "text-generation", proc)
        elif check_model:
            check_same_model(model, lm)
        self.lm = lm
        self.api_key = api_key
        self.max_request_bytes = max_request_bytes
        self.stats = Stats()
        self.attn_implementation = getattr(getattr(wrapped_module(lm), "config", None), "_attn_implementation", None)

    # ------------------------------------------------------------------ public

    def run(
        self, inputs: Any, spec: Intervention | None, *, sources: dict[str, Any] | None = None, remote: Remote = False
    ) -> Float[Tensor, "batch seq vocab"]:
        """Logits of ``inputs`` under ``spec`` (None: clean), run as one nnsight request."""
        plan = self.plan([spec], inputs, sources=sources)
        return self.execute([plan], remote=remote)[0]

    def plan(
        self,
        specs: list[Intervention | None],
        inputs: Any,
        *,
        sources: dict[str, Any] | None = None,
        reduce: Any = None,
    ) -> dict[str, Any]:
        """Compile ``specs`` (one batched forward, one copy of ``inputs`` per spec); raises before any request."""
        return compile_plan(self.model, specs, inputs, sources, reduce, self.attn_implementation)

    def execute(self, plans: list[dict[str, Any]], *, remote: Remote = False, blocking: bool = True) -> Any:
        """Run plans (sharing inputs and sources) as one request; their results in order.

        One plan without sources is one trace; otherwise a session runs the source traces
        once, then one trace per plan. ``blocking=False`` (remote only) returns the
        submitted request, for :func:`poll`.
        """
        backend = self._backend(remote, blocking)
        if isinstance(backend, MeteredRemoteBackend):
            backend.describe = lambda: describe_request(plans)
        t0 = time.perf_counter()
        try:
            result = _trace(self.lm, plans, backend)
        except NDIFError:
            raise
        except RemoteError as e:
            raise classify(e, self.host(remote), self.lm) from e
        except Exception as e:
            if (
                isinstance(e, (OSError, ConnectionError))
                or type(e).__module__.split(".")[0] in ("websocket", "socketio", "engineio")  # 0.8 / 0.7
                or is_transient(e)
            ):
                raise ServerUnavailableError(
                    f"NDIF at {self.host(remote)} did not answer: {type(e).__name__}: {e}"
                ) from e
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

    def host(self, remote: Remote) -> str:
        """The server ``remote`` names (nnsight's configured host for ``True``)."""
        return remote if isinstance(remote, str) and remote != "local" else nnsight.CONFIG.API.HOST

    def _backend(self, remote: Remote, blocking: bool) -> Any:
        if remote in (False, None):
            return None
        if remote == "local":
            return local_simulation(self.lm)
        key = model_key(self.lm)
        host = self.host(remote)
        backend = MeteredRemoteBackend(
            key,
            host=host,
            api_key=self.api_key,
            env=remote_env(self.lm),
            blocking=blocking,
            stats=self.stats,
            max_request_bytes=self.max_request_bytes,
        )
        show_status(backend, self.verbose)
        return backend


def check_same_model(model: HookedMLLM, lm: Any) -> None:
    """Raise :class:`ModelMismatchError` when ``lm`` (the checkpoint a server runs) is not ``model``'s
    architecture: another class, layer count or parameter shape (compared on nnsight's meta copy,
    before any request). Equal weights are not checked here (see ``NNsightSweep``)."""
    try:
        remote = wrapped_module(lm)
    except ImportError:
        raise
    except Exception:  # noqa: BLE001 - an nnsight model without a wrapped module: nothing to compare
        return
    local = model.hf_model
    problems = []
    if type(remote).__name__ != type(local).__name__:
        problems.append(f"class {type(remote).__name__} vs {type(local).__name__} here")
    try:
        n = len(remote.get_submodule(model.adapter.layers))
        if n != model.cfg.n_layers:
            problems.append(f"{n} layers vs {model.cfg.n_layers} here")
    except (AttributeError, TypeError):
        problems.append(f"no {model.adapter.layers} (the decoder layers here)")
    theirs = {k: tuple(p.shape) for k, p in remote.named_parameters()}
    ours = {k: tuple(p.shape) for k, p in local.named_parameters()}
    shapes = [f"{k} {theirs[k]} vs {ours[k]} here" for k in ours if k in theirs and theirs[k] != ours[k]]
    missing = sorted(set(ours) ^ set(theirs))
    problems += shapes[:3] + ([f"{len(missing)} parameter names differ (e.g. {missing[0]})"] if missing else [])
    if problems:
        raise ModelMismatchError(
            f"the local model ({model.cfg.architecture}, {model.cfg.n_layers} layers, d_model {model.cfg.d_model}) is "
            f"not the checkpoint the nnsight model addresses ({_key(lm)}): {'; '.join(problems)}. Load the "
            "HookedMLLM from the same checkpoint as the deployed model, e.g. HookedMLLM.from_pretrained(repo) "
            "with load_nnsight(repo)."
        )


def model_key(lm: Any) -> str:
    """The key an NDIF deployment of ``lm``'s checkpoint answers to (repo id or path, revision, task)."""
    try:
        return lm.to_model_key()
    except Exception as e:
        raise ValueError(
            "this nnsight model has no server identity (it wraps an in-process module): load it with "
            "hooks_mm.remote.load_nnsight(repo_or_dir) to run it on NDIF."
        ) from e


def _key(lm: Any) -> str:
    try:
        return lm.to_model_key()
    except Exception:  # noqa: BLE001
        return "an in-process module"


def _trace(lm: Any, plans: list[dict[str, Any]], backend: Any) -> Any:
    """One nnsight request: a trace for one plan, else a session (source traces, then one trace per plan)."""
    run = runner.run
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


__all__ = ["NNsightBackend", "Stats", "check_same_model", "load_nnsight", "model_key", "poll"]
