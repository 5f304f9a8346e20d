"""Export to the circuit-tracer / Neuronpedia graph JSON and back (hooks_mm.circuits.neuronpedia).

The schema's required keys are written out here from its source: safety-research/circuit-tracer,
circuit_tracer/frontend/graph_models.py (commit 196e2cecbae69532a5677630f6b7c99c6c275fe3): pydantic models
``Model(metadata, qParams, nodes, links)``, ``Metadata``, ``QParams``, ``Node``, ``Link``. Fields without a default
there are required; the types are the annotations. Their viewer's own needs (circuit_tracer frontend util-cg.js
``formatData``) are checked too: a logit node's ``clerp`` holds ``(p=``, ``featureId`` = layer_feature_ctx is unique,
``ctx_idx`` indexes ``prompt_tokens``, and no head / MLP node is of a type the viewer looks a dictionary feature up for.
"""

from __future__ import annotations

import json

import pytest
import torch
from graph_synth import NASTY_LABEL, STRONG, synthetic_graph

from hooks_mm.circuits import Graph
from hooks_mm.circuits.neuronpedia import from_neuronpedia, to_neuronpedia

# (required keys, {key: type}) per pydantic model of graph_models.py; optional keys with their types after
MODEL = {"metadata": dict, "qParams": dict, "nodes": list, "links": list}
METADATA = {"slug": str, "scan": str, "transcoder_list": list, "prompt_tokens": list, "prompt": str}
METADATA_OPTIONAL = {"node_threshold": (float, type(None)), "schema_version": (int, type(None))}
QPARAMS = {"pinnedIds": list, "supernodes": list, "linkType": str, "clickedId": str, "sg_pos": str}
NODE = {"node_id": str, "feature": int, "layer": str, "ctx_idx": int, "feature_type": str, "jsNodeId": str}
NODE_OPTIONAL = {
    "token_prob": float,
    "is_target_logit": bool,
    "run_idx": int,
    "reverse_ctx_idx": int,
    "clerp": str,
    "influence": (float, type(None)),
    "activation": (float, type(None)),
}
LINK = {"source": str, "target": str, "weight": float}
DICTIONARY_TYPES = {"cross layer transcoder", "lorsa"}  # node types their viewers fetch a feature dashboard for


def check(obj: dict, required: dict, optional: dict | None = None) -> None:
    for key, typ in required.items():
        assert key in obj, f"required key {key!r} missing"
        assert isinstance(obj[key], typ) and not (typ is int and isinstance(obj[key], bool)), (key, obj[key])
    for key, typ in (optional or {}).items():
        if key in obj:
            assert isinstance(obj[key], typ), (key, obj[key])


@pytest.fixture(scope="module")
def exported():
    g = synthetic_graph()
    return g, json.loads(json.dumps(to_neuronpedia(g, slug="synthetic-colour", scan="toy-llava")))


def test_schema_required_fields(exported) -> None:
    g, data = exported
    check(data, MODEL)
    check(data["metadata"], METADATA, METADATA_OPTIONAL)
    check(data["qParams"], QPARAMS)
    tokens = data["metadata"]["prompt_tokens"]
    assert tokens == g.meta["str_tokens"] and all(isinstance(t, str) for t in tokens)
    for node in data["nodes"]:
        check(node, NODE, NODE_OPTIONAL)
        assert 0 <= node["ctx_idx"] < len(tokens)
        assert node["feature_type"] not in DICTIONARY_TYPES
        if node["feature_type"] == "logit":
            assert "(p=" in node["clerp"] and node["is_target_logit"]
    for link in data["links"]:
        check(link, LINK)
    ids = [n["node_id"] for n in data["nodes"]]
    feature_ids = [f"{n['layer']}_{n['feature']}_{n['ctx_idx']}" for n in data["nodes"]]
    assert len(set(ids)) == len(ids) == len(g.nodes) and len(set(feature_ids)) == len(ids)
    assert {(n["feature_type"], n["layer"]) for n in data["nodes"]} >= {("embedding", "E"), ("logit", "2")}
    assert sum(n["feature_type"] == "lorsa error" for n in data["nodes"]) == 4  # 2 layers x 2 heads
    assert sum(n["feature_type"] == "mlp reconstruction error" for n in data["nodes"]) == 2


def test_round_trip_same_nodes_edges_scores(exported) -> None:
    g, data = exported
    back = from_neuronpedia(data)
    assert [n.to_dict() for n in back.nodes] == [n.to_dict() for n in g.nodes]
    assert torch.equal(back.src, g.src) and torch.equal(back.dst, g.dst)
    assert torch.equal(back.scores, g.scores) and torch.equal(back.node_scores, g.node_scores)
    assert (back.method, back.metric, back.meta) == (g.method, g.metric, g.meta)
    assert back.score(*STRONG[:2]) == STRONG[2] and back.node("input:instruction").label == NASTY_LABEL
    # the links themselves carry the scores: editing one weight in the file changes the imported score
    edited = json.loads(json.dumps(data))
    edited["links"][0]["weight"] = 123.0
    assert from_neuronpedia(edited).scores[0] == 123.0


