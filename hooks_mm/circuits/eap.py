"""Edge attribution patching (EAP, EAP-IG) over a multimodal model's nodes: one clean and one corrupted forward,
one backward (``steps`` backwards for EAP-IG), every edge scored at once.

``score(u -> v) = sum over positions and rows (a_corr(u) - a_clean(u)) . dM / d in(v)``:

- ``a(u)``, what ``u`` adds to the residual stream: input nodes, the embeddings at their positions
  (``blocks.0.hook_resid_pre``); heads, their output through ``o_proj`` and the family's post-norm
  (:func:`hooks_mm.model.branches.head_parts`); layers with no per-head output (token mixers), ``hook_attn_out``;
  MLPs, ``hook_mlp_out``. Heads and MLPs count at real (non-pad) positions.
- ``in(v)``, the residual stream ``v`` reads: an MLP, ``resid_mid`` through its own branch (``dM/d resid_mid -
  dM/d resid_post``); the logit, the final residual (``blocks.{L-1}.hook_resid_post``); a head, ``resid_pre``
  through that head alone: the vector-Jacobian product of ``dM/d z_h`` (``attn.hook_z``, head ``h``) back to
  ``resid_pre`` through the attention branch (q, k, v, norms and RoPE included). The heads' gradients sum to
  ``dM/d resid_pre - dM/d resid_mid``, which is checked (a mismatch raises: a block hooks_mm cannot split).
- ``M``: the metric (a scalar, e.g. a hooks_mm metric: the mean over rows), on the clean run for EAP; for EAP-IG
  (``steps = m``) the gradients are averaged over the embeddings ``clean + k/m (corrupted - clean)``,
  ``k = 0 .. m-1`` (the straight path from clean to corrupted INPUT activations, left Riemann sum: ``steps=1`` is
  EAP).

``node_scores[u] = (a_corr(u) - a_clean(u)) . dM / d a(u)`` (the gradient where ``u`` adds to the residual). For a
sequential block (every family :func:`eap_graph` accepts) it equals the sum of ``u``'s outgoing edge scores.

Corruptions: another batch of the same layout (another image, a blanked image, swapped text), or ``"zero"`` /
``"mean"`` ablation of the input nodes (each node's embeddings replaced by zeros / by their mean over the node's
positions in the batch).

Example::

    g = eap_graph(model, clean, corrupted, metric=answer_logprob(model, clean), inputs="cell", method="eap-ig")
    g.top_edges(10)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from einops import einsum
from torch import Tensor

from hooks_mm.circuits.graph import Graph, Node
from hooks_mm.circuits.nodes import input_nodes
from hooks_mm.layout import Modality
from hooks_mm.model.meta import WeightlessError, is_weightless
from hooks_mm.progress import check_progress
from hooks_mm.sweep.metrics import check_metric_batch

if TYPE_CHECKING:
    from hooks_mm.model import Batch, HookedMLLM

METHODS = ("eap", "eap-ig")
ABLATIONS = ("zero", "mean")


def check_family(model: HookedMLLM) -> None:
    """An error naming why EAP's residual bookkeeping does not hold for this model (before any hook)."""
    cfg, bb = model.cfg, model.adapter.backbone
    name = f"{cfg.architecture} ({bb.name} block)"
    if bb.parallel:
        raise NotImplementedError(
            f"eap_graph: {name} is a parallel block (attention and MLP both read resid_pre), so the MLP's input "
            "gradient cannot be split from the attention's: not supported yet; use attribution_patching per node."
        )
    if bb.flat:
        raise NotImplementedError(
            f"eap_graph: {name} flattens the positions before its MLP half (its residual skip bypasses the "
            "resid_mid hook point), so the MLP's input gradient cannot be read there; not supported yet."
        )
    if bb.out_scale:
        raise NotImplementedError(
            f"eap_graph: {name} multiplies each block's whole output, residual included, by {bb.out_scale}: edges "
            "are not additive through that scale; not supported yet (use attribution_patching per node)."
        )
    if cfg.cross_attn_layers:
        raise NotImplementedError(
            f"eap_graph: {name} reads its images through cross-attention layers {cfg.cross_attn_layers} (vision "
            "tiles, not LM positions): the image enters outside the input nodes; not supported yet."
        )
    if cfg.injection_layers:
        raise NotImplementedError(
            f"eap_graph: {name} injects vision features into the residual stream after layers "
            f"{cfg.injection_layers} (deepstack): those are not nodes yet; not supported."
        )
    if all(l in cfg.mixer_layers for l in range(cfg.n_layers)):
        raise NotImplementedError(
            f"eap_graph: {name} has no attention layer (every layer is a {set(cfg.mixer_layers.values())} mixer): "
            "a circuit graph needs attention heads; use decompose_resid / attribution_patching instead."
        )


