"""EXAONE-4's post-norm block (no norm before attention or the MLP); Llama 4's tiles and MoE block."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from hooks_mm import HookedMLLM
from hooks_mm.adapters import BACKBONES
from hooks_mm.model.moe import route, routed
from tests.test_backbones import Case


@pytest.fixture(scope="module")
def exaone() -> Case:
    return Case("exaone4")


def test_exaone4_block_has_no_ln1_or_ln2_hooks_and_resid_mid_is_the_mlp_input(exaone: Case) -> None:
    model = exaone.model
    assert model.adapter.backbone is BACKBONES["exaone4"]
    names = set(model.hook_dict)
    for l in range(model.cfg.n_layers):
        assert f"blocks.{l}.ln1.hook_normalized" not in names and f"blocks.{l}.ln2.hook_normalized" not in names
        assert f"blocks.{l}.hook_resid_mid" in names
    with pytest.raises(KeyError):
        model.run_with_cache(exaone.inputs, names_filter=["blocks.0.ln1.hook_normalized"])
    seen = {}
    exaone.bare_run([(exaone.layers[1].mlp, "pre", lambda m, args: seen.__setitem__("mid", args[0]))])
    _, cache = model.run_with_cache(exaone.inputs, names_filter=["blocks.1.hook_resid_mid"])
    assert torch.equal(cache["blocks.1.hook_resid_mid"], seen["mid"])


def test_exaone4_block_under_a_pre_norm_row_is_refused(exaone: Case) -> None:
    """The Llama-like row forced on EXAONE-4's block: input_layernorm is missing, named before any hook."""
    from hooks_mm.adapters import Adapter, adapter_for

    adapter = adapter_for(exaone.bare)
    wrong = Adapter(**{**adapter.__dict__, "backbone": BACKBONES["llama"]})
    with pytest.raises(NotImplementedError, match=r"backbone 'exaone4' \(row 'llama'\).*no module input_layernorm"):
        HookedMLLM(exaone.bare, adapter=wrong)


