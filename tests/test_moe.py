"""Mixture-of-experts hook points (hooks_mm.model.moe) against hand computations on the bare HF model.

Routing hooks equal the router computed by hand; each expert's neurons equal ``act(gate) * up`` on the
tokens routed to it; edits of logits, indices, expert and shared-expert neurons equal the same edit made
by hand on the bare model; mixed dense / MoE stacks hook each block by its own kind; what has no MoE
meaning (dense neurons, pos= on routed rows, a malformed index edit) is refused with the reason.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_backbones import _CASES, CASES, Case

from hooks_mm import HookedMLLM
from hooks_mm.adapters import BACKBONES, Adapter, adapter_for
from hooks_mm.interventions import NeuronAblation, Steer
from hooks_mm.model.moe import route, routed, scores
from hooks_mm.selectors import Image, NonPad
from hooks_mm.sweep import attribution_patching, sweep

MOE_CASES = ["qwen3_moe", "mixtral", "qwen2_moe", "qwen3_5_moe_text", "glm4v_moe_text"]
TOL = 1e-5


@pytest.fixture(params=MOE_CASES)
def case(request) -> Case:  # noqa: ANN001
    assert request.param in CASES
    if request.param not in _CASES:
        _CASES[request.param] = Case(request.param)
    return _CASES[request.param]


def _moe_layer(case: Case) -> int:
    return case.model.cfg.moe_layers[-1]


def _seen(case: Case, l: int, extra: list = ()) -> dict[str, object]:  # noqa: ANN001
    """The MoE block's input and the router's (logits, weights, indices) in a bare run."""
    seen: dict[str, object] = {}
    block = case.layers[l].mlp
    hooks = [
        (block, "pre", lambda m, args: seen.__setitem__("x", args[0].detach())),
        (block.gate, "fwd", lambda m, i, out: seen.__setitem__("router", out)),
        *extra,
    ]
    seen["logits"] = case.bare_run(hooks).logits
    return seen


def test_router_hooks_equal_the_router_by_hand(case: Case) -> None:
    l = _moe_layer(case)
    seen = _seen(case, l)
    p = f"blocks.{l}.mlp."
    _, c = case.model.run_with_cache(case.inputs, names_filter=lambda n: n.startswith(p + "hook_"))
    x, gate, moe = seen["x"], case.layers[l].mlp.gate, case.model.adapter.moe
    logits = x @ gate.weight.T
    probs = logits.sigmoid() if moe.score == "sigmoid" else logits.softmax(-1)  # GLM-4.5: per-expert sigmoid
    assert (c[p + "hook_router_logits"] - logits).abs().max() <= TOL
    assert (c[p + "hook_expert_weights"] - probs).abs().max() <= TOL
    _, weights, idx = seen["router"]
    assert torch.equal(c[p + "hook_expert_indices"], idx.view(*x.shape[:2], -1))
    assert c[p + "hook_expert_indices"].shape[-1] == case.model.cfg.top_k
    # the reroute of an edited softmax is the router's own rule (renorm / cast per model)
    w2, i2 = route(gate, moe, probs.flatten(0, 1), logits.dtype)
    assert torch.equal(i2, idx) and (w2 - weights).abs().max() <= TOL and w2.dtype == weights.dtype


def test_expert_neurons_equal_act_gate_times_up_on_the_routed_tokens(case: Case) -> None:
    l = _moe_layer(case)
    x = _seen(case, l)["x"]
    p = f"blocks.{l}.mlp."
    _, c = case.model.run_with_cache(case.inputs, names_filter=lambda n: n.startswith(p))
    experts = case.layers[l].mlp.experts
    d = case.model.cfg.d_expert
    counts = 0
    for e in range(case.model.cfg.n_experts):
        rows = routed(c[p + "hook_expert_indices"], e)
        xe = x[rows[:, 0], rows[:, 1]]
        w = experts.gate_up_proj[e]
        gate, up = xe @ w[:d].T, xe @ w[d:].T
        assert (c[f"{p}experts.{e}.hook_pre"] - gate).abs().max() <= TOL
        assert (c[f"{p}experts.{e}.hook_pre_linear"] - up).abs().max() <= TOL
        assert (c[f"{p}experts.{e}.hook_post"] - F.silu(gate) * up).abs().max() <= TOL
        counts += len(rows)
    assert counts == x.shape[0] * x.shape[1] * case.model.cfg.top_k  # every token in top_k experts


def test_an_edit_of_one_experts_neurons_equals_the_hand_edit(case: Case) -> None:
    """Adding ``delta`` to expert e's neurons adds ``w_e(t) * W_down[e] @ delta`` to the block output at the
    tokens t routed to e (w_e(t): the router's weight of e for t), computed here by hand on the bare model."""
    l, e = _moe_layer(case), 1
    block = case.layers[l].mlp
    delta = torch.randn(case.model.cfg.d_expert, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours = case.model.run_with_hooks(
            case.inputs, fwd_hooks=[(f"blocks.{l}.mlp.experts.{e}.hook_post", lambda x, hook: x + delta)]
        )
    state = {}

    def add(m, i, out):  # noqa: ANN001, ANN202
        _, weights, idx = state["router"]
        w = (weights * (idx == e)).sum(-1).view(*out.shape[:2], 1)
        return out + w * (block.experts.down_proj[e] @ delta)

    hand = case.bare_run([(block.gate, "fwd", lambda m, i, out: state.__setitem__("router", out)), (block, "fwd", add)])
    assert case.diff(ours, hand.logits) <= TOL and case.diff(ours, case.bare_run().logits) > 1e-3


def test_router_logit_edits_reroute_as_the_bare_model_would(case: Case) -> None:
    """Doubling the router logits = doubling the router's weight (a copy of the bare model)."""
    l = _moe_layer(case)
    with torch.no_grad():
        ours = case.model.run_with_hooks(
            case.inputs, fwd_hooks=[(f"blocks.{l}.mlp.hook_router_logits", lambda x, hook: 2 * x)]
        )
        hand = copy.deepcopy(case.bare)
        hand.model.language_model.layers[l].mlp.gate.weight.mul_(2)
        ref = hand(**case.inputs).logits
    assert case.diff(ours, ref) <= TOL and case.diff(ours, case.bare_run().logits) > 1e-4


def test_index_edits_send_tokens_to_other_experts(case: Case) -> None:
    l, n = _moe_layer(case), case.model.cfg.n_experts
    block = case.layers[l].mlp
    with torch.no_grad():
        ours = case.model.run_with_hooks(
            case.inputs, fwd_hooks=[(f"blocks.{l}.mlp.hook_expert_indices", lambda x, hook: (x + 1) % n)]
        )
    shifted = lambda m, i, out: (out[0], out[1], (out[2] + 1) % n)  # noqa: E731
    assert case.diff(ours, case.bare_run([(block.gate, "fwd", shifted)]).logits) <= TOL
    with pytest.raises(ValueError, match="hook_expert_indices: the edit returned .*return integer expert indices"):
        case.model.run_with_hooks(
            case.inputs, fwd_hooks=[(f"blocks.{l}.mlp.hook_expert_indices", lambda x, hook: x * 0)]
        )
    assert "forward" not in block.__dict__  # HF's forward is back after the error
    with torch.no_grad():
        assert torch.equal(case.model(case.inputs), case.bare_run().logits)


def test_hooked_moe_forward_equals_every_experts_implementation(case: Case) -> None:
    """The per-expert path equals HF's output whichever experts_implementation the model runs."""
    l = _moe_layer(case)
    names = [f"blocks.{l}.mlp.experts.0.hook_post", f"blocks.{l}.hook_mlp_out"]
    for impl in ("eager", "batched_mm", "grouped_mm"):
        bare = copy.deepcopy(case.bare)
        for layer in bare.model.language_model.layers:  # LLaVA has no set_experts_implementation
            if hasattr(layer.mlp, "experts"):
                layer.mlp.experts.config._experts_implementation = impl
        model = HookedMLLM(copy.deepcopy(bare))
        seen = {}
        block = bare.model.language_model.layers[l].mlp
        handle = block.register_forward_hook(lambda m, i, out: seen.__setitem__("out", out))
        with torch.no_grad():
            ref = bare(**case.inputs).logits
        handle.remove()
        logits, c = model.run_with_cache(case.inputs, names_filter=names)
        assert case.diff(logits, ref) <= TOL and case.diff(c[names[1]], seen["out"]) <= TOL, impl


@pytest.mark.parametrize("name", ["qwen2_moe", "qwen3_5_moe_text", "glm4v_moe_text"])
def test_shared_expert_neurons_and_their_edits(name: str) -> None:
    case = _CASES.get(name) or Case(name)
    l = _moe_layer(case)
    shared = case.layers[l].mlp.get_submodule(case.model.adapter.moe.shared)  # GLM-4.5: shared_experts, ungated
    x = _seen(case, l)["x"]
    p = f"blocks.{l}.mlp.shared_expert."
    _, c = case.model.run_with_cache(case.inputs, names_filter=lambda n: n.startswith(p))
    assert c[p + "hook_post"].shape == (*x.shape[:2], case.model.cfg.d_shared)
    gate, up = x @ shared.gate_proj.weight.T, x @ shared.up_proj.weight.T
    assert (c[p + "hook_pre"] - gate).abs().max() <= TOL and (c[p + "hook_pre_linear"] - up).abs().max() <= TOL
    assert (c[p + "hook_post"] - F.silu(gate) * up).abs().max() <= TOL
    delta = torch.randn(case.model.cfg.d_shared, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ours = case.model.run_with_hooks(case.inputs, fwd_hooks=[(p + "hook_post", lambda x, hook: x + delta)])
    hand = case.bare_run([(shared.down_proj, "pre", lambda m, args: (args[0] + delta,))]).logits
    assert case.diff(ours, hand) <= TOL and case.diff(ours, case.bare_run().logits) > 1e-3


def test_mixed_dense_and_moe_stacks_hook_each_block_by_its_kind() -> None:
    """qwen3_moe with mlp_only_layers=[0] and qwen2_moe with decoder_sparse_step=2: block 0 dense, block 1 MoE."""
    for name in ("qwen3_moe", "qwen2_moe"):
        case = _CASES.get(name) or Case(name)
        names = set(case.model.hook_dict)
        assert case.model.cfg.moe_layers == [1] and case.model.cfg.d_mlp == case.text.intermediate_size
        assert {"blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_pre_linear", "blocks.0.mlp.hook_post"} <= names
        assert not any(n.startswith("blocks.0.mlp.") and ("expert" in n or "router" in n) for n in names)
        assert {"blocks.1.mlp.hook_router_logits", "blocks.1.mlp.experts.3.hook_post"} <= names
        assert not {"blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post", "blocks.1.mlp.experts.4.hook_post"} & names
        assert ("blocks.1.mlp.shared_expert.hook_post" in names) == (name == "qwen2_moe")
    mixtral = _CASES.get("mixtral") or Case("mixtral")
    assert mixtral.model.cfg.moe_layers == [0, 1] and mixtral.model.cfg.d_mlp is None


def test_a_moe_stack_under_a_dense_row_is_refused_at_its_first_moe_block() -> None:
    case = _CASES.get("qwen3_moe") or Case("qwen3_moe")
    adapter = adapter_for(case.bare)
    wrong = Adapter(**{**adapter.__dict__, "backbone": BACKBONES["llama"]})
    with pytest.raises(NotImplementedError, match=r"\(row 'llama'\).*block 1 .*no module mlp.gate_proj"):
        HookedMLLM(copy.deepcopy(case.bare), adapter=wrong)


def test_experts_the_hooked_forward_cannot_reproduce_are_refused() -> None:
    case = _CASES.get("mixtral") or Case("mixtral")
    bare = copy.deepcopy(case.bare)
    bare.model.language_model.layers[1].mlp.experts.has_bias = True
    with pytest.raises(NotImplementedError, match=r"block 1 .*experts MixtralExperts with \{'has_bias': True\}"):
        HookedMLLM(bare)


def test_misuse_on_moe_layers_is_refused_with_the_reason(case: Case) -> None:
    l, model = _moe_layer(case), case.model
    with pytest.raises(KeyError, match=rf"layer {l} is a mixture-of-experts block.*experts.{{e}}.hook_post"):
        model.run_with_hooks(case.inputs, fwd_hooks=[(f"blocks.{l}.mlp.hook_post", lambda x, hook: x)])
    with pytest.raises(ValueError, match="axis 1 is not the sequence position"):
        model.run_with_interventions(case.inputs, NeuronAblation(l, [0], NonPad(), hook="mlp.experts.0.hook_post"))
    with pytest.raises(ValueError, match=r"pos=.*one row per token routed to the expert"):
        model.run_with_cache(case.inputs, pos=Image(), names_filter=lambda n: "experts.0." in n)
    _, c = model.run_with_cache(case.inputs, pos=Image(), names_filter=[f"blocks.{l}.mlp.hook_router_logits"])
    assert c[f"blocks.{l}.mlp.hook_router_logits"].shape == (2, 4, model.cfg.n_experts)
    metric = lambda logits: logits[:, -1].log_softmax(-1)[:, 7].sum()  # noqa: E731
    with pytest.raises(KeyError, match=f"layer {l} is a mixture-of-experts block"):
        attribution_patching(model, case.inputs, metric, layers=[l])
    dense = [k for k in range(model.cfg.n_layers) if k not in model.cfg.moe_layers]
    if dense:  # the default: the dense layers only
        assert attribution_patching(model, case.inputs, metric).layers == dense
    else:
        with pytest.raises(ValueError, match="every layer .* is a mixture of experts"):
            attribution_patching(model, case.inputs, metric)


def test_steering_the_router_equals_the_hand_edit(case: Case) -> None:
    """A Steer on hook_router_logits (position-indexed) reroutes: same as adding to the bare router's logits."""
    l, n = _moe_layer(case), case.model.cfg.n_experts
    vec = [3.0 * (-1) ** i for i in range(n)]
    ours = case.model.run_with_interventions(case.inputs, Steer(l, vec, NonPad(), hook="mlp.hook_router_logits"))
    gate, moe = case.layers[l].mlp.gate, case.model.adapter.moe
    real = case.real.flatten()[:, None]

    def steer(m, i, out):  # noqa: ANN001, ANN202
        logits = out[0] + torch.tensor(vec) * real
        return (logits, *route(gate, moe, scores(moe, logits), logits.dtype))

    hand = case.bare_run([(gate, "fwd", steer)]).logits
    assert case.diff(ours, hand) <= TOL and case.diff(ours, case.bare_run().logits) > 1e-4


def test_wanda_scores_the_router_of_moe_layers(case: Case) -> None:
    from hooks_mm.analysis import wanda_overlap

    table = wanda_overlap(case.model, [case.inputs])
    moe = table[table.layer.isin(case.model.cfg.moe_layers)]
    assert set(moe.linear) == {"q", "k", "v", "o", "router"} and table.iou.between(0, 1).all()


def test_sweep_over_a_dense_layer_of_a_moe_stack_is_exact() -> None:
    """The fast path on dense block 0 replays MoE block 1 with HF's forward: equals the naive loop."""
    case = _CASES.get("qwen3_moe") or Case("qwen3_moe")
    metric = lambda logits: logits[:, -1].log_softmax(-1)[:, 7].sum()  # noqa: E731
    configs = [NeuronAblation(0, [j], NonPad()) for j in range(4)]
    fast = sweep(case.model, case.inputs, configs, metric, progress=False)
    naive = sweep(case.model, case.inputs, configs, metric, progress=False, method="naive")
    assert fast.meta["fast"] == 4 and (fast.values - naive.values).abs().max() <= TOL


def test_activation_probabilities_on_a_moe_stack_names_the_moe_layer() -> None:
    """LAPE counts dense MLP neurons: on an all-MoE stack (Mixtral) the first layer is refused with the reason
    (it was a TypeError on cfg.d_mlp = None), on a mixed stack the dense layers still work."""
    from hooks_mm.analysis import activation_probabilities

    mixtral = _CASES.get("mixtral") or Case("mixtral")
    with pytest.raises(KeyError, match="layer 0 is a mixture-of-experts block"):
        activation_probabilities(mixtral.model, [mixtral.inputs])
    mixed = _CASES.get("qwen3_moe") or Case("qwen3_moe")
    probs = activation_probabilities(mixed.model, [mixed.inputs], layers=[0])
    assert probs.probs.shape[:2] == (1, mixed.model.cfg.d_mlp)


def test_glm_routing_equals_the_hand_computation() -> None:
    """GLM-4.5 routing, token by token: sigmoid scores; experts chosen by score + e_score_correction_bias among
    the topk_group groups whose two best biased scores sum highest; weights the unbiased scores renormalised,
    times routed_scaling_factor. The bias and the group limit change the choice of some tokens here."""
    case = _CASES.get("glm4v_moe_text") or Case("glm4v_moe_text")
    l, t = _moe_layer(case), case.text
    seen = _seen(case, l)
    p = f"blocks.{l}.mlp."
    _, c = case.model.run_with_cache(case.inputs, names_filter=lambda n: n.startswith(p + "hook_"))
    gate = case.layers[l].mlp.gate
    x, idx = seen["x"].flatten(0, 1), c[p + "hook_expert_indices"].flatten(0, 1)
    score = (x @ gate.weight.T).sigmoid()
    biased = score + gate.e_score_correction_bias
    size, changed = t.n_routed_experts // t.n_group, 0
    for i in range(len(x)):
        best2 = [sum(sorted(biased[i, g * size : (g + 1) * size].tolist())[-2:]) for g in range(t.n_group)]
        groups = sorted(range(t.n_group), key=lambda g: -best2[g])[: t.topk_group]
        candidates = [e for e in range(t.n_routed_experts) if e // size in groups]
        chosen = sorted(candidates, key=lambda e: -biased[i, e].item())[: t.num_experts_per_tok]
        assert set(chosen) == set(idx[i].tolist())
        weights = score[i, chosen] / score[i, chosen].sum() * t.routed_scaling_factor
        _, hf_weights, hf_idx = seen["router"]
        by_expert = dict(zip(hf_idx[i].tolist(), hf_weights[i].tolist()))
        assert max(abs(by_expert[e] - w) for e, w in zip(chosen, weights.tolist())) <= TOL
        changed += set(chosen) != set(score[i].topk(t.num_experts_per_tok).indices.tolist())
    assert changed > 0
    assert (c[p + "hook_expert_weights"].flatten(0, 1) - score).abs().max() <= TOL


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"bias": None}, r"router Glm4vMoeTextTopkRouter with e_score_correction_bias the row does not account for"),
        ({"score": "softmax", "bias": None, "groups": None, "scale": None}, r"with e_score_correction_bias, .*"),
        ({"shared": None}, r"MoE block modules the row does not name \(shared_experts\)"),
    ],
)
def test_a_routing_rule_the_row_does_not_name_is_refused(change: dict, problem: str) -> None:
    """A row that would reroute edits by another rule than the router's (or skip its shared expert) is refused."""
    from dataclasses import replace

    case = _CASES.get("glm4v_moe_text") or Case("glm4v_moe_text")
    adapter = adapter_for(case.bare)
    row = replace(adapter.backbone, moe=replace(adapter.moe, **change))
    with pytest.raises(NotImplementedError, match=r"block 1 .*" + problem):
        HookedMLLM(copy.deepcopy(case.bare), adapter=Adapter(**{**adapter.__dict__, "backbone": row}))


