"""EAP / EAP-IG edge scores (hooks_mm.circuits.eap_graph) against a brute-force computation on the bare HF model.

The brute force shares no code with hooks_mm: forward pre-hooks on the bare model's own modules give each
destination's input gradient (a clone of a norm's input: the gradient through that branch only; a head's: its
``o_proj`` input detached except that head's slice, one backward per head), and each source's activation
difference (the embedding at layer 0, ``z_h @ W_O[h]`` through Gemma-3's post-norm with the scale of the whole
output, the MLP branch's output).
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_clean, pair_for

from hooks_mm.circuits import Graph, eap_graph

FAMILIES = ["llava", "qwen2_vl", "gemma3", "toy-llava"]


def last_logprob(p):  # noqa: ANN001, ANN201
    """Mean over rows of the log-prob of token 5 at each row's last real position (a plain callable)."""
    last = p.real.long().cumsum(1).argmax(1)
    rows = torch.arange(len(last))
    return lambda logits: logits[rows, last].log_softmax(-1)[:, 5].mean()


def blanked(p):  # noqa: ANN001, ANN201
    """The same prompts with other pixels (noise): same layout, other image content."""
    g = torch.Generator().manual_seed(0)
    pv = p.inputs["pixel_values"]
    return {**p.inputs, "pixel_values": pv + torch.randn(pv.shape, generator=g).to(pv)}


def _layers(p):  # noqa: ANN001, ANN202
    return p.bare.get_submodule(p.model.adapter.layers)


def _mods(layer):  # noqa: ANN001, ANN202
    """(MLP-input norm, attention-branch output module, MLP-branch output module) of one bare HF layer."""
    sandwich = hasattr(layer, "pre_feedforward_layernorm")
    if sandwich:
        return layer.pre_feedforward_layernorm, layer.post_attention_layernorm, layer.post_feedforward_layernorm
    return layer.post_attention_layernorm, layer.self_attn.o_proj, layer.mlp


def bare_run(p, inputs, metric, embed=None, head=None):  # noqa: ANN001, ANN201
    """One forward of the bare model: the metric, and captured tensors. ``embed``: a function replacing layer 0's
    input; ``head``: (layer, h) whose o_proj input alone keeps its gradient."""
    layers, rec, handles = _layers(p), {}, []

    def pre(key, clone=False, fn=None):  # noqa: ANN001, ANN202
        def hook(mod, args, kwargs):  # noqa: ANN001, ANN202
            x = args[0] if args else kwargs["hidden_states"]
            x = fn(x) if fn is not None else (x.clone() if clone else x)
            rec[key] = x
            return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

        return hook

    def out(key):  # noqa: ANN001, ANN202
        return lambda mod, args, o: rec.__setitem__(key, o[0] if isinstance(o, tuple) else o)

    handles.append(layers[0].register_forward_pre_hook(pre("emb", fn=embed), with_kwargs=True))
    for l, layer in enumerate(layers):
        mlp_in, attn_out, mlp_out = _mods(layer)
        handles.append(layer.input_layernorm.register_forward_pre_hook(pre(f"attn_in{l}", True), with_kwargs=True))
        handles.append(mlp_in.register_forward_pre_hook(pre(f"mlp_in{l}", True), with_kwargs=True))
        handles.append(attn_out.register_forward_hook(out(f"attn_out{l}")))
        handles.append(mlp_out.register_forward_hook(out(f"mlp_out{l}")))
        o_proj = layer.self_attn.o_proj

        def z_hook(mod, args, l=l):  # noqa: ANN001, ANN202
            z = args[0]
            rec[f"z{l}"] = z
            if head is None or head[0] != l:
                return None
            d = z.shape[-1] // p.model.cfg.n_heads
            keep = z.detach().clone()
            keep[..., head[1] * d : (head[1] + 1) * d] = z[..., head[1] * d : (head[1] + 1) * d]
            return (keep,)

        handles.append(o_proj.register_forward_pre_hook(z_hook))
    norm = p.bare.get_submodule(p.model.adapter.layers.rsplit(".", 1)[0] + ".norm")
    handles.append(norm.register_forward_pre_hook(pre("final", True), with_kwargs=True))
    try:
        with torch.enable_grad():
            value = metric(p.bare(**inputs).logits)
    finally:
        for h in handles:
            h.remove()
    return value, rec


