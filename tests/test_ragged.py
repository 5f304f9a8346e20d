"""Ragged batches (issue 16): rows selecting different numbers of positions.

Real ragged batches built with each family's processor: Qwen2-VL with images of two sizes,
LLaVA-NeXT anyres with images of two sizes, LLaVA with one row holding an image and one none.
Every padded ``pos=`` cache is checked against the full cache of the same run indexed by hand
per row, and against the bare HF forward's hidden states.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAMILIES, assert_clean, lm_outputs, pair_for

from hooks_mm import After, Audio, First, Image, Last, LastN, Modality, NonPad, Selector, Text, Video
from hooks_mm.analysis import activation_probabilities, attention_flow, pooled_by_modality
from hooks_mm.interventions import Patch
from hooks_mm.model.batch import take_positions
from hooks_mm.ragged import masked_mean, to_sequence
from hooks_mm.vis import attention_heads, attention_pattern
from hooks_mm.vis.patches import patch_maps
from hooks_mm.zoo.llava import sample_images

# (prompts, images) per family: two rows whose image-token counts differ
RAGGED = {
    "qwen2_vl": (["<image> describe", "<image> describe"], [(56, 56), (112, 140)]),  # 2x2 and 2x3 merged patches
    "llava_next": (["<image> describe", "<image> describe"], [(16, 90), (60, 64)]),  # anyres: two grids
    "llava": (["<image> describe", "what colour is it"], [(40, 30)]),  # row 1 holds no image
}


def ragged(family: str, seed: int = 0):  # noqa: ANN201
    """The family's pair and a ragged batch built with its processor (``seed``: other pixels, same sizes)."""
    p = pair_for(family)
    prompts, sizes = RAGGED[family]
    images = sample_images(seed, sizes)
    if family == "llava":
        images = [[images[0]], []]
    return p, p.model.prepare(p.model.to_inputs(prompts, images=images))


def names_for(model) -> list[str]:  # noqa: ANN001
    n = model.cfg.n_layers
    return [f"blocks.{l}.hook_resid_post" for l in range(n)] + [
        "blocks.0.mlp.hook_post",
        "blocks.0.hook_attn_out",
        "blocks.0.attn.hook_pattern",  # position axis 2 (the query)
    ]


@pytest.mark.parametrize("family", sorted(RAGGED))
def test_ragged_pos_cache_is_the_full_cache_per_row_padded_with_nan(family: str) -> None:
    p, batch = ragged(family)
    model, names = p.model, names_for(p.model)
    sel = batch.layout.select(Image())
    counts = sel.sum(1)
    assert len(set(counts.tolist())) == 2  # a ragged batch indeed
    with torch.no_grad():
        _, cache = model.run_with_cache(batch, names_filter=names, pos=Image())
        _, full = model.run_with_cache(batch, names_filter=names)
    n_max = int(counts.max())
    assert tuple(cache.positions.shape) == tuple(cache.position_mask.shape) == (2, n_max)
    assert cache.position_mask.dtype == torch.bool
    for r in range(2):
        idx, n = sel[r].nonzero().flatten(), int(counts[r])
        assert cache.positions[r, :n].tolist() == idx.tolist() and (cache.positions[r, n:] == -1).all()
        assert cache.position_mask[r].tolist() == [True] * n + [False] * (n_max - n)
        for name in names:
            dim = 2 if name.endswith("hook_pattern") else 1  # the position axis of the full tensor
            got, ref = cache[name][r], full[name][r]
            assert got.shape[dim - 1] == n_max
            assert torch.equal(got.narrow(dim - 1, 0, n), ref.index_select(dim - 1, idx)), name
            assert got.narrow(dim - 1, n, n_max - n).isnan().all(), name  # the fill: NaN, never a real-looking 0
    # independently of hooks_mm's caches: the bare HF forward's hidden states at the kept positions
    with torch.no_grad():
        hidden = lm_outputs(p.bare(**batch.model_inputs, output_hidden_states=True)).hidden_states
    real = cache.position_mask
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"][real], hidden[1][sel], rtol=1e-5, atol=1e-5)
    assert_clean(model)


