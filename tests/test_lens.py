"""The per-patch logit lens and direct logit attribution (hooks_mm.analysis.lens / .dla), against independent
computations: a full cache indexed by hand at patch positions found from the input ids and the config (not from
the layout), the bare HF model's logits, the norms' weights read by hand, and hook_attn_out of a full cache."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_clean, pair_for
from torch import nn

from hooks_mm.analysis import FrozenNorm, patch_dla, patch_logit_lens
from hooks_mm.selectors import Image, Last

FAMILIES = ["llava", "qwen2_vl", "gemma3", "idefics3"]
TOL = 1e-5


# ------------------------------------------------------------------ where the patches are, from ids + config


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for p in mask.nonzero().flatten().tolist():
        if out and out[-1][1] == p:
            out[-1][1] = p + 1
        else:
            out.append([p, p + 1])
    return [(a, b) for a, b in out]


def expected_tiles(family: str, row: int) -> list[list[torch.Tensor]]:
    """Per image of ``row`` (in order), its tiles as [rows, cols] grids of positions, from the input ids and config."""
    pair = pair_for(family)
    cfg, ids = pair.model.hf_model.config, pair.inputs["input_ids"]
    tok = cfg.image_token_id
    pos = (ids[row] == tok).nonzero().flatten()
    if family in ("llava", "gemma3"):
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        side = int(cfg.mm_tokens_per_image**0.5) if family == "gemma3" else side
        return [[block.view(side, side)] for block in pos.split(side * side)]
    if family == "qwen2_vl":
        m = cfg.vision_config.spatial_merge_size
        shapes = [(h // m, w // m) for _, h, w in pair.inputs["image_grid_thw"].tolist()]
        before = int((ids[:row] == tok).sum())  # tokens of the earlier rows' images, in batch order
        while before:
            before -= shapes[0][0] * shapes[0][1]
            shapes.pop(0)
        out, k = [], 0
        for h, w in shapes:
            if k == len(pos):
                break
            out.append([pos[k : k + h * w].view(h, w)])
            k += h * w
        return out
    if family == "idefics3":  # one run of 4x4 per tile; <global-img> (id 102) precedes the last tile of an image
        images, tiles = [], []
        for a, b in _runs(ids[row] == tok):
            tiles.append(torch.arange(a, b).view(4, 4))
            if int(ids[row, a - 1]) == 102:
                images.append(tiles)
                tiles = []
        return images
    raise AssertionError(family)


@torch.no_grad()
def hand_lens(model, resid: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    return model.resid_to_logits(resid).float().log_softmax(-1)


# ------------------------------------------------------------------ the lens


@pytest.mark.parametrize("family", FAMILIES)
def test_lens_equals_the_head_on_a_full_cache_at_the_patch_positions(family: str) -> None:
    pair = pair_for(family)
    m = pair.model
    before = {k: v.clone() for k, v in m.hf_model.state_dict().items()}
    n = m.cfg.n_layers
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(n)]
    with torch.no_grad():
        _, cache = m.run_with_cache(pair.inputs, names_filter=names)
        final = pair.bare_out().logits.float().log_softmax(-1)  # the bare HF model's own output
    tokens = [1, 7, m.cfg.d_vocab - 1]
    for image in (0, 1):
        lens = patch_logit_lens(m, pair.inputs, image=image, top_k=3, tokens=tokens)
        assert_clean(m)
        held = [r for r in range(2) if len(expected_tiles(family, r)) > image]
        assert sorted(lens.rows) == held, f"{family} image {image}: rows {sorted(lens.rows)}, expected {held}"
        for row in held:
            tiles = expected_tiles(family, row)[image]
            r = lens[row]
            # grid placement: tile t, cell (i, j) holds the position the ids say
            assert r.grid.shape[0] == len(tiles)
            for t, g in enumerate(tiles):
                assert torch.equal(r.grid[t, : g.shape[0], : g.shape[1]], g), f"{family} row {row} tile {t}"
                assert bool((r.grid[t, g.shape[0] :] == -1).all()) and bool((r.grid[t, :, g.shape[1] :] == -1).all())
            flat = torch.cat([g.flatten() for g in tiles])
            assert torch.equal(r.positions, flat.sort().values)
            for li, name in enumerate(names):
                ref = hand_lens(m, cache[name][row, flat])  # [cells, vocab], in tile-major cell order
                got_top = r.on_grid(r.top_probs[li, :, 0])  # [tile, rows, cols]
                got_lp = r.on_grid(r.logprobs[li].T)  # [n_tokens, tile, rows, cols]
                got_ids = r.on_grid(r.top_ids[li, :, 0])
                k = 0
                for t, g in enumerate(tiles):
                    for i in range(g.shape[0]):
                        for j in range(g.shape[1]):
                            assert abs(float(got_top[t, i, j]) - float(ref[k].max().exp())) <= TOL
                            assert float(ref[k, int(got_ids[t, i, j])]) == pytest.approx(float(ref[k].max()), abs=TOL)
                            torch.testing.assert_close(got_lp[:, t, i, j], ref[k, tokens], rtol=0, atol=TOL)
                            k += 1
                # every rank of the top-k, in order
                ref_rows = hand_lens(m, cache[name][row, r.positions])
                torch.testing.assert_close(r.top_probs[li], ref_rows.topk(3).values.exp(), rtol=0, atol=TOL)
            # the last lens layer is what the model outputs at those positions
            last = final[row, r.positions]
            torch.testing.assert_close(r.logprobs[-1], last[:, tokens], rtol=0, atol=1e-4)
            torch.testing.assert_close(r.top_probs[-1], last.topk(3).values.exp(), rtol=0, atol=1e-4)
    assert all(torch.equal(v, m.hf_model.state_dict()[k]) for k, v in before.items())


def test_lens_layers_and_strings() -> None:
    pair = pair_for("toy-llava")
    m = pair.model
    lens = patch_logit_lens(m, pair.inputs, layers=[-1, 0], top_k=2)
    assert lens.layers == [0, m.cfg.n_layers] and lens.hook_names[-1] == f"blocks.{m.cfg.n_layers - 1}.hook_resid_post"
    r = lens[0]
    assert r.logprobs is None and r.top_ids.shape == (2, 9, 2)
    assert r.top_tokens[1][4] == [m.tokenizer.decode([int(i)]) for i in r.top_ids[1, 4]]
    cells = r.grid_tokens(1)
    assert cells[0][1][2] == r.top_tokens[1][int(r.where.index[0, 1, 2])][0]
    with pytest.raises(KeyError, match="holds no image 0"):
        lens[7]
    with pytest.raises(ValueError, match="one value per position"):
        r.on_grid(torch.zeros(3))


# ------------------------------------------------------------------ direct logit attribution


def _final_direction(m, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """d = w_eff * u / rms(x), read by hand from the final norm's weights (RMSNorm; Gemma: 1 + w)."""
    norm = m.submodule(m.adapter.final_norm)
    w = norm.weight.detach().float() + (1.0 if "Gemma" in type(norm).__name__ else 0.0)
    eps = getattr(norm, "variance_epsilon", None) or norm.eps
    return w * u / (x.float().pow(2).mean(-1, keepdim=True) + eps).sqrt()


