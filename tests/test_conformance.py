"""Every family on one interface: exact with no hooks, hook values equal HF's, edits reach the logits."""

from __future__ import annotations

import pytest
import torch
from conftest import IMAGE_FAMILIES, Pair, assert_clean, lm_outputs, pair_for, record

from hooks_mm import Last, Modality

TOL = 1e-5


def real_diff(a: torch.Tensor, b: torch.Tensor, real: torch.Tensor) -> float:
    """Max abs difference over non-padding positions ([batch, seq, ...] tensors)."""
    return (a - b)[real].abs().max().item()


def attn_name(pair: Pair, l: int) -> str:
    return "cross_attn" if l in pair.model.cfg.cross_attn_layers else "attn"


def test_bare_copies_have_identical_weights(pair: Pair) -> None:
    a, b = pair.model.hf_model.state_dict(), pair.bare.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_no_hooks_logits_equal_bare(pair: Pair) -> None:
    with torch.no_grad():
        ours = pair.model(pair.inputs)
    diff = (ours - pair.bare_out().logits).abs().max().item()
    record("logits, no hooks (all positions)", pair.family, diff)
    assert diff <= TOL


def test_cache_everything_logits_equal_bare(pair: Pair) -> None:
    with torch.no_grad():
        logits, cache = pair.model.run_with_cache(pair.inputs)
    assert set(cache.keys()) == set(pair.model.hook_dict)
    bare = pair.bare_out().logits
    diff = real_diff(logits, bare, pair.real)
    record("logits, every hook cached", pair.family, diff)
    assert diff <= TOL * max(1.0, bare[pair.real].abs().max().item())  # eager vs sdpa rounding scales with the logits
    assert_clean(pair.model)


def test_pattern_equals_hf_eager_attentions(pair: Pair) -> None:
    _, cache = pair.model.run_with_cache(pair.inputs, names_filter=lambda n: n.endswith("hook_pattern"))
    eager = pair.fresh_bare()
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = lm_outputs(eager(**pair.inputs, output_attentions=True)).attentions
    # HF returns the attention layers' weights (a hybrid stack's linear-attention / conv layers have none)
    layers = [l for l in range(pair.model.cfg.n_layers) if l not in pair.model.cfg.mixer_layers]
    assert len(attentions) == len(layers)
    worst = 0.0
    for l, ref in zip(layers, attentions):
        ours = cache[f"blocks.{l}.{attn_name(pair, l)}.hook_pattern"]
        assert ours.shape == ref.shape
        worst = max(worst, (ours - ref).transpose(1, 2)[pair.real].abs().max().item())
    record("hook_pattern vs HF eager attentions", pair.family, worst)
    assert worst <= TOL


def test_resid_post_equals_hf_hidden_states(pair: Pair) -> None:
    _, cache = pair.model.run_with_cache(pair.inputs, names_filter=lambda n: "hook_resid_p" in n)
    hs = pair.bare_out(output_hidden_states=True).hidden_states
    worst = real_diff(cache["blocks.0.hook_resid_pre"], hs[0], pair.real)
    for l in range(pair.model.cfg.n_layers - 1):  # HF's last hidden state is after the final norm
        worst = max(worst, real_diff(cache[f"blocks.{l}.hook_resid_post"], hs[l + 1], pair.real))
    record("resid_post[l] vs HF hidden_states[l+1]", pair.family, worst)
    assert worst <= TOL


def test_mlp_post_is_down_proj_input(pair: Pair) -> None:
    seen: dict[int, torch.Tensor] = {}
    a = pair.model.adapter
    layers = pair.bare.get_submodule(a.layers)
    handles = [
        layer.get_submodule(a.mlp)
        .get_submodule(a.down)
        .register_forward_pre_hook(lambda m, args, l=l: seen.__setitem__(l, args[0].detach()))
        for l, layer in enumerate(layers)
        if l not in pair.model.cfg.moe_layers  # mixture-of-experts blocks: per-expert neurons (tests/test_moe.py)
    ]
    try:
        pair.bare_out()
    finally:
        for h in handles:
            h.remove()
    _, cache = pair.model.run_with_cache(pair.inputs, names_filter=lambda n: n.endswith("mlp.hook_post"))
    assert len(seen) == pair.model.cfg.n_layers - len(pair.model.cfg.moe_layers)
    if not seen:  # every layer a mixture of experts (Aria, Qwen3.5-MoE): no dense neurons (tests/test_moe.py)
        assert not any(n.endswith("mlp.hook_post") for n in cache)
        return
    # OPT runs its MLP on [batch * pos, d_mlp]: the hook point shows [batch, pos, d_mlp]
    post = {l: cache[f"blocks.{l}.mlp.hook_post"] for l in seen}
    worst = max(real_diff(post[l], seen[l].reshape(post[l].shape), pair.real) for l in seen)
    record("mlp.hook_post vs down_proj input", pair.family, worst)
    assert worst <= TOL