def test_a_selection_as_wide_as_the_sequence_stays_aligned_with_it() -> None:
    """NonPad() on a left-padded batch: the widest row keeps every position, so the slots are not compacted
    (a [batch, seq] reader such as a heatmap would otherwise see the shorter row shifted)."""
    p = pair_for("llava")
    batch = p.model.prepare(p.inputs)
    real = batch.layout.select(NonPad())
    assert real.all(1).any() and not real.all()  # one full row and one left-padded row
    with torch.no_grad():
        _, cache = p.model.run_with_cache(batch, names_filter=["blocks.1.hook_resid_post"], pos=NonPad())
        _, full = p.model.run_with_cache(batch, names_filter=["blocks.1.hook_resid_post"])
    seq = real.shape[1]
    assert torch.equal(cache.position_mask, real)
    assert torch.equal(cache.positions, torch.where(real, torch.arange(seq), -1))
    x, ref = cache["blocks.1.hook_resid_post"], full["blocks.1.hook_resid_post"]
    assert torch.equal(x[real], ref[real]) and x[~real].isnan().all()
    assert_clean(p.model)


def test_equal_counts_are_unchanged_no_padding_and_an_all_true_mask() -> None:
    p = pair_for("llava")  # row 0 two images, row 1 one: Image(0) and Last() select equal counts
    layout = p.model.layout(p.inputs)
    for sel in (Image(0), Last(), First(3, of=Image())):
        with torch.no_grad():
            _, cache = p.model.run_with_cache(p.inputs, names_filter=["blocks.1.hook_resid_post"], pos=sel)
            _, full = p.model.run_with_cache(p.inputs, names_filter=["blocks.1.hook_resid_post"])
        idx = layout.indices(sel)  # the equal-count indices
        assert torch.equal(cache.positions, idx) and cache.position_mask.all()
        x = cache["blocks.1.hook_resid_post"]
        assert not x.isnan().any()
        assert torch.equal(x, full["blocks.1.hook_resid_post"][torch.arange(2)[:, None], idx])
    _, plain = p.model.run_with_cache(p.inputs, names_filter=["blocks.1.hook_resid_post"])
    assert plain.positions is None and plain.position_mask is None  # no pos=: nothing kept, no mask
    assert_clean(p.model)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_masked_mean_and_to_sequence_match_per_row_computations(family: str) -> None:
    p, batch = ragged(family)
    name = "blocks.1.hook_resid_post"
    with torch.no_grad():
        _, cache = p.model.run_with_cache(batch, names_filter=[name], pos=Image())
        _, full = p.model.run_with_cache(batch, names_filter=[name])
    sel, x, real = batch.layout.select(Image()), cache[name], cache.position_mask
    mean = masked_mean(x, real)
    for r in range(2):
        if sel[r].any():
            torch.testing.assert_close(mean[r], full[name][r][sel[r]].mean(0), rtol=1e-6, atol=1e-6)
        else:
            assert mean[r].isnan().all()  # no image in this row: no mean, not 0
    assert x.mean(1).isnan().any()  # a reduction without the mask shows NaN, not a plausible number
    assert torch.equal(x[real], full[name][sel])  # rows in order
    seq = to_sequence(x, cache.positions, batch.shape[1])
    assert torch.equal(seq[sel], full[name][sel]) and seq[~sel].isnan().all()
    with pytest.raises(ValueError, match="position_mask"):
        masked_mean(x, real[:, :1])
    with pytest.raises(TypeError, match="bool"):
        masked_mean(x, real.long())
    with pytest.raises(ValueError, match="past seq_len"):
        to_sequence(x, cache.positions, 3)


