"""TransformerLens's cache analyses (hooks_mm.model.cache.MLLMCache) against independent computations.

References are taken from the BARE HF copy with plain PyTorch hooks (the final norm's input and output, each
block's input and first / second norm's output, the head's output) or computed by hand from the HF weights
(``o_proj`` / ``down_proj`` columns, the norms' formulas written out here), on four wrapped families and on
LLaVA over LayerNorm (Persimmon, OPT), multiplier (Granite), sandwich-norm (Gemma-2, soft-capped) and parallel
(Cohere) backbones.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from conftest import assert_clean, pair_for
from test_backbones import _CASES, Case

from hooks_mm import HookedMLLM, zoo
from hooks_mm.selectors import Last, Positions

FAMILIES = ["llava", "qwen2_vl", "gemma3", "idefics3", "qwen3_vl"]  # qwen3_vl: deepstack injections
BACKBONES = ["persimmon", "opt", "granite", "gemma2", "cohere"]  # LayerNorm x2, multiplier, sandwich, parallel
TOL = 1e-4


@dataclass
class Target:
    name: str
    model: HookedMLLM
    bare: torch.nn.Module
    inputs: dict
    real: torch.Tensor


_TARGETS: dict[str, Target] = {}


def target(name: str) -> Target:
    if name not in _TARGETS:
        if name in BACKBONES:
            c = _CASES.get(name) or _CASES.setdefault(name, Case(name))
            _TARGETS[name] = Target(name, c.model, c.bare, c.inputs, c.real)
        else:
            p = pair_for(name)
            _TARGETS[name] = Target(name, p.model, p.bare, p.inputs, p.real)
    return _TARGETS[name]


ALL = FAMILIES + BACKBONES


def close(t: Target, ours: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> float:
    """Max abs difference over real positions, relative to the reference's scale (at least 1)."""
    ref = ref.reshape(ours.shape)  # OPT: its MLP half holds [batch * pos, d]
    diff = (ours - ref)[t.real].abs().max().item() / max(1.0, ref[t.real].abs().max().item())
    assert diff <= tol, f"{t.name}: max difference {diff:.2e}"
    return diff


@torch.no_grad()
def bare_run(t: Target) -> dict[str, Any]:
    """What the bare HF copy computes, caught with plain PyTorch hooks: the final norm's input / output, each
    block's input, its ln1 / ln2 outputs, each attention ``o`` module's output, and the head's output."""
    a, got = t.model.adapter, {}
    layers = t.bare.get_submodule(a.layers)
    handles = []

    def keep(key: str, what: str) -> Any:
        def fn(m: Any, args: Any, kwargs_or_out: Any, *rest: Any) -> None:
            x = (args[0] if args else kwargs_or_out["hidden_states"]) if what == "in" else kwargs_or_out
            got[key] = (x[0] if isinstance(x, tuple) else x).detach().clone()

        return fn

    final = t.bare.get_submodule(a.final_norm)
    handles.append(final.register_forward_pre_hook(keep("final_in", "in"), with_kwargs=True))
    handles.append(final.register_forward_hook(keep("final_out", "out")))
    handles.append(t.bare.get_output_embeddings().register_forward_hook(keep("head", "out")))
    for l, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(keep(f"in{l}", "in"), with_kwargs=True))
        for ln in ("ln1", "ln2"):
            if getattr(a, ln) is not None:
                handles.append(layer.get_submodule(getattr(a, ln)).register_forward_hook(keep(f"{ln}_{l}", "out")))
        handles.append(layer.get_submodule(f"{a.attn}.{a.o}").register_forward_hook(keep(f"o{l}", "out")))
    try:
        got["logits"] = t.bare(**t.inputs).logits
    finally:
        for h in handles:
            h.remove()
    return got


def full_cache(t: Target) -> tuple[torch.Tensor, Any]:
    logits, cache = t.model.run_with_cache(t.inputs)
    assert_clean(t.model)
    return logits, cache


# ---------------------------------------------------------------------------------------------- sums


@pytest.mark.parametrize("name", ALL)
def test_decompositions_sum_to_the_residual_the_bare_model_reads(name: str) -> None:
    t = target(name)
    ref, (_, cache) = bare_run(t), full_cache(t)
    n = t.model.cfg.n_layers
    for layer in range(n + 1):
        want = ref[f"in{layer}"] if layer < n else ref["final_in"]
        close(t, cache.decompose_resid(layer).sum(0), want)
        close(t, cache.get_full_resid_decomposition(layer, expand_neurons=False).sum(0), want)
        close(t, cache.get_full_resid_decomposition(layer).sum(0), want)
        close(t, cache.accumulated_resid(layer)[-1], want)
    stack, labels = cache.decompose_resid(return_labels=True)
    assert labels[0] == "embed" and len(labels) == stack.shape[0]
    if t.model.cfg.injection_layers:
        assert f"{t.model.cfg.injection_layers[0]}_deepstack" in labels
    mid = cache.get_full_resid_decomposition(1, mlp_input=True, expand_neurons=False).sum(0)
    close(t, mid, cache["blocks.1.hook_resid_mid"])