def test_residual_stream_decomposes(pair: Pair) -> None:
    """resid_mid = resid_pre + attn_out, resid_post = resid_mid + mlp_out, and the next block
    starts where this one ended (plus the deepstack injection where there is one)."""
    _, c = pair.model.run_with_cache(pair.inputs)
    r, worst = pair.real, 0.0
    for l in range(pair.model.cfg.n_layers):
        p = f"blocks.{l}."
        worst = max(worst, real_diff(c[p + "hook_resid_mid"], c[p + "hook_resid_pre"] + c[p + "hook_attn_out"], r))
        worst = max(worst, real_diff(c[p + "hook_resid_post"], c[p + "hook_resid_mid"] + c[p + "hook_mlp_out"], r))
        if l + 1 < pair.model.cfg.n_layers:
            injected = c[p + "hook_deepstack"] if l in pair.model.cfg.injection_layers else 0
            worst = max(worst, real_diff(c[f"blocks.{l + 1}.hook_resid_pre"], c[p + "hook_resid_post"] + injected, r))
    assert worst <= TOL


def _add_noise(seed: int):  # noqa: ANN202
    def hook(x: torch.Tensor, hook) -> torch.Tensor:  # noqa: ANN001
        if not x.is_floating_point():  # MoE expert indices [batch, pos, top_k]: swap each token's slots (weights)
            return x.flip(-1) if x.shape[-1] > 1 else (x + 1) % (int(x.max()) + 1)  # top-1: the next expert used
        g = torch.Generator().manual_seed(seed)
        return x + torch.randn(x.shape, generator=g).to(x) * (x.detach().abs().mean() + 0.1)

    return hook


def test_every_hook_edit_changes_logits_and_leaves_model_clean(pair: Pair) -> None:
    m = pair.model
    weights = {k: v.clone() for k, v in m.hf_model.state_dict().items()}
    with torch.no_grad():
        clean = m(pair.inputs)
        inert = []
        for i, name in enumerate(m.hook_dict):
            edited = m.run_with_hooks(pair.inputs, fwd_hooks=[(name, _add_noise(i))])
            if real_diff(edited, clean, pair.real) < 1e-6:
                inert.append(name)
        again = m(pair.inputs)
    assert not inert, f"editing these hook points did not change the logits: {inert}"
    assert torch.equal(again, clean), "a clean run after the edits differs from the first"
    assert all(torch.equal(v, weights[k]) for k, v in m.hf_model.state_dict().items())
    assert_clean(m)
    record("hook points checked (count)", pair.family, float(len(m.hook_dict)))


def test_resid_mid_edit_is_written_into_the_residual_stream(pair: Pair) -> None:
    """Editing resid_mid changes resid_post by the edit plus the MLP's response to it."""
    m, l = pair.model, 0
    p = f"blocks.{l}."
    delta = torch.randn(m.cfg.d_model, generator=torch.Generator().manual_seed(0))
    cache: dict[str, torch.Tensor] = {}
    store = lambda x, hook: cache.__setitem__(hook.name, x.detach().clone())  # noqa: E731
    m.run_with_hooks(
        pair.inputs,
        fwd_hooks=[
            (p + "hook_resid_mid", lambda x, hook: x + delta),
            (p + "hook_resid_mid", store),
            (p + "hook_mlp_out", store),
            (p + "hook_resid_post", store),
        ],
    )
    _, clean = m.run_with_cache(pair.inputs, names_filter=[p + "hook_resid_mid"])
    assert real_diff(cache[p + "hook_resid_mid"], clean[p + "hook_resid_mid"] + delta, pair.real) <= TOL
    diff = real_diff(cache[p + "hook_resid_post"], cache[p + "hook_resid_mid"] + cache[p + "hook_mlp_out"], pair.real)
    assert diff <= TOL


def test_hooks_removed_when_a_hook_raises(pair: Pair) -> None:
    m = pair.model

    def boom(x, hook):  # noqa: ANN001, ANN202
        raise RuntimeError("hook failed")

    no_attn = 0 in m.cfg.cross_attn_layers or 0 in m.cfg.mixer_layers
    early = "blocks.0.hook_resid_pre" if no_attn else "blocks.0.attn.hook_pattern"
    late = "blocks.1.mlp.experts.0.hook_post" if 1 in m.cfg.moe_layers else "blocks.1.mlp.hook_post"
    with torch.no_grad():
        clean = m(pair.inputs)
        with pytest.raises(RuntimeError, match="hook failed"):
            m.run_with_hooks(pair.inputs, fwd_hooks=[(late, boom), (early, lambda x, hook: None)])
        assert_clean(m)
        assert torch.equal(m(pair.inputs), clean)


def test_stop_at_layer_returns_the_residual_there(pair: Pair) -> None:
    m = pair.model
    _, cache = m.run_with_cache(pair.inputs, names_filter="blocks.1.hook_resid_pre")
    out = m(pair.inputs, stop_at_layer=1)
    assert torch.equal(out, cache["blocks.1.hook_resid_pre"])
    assert_clean(m)