def check_corrupted(model: HookedMLLM, batch: Batch, corrupted: Any) -> Batch | str:
    """The corrupted batch (same shape and layout as ``batch``) or the ablation name, with clear errors."""
    if isinstance(corrupted, str):
        if corrupted not in ABLATIONS:
            raise ValueError(
                f"corrupted={corrupted!r}: pass a batch of the same layout, or one of {ABLATIONS} (ablation of the "
                "input nodes)."
            )
        return corrupted
    if corrupted is None:
        raise ValueError(
            "eap_graph needs a corruption: pass corrupted= a batch of the same layout (another image, a blanked "
            f"image, swapped text) or one of {ABLATIONS}."
        )
    corr = model.prepare(corrupted)
    if corr.shape != batch.shape:
        raise ValueError(
            f"the corrupted batch has shape {corr.shape}, the clean one {batch.shape}: EAP compares the same "
            "positions, so make the corrupted inputs with the same prompts and image sizes (same layout)."
        )
    a, b = batch.layout, corr.layout
    for f in ("modality", "image_index", "tile", "grid_row", "grid_col", "video_index", "audio_index", "frame"):
        if not torch.equal(getattr(a, f), getattr(b, f)):
            rows = (getattr(a, f) != getattr(b, f)).any(1).nonzero().flatten().tolist()
            raise ValueError(
                f"the corrupted batch is laid out differently from the clean one ({f} differs in rows {rows}; clean "
                f"row {rows[0]}: {a.describe(rows[0])}, corrupted: {b.describe(rows[0])}): corrupt the content "
                "(another image of the same size, a blanked image, text of the same token length), not the layout."
            )
    return corr


def _metric_name(metric: Any) -> str:
    return str(getattr(metric, "name", None) or getattr(metric, "__qualname__", None) or repr(metric))


def _scalar(value: Any, metric: Any) -> Tensor:
    if not torch.is_tensor(value) or value.dim() != 0:
        shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
        raise ValueError(
            f"eap_graph needs a metric returning one scalar tensor (the mean over rows), {_metric_name(metric)} "
            f"returned {shape}: reduce it (e.g. .mean()) or use a hooks_mm metric (answer_logprob, logit_diff)."
        )
    if not value.requires_grad:
        raise ValueError(
            f"eap_graph: the metric {_metric_name(metric)} does not depend on the logits through autograd (constant "
            "or detached): compute it from the logits with torch operations."
        )
    return value