@pytest.mark.parametrize("name", ALL)
def test_each_head_is_a_hand_computation_and_heads_plus_bias_are_attn_out(name: str) -> None:
    t = target(name)
    ref, (_, cache) = bare_run(t), full_cache(t)
    cfg, a = t.model.cfg, t.model.adapter
    heads, labels = cache.stack_head_results(return_labels=True)
    assert labels == [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    for l in range(cfg.n_layers):
        layer = t.bare.get_submodule(a.layers)[l]
        o = layer.get_submodule(f"{a.attn}.{a.o}")
        z = cache[f"blocks.{l}.attn.hook_z"]
        d = z.shape[-1]
        for h in range(cfg.n_heads):
            hand = z[..., h, :] @ o.weight[:, h * d : (h + 1) * d].T
            if name in ("gemma3", "gemma2"):  # the post-attention norm, (1 + w), its scale frozen on o_proj's output
                post = layer.post_attention_layernorm
                hand = hand / (ref[f"o{l}"].pow(2).mean(-1, keepdim=True) + post.eps).sqrt() * (1 + post.weight)
            if name == "granite":
                hand = hand * t.bare.config.text_config.residual_multiplier
            close(t, heads[l * cfg.n_heads + h], hand)
        mine = heads[l * cfg.n_heads : (l + 1) * cfg.n_heads].sum(0) + _attn_bias(cache, l)
        close(t, mine, cache[f"blocks.{l}.hook_attn_out"])
    full, full_labels = cache.get_full_resid_decomposition(expand_neurons=False, return_labels=True)
    every_attn_out = sum(cache[f"blocks.{l}.hook_attn_out"] for l in range(cfg.n_layers))
    close(t, heads.sum(0) + full[full_labels.index("bias")], every_attn_out)
    if name in ("opt", "persimmon"):  # o_proj biases: a nonzero bias row
        assert full[full_labels.index("bias")].abs().max() > 1e-3


def _attn_bias(cache: Any, l: int) -> torch.Tensor:
    """Layer ``l``'s ``o`` bias part: the difference of two full decompositions' bias rows."""
    hi, lab = cache.get_full_resid_decomposition(l, mlp_input=True, expand_neurons=False, return_labels=True)
    lo, lab0 = cache.get_full_resid_decomposition(l, expand_neurons=False, return_labels=True)
    return hi[lab.index("bias")] - lo[lab0.index("bias")]


@pytest.mark.parametrize("name", ["llava", "gemma3", "persimmon", "granite"])
def test_each_neuron_is_a_hand_computation(name: str) -> None:
    t = target(name)
    _, cache = full_cache(t)
    a = t.model.adapter
    l = 1
    down = t.bare.get_submodule(a.layers)[l].get_submodule(".".join(filter(None, (a.mlp, a.down))))
    post = cache[f"blocks.{l}.mlp.hook_post"]
    neurons, labels = cache.stack_neuron_results(2, neuron_slice=[3, 7], return_labels=True)
    assert labels == ["L0N3", "L0N7", "L1N3", "L1N7"]
    for k, n in enumerate((3, 7)):
        hand = post[..., n, None] * down.weight[:, n]
        if name == "gemma3":  # the post-feedforward norm, (1 + w), its scale frozen on the MLP's output
            norm, total = t.bare.get_submodule(a.layers)[l].post_feedforward_layernorm, down(post)
            hand = hand / (total.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt() * (1 + norm.weight)
        if name == "granite":
            hand = hand * t.bare.config.text_config.residual_multiplier
        close(t, neurons[2 + k], hand)
    every = cache.get_neuron_results(l)  # [..., d_mlp, d_model]
    bias = _mlp_bias_of(cache, l)
    close(t, every.sum(-2) + bias, cache[f"blocks.{l}.hook_mlp_out"])


def _mlp_bias_of(cache: Any, l: int) -> torch.Tensor:
    """Layer ``l``'s ``down`` bias part: bias rows of full decompositions with and without neurons."""
    rows = {}
    for layer in (l, l + 1):
        full, labels = cache.get_full_resid_decomposition(layer, return_labels=True)
        short, short_labels = cache.get_full_resid_decomposition(layer, expand_neurons=False, return_labels=True)
        rows[layer] = full[labels.index("bias")] - short[short_labels.index("bias")]
    return rows[l + 1] - rows[l]


# ---------------------------------------------------------------------------------------------- norms


@pytest.mark.parametrize("name", ALL)
def test_apply_ln_to_stack_gives_each_norms_output_in_the_bare_model(name: str) -> None:
    t = target(name)
    ref, (_, cache) = bare_run(t), full_cache(t)
    a = t.model.adapter
    for expand in (False, True):
        stack = cache.get_full_resid_decomposition(expand_neurons=expand)
        close(t, cache.apply_ln_to_stack(stack).sum(0) + cache.norm_bias(), ref["final_out"])
        close(
            t,
            cache.get_full_resid_decomposition(expand_neurons=expand, apply_ln=True).sum(0) + cache.norm_bias(),
            ref["final_out"],
        )
    for l in range(t.model.cfg.n_layers):
        close(t, cache.decompose_resid(l, apply_ln=True).sum(0) + cache.norm_bias(l), ref[f"ln1_{l}"])
        if a.ln2 is not None:
            stack = cache.decompose_resid(l, mlp_input=True, apply_ln=True)
            close(t, stack.sum(0) + cache.norm_bias(l, mlp_input=True), ref[f"ln2_{l}"])
    # the logit lens: each accumulated residual through the final norm alone; the last one is the model's
    lens = cache.accumulated_resid(apply_ln=True)
    close(t, lens[-1], ref["final_out"])
    close(t, lens[0], t.model.apply_ln_final(cache["blocks.0.hook_resid_pre"]))
    if name in ("persimmon", "opt"):  # LayerNorm: the bias is in no component, each component is centred
        assert cache.norm_bias().abs().max() > 1e-3
        w = t.bare.get_submodule(a.final_norm).weight
        assert (cache.apply_ln_to_stack(cache.decompose_resid()) / w).mean(-1).abs().max() < 1e-4


def pick(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``logits[b, p, tokens[b]]`` ([batch] tokens) or ``logits[b, p, tokens[b, p]]`` ([batch, pos])."""
    tokens = tokens[:, None].expand(logits.shape[:2]) if tokens.dim() == 1 else tokens
    return logits.gather(-1, tokens[..., None])[..., 0]


@pytest.mark.parametrize("name", ALL)
def test_logit_attrs_sum_to_the_bare_heads_logits(name: str) -> None:
    t = target(name)
    ref, (logits, cache) = bare_run(t), full_cache(t)
    m = t.model
    head = ref["head"]  # the lm_head's output: before soft-capping / logits_scaling
    b = head.shape[0]
    tok, wrong = torch.tensor([5, 9])[:b], torch.tensor([11, 2])[:b]
    const = m.b_U + cache.norm_bias() @ m.W_U  # [d_vocab]: what no component carries
    stacks = (
        cache.decompose_resid(),
        cache.get_full_resid_decomposition(),
        cache.stack_head_results(incl_remainder=True),
    )
    for stack in stacks:
        attrs = cache.logit_attrs(stack, tok)  # one token per row, every position
        close(t, attrs.sum(0) + const[tok][:, None], pick(head, tok))
        diff = cache.logit_attrs(stack, tok, incorrect_tokens=wrong)
        close(t, diff.sum(0) + (const[tok] - const[wrong])[:, None], pick(head, tok) - pick(head, wrong))
    per_pos = t.inputs["input_ids"] % 7  # [batch, pos] targets
    close(t, cache.logit_attrs(cache.decompose_resid(), per_pos).sum(0) + const[per_pos], pick(head, per_pos))
    if m.adapter.logits_post is None and name != "gemma2":  # no post-processing: the head's output is the logits
        close(t, head, logits)


# ---------------------------------------------------------------------------------------------- slices, pos=


@pytest.mark.parametrize("name", ["llava", "gemma3", "persimmon"])
def test_pos_slice_and_batch_slice_as_transformer_lens(name: str) -> None:
    t = target(name)
    _, cache = full_cache(t)
    tok = torch.tensor([5, 9])
    full = cache.get_full_resid_decomposition(expand_neurons=False)
    attrs = cache.logit_attrs(full, tok)
    last = cache.get_full_resid_decomposition(expand_neurons=False, pos_slice=-1)
    assert last.shape == (full.shape[0], full.shape[1], full.shape[-1])
    torch.testing.assert_close(last, full[:, :, -1])
    torch.testing.assert_close(cache.logit_attrs(last, tok, pos_slice=-1), attrs[..., -1])
    some = cache.decompose_resid(apply_ln=True, pos_slice=[1, 4])
    torch.testing.assert_close(some, cache.decompose_resid(apply_ln=True)[:, :, [1, 4]])
    heads = cache.stack_head_results(apply_ln=True, pos_slice=(2, 6))
    torch.testing.assert_close(heads, cache.stack_head_results(apply_ln=True)[:, :, 2:6])
    row = cache.logit_attrs(full, 5, batch_slice=1)  # one row: the stack's batch axis is sliced too
    torch.testing.assert_close(row, cache.logit_attrs(full, 5)[:, 1])
    one = cache.apply_slice_to_batch_dim(0)
    assert type(one) is type(cache)
    torch.testing.assert_close(one.decompose_resid(apply_ln=True), cache.decompose_resid(apply_ln=True)[:, 0])


@pytest.mark.parametrize("name", ["llava", "gemma3"])
def test_a_pos_cache_gives_the_full_caches_analyses_at_its_positions(name: str) -> None:
    t = target(name)
    _, full = full_cache(t)
    for pos in (Last(), Positions([-3, -1])):
        _, cache = t.model.run_with_cache(t.inputs, pos=pos)
        assert_clean(t.model)
        idx = cache.positions  # [batch, n]

        def at(x: torch.Tensor) -> torch.Tensor:  # [c, batch, pos, ...] at the kept positions
            return x.gather(2, idx[None, :, :, None].expand(x.shape[0], -1, -1, x.shape[-1]))

        for method in ("decompose_resid", "get_full_resid_decomposition", "stack_head_results"):
            ours, ref = getattr(cache, method)(apply_ln=True), getattr(full, method)(apply_ln=True)
            torch.testing.assert_close(ours, at(ref))
        stack = cache.decompose_resid()
        a = cache.logit_attrs(stack, torch.tensor([5, 9]))
        ref = full.logit_attrs(full.decompose_resid(), torch.tensor([5, 9]))
        torch.testing.assert_close(a, ref.gather(2, idx[None].expand(ref.shape[0], -1, -1)))


# ---------------------------------------------------------------------------------------------- misuse


def test_a_cache_without_the_needed_hooks_names_the_names_filter_to_use() -> None:
    t = target("llava")
    _, cache = t.model.run_with_cache(t.inputs, names_filter=lambda n: n.endswith("hook_resid_pre"))
    with pytest.raises(KeyError, match=r"stack_head_results needs blocks\.0\.attn\.hook_z.*names_filter=lambda n"):
        cache.stack_head_results()
    with pytest.raises(KeyError, match=r"decompose_resid needs blocks\.0\.hook_attn_out"):
        cache.decompose_resid()
    with pytest.raises(KeyError, match=r"apply_ln_to_stack needs blocks\.1\.hook_resid_post"):
        cache.apply_ln_to_stack(cache.accumulated_resid(1))
    ours = cache.apply_ln_to_stack(cache.accumulated_resid(1)[-1:], 1)[0]  # what it holds still works
    close(t, ours, full_cache(t)[1]["blocks.1.ln1.hook_normalized"])
    _, short = t.model.run_with_cache(t.inputs, stop_at_layer=1)
    with pytest.raises(KeyError, match=r"decompose_resid needs blocks\.1\.hook_attn_out.*stop_at_layer"):
        short.decompose_resid()
    short.decompose_resid(1)  # up to where it ran: fine
    # the suggested filter is enough
    need = ("attn.hook_z", "hook_resid_pre", "hook_mlp_out", "hook_resid_post")
    _, ok = t.model.run_with_cache(t.inputs, names_filter=lambda n: n.endswith(need))
    ok.get_full_resid_decomposition(expand_neurons=False)
    assert_clean(t.model)


def test_layers_out_of_range_and_inputs_of_the_wrong_shape_are_refused() -> None:
    t = target("llava")
    _, cache = full_cache(t)
    n = t.model.cfg.n_layers
    for bad in (n + 1, -2):
        with pytest.raises(IndexError, match=rf"layer={bad} is out of range: give 0\.\.{n}"):
            cache.decompose_resid(bad)
        with pytest.raises(IndexError, match="out of range"):
            cache.apply_ln_to_stack(cache.decompose_resid(), bad)
    with pytest.raises(IndexError, match="out of range"):
        cache.stack_head_results(n + 3)
    with pytest.raises(IndexError, match="give a block index"):
        cache.get_neuron_results(n)
    with pytest.raises(TypeError, match="layer index"):
        cache.decompose_resid(1.0)
    with pytest.raises(ValueError, match="mlp_input=True needs a block"):
        cache.get_full_resid_decomposition(mlp_input=True)
    with pytest.raises(ValueError, match="mode='heads'"):
        cache.decompose_resid(mode="heads")
    full = cache.decompose_resid()
    with pytest.raises(ValueError, match=r"pass the pos_slice \(and batch_slice\) the stack was taken with"):
        cache.apply_ln_to_stack(full, pos_slice=-1)  # a full stack, a last-position scale
    with pytest.raises(ValueError, match="not d_model"):
        cache.apply_ln_to_stack(full[..., :5])
    with pytest.raises(ValueError, match=r"token ids must be in \[0, "):
        cache.logit_attrs(full, t.model.cfg.d_vocab)
    with pytest.raises(ValueError, match="same shape"):
        cache.logit_attrs(full, torch.tensor([1, 2]), incorrect_tokens=3)


def test_a_multi_token_string_is_refused_and_a_single_token_string_is_its_id() -> None:
    m = HookedMLLM.from_pretrained("tiny-llava")
    ids = m.to_tokens("USER: what colour is the square?")
    _, cache = m.run_with_cache(ids)
    stack = cache.decompose_resid(pos_slice=-1)
    with pytest.raises(ValueError, match=r"is \d+ tokens .* not one"):
        cache.logit_attrs(stack, "what colour", pos_slice=-1)
    word = m.tokenizer.decode([int(ids[0, 3])])
    one = m.tokenizer.encode(word, add_special_tokens=False)
    if len(one) == 1:
        torch.testing.assert_close(
            cache.logit_attrs(stack, word, pos_slice=-1), cache.logit_attrs(stack, one[0], pos_slice=-1)
        )


@pytest.mark.parametrize(
    "name, call, match",
    [
        ("mllama", lambda c: c.stack_head_results(), r"cross-attention layers \[\d"),
        ("qwen3_5", lambda c: c.stack_head_results(), r"hold a linear_attention token mixer"),
        ("qwen3_vl_moe", lambda c: c.get_full_resid_decomposition(), r"are mixture-of-experts MLPs"),
    ],
)
def test_structures_without_heads_or_neurons_are_refused_naming_the_layers(name: str, call: Any, match: str) -> None:
    p = pair_for(name)
    _, cache = p.model.run_with_cache(p.inputs)
    with pytest.raises(NotImplementedError, match=match):
        call(cache)
    final = cache.decompose_resid().sum(0)  # the per-layer decomposition still holds
    n = p.model.cfg.n_layers
    want = cache[f"blocks.{n - 1}.hook_resid_post"]
    if n - 1 in p.model.cfg.injection_layers:
        want = want + cache[f"blocks.{n - 1}.hook_deepstack"]
    assert (final - want)[p.real].abs().max() <= TOL * max(1.0, want[p.real].abs().max().item())
    if name == "qwen3_vl_moe":  # expand_neurons=False decomposes MoE layers as their hook_mlp_out
        cache.get_full_resid_decomposition(expand_neurons=False)


def test_a_block_without_a_norm_there_is_refused() -> None:
    t = target("cohere")  # parallel: no norm before the MLP
    _, cache = full_cache(t)
    with pytest.raises(NotImplementedError, match=r"block 1 .* has no norm before the MLP .*a parallel block"):
        cache.decompose_resid(1, mlp_input=True, apply_ln=True)


def test_a_deepstack_injection_after_the_last_layer_is_part_of_the_final_residual() -> None:
    tiny = zoo.build("qwen3_vl")  # deepstack after LM layers 0 and 1; cut to 2 layers: 1 is the last
    lm = tiny.model.model.language_model
    lm.layers = lm.layers[:2]
    tiny.model.config.text_config.num_hidden_layers = 2
    bare = copy.deepcopy(tiny.model)
    m = HookedMLLM(tiny.model, tiny.processor)
    assert m.cfg.injection_layers == [0, 1] and m.cfg.n_layers == 2
    t = Target("qwen3_vl_2", m, bare, tiny.inputs, tiny.inputs["attention_mask"].bool())
    ref, (_, cache) = bare_run(t), full_cache(t)
    injected = cache["blocks.1.hook_deepstack"][t.real].abs().max()
    assert injected > 1e-3  # the injection is not zero: leaving it out would be wrong
    for stack in (cache.decompose_resid(), cache.get_full_resid_decomposition(), cache.accumulated_resid()[-1:]):
        close(t, stack.sum(0), ref["final_in"])
    close(t, cache.apply_ln_to_stack(cache.decompose_resid()).sum(0), ref["final_out"])