def test_pos_keeps_only_selected_positions(pair: Pair) -> None:
    m = pair.model
    la = min(set(range(m.cfg.n_layers)) - set(m.cfg.mixer_layers))  # the first layer with attention
    mlp = "mlp.hook_router_logits" if 0 in m.cfg.moe_layers else "mlp.hook_post"  # a per-position MLP hook
    names = ["blocks.0.hook_resid_post", f"blocks.{la}.{attn_name(pair, la)}.hook_pattern", f"blocks.0.{mlp}"]
    _, full = m.run_with_cache(pair.inputs, names_filter=names)
    _, part = m.run_with_cache(pair.inputs, names_filter=names, pos=Last())
    idx = part.positions
    assert idx.shape == (pair.inputs["input_ids"].shape[0], 1)
    assert (idx[:, 0] == pair.inputs["input_ids"].shape[1] - 1).all()  # left padded: last column
    rows = torch.arange(idx.shape[0])
    assert torch.equal(part["blocks.0.hook_resid_post"][:, 0], full["blocks.0.hook_resid_post"][rows, idx[:, 0]])
    assert torch.equal(part[names[2]][:, 0], full[names[2]][rows, idx[:, 0]])
    pat = names[1]
    assert torch.equal(part[pat][:, :, 0], full[pat][rows, :, idx[:, 0]])


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_layout_matches_image_features(family: str) -> None:
    p = pair_for(family)
    layout = p.model.layout(p.inputs)
    n_img_pos = int((layout.modality == Modality.IMAGE).sum())
    mask = p.model.adapter.image_mask(p.model.hf_model.config, p.inputs["input_ids"])
    assert n_img_pos == int((mask & p.real).sum()) > 0
    assert layout.n_images == p.n_images
    # every image of the batch sits in exactly one row and has distinct grid cells
    for k in range(layout.n_images):
        at = layout.image_id == k
        assert at.any(1).sum() == 1
        cells = torch.stack([layout.tile[at], layout.grid_row[at], layout.grid_col[at]], 1)
        patches = cells[cells[:, 2] >= 0]
        assert len(torch.unique(patches, dim=0)) == len(patches)
    # row 0 holds two images where the family's builder put two there
    assert int(layout.image_index[0].max()) + 1 >= 1
    assert not ((layout.modality == Modality.PAD) & (layout.image_id >= 0)).any()


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_hook_projector_out_lands_on_image_positions(family: str) -> None:
    """Vision-side hooks: editing the projector output moves only image (and video: the same
    vision tower encodes the frames) positions at layer 0."""
    p = pair_for(family)
    m = p.model
    if "hook_projector_out" not in m.hook_dict:
        pytest.skip(f"{family}: no projector path in its adapter (discrete image codes, or Ovis2's embedding table)")
    layout = m.layout(p.inputs)
    img = (layout.modality == Modality.IMAGE) | (layout.modality == Modality.VIDEO)
    _, clean = m.run_with_cache(p.inputs, names_filter="blocks.0.hook_resid_pre")
    cache: dict[str, torch.Tensor] = {}
    m.run_with_hooks(
        p.inputs,
        fwd_hooks=[
            ("hook_projector_out", lambda x, hook: x + 1.0),
            ("blocks.0.hook_resid_pre", lambda x, hook: cache.__setitem__("r", x.detach())),
        ],
    )
    moved = (cache["r"] - clean["blocks.0.hook_resid_pre"]).abs().amax(-1) > 1e-4
    if m.cfg.cross_attn_layers:  # Mllama: the projector feeds cross-attention, not positions
        assert not moved.any()
    else:
        assert moved[p.real].any() and not (moved & ~img).any()


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3", "mllama"])
def test_backward_hooks_see_the_autograd_gradient(family: str) -> None:
    """A "bwd" hook on mlp.hook_post receives d(loss)/d(down_proj input), as autograd computes it."""
    p = pair_for(family)
    grads: dict[str, torch.Tensor] = {}
    p.model.add_hook("blocks.0.mlp.hook_post", lambda g, hook: grads.__setitem__("g", g.detach()), dir="bwd")
    try:
        p.model(p.inputs)[:, -1].logsumexp(-1).sum().backward()
    finally:
        p.model.reset_hooks()
    a = p.model.adapter
    down = p.bare.get_submodule(a.layers)[0].get_submodule(a.mlp).get_submodule(a.down)
    seen: dict[str, torch.Tensor] = {}

    def keep(m, args):  # noqa: ANN001, ANN202
        args[0].retain_grad()
        seen["x"] = args[0]

    handle = down.register_forward_pre_hook(keep)
    try:
        p.bare(**p.inputs).logits[:, -1].logsumexp(-1).sum().backward()
    finally:
        handle.remove()
    assert torch.allclose(grads["g"], seen["x"].grad, atol=1e-6)
    p.model.hf_model.zero_grad(set_to_none=True)
    p.bare.zero_grad(set_to_none=True)
    assert_clean(p.model)
