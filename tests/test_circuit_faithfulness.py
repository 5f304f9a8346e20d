"""Exact edge patching, circuits and faithfulness (issue 18 item 3): the identities against independent
computations (bare runs, the HF modules by hand), faithfulness end points, random controls, misuse."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_clean, pair_for

from hooks_mm import HookedMLLM
from hooks_mm.circuits.agreement import eap_agreement
from hooks_mm.circuits.eap import eap_graph
from hooks_mm.circuits.faithfulness import EdgePatcher, faithfulness, faithfulness_curve, select_circuit
from hooks_mm.circuits.graph import Graph, Node
from hooks_mm.circuits.patching import Reader, Source, edge_patched_logits, precedes, prepare
from hooks_mm.layout import Modality
from hooks_mm.sweep.metrics import answer_logprob
from hooks_mm.tasks import make_qa
from hooks_mm.tasks.evaluate import encode

_TOY: dict[str, object] = {}


def toy() -> tuple[HookedMLLM, object, object]:
    """toy-llava, a clean batch of 4 questions and the same prompts with the images rotated by one row."""
    if not _TOY:
        model = HookedMLLM.from_pretrained("toy-llava")
        inp = encode(model, make_qa(4, "test", 0))
        corr = {**inp, "pixel_values": inp["pixel_values"].roll(1, 0)}
        _TOY.update(model=model, clean=model.prepare(inp), corrupted=model.prepare(corr))
    return _TOY["model"], _TOY["clean"], _TOY["corrupted"]  # type: ignore[return-value]


def tiny(family: str = "llava") -> tuple[HookedMLLM, object, object]:
    """A tiny random model of ``family`` and its batch, corrupted by rolling the images across the batch."""
    p = pair_for(family)
    clean = p.model.prepare(p.inputs)
    corr = {**p.inputs, "pixel_values": p.inputs["pixel_values"].roll(1, 0)}
    return p.model, clean, p.model.prepare(corr)


def positions(mask: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in mask]


def complete_graph(model: HookedMLLM, batch, seed: int = 0) -> Graph:
    """Every possible edge between input:image / input:text, every head, every MLP and the logit; seeded scores."""
    mod, n, h = batch.layout.modality, model.cfg.n_layers, model.cfg.n_heads
    real = mod != Modality.PAD
    image = mod == Modality.IMAGE
    every = positions(real)
    nodes = [
        Node("input:image0", "input", -1, modality="image", image=0, positions=positions(image)),
        Node("input:text", "input", -1, modality="text", positions=positions(real & ~image)),
    ]
    for l in range(n):
        nodes += [Node(f"L{l}.H{i}", "head", l, head=i, positions=every) for i in range(h)]
        nodes.append(Node(f"L{l}.MLP", "mlp", l, positions=every))
    nodes.append(Node("logit", "logit", n, positions=every))
    src, dst = [], []
    for i, u in enumerate(nodes):
        for j, v in enumerate(nodes):
            if u.kind != "logit" and v.kind != "input" and precedes(_src(u), _rd(v)):
                src.append(i)
                dst.append(j)
    scores = torch.randn(len(src), generator=torch.Generator().manual_seed(seed))
    meta = {"architecture": model.cfg.architecture, "n_layers": n, "n_heads": h, "batch_shape": list(batch.shape)}
    return Graph(nodes, torch.tensor(src), torch.tensor(dst), scores, torch.zeros(len(nodes)), "eap", "test", meta)


def _src(nd: Node) -> Source:
    return Source(nd.kind, nd.layer, nd.head)


def _rd(nd: Node) -> Reader:
    return Reader(nd.kind, nd.layer, nd.head)


def sources_readers(model: HookedMLLM, batch, per_head: bool = True) -> tuple[list[Source], list[Reader]]:
    n, h = model.cfg.n_layers, model.cfg.n_heads
    image = batch.layout.modality == Modality.IMAGE
    srcs = [Source("input", -1, mask=image), Source("input", -1, mask=~image)]
    srcs += [Source("head", l, i) for l in range(n) for i in range(h)] + [Source("mlp", l) for l in range(n)]
    rds = (
        [Reader("head", l, i) for l in range(n) for i in range(h)]
        if per_head
        else [Reader("attn", l) for l in range(n)]
    )
    return srcs, rds + [Reader("mlp", l) for l in range(n)] + [Reader("logit", n)]


def every_edge(srcs: list[Source], rds: list[Reader]) -> torch.Tensor:
    return torch.tensor([[precedes(s, r) for s in srcs] for r in rds])


def state(model: HookedMLLM) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.hf_model.state_dict().items()}


def unchanged(model: HookedMLLM, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.hf_model.state_dict().items())


# ---------------------------------------------------------------------------------------------- identities


@pytest.mark.parametrize("which", ["toy-llava", "llava", "gemma3", "qwen2_vl"])
@pytest.mark.parametrize("per_head", [True, False])
def test_none_patched_is_clean_every_patched_is_corrupted(which: str, per_head: bool) -> None:
    model, clean, corrupted = toy() if which == "toy-llava" else tiny(which)
    before = state(model)
    srcs, rds = sources_readers(model, clean, per_head)
    prep = prepare(model, clean, corrupted, srcs)
    bare_clean, bare_corr = model(clean), model(corrupted)  # plain runs, no edge machinery
    can = every_edge(srcs, rds)
    none = edge_patched_logits(model, prep, rds, torch.zeros_like(can))
    assert torch.equal(none, bare_clean)
    every = edge_patched_logits(model, prep, rds, can)
    real = clean.layout.modality != Modality.PAD
    scale = bare_corr.abs().max().item()
    assert (every - bare_corr)[real].abs().max().item() <= 1e-6 * scale
    assert (bare_clean - bare_corr)[real].abs().max().item() > 1e-2 * scale  # the corruption changes the logits
    # every edge patched but those from heads and MLPs into the logit: each node computes its corrupted output
    # from its patched input, and the logit reads them as this run's outputs (the run above skips that computation)
    chain = can.clone()
    chain[-1] = torch.tensor([s.kind == "input" for s in srcs])
    got = edge_patched_logits(model, prep, rds, chain)
    assert (got - bare_corr)[real].abs().max().item() <= 1e-6 * scale
    assert_clean(model)
    assert unchanged(model, before)


def test_single_edges_equal_hand_computations() -> None:
    """Four single edges, each against a computation that does not use the edge machinery."""
    model, clean, corrupted = toy()
    n = model.cfg.n_layers
    srcs, rds = sources_readers(model, clean)
    prep = prepare(model, clean, corrupted, srcs)
    _, cc = model.run_with_cache(clean)
    _, cr = model.run_with_cache(corrupted)
    image = (clean.layout.modality == Modality.IMAGE)[..., None]
    d_img = (cr["blocks.0.hook_resid_pre"] - cc["blocks.0.hook_resid_pre"]) * image
    final = cc[f"blocks.{n - 1}.hook_resid_post"]
    logit_r = len(rds) - 1

    real = clean.layout.modality != Modality.PAD  # padding positions read nothing (their logits are not compared)

    def run(r: int, s: int) -> torch.Tensor:
        p = torch.zeros(len(rds), len(srcs), dtype=torch.bool)
        p[r, s] = True
        return edge_patched_logits(model, prep, rds, p)[real]

    # input:image -> logit: only the final residual moves, by the image embeddings' difference
    hand = model.resid_to_logits(final + d_img)[real]
    assert (run(logit_r, 0) - hand).abs().max().item() < 1e-4
    # L0.H1 -> logit: the head's output from hook_z and W_O (not head_parts)
    w_o = model.W_O[0, 1]
    d_head = (cr["blocks.0.attn.hook_z"][:, :, 1] - cc["blocks.0.attn.hook_z"][:, :, 1]) @ w_o
    s_head = next(i for i, s in enumerate(srcs) if (s.kind, s.layer, s.head) == ("head", 0, 1))
    assert (run(logit_r, s_head) - model.resid_to_logits(final + d_head)[real]).abs().max().item() < 1e-4
    # input:image -> last MLP: the HF MLP module on its shifted input, by hand
    layer = model.hf_model.model.language_model.layers[n - 1]
    mid = cc[f"blocks.{n - 1}.hook_resid_mid"]
    mlp_new = layer.mlp(layer.post_attention_layernorm(mid + d_img))
    hand = model.resid_to_logits(final - cc[f"blocks.{n - 1}.hook_mlp_out"] + mlp_new)[real]
    r_mlp = next(i for i, r in enumerate(rds) if (r.kind, r.layer) == ("mlp", n - 1))
    assert (run(r_mlp, 0) - hand).abs().max().item() < 1e-4
    # input:image -> L1.H2 alone: head 2's z from a run whose layer-1 input is shifted, put into a clean run
    zs: dict[str, torch.Tensor] = {}
    model.run_with_hooks(
        clean,
        fwd_hooks=[
            ("blocks.1.hook_resid_pre", lambda x, hook: x + d_img),
            ("blocks.1.attn.hook_z", lambda z, hook: zs.__setitem__("z", z.clone())),
        ],
    )

    def put(z: torch.Tensor, hook: object) -> torch.Tensor:
        z = z.clone()
        z[:, :, 2] = zs["z"][:, :, 2]
        return z

    hand = model.run_with_hooks(clean, fwd_hooks=[("blocks.1.attn.hook_z", put)])[real]
    r_h = next(i for i, r in enumerate(rds) if (r.kind, r.layer, r.head) == ("head", 1, 2))
    got = run(r_h, 0)
    assert (got - hand).abs().max().item() < 1e-5
    assert (got - model(clean)[real]).abs().max().item() > 1e-2  # the edge matters
    assert_clean(model)


# ---------------------------------------------------------------------------------------------- faithfulness


def test_faithfulness_full_graph_is_one_empty_circuit_zero() -> None:
    model, clean, corrupted = toy()
    before = state(model)
    g = complete_graph(model, clean)
    metric = answer_logprob(model, clean)
    full = faithfulness(model, g, clean, corrupted, metric, k=g.n_edges, n_random=0)
    empty = faithfulness(model, g, clean, corrupted, metric, k=0, n_random=0)
    assert abs(full.value - 1) < 1e-6 and abs(empty.value) < 1e-5
    with torch.no_grad():
        assert abs(full.m_clean - float(metric(model(clean)))) < 1e-6
        assert abs(empty.metric - float(metric(model(corrupted)))) < 1e-5
    half = faithfulness(model, g, clean, corrupted, metric, k=g.n_edges // 2, n_random=0)
    t = float(g.scores.abs().sort(descending=True).values[g.n_edges // 2 - 1])  # the same circuit by threshold
    assert faithfulness(model, g, clean, corrupted, metric, threshold=t, n_random=0).value == half.value
    assert abs(half.value) > 1e-3 and abs(half.value - 1) > 1e-3  # neither end: the edges are really patched
    assert_clean(model)
    assert unchanged(model, before)


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_ablation_corruption(kind: str) -> None:
    """corrupted="zero" / "mean": the corrupted run is the clean batch with each input node's embeddings ablated."""
    model, clean, _ = toy()
    g = complete_graph(model, clean)
    metric = answer_logprob(model, clean)
    ep = EdgePatcher(model, g, clean, kind, metric)
    masks = [torch.tensor([[j in p for j in range(clean.shape[1])] for p in nd.positions]) for nd in g.nodes[:2]]

    def by_hand(x: torch.Tensor, hook: object) -> torch.Tensor:
        x = x.clone()
        for m in masks:
            x[m] = 0.0 if kind == "zero" else x[m].mean(0)
        return x

    with torch.no_grad():
        hand = float(metric(model.run_with_hooks(clean, fwd_hooks=[("blocks.0.hook_resid_pre", by_hand)])))
    assert abs(ep.m_corrupted - hand) < 1e-6 and abs(ep.m_corrupted - ep.m_clean) > 1e-2
    assert abs(ep.faithfulness(select_circuit(g, k=0))) < 1e-5
    assert abs(ep.faithfulness(select_circuit(g, k=g.n_edges)) - 1) < 1e-6
    with pytest.raises(ValueError, match="zero"):
        EdgePatcher(model, g, clean, "blank", metric)
    assert_clean(model)


