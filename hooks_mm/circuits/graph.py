"""The circuit graph value: nodes of one batch (inputs per modality span, heads, MLPs, the metric) and scored edges.

A :class:`Graph` is what :func:`hooks_mm.circuits.eap_graph` returns and what circuits, faithfulness, views and
exports read. Its fields are fixed (new fields may be added, none renamed):

- ``nodes``: list of :class:`Node`, upstream before downstream (inputs, then per layer its heads then its MLP,
  then the ``"logit"`` node);
- ``src``, ``dst``: long [E], node indices of each edge (``src`` writes into the residual stream that ``dst``
  reads); ``scores``: float [E], the edge's score (EAP: ``(a_corr(src) - a_clean(src)) . dM/d in(dst)``, summed
  over positions, the metric ``M`` being the mean over batch rows);
- ``node_scores``: float [N], ``(a_corr(u) - a_clean(u)) . dM/d a(u)`` for every node that writes (0 for
  ``"logit"``);
- ``method`` ("eap" | "eap-ig"), ``metric`` (a description), ``meta`` (JSON-safe: ``architecture``, ``n_layers``,
  ``n_heads``, ``str_tokens`` (row 0), ``layout`` (``layout.describe(0)``), ``corruption``, ``steps``,
  ``inputs``, ``head_inputs``, ``batch_shape``, ...).

Node ids are stable strings: ``"input:image0"`` (a whole image), ``"input:image0/t0r1c2"`` (one patch cell: tile 0,
row 1, col 2), ``"input:image0/t1"`` (one tile), ``"input:video0/f3"`` (one video frame), ``"input:audio0/w2"``
(an audio window), ``"input:instruction"``, ``"input:text"`` (other text), ``"input:special"``,
``"L{l}.H{h}"``, ``"L{l}.MLP"``, ``"L{l}.attn"`` (a layer with no per-head output, as one node), ``"logit"``.

Example::

    g = eap_graph(model, clean, corrupted, metric=answer_logprob(model, clean), inputs="cell")
    g.top_edges(5)          # [('input:image0/t0r1c1', 'L1.H3', 0.42), ...]
    Graph.from_dict(json.loads(json.dumps(g.to_dict())))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

KINDS = ("input", "head", "attn", "mlp", "logit")


@dataclass
class Node:
    """One node of a circuit graph.

    - ``id``: stable string (module docstring); ``kind``: "input" | "head" | "attn" (a whole attention layer with
      no per-head output) | "mlp" | "logit";
    - ``layer``: -1 for inputs, ``n_layers`` for the logit; ``head``: the head index (-1 elsewhere);
    - ``modality``: "image" | "video" | "audio" | "text" | "instruction" | "special" for inputs ("" elsewhere);
      ``image`` (which image / video / audio clip of the row), ``tile``, ``row``, ``col``, ``frame``: -1 where
      they do not apply;
    - ``positions``: per batch row, the sequence positions the node covers (inputs: its tokens; heads, MLPs: every
      non-pad position; logit: the positions the metric reads when known, else every non-pad position);
    - ``label``: a short text for views.
    """

    id: str
    kind: str
    layer: int
    head: int = -1
    modality: str = ""
    image: int = -1
    tile: int = -1
    row: int = -1
    col: int = -1
    frame: int = -1
    positions: list[list[int]] = field(default_factory=list)
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"node {self.id!r}: kind {self.kind!r} is not one of {KINDS}: use one of them.")
        if not self.label:
            self.label = self.id.removeprefix("input:")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Node":
        return Node(**{**d, "positions": [list(map(int, p)) for p in d.get("positions", [])]})


@dataclass
class Graph:
    """Nodes and scored edges of one batch's metric (fields: module docstring).

    Example::

        g.top_edges(10)                       # the 10 edges of largest |score|: (src id, dst id, score)
        g.edges_above(0.1)                    # every edge with |score| >= 0.1
        g.node("L1.H3"), g.index("logit")     # a Node by id, its index
    """

    nodes: list[Node]
    src: Int[Tensor, " edge"]
    dst: Int[Tensor, " edge"]
    scores: Float[Tensor, " edge"]
    node_scores: Float[Tensor, " node"]
    method: str
    metric: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, e = len(self.nodes), len(self.src)
        if not (len(self.dst) == len(self.scores) == e and len(self.node_scores) == n):
            raise ValueError(
                f"a Graph needs src, dst, scores of one length and node_scores of one per node: got {e}, "
                f"{len(self.dst)}, {len(self.scores)} edges and {len(self.node_scores)} node scores for {n} nodes."
            )
        if e and (int(self.src.max()) >= n or int(self.dst.max()) >= n or int(min(self.src.min(), self.dst.min())) < 0):
            raise ValueError(f"edge endpoints must be node indices in 0..{n - 1}: fix src / dst.")
        self._ids = {nd.id: i for i, nd in enumerate(self.nodes)}
        if len(self._ids) != n:
            raise ValueError("node ids must be unique: two nodes share an id.")

    def __repr__(self) -> str:
        return f"Graph({self.method}, {len(self.nodes)} nodes, {len(self.src)} edges, metric={self.metric!r})"

    def _repr_html_(self) -> str:  # issue 20: Jupyter shows counts and the top edges
        from hooks_mm.vis.display import graph_html_summary

        return graph_html_summary(self)

    @property
    def n_edges(self) -> int:
        return len(self.src)

    def index(self, node_id: str) -> int:
        """The index of the node with id ``node_id``."""
        if node_id not in self._ids:
            raise KeyError(f"no node {node_id!r} in this graph: pick one of graph.nodes (e.g. {self.nodes[0].id!r}).")
        return self._ids[node_id]

    def node(self, node_id: str) -> Node:
        return self.nodes[self.index(node_id)]

    def edge_index(self, src: str, dst: str) -> int:
        """The index of the edge ``src -> dst`` (KeyError when there is none)."""
        i, j = self.index(src), self.index(dst)
        hit = ((self.src == i) & (self.dst == j)).nonzero().flatten()
        if len(hit) == 0:
            raise KeyError(f"no edge {src} -> {dst}: edges go from a node to nodes that read it later.")
        return int(hit[0])

    def score(self, src: str, dst: str) -> float:
        """The score of the edge ``src -> dst``."""
        return float(self.scores[self.edge_index(src, dst)])

    def _listed(self, order: Tensor) -> list[tuple[str, str, float]]:
        ids = [n.id for n in self.nodes]
        return [(ids[int(self.src[i])], ids[int(self.dst[i])], float(self.scores[i])) for i in order]

    def top_edges(self, k: int) -> list[tuple[str, str, float]]:
        """The ``k`` edges of largest ``|score|``, largest first, as ``(src id, dst id, score)``."""
        if k < 0:
            raise ValueError(f"top_edges needs k >= 0, got {k}.")
        return self._listed(self.scores.abs().argsort(descending=True, stable=True)[:k])

    def edges_above(self, threshold: float) -> list[tuple[str, str, float]]:
        """Every edge with ``|score| >= threshold``, largest first."""
        order = self.scores.abs().argsort(descending=True, stable=True)
        return self._listed(order[self.scores.abs()[order] >= threshold])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (plain lists and numbers); :meth:`from_dict` reads it back."""
        return {
            "nodes": [n.to_dict() for n in self.nodes],
            "src": self.src.tolist(),
            "dst": self.dst.tolist(),
            "scores": self.scores.double().tolist(),
            "node_scores": self.node_scores.double().tolist(),
            "method": self.method,
            "metric": self.metric,
            "meta": self.meta,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Graph":
        return Graph(
            nodes=[Node.from_dict(n) for n in d["nodes"]],
            src=torch.tensor(d["src"], dtype=torch.long),
            dst=torch.tensor(d["dst"], dtype=torch.long),
            scores=torch.tensor(d["scores"], dtype=torch.float32),
            node_scores=torch.tensor(d["node_scores"], dtype=torch.float32),
            method=d["method"],
            metric=d["metric"],
            meta=dict(d.get("meta", {})),
        )