def test_qwen3_omni_audio_plans_follow_the_encoders_chunked_lengths() -> None:
    """Steps per clip equal HF's own count for clips shorter than, as long as and longer than one chunk; the
    steps of chunk c start at its first frame (100 c), 8 frames (80 ms at a 10 ms hop) apart within it."""
    from types import SimpleNamespace

    from transformers import Qwen3OmniMoeThinkerConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    from hooks_mm.adapters.moe_families import qwen3_omni_audio_plans
    from hooks_mm.zoo.omni import build_feature_extractor

    config = Qwen3OmniMoeThinkerConfig(audio_config={"n_window": 50})
    lengths = torch.tensor([1, 7, 8, 99, 100, 101, 130, 200, 257])
    mask = (torch.arange(300) < lengths[:, None]).long()
    plans = qwen3_omni_audio_plans(config, {"feature_attention_mask": mask}, None)
    assert [len(p.cells) for p in plans] == _get_feat_extract_output_lengths(lengths, 50).tolist()
    assert torch.isnan(plans[0].time).all()  # no processor: no rate
    processor = SimpleNamespace(feature_extractor=build_feature_extractor())  # 10 ms per mel frame
    (plan,) = qwen3_omni_audio_plans(config, {"feature_attention_mask": mask[-1:]}, processor)
    starts = [100 * c + 8 * k for c, n in ((0, 13), (1, 13), (2, 8)) for k in range(n)]  # 257 = 100 + 100 + 57
    assert torch.allclose(plan.time, torch.tensor(starts, dtype=torch.float64) * 0.01)