def test_patch_heatmap_values_from_a_ragged_cache_land_on_each_rows_grid() -> None:
    p, batch = ragged("qwen2_vl")
    name = "blocks.1.hook_resid_post"
    with torch.no_grad():
        _, cache = p.model.run_with_cache(batch, names_filter=[name], pos=Image())
        _, full = p.model.run_with_cache(batch, names_filter=[name])
    values = to_sequence(cache[name].norm(dim=-1), cache.positions, batch.shape[1])
    ref = full[name].norm(dim=-1)
    for r in range(2):
        (m,) = patch_maps(values, batch.layout, r)
        panel = m.panels[0]
        grid = batch.layout.grid(r, 0, 0)
        assert panel.values.shape == tuple(grid.shape)
        torch.testing.assert_close(torch.as_tensor(panel.values), ref[r][grid].double(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="do not match the layout"):  # the padded [batch, n_max] itself: refused
        patch_maps(cache[name].norm(dim=-1), batch.layout, 0)
    # a pos= attention pattern keeps only some queries: the attention views refuse it (full: fine)
    pattern = "blocks.0.attn.hook_pattern"
    with torch.no_grad():
        _, some = p.model.run_with_cache(batch, names_filter=[pattern], pos=Image())
        _, every = p.model.run_with_cache(batch, names_filter=[pattern])
    for r in range(2):
        attention_heads(every[pattern], batch.str_tokens[r], batch.layout, r)
        with pytest.raises(ValueError, match="cache the pattern without pos="):
            attention_heads(some[pattern], batch.str_tokens[r], batch.layout, r)
        with pytest.raises(ValueError, match="cache the pattern without pos="):
            attention_pattern(some[pattern][:, 0], batch.str_tokens[r], batch.layout, r)
    assert_clean(p.model)


def test_take_positions_refuses_padding_an_integer_activation() -> None:
    index = torch.tensor([[0, 2], [1, -1]])
    x = torch.arange(12.0).view(2, 3, 2)
    out = take_positions(x, "blocks.0.hook_resid_post", index)
    assert out[0].tolist() == [[0.0, 1.0], [4.0, 5.0]] and out[1, 0].tolist() == [8.0, 9.0]
    assert out[1, 1].isnan().all()
    with pytest.raises(RuntimeError, match="could not be told from real"):
        take_positions(x.long(), "blocks.0.hook_resid_post", index)


# ---------------------------------------------------------------- selectors


@pytest.mark.parametrize("family", sorted(RAGGED))
def test_first_and_last_n_pick_per_row_by_hand(family: str) -> None:
    _, batch = ragged(family)
    layout = batch.layout
    for of in (Image(), Text(), NonPad()):
        m = layout.select(of)
        for n in (1, 3, 5):
            first, last = layout.select(First(n, of=of)), layout.select(LastN(n, of=of))
            for r in range(2):
                pos = m[r].nonzero().flatten().tolist()
                assert first[r].nonzero().flatten().tolist() == pos[:n]  # rows with fewer keep what they have
                assert last[r].nonzero().flatten().tolist() == pos[-n:] if pos else not last[r].any()
    assert torch.equal(layout.select(LastN(1)), layout.select(Last()))
    assert torch.equal(layout.select(First(2)), layout.select(First(2, of=NonPad())))


def test_first_equalises_a_ragged_cache_and_composes() -> None:
    p, batch = ragged("qwen2_vl")
    with torch.no_grad():
        _, cache = p.model.run_with_cache(batch, names_filter=["blocks.0.hook_resid_post"], pos=First(4, of=Image()))
    assert cache.position_mask.all() and cache.positions.shape == (2, 4)
    assert torch.equal(cache.positions, batch.layout.indices(First(4, of=Image())))
    both = First(2, of=Image()) | LastN(1, of=Text())
    assert batch.layout.select(both).sum(1).tolist() == [3, 3]
    rest = Image() & ~First(2, of=Image())
    assert batch.layout.select(rest).sum(1).tolist() == (batch.layout.select(Image()).sum(1) - 2).tolist()
    assert_clean(p.model)


def test_first_and_last_n_serialise_and_refuse_bad_counts() -> None:
    for sel in (
        First(4, of=Image()),
        LastN(2, of=Text()),
        First(3),
        First(2, of=After(Image())) | LastN(1, of=Image(0)),
        ~First(1, of=Image(tile=1)),
    ):
        d = sel.to_dict()
        assert Selector.from_dict(json.loads(json.dumps(d))) == sel
        assert Selector.from_dict(json.dumps(d)) == sel
    assert First(3).to_dict() == {"selector": "First", "n": 3, "of": {"selector": "NonPad"}}
    assert First(3, of=Image()) != LastN(3, of=Image()) and First(3, of=Image()) != First(4, of=Image())
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(TypeError, match="positive int"):
            First(bad, of=Image())
    with pytest.raises(TypeError, match="cannot select positions"):
        LastN(2, of="image")
    with pytest.raises(ValueError, match="bad arguments"):
        Selector.from_dict({"selector": "First", "of": {"selector": "Image"}})  # n missing


# ---------------------------------------------------------------- patching


def capture(model, batch, name, spec=None, sources=None):  # noqa: ANN001, ANN201
    """``name``'s activations in a run (with ``spec``), and the logits."""
    out: dict = {}
    hooks = [(name, lambda x, hook: out.__setitem__("x", x.detach().clone()))]
    with torch.no_grad():
        if spec is None:
            logits = model.run_with_hooks(batch, fwd_hooks=hooks)
        else:
            with model.interventions(spec, batch, sources=sources):
                logits = model.run_with_hooks(batch, fwd_hooks=hooks)
    return out["x"], logits


def test_patch_order_pairs_rows_with_different_counts_and_refuses_unequal_source_target() -> None:
    p, target = ragged("qwen2_vl", seed=0)
    _, source = ragged("qwen2_vl", seed=1)  # same sizes, other pixels: 4 and 6 image tokens per row
    model, l = p.model, 1
    name = f"blocks.{l}.hook_resid_pre"
    t_sel, s_sel = First(3, of=Image()) | LastN(1, of=Text()), LastN(3, of=Image()) | First(1, of=Text())
    spec = Patch(layers=l, source="src", positions=t_sel, source_positions=s_sel, map="order")
    got, logits = capture(model, target, name, spec, {"src": source})
    src, _ = capture(model, source, name)
    tm, sm = target.layout.select(t_sel), source.layout.select(s_sel)
    assert torch.equal(got[tm], src[sm])

    def by_hand(x, hook):  # noqa: ANN001, ANN202  the same writes, position by position
        x = x.clone()
        for r in range(2):
            x[r, tm[r].nonzero().flatten()] = src[r, sm[r].nonzero().flatten()]
        return x

    with torch.no_grad():
        ref = model.run_with_hooks(target, fwd_hooks=[(name, by_hand)])
    assert torch.equal(logits, ref)
    # unequal counts inside a row (source 4 / 6 image tokens, target the first 4): refused, naming rows and fixes
    bad = Patch(layers=l, source="src", positions=First(4, of=Image()), source_positions=Image(), map="order")
    n1 = int(source.layout.select(Image()).sum(1)[1])
    assert n1 > 4
    with pytest.raises(ValueError, match=rf"\(row 1: source {n1}, target 4\).*map='grid'.*First\(n, of="):
        model.run_with_interventions(target, bad, sources={"src": source})
    # the fix the message names: equal counts per row
    fixed = Patch(l, "src", positions=First(4, of=Image()), source_positions=LastN(4, of=Image()), map="order")
    got, _ = capture(model, target, name, fixed, {"src": source})
    assert torch.equal(got[target.layout.select(First(4, of=Image()))], src[source.layout.select(LastN(4, of=Image()))])
    assert_clean(model)


# ---------------------------------------------------------------- analyses on ragged batches


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_analyses_reduce_each_row_over_its_own_positions(family: str) -> None:
    p, batch = ragged(family)
    model, n = p.model, p.model.cfg.n_layers
    layout = batch.layout
    img, txt = layout.select(Image()), layout.select(Text())
    names = [f"blocks.{l}.hook_resid_post" for l in range(n)]
    pat = [f"blocks.{l}.attn.hook_pattern" for l in range(n)]
    pre = [f"blocks.{l}.mlp.hook_pre" for l in range(n)]
    with torch.no_grad():
        _, full = model.run_with_cache(batch, names_filter=names + pat + pre)
    # pooled_by_modality: per row holding both, the mean over its own image (text) tokens
    pooled = pooled_by_modality(model, [batch])
    rows = [r for r in range(2) if img[r].any() and txt[r].any()]
    assert pooled.means["image"].shape[0] == len(rows)
    for k, r in enumerate(rows):
        for l, name in enumerate(names):
            torch.testing.assert_close(pooled.means["image"][k, l], full[name][r][img[r]].mean(0))
            torch.testing.assert_close(pooled.means["text"][k, l], full[name][r][txt[r]].mean(0))
    # attention_flow, reduce="mean": per query, the head-mean attention averaged over that row's keys
    q = layout.select(After(Image())) & img.any(1, keepdim=True)
    flows = attention_flow(model, batch, reduce="mean")
    for l, name in enumerate(pat):
        a = full[name].mean(1)
        per_query = [a[r, i][img[r]].mean() for r in range(2) for i in q[r].nonzero().flatten().tolist()]
        torch.testing.assert_close(flows[l], torch.stack(per_query).mean().float())
    # activation_probabilities: per modality, the fraction of its tokens (over all rows) with hook_pre > 0
    probs = activation_probabilities(model, [batch], modalities=("text", "image"))
    assert probs.tokens == {"text": int(txt.sum()), "image": int(img.sum())}
    for l, name in enumerate(pre):
        torch.testing.assert_close(probs.probs[l, :, 1], (full[name][img] > 0).float().mean(0))
    assert_clean(model)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_fits_and_metrics_on_ragged_batches_match_per_row_computations(family: str) -> None:
    from hooks_mm.interventions import CentroidBank, NeuronMeans
    from hooks_mm.sweep import answer_logprob, modality_nll

    p, batch = ragged(family)
    model, layout = p.model, batch.layout
    img, txt = layout.select(Image()), layout.select(Text())
    names = ["blocks.1.hook_resid_pre", "blocks.1.mlp.hook_post"]
    with torch.no_grad():
        logits, full = model.run_with_cache(batch, names_filter=names)
    # NeuronMeans: per modality, the mean over that modality's tokens of every row
    means = NeuronMeans.fit(model, [batch], layers=1)
    act = full["blocks.1.mlp.hook_post"].double()
    torch.testing.assert_close(means.means[1]["image"], act[img].mean(0).float())
    torch.testing.assert_close(means.means[1]["text"], act[txt].mean(0).float())
    assert means.counts[1]["image"] == int(img.sum())
    # CentroidBank: with k = the number of image tokens, every centroid is one token's vector (K-means)
    k = int(img.sum())
    bank = CentroidBank.fit(model, [batch], layer=1, positions=Image(), k=k, hook="hook_resid_pre")
    x = full["blocks.1.hook_resid_pre"][img].float()
    got, ref = bank.centroids, x
    got, ref = got[torch.argsort(got[:, 0])], ref[torch.argsort(ref[:, 0])]
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    assert bank.meta["n_tokens"] == k
    # modality_nll: the next-token NLL over each modality's tokens, all rows together
    lp = logits[:, :-1].float().log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    real_prev = layout.modality[:, :-1] != Modality.PAD
    want = txt[:, 1:] & real_prev
    torch.testing.assert_close(modality_nll(model, batch, "text")(logits), -lp[want].mean())
    # one-position metrics: a selection that is not one per row (ragged, or none in a row) is refused
    last_image = LastN(1, of=Image())
    if bool(img.any(1).all()):
        metric = answer_logprob(model, batch, targets=[5, 7], positions=last_image)
        at = layout.padded_indices(last_image)[0][:, 0]
        ref_lp = logits[torch.arange(2), at].float().log_softmax(-1)[torch.arange(2), torch.tensor([5, 7])].mean()
        torch.testing.assert_close(metric(logits), ref_lp)
    else:
        with pytest.raises(ValueError, match=r"must pick one position per row, got \[1, 0\]"):
            answer_logprob(model, batch, targets=[5, 7], positions=last_image)
    with pytest.raises(ValueError, match="must pick one position per row"):
        answer_logprob(model, batch, targets=[5, 7], positions=Image())
    assert_clean(model)


def test_patch_grid_resamples_each_row_of_a_ragged_batch_onto_its_own_grid() -> None:
    p, target = ragged("qwen2_vl")
    prompts, sizes = RAGGED["qwen2_vl"]
    source = p.model.prepare(p.model.to_inputs(prompts, images=sample_images(1, sizes[::-1])))  # sizes swapped
    model, name = p.model, "blocks.0.hook_resid_pre"
    tl, sl = target.layout, source.layout
    (t0, t1), (s0, s1) = tl.select(Image()).sum(1).tolist(), sl.select(Image()).sum(1).tolist()
    assert (t0, t1) == (s1, s0) and t0 != t1
    with pytest.raises(ValueError, match=rf"\(row 0: source {s0}, target {t0}, row 1: source {s1}, target {t1}\)"):
        model.run_with_interventions(target, Patch(0, "src", positions=Image(), map="order"), sources={"src": source})
    got, _ = capture(model, target, name, Patch(0, "src", positions=Image(), map="grid"), {"src": source})
    src, _ = capture(model, source, name)
    for r in range(2):
        s_grid, t_grid = sl.grid(r, 0, 0), tl.grid(r, 0, 0)
        assert s_grid.shape != t_grid.shape
        g = src[r, s_grid.flatten()].view(*s_grid.shape, -1).permute(2, 0, 1)[None]
        want = torch.nn.functional.interpolate(g, size=tuple(t_grid.shape), mode="bilinear", align_corners=False)
        torch.testing.assert_close(got[r, t_grid.flatten()], want[0].permute(1, 2, 0).reshape(t_grid.numel(), -1))
    assert_clean(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_pos_media_on_every_family_is_the_full_cache_per_row(family: str) -> None:
    """Every family's example batch (rows with other image / video / audio counts in most, some with none):
    ``pos=`` the media positions is the full cache at each row's own positions, NaN after them."""
    p = pair_for(family)
    m, media = p.model, Image() | Video() | Audio()
    names = ["blocks.0.hook_resid_post", f"blocks.{m.cfg.n_layers - 1}.hook_resid_post"]
    sel = m.layout(p.inputs).select(media)
    counts = sel.sum(1)
    if not bool(counts.any()):  # text only
        with pytest.raises(ValueError, match="selects no position"):
            m.run_with_cache(p.inputs, names_filter=names, pos=media)
        return
    with torch.no_grad():
        _, full = m.run_with_cache(p.inputs, names_filter=names)
        _, part = m.run_with_cache(p.inputs, names_filter=names, pos=media)
    assert part.position_mask.sum(1).tolist() == counts.tolist()
    for r in range(len(counts)):
        idx, n = sel[r].nonzero().flatten(), int(counts[r])
        assert part.positions[r, :n].tolist() == idx.tolist()
        for name in names:
            assert torch.equal(part[name][r, :n], full[name][r, idx])
            assert part[name][r, n:].isnan().all()
    assert_clean(m)