def head_outputs(p, l, rec):  # noqa: ANN001, ANN201
    """Each head's output [b, p, h, d_model] from the captured o_proj input (Gemma-3: through the post-norm, its
    scale taken on the whole o_proj output)."""
    layer = _layers(p)[l]
    w, n = layer.self_attn.o_proj.weight.detach(), p.model.cfg.n_heads
    z = rec[f"z{l}"].detach()
    d = z.shape[-1] // n
    parts = torch.stack([z[..., h * d : (h + 1) * d] @ w[:, h * d : (h + 1) * d].T for h in range(n)], -2)
    if hasattr(layer, "pre_feedforward_layernorm"):
        post = layer.post_attention_layernorm
        total = parts.sum(-2)
        scale = torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + post.eps) * (1 + post.weight.detach())
        parts = parts * scale[..., None, :]
    return parts


def brute_scores(p, g: Graph, corr_inputs, metric, embed=None, steps: int = 1):  # noqa: ANN001, ANN201
    """Every edge of ``g`` scored by brute force: diff(src) . grad(dst), each grad from its own backward; with
    ``steps`` > 1 the grads are averaged over layer-0 inputs ``clean + k/steps (corrupted - clean)``."""
    L, n = p.model.cfg.n_layers, p.model.cfg.n_heads
    real = p.real.to(torch.float32)
    with torch.no_grad():
        _, corr = bare_run(p, corr_inputs, metric, embed=embed)
    value, clean = bare_run(p, p.inputs, metric)
    grads: dict = {}
    for k in range(steps):
        a = k / steps
        step = None if k == 0 else (lambda x, a=a: x + a * (corr["emb"] - x))
        v, rec = bare_run(p, p.inputs, metric, embed=step)
        keys = [f"mlp_in{l}" for l in range(L)] + ["final"]
        for key, gr in zip(keys, torch.autograd.grad(v, [rec[k] for k in keys])):
            grads[key] = grads.get(key, 0) + gr / steps
        for l in range(L):
            for h in range(n):
                v, rec = bare_run(p, p.inputs, metric, embed=step, head=(l, h))
                (gr,) = torch.autograd.grad(v, rec[f"attn_in{l}"])
                grads[f"L{l}.H{h}"] = grads.get(f"L{l}.H{h}", 0) + gr / steps
    diffs = {}
    for node in g.nodes:
        if node.kind == "input":
            diffs[node.id] = (corr["emb"] - clean["emb"]).detach() * node_mask(node, real)[..., None]
    for l in range(L):
        hd = (head_outputs(p, l, corr) - head_outputs(p, l, clean)) * real[..., None, None]
        for h in range(n):
            diffs[f"L{l}.H{h}"] = hd[..., h, :]
        diffs[f"L{l}.MLP"] = (corr[f"mlp_out{l}"] - clean[f"mlp_out{l}"]).detach() * real[..., None]
    dst_grad = {f"L{l}.MLP": grads[f"mlp_in{l}"] for l in range(L)} | {"logit": grads["final"]}
    dst_grad |= {f"L{l}.H{h}": grads[f"L{l}.H{h}"] for l in range(L) for h in range(n)}
    out = torch.empty(g.n_edges)
    for i, (s, d) in enumerate(zip(g.src.tolist(), g.dst.tolist())):
        out[i] = (diffs[g.nodes[s].id] * dst_grad[g.nodes[d].id]).sum()
    return out, float(value.detach())