def test_a_hybrid_stack_with_no_dense_mlp() -> None:
    """Qwen3.5-MoE: every layer MoE (cfg.d_mlp None: no dense neuron exists), each with the gated shared expert;
    its linear-attention layer keeps the MoE hooks and has no attn.* hook."""
    case = _CASES.get("qwen3_5_moe_text") or Case("qwen3_5_moe_text")
    cfg, names = case.model.cfg, set(case.model.hook_dict)
    assert cfg.moe_layers == [0, 1] and cfg.d_mlp is None and cfg.mixer_layers == {0: "linear_attention"}
    assert (cfg.n_experts, cfg.top_k, cfg.d_expert, cfg.d_shared) == (4, 2, 16, 24)
    assert {"blocks.0.mlp.hook_router_logits", "blocks.0.mlp.shared_expert.hook_post", "blocks.1.attn.hook_q"} <= names
    assert not any(n.startswith("blocks.0.attn.") or n.endswith("mlp.hook_post") for n in names)
    with pytest.raises(ValueError, match="every layer .* is a mixture of experts"):
        attribution_patching(case.model, case.inputs, lambda logits: logits[:, -1, 7].sum())


def test_a_moe_row_with_an_unknown_score_is_refused() -> None:
    from hooks_mm.adapters.backbones import Moe

    with pytest.raises(
        ValueError, match=r"Moe\(score='softplus'\): the router's scores are 'softmax', 'sigmoid' or 'sigmoid_input'"
    ):
        Moe(score="softplus")