def test_llama4_plan_cells_are_the_pixel_shuffle_cells() -> None:
    """Each image position's (tile, row, col) is the cell the pixel shuffle builds from patches
    (2 row .. 2 row + 1, 2 col .. 2 col + 1) of that tile: a change to one patch of the vision adapter's
    input moves exactly the projected row the plan puts at that cell."""
    from hooks_mm.zoo.llama4_aria import PATCH, TILE, build_llama4

    tiny = build_llama4()
    model = HookedMLLM(tiny.model)
    plans = model.adapter.image_plans(tiny.model.config, tiny.inputs)
    plan = torch.cat(plans)  # [n_cells, 3] in pixel_values order, as the features are scattered
    # tile index within the whole batch: tiles of image i follow those of images before it
    starts = torch.tensor([0, *[int(p[:, 0].max()) + 1 for p in plans]]).cumsum(0)[:-1]
    global_tile = torch.cat([p[:, 0] + s for p, s in zip(plans, starts)])
    side = TILE // PATCH
    adapter = tiny.model.vision_model.vision_adapter

    def projected(bump: tuple[int, int, int] | None) -> torch.Tensor:
        def pre(m, args):  # noqa: ANN001, ANN202
            x = args[0].clone()
            if bump is not None:
                t, r, c = bump
                x[t, r * side + c] += 3.0
            return (x,)

        h = adapter.register_forward_pre_hook(pre)
        try:
            _, cache = model.run_with_cache(tiny.inputs, names_filter=["hook_projector_out"])
        finally:
            h.remove()
        return cache["hook_projector_out"].reshape(-1, cache["hook_projector_out"].shape[-1])

    clean = projected(None)
    assert len(clean) == len(plan)
    for tile, pr, pc in [(0, 0, 1), (0, 5, 2), (2, 3, 0), (6, 4, 5)]:
        moved = ((projected((tile, pr, pc)) - clean).abs().amax(-1) > 0).nonzero().flatten().tolist()
        want = ((global_tile == tile) & (plan[:, 1] == pr // 2) & (plan[:, 2] == pc // 2)).nonzero().flatten()
        assert moved == want.tolist(), (tile, pr, pc, moved, want)


# ---------------------------------------------------------------------------------------
# Llama 4's MoE block (Moe(score="sigmoid_input")), checked against the bare HF block by hand

L4 = 1  # the MoE block of the llama4_text case


@pytest.fixture(scope="module")
def llama4() -> Case:
    return Case("llama4_text")


def _block_input(case: Case) -> tuple[torch.Tensor, dict]:
    """The MoE block's input [batch, pos, d] and the bare router's (scores, logits) in a bare run."""
    seen: dict = {}
    block = case.layers[L4].feed_forward
    case.bare_run(
        [
            (block, "pre", lambda m, args: seen.__setitem__("x", args[0].detach())),
            (block.router, "fwd", lambda m, i, out: seen.__setitem__("router", out)),
        ]
    )
    return seen["x"], seen


def test_llama4_router_hooks_equal_the_router_by_hand(llama4: Case) -> None:
    x, seen = _block_input(llama4)
    p = f"blocks.{L4}.mlp."
    _, c = llama4.model.run_with_cache(llama4.inputs, names_filter=lambda n: n.startswith(p + "hook_"))
    router = llama4.layers[L4].feed_forward.router
    logits = x @ router.weight.T
    assert (c[p + "hook_router_logits"] - logits).abs().max() <= 1e-5
    assert (c[p + "hook_expert_weights"] - torch.sigmoid(logits)).abs().max() <= 1e-5
    scores, _ = seen["router"]  # HF: sigmoid of the top-k logits at the chosen experts, 0 elsewhere
    idx = c[p + "hook_expert_indices"].flatten(0, 1)
    assert idx.shape[-1] == llama4.model.cfg.top_k == 2
    chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)
    assert torch.equal(chosen, scores > 0)


def test_llama4_expert_neurons_read_the_score_scaled_input(llama4: Case) -> None:
    """Expert e's gate / up / neurons are those of x * score_e(x) on the tokens routed to e (score in the input)."""
    x, seen = _block_input(llama4)
    scores = seen["router"][0].view(*x.shape[:2], -1)
    p = f"blocks.{L4}.mlp."
    _, c = llama4.model.run_with_cache(llama4.inputs, names_filter=lambda n: n.startswith(p))
    experts, d = llama4.layers[L4].feed_forward.experts, llama4.model.cfg.d_expert
    assert d == experts.down_proj.shape[1]
    for e in range(llama4.model.cfg.n_experts):
        rows = routed(c[p + "hook_expert_indices"], e)
        xe = x[rows[:, 0], rows[:, 1]] * scores[rows[:, 0], rows[:, 1], e, None]
        gate, up = (xe @ experts.gate_up_proj[e]).chunk(2, dim=-1)
        assert (c[f"{p}experts.{e}.hook_pre"] - gate).abs().max() <= 1e-5
        assert (c[f"{p}experts.{e}.hook_pre_linear"] - up).abs().max() <= 1e-5
        assert (c[f"{p}experts.{e}.hook_post"] - F.silu(gate) * up).abs().max() <= 1e-5
    shared = llama4.layers[L4].feed_forward.shared_expert
    assert (c[p + "shared_expert.hook_post"] - F.silu(shared.gate_proj(x)) * shared.up_proj(x)).abs().max() <= 1e-5


def test_llama4_edits_of_neurons_routing_and_weights_equal_hand_edits(llama4: Case) -> None:
    block, n, e = llama4.layers[L4].feed_forward, llama4.model.cfg.n_experts, 1
    p = f"blocks.{L4}.mlp."
    delta = torch.randn(llama4.model.cfg.d_expert, generator=torch.Generator().manual_seed(7))
    state: dict = {}

    def keep(m, i, out):  # noqa: ANN001, ANN202
        state["scores"] = out[0]

    def add_neurons(m, i, out):  # noqa: ANN001, ANN202 (no weight after the expert: its score is in the input)
        mask = (state["scores"][:, e] > 0).to(out[0].dtype)[:, None]
        return (out[0] + mask * (delta @ block.experts.down_proj[e]), out[1])

    def shift(m, i, out):  # noqa: ANN001, ANN202 (the same scores, each at the next expert)
        scores = out[0]
        idx = torch.topk(out[1], block.router.top_k, dim=1).indices
        return (torch.zeros_like(scores).scatter_(1, (idx + 1) % n, scores.gather(1, idx)), out[1])

    def halve(m, i, out):  # noqa: ANN001, ANN202
        return (out[0] * 0.5, out[1])

    cases = [
        (
            f"{p}experts.{e}.hook_post",
            lambda x, hook: x + delta,
            [(block.router, "fwd", keep), (block, "fwd", add_neurons)],
        ),
        (p + "hook_expert_indices", lambda x, hook: (x + 1) % n, [(block.router, "fwd", shift)]),
        (p + "hook_expert_weights", lambda x, hook: x * 0.5, [(block.router, "fwd", halve)]),
    ]
    clean = llama4.bare_run().logits
    for name, fn, hand in cases:
        with torch.no_grad():
            ours = llama4.model.run_with_hooks(llama4.inputs, fwd_hooks=[(name, fn)])
        ref = llama4.bare_run(hand).logits
        assert llama4.diff(ours, ref) <= 1e-5 and llama4.diff(ours, clean) > 1e-4, name
    with torch.no_grad():  # doubled router logits = a doubled router weight (a copy of the bare model)
        ours = llama4.model.run_with_hooks(llama4.inputs, fwd_hooks=[(p + "hook_router_logits", lambda x, hook: 2 * x)])
        hand = copy.deepcopy(llama4.bare)
        hand.model.language_model.layers[L4].feed_forward.router.weight.mul_(2)
        assert llama4.diff(ours, hand(**llama4.inputs).logits) <= 1e-5 and llama4.diff(ours, clean) > 1e-4
    assert "forward" not in block.__dict__


def test_llama4_mlp_out_is_per_position_and_top1_routing_is_exact() -> None:
    """hook_mlp_out of the MoE block is [batch, pos, d] (the block returns [batch * pos, d]); the family's
    zoo model routes top-1: its routing hooks and the hooked forward match HF."""
    from hooks_mm.zoo.llama4_aria import build_llama4

    tiny = build_llama4()
    model = HookedMLLM(tiny.model)
    assert model.cfg.moe_layers == [1] and model.cfg.top_k == 1
    seen = {}
    block = tiny.model.language_model.model.layers[1].feed_forward
    h = block.register_forward_hook(lambda m, i, out: seen.__setitem__("out", out[0]))
    with torch.no_grad():
        ref = tiny.model(**tiny.inputs).logits
    h.remove()
    logits, c = model.run_with_cache(
        tiny.inputs, names_filter=lambda n: n.startswith("blocks.1.mlp.") or "mlp_out" in n
    )
    ids = tiny.inputs["input_ids"]
    assert c["blocks.1.hook_mlp_out"].shape == (*ids.shape, model.cfg.d_model)
    assert (c["blocks.1.hook_mlp_out"].flatten(0, 1) - seen["out"]).abs().max() <= 1e-5
    assert (logits - ref).abs().max() <= 1e-4
    assert c["blocks.1.mlp.hook_expert_indices"].shape == (*ids.shape, 1)


def test_llama4_moe_block_under_a_row_without_moe_is_refused_naming_it(llama4: Case) -> None:
    from dataclasses import replace

    from hooks_mm.adapters import Adapter, adapter_for

    adapter = adapter_for(llama4.bare)
    wrong = Adapter(**{**adapter.__dict__, "backbone": replace(BACKBONES["llama4_text"], moe=None)})
    with pytest.raises(
        NotImplementedError, match=r"block 1 .*a mixture-of-experts MLP \(feed_forward: Llama4TextMoe\)"
    ):
        HookedMLLM(llama4.bare, adapter=wrong)


# ---------------------------------------------------------------------------------------
# Aria's MoE block (every layer; transposed expert weights, softmax over the top-k logits, shared experts)


@pytest.fixture(scope="module")
def aria() -> Case:
    return Case("aria_text")


def test_aria_routing_and_expert_neurons_equal_the_block_by_hand(aria: Case) -> None:
    seen: dict = {}
    block = aria.layers[1].mlp
    aria.bare_run(
        [
            (block, "pre", lambda m, args: seen.__setitem__("x", args[0].detach())),
            (block.router, "fwd", lambda m, i, out: seen.__setitem__("router", out)),
        ]
    )
    x, (logits, weights, idx) = seen["x"], seen["router"]
    p = "blocks.1.mlp."
    _, c = aria.model.run_with_cache(aria.inputs, names_filter=lambda n: n.startswith(p))
    assert aria.model.cfg.moe_layers == [0, 1] and aria.model.cfg.d_mlp is None
    assert (c[p + "hook_router_logits"].flatten(0, 1) - logits).abs().max() <= 1e-5
    assert torch.equal(c[p + "hook_expert_indices"].flatten(0, 1), idx)
    # the reroute rule (renormalised top-k of the full softmax) is HF's softmax over the top-k logits
    w2, i2 = route(block.router, aria.model.adapter.moe, logits.softmax(-1, dtype=torch.float), logits.dtype)
    assert torch.equal(i2, idx) and (w2 - weights).abs().max() <= 1e-6
    experts = block.experts
    for e in range(aria.model.cfg.n_experts):
        rows = routed(c[p + "hook_expert_indices"], e)
        gate, up = (x[rows[:, 0], rows[:, 1]] @ experts.gate_up_proj[e]).chunk(2, dim=-1)  # stored [d_in, d_out]
        assert (c[f"{p}experts.{e}.hook_pre"] - gate).abs().max() <= 1e-5
        assert (c[f"{p}experts.{e}.hook_post"] - F.silu(gate) * up).abs().max() <= 1e-5
    shared = block.shared_experts
    assert (c[p + "shared_expert.hook_post"] - F.silu(shared.gate_proj(x)) * shared.up_proj(x)).abs().max() <= 1e-5


def test_aria_expert_neuron_edit_equals_the_hand_edit(aria: Case) -> None:
    """delta on expert e's neurons adds w_e(t) * delta @ down_proj[e] (stored [d_expert, d_model]) at its tokens."""
    block, e = aria.layers[1].mlp, 0
    delta = torch.randn(aria.model.cfg.d_expert, generator=torch.Generator().manual_seed(8))
    state: dict = {}

    def add(m, i, out):  # noqa: ANN001, ANN202
        _, weights, idx = state["router"]
        w = (weights * (idx == e)).sum(-1).view(*out.shape[:2], 1)
        return out + w * (delta @ block.experts.down_proj[e])

    with torch.no_grad():
        ours = aria.model.run_with_hooks(
            aria.inputs, fwd_hooks=[(f"blocks.1.mlp.experts.{e}.hook_post", lambda x, hook: x + delta)]
        )
    hand = aria.bare_run(
        [(block.router, "fwd", lambda m, i, out: state.__setitem__("router", out)), (block, "fwd", add)]
    )
    assert aria.diff(ours, hand.logits) <= 1e-5 and aria.diff(ours, aria.bare_run().logits) > 1e-3