def test_random_control_reproducible_and_counted() -> None:
    model, clean, corrupted = toy()
    g = complete_graph(model, clean)
    metric = answer_logprob(model, clean)
    ep = EdgePatcher(model, g, clean, corrupted, metric)
    a = faithfulness(model, g, clean, corrupted, metric, k=30, n_random=20, seed=3, patcher=ep)
    b = faithfulness(model, g, clean, corrupted, metric, k=30, n_random=20, seed=3, patcher=ep)
    c = faithfulness(model, g, clean, corrupted, metric, k=30, n_random=20, seed=4, patcher=ep)
    assert len(a.random) == 20 and torch.equal(a.random, b.random) and not torch.equal(a.random, c.random)
    assert a.percentile == 100 * float((a.random < a.value).double().mean())
    assert abs(a.random_mean - float(a.random.mean())) < 1e-12
    assert a.random_interval[0] <= a.random_mean <= a.random_interval[1]
    # a random draw is a real circuit: draw 0 again by hand
    gen = torch.Generator().manual_seed(3)
    keep = torch.zeros(g.n_edges, dtype=torch.bool)
    keep[torch.randperm(g.n_edges, generator=gen)[:30]] = True
    assert abs(ep.faithfulness(keep) - float(a.random[0])) < 1e-9