def node_mask(node, like):  # noqa: ANN001, ANN201
    mask = torch.zeros_like(like)
    for r, pos in enumerate(node.positions):
        mask[r, pos] = 1
    return mask


def assert_close(scores, brute):  # noqa: ANN001
    assert float(brute.abs().max()) > 1e-4  # the corruption moves the metric: a non-trivial check
    tol = 1e-4 * float(brute.abs().max())
    assert torch.allclose(scores, brute, atol=tol, rtol=1e-3), float((scores - brute).abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_eap_edges_equal_brute_force(family):
    p = pair_for(family)
    model, metric = p.model, last_logprob(p)
    before = {k: v.clone() for k, v in model.hf_model.state_dict().items()}
    g = eap_graph(model, p.inputs, blanked(p), metric, inputs="cell")
    assert_clean(model)
    assert all(q.grad is None for q in model.hf_model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.hf_model.state_dict().items())
    brute, clean_value = brute_scores(p, g, blanked(p), metric)
    assert_close(g.scores, brute)
    assert g.meta["metric_clean"] == pytest.approx(clean_value, abs=1e-4)
    kinds = {n.kind for n in g.nodes}
    assert kinds == {"input", "head", "mlp", "logit"}
    assert any(n.id.startswith("input:image0/t0r0c0") for n in g.nodes)


def test_eap_ig_steps_1_is_eap_and_steps_3_equals_brute_force():
    p = pair_for("llava")
    metric = last_logprob(p)
    eap = eap_graph(p.model, p.inputs, blanked(p), metric, inputs="image")
    ig1 = eap_graph(p.model, p.inputs, blanked(p), metric, inputs="image", method="eap-ig", steps=1)
    assert torch.equal(eap.scores, ig1.scores) and torch.equal(eap.node_scores, ig1.node_scores)
    ig3 = eap_graph(p.model, p.inputs, blanked(p), metric, inputs="image", method="eap-ig", steps=3)
    assert ig3.method == "eap-ig" and ig3.meta["steps"] == 3
    assert not torch.allclose(ig3.scores, eap.scores, atol=1e-5)  # the path average is not the clean gradient
    assert_close(ig3.scores, brute_scores(p, ig3, blanked(p), metric, steps=3)[0])
    assert_clean(p.model)


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_ablation_of_input_nodes_equals_brute_force(kind):
    p = pair_for("gemma3")
    metric = last_logprob(p)
    g = eap_graph(p.model, p.inputs, kind, metric, inputs="tile")
    real = p.real.to(torch.float32)
    masks = [node_mask(n, real).bool() for n in g.nodes if n.kind == "input"]

    def ablate(x):  # noqa: ANN001, ANN202
        x = x.clone()
        for m in masks:
            x[m] = 0 if kind == "zero" else x[m].mean(0)
        return x

    assert_close(g.scores, brute_scores(p, g, p.inputs, metric, embed=ablate)[0])
    assert g.meta["corruption"] == kind
    assert_clean(p.model)


@pytest.mark.parametrize("family", ["llava", "gemma3", "lfm2_vl"])
def test_node_scores_are_the_sum_of_outgoing_edges(family):
    """Sequential blocks: dM/d a(u) telescopes into the sum of the readers' input gradients, and the heads' own
    input gradients sum to the attention branch's (lfm2_vl: conv layers as whole ``L{l}.attn`` nodes)."""
    p = pair_for(family)
    g = eap_graph(p.model, p.inputs, "mean", last_logprob(p), inputs="image", method="eap-ig", steps=2)
    summed = torch.zeros(len(g.nodes)).index_add_(0, g.src, g.scores)
    assert float(g.node_scores.abs().max()) > 1e-4
    assert torch.allclose(summed, g.node_scores, atol=1e-5 * float(g.node_scores.abs().max()) + 1e-7)
    assert (family == "lfm2_vl") == any(n.kind == "attn" for n in g.nodes)


def test_hooks_mm_metric_and_json_round_trip():
    import json

    from hooks_mm.circuits import Graph
    from hooks_mm.sweep.metrics import answer_logprob

    p = pair_for("toy-llava")
    batch = p.model.prepare(p.inputs)
    g = eap_graph(p.model, batch, blanked(p), answer_logprob(p.model, batch), inputs="cell")
    back = Graph.from_dict(json.loads(json.dumps(g.to_dict())))
    assert torch.allclose(back.scores, g.scores) and [n.id for n in back.nodes] == [n.id for n in g.nodes]
    assert g.meta["str_tokens"] and g.meta["layout"].startswith(batch.layout.describe(0)[:10])
    assert g.meta["metric_clean"] != g.meta["metric_corrupted"]
    last = p.real.long().cumsum(1).argmax(1)  # the metric's positions: each row's last real one
    assert g.node("logit").positions == [[int(q)] for q in last]
    assert_clean(p.model)


def _refused(family: str):  # noqa: ANN202
    from hooks_mm import zoo
    from hooks_mm.model import HookedMLLM

    tiny = zoo.build(family)
    return HookedMLLM(tiny.model, tiny.processor), tiny.inputs


@pytest.mark.parametrize(
    "family, match",
    [
        ("cohere2_vision", "parallel block"),
        ("mllama", "cross-attention"),
        ("qwen3_vl", "deepstack"),
        ("gemma4", "layer_scalar"),
        ("blip2", "flattens"),
    ],
)
def test_families_eap_cannot_split_are_refused_by_name(family, match):
    model, inputs = _refused(family)
    with pytest.raises(NotImplementedError, match=match):
        eap_graph(model, inputs, "zero", lambda lg: lg[:, -1, 0].mean())
    assert_clean(model)


def test_misuse_raises_before_any_hook(monkeypatch):
    p, text = pair_for("llava"), pair_for("llama")
    model, metric = p.model, last_logprob(p)

    def no_hooks(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a hook was added before the misuse was found")

    for m in (model, text.model):
        monkeypatch.setattr(m, "hooks", no_hooks)
    cases = [
        (dict(clean=p.inputs, corrupted=None), ValueError, "needs a corruption"),
        (dict(clean=p.inputs, corrupted="noise"), ValueError, "zero"),
        (dict(clean=p.inputs, corrupted="zero", method="ig"), ValueError, "method"),
        (dict(clean=p.inputs, corrupted="zero", method="eap-ig", steps=0), ValueError, "steps"),
        (dict(clean=p.inputs, corrupted="zero", inputs="patch"), ValueError, "inputs='patch'"),
        (dict(clean=p.inputs, corrupted="zero", metric=3.0), TypeError, "callable"),
    ]
    for kw, err, match in cases:
        kw = {"metric": metric, **kw}
        with pytest.raises(err, match=match):
            eap_graph(model, kw.pop("clean"), kw.pop("corrupted"), kw.pop("metric"), **kw)
    tm = text.model
    ids, am = text.inputs["input_ids"], text.inputs["attention_mask"]
    with pytest.raises(ValueError, match="no image positions"):  # one node per cell of a text-only batch
        eap_graph(tm, text.inputs, "zero", last_logprob(text), inputs="cell")
    with pytest.raises(ValueError, match="shape"):  # a corrupted batch of another length
        eap_graph(tm, text.inputs, {"input_ids": ids[:, 1:], "attention_mask": am[:, 1:]}, last_logprob(text))
    r = int(am[:, 0].argmax())  # a row with a real first position: padding there is another layout
    am2 = am.clone()
    am2[r, 0] = 0
    with pytest.raises(ValueError, match="laid out differently"):
        eap_graph(tm, text.inputs, {"input_ids": ids, "attention_mask": am2}, last_logprob(text))
    from hooks_mm.sweep.metrics import answer_logprob

    with pytest.raises(ValueError, match="other inputs"):  # a metric made for another batch
        eap_graph(model, p.inputs, "zero", answer_logprob(tm, text.inputs))
    monkeypatch.undo()
    assert_clean(model)
    assert_clean(tm)


@pytest.mark.parametrize(
    "metric, match",
    [(lambda lg: lg[:, -1, 5], "one scalar"), (lambda lg: lg.detach()[:, -1, 5].mean(), "autograd"), (None, "")],
)
def test_metric_that_is_not_a_differentiable_scalar_raises_and_hooks_are_removed(metric, match):
    p = pair_for("llava")
    if metric is None:  # a metric that fails inside the run: hooks removed all the same
        metric, match = (lambda lg: (_ for _ in ()).throw(RuntimeError("boom"))), "boom"
        err = RuntimeError
    else:
        err = ValueError
    with pytest.raises(err, match=match):
        eap_graph(p.model, p.inputs, blanked(p), metric)
    assert_clean(p.model)
    assert all(q.grad is None for q in p.model.hf_model.parameters())


def test_a_block_whose_residual_bypasses_the_hook_points_raises_not_a_wrong_graph(monkeypatch):
    """OPT (BLIP-2) keeps its residual skip off resid_mid's hook point: with the family check bypassed, the
    per-branch VJP checks find it (the differences of residual gradients would give wrong edges)."""
    import hooks_mm.circuits.eap as eap

    model, inputs = _refused("blip2")
    monkeypatch.setattr(eap, "check_family", lambda model: None)
    with pytest.raises(RuntimeError, match="does not read and write the residual stream"):
        eap.eap_graph(model, inputs, "zero", lambda lg: lg[:, -1].log_softmax(-1)[:, 0].mean())
    assert_clean(model)


def test_swapped_text_corruption_equals_brute_force():
    """A text corruption (one prompt token changed in every row, Qwen2-VL's multimodal RoPE): text nodes carry it."""
    p = pair_for("qwen2_vl")
    text = (p.model.prepare(p.inputs).layout.modality == 0).all(0)  # positions that are text in every row
    at = int(text[:-1].nonzero().max())  # the last one before the final position
    ids = p.inputs["input_ids"].clone()
    ids[:, at] = (ids[:, at] + 1) % 50  # another token there: the same layout
    corr = {**p.inputs, "input_ids": ids}
    metric = last_logprob(p)
    g = eap_graph(p.model, p.inputs, corr, metric, inputs="image")
    assert g.node_scores[g.index("input:text")] != 0 and g.node_scores[g.index("input:image0")] == 0
    assert_close(g.scores, brute_scores(p, g, corr, metric)[0])


@pytest.mark.parametrize("family", ["qwen2_vl_video", "qwen2_audio", "llava"])
def test_input_nodes_cover_each_real_position_once_at_every_granularity(family):
    from hooks_mm.circuits import input_nodes

    L = pair_for(family).model.prepare(pair_for(family).inputs).layout
    for mode in ("image", "cell", "tile", "frame"):
        try:
            nodes, masks = input_nodes(L, mode, window=4)
        except ValueError as e:  # cell / tile without images, frame without video or audio: named
            assert "no image positions" in str(e) or "no video or audio" in str(e)
            continue
        assert torch.equal(masks.sum(0), (L.modality != 3).long())  # every real position exactly once
        for n, m in zip(nodes, masks):
            rows, pos = m.nonzero(as_tuple=True)
            assert n.positions == [pos[rows == r].tolist() for r in range(L.shape[0])]
            if n.id.startswith("input:audio") and "/w" in n.id:
                assert set((L.frame[rows, pos] // 4).tolist()) == {n.frame}
            if n.id.startswith("input:video") and "/f" in n.id:
                assert set(L.frame[rows, pos].tolist()) == {n.frame}
            if n.row >= 0:
                assert set(L.grid_row[rows, pos].tolist()) == {n.row} and set(L.grid_col[rows, pos].tolist()) == {n.col}
