"""Which edges of a :class:`~hooks_mm.circuits.Graph` form a circuit: selection rules and connected circuits.

Two rules rank a graph and keep its top ``k`` (or everything at or above a ``threshold``):

- ``rule="edges"``: the edges of largest ``|score|`` (grouped-query units ranked by their summed score);
- ``rule="nodes"``: the nodes of largest ``|node_score|`` (inputs, heads, MLPs; the logit is always in), then
  every graph edge between two kept nodes (into the logit included); ``k`` counts nodes.

``connected=True`` then keeps only the edges on some path ``input -> ... -> logit`` made of kept edges. Under
exact edge patching (:mod:`hooks_mm.circuits.patching`) the edges it drops cannot matter: a node none of whose
kept out-edges leads to the logit is read by everything downstream at its corrupted value, and a node with no
kept path from an input computes exactly its corrupted output, so an edge out of it carries the corrupted value
whether it is kept or patched. The connected circuit has the metric of the selection it came from, with fewer
edges: it is the part of a top-k set that can matter. (Under grouped-query attention an edge unit is kept whole
when one of its edges is on such a path: the others are dropped edges too, and keeping them changes nothing.)

Example::

    keep = select_circuit(g, k=40)                          # top 40 edges by |score|
    live = select_circuit(g, k=40, connected=True)          # the part of them on input -> logit paths
    nodes = select_circuit(g, k=8, rule="nodes")            # the 8 nodes of largest |node score| and their edges
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool
from torch import Tensor

from hooks_mm.circuits.graph import Graph

RULES = ("edges", "nodes")


def connected_edges(graph: Graph, keep: Bool[Tensor, " edge"]) -> Bool[Tensor, " edge"]:
    """The edges of ``keep`` on some path from an input node to the logit node made only of edges of ``keep``.

    Example::

        live = connected_edges(g, select_circuit(g, k=40))      # live.sum() <= 40
    """
    check_keep(graph, keep)
    kinds = [n.kind for n in graph.nodes]
    if "logit" not in kinds or "input" not in kinds:
        raise ValueError(
            "a connected circuit is made of paths from an input node to the logit node, and this graph has no "
            f"{'logit' if 'logit' not in kinds else 'input'} node: build it with eap_graph (or select without "
            "connected=True)."
        )
    src, dst = graph.src[keep], graph.dst[keep]
    fwd = torch.tensor([k == "input" for k in kinds])  # reached from an input by kept edges
    back = torch.tensor([k == "logit" for k in kinds])  # reaches the logit by kept edges
    for _ in range(len(kinds)):  # a path has fewer edges than the graph has nodes
        new_fwd, new_back = fwd.clone(), back.clone()
        new_fwd[dst[fwd[src]]] = True
        new_back[src[back[dst]]] = True
        if torch.equal(new_fwd, fwd) and torch.equal(new_back, back):
            break
        fwd, back = new_fwd, new_back
    return keep & fwd[graph.src] & back[graph.dst]


def check_keep(graph: Graph, keep: Tensor) -> None:
    if not torch.is_tensor(keep) or keep.dtype != torch.bool or tuple(keep.shape) != (graph.n_edges,):
        raise ValueError(
            f"keep must be a bool mask over the graph's {graph.n_edges} edges (select_circuit's value), got "
            f"{getattr(keep, 'dtype', type(keep).__name__)} {tuple(getattr(keep, 'shape', ()))}."
        )


def _ranked(graph: Graph, units: list[list[int]], rule: str) -> Tensor:
    """|score| of each item the rule ranks: edge units, or the nodes that write (every node but the logit)."""
    if rule == "edges":
        return torch.stack([graph.scores[u].sum() for u in units]).abs() if units else torch.zeros(0)
    return graph.node_scores[_writers(graph)].abs()


def _writers(graph: Graph) -> Tensor:
    return torch.tensor([i for i, n in enumerate(graph.nodes) if n.kind != "logit"], dtype=torch.long)


def circuit_of(graph: Graph, chosen: list[int], units: list[list[int]], rule: str, connected: bool) -> Tensor:
    """The edge mask of the chosen items (indices into the rule's ranking: edge units or writing nodes), pruned
    to input -> logit paths when ``connected``; edge units kept whole (module docstring)."""
    keep = torch.zeros(graph.n_edges, dtype=torch.bool)
    if rule == "edges":
        for i in chosen:
            keep[units[i]] = True
    else:
        on = torch.tensor([n.kind == "logit" for n in graph.nodes])
        on[_writers(graph)[chosen]] = True
        keep = on[graph.src] & on[graph.dst]
    if connected:
        keep = connected_edges(graph, keep)
    for u in units:  # a unit with one kept edge is kept whole (exact patching cannot split it)
        if len(u) > 1 and bool(keep[u].any()):
            keep[u] = True
    return keep


def check_rule(rule: str, connected: bool) -> None:
    """Raise naming the fix when ``rule`` / ``connected`` are not a selection rule."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}: give one of {RULES} (top edges by |score|, or top nodes and their edges).")
    if not isinstance(connected, bool):
        raise TypeError(f"connected={connected!r}: give True (keep only input -> logit paths) or False.")


