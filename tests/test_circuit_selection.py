"""Circuit selection rules (hooks_mm/circuits/selection.py): connected circuits on hand-built graphs whose answer
is known, the node rule, exactness of the pruning under exact edge patching, the random controls, misuse."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_clean
from test_circuit_faithfulness import complete_graph, state, tiny, toy, unchanged

from hooks_mm.circuits import Graph, Node, connected_edges, select_circuit
from hooks_mm.circuits.faithfulness import EdgePatcher, faithfulness, faithfulness_curve
from hooks_mm.sweep.metrics import answer_logprob

# 0 input:a, 1 input:b, 2 L0.H0, 3 L0.H1, 4 L0.MLP, 5 L1.H0, 6 L1.H1, 7 L1.MLP, 8 logit
IDS = ["input:a", "input:b", "L0.H0", "L0.H1", "L0.MLP", "L1.H0", "L1.H1", "L1.MLP", "logit"]


def hand_graph(node_scores: list[float] | None = None) -> Graph:
    """Every edge from a node into every later node, scores 0 (the rules under test read only the kept set)."""
    nodes = [Node("input:a", "input", -1, modality="image"), Node("input:b", "input", -1, modality="text")]
    for l in range(2):
        nodes += [Node(f"L{l}.H{h}", "head", l, head=h) for h in range(2)] + [Node(f"L{l}.MLP", "mlp", l)]
    nodes.append(Node("logit", "logit", 2))
    later = lambda u, v: v.kind != "input" and (v.layer > u.layer or (v.layer == u.layer and v.kind == "mlp"))  # noqa: E731
    pairs = [(i, j) for i, u in enumerate(nodes) for j, v in enumerate(nodes) if u.kind != "logit" and u is not v]
    pairs = [(i, j) for i, j in pairs if later(nodes[i], nodes[j])]
    src, dst = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    ns = torch.tensor(node_scores if node_scores is not None else [0.0] * len(nodes))
    return Graph(nodes, src, dst, torch.zeros(len(pairs)), ns, "eap", "test")


def mask(g: Graph, *edges: str) -> torch.Tensor:
    keep = torch.zeros(g.n_edges, dtype=torch.bool)
    for e in edges:
        a, b = e.split("->")
        keep[g.edge_index(a, b)] = True
    return keep


def edges_of(g: Graph, keep: torch.Tensor) -> set[str]:
    return {f"{g.nodes[int(g.src[e])].id}->{g.nodes[int(g.dst[e])].id}" for e in keep.nonzero().flatten().tolist()}


CHAIN = ("input:a->L0.H0", "L0.H0->L1.MLP", "L1.MLP->logit")
NO_EXIT = ("input:b->L0.H1", "L0.H1->L1.H0")  # L1.H0 writes into nothing kept
NO_ENTRY = ("L0.MLP->L1.H1", "L1.H1->logit")  # nothing kept writes into L0.MLP


def test_connected_edges_on_hand_built_graphs() -> None:
    g = hand_graph()
    keep = mask(g, *CHAIN, *NO_EXIT, *NO_ENTRY)
    assert edges_of(g, connected_edges(g, keep)) == set(CHAIN)
    # one edge into L0.MLP from an input makes the dangling branch a path: both its edges come back
    revived = mask(g, *CHAIN, *NO_EXIT, *NO_ENTRY, "input:b->L0.MLP")
    assert edges_of(g, connected_edges(g, revived)) == {*CHAIN, *NO_ENTRY, "input:b->L0.MLP"}
    # an input straight into the logit is a path; an input into a node that reaches nothing is not
    assert edges_of(g, connected_edges(g, mask(g, "input:a->logit", "input:b->L1.H0"))) == {"input:a->logit"}
    # a path with a gap (L0.H0 -> L1.MLP missing) is no path
    assert not connected_edges(g, mask(g, "input:a->L0.H0", "L1.MLP->logit")).any()
    assert not connected_edges(g, torch.zeros(g.n_edges, dtype=torch.bool)).any()
    every = torch.ones(g.n_edges, dtype=torch.bool)
    assert torch.equal(connected_edges(g, every), every)  # every node of the full graph is on some path


def test_select_circuit_connected_prunes_the_top_k() -> None:
    g = hand_graph()
    order = [*CHAIN, *NO_EXIT, *NO_ENTRY]
    for rank, e in enumerate(order):  # scores in decreasing |score|, signs mixed
        g.scores[g.edge_index(*e.split("->"))] = (-1) ** rank * (10.0 - rank)
    assert edges_of(g, select_circuit(g, k=7)) == set(order)
    assert edges_of(g, select_circuit(g, k=7, connected=True)) == set(CHAIN)
    assert edges_of(g, select_circuit(g, k=2, connected=True)) == set()  # the top 2 edges are no path yet
    assert edges_of(g, select_circuit(g, threshold=7.5, connected=True)) == set(CHAIN)


def test_node_rule_keeps_the_edges_between_the_top_nodes() -> None:
    scores = [5.0, 0.5, -4.0, 0.1, 0.2, 0.3, -0.4, 3.0, 0.0]  # top: input:a, L0.H0, L1.MLP
    g = hand_graph(scores)
    top3 = {f"{a}->{b}" for a in ("input:a", "L0.H0", "L1.MLP") for b in ("L0.H0", "L1.MLP", "logit") if a != b}
    top3 -= {"L1.MLP->L0.H0"}
    assert edges_of(g, select_circuit(g, k=3, rule="nodes")) == top3
    assert edges_of(g, select_circuit(g, threshold=3.0, rule="nodes")) == top3
    assert edges_of(g, select_circuit(g, k=2, rule="nodes")) == {"input:a->L0.H0", "input:a->logit", "L0.H0->logit"}
    assert not select_circuit(g, k=0, rule="nodes").any()
    # other top nodes: every edge among them, the logit included, and no other
    g2 = hand_graph([5.0, 0.0, 0.0, 4.0, 0.0, 3.0, 0.0, 0.0, 0.0])
    assert edges_of(g2, select_circuit(g2, k=3, rule="nodes")) == {
        "input:a->L0.H1", "input:a->L1.H0", "input:a->logit", "L0.H1->L1.H0", "L0.H1->logit", "L1.H0->logit",
    }  # fmt: skip


def test_units_are_kept_whole() -> None:
    """Grouped-query units: an edge unit with one edge on a path is kept whole (exact patching cannot split it)."""
    g = hand_graph()
    unit = [g.edge_index("input:a", "L1.H0"), g.edge_index("input:a", "L1.H1")]
    units = [unit] + [[e] for e in range(g.n_edges) if e not in unit]
    g.scores[unit[0]], g.scores[g.edge_index("L1.H0", "logit")] = 3.0, 2.0
    keep = select_circuit(g, k=2, units=units, connected=True)
    assert edges_of(g, keep) == {"input:a->L1.H0", "input:a->L1.H1", "L1.H0->logit"}
    assert edges_of(g, connected_edges(g, keep)) == {"input:a->L1.H0", "L1.H0->logit"}  # the unit's other edge


@pytest.mark.parametrize("which", ["toy-llava", "llava"])
def test_pruned_edges_cannot_matter_under_exact_patching(which: str) -> None:
    """The connected circuit has the metric of the selection it came from (the dropped edges carry corrupted
    values either way), with fewer edges; dropping any one of its own edges changes the metric."""
    model, clean, corrupted = toy() if which == "toy-llava" else tiny("llava")  # tiny LLaVA: grouped-query heads
    before = state(model)
    g = complete_graph(model, clean, seed=1)
    metric = answer_logprob(model, clean)
    ep = EdgePatcher(model, g, clean, corrupted, metric)
    checked, pruned = 0, 0
    for k in (10, 30, len(ep.units) * 3 // 4):
        keep = select_circuit(g, k=k, units=ep.units)
        live = select_circuit(g, k=k, units=ep.units, connected=True)
        assert bool((live <= keep).all())
        pruned += int(live.sum()) < int(keep.sum())
        assert abs(ep.metric(live) - ep.metric(keep)) < 1e-5 * max(1.0, abs(ep.m_clean))
        f = faithfulness(model, g, clean, corrupted, metric, k=k, connected=True, n_random=0, patcher=ep)
        assert f.k == int(live.sum()) and abs(f.value - ep.faithfulness(keep)) < 1e-5
        for e in live.nonzero().flatten().tolist()[:6]:  # a kept path edge is not neutral
            unit = next(u for u in ep.units if e in u)
            less = live.clone()
            less[unit] = False
            checked += abs(ep.metric(less) - ep.metric(live)) > 1e-6
    assert checked > 0 and pruned > 0
    assert_clean(model)
    assert unchanged(model, before)


def test_controls_apply_the_same_rule_to_random_rankings() -> None:
    model, clean, corrupted = toy()
    g = complete_graph(model, clean)
    g.node_scores = torch.randn(len(g.nodes), generator=torch.Generator().manual_seed(2))
    metric = answer_logprob(model, clean)
    ep = EdgePatcher(model, g, clean, corrupted, metric)
    f = faithfulness(model, g, clean, corrupted, metric, k=5, rule="nodes", n_random=4, seed=7, patcher=ep)
    writers = [i for i, n in enumerate(g.nodes) if n.kind != "logit"]
    gen = torch.Generator().manual_seed(7)
    for d in range(4):  # each draw by hand: 5 random nodes, the edges between them and into the logit
        on = torch.tensor([n.kind == "logit" for n in g.nodes])
        on[[writers[i] for i in torch.randperm(len(writers), generator=gen)[:5].tolist()]] = True
        assert abs(ep.faithfulness(on[g.src] & on[g.dst]) - float(f.random[d])) < 1e-9
    # connected: the pruned random circuit has the faithfulness of the unpruned one (pruning is exact)
    a = faithfulness(model, g, clean, corrupted, metric, k=40, n_random=5, seed=1, patcher=ep)
    b = faithfulness(model, g, clean, corrupted, metric, k=40, connected=True, n_random=5, seed=1, patcher=ep)
    assert (a.random - b.random).abs().max() < 1e-5 and b.k < a.k
    n = len(writers)
    curve = faithfulness_curve(model, g, clean, corrupted, metric, ks=[0, 3, n], rule="nodes", n_random=2)
    assert list(curve.edges)[0] == 0 and abs(curve.faithfulness.iloc[-1] - 1) < 1e-6  # every node: the full graph
    assert list(curve.edges)[-1] == g.n_edges
    assert_clean(model)


def test_selection_misuse_is_refused() -> None:
    model, clean, corrupted = toy()
    g = hand_graph()
    with pytest.raises(ValueError, match="rule='heads'"):
        select_circuit(g, k=2, rule="heads")
    with pytest.raises(TypeError, match="connected='yes'"):
        select_circuit(g, k=2, connected="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top k nodes .* 0..8"):
        select_circuit(g, k=9, rule="nodes")
    with pytest.raises(ValueError, match="finite number"):
        select_circuit(g, threshold=float("nan"))
    with pytest.raises(ValueError, match="bool mask"):
        connected_edges(g, torch.ones(g.n_edges))
    no_logit = Graph(g.nodes[:-1], g.src[g.dst != 8], g.dst[g.dst != 8], g.scores[g.dst != 8], g.node_scores[:-1],
                     "eap", "test")  # fmt: skip
    with pytest.raises(ValueError, match="no logit node"):
        select_circuit(no_logit, k=3, connected=True)
    select_circuit(no_logit, k=3)  # without connected= it is a plain top-k
    # refused before any run: corrupted=None would fail later, in the patcher, with another message
    metric = answer_logprob(model, clean)
    big = complete_graph(model, clean)
    with pytest.raises(ValueError, match="rule='node'"):
        faithfulness(model, big, clean, None, metric, k=3, rule="node")
    with pytest.raises(TypeError, match="connected=1"):
        faithfulness_curve(model, big, clean, None, metric, ks=[3], connected=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top k nodes"):
        faithfulness_curve(model, big, clean, corrupted, metric, ks=[3, len(big.nodes)], rule="nodes")
    assert_clean(model)