def test_curve_has_the_ends_and_the_band() -> None:
    model, clean, corrupted = toy()
    g = complete_graph(model, clean)
    metric = answer_logprob(model, clean)
    curve = faithfulness_curve(model, g, clean, corrupted, metric, ks=[0, 10, g.n_edges], n_random=20)
    assert list(curve.k) == [0, 10, g.n_edges]
    assert abs(curve.faithfulness.iloc[0]) < 1e-5 and abs(curve.faithfulness.iloc[-1] - 1) < 1e-6
    assert abs(curve.random_mean.iloc[-1] - 1) < 1e-6  # all edges: every random circuit is the full graph
    assert (curve.random_lo <= curve.random_hi).all()


def test_select_circuit() -> None:
    model, clean, _ = toy()
    g = complete_graph(model, clean)
    keep = select_circuit(g, k=7)
    assert int(keep.sum()) == 7 and g.scores.abs()[keep].min() >= g.scores.abs()[~keep].max()
    t = float(g.scores.abs().median())
    assert torch.equal(select_circuit(g, threshold=t), g.scores.abs() >= t)


# ---------------------------------------------------------------------------------------------- misuse


def test_misuse_raises_before_any_hook() -> None:
    model, clean, corrupted = toy()
    before = state(model)
    g = complete_graph(model, clean)
    metric = answer_logprob(model, clean)
    with pytest.raises(ValueError, match="top k edges needs an int"):
        faithfulness(model, g, clean, corrupted, metric, k=g.n_edges + 1)
    with pytest.raises(ValueError, match="exactly one of k"):
        select_circuit(g)
    with pytest.raises(ValueError, match="n_random"):
        faithfulness(model, g, clean, corrupted, metric, k=3, n_random=-1)
    # a graph of another batch: two rows only
    small = model.prepare(encode(model, make_qa(2, "test", 5)))
    with pytest.raises(ValueError, match="another batch|this clean batch"):
        EdgePatcher(model, complete_graph(model, small), clean, corrupted, metric)
    g2 = complete_graph(model, clean)
    g2.meta.pop("batch_shape")
    g2.nodes[0].positions = [p[:-1] for p in g2.nodes[0].positions]  # positions of another layout
    with pytest.raises(ValueError, match="another batch"):
        EdgePatcher(model, g2, clean, corrupted, metric)
    # a graph of another model
    other = tiny("llava")[0]
    with pytest.raises(ValueError, match="another model"):
        EdgePatcher(other, g, clean, corrupted, metric)
    # a corrupted batch of another shape / another layout
    five = model.prepare(encode(model, make_qa(5, "test", 7)))
    with pytest.raises(ValueError, match="same layout"):
        EdgePatcher(model, g, clean, five, metric)
    moved = dict(clean.source)
    ids = clean["input_ids"].clone()
    first_img = int((clean.layout.modality[0] == Modality.IMAGE).nonzero()[0])
    ids[0] = torch.cat([ids[0, 1:], ids[0, :1]])  # the image span one position earlier in row 0
    moved["input_ids"] = ids
    shifted = model.prepare(moved)
    assert int((shifted.layout.modality[0] == Modality.IMAGE).nonzero()[0]) != first_img
    with pytest.raises(ValueError, match="laid out differently"):
        EdgePatcher(model, g, clean, shifted, metric)
    # a metric made for another batch (its positions and targets are that batch's)
    with pytest.raises(ValueError, match="made for other inputs"):
        EdgePatcher(model, g, clean, corrupted, answer_logprob(model, five))
    # a corruption other than the graph's
    zeroed = complete_graph(model, clean)
    zeroed.meta["corruption"] = "zero"
    with pytest.raises(ValueError, match="corruption 'zero'"):
        EdgePatcher(model, zeroed, clean, corrupted, metric)
    # a metric that is not one number
    with pytest.raises(ValueError, match="one number"):
        EdgePatcher(model, g, clean, corrupted, lambda logits: logits[:, -1, 0])
    ep = EdgePatcher(model, g, clean, corrupted, metric)
    with pytest.raises(ValueError, match="another graph"):
        faithfulness(model, complete_graph(model, clean), clean, corrupted, metric, k=3, patcher=ep)
    with pytest.raises(ValueError, match="bool mask"):
        ep.metric(torch.ones(g.n_edges))
    # an edge from a later node into an earlier one
    bad = complete_graph(model, clean)
    bad.src[0], bad.dst[0] = bad.index("L2.MLP"), bad.index("L0.H0")
    with pytest.raises(ValueError, match="cannot exist"):
        EdgePatcher(model, bad, clean, corrupted, metric)
    # a corruption that does not change the metric
    same = EdgePatcher(model, g, clean, clean, metric)
    with pytest.raises(ValueError, match="does not change the metric"):
        same.faithfulness(select_circuit(g, k=1))
    assert_clean(model)
    assert unchanged(model, before)