def test_subset_export_and_influence(exported) -> None:
    g, _ = exported
    top = to_neuronpedia(g, slug="top2", scan="x", k=2)
    assert {(link["source"], link["target"], link["weight"]) for link in top["links"]} == {
        (s, d, w) for s, d, w in _ids(top, g.top_edges(2))
    }
    assert top["metadata"]["hooks_mm"]["edges_exported"]["n"] == 2 and top["metadata"]["hooks_mm"]["n_edges"] == 89
    assert len(to_neuronpedia(g, slug="t", scan="x", threshold=1.5)["links"]) == 2
    inf = {n["node_id"]: n["influence"] for n in top["nodes"]}
    ranked = sorted(range(len(g.nodes)), key=lambda i: -abs(float(g.node_scores[i])))
    ids = top["metadata"]["hooks_mm"]["node_ids"]
    assert [inf[ids[i]] for i in ranked] == sorted(inf.values()) and max(inf.values()) == pytest.approx(1.0)


def _ids(data: dict, edges: list) -> list:
    ids = dict(zip([n.id for n in synthetic_graph().nodes], data["metadata"]["hooks_mm"]["node_ids"]))
    return [(ids[s], ids[d], w) for s, d, w in edges]


def test_export_import_misuse(exported) -> None:
    g, data = exported
    with pytest.raises(ValueError, match="slug="):
        to_neuronpedia(g, slug="my graph/1", scan="x")
    with pytest.raises(ValueError, match="pass prompt_tokens="):
        to_neuronpedia(Graph(g.nodes, g.src, g.dst, g.scores, g.node_scores, "eap", "m", {}), slug="a", scan="x")
    with pytest.raises(ValueError, match="no scan"):
        no_arch = {k: v for k, v in g.meta.items() if k != "architecture"}
        to_neuronpedia(Graph(g.nodes, g.src, g.dst, g.scores, g.node_scores, "eap", "m", no_arch), slug="a")
    with pytest.raises(ValueError, match="outside the 3 prompt_tokens"):
        to_neuronpedia(g, slug="a", scan="x", prompt_tokens=["a", "b", "c"])
    nan = g.scores.clone()
    nan[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        to_neuronpedia(Graph(g.nodes, g.src, g.dst, nan, g.node_scores, "eap", "m", g.meta), slug="a", scan="x")
    with pytest.raises(TypeError, match="hooks_mm.circuits.Graph"):
        to_neuronpedia(g.to_dict(), slug="a", scan="x")
    with pytest.raises(ValueError, match="not written by hooks_mm"):
        from_neuronpedia({**data, "metadata": {k: v for k, v in data["metadata"].items() if k != "hooks_mm"}})
    with pytest.raises(ValueError, match="no \\['links'\\]"):
        from_neuronpedia({"metadata": data["metadata"], "nodes": data["nodes"]})
    with pytest.raises(ValueError, match="nodes were removed"):
        from_neuronpedia({**data, "nodes": data["nodes"][1:]})
    with pytest.raises(ValueError, match="names a node"):
        from_neuronpedia({**data, "links": [{"source": "nope", "target": "logit", "weight": 1.0}]})


def test_real_toy_llava_graph_round_trip() -> None:
    from graph_synth import toy_llava_graph

    g, _ = toy_llava_graph()
    data = json.loads(json.dumps(to_neuronpedia(g, slug="toy-llava-colour")))
    assert (
        data["metadata"]["scan"] == g.meta["architecture"] and data["metadata"]["prompt_tokens"] == g.meta["str_tokens"]
    )
    for node in data["nodes"]:
        check(node, NODE, NODE_OPTIONAL)
        assert 0 <= node["ctx_idx"] < len(data["metadata"]["prompt_tokens"])
    cell = next(n for n in data["nodes"] if n["clerp"] == "image0/t0r1c1")
    assert data["metadata"]["prompt_tokens"][cell["ctx_idx"]] == "<image>" and cell["feature_type"] == "embedding"
    back = from_neuronpedia(data)
    assert [n.to_dict() for n in back.nodes] == [n.to_dict() for n in g.nodes] and back.meta == g.meta
    assert torch.equal(back.src, g.src) and torch.equal(back.dst, g.dst) and torch.equal(back.scores, g.scores)
    assert torch.equal(back.node_scores, g.node_scores)