def eap_graph(
    model: HookedMLLM,
    clean: Any,
    corrupted: Any,
    metric: Callable[[Tensor], Tensor],
    *,
    inputs: str = "image",
    method: str = "eap",
    steps: int = 5,
    window: int = 10,
    progress: bool | None = None,
    remote: Any = None,
    **remote_options: Any,
) -> Graph:
    """The circuit graph of ``metric`` on ``clean``: EAP (or EAP-IG) scores of every edge and node (module docstring).

    ``corrupted``: a batch of the same layout, or ``"zero"`` / ``"mean"``; ``inputs``: the granularity of input
    nodes (``"image"``, ``"cell"``, ``"tile"``, ``"frame"``; :mod:`hooks_mm.circuits.nodes`); ``method``: ``"eap"``
    or ``"eap-ig"`` with ``steps`` gradient points; ``window``: audio steps per node with ``inputs="frame"``;
    ``progress``: a bar over the gradient passes (None: automatic, :mod:`hooks_mm.progress`).
    ``remote``: None (hooks_mm's hooks, here), else through nnsight (``False``: in process, ``"local"``: nnsight's
    serialisation round trip, ``True`` / a host URL: NDIF) in one request returning only the scores; options
    ``backend``, ``max_memory``, ``api_key``, ``max_request_bytes`` (:mod:`hooks_mm.circuits.remote`).

    Example::

        blank = {**clean, "pixel_values": torch.zeros_like(clean["pixel_values"])}
        g = eap_graph(model, clean, blank, answer_logprob(model, clean), inputs="cell")
        g.top_edges(5)
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}: pick one.")
    check_progress(progress, "eap_graph")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an int >= 1 (gradient points of EAP-IG).")
    if not callable(metric):
        raise TypeError(
            f"metric must be a callable of the logits (e.g. answer_logprob(model, inputs)), got {metric!r}."
        )
    if remote is None and remote_options:
        raise TypeError(f"eap_graph options {sorted(remote_options)} apply to remote runs: pass remote= as well.")
    check_family(model)
    batch = model.prepare(clean)
    check_metric_batch(metric, batch)
    corr = check_corrupted(model, batch, corrupted)
    in_nodes, masks = input_nodes(batch.layout, inputs, window)
    m = 1 if method == "eap" else steps
    if remote is not None:  # i18-remote: one nnsight request, scores reduced on the server
        from hooks_mm.circuits.remote import remote_eap, to_graph

        out = remote_eap(model, batch, corr, metric, in_nodes, masks, m, remote, remote_options)
        meta = {**graph_meta(model, batch, corrupted, m, inputs), "metric": _metric_name(metric), "remote": str(remote)}
        return to_graph(model, batch, in_nodes, metric, out, method, meta)
    check_local(model)
    from hooks_mm.circuits.passes import run_passes  # one module per concern: the hooked forwards and backwards

    run = run_passes(model, batch, corr, masks, metric, m, _scalar, progress)
    return _assemble(model, batch, run, in_nodes, masks, method, m, corrupted, inputs, metric)


def _assemble(
    model: HookedMLLM, batch: Batch, run: Any, in_nodes: list[Node], masks: Tensor, method: str, m: int,
    corrupted: Any, inputs: str, metric: Any,
) -> Graph:  # fmt: skip
    """Nodes, edges and scores from the passes' activations and gradients."""
    L = model.cfg.n_layers
    real = (batch.layout.modality != Modality.PAD).to(run.ediff)
    all_pos = [row.nonzero().flatten().tolist() for row in real.bool()]
    nodes = list(in_nodes)
    writers: list[tuple[int, Callable[[Tensor], Tensor]]] = []  # (stage it writes at, grad [b p d] -> scores [k])
    in_masks = masks.to(run.ediff)
    writers.append((0, lambda g: einsum(in_masks, (run.ediff * g).sum(-1), "n b p, b p -> n")))
    readers: list[tuple[int, list[int], Tensor]] = []  # (stage it reads at, node indices, grads [k b p d])
    node_scores = [einsum(in_masks, (run.ediff * run.g_pre0).sum(-1), "n b p, b p -> n")]
    for l in range(L):
        if l in run.head_diff:
            hd = run.head_diff[l] * real[..., None, None]
            idx = list(range(len(nodes), len(nodes) + hd.shape[2]))
            nodes += [Node(f"L{l}.H{h}", "head", l, head=h, positions=all_pos) for h in range(hd.shape[2])]
            writers.append((2 * l + 1, lambda g, hd=hd: einsum(hd, g, "b p h d, b p d -> h")))
            readers.append((2 * l + 1, idx, run.g_heads[l]))
            node_scores.append(einsum(hd, run.g_mid[l], "b p h d, b p d -> h"))
        else:
            ad = run.attn_diff[l] * real[..., None]
            idx = [len(nodes)]
            nodes.append(Node(f"L{l}.attn", "attn", l, positions=all_pos))
            writers.append((2 * l + 1, lambda g, ad=ad: (ad * g).sum()[None]))
            readers.append((2 * l + 1, idx, (run.g_pre[l] - run.g_mid[l])[None]))
            node_scores.append((ad * run.g_mid[l]).sum()[None])
        md = run.mlp_diff[l] * real[..., None]
        readers.append((2 * l + 2, [len(nodes)], (run.g_mid[l] - run.g_post[l])[None]))
        nodes.append(Node(f"L{l}.MLP", "mlp", l, positions=all_pos))
        writers.append((2 * l + 2, lambda g, md=md: (md * g).sum()[None]))
        node_scores.append((md * run.g_post[l]).sum()[None])
    readers.append((2 * L + 1, [len(nodes)], run.g_post[L - 1][None]))
    read = getattr(metric, "positions", None)  # a PositionMetric: the one position per row it reads
    logit_pos = [[int(q)] for q in read.tolist()] if torch.is_tensor(read) and read.dim() == 1 else all_pos
    nodes.append(Node("logit", "logit", L, positions=logit_pos, label="metric"))
    node_scores.append(torch.zeros(1, dtype=run.ediff.dtype))
    starts, k = [], 0
    for stage, fn in writers:  # node index ranges of each writer, in node order
        n = len(fn(torch.zeros_like(run.ediff)))
        starts.append((stage, k, n, fn))
        k += n
    src, dst, scores = [], [], []
    for r_stage, r_idx, grads in readers:
        for j, g in zip(r_idx, grads):
            for w_stage, k0, n, fn in starts:
                if w_stage >= r_stage:
                    break
                src.append(torch.arange(k0, k0 + n))
                dst.append(torch.full((n,), j))
                scores.append(fn(g).float())
    meta = {
        **graph_meta(model, batch, corrupted, m, inputs),
        "metric_clean": run.metric_clean,
        "metric_corrupted": run.metric_corrupted,
    }
    return Graph(
        nodes,
        torch.cat(src),
        torch.cat(dst),
        torch.cat(scores).detach().cpu(),
        torch.cat(node_scores).detach().float().cpu(),
        method,
        _metric_name(metric),
        meta,
    )