def test_grouped_query_heads_must_be_patched_together() -> None:
    model, clean, corrupted = tiny("llava")  # 4 query heads, 2 key / value heads
    assert model.cfg.n_key_value_heads < model.cfg.n_heads
    srcs, rds = sources_readers(model, clean)
    prep = prepare(model, clean, corrupted, srcs)
    p = torch.zeros(len(rds), len(srcs), dtype=torch.bool)
    h0 = next(i for i, r in enumerate(rds) if (r.kind, r.layer, r.head) == ("head", 1, 0))
    p[h0, 0] = True
    with pytest.raises(NotImplementedError, match="grouped-query"):
        edge_patched_logits(model, prep, rds, p)
    p[h0 + 1, 0] = True  # head 1 shares head 0's key / value head: together they are exact
    edge_patched_logits(model, prep, rds, p)
    with pytest.raises(ValueError, match="source comes after"):
        q = torch.zeros_like(p)
        q[h0, srcs.index(next(s for s in srcs if (s.kind, s.layer) == ("mlp", 1)))] = True
        edge_patched_logits(model, prep, rds, q)
    assert_clean(model)


# ---------------------------------------------------------------------------------------------- agreement with EAP


def _agreement_case(which: str, eps: float) -> tuple:
    model, clean, rolled = toy() if which == "toy-llava" else tiny(which)
    px = clean["pixel_values"]
    noise = torch.randn(px.shape, generator=torch.Generator().manual_seed(0))
    corrupted = model.prepare({**clean.source, "pixel_values": px + eps * noise}) if eps else rolled
    metric = answer_logprob(model, clean)
    g = eap_graph(model, clean, corrupted, metric, inputs="cell")
    return model, clean, corrupted, metric, g


