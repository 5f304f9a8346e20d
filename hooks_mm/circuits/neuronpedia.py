"""Export a circuit :class:`~hooks_mm.circuits.Graph` to the graph JSON of circuit-tracer / Neuronpedia, and back.

The schema is circuit-tracer's ``circuit_tracer/frontend/graph_models.py`` (``Model``: ``metadata``, ``qParams``,
``nodes``, ``links``), the file its local server and Neuronpedia's graph viewer open. The mapping:

- inputs -> ``feature_type="embedding"``, ``layer="E"`` (an image cell is one embedding node; its caption in their
  viewer is the token at its ``ctx_idx``, the hooks_mm label is in ``clerp``);
- attention heads -> ``"lorsa error"`` and MLPs -> ``"mlp reconstruction error"`` at ``layer=str(l)``: their schema
  has no head / whole-MLP node, and these are the node types their viewers draw WITHOUT looking up a dictionary
  feature (a ``"cross layer transcoder"`` node would make Neuronpedia fetch the dashboard of an unrelated
  transcoder feature); ``feature`` is the head index (-1: the MLP, -2: a whole attention layer);
- the metric node -> ``"logit"`` (``is_target_logit=True``; ``clerp`` ``Output "<label>" (p=...)``, ``p`` from
  ``graph.meta["answer_prob"]`` when there, else ``nan``);
- ``ctx_idx``: the node's last position in batch row 0 (heads and MLPs act at every position: the last one);
  ``node_id`` = ``f"{layer}_{feature}_{ctx_idx}"`` as theirs; ``influence``: the cumulative share of
  ``|node_scores|`` down to this node (their pruning keeps nodes with ``influence <= threshold``);
- edges -> ``links`` ``{"source", "target", "weight": score}``.

What their schema cannot carry goes in ``metadata["hooks_mm"]``: every node's hooks_mm fields (id, kind, head,
modality, image / tile / row / col / frame, the positions of EVERY batch row, label), ``node_scores``, ``method``,
``metric``, ``meta`` and the edge count before ``k`` / ``threshold``; :func:`from_neuronpedia` reads them back, so
the round trip keeps the nodes, the edges and their scores exactly (float32). Lost: the edges left out by ``k`` /
``threshold`` (their number is kept); a graph edited in their viewer keeps only its links' weights (supernodes,
pins and clerps of ``qParams`` are not read back).

Example::

    data = to_neuronpedia(graph, slug="toy-llava-colour", scan="toy-llava")
    Path("toy-llava-colour.json").write_text(json.dumps(data))   # open in circuit-tracer's server / Neuronpedia
    same = from_neuronpedia(json.loads(Path("toy-llava-colour.json").read_text()))
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from hooks_mm.circuits.graph import Graph, Node

FORMAT = 1  # of metadata["hooks_mm"]
FEATURE_TYPE = {"input": "embedding", "head": "lorsa error", "attn": "lorsa error", "mlp": "mlp reconstruction error"}
FEATURE_TYPE["logit"] = "logit"


def _ctx(node: Node, n_tokens: int) -> int:
    row0 = node.positions[0] if node.positions else []
    return int(row0[-1]) if row0 else n_tokens - 1


def _feature(node: Node, index: int) -> int:
    if node.kind == "input":
        return index
    if node.kind == "head":
        return node.head
    return {"mlp": -1, "attn": -2, "logit": 0}[node.kind]


def _influence(graph: Graph) -> list[float]:
    mag = graph.node_scores.double().abs()
    total = float(mag.sum())
    out = [0.0] * len(graph.nodes)
    if total > 0:
        order = mag.argsort(descending=True, stable=True)
        cum = mag[order].cumsum(0) / total
        for i, c in zip(order.tolist(), cum.tolist()):
            out[i] = float(c)
    return out


def to_neuronpedia(
    graph: Graph,
    *,
    slug: str,
    scan: str | None = None,
    prompt_tokens: list[str] | None = None,
    k: int | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """The circuit-tracer / Neuronpedia graph JSON (a dict; ``json.dumps`` it) of ``graph``.

    ``slug``: the graph's name in their viewer; ``scan``: the model's name there (default
    ``graph.meta["architecture"]``); ``prompt_tokens``: one string per position of row 0 (default
    ``graph.meta["str_tokens"]``); ``k`` / ``threshold``: export only the ``k`` strongest edges / those with
    ``|score| >= threshold`` (all by default). See the module docstring for the mapping and what is lost.
    """
    if not isinstance(graph, Graph):
        raise TypeError(
            f"to_neuronpedia takes a hooks_mm.circuits.Graph (eap_graph's result), not {type(graph).__name__}."
        )
    if not isinstance(slug, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", slug):
        raise ValueError(f"slug={slug!r}: name the graph with letters, digits, '.', '_' or '-' (no spaces or '/').")
    tokens = prompt_tokens if prompt_tokens is not None else graph.meta.get("str_tokens")
    if not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError(
            "the graph's meta has no str_tokens (row 0's token strings): pass prompt_tokens=str_tokens(model, inputs)."
        )
    scan = scan if scan is not None else graph.meta.get("architecture")
    if not isinstance(scan, str) or not scan:
        raise ValueError("no scan: pass scan= (the model's name in their viewer, e.g. 'toy-llava').")
    if not torch.isfinite(graph.scores).all() or not torch.isfinite(graph.node_scores).all():
        raise ValueError(
            "the graph's scores hold NaN / inf (a failed attribution): JSON cannot carry them, fix the run."
        )
    if threshold is not None and not threshold >= 0:
        raise ValueError(f"threshold={threshold!r}: it is on |score|, pass a number >= 0.")
    if k is not None and (not isinstance(k, int) or k < 0):
        raise ValueError(f"k={k!r}: pass the number of strongest edges to export (an int >= 0), or None for all.")
    n_tok = len(tokens)
    for node in graph.nodes:
        bad = [p for p in (node.positions[0] if node.positions else []) if not 0 <= p < n_tok]
        if bad:
            raise ValueError(
                f"node {node.id} covers positions {bad[:3]} outside the {n_tok} prompt_tokens: pass row 0's tokens."
            )
    influence = _influence(graph)
    prob = graph.meta.get("answer_prob")
    nodes, ids, seen = [], [], {}
    for i, node in enumerate(graph.nodes):
        layer = "E" if node.kind == "input" else str(node.layer)
        feature, ctx = _feature(node, i), _ctx(node, n_tok)
        node_id = f"{layer}_{feature}_{ctx}"
        if node_id in seen:
            raise ValueError(
                f"nodes {graph.nodes[seen[node_id]].id} and {node.id} would share the id {node_id} in their schema "
                "(same layer, head and last position): export graphs whose heads are not split by position group."
            )
        seen[node_id] = i
        clerp = node.label
        if node.kind == "logit":
            p = f"{prob:.3f}" if isinstance(prob, (int, float)) and math.isfinite(prob) else "nan"
            clerp = f'Output "{node.label}" (p={p})'
        nodes.append(
            {
                "node_id": node_id,
                "feature": feature,
                "layer": layer,
                "ctx_idx": ctx,
                "feature_type": FEATURE_TYPE[node.kind],
                "token_prob": float(prob) if node.kind == "logit" and isinstance(prob, (int, float)) else 0.0,
                "is_target_logit": node.kind == "logit",
                "run_idx": 0,
                "reverse_ctx_idx": 0,
                "jsNodeId": node_id,
                "clerp": clerp,
                "influence": influence[i],
                "activation": None,
            }
        )
        ids.append(node_id)
    order = graph.scores.abs().argsort(descending=True, stable=True)
    if threshold is not None:
        order = order[graph.scores.abs()[order] >= threshold]
    if k is not None:
        order = order[:k]
    links = [
        {"source": ids[int(graph.src[e])], "target": ids[int(graph.dst[e])], "weight": float(graph.scores[e])}
        for e in sorted(order.tolist())
    ]
    extra = {
        "format": FORMAT,
        "nodes": [n.to_dict() for n in graph.nodes],
        "node_ids": ids,
        "node_scores": graph.node_scores.double().tolist(),
        "method": graph.method,
        "metric": graph.metric,
        "meta": graph.meta,
        "n_edges": graph.n_edges,
        "edges_exported": {"k": k, "threshold": threshold, "n": len(links)},
    }
    metadata = {
        "slug": slug,
        "scan": scan,
        "transcoder_list": [],
        "prompt_tokens": list(tokens),
        "prompt": "".join(tokens),
        "node_threshold": None,
        "schema_version": 1,
        "info": {"creator_name": "hooks_mm", "generator": {"name": "hooks_mm", "url": "hooks_mm.circuits"}},
        "hooks_mm": extra,
    }
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": nodes, "links": links}


def from_neuronpedia(data: dict[str, Any]) -> Graph:
    """The :class:`~hooks_mm.circuits.Graph` of a graph JSON written by :func:`to_neuronpedia` (edge scores
    from its ``links``; the rest from ``metadata["hooks_mm"]``)."""
    if not isinstance(data, dict):
        raise TypeError(f"from_neuronpedia takes the parsed JSON (a dict: json.load(f)), not {type(data).__name__}.")
    missing = [key for key in ("metadata", "nodes", "links") if key not in data]
    if missing:
        raise ValueError(f"not a circuit-tracer graph JSON: no {missing}. Pass the dict to_neuronpedia returned.")
    extra = data["metadata"].get("hooks_mm")
    if not isinstance(extra, dict) or extra.get("format") != FORMAT:
        raise ValueError(
            "this graph JSON was not written by hooks_mm's to_neuronpedia (no metadata['hooks_mm'] of format "
            f"{FORMAT}): its heads / MLPs / image cells cannot be recovered; open it in circuit-tracer's viewer."
        )
    ids = extra["node_ids"]
    index = {nid: i for i, nid in enumerate(ids)}
    present = {n.get("node_id") for n in data["nodes"]}
    if present != set(ids):
        raise ValueError(
            f"the JSON's nodes ({len(present)}) are not the {len(ids)} hooks_mm exported: nodes were removed or "
            "added in the file; export the graph again."
        )
    src, dst, scores = [], [], []
    for link in data["links"]:
        s, t = link.get("source"), link.get("target")
        if s not in index or t not in index:
            raise ValueError(f"link {s} -> {t} names a node the graph does not hold: the file is inconsistent.")
        w = link.get("weight")
        if not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"link {s} -> {t} has weight {w!r}: every link needs a finite number.")
        src.append(index[s]), dst.append(index[t]), scores.append(float(w))
    return Graph(
        nodes=[Node.from_dict(n) for n in extra["nodes"]],
        src=torch.tensor(src, dtype=torch.long),
        dst=torch.tensor(dst, dtype=torch.long),
        scores=torch.tensor(scores, dtype=torch.float32),
        node_scores=torch.tensor(extra["node_scores"], dtype=torch.float32),
        method=extra["method"],
        metric=extra["metric"],
        meta=dict(extra["meta"]),
    )
