"""Remote EAP / EAP-IG: :func:`hooks_mm.circuits.eap_graph` with ``remote=`` runs through nnsight, on NDIF.

One request per graph: one nnsight session of two traces (the corrupted run; ``steps`` copies of the clean batch:
the clean run and the EAP-IG interpolation points), one backward of the metric, one VJP per head through the attention
branch, and the edge scores reduced on the server (:mod:`hooks_mm.circuits.remote_trace`, shipped by value). What
comes back is the Graph's ``[edges]`` scores and ``[nodes]`` node scores (float32), two metric values and the
bookkeeping checks: never per-position gradients. For llava-1.5-7b (32 layers x 32 heads, one row of ~600 tokens,
576 image cells, ``inputs="cell"``) that is 1,154,227 edges, 4.6 MB, where the per-head input gradients alone would
be 32 x 32 x 600 x 4096 float32 = 9.4 GiB (:func:`result_bytes` gives the figure for a batch; the server needs an
estimated 21 GiB in bfloat16 for EAP, 47 GiB for EAP-IG with 5 steps, weights included: :func:`eap_memory`).

``remote``: ``False`` (nnsight in this process), ``"local"`` (nnsight's serialisation round trip, as a server
would run it), ``True`` (nnsight's configured host) or a host URL; the model may be weightless
(:meth:`HookedMLLM.from_config <hooks_mm.HookedMLLM.from_config>`: the checkpoint runs on the server, a metric's
clean reference is bound from one first request, as remote sweeps do).

What is refused before any request, each with its reason and the local alternative:

- a family whose attention output is not its o-projection's output alone (a post-norm: Gemma 2/3; a multiplier),
  or with layers without heads: the server-side head split assumes ``z_h @ W_O[h]``;
- what :func:`hooks_mm.remote.compile.site` cannot reach with nnsight (layer input / output, o-projection, MLP
  output of every layer);
- ``steps`` whose estimated server memory (the graph of ``steps`` copies, kept for the backward) is over
  ``max_memory`` (:func:`eap_memory`);
- NDIF's sandboxed path (API keys not marked trusted) does not serve gradients (ndif's sandbox runner gets
  activations over a socket, without their autograd graph: ``ndif/services/ray/sandbox/ARCHITECTURE.md``,
  "Gradients"): the server's error is raised as :class:`GradientsNotServedError`.

Example::

    g = eap_graph(model, clean, blank, answer_logprob(model, clean), inputs="cell", remote="http://127.0.0.1:8001")
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import cloudpickle
import nnsight
import torch
from jaxtyping import Float
from torch import Tensor

import hooks_mm.circuits.remote_trace as remote_trace
from hooks_mm.circuits.graph import Graph, Node
from hooks_mm.layout import Modality
from hooks_mm.model.meta import is_weightless
from hooks_mm.remote.budget import DEFAULT_MAX_MEMORY, HEADROOM, estimate_per_copy
from hooks_mm.remote.compile import site, takes_use_cache, to_cpu
from hooks_mm.remote.errors import NDIFError, RemoteExecutionError, ServerUnavailableError, classify
from hooks_mm.remote.nnsight_compat import NNSIGHT_07, RemoteError, ship_by_value
from hooks_mm.sweep.metrics import PositionMetric

if TYPE_CHECKING:
    from hooks_mm.model import Batch, HookedMLLM
    from hooks_mm.remote.backend import NNsightBackend

ship_by_value(remote_trace)  # the server has torch and nnsight, not hooks_mm
OPTIONS = ("backend", "max_memory", "api_key", "max_request_bytes")


class GradientsNotServedError(NDIFError):
    """The server ran the trace where gradients do not exist (NDIF's sandboxed path)."""


def check_remote_family(model: HookedMLLM) -> list[tuple[str, str, str]]:
    """Per layer (layer path, o-projection path, MLP output path); an error naming why a family cannot run."""
    cfg, a = model.cfg, model.adapter
    name = f"{cfg.architecture} ({a.backbone.name} block)"
    local = "run eap_graph without remote= on a local copy of the model"
    if cfg.mixer_layers:
        raise NotImplementedError(
            f"eap_graph(remote=...): {name} has token-mixer layers {sorted(cfg.mixer_layers)} (no heads); the remote "
            f"trace splits every layer into heads: {local}."
        )
    if a.attn_out is None or a.attn_out != f"{a.attn}.{a.o}":
        raise NotImplementedError(
            f"eap_graph(remote=...): {name}'s attention output is not its o-projection's output alone (a post-norm or "
            f"a multiplier follows it: {a.attn_out!r}), and the server-side head split computes z_h @ W_O[h]: {local}."
        )
    out = []
    for l in range(cfg.n_layers):
        try:
            _, lpath, _ = site(model, f"blocks.{l}.hook_resid_pre")
            _, opath, _ = site(model, f"blocks.{l}.hook_attn_out")
            _, mpath, _ = site(model, f"blocks.{l}.hook_mlp_out")
        except NotImplementedError as e:
            raise NotImplementedError(f"eap_graph(remote=...): {e} ({local})") from e
        out.append((lpath, opath, mpath))
    return out


def eap_memory(model: HookedMLLM, batch: Batch, steps: int) -> int:
    """Estimated peak bytes on the server of a remote EAP request of ``steps`` gradient points, weights included.

    Per copy (``steps`` of them) the backward keeps every layer's activations: ``n_layers`` x (one layer's
    attention and MLP activations, twice the larger of the two, + the residual stream) of
    :func:`hooks_mm.remote.budget.estimate_per_copy`, the vision tower's and the logits; then the gradients at 4
    residual points per layer (model dtype, every copy) and their float32 means, activation differences and one
    layer's per-head gradients; the corrupted run's node outputs. On tiny-llava it is 1.2-1.4x the measured peak
    (``tests/remote/test_circuit_remote.py``).
    """
    hf = model.hf_model
    params = list(hf.parameters()) + list(hf.buffers())
    dtype = next(p.dtype for p in params if p.is_floating_point())
    e = torch.empty((), dtype=dtype).element_size()
    weights = sum(p.numel() * (e if p.is_floating_point() else p.element_size()) for p in params)
    parts = estimate_per_copy(hf.config, batch.model_inputs, dtype, reduced=False, kv_cache=False)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    b, s = batch.shape
    bsd = b * s * model.cfg.d_model
    graph = steps * (L * (2 * parts["layer"] + parts["residual"]) + parts.get("vision", 0) + 2 * parts["logits"])
    grads = 4 * L * steps * bsd * e + (5 * L + H + 2) * bsd * 4 + H * bsd * 4 * 2
    corrupted = 2 * L * bsd * e  # what the corrupted run's nodes write, kept for the differences
    return weights + graph + grads + corrupted


def edge_count(model: HookedMLLM, n_inputs: int) -> int:
    """Edges of a graph with ``n_inputs`` input nodes: each head reads every writer of earlier layers, each MLP
    those and its layer's heads, the logit every writer."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    per = [n_inputs + l * (H + 1) for l in range(L)]
    return sum(H * w + w + H for w in per) + n_inputs + L * (H + 1)


def result_bytes(model: HookedMLLM, n_inputs: int) -> int:
    """Bytes of tensors a remote EAP request returns: float32 edge and node scores, the checks (before pickling)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    return 4 * (edge_count(model, n_inputs) + n_inputs + L * (H + 1) + 1 + 6 * L)


def check_options(model: HookedMLLM, options: dict[str, Any]) -> None:
    """Errors for options the remote path does not take, or that would be ignored."""
    from hooks_mm.remote.backend import NNsightBackend, check_same_model

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"eap_graph got unknown options {unknown}: the remote path takes {list(OPTIONS)}.")
    backend = options.get("backend")
    if backend is None:
        return
    if not isinstance(backend, NNsightBackend):
        raise TypeError(
            f"backend= takes an NNsightBackend (e.g. NNsightBackend(model, load_nnsight(repo))), not "
            f"{type(backend).__name__}."
        )
    both = sorted({"api_key", "max_request_bytes"} & set(options))
    if both:
        raise ValueError(
            f"{both} configure the backend eap_graph builds, and backend= is given: set them on that NNsightBackend "
            "(NNsightBackend(model, lm, api_key=..., max_request_bytes=...)) instead."
        )
    if backend.model is not model:
        check_same_model(model, backend.lm)  # the layout and nodes are this model's: the server must run its shapes