@pytest.mark.parametrize("which", ["toy-llava", "llava"])
def test_eap_agrees_with_exact_edge_patching(which: str) -> None:
    """Each edge (grouped-query units: the edges from one source into heads sharing a key / value head) patched
    alone, exactly, against the EAP score. In the first-order regime (images moved by 1e-3) EAP must match the
    exact effects almost linearly (the gap is second order); with a real corruption (the images of other rows) the
    rank correlation is reported, not asserted (it measures EAP's first-order error, not a bug)."""
    model, clean, corrupted, metric, g = _agreement_case(which, 1e-3)
    before = state(model)
    ag = eap_agreement(model, g, clean, corrupted, metric)
    per = model.cfg.n_heads // model.cfg.n_key_value_heads
    into_heads = sum(g.nodes[int(d)].kind == "head" for d in g.dst)
    assert ag.n_units == g.n_edges - into_heads + into_heads // per  # every edge, in units
    assert ag.n_units >= 200
    pearson = torch.corrcoef(torch.stack([ag.scores, ag.effects]))[0, 1].item()
    assert pearson > 0.99, pearson
    assert abs(ag.spearman - scipy_spearman(ag.scores, ag.effects)) < 1e-9
    # one unit's effect through the circuit path: keep every graph edge but the unit's
    ep = EdgePatcher(model, g, clean, corrupted, metric)
    top = int(ag.effects.abs().argmax())
    unit = ep.units[top]
    keep = torch.ones(g.n_edges, dtype=torch.bool)
    keep[unit] = False
    assert abs(ep.metric(keep) - ep.m_clean - float(ag.effects[top])) < 1e-6
    model, clean, corrupted, metric, g = _agreement_case(which, 0.0)
    real = eap_agreement(model, g, clean, corrupted, metric)
    print(f"\n{which}: EAP vs exact edge patching, images of other rows: Spearman {real.spearman:.3f} over "
          f"{real.n_units} units; images moved by 1e-3: Spearman {ag.spearman:.3f}, Pearson {pearson:.4f}")  # fmt: skip
    assert real.n_units == ag.n_units and -1 <= real.spearman <= 1
    assert_clean(model)
    assert unchanged(model, before)


