"""The circuit Graph value: JSON round trip, top_edges / edges_above, validation."""

import json

import pytest
import torch

from hooks_mm.circuits import Graph, Node


def small() -> Graph:
    nodes = [
        Node("input:image0", "input", -1, modality="image", image=0, positions=[[1, 2], [2, 3]]),
        Node("L0.H0", "head", 0, head=0, positions=[[0, 1, 2, 3], [1, 2, 3]]),
        Node("L0.MLP", "mlp", 0),
        Node("logit", "logit", 1),
    ]
    src, dst = torch.tensor([0, 0, 0, 1, 1, 2]), torch.tensor([1, 2, 3, 2, 3, 3])
    scores = torch.tensor([0.5, -2.0, 0.1, 1.0, -0.25, 3.0])
    return Graph(nodes, src, dst, scores, torch.tensor([1.0, 2.0, 3.0, 0.0]), "eap", "logprob", {"n_layers": 1})


def test_graph_json_round_trip_and_ranking():
    g = small()
    back = Graph.from_dict(json.loads(json.dumps(g.to_dict())))
    assert [n.to_dict() for n in back.nodes] == [n.to_dict() for n in g.nodes]
    assert torch.equal(back.src, g.src) and torch.equal(back.dst, g.dst) and torch.equal(back.scores, g.scores)
    assert back.meta == g.meta and back.method == "eap"
    assert g.top_edges(2) == [("L0.MLP", "logit", 3.0), ("input:image0", "L0.MLP", -2.0)]
    assert [e[2] for e in g.edges_above(0.5)] == [3.0, -2.0, 1.0, 0.5]
    assert g.score("L0.H0", "L0.MLP") == 1.0 and g.node("input:image0").label == "image0"


def test_graph_misuse_raises():
    g = small()
    with pytest.raises(KeyError, match="no node"):
        g.index("L9.H9")
    with pytest.raises(KeyError, match="no edge"):
        g.edge_index("logit", "L0.H0")
    with pytest.raises(ValueError, match="one length"):
        Graph(g.nodes, g.src, g.dst[:2], g.scores, g.node_scores, "eap", "m")
    with pytest.raises(ValueError, match="node indices"):
        Graph(g.nodes, g.src + 5, g.dst, g.scores, g.node_scores, "eap", "m")
    with pytest.raises(ValueError, match="kind"):
        Node("x", "neuron", 0)
