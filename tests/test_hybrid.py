"""Hybrid decoder stacks (Qwen3.5: gated DeltaNet linear attention; LFM2: short convolutions) under LLaVA.

Each layer has exactly the hook points that exist there: attention layers every ``attn.*`` hook,
linear-attention / convolution layers none (only the mixer's output, ``hook_attn_out``); naming a
missing one, knocking out attention there or compiling it for nnsight is refused naming the layer.
The exactness suite (logits, hidden states, decomposition, patterns, edits, sweep) runs on these
stacks through ``CASES`` in tests/test_backbones.py; this file checks what is specific to them.
"""

from __future__ import annotations

import copy

import pytest
import torch

from hooks_mm import HookedMLLM
from hooks_mm.interventions import AttentionKnockout, NeuronAblation, Patch, Steer
from hooks_mm.selectors import Image, Last, NonPad
from hooks_mm.sweep import attribution_patching
from tests.test_backbones import _CASES, PAD, QWEN3_5_LINEAR, Case, llava_over

ATTN = {"hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_attn_scores", "hook_pattern", "hook_z"}
MIXER_LAYER = {
    "hook_resid_pre", "ln1.hook_normalized", "hook_attn_out", "hook_resid_mid", "ln2.hook_normalized",
    "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
}  # fmt: skip
# the HF module of each hybrid's mixer layers, and its name there
MIXER = {"qwen3_5_text": ("linear_attention", "linear_attn"), "lfm2": ("conv", "conv"), "lfm3": ("conv", "conv")}
OUT = {"lfm3": "post_operator_norm"}  # a norm after the mixer whose output is what is added (sandwich norms)


def case_of(name: str) -> Case:
    if name not in _CASES:
        _CASES[name] = Case(name)
    return _CASES[name]


@pytest.fixture(params=sorted(MIXER))
def case(request) -> Case:  # noqa: ANN001
    return case_of(request.param)


def test_each_layer_has_exactly_the_hooks_that_exist_there(case: Case) -> None:
    kind, _ = MIXER[case.name]
    m = case.model
    assert m.cfg.mixer_layers == {0: kind} and case.attention_layers() == [1]
    names = lambda l: {n.removeprefix(f"blocks.{l}.") for n in m.hook_dict if n.startswith(f"blocks.{l}.")}  # noqa: E731
    assert names(0) == MIXER_LAYER
    assert names(1) == MIXER_LAYER | {f"attn.{h}" for h in ATTN}  # TransformerLens names on attention layers
    assert type(m.attention(0)).__name__.endswith(("GatedDeltaNet", "ShortConv"))