@pytest.mark.parametrize("family", [*FAMILIES, "toy-llava"])
def test_dla_sums_to_the_attribution_of_hook_attn_out(family: str) -> None:
    pair = pair_for(family)
    m = pair.model
    n, rows = m.cfg.n_layers, pair.inputs["input_ids"].shape[0]
    target, against = 3, 11
    dla = patch_dla(m, pair.inputs, target=target, against=against)
    assert_clean(m)
    q = dla.query
    ar = torch.arange(rows)
    real = pair.real
    assert torch.equal(q, torch.tensor([int(real[b].nonzero().max()) for b in range(rows)]))  # Last() by default
    outs: dict[int, torch.Tensor] = {}
    handles = [
        m.attention(l).get_submodule(m.adapter.o).register_forward_hook(lambda mod, i, o, l=l: outs.__setitem__(l, o))
        for l in range(n)
    ]
    try:
        with torch.no_grad():
            _, cache = m.run_with_cache(pair.inputs)
    finally:
        for h in handles:
            h.remove()
    logits = pair.bare_out().logits.float()
    x = cache[f"blocks.{n - 1}.hook_resid_post"][ar, q]
    u = (m.W_U[:, target] - m.W_U[:, against]).float()
    d = _final_direction(m, x, u)
    bu = float(m.b_U[target] - m.b_U[against])
    # the direction reproduces the bare model's logit difference at the query
    torch.testing.assert_close(
        (x.float() * d).sum(-1) + bu, logits[ar, q, target] - logits[ar, q, against], atol=1e-4, rtol=0
    )
    torch.testing.assert_close(dla.direction, d, atol=1e-5, rtol=1e-5)
    W_O = torch.stack([m.attention(l).get_submodule(m.adapter.o).weight.detach().float() for l in range(n)])
    h = m.cfg.n_heads
    W_O = W_O.view(n, W_O.shape[1], h, -1).permute(0, 2, 3, 1)  # [layer, head, d_head, d_model]
    post = m.adapter.attn_out != f"{m.adapter.attn}.{m.adapter.o}"
    for li, l in enumerate(dla.layers):
        # summed over every source and head: hook_attn_out's attribution at the query (these families: no o bias)
        ref = (cache[f"blocks.{l}.hook_attn_out"][ar, q].float() * d).sum(-1)
        torch.testing.assert_close(dla.per_source[:, li].sum((1, 2)), ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(dla.attn_out_dla[:, li], ref, atol=1e-5, rtol=1e-4)
        # one source patch, one head, by hand
        pattern, v = cache[f"blocks.{l}.attn.hook_pattern"], cache[f"blocks.{l}.attn.hook_v"]
        g = h // v.shape[2]
        for row in dla.where:
            tiles = expected_tiles(family, row)[0] if family != "toy-llava" else [dla.where[row].grid[0]]
            cell = (len(tiles) - 1, tiles[-1].shape[0] - 1, 0)
            s = int(tiles[cell[0]][cell[1], cell[2]])
            z = cache[f"blocks.{l}.attn.hook_z"][row, q[row]].float()  # [head, d_head]
            for head in range(h):
                vec = pattern[row, head, q[row], s] * (v[row, s, head // g].float() @ W_O[l, head])
                whole = z[head] @ W_O[l, head]  # the head's whole output at the query: its sum over sources
                if post:  # the post-attention norm with its scale frozen at the real o_proj output
                    norm = m.decoder_layers[l].get_submodule(m.adapter.attn_out)
                    o = outs[l][row, q[row]].float()
                    frozen = (norm.weight.detach().float() + 1.0) / (o.pow(2).mean() + norm.eps).sqrt()
                    vec, whole = frozen * vec, frozen * whole
                got = dla.on_grid(row)[li, head][cell]
                assert float(got) == pytest.approx(float((vec * d[row]).sum()), abs=1e-6, rel=1e-4)
                total = dla.per_source[row, li, head].sum()
                assert float(total) == pytest.approx(float((whole * d[row]).sum()), abs=1e-5, rel=1e-4)
    # a logit difference is the difference of the two attributions
    a, b = patch_dla(m, pair.inputs, target=target), patch_dla(m, pair.inputs, target=against)
    torch.testing.assert_close(dla.per_source, a.per_source - b.per_source, atol=1e-6, rtol=1e-5)
    # views' inputs: the image's values, NaN elsewhere
    vals = dla.values(0)
    assert torch.isnan(vals[~torch.isin(torch.arange(len(vals)), dla.where[0].positions)]).all()
    assert float(vals[dla.where[0].positions].sum()) == pytest.approx(float(dla.image_total(0).nansum()), abs=1e-5)


def test_dla_at_another_query_and_per_row_targets() -> None:
    pair = pair_for("llava")
    m = pair.model
    dla = patch_dla(m, pair.inputs, target=[3, 9], query=38, layers=[1])
    assert dla.layers == [1] and dla.query.tolist() == [38, 38] and dla.target.tolist() == [3, 9]
    with torch.no_grad():
        _, cache = m.run_with_cache(pair.inputs, names_filter=["blocks.1.hook_attn_out", "blocks.1.hook_resid_post"])
    x = cache["blocks.1.hook_resid_post"][:, 38]
    for row, t in enumerate((3, 9)):
        d = _final_direction(m, x[row : row + 1], m.W_U[:, t].float())[0]
        ref = float((cache["blocks.1.hook_attn_out"][row, 38].float() * d).sum())
        assert float(dla.per_source[row, 0].sum()) == pytest.approx(ref, abs=1e-5, rel=1e-4)


def test_frozen_norm_transpose_and_refusals() -> None:
    """FrozenNorm (on model.norms.norm_form): the frozen map reproduces the norm at its input, its transpose is the
    adjoint (what turns W_U's column into d), and an input that is not the norm's is refused."""
    torch.manual_seed(0)
    ln = nn.LayerNorm(8)
    nn.init.normal_(ln.weight), nn.init.normal_(ln.bias)
    x = torch.randn(3, 8) * 4 + 2
    gemma = pair_for("gemma3").model
    rms = copy.deepcopy(gemma.submodule(gemma.adapter.final_norm))  # Gemma's RMSNorm: (1 + w)
    nn.init.normal_(rms.weight)
    y = torch.randn(2, rms.weight.shape[0]) + 3
    with torch.no_grad():
        for norm, inp in ((ln, x), (rms, y)):
            f = FrozenNorm.at(norm, inp, norm(inp), "test norm")
            torch.testing.assert_close(f.linear(inp) + f.bias, norm(inp).float(), atol=1e-5, rtol=0)
            c, d = torch.randn(inp.shape), torch.randn(inp.shape)
            torch.testing.assert_close((f.linear(c) * d).sum(-1), (c * f.transpose(d)).sum(-1), atol=1e-4, rtol=1e-5)
        assert FrozenNorm.at(ln, x, ln(x), "t").form.centre and not FrozenNorm.at(rms, y, rms(y), "t").form.centre
        with pytest.raises(RuntimeError, match="does not reproduce its output at the query"):
            FrozenNorm.at(ln, x, ln(x) + 1.0, "final norm")


# ------------------------------------------------------------------ misuse: clear errors before any hook


@pytest.fixture
def no_run(monkeypatch):  # noqa: ANN001, ANN201
    pair = pair_for("toy-llava")

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a forward ran (hooks were added) before the misuse was refused")

    monkeypatch.setattr(pair.model, "run_with_hooks", boom)
    yield pair
    assert_clean(pair.model)


MISUSE = [
    ("lens", {"image": 1}, ValueError, r"image=1 is out of range: rows hold at most 1 image"),
    ("lens", {"image": -1}, TypeError, r"index of an image"),
    ("lens", {"layers": [5]}, ValueError, r"layers \[5\] out of range: this model has 4 of them"),
    ("lens", {"layers": "all"}, TypeError, r"give a layer index"),
    ("lens", {"tokens": [10**6]}, ValueError, r"outside the vocabulary 0\.\."),
    ("lens", {"tokens": "red"}, TypeError, r"token ids, not strings"),
    ("lens", {"tokens": [1.5]}, TypeError, r"integer token ids"),
    ("lens", {"top_k": 0}, ValueError, r"top_k=0: give an int in 1\.\."),
    ("dla", {"target": 10**6}, ValueError, r"target \[1000000\] outside the vocabulary"),
    ("dla", {"target": 3, "against": 3}, ValueError, r"against equals target"),
    ("dla", {"target": [3, 4]}, ValueError, r"2 token ids for a batch of 4 rows"),
    ("dla", {"target": 3, "layers": [3]}, ValueError, r"layers \[3\] out of range: this model has 3"),
    ("dla", {"target": 3, "image": 2}, ValueError, r"image=2 is out of range"),
    ("dla", {"target": 3, "query": Image()}, ValueError, r"selects \[9, 9, 9, 9\] positions per row"),
    ("dla", {"target": 3, "query": 0}, ValueError, r"query=0 is a padding position in rows \[\d"),
]


@pytest.mark.parametrize("kind, kwargs, error, match", MISUSE)
def test_misuse_is_refused_before_any_hook(no_run, kind, kwargs, error, match) -> None:  # noqa: ANN001
    call = patch_logit_lens if kind == "lens" else patch_dla
    with pytest.raises(error, match=match):
        call(no_run.model, no_run.inputs, **kwargs)


def test_inputs_without_an_image_are_refused(no_run) -> None:  # noqa: ANN001
    text = no_run.model.to_inputs(["what colour is the square ?"])
    for call, kw in ((patch_logit_lens, {}), (patch_dla, {"target": 3, "query": Last()})):
        with pytest.raises(ValueError, match=r"the inputs hold no image positions .*: pass inputs with an image"):
            call(no_run.model, text, **kw)


@pytest.mark.parametrize(
    "family, match",
    [("mllama", r"layer \d+: a cross-attention layer"), ("qwen3_5", r"layer 0: a linear_attention layer")],
)
def test_layers_without_a_per_head_ov_circuit_are_refused(family: str, match: str, monkeypatch) -> None:  # noqa: ANN001
    pair = pair_for(family)
    monkeypatch.setattr(pair.model, "run_with_hooks", lambda *a, **k: pytest.fail("ran before refusing"))
    with pytest.raises(NotImplementedError, match=match):
        patch_dla(pair.model, pair.inputs, target=3)


@pytest.mark.parametrize("family", ["mllama", "idefics2"])
def test_images_without_a_patch_grid_are_refused(family: str, monkeypatch) -> None:  # noqa: ANN001
    pair = pair_for(family)
    monkeypatch.setattr(pair.model, "run_with_hooks", lambda *a, **k: pytest.fail("ran before refusing"))
    with pytest.raises(ValueError, match="has no patch grid of positions"):
        patch_logit_lens(pair.model, pair.inputs)


def test_bfloat16_runs_and_agrees_with_float32() -> None:
    """The self-checks' tolerances follow the dtype: a bf16 model is not refused, and agrees with float32."""
    from hooks_mm import HookedMLLM

    pair = pair_for("toy-llava")
    half = HookedMLLM.from_pretrained("toy-llava", dtype=torch.bfloat16)
    ref, got = (patch_dla(m, pair.inputs, target=5, against=6) for m in (pair.model, half))
    assert float((got.per_source - ref.per_source).abs().max()) <= 0.03 * float(ref.per_source.abs().max())
    lens = patch_logit_lens(half, pair.inputs, tokens=[5])
    ref_lens = patch_logit_lens(pair.model, pair.inputs, tokens=[5])
    assert float((lens[0].logprobs - ref_lens[0].logprobs).abs().max()) <= 0.1
    assert_clean(half)


def test_the_self_checks_refuse_what_is_not_a_per_head_sum() -> None:
    """An attention output or final norm that is not what the decomposition assumes (here: edited by a live hook)
    gives an error, not a number."""
    pair = pair_for("llava")
    m = pair.model
    with m.hooks(fwd_hooks=[("blocks.1.hook_attn_out", lambda x, hook: x * 2)]):
        with pytest.raises(RuntimeError, match="do not add up to hook_attn_out's attribution"):
            patch_dla(m, pair.inputs, target=3)
    with m.hooks(fwd_hooks=[("ln_final.hook_normalized", lambda x, hook: x + 1)]):
        with pytest.raises(RuntimeError, match="final norm .* does not reproduce its output at the query"):
            patch_dla(m, pair.inputs, target=3)
    assert_clean(m)
    patch_dla(m, pair.inputs, target=3)  # and without the edits, it runs
