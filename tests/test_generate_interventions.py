"""generate(interventions=...): every spec kind under KV-cached generation equals recomputing each step without
the cache (the spec compiled on the sequence so far), at prompt positions and at generated positions."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from conftest import assert_clean, pair_for
from transformers import LogitsProcessor, LogitsProcessorList

from hooks_mm import After, Generated, Image, Last, Modality, NonPad, Positions, Text
from hooks_mm.interventions import (
    AttentionKnockout,
    CentroidBank,
    CentroidReplacement,
    NeuronAblation,
    NeuronMeans,
    Patch,
    Skip,
    Steer,
)
from hooks_mm.layout import generation_layout

N_NEW = 4
TOP_K = 50  # HF generate's default top_k when sampling
FAMILIES = ["llava", "qwen2_vl", "gemma3", "idefics3"]


class Suppress(LogitsProcessor):
    """Special and media token ids never generated: a generated image token would be a real image placeholder
    in the recomputed sequence (HF then wants its pixels) but plain text in a cached step."""

    def __init__(self, ids: list[int]):
        self.ids = ids

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[:, self.ids] = -float("inf")
        return scores


def special_ids(model: Any) -> list[int]:
    configs = [model.hf_model.config, model.hf_model.config.get_text_config()]
    ids: set[int] = set()
    for c in configs:
        for k, v in vars(c).items():
            if k.endswith(("token_id", "token_index", "token_ids")):
                ids |= {v} if isinstance(v, int) else set(v) if isinstance(v, list) else set()
    eos = model.hf_model.generation_config.eos_token_id
    ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    tok = getattr(model.processor, "tokenizer", model.processor)
    ids |= set(getattr(tok, "all_special_ids", []))
    return sorted(i for i in ids if 0 <= i < model.cfg.d_vocab)


def extended(inputs: dict[str, Any], ids: torch.Tensor) -> dict[str, Any]:
    """The prompt's inputs for the sequence ``ids`` (prompt + generated): the attention mask extended by ones,
    other per-token inputs by the prompt's last token's (token types: text, PaliGemma's suffix), media unchanged."""
    b, n = inputs["input_ids"].shape
    out = dict(inputs, input_ids=ids)
    for k, v in inputs.items():
        if k != "input_ids" and torch.is_tensor(v) and tuple(v.shape[:2]) == (b, n):  # Mllama's cross-attention
            fill = torch.ones_like(v[:, -1:]) if k == "attention_mask" else v[:, -1:]  # mask: the last position's
            out[k] = torch.cat([v, fill.expand(b, ids.shape[1] - n, *v.shape[2:])], 1)
    return out


Ref = Callable[[int], Any]  # step k -> the spec (or raw hooks) for the sequence after k generated tokens


@torch.no_grad()
def recompute(p: Any, ref: Ref, sources: dict | None, sample_seed: int | None) -> tuple[torch.Tensor, list]:
    """Tokens and per-step logits, each step a full forward (no cache) of the sequence so far."""
    model = p.model
    batch = model.prepare(p.inputs)
    n = batch.shape[1]
    ext = generation_layout(batch.layout, n + N_NEW)
    inputs, ids, logits_out = dict(batch.model_inputs), batch["input_ids"], []
    suppress = special_ids(model)
    if sample_seed is not None:
        torch.manual_seed(sample_seed)
    for k in range(N_NEW):
        step = model.prepare(extended(inputs, ids)).with_layout(generation_layout(ext, n + k))
        spec = ref(k)
        if spec is None:
            logits = model(step)
        elif isinstance(spec, list):
            logits = model.run_with_hooks(step, fwd_hooks=spec)
        else:
            logits = model.run_with_interventions(step, spec, sources=sources)
        last = logits[:, -1].float()
        logits_out.append(last)
        scores = last.clone()
        scores[:, suppress] = -float("inf")
        if sample_seed is None:
            tok = scores.argmax(-1, keepdim=True)
        else:  # HF's default sampling: top-k 50 after the logits processors, then a multinomial draw
            kth = scores.topk(TOP_K, -1).values[:, -1:]
            tok = torch.multinomial(scores.masked_fill(scores < kth, -float("inf")).softmax(-1), 1)
        ids = torch.cat([ids, tok], 1)
    return ids, logits_out


def cached(p: Any, spec: Any, sources: dict | None, sample_seed: int | None, **kw: Any) -> Any:
    if sample_seed is not None:
        torch.manual_seed(sample_seed)
    return p.model.generate(
        p.inputs,
        max_new_tokens=N_NEW,
        interventions=spec,
        sources=sources,
        do_sample=sample_seed is not None,
        logits_processor=LogitsProcessorList([Suppress(special_ids(p.model))]),
        output_logits=True,
        return_dict_in_generate=True,
        **kw,
    )


def source_of(p: Any) -> dict[str, Any]:
    """The same prompts with negated pixels: the same layout, other activations."""
    return dict(p.inputs, pixel_values=-p.inputs["pixel_values"])


def cases(p: Any) -> dict[str, tuple[Any, Ref, bool]]:
    """name -> (spec, reference spec per step, reads the source run)."""
    model, d = p.model, p.model.cfg.d_model
    v = torch.randn(d, generator=torch.Generator().manual_seed(1)) * 3
    after_k = lambda spec: lambda k: spec if k > 0 else None  # noqa: E731  # Generated() is empty at k = 0
    means = NeuronMeans.fit(model, [p.inputs], layers=[0, 1])
    bank = CentroidBank.fit(model, [p.inputs], layer=1, positions=NonPad(), k=3)
    name = f"blocks.0.{'mlp.hook_post'}"
    src_act = model.run_with_cache(source_of(p), names_filter=[name])[1][name]
    text = model.layout(p.inputs).select(Text())

    def resample(x: torch.Tensor, hook: Any) -> torch.Tensor:  # the independent resample at prompt text
        x = x.clone()
        n = text.shape[1]
        x[:, :n] = torch.where(text[..., None], src_act.to(x), x[:, :n])
        return x

    src_last = list(range(-N_NEW, 0))
    steer_prompt = Steer(0, v.tolist(), Text() & ~Generated(), scale=4.0)
    ablate_gen = NeuronAblation(1, None, Generated())
    out: dict[str, tuple[Any, Ref, bool]] = {
        "ablate_zero/prompt": (NeuronAblation(0, None, ~Generated()), None, False),
        "ablate_zero/generated": (ablate_gen, after_k(ablate_gen), False),
        "ablate_mean/prompt": (
            NeuronAblation(0, None, Image() | Last() & ~Generated(), mode="mean", means=means),
            None,
            False,
        ),
        "ablate_mean/generated": (NeuronAblation(0, None, Generated(), mode="mean", means=means), None, False),
        "ablate_resample/prompt": (
            NeuronAblation(0, None, Text() & ~Generated(), mode="resample", source="src"),
            lambda k: [(name, resample)],
            True,
        ),
        "steer/prompt": (steer_prompt, None, False),
        "steer/generated_last": (Steer(1, v.tolist(), Last(), scale=4.0), None, False),
        "centroid/prompt": (CentroidReplacement(bank, Image(), a_interp=0.2), None, False),
        "centroid/generated": (CentroidReplacement(bank, Generated(), a_interp=0.0), None, False),
        "patch_same/prompt": (
            Patch([0, 1], source="src", positions=Image()),
            lambda k: Patch([0, 1], source="src", positions=Image(), source_positions=Image(), map="order"),
            True,
        ),
        "patch_order/prompt": (
            Patch(1, source="src", positions=Image(0), source_positions=Image(0), map="order"),
            None,
            True,
        ),
        "patch_order/generated": (
            Patch(
                1, source="src", component="resid_post", positions=Generated(), source_positions=src_last, map="order"
            ),
            lambda k: Patch(1, "src", "resid_post", Generated(), Positions(src_last[:k]), map="order") if k else None,
            True,
        ),
        "patch_grid/prompt": (Patch(0, source="src", positions=Image(), map="grid"), None, True),
        "knockout/prompt": (
            AttentionKnockout([0, 1], queries=After(Image()) & ~Generated(), keys=Image()),
            None,
            False,
        ),
        "knockout/generated": (AttentionKnockout([0, 1], queries=Generated(), keys=Image()), None, False),
        "skip/prompt": (Skip(0, "block", Image()), None, False),
        "skip/generated": (Skip(1, "block", Generated()), None, False),
        "compose/prompt+generated": (
            steer_prompt + ablate_gen,
            lambda k: steer_prompt + ablate_gen if k else steer_prompt,
            False,
        ),
    }
    for key, (spec, ref, reads) in out.items():
        if ref is None:
            ref = after_k(spec) if key.endswith("/generated") else (lambda k, s=spec: s)
        out[key] = (spec, ref, reads)
    return out


KINDS = [
    "ablate_zero/prompt",
    "ablate_zero/generated",
    "ablate_mean/prompt",
    "ablate_mean/generated",
    "ablate_resample/prompt",
    "steer/prompt",
    "steer/generated_last",
    "centroid/prompt",
    "centroid/generated",
    "patch_same/prompt",
    "patch_order/prompt",
    "patch_order/generated",
    "patch_grid/prompt",
    "knockout/prompt",
    "knockout/generated",
    "skip/prompt",
    "skip/generated",
    "compose/prompt+generated",
]
_CASES: dict[str, dict] = {}


def case(family: str, kind: str) -> tuple[Any, Any, Ref, bool]:
    p = pair_for(family)
    if family not in _CASES:
        _CASES[family] = cases(p)
    return (p, *_CASES[family][kind])


# a subset on two more families: PaliGemma (bidirectional prefix, suffix token types), Mllama (cross-attention)
MORE = [("paligemma", k) for k in ("steer/generated_last", "patch_same/prompt", "compose/prompt+generated")] + [
    ("mllama", k) for k in ("steer/generated_last", "ablate_zero/prompt", "compose/prompt+generated")
]


@pytest.mark.parametrize(("family", "kind"), [(f, k) for f in FAMILIES for k in KINDS] + MORE)
def test_generation_equals_recomputing_without_cache(family: str, kind: str) -> None:
    p, spec, ref, reads = case(family, kind)
    sources = {"src": source_of(p)} if reads else None
    out = cached(p, spec, sources, None)
    ids, logits = recompute(p, ref, sources, None)
    assert torch.equal(out.sequences, ids)
    assert len(out.logits) == N_NEW
    for k in range(N_NEW):
        torch.testing.assert_close(out.logits[k].float(), logits[k], atol=1e-4, rtol=1e-4)
    plain = cached(p, None, None, None)
    changed = max(float((a - b).abs().max()) for a, b in zip(out.logits, plain.logits))
    assert changed > 1e-3, f"{kind} changed nothing: the test could not fail"
    assert_clean(p.model) and p.model.positions is None


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_equals_recomputing_without_cache(family: str) -> None:
    p, spec, ref, _ = case(family, "compose/prompt+generated")
    out = cached(p, spec, None, 7)
    ids, logits = recompute(p, ref, None, 7)
    assert torch.equal(out.sequences, ids)
    for k in range(N_NEW):
        torch.testing.assert_close(out.logits[k].float(), logits[k], atol=1e-4, rtol=1e-4)
    other = cached(p, spec, None, 8)  # the seed matters: sampling, not argmax
    greedy = cached(p, spec, None, None)
    assert not (torch.equal(other.sequences, out.sequences) and torch.equal(greedy.sequences, out.sequences))
    assert_clean(p.model)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("kind", ["knockout/generated", "patch_order/generated", "ablate_resample/prompt"])
def test_use_cache_false_is_the_same_generation(family: str, kind: str) -> None:
    p, spec, _, reads = case(family, kind)
    sources = {"src": source_of(p)} if reads else None
    out, uncached = cached(p, spec, sources, None), cached(p, spec, sources, None, use_cache=False)
    assert torch.equal(out.sequences, uncached.sequences)
    for a, b in zip(out.logits, uncached.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert_clean(p.model)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_position_of_the_residual_equals_the_full_forward(family: str) -> None:
    """Not only the logits: the last block's residual at every computed position (each step's slice, collected by a
    raw hook running beside the spec) equals a full forward of the final sequence under the spec."""
    p = pair_for(family)
    model, name = p.model, f"blocks.{p.model.cfg.n_layers - 1}.hook_resid_post"
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(2)) * 3
    spec = Steer(0, v.tolist(), Generated(), scale=2.0) + AttentionKnockout(1, queries=Last(), keys=Image())
    slices: list[tuple[torch.Tensor, torch.Tensor]] = []
    record = lambda x, hook: slices.append((model.positions.clone(), x.detach().clone()))  # noqa: E731
    out = model.generate(
        p.inputs,
        max_new_tokens=N_NEW,
        interventions=spec,
        fwd_hooks=[(name, record)],
        logits_processor=LogitsProcessorList([Suppress(special_ids(model))]),
    )
    assert [len(pos) for pos, _ in slices] == [p.inputs["input_ids"].shape[1]] + [1] * (N_NEW - 1)
    got = torch.cat([x for _, x in slices], 1)  # [batch, prompt + N_NEW - 1, d]
    batch = model.prepare(p.inputs)
    full = model.prepare(extended(dict(batch.model_inputs), out[:, :-1]))
    full = full.with_layout(generation_layout(generation_layout(batch.layout, out.shape[1]), out.shape[1] - 1))
    with model.interventions(spec, full):
        _, cache = model.run_with_cache(full, names_filter=[name])
    real = full.layout.modality != Modality.PAD
    torch.testing.assert_close(got[real], cache[name][real], atol=1e-4, rtol=1e-4)
    _, plain = model.run_with_cache(full, names_filter=[name])
    assert float((plain[name] - cache[name])[real].abs().max()) > 1e-3  # the spec acts on the residual
    assert_clean(model)


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_a_static_cache_is_the_same_generation(family: str) -> None:
    """A static cache's attention scores hold every slot (keys past the step are masked): the knockout pads its
    block; gemma3's sliding-window layers hold only the most recent keys: the block's last columns."""
    p, spec, _, _ = case(family, "knockout/generated")
    out, static = cached(p, spec, None, None), cached(p, spec, None, None, cache_implementation="static")
    assert torch.equal(out.sequences, static.sequences)
    for a, b in zip(out.logits, static.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert_clean(p.model)
