"""Contrastive decoding as generation (VCD, TCCD, any spec): exact against a loop without the KV cache."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_clean, pair_for

from hooks_mm import After, Generated, Image, NonPad, Rows, Selector, Where
from hooks_mm.analysis import Reference, contrastive_generate, spec_reference, tccd, vcd
from hooks_mm.analysis.erasure import diffusion_noise, tccd_logits, vcd_logits
from hooks_mm.interventions import CentroidBank, CentroidReplacement, Patch, Steer
from hooks_mm.model import concat_inputs


def extend(inputs: dict, new: torch.Tensor) -> dict:
    """``inputs`` with the tokens ``new`` [batch, t] appended (text: attention 1, token types 0)."""
    ids = inputs["input_ids"]
    out = dict(inputs, input_ids=torch.cat([ids, new], 1))
    for k, v in inputs.items():
        if k != "input_ids" and torch.is_tensor(v) and v.shape == ids.shape:
            fill = torch.ones_like(new) if k == "attention_mask" else torch.zeros_like(new)
            out[k] = torch.cat([v, fill.to(v.dtype)], 1)
    return out


@torch.no_grad()
def loop(model, inputs, reference, alpha, beta, n, generator=None, temperature=1.0, forced=None, top_p=None):  # noqa: ANN001, ANN201, E501
    """Independent decoding: each step full forwards (no KV cache) of the clean and the reference
    sequence so far, combined by hand; EOS handled as HF does (pad after it, stop when all are done).
    ``forced`` [batch, n]: feed these tokens instead of the chosen ones (the logits along a given sequence)."""
    eos, pad = model.hf_model.generation_config.eos_token_id, model.hf_model.generation_config.pad_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    rows = inputs["input_ids"].shape[0]
    new = torch.empty(rows, 0, dtype=torch.long)
    done = torch.zeros(rows, dtype=torch.bool)
    steps = []
    for _ in range(n):
        x = extend(inputs, new)
        lp = model(x)[:, -1].float().log_softmax(-1)
        ref = reference(x)[:, -1].float().log_softmax(-1)
        cd = (1 + alpha) * lp - alpha * ref
        if beta > 0:
            cd[lp < math.log(beta) + lp.max(-1, keepdim=True).values] = float("-inf")
        steps.append(cd)
        if generator is None:
            tok = cd.argmax(-1)
        else:
            scores = cd / temperature
            if top_p is not None:  # the nucleus: tokens whose more probable tokens hold less than top_p
                probs, order = scores.softmax(-1).sort(-1, descending=True)
                drop = (probs.cumsum(-1) - probs) >= top_p
                scores = scores.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
            tok = torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]
        tok = torch.where(done, torch.full_like(tok, pad if pad is not None else min(eos)), tok)
        tok = tok if forced is None else forced[:, len(steps) - 1]
        new = torch.cat([new, tok[:, None]], 1)
        done |= torch.tensor([int(t) in eos for t in tok])
        if bool(done.all()):
            break
    return torch.cat([inputs["input_ids"], new], 1), torch.stack(steps, 1)


def noised(model, inputs, t=500, seed=0):  # noqa: ANN001, ANN201
    def run(x):  # noqa: ANN001, ANN202
        px = inputs["pixel_values"]
        noisy = diffusion_noise(px, t, seed=seed)
        if px.dim() == 5:  # Idefics: padding image slots (all zero) stay zero
            noisy = torch.where((px == 0).flatten(2).all(-1)[:, :, None, None, None], 0.0, noisy)
        return model(dict(x, pixel_values=noisy))

    return run


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_concat_inputs_keeps_each_image_with_its_row(family: str) -> None:
    p = pair_for(family)
    other = dict(p.inputs, pixel_values=p.inputs["pixel_values"].flip(-1))  # other pixels, same layout
    with torch.no_grad():
        a, b = p.model(p.inputs), p.model(other)
        assert (a - b).abs().max() > 1e-3  # the two halves are distinguishable
        ab, ba = p.model(concat_inputs(p.inputs, other)), p.model(concat_inputs(other, p.inputs))
    rows = a.shape[0]
    torch.testing.assert_close(ab[:rows], a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ab[rows:], b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ba[:rows], b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ba[rows:], a, atol=1e-4, rtol=1e-4)


def test_concat_inputs_idefics3_image_slots() -> None:
    p = pair_for("idefics3")
    px = p.inputs["pixel_values"]
    assert px.dim() == 5  # [batch, image slots, c, h, w]
    other = dict(p.inputs, pixel_values=px.flip(-1))
    with torch.no_grad():
        a, b = p.model(p.inputs), p.model(other)
        ab = p.model(concat_inputs(p.inputs, other))
    torch.testing.assert_close(ab, torch.cat([a, b]), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="image slots"):
        concat_inputs(p.inputs, dict(p.inputs, pixel_values=px[:, :2], pixel_attention_mask=None))


def test_concat_inputs_refuses_what_it_cannot_join() -> None:
    p = pair_for("llava")
    short = {k: v[:, 1:] if v.shape[:2] == p.inputs["input_ids"].shape else v for k, v in p.inputs.items()}
    with pytest.raises(ValueError, match="sequence length"):
        concat_inputs(p.inputs, short)
    with pytest.raises(ValueError, match="different keys"):
        concat_inputs(p.inputs, {k: v for k, v in p.inputs.items() if k != "pixel_values"})
    with pytest.raises(TypeError, match="not a tensor"):
        concat_inputs(p.inputs, dict(p.inputs, pixel_values=[1]))


def test_rows_selector() -> None:
    p = pair_for("llava")
    layout = p.model.layout(p.inputs)
    m = layout.select(Rows([1]))
    assert not m[0].any() and torch.equal(m[1], layout.select(NonPad())[1])
    both = layout.select(Image() & Rows(range(0, 1)))
    assert torch.equal(both[0], layout.select(Image())[0]) and not both[1].any()
    assert Selector.from_dict(Rows(range(2, 4)).to_dict()) == Rows([2, 3])
    with pytest.raises(ValueError, match="out of range"):
        layout.select(Rows(2))
    with pytest.raises(TypeError, match="row indices"):
        Rows([-1])


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3", "idefics3"])
def test_vcd_greedy_equals_the_uncached_loop(family: str) -> None:
    p = pair_for(family)
    tokens, logits = contrastive_generate(
        p.model, p.inputs, vcd(), alpha=1.0, beta=0.1, max_new_tokens=5, return_logits=True
    )
    want, want_logits = loop(p.model, p.inputs, noised(p.model, p.inputs), 1.0, 0.1, 5)
    assert torch.equal(tokens, want)
    torch.testing.assert_close(logits, want_logits, atol=1e-4, rtol=1e-4)
    # step 0 is the existing last-position VCD
    torch.testing.assert_close(logits[:, 0], vcd_logits(p.model, p.inputs, alpha=1.0, beta=0.1), atol=1e-5, rtol=1e-5)
    assert_clean(p.model)


def test_vcd_sampling_within_top_p_equals_the_uncached_loop() -> None:
    p = pair_for("llava")
    kw = dict(alpha=1.0, beta=0.0, max_new_tokens=5, do_sample=True, temperature=2.0, top_p=0.6)
    tokens, logits = contrastive_generate(
        p.model, p.inputs, vcd(), generator=torch.Generator().manual_seed(5), return_logits=True, **kw
    )
    no_media(p.model, tokens, p.inputs["input_ids"].shape[1])
    want, want_logits = loop(
        p.model, p.inputs, noised(p.model, p.inputs), 1.0, 0.0, 5, torch.Generator().manual_seed(5), 2.0, top_p=0.6
    )
    assert torch.equal(tokens, want)
    torch.testing.assert_close(logits, want_logits, atol=1e-4, rtol=1e-4)
    untruncated = contrastive_generate(
        p.model, p.inputs, vcd(), generator=torch.Generator().manual_seed(5), **kw | {"top_p": None}
    )
    assert not torch.equal(untruncated, tokens)  # the nucleus changed the draws


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_vcd_sampling_equals_the_uncached_loop(family: str) -> None:
    p = pair_for(family)
    tokens, logits = contrastive_generate(
        p.model,
        p.inputs,
        vcd(t=300, seed=1),
        alpha=0.5,
        beta=0.05,
        max_new_tokens=5,
        do_sample=True,
        temperature=1.5,
        generator=torch.Generator().manual_seed(7),
        return_logits=True,
    )
    want, want_logits = loop(
        p.model,
        p.inputs,
        noised(p.model, p.inputs, 300, 1),
        0.5,
        0.05,
        5,
        generator=torch.Generator().manual_seed(7),
        temperature=1.5,
    )
    assert torch.equal(tokens, want)
    torch.testing.assert_close(logits, want_logits, atol=1e-4, rtol=1e-4)
    greedy = contrastive_generate(p.model, p.inputs, vcd(t=300, seed=1), alpha=0.5, beta=0.05, max_new_tokens=5)
    assert not torch.equal(tokens, greedy)  # sampling at temperature 1.5 left the argmax path


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_alpha_zero_is_plain_greedy_generation(family: str) -> None:
    p = pair_for(family)
    plain = p.model.generate(p.inputs, max_new_tokens=5)
    assert torch.equal(contrastive_generate(p.model, p.inputs, vcd(), alpha=0.0, max_new_tokens=5), plain)
    assert not torch.equal(contrastive_generate(p.model, p.inputs, vcd(), alpha=3.0, beta=0.0, max_new_tokens=5), plain)


def test_the_checkpoint_generation_config_does_not_act_before_the_contrast() -> None:
    p = pair_for("llava")
    config = p.model.hf_model.generation_config
    want, _ = loop(p.model, p.inputs, noised(p.model, p.inputs), 1.0, 0.1, 5)
    before = config.repetition_penalty, config.suppress_tokens
    config.repetition_penalty, config.suppress_tokens = 50.0, [int(want[0, -5])]
    try:
        assert not torch.equal(p.model.generate(p.inputs, max_new_tokens=5)[:, -5:], want[:, -5:])
        assert torch.equal(contrastive_generate(p.model, p.inputs, vcd(), max_new_tokens=5), want)
        assert p.model.hf_model.generation_config.repetition_penalty == 50.0
    finally:
        config.repetition_penalty, config.suppress_tokens = before


def test_misuse_is_refused_before_any_hook() -> None:
    p = pair_for("llava")
    m, x = p.model, p.inputs
    with pytest.raises(ValueError, match="no pixel_values|none"):
        contrastive_generate(
            m,
            {k: v for k, v in x.items() if k != "pixel_values"}
            | {"input_ids": x["input_ids"][:, -3:], "attention_mask": x["attention_mask"][:, -3:]},
            vcd(),
        )
    for beta in (-0.1, 1.5):
        with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
            contrastive_generate(m, x, vcd(), beta=beta)
    with pytest.raises(ValueError, match="negative"):
        contrastive_generate(m, x, vcd(), alpha=-1.0)
    for alpha in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="NaN or infinity"):
            contrastive_generate(m, x, vcd(), alpha=alpha)
    with pytest.raises(ValueError, match="beam search"):
        contrastive_generate(m, x, vcd(), num_beams=3)
    with pytest.raises(ValueError, match="before the contrast"):
        contrastive_generate(m, x, vcd(), repetition_penalty=1.2)
    n_pad = [int((r == 0).sum()) for r in x["attention_mask"]]  # the same rows, padded on the right
    roll = {
        k: torch.stack([v[i].roll(-n) for i, n in enumerate(n_pad)])
        for k in ("input_ids", "attention_mask")
        for v in [x[k]]
    }
    right = dict(x, **roll)
    with pytest.raises(ValueError, match="right-padded"):
        contrastive_generate(m, right, vcd())
    with pytest.raises(ValueError, match="t is a diffusion step"):
        vcd(t=0)
    with pytest.raises(ValueError, match="temperature"):
        contrastive_generate(m, x, vcd(), do_sample=True, temperature=0.0)
    assert_clean(m)


def text_bank(p):  # noqa: ANN001, ANN201
    return CentroidBank.fit(p.model, [p.inputs] * 3, positions=After(Image()), k=4, n_iter=5)


def erased(model, bank, a_interp, positions=None):  # noqa: ANN001, ANN201
    """The TCCD reference of a full forward: the text after the image (every appended token too) replaced."""
    return lambda x: model.run_with_interventions(x, CentroidReplacement(bank, positions or After(Image()), a_interp))


def no_media(model, tokens, prompt):  # noqa: ANN001, ANN201
    """A tiny random model can generate an image token id, which a full forward of the sequence so far would
    read as an image position (the loop would then not be the same computation): parameters avoid it."""
    cfg = model.hf_model.config
    keys = ("image_token_index", "image_token_id", "vision_start_token_id", "vision_end_token_id", "boi_token_index")
    media = [getattr(cfg, k) for k in keys if isinstance(getattr(cfg, k, None), int)]
    assert not torch.isin(tokens[:, prompt:], torch.tensor(media)).any(), "pick parameters without media tokens"


@pytest.mark.parametrize(("family", "alpha"), [("llava", 1.0), ("qwen2_vl", 2.0), ("gemma3", 1.0)])
def test_tccd_greedy_equals_the_uncached_loop(family: str, alpha: float) -> None:
    p = pair_for(family)
    bank = text_bank(p)
    tokens, logits = contrastive_generate(
        p.model, p.inputs, tccd(bank, a_interp=0.0), alpha=alpha, beta=0.0, max_new_tokens=5, return_logits=True
    )
    no_media(p.model, tokens, p.inputs["input_ids"].shape[1])
    want, want_logits = loop(p.model, p.inputs, erased(p.model, bank, 0.0), alpha, 0.0, 5)
    assert torch.equal(tokens, want)
    torch.testing.assert_close(logits, want_logits, atol=1e-4, rtol=1e-4)
    # step 0 is the existing last-position TCCD (raw-logit form: the same up to a per-row constant)
    ref = tccd_logits(p.model, p.inputs, bank, alpha=alpha, a_interp=0.0)
    torch.testing.assert_close(logits[:, 0].log_softmax(-1), ref.log_softmax(-1), atol=1e-5, rtol=1e-5)
    # the generated positions are erased too: a reference erasing the prompt's text only differs after step 0
    prompt = p.inputs["input_ids"].shape[1]
    only_prompt = After(Image()) & Where(lambda L: torch.arange(L.shape[1])[None].expand(L.shape) < prompt)
    control = erased(p.model, bank, 0.0, only_prompt)
    _, prompt_logits = loop(p.model, p.inputs, control, alpha, 0.0, 5, forced=tokens[:, prompt:])
    torch.testing.assert_close(prompt_logits[:, 0], want_logits[:, 0])
    assert (prompt_logits[:, 1:] - want_logits[:, 1:]).abs().max() > 1e-3
    assert_clean(p.model)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_tccd_sampling_with_a_cut_equals_the_uncached_loop(family: str) -> None:
    p = pair_for(family)
    bank = text_bank(p)
    kw = dict(alpha=2.0, beta=0.05, max_new_tokens=5, do_sample=True, temperature=1.3, return_logits=True)
    tokens, logits = contrastive_generate(
        p.model, p.inputs, tccd(bank, 0.4), generator=torch.Generator().manual_seed(0), **kw
    )
    no_media(p.model, tokens, p.inputs["input_ids"].shape[1])
    want, want_logits = loop(
        p.model, p.inputs, erased(p.model, bank, 0.4), 2.0, 0.05, 5, torch.Generator().manual_seed(0), 1.3
    )
    assert torch.equal(tokens, want)
    torch.testing.assert_close(logits, want_logits, atol=1e-4, rtol=1e-4)


def test_any_spec_as_the_reference() -> None:
    p = pair_for("llava")
    v = torch.randn(p.model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 3
    spec = Steer(layers=1, vector=v.tolist(), positions=NonPad())
    tokens, logits = contrastive_generate(p.model, p.inputs, spec, beta=0.1, max_new_tokens=4, return_logits=True)
    want, want_logits = loop(p.model, p.inputs, lambda x: p.model.run_with_interventions(x, spec), 1.0, 0.1, 4)
    assert torch.equal(tokens, want)
    torch.testing.assert_close(logits, want_logits, atol=1e-4, rtol=1e-4)
    same = contrastive_generate(p.model, p.inputs, spec_reference(spec), beta=0.1, max_new_tokens=4)
    assert torch.equal(same, tokens)
    # a reference edited at the generated positions only: step 0 is plain decoding, later steps are not
    late = Steer(layers=1, vector=v.tolist(), positions=Generated())
    tokens, logits = contrastive_generate(p.model, p.inputs, late, beta=0.0, max_new_tokens=4, return_logits=True)
    generated = Where(lambda L: torch.arange(L.shape[1])[None].expand(L.shape) >= p.inputs["input_ids"].shape[1])
    assert (p.model(p.inputs)[:, -1] - p.model.run_with_interventions(p.inputs, spec)[:, -1]).abs().max() > 1e-2
    full = Steer(layers=1, vector=v.tolist(), positions=generated)
    prompt = p.inputs["input_ids"].shape[1]

    def steered(x):  # noqa: ANN001, ANN202
        return p.model(x) if x["input_ids"].shape[1] == prompt else p.model.run_with_interventions(x, full)

    want, want_logits = loop(p.model, p.inputs, steered, 1.0, 0.0, 4)
    assert torch.equal(tokens, want)
    torch.testing.assert_close(logits, want_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[:, 0], p.model(p.inputs)[:, -1].log_softmax(-1), atol=1e-5, rtol=1e-5)
    assert_clean(p.model)


def test_tccd_misuse() -> None:
    p = pair_for("llava")
    visual = CentroidBank.fit(p.model, [p.inputs], positions=Image(), k=4, n_iter=5)
    with pytest.raises(ValueError, match="fitted at positions"):
        tccd(visual)
    with pytest.raises(ValueError, match="sources belong to the spec"):
        contrastive_generate(p.model, p.inputs, vcd(), sources={"clean": p.inputs})
    with pytest.raises(TypeError, match="reference is vcd"):
        contrastive_generate(p.model, p.inputs, "vcd")
    with pytest.raises(ValueError, match="build references with"):
        Reference("spec")
    nan = Steer(layers=1, vector=[3e38] * p.model.cfg.d_model, positions=NonPad(), scale=10.0)  # overflows
    with pytest.raises(RuntimeError, match="NaN / inf logits"):
        contrastive_generate(p.model, p.inputs, nan, max_new_tokens=2)
    assert_clean(p.model)


def test_a_spec_that_ignores_its_positions_is_refused() -> None:
    from dataclasses import dataclass, field

    from hooks_mm.interventions.base import INTERVENTIONS, Edit, Intervention

    @dataclass
    class Everywhere(Intervention):  # a user spec whose edit does not follow positions=
        layers: int = 0
        positions: Selector = field(default_factory=NonPad)

        def edits(self, ctx):  # noqa: ANN001, ANN202
            return [Edit(ctx.hook_name("hook_resid_post", self.layers), ("zero", torch.ones(ctx.layout.shape).bool()))]

    try:
        p = pair_for("llava")
        with pytest.raises(ValueError, match="would change the clean rows"):
            contrastive_generate(p.model, p.inputs, Everywhere(), max_new_tokens=2)
        assert_clean(p.model)
    finally:
        INTERVENTIONS.pop("Everywhere", None)


def test_a_patch_reference_reads_its_source_run() -> None:
    p = pair_for("llava")
    other = dict(p.inputs, pixel_values=p.inputs["pixel_values"].flip(-1))
    spec = Patch(layers=1, source="other", positions=Image())
    ref = spec_reference(spec, {"other": other})
    tokens, logits = contrastive_generate(p.model, p.inputs, ref, beta=0.0, max_new_tokens=4, return_logits=True)
    # independent: the source's residual at the image positions written by a hand hook into full forwards
    name, prompt = "blocks.1.hook_resid_pre", p.inputs["input_ids"].shape[1]
    _, cache = p.model.run_with_cache(other, names_filter=[name])
    img = p.model.layout(p.inputs).select(Image())

    def patched(x):  # noqa: ANN001, ANN202
        def hook(t, hook):  # noqa: ANN001, ANN202
            t = t.clone()
            head = t[:, :prompt]
            head[img] = cache[name][img].to(t)
            return t

        return p.model.run_with_hooks(x, fwd_hooks=[(name, hook)])

    want, want_logits = loop(p.model, p.inputs, patched, 1.0, 0.0, 4)
    no_media(p.model, tokens, prompt)
    assert torch.equal(tokens, want)
    torch.testing.assert_close(logits, want_logits, atol=1e-4, rtol=1e-4)
    assert (logits[:, 0] - p.model(p.inputs)[:, -1].log_softmax(-1)).abs().max() > 1e-3  # the patch matters
    same = contrastive_generate(p.model, p.inputs, spec, sources={"other": other}, beta=0.0, max_new_tokens=4)
    assert torch.equal(same, tokens)


def test_without_the_kv_cache_the_same_tokens() -> None:
    p = pair_for("llava")
    bank = text_bank(p)
    kw = dict(alpha=1.0, beta=0.0, max_new_tokens=4, return_logits=True)
    tokens, logits = contrastive_generate(p.model, p.inputs, tccd(bank, 0.0), **kw)
    again, again_logits = contrastive_generate(p.model, p.inputs, tccd(bank, 0.0), use_cache=False, **kw)
    assert torch.equal(tokens, again)
    torch.testing.assert_close(logits, again_logits, atol=1e-4, rtol=1e-4)
    assert_clean(p.model)