def test_mixer_output_is_hook_attn_out_and_an_edit_there_is_the_hand_edit(case: Case) -> None:
    """hook_attn_out of a mixer layer is its mixer's output (what it adds to the residual stream)."""
    mixer = getattr(case.layers[0], OUT.get(case.name, MIXER[case.name][1]))
    seen = {}
    case.bare_run([(mixer, "fwd", lambda mod, i, out: seen.__setitem__("out", out))])
    _, cache = case.model.run_with_cache(case.inputs, names_filter=["blocks.0.hook_attn_out"])
    assert torch.equal(cache["blocks.0.hook_attn_out"], seen["out"])
    delta = torch.randn(case.text.hidden_size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours = case.model.run_with_hooks(case.inputs, fwd_hooks=[("blocks.0.hook_attn_out", lambda x, hook: x + delta)])
    hand = case.bare_run([(mixer, "fwd", lambda mod, i, out: out + delta)]).logits
    assert case.diff(ours, hand) <= 1e-5 and case.diff(ours, case.bare_run().logits) > 1e-3


@pytest.mark.parametrize("hook", sorted(ATTN))
def test_an_attention_hook_of_a_mixer_layer_is_refused_naming_the_layer(case: Case, hook: str) -> None:
    kind, path = MIXER[case.name]
    why = rf"blocks\.0\.attn\.{hook}'?: layer 0 of this .* is a '{kind}' layer, whose token mixer {path} .*no attn"
    why += r".* attention layers \[1\]"
    m = case.model
    with pytest.raises(KeyError, match=why):
        m.run_with_hooks(case.inputs, fwd_hooks=[(f"blocks.0.attn.{hook}", lambda x, hook: x)])
    with pytest.raises(KeyError, match=why):
        m.run_with_cache(case.inputs, names_filter=[f"blocks.0.attn.{hook}"])
    with pytest.raises(KeyError, match=why):
        m.add_hook(f"blocks.0.attn.{hook}", lambda x, hook: x)
    assert f"blocks.1.attn.{hook}" in m.hook_dict


def test_an_unknown_name_on_a_hybrid_keeps_the_plain_message(case: Case) -> None:
    with pytest.raises(KeyError, match=r"no hook point named 'blocks.0.attn.hook_nonsense' on this"):
        case.model.hook_name("blocks.0.attn.hook_nonsense")


@pytest.mark.parametrize("layers", [0, None, [0, 1]])
def test_attention_knockout_on_a_mixer_layer_is_refused_naming_it(case: Case, layers: object) -> None:
    kind, _ = MIXER[case.name]
    spec = AttentionKnockout(layers=layers, queries=Last(), keys=Image())
    with pytest.raises(ValueError, match=rf"AttentionKnockout: layers \[0\] \({kind}\) .*Pass attention layers only: "):
        case.model.run_with_interventions(case.inputs, spec)


def test_attention_knockout_on_the_attention_layer_equals_the_eager_hand_knockout(case: Case) -> None:
    """Knockout on the attention layer: the bare eager model with the same edges masked in its mask."""
    spec = AttentionKnockout(layers=1, queries=Last(), keys=Image())
    ours = case.model.run_with_interventions(case.inputs, spec)
    clean = case.model(case.inputs)
    assert case.diff(ours, clean) > 1e-4
    image = case.inputs["input_ids"] == 63
    attn = case.layers[1].self_attn

    def knock(mod, args, kwargs):  # noqa: ANN001, ANN202
        mask = kwargs["attention_mask"].clone()
        mask[:, 0, -1][image] = torch.finfo(mask.dtype).min  # the last query, image keys
        return args, {**kwargs, "attention_mask": mask}

    hooked = copy.deepcopy(case.eager)
    h = hooked.model.language_model.layers[1].self_attn.register_forward_pre_hook(knock, with_kwargs=True)
    with torch.no_grad():
        hand = hooked(**case.inputs).logits
    h.remove()
    assert attn is not None and case.diff(ours, hand) <= 1e-4


def test_head_edits_on_a_mixer_layer_are_refused(case: Case) -> None:
    """Per-head ablations read attn.hook_z: a mixer layer has none; the attention layer has."""
    with pytest.raises(KeyError, match=r"blocks\.0\.attn\.hook_z'?: layer 0 .*no attn"):
        case.model.run_with_interventions(case.inputs, NeuronAblation(0, [1], NonPad(), hook="attn.hook_z"))
    with pytest.raises(ValueError, match=r"layers \[0\]"):
        case.model.run_with_interventions(case.inputs, AttentionKnockout(layers=0, heads=[1]))
    ours = case.model.run_with_interventions(case.inputs, NeuronAblation(1, [1], NonPad(), hook="attn.hook_z"))
    assert case.diff(ours, case.model(case.inputs)) > 1e-5


def test_gated_query_hook_z_is_o_proj_input_and_attn_out_is_its_head_sum() -> None:
    """Qwen3.5's gated attention: hook_z is o_proj's input, (pattern @ v) * sigmoid(gate) per head, and
    hook_attn_out the sum over heads of z_h @ W_O[h]; hook_q the query half of q_proj's output."""
    case = case_of("qwen3_5_text")
    t = case.text
    attn = case.layers[1].self_attn
    seen = {}
    case.bare_run(
        [
            (attn.o_proj, "pre", lambda mod, args: seen.__setitem__("z", args[0])),
            (attn.q_proj, "fwd", lambda mod, i, out: seen.__setitem__("q", out)),
        ]
    )
    _, c = case.model.run_with_cache(
        case.inputs, names_filter=[f"blocks.1.{h}" for h in ("attn.hook_q", "attn.hook_z", "hook_attn_out")]
    )
    z = c["blocks.1.attn.hook_z"]
    assert z.shape[-2:] == (t.num_attention_heads, t.head_dim)
    assert torch.equal(z.flatten(-2), seen["z"])
    query = seen["q"].unflatten(-1, (t.num_attention_heads, 2 * t.head_dim))[..., : t.head_dim]
    assert torch.equal(c["blocks.1.attn.hook_q"], query)
    w = attn.o_proj.weight.unflatten(1, (t.num_attention_heads, t.head_dim))  # [d_model, head, d_head]
    heads = torch.einsum("bphd,mhd->bpm", z, w)
    assert case.diff(c["blocks.1.hook_attn_out"], heads) <= 1e-5


def test_nnsight_compiler_edits_the_mixer_output_and_refuses_attention_there(case: Case) -> None:
    from hooks_mm.remote import NNsightBackend
    from hooks_mm.remote.compile import compile_plan
    from hooks_mm.zoo.llava import build_llava_processor

    model = HookedMLLM(case.model.hf_model, build_llava_processor())
    steer = Steer(0, [0.5 * (-1) ** i for i in range(case.text.hidden_size)], positions=NonPad(), hook="hook_attn_out")
    [(path, attr, _)] = compile_plan(model, [steer], case.inputs)["sites"]
    assert (path, attr) == (f"model.language_model.layers.0.{OUT.get(case.name, MIXER[case.name][1])}", "output")
    ref = model.run_with_interventions(case.inputs, steer)
    assert case.diff(NNsightBackend(model).run(case.inputs, steer), ref) <= 1e-5
    with pytest.raises(ValueError, match=r"AttentionKnockout: layers \[0\]"):
        compile_plan(model, [AttentionKnockout(layers=0, queries=Last(), keys=Image())], case.inputs)
    with pytest.raises(KeyError, match=r"blocks\.0\.attn\.hook_z'?: layer 0"):
        compile_plan(model, [NeuronAblation(0, [1], NonPad(), hook="attn.hook_z")], case.inputs)


def test_patching_a_mixer_output_from_a_source_run(case: Case) -> None:
    """Patch(hook_attn_out) on a mixer layer copies the source run's mixer output."""
    other = {**case.inputs, "pixel_values": case.inputs["pixel_values"].flip(0)}
    spec = Patch(layers=0, source="other", component="attn_out", positions=Image())
    ours = case.model.run_with_interventions(case.inputs, spec, sources={"other": other})
    mixer = getattr(case.layers[0], OUT.get(case.name, MIXER[case.name][1]))
    src = {}
    with torch.no_grad():
        h = mixer.register_forward_hook(lambda mod, i, out: src.__setitem__("out", out))
        case.bare(**other)
        h.remove()
    image = case.inputs["input_ids"] == 63

    def patch(mod, i, out):  # noqa: ANN001, ANN202
        out = out.clone()
        out[image] = src["out"][image]
        return out

    assert case.diff(ours, case.bare_run([(mixer, "fwd", patch)]).logits) <= 1e-5


def test_attribution_patching_equals_the_hand_gradient(case: Case) -> None:
    """First-order neuron effects on a hybrid stack: grad . (0 - act) at the MLP neurons, by hand on the bare model."""
    metric = lambda logits: logits[:, -1].log_softmax(-1)[:, 7].sum()  # noqa: E731
    att = attribution_patching(case.model, case.inputs, metric, layers=[0, 1], verify_top_k=2)
    acts = {}
    bare = copy.deepcopy(case.bare)
    handles = []
    for l in (0, 1):
        mlp = bare.model.language_model.layers[l]
        down = mlp.feed_forward.w2 if case.name in ("lfm2", "lfm3") else mlp.mlp.down_proj

        def keep(mod, args, l=l):  # noqa: ANN001, ANN202
            args[0].retain_grad()  # the total gradient: layer 1's neurons read layer 0's
            acts[l] = args[0]

        handles.append(down.register_forward_pre_hook(keep))
    metric(bare(**case.inputs).logits).backward()
    for h in handles:
        h.remove()
    real = case.real[..., None]
    for i, l in enumerate((0, 1)):
        hand = (acts[l].grad * -acts[l].detach() * real).sum((0, 1))
        torch.testing.assert_close(att.neurons[i], hand, atol=1e-4, rtol=1e-4)
    assert att.table["exact"].head(2).notna().all()


def test_generate_on_a_hybrid_equals_the_bare_generate(case: Case) -> None:
    """Generation with the recurrent / convolution cache: hooks_mm's generate is HF's (no hooks)."""
    ids = torch.randint(1, 60, (1, 6), generator=torch.Generator().manual_seed(9))
    ours = case.model.generate({"input_ids": ids}, max_new_tokens=4)
    with torch.no_grad():
        ref = case.bare.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(ours, ref)


def test_layer_types_that_disagree_with_the_modules_are_refused() -> None:
    """The mixer of each layer comes from layer_types; a layer whose modules disagree is refused, naming it."""
    hf_model = llava_over(
        "Qwen3_5TextConfig", head_dim=8, layer_types=["linear_attention", "full_attention"], **QWEN3_5_LINEAR
    )
    hf_model.config.text_config.layer_types = ["full_attention", "full_attention"]
    with pytest.raises(
        NotImplementedError, match=r"backbone 'qwen3_5_text' \(row 'qwen3_5'\).*block 0 .*no module self_attn"
    ):
        HookedMLLM(hf_model)


def test_lfm2_mlp_width_is_the_built_width() -> None:
    """LFM2 derives its MLP width from intermediate_size (block_auto_adjust_ff_dim): cfg.d_mlp is the built one,
    so every neuron can be ablated and none past it is accepted."""
    hf_model = llava_over("Lfm2Config", layer_types=["conv", "full_attention"], pad_token_id=PAD, block_multiple_of=16)
    model = HookedMLLM(copy.deepcopy(hf_model))
    width = hf_model.model.language_model.layers[0].feed_forward.w2.in_features
    assert width != hf_model.config.text_config.intermediate_size and model.cfg.d_mlp == width
    ids = torch.randint(1, 60, (1, 5))
    model.run_with_interventions({"input_ids": ids}, NeuronAblation(0, [width - 1]))
    with pytest.raises(IndexError, match=rf"within 0..{width - 1}"):
        model.run_with_interventions({"input_ids": ids}, NeuronAblation(0, [width]))


def test_wanda_overlap_reads_the_linears_each_layer_has(case: Case) -> None:
    """Weight analyses walk each layer's linears: a mixer layer has the MLP's only (no q / k / v / o)."""
    from hooks_mm.analysis import wanda_overlap

    table = wanda_overlap(case.model, [case.inputs])
    per_layer = table.groupby("layer")["linear"].apply(set).to_dict()
    assert per_layer == {0: {"gate", "up", "down"}, 1: {"q", "k", "v", "o", "gate", "up", "down"}}


def test_a_sweep_with_a_knockout_on_a_mixer_layer_is_refused_before_it_runs(case: Case) -> None:
    """Every config is checked before anything runs: one knockout on a mixer layer refuses the sweep, named."""
    from hooks_mm.sweep import sweep

    metric = lambda logits: logits[:, -1].log_softmax(-1)[:, 7].sum()  # noqa: E731
    configs = [AttentionKnockout(1, Last(), Image()), AttentionKnockout(0, Last(), Image())]
    calls = []
    h = case.model.hf_model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"AttentionKnockout: layers \[0\]"):
            sweep(case.model, case.inputs, configs, metric, progress=False, method="naive")
    finally:
        h.remove()
    assert calls == [1]  # the clean run only
    steer = Steer(0, [1.0] * case.text.num_attention_heads * 8, positions=NonPad(), hook="attn.hook_z")
    with pytest.raises(KeyError, match=r"blocks\.0\.attn\.hook_z'?: layer 0"):
        case.model.run_with_interventions(case.inputs, steer)