def graph_meta(model: HookedMLLM, batch: Batch, corrupted: Any, m: int, inputs: str) -> dict[str, Any]:
    """The JSON-safe ``Graph.meta`` of one batch (without the metric values)."""
    return {
        "architecture": model.cfg.architecture,
        "n_layers": model.cfg.n_layers,
        "n_heads": model.cfg.n_heads,
        "batch_shape": list(batch.shape),
        "layout": batch.layout.describe(0),
        "str_tokens": _str_tokens(batch),
        "corruption": corrupted if isinstance(corrupted, str) else "batch",
        "steps": m,
        "inputs": inputs,
        "head_inputs": "per-head (resid_pre through each head: VJP of dM/dz_h)",
    }


def check_local(model: HookedMLLM) -> None:
    """A clear error for a weightless model (``HookedMLLM.from_config``) on the local path (before any hook)."""
    if is_weightless(model):
        raise WeightlessError(
            f"eap_graph: this {model.cfg.architecture} holds no weights (HookedMLLM.from_config), so its forwards and "
            "backwards cannot run here: pass remote=True or remote=URL (the server runs them), or load the weights "
            "with HookedMLLM.from_pretrained."
        )


def _str_tokens(batch: Batch) -> list[str]:
    try:
        return list(batch.str_tokens[0])
    except ValueError:  # no tokenizer
        return []


__all__ = ["eap_graph", "check_family", "check_corrupted"]