def check_budget(model: HookedMLLM, batch: Batch, steps: int, max_memory: int | None) -> int:
    """The estimated bytes, or a ValueError naming the most steps that fit."""
    cap = (DEFAULT_MAX_MEMORY if max_memory is None else max_memory) * (1 - HEADROOM)
    need = eap_memory(model, batch, steps)
    if need > cap:
        fit = max((k for k in range(1, steps) if eap_memory(model, batch, k) <= cap), default=0)
        gib = 1 << 30
        raise ValueError(
            f"eap_graph(remote=...) with steps={steps} keeps the graph of {steps} copies of this batch "
            f"({tuple(batch.shape)}) for the backward: an estimated {need / gib:.1f} GiB on the server, over "
            f"max_memory={cap / (1 - HEADROOM) / gib:.1f} GiB less {HEADROOM:.0%} headroom. "
            + (f"Pass steps<={fit}, " if fit else "Even steps=1 does not fit: send fewer rows or shorter inputs, ")
            + "or max_memory= the server's real memory."
        )
    return need


def remote_eap(
    model: HookedMLLM,
    batch: Batch,
    corr: Batch | str,
    metric: Any,
    in_nodes: list[Node],
    masks: Tensor,
    m: int,
    remote: Any,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Run one remote EAP request (validated by :func:`hooks_mm.circuits.eap_graph`); the server's reduced result."""
    from hooks_mm.remote.client import bind_remotely
    from hooks_mm.remote.sweep import backend_for

    check_options(model, options)
    if NNSIGHT_07:
        raise NotImplementedError(
            f"eap_graph(remote=...) runs a backward inside an nnsight trace, checked on nnsight 0.8 only, and nnsight "
            f"{nnsight.__version__} is installed: pip install 'nnsight==0.8.1', or run eap_graph without remote=."
        )
    layers = check_remote_family(model)
    check_budget(model, batch, m, options.get("max_memory"))
    if not isinstance(metric, PositionMetric):
        check_shippable(metric, metric)
    nn = backend_for(
        options.get("backend") or model,
        remote,
        api_key=options.get("api_key"),
        max_request_bytes=options.get("max_request_bytes", 64 << 20),
    )
    bind_remotely(nn, model, batch, metric, lambda call: call(), remote)  # weightless: the server's clean reference
    reduce = (metric.positions, metric.reducer()) if isinstance(metric, PositionMetric) else (None, metric)
    check_shippable(reduce[1], metric)  # a hooks_mm metric's closure, once bound
    plan = {
        "inputs": to_cpu(batch.model_inputs),
        "corrupted": None if isinstance(corr, str) else to_cpu(corr.model_inputs),
        "ablate": corr if isinstance(corr, str) else None,
        "masks": masks.cpu(),
        "real": (batch.layout.modality != Modality.PAD).cpu(),
        "steps": m,
        "batch": batch.shape[0],
        "layers": layers,
        "heads": model.cfg.n_heads,
        "d_head": model.cfg.d_head,
        "reduce": reduce,
        "use_cache": False if takes_use_cache(model.hf_model) else None,
    }
    out = _request(nn, plan, remote)
    check_splits(model, out["checks"])
    if remote not in (False, None, "local") and not is_weightless(model):
        compare_clean(model, batch, metric, out["metric_clean"])
    n_edges, n_nodes = edge_count(model, len(in_nodes)), len(in_nodes) + model.cfg.n_layers * (model.cfg.n_heads + 1)
    if out["scores"].shape != (n_edges,) or out["node_scores"].shape != (n_nodes + 1,):
        raise RuntimeError(
            f"the server returned {tuple(out['scores'].shape)} edge scores and {tuple(out['node_scores'].shape)} node "
            f"scores for {n_edges} edges and {n_nodes + 1} nodes: the deployed checkpoint is not this model's config "
            "(another layer or head count); build the client from the deployed checkpoint."
        )
    return out


def _request(nn: NNsightBackend, plan: dict[str, Any], remote: Any) -> dict[str, Any]:
    """One nnsight session (the corrupted trace, then the gradient trace), with the remote path's error classes."""
    backend = nn._backend(remote, True)  # noqa: SLF001 - NNsightBackend's own request plumbing
    if backend is not None and hasattr(backend, "describe"):
        backend.describe = lambda: "an eap_graph request: the batch's inputs (and the corrupted ones) once"
    lm, rt = nn.lm, remote_trace  # the session ships what its body names: only these, never the HookedMLLM
    try:
        with torch.enable_grad(), lm.session(backend=backend):
            store: dict[str, Any] = {}
            with lm.trace(**rt.model_inputs(plan, corrupted=True)):
                rt.corrupted_run(lm, plan, store)
            with lm.trace(**rt.model_inputs(plan)):
                out = rt.run(lm, plan, store)
            out = nnsight.save(out)
    except NDIFError:
        raise
    except RemoteError as e:
        err = classify(e, nn.host(remote), nn.lm)
        if isinstance(err, RemoteExecutionError) and _no_gradients(str(e)):
            raise GradientsNotServedError(
                f"the server at {nn.host(remote)} ran this request where gradients are not served: NDIF's sandboxed "
                "path (an API key not marked trusted) runs the trace in a runner process that receives activations "
                "over a socket without their autograd graph (ndif/services/ray/sandbox/ARCHITECTURE.md, "
                "'Gradients'), so no EAP score can be computed there. Use a trusted API key, or run eap_graph "
                f"without remote= on a local copy of the model. Server error: {str(e).splitlines()[-1][:300]}"
            ) from e
        raise err from e
    except (OSError, ConnectionError) as e:
        raise ServerUnavailableError(f"NDIF at {nn.host(remote)} did not answer: {type(e).__name__}: {e}") from e
    finally:
        if remote not in (False, None):
            nn.stats.requests += 1
    return out


def _no_gradients(msg: str) -> bool:
    low = msg.lower()
    clues = ("no gradients are served here", "does not require grad", "does not have a grad_fn", "not have been used")
    return any(w in low for w in clues)


def check_shippable(fn: Any, metric: Any) -> None:
    """An error, before any request, when the metric function cannot travel to the server by value."""
    try:
        cloudpickle.dumps(fn)
    except Exception as e:  # noqa: BLE001 - whatever the pickler refuses
        raise ValueError(
            f"eap_graph(remote=...) sends the metric to the server, and {metric!r} cannot be serialised "
            f"({type(e).__name__}: {e}): it holds a model, a hook or another live object. Pass a hooks_mm metric "
            "(answer_logprob, logit_diff: they travel as plain torch functions) or a function of the logits that uses "
            "torch only."
        ) from e


def compare_clean(model: HookedMLLM, batch: Batch, metric: Any, remote_clean: float) -> None:
    """Warn when the server's clean metric is not the local model's (its weights differ: the graph is the
    deployed checkpoint's, laid out with the local model's config)."""
    with torch.no_grad():
        local = float(torch.as_tensor(metric(model.hf_model(**batch.model_inputs).logits)).float().mean())
    if abs(local - remote_clean) > 1e-3 * max(1.0, abs(local)):
        warnings.warn(
            f"the deployed model gives clean metric {remote_clean:.6g} and the local model {local:.6g}: its weights "
            "differ from the local ones (another checkpoint, revision or dtype). The graph's scores are the deployed "
            "model's; load the HookedMLLM from the deployed checkpoint (or use HookedMLLM.from_config).",
            stacklevel=3,
        )


def check_splits(model: HookedMLLM, checks: Tensor) -> None:
    """The server's bookkeeping checks, with :func:`hooks_mm.circuits.passes.check_split`'s tolerance."""
    for l, row in enumerate(checks.tolist()):
        for (diff, vjp, gap), what in ((row[:3], "heads'"), (row[3:], "MLP branch's")):
            if gap > 1e-3 * max(diff, vjp, 1e-6):
                raise RuntimeError(
                    f"eap_graph: at layer {l} the {what} input gradient differs from the residual stream's (max gap "
                    f"{gap:.3g}, computed on the server): this {model.cfg.architecture} block does not read and write "
                    "the residual stream as hooks_mm's hook points say, so its edge scores would be wrong; not "
                    "supported (please report it)."
                )


def structure(model: HookedMLLM, batch: Batch, in_nodes: list[Node], metric: Any) -> tuple[list[Node], Tensor, Tensor]:
    """Nodes and (src, dst) of the graph in the order the server's scores come in (the local graph's order)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    real = batch.layout.modality != Modality.PAD
    all_pos = [row.nonzero().flatten().tolist() for row in real]
    nodes, writers = list(in_nodes), list(range(len(in_nodes)))
    src, dst = [], []

    def read(j: int, before: list[int]) -> None:
        src.append(torch.tensor(before, dtype=torch.long))
        dst.append(torch.full((len(before),), j, dtype=torch.long))

    for l in range(L):
        heads = list(range(len(nodes), len(nodes) + H))
        nodes += [Node(f"L{l}.H{h}", "head", l, head=h, positions=all_pos) for h in range(H)]
        for j in heads:
            read(j, writers)
        nodes.append(Node(f"L{l}.MLP", "mlp", l, positions=all_pos))
        read(len(nodes) - 1, writers + heads)
        writers = writers + heads + [len(nodes) - 1]
    at = getattr(metric, "positions", None)
    logit_pos = [[int(q)] for q in at.tolist()] if torch.is_tensor(at) and at.dim() == 1 else all_pos
    nodes.append(Node("logit", "logit", L, positions=logit_pos, label="metric"))
    read(len(nodes) - 1, writers)
    return nodes, torch.cat(src), torch.cat(dst)


def to_graph(
    model: HookedMLLM, batch: Batch, in_nodes: list[Node], metric: Any, out: dict[str, Any], method: str, meta: dict
) -> Graph:
    """The :class:`Graph` of a remote request's reduced scores (``meta``: eap_graph's, with the metric's name)."""
    nodes, src, dst = structure(model, batch, in_nodes, metric)
    scores: Float[Tensor, " edge"] = out["scores"].float()
    meta = {**meta, "metric_clean": out["metric_clean"], "metric_corrupted": out["metric_corrupted"]}
    return Graph(nodes, src, dst, scores, out["node_scores"].float(), method, meta.pop("metric"), meta)


__all__ = [
    "GradientsNotServedError",
    "check_remote_family",
    "check_shippable",
    "check_splits",
    "compare_clean",
    "eap_memory",
    "edge_count",
    "remote_eap",
    "result_bytes",
    "to_graph",
]