def scipy_spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.numpy(), b.numpy()).statistic)


def test_grouped_query_circuits_keep_units_whole() -> None:
    """Tiny LLaVA (2 query heads per key / value head): circuits and random controls select whole units, the
    end points hold, and a mask splitting a unit is refused."""
    model, clean, corrupted = tiny("llava")
    g = complete_graph(model, clean)
    metric = answer_logprob(model, clean)
    ep = EdgePatcher(model, g, clean, corrupted, metric)
    into_heads = sum(g.nodes[int(d)].kind == "head" for d in g.dst)
    assert len(ep.units) == g.n_edges - into_heads // 2
    f = faithfulness(model, g, clean, corrupted, metric, k=25, n_random=20, patcher=ep)
    assert len(f.random) == 20 and f.k >= 25
    assert (
        abs(faithfulness(model, g, clean, corrupted, metric, k=len(ep.units), n_random=0, patcher=ep).value - 1) < 1e-6
    )
    assert abs(faithfulness(model, g, clean, corrupted, metric, k=0, n_random=0, patcher=ep).value) < 1e-5
    unit = next(u for u in ep.units if len(u) == 2)
    keep = torch.zeros(g.n_edges, dtype=torch.bool)
    keep[unit[0]] = True
    with pytest.raises(ValueError, match="key / value head"):
        ep.metric(keep)
    with pytest.raises(ValueError, match="edge units"):
        select_circuit(g, k=len(ep.units) + 1, units=ep.units)
    assert_clean(model)
