"""Each intervention equals an independent computation of it, on several families."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_clean, pair_for

from hooks_mm import After, Image, Last, Modality, NonPad, Text, Where, zoo
from hooks_mm.interventions import (
    AttentionKnockout,
    CentroidBank,
    CentroidReplacement,
    Intervention,
    NeuronAblation,
    NeuronMeans,
    Patch,
    Skip,
    Steer,
    compose,
    patching_sweep,
)

FAMILIES = ["llava", "qwen2_vl", "gemma3", "paligemma", "anygpt"]
S = [1, 5, 9]


def other_images(p, seed: int = 0) -> dict:  # noqa: ANN001
    """The same prompt with different image content (same layout)."""
    inputs = dict(p.inputs)
    g = torch.Generator().manual_seed(seed)
    if "pixel_values" in inputs:
        pv = inputs["pixel_values"]
        inputs["pixel_values"] = pv + torch.randn(pv.shape, generator=g).to(pv)
    else:  # discrete codes: shift every image code within the code range
        lo, hi = p.model.hf_model.config.modality_token_ranges["image"]
        ids = inputs["input_ids"].clone()
        img = (ids >= lo) & (ids < hi)
        ids[img] = (ids[img] - lo + 1 + torch.randint(0, 3, ids[img].shape, generator=g)) % (hi - lo) + lo
        inputs["input_ids"] = ids
    return inputs


def capture(model, inputs, names, spec=None, sources=None):  # noqa: ANN001, ANN201
    """Activations at ``names`` in a run with ``spec`` (caching hooks run after the spec's)."""
    cache: dict = {}
    hooks = [(n, lambda x, hook: cache.__setitem__(hook.name, x.detach().clone())) for n in names]
    with torch.no_grad():
        if spec is None:
            model.run_with_hooks(inputs, fwd_hooks=hooks)
        else:
            with model.interventions(spec, inputs, sources=sources):
                model.run_with_hooks(inputs, fwd_hooks=hooks)
    return cache


def down_proj(p, layer: int):  # noqa: ANN001, ANN201
    a = p.model.adapter
    return p.model.hf_model.get_submodule(a.layers)[layer].get_submodule(a.mlp).get_submodule(a.down)


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_ablation_is_the_low_rank_update_of_down_proj(family: str) -> None:
    """Zero-ablating neurons S subtracts act[:, S] @ W_down[:, S]^T from down_proj's output."""
    p, l = pair_for(family), 1
    down, outs = down_proj(p, l), []
    handle = down.register_forward_hook(lambda m, i, o: outs.append(o.detach().clone()))
    try:
        clean = capture(p.model, p.inputs, [f"blocks.{l}.mlp.hook_post"])
        capture(p.model, p.inputs, [], NeuronAblation(layers=l, neurons=S, positions=Image()))
    finally:
        handle.remove()
    act = clean[f"blocks.{l}.mlp.hook_post"]
    img = p.model.layout(p.inputs).select(Image())
    w = down.weight[:, S]
    expected = outs[0] - (act[..., S] * img[..., None]) @ w.T
    assert (outs[1] - expected).abs().max().item() <= 1e-5
    assert (outs[1] - outs[0])[img].abs().max() > 0  # it did something
    assert_clean(p.model)


@pytest.mark.parametrize("family", FAMILIES)
def test_mean_scale_set_and_resample_ablation(family: str) -> None:
    p, l, name = pair_for(family), 0, "blocks.0.mlp.hook_post"
    layout = p.model.layout(p.inputs)
    clean = capture(p.model, p.inputs, [name])[name]
    means = NeuronMeans.fit(p.model, [p.inputs], layers=[l])
    # the means are the plain per-modality means of the cached activations
    for mod in (Modality.TEXT, Modality.IMAGE):
        assert torch.allclose(means.means[l][mod.name.lower()], clean[layout.modality == mod].mean(0), atol=1e-6)
    real = layout.select(NonPad())
    got = capture(p.model, p.inputs, [name], NeuronAblation(l, S, NonPad(), "mean", means=means))[name]
    want = means.for_positions(l, layout.modality)[..., S]
    assert torch.allclose(got[..., S][real], want[real], atol=1e-6)
    assert torch.equal(got[~real], clean[~real])
    assert torch.equal(got[..., [0, 2]], clean[..., [0, 2]])

    got = capture(p.model, p.inputs, [name], NeuronAblation(l, S, Image(), "scale", value=3.0))[name]
    img = layout.select(Image())
    assert torch.allclose(got[..., S][img], 3.0 * clean[..., S][img]) and torch.equal(got[~img], clean[~img])
    got = capture(p.model, p.inputs, [name], NeuronAblation(l, S, Last(), "set", value=-2.0))[name]
    assert (got[..., S][layout.select(Last())] == -2.0).all()

    source = other_images(p)
    src_act = capture(p.model, source, [name])[name]
    got = capture(
        p.model, p.inputs, [name], NeuronAblation(l, None, Image(), "resample", source="other"), {"other": source}
    )[name]
    assert torch.equal(got[img], src_act[img]) and torch.equal(got[~img], clean[~img])
    assert_clean(p.model)


@pytest.mark.parametrize("family", FAMILIES)
def test_knockout_equals_explicitly_masked_attention(family: str) -> None:
    """z = softmax(q k^T * scale, masked by the model's mask AND the knockout) @ v."""
    p, l = pair_for(family), 1
    spec = AttentionKnockout(layers=l, queries=Last() | Text(), keys=Image())
    names = [f"blocks.{l}.attn.hook_{h}" for h in ("rot_q", "rot_k", "v", "z")]
    c = capture(p.model, p.inputs, names, spec)
    q, k, v, z = (c[n] for n in names)
    bare = zoo.build(family).model  # the model's own mask, read off HF's eager attention weights
    bare.set_attn_implementation("eager")
    with torch.no_grad():
        allowed = bare(**p.inputs, output_attentions=True).attentions[l] > 0
    layout = p.model.layout(p.inputs)
    qs, ks = layout.select(Last() | Text()), layout.select(Image())
    allowed = allowed & ~(qs[:, None, :, None] & ks[:, None, None, :])
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    attn_mod = p.model.attention(l)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * attn_mod.scaling
    pattern = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    expected = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
    real = layout.select(NonPad())
    assert (z - expected)[real].abs().max().item() <= 1e-5
    pat = capture(p.model, p.inputs, [f"blocks.{l}.attn.hook_pattern"], spec)[f"blocks.{l}.attn.hook_pattern"]
    blocked = (qs[:, :, None] & ks[:, None, :])[:, None].expand_as(pat)
    assert pat[blocked].abs().max() == 0
    assert_clean(p.model)


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_every_position_of_every_layer_gives_the_clean_logits(family: str) -> None:
    p = pair_for(family)
    corrupted = other_images(p)
    with torch.no_grad():
        clean, corrupt = p.model(p.inputs), p.model(corrupted)
        assert not torch.equal(clean, corrupt)
        patched = p.model.run_with_interventions(
            corrupted, Patch(layers=None, source="clean"), sources={"clean": p.inputs}
        )
    assert torch.equal(patched, clean)
    assert_clean(p.model)


@pytest.mark.parametrize("family", ["llava", "anygpt"])
def test_cross_position_patch_writes_image_positions_of_a_into_text_positions_of_b(family: str) -> None:
    p, l = pair_for(family), 1
    name = f"blocks.{l}.hook_resid_pre"
    source = other_images(p)
    layout = p.model.layout(p.inputs)
    n = int(layout.select(Image(0)).sum(1)[0])
    last_n = Where(
        lambda L: (L.modality != Modality.PAD).flip(1).cumsum(1).flip(1).le(n) & (L.modality != Modality.PAD)
    )
    spec = Patch(layers=l, source="a", component="resid_pre", positions=last_n, source_positions=Image(0), map="order")
    got = capture(p.model, p.inputs, [name], spec, {"a": source})[name]
    src = capture(p.model, source, [name])[name]
    s_mask, t_mask = p.model.layout(source).select(Image(0)), layout.select(last_n)
    assert torch.equal(got[t_mask], src[s_mask])
    with pytest.raises(ValueError, match="per row the source selects"):
        p.model.run_with_interventions(
            p.inputs,
            Patch(layers=l, source="a", positions=Last(), source_positions=Image(0), map="order"),
            sources={"a": source},
        )
    assert_clean(p.model)


def test_grid_patch_resamples_between_different_image_token_counts() -> None:
    """Qwen2-VL, dynamic resolution: a 4x4-patch image patched into a 2x2 one, bilinear."""
    from PIL import Image as PILImage

    p = pair_for("qwen2_vl")
    proc = p.tiny.processor
    msg = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this image"}]}]
    text = proc.apply_chat_template(msg, tokenize=False, add_generation_prompt=True)
    noise = lambda n, seed: PILImage.fromarray(  # noqa: E731
        torch.randint(0, 256, (n, n, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8).numpy()
    )
    big = proc(text=[text], images=[noise(64, 1)], return_tensors="pt")
    small = proc(text=[text], images=[noise(32, 2)], return_tensors="pt")
    lb, ls = p.model.layout(dict(big)), p.model.layout(dict(small))
    assert lb.grids[0][0][1:] != ls.grids[0][0][1:]  # different grids
    name = "blocks.0.hook_resid_pre"
    with pytest.raises(ValueError, match="map='grid'"):
        p.model.run_with_interventions(
            dict(small), Patch(layers=0, source="big", positions=Image()), sources={"big": dict(big)}
        )
    got = capture(
        p.model, dict(small), [name], Patch(layers=0, source="big", positions=Image(), map="grid"), {"big": dict(big)}
    )[name]
    src = capture(p.model, dict(big), [name])[name]
    (_, rb, cb), (_, rs, cs) = lb.grids[0][0], ls.grids[0][0]
    grid = src[0][lb.select(Image())[0]].view(rb, cb, -1).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(grid, size=(rs, cs), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(got[0][ls.select(Image())[0]], expected.permute(1, 2, 0).reshape(rs * cs, -1), atol=1e-6)
    assert_clean(p.model)


def test_patching_sweep_normalised_effect() -> None:
    p = pair_for("llava")
    corrupted = other_images(p)
    layout = p.model.layout(p.inputs)
    last = layout.select(Last())
    target = p.model(p.inputs)[last].argmax(-1)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[last].log_softmax(-1).gather(-1, target[:, None]).squeeze(-1)

    groups = {"all": NonPad(), "image": Image(), "last": Last()}
    effect = patching_sweep(p.model, p.inputs, corrupted, metric, positions=groups)
    assert effect.shape == (p.model.cfg.n_layers, 3)
    assert torch.allclose(effect[:, 0], torch.ones(p.model.cfg.n_layers), atol=1e-5)  # everything patched = clean
    # an independent computation of one cell
    m = lambda x: float(metric(x).mean())  # noqa: E731
    with torch.no_grad():
        mc, mx = m(p.model(p.inputs)), m(p.model(corrupted))
        mp = m(
            p.model.run_with_interventions(corrupted, Patch(layers=1, positions=Image()), sources={"clean": p.inputs})
        )
    assert abs(effect[1, 1].item() - (mp - mx) / (mc - mx)) < 1e-5
    with pytest.raises(ValueError, match="undefined"):
        patching_sweep(p.model, p.inputs, p.inputs, metric)
    assert_clean(p.model)


@pytest.mark.parametrize("family", ["llava", "gemma3", "anygpt"])
def test_centroid_replacement_identity_collapse_and_saved_bank(family: str, tmp_path) -> None:  # noqa: ANN001
    p = pair_for(family)
    batches = [p.inputs, other_images(p, 1), other_images(p, 2)]
    text_after = After(Image())
    bank = CentroidBank.fit(p.model, batches, positions=text_after, k=4, n_iter=5)
    assert bank.layer == round(0.4 * p.model.cfg.n_layers) and bank.centroids.shape == (4, p.model.cfg.d_model)
    with torch.no_grad():
        clean = p.model(p.inputs)
        same = p.model.run_with_interventions(p.inputs, CentroidReplacement(bank, text_after, a_interp=1.0))
    assert torch.allclose(same, clean, atol=1e-5)
    name = bank.hook_name
    got = capture(p.model, p.inputs, [name], CentroidReplacement(bank, text_after, 0.0))[name]
    sel = p.model.layout(p.inputs).select(text_after)
    dist = torch.cdist(got[sel], bank.centroids).min(-1).values
    assert dist.max().item() <= 1e-5  # every replaced vector is a centroid
    bank.save(str(tmp_path / "bank"))
    loaded = CentroidBank.load(str(tmp_path / "bank"))
    spec = CentroidReplacement(loaded, text_after, 0.4)
    again = Intervention.from_dict(json.loads(json.dumps(spec.to_dict())))
    with torch.no_grad():
        a = p.model.run_with_interventions(p.inputs, CentroidReplacement(bank, text_after, 0.4))
        b = p.model.run_with_interventions(p.inputs, again)
    assert torch.equal(a, b)
    assert_clean(p.model)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "paligemma"])
def test_steering_and_skipping(family: str) -> None:
    p, l = pair_for(family), 1
    layout = p.model.layout(p.inputs)
    names = [f"blocks.{l}.hook_{h}" for h in ("resid_pre", "resid_mid", "mlp_out", "resid_post")]
    clean = capture(p.model, p.inputs, names)
    v = torch.randn(p.model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    got = capture(p.model, p.inputs, names, Steer(layers=l, vector=v.tolist(), positions=Text(), scale=2.0))
    txt = layout.select(Text())
    post = names[3]
    assert torch.allclose(got[post][txt], clean[post][txt] + 2.0 * v, atol=1e-6)
    assert torch.equal(got[post][~txt], clean[post][~txt])
    img = layout.select(Image())
    got = capture(p.model, p.inputs, names, Skip(layers=l, component="mlp", positions=Image()))
    assert (got[names[2]][img] == 0).all() and torch.allclose(got[post][img], got[names[1]][img])
    got = capture(p.model, p.inputs, names, Skip(layers=l, component="block", positions=Image()))
    assert torch.equal(got[post][img], got[names[0]][img])
    assert_clean(p.model)


def test_composition_applies_in_order_and_context_manager_matches() -> None:
    p, name = pair_for("llava"), "blocks.0.mlp.hook_post"
    scale = NeuronAblation(0, S, Image(), "scale", value=2.0)
    setv = NeuronAblation(0, S, Image(), "set", value=1.5)
    img = p.model.layout(p.inputs).select(Image())
    assert (capture(p.model, p.inputs, [name], scale + setv)[name][..., S][img] == 1.5).all()
    assert (capture(p.model, p.inputs, [name], setv + scale)[name][..., S][img] == 3.0).all()
    spec = compose([scale, Steer(1, [0.1] * p.model.cfg.d_model), AttentionKnockout(1, Last(), Image())])
    assert spec == scale + Steer(1, [0.1] * p.model.cfg.d_model) + AttentionKnockout(1, Last(), Image())
    with torch.no_grad():
        direct = p.model.run_with_interventions(p.inputs, spec)
        with p.model.interventions(spec, p.inputs):
            inside = p.model(p.inputs)
        after = p.model(p.inputs)
        assert torch.equal(direct, inside) and not torch.equal(direct, after)
        assert torch.equal(after, p.model(p.inputs))
    assert_clean(p.model)


@pytest.mark.parametrize(
    "spec, error, match",
    [
        (NeuronAblation(0, S, Image(3)), ValueError, r"Image\(3\) is out of range"),
        (Steer(0, [0.0] * 64, positions=Where(lambda L: L.grid_row > 99)), ValueError, "select nothing"),
        (Steer(0, [0.0] * 64, hook="hook_resid_psot"), KeyError, "hook_resid_post"),
        (NeuronAblation(7, S), IndexError, "out of range for a 2-layer model"),
        (NeuronAblation(0, [999]), IndexError, "within 0..127"),
        (Patch(0, source="nope"), KeyError, "sources="),
        (AttentionKnockout(0, Last(), Image(), heads=[9]), IndexError, "heads"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_model_stays_clean(spec, error, match) -> None:  # noqa: ANN001
    p = pair_for("llava")
    with torch.no_grad():
        clean = p.model(p.inputs)
        with pytest.raises(error, match=match):
            p.model.run_with_interventions(p.inputs, spec)
        assert_clean(p.model)
        assert torch.equal(p.model(p.inputs), clean)


def test_positions_that_select_nothing_and_a_bank_of_another_width() -> None:
    text, llava = pair_for("llama"), pair_for("llava")
    with pytest.raises(ValueError, match="select nothing"):
        text.model.run_with_interventions(text.inputs, NeuronAblation(0, S, Image()))
    bank = CentroidBank(torch.randn(4, 32), layer=1, meta={"architecture": "Gemma3ForConditionalGeneration"})
    with pytest.raises(ValueError, match="fitted on width 32 .*Gemma3.*width is 64"):
        llava.model.run_with_interventions(llava.inputs, CentroidReplacement(bank, Text(), 0.0))
    with pytest.raises(ValueError, match="mode='mean' needs means"):
        NeuronAblation(0, S, mode="mean")
    assert_clean(text.model) and assert_clean(llava.model)