def select(
    graph: Graph, k: int | None, threshold: float | None, units: list[list[int]], rule: str, connected: bool
) -> tuple[Tensor, int]:
    """:func:`select_circuit`'s mask and how many items (edge units or nodes) the rule chose before pruning."""
    check_rule(rule, connected)
    if (k is None) == (threshold is None):
        raise ValueError("select_circuit needs exactly one of k (top-k edges) or threshold (|score| >= threshold).")
    score = _ranked(graph, units, rule)
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ValueError(f"threshold={threshold!r}: give a finite number (|score| >= threshold is kept).")
        chosen = (score >= threshold).nonzero().flatten().tolist()
    elif isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(score):
        if rule == "nodes":
            what = "nodes (inputs, heads, MLPs: the logit is always in)"
        elif all(len(u) == 1 for u in units):
            what = "edges"
        else:
            what = "edge units (edges into heads sharing a key / value head count once)"
        raise ValueError(
            f"k={k!r}: a circuit of the top k {what} needs an int in 0..{len(score)} (this graph's count)."
        )
    else:
        chosen = score.argsort(descending=True, stable=True)[:k].tolist()
    return circuit_of(graph, chosen, units, rule, connected), len(chosen)


def n_items(graph: Graph, units: list[list[int]], rule: str) -> int:
    """How many items the rule ranks (edge units, or nodes that write)."""
    return len(units) if rule == "edges" else len(_writers(graph))


def select_circuit(
    graph: Graph,
    k: int | None = None,
    threshold: float | None = None,
    units: list[list[int]] | None = None,
    *,
    rule: str = "edges",
    connected: bool = False,
) -> Bool[Tensor, " edge"]:
    """The edges of a circuit, as a bool mask over ``graph``'s edges: with ``rule="edges"`` the ``k`` of largest
    ``|score|`` (ties in edge order) or every edge with ``|score| >= threshold``; with ``rule="nodes"`` the ``k``
    nodes of largest ``|node_score|`` (or those at or above ``threshold``) and every edge between them and into
    the logit. ``connected=True`` keeps only the edges on input -> logit paths (module docstring). ``units``
    (:attr:`EdgePatcher.units`): edges that are kept or dropped together (grouped-query heads), ranked by their
    summed score; ``k`` then counts units.

    Example::

        keep = select_circuit(g, k=20)                        # keep.sum() == 20
        live = select_circuit(g, k=20, connected=True)        # the edges of keep that can matter
    """
    groups = units if units is not None else [[e] for e in range(graph.n_edges)]
    return select(graph, k, threshold, groups, rule, connected)[0]
