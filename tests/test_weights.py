"""TransformerLens's weight names (W_E, W_U, b_U, W_Q/K/V/O, W_gate/W_in/W_out) and tokenizer helpers.

Each weight is checked against what the model really computes: the hook values of a forward (q / k / v, the
MLP's pre-activations, the heads' z) multiplied by the weight give the next activation the model produced, up
to the projection's bias (constant over positions).
"""

from __future__ import annotations

import pytest
import torch
from conftest import pair_for
from test_backbones import _CASES, Case

from hooks_mm import HookedMLLM

FAMILIES = ["llava", "qwen2_vl", "gemma3", "idefics3"]
TOL = 1e-4


def _up_to_bias(ours: torch.Tensor, ref: torch.Tensor, real: torch.Tensor) -> float:
    """Max difference of ref - ours from a constant (the bias) over the real positions."""
    diff = (ref - ours)[real]
    return (diff - diff[:1]).abs().max().item()


def _check_layer(model: HookedMLLM, inputs: dict, real: torch.Tensor, l: int) -> None:
    p = f"blocks.{l}."
    seen: dict[str, torch.Tensor] = {}
    o = model.attention(l).get_submodule(model.adapter.o)
    handle = o.register_forward_hook(lambda m, i, out: seen.__setitem__("o", out.detach()))
    try:
        _, c = model.run_with_cache(inputs, names_filter=lambda n: n.startswith(p))
    finally:
        handle.remove()
    x = c[p + "ln1.hook_normalized"]
    h = model.cfg.n_heads
    q = torch.einsum("bpm,hmd->bphd", x, model.W_Q[l])
    assert _up_to_bias(q, c[p + "attn.hook_q"], real) <= TOL
    for name, w in (("k", model.W_K[l]), ("v", model.W_V[l])):
        ref = c[p + f"attn.hook_{name}"]
        ours = torch.einsum("bpm,hmd->bphd", x, w)[:, :, :: h // ref.shape[2]]  # repeated: one per key / value group
        assert _up_to_bias(ours, ref, real) <= TOL
    z = torch.einsum("bphd,hdm->bpm", c[p + "attn.hook_z"], model.W_O[l])
    assert _up_to_bias(z, seen["o"], real) <= TOL
    y = c[p + "ln2.hook_normalized"]
    if model.adapter.gated:
        assert _up_to_bias(y @ model.W_gate[l], c[p + "mlp.hook_pre"], real) <= TOL
        assert _up_to_bias(y @ model.W_in[l], c[p + "mlp.hook_pre_linear"], real) <= TOL
    else:
        assert _up_to_bias(y @ model.W_in[l], c[p + "mlp.hook_pre"], real) <= TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_reproduce_the_activations_of_a_forward(family: str) -> None:
    pair = pair_for(family)
    m = pair.model
    for l in range(m.cfg.n_layers):
        _check_layer(m, pair.inputs, pair.real, l)
    logits, c = m.run_with_cache(pair.inputs, names_filter=["ln_final.hook_normalized", "hook_embed"])
    ours = c["ln_final.hook_normalized"] @ m.W_U + m.b_U
    ours = m.adapter.logits_post(m.hf_model, ours) if m.adapter.logits_post else ours
    assert (ours - logits)[pair.real].abs().max().item() <= TOL * max(1.0, logits.abs().max().item())
    ids = pair.inputs["input_ids"]
    text = pair.real & (m.layout(pair.inputs).modality == 0)  # text positions: the embedding table's rows
    scale = c["hook_embed"][text].norm() / m.W_E[ids][text].norm()  # Gemma scales inside its embedding module
    assert (c["hook_embed"][text] - scale * m.W_E[ids][text]).abs().max().item() <= TOL * max(1.0, scale.item())


@pytest.mark.parametrize("name", ["phi3", "glm4v_text", "persimmon", "opt"])
def test_fused_and_renamed_projections_are_split_as_the_model_splits_them(name: str) -> None:
    case = _CASES.get(name) or Case(name)
    for l in range(case.model.cfg.n_layers):
        _check_layer(case.model, case.inputs, case.real, l)


def test_stacks_whose_layers_differ_have_no_stacked_weights() -> None:
    mllama = pair_for("mllama").model
    with pytest.raises(NotImplementedError, match=r"no stacked attention weights: its stack has cross-attention"):
        mllama.W_Q
    moe = (_CASES.get("mixtral") or Case("mixtral")).model
    with pytest.raises(NotImplementedError, match=r"no stacked mlp weights: .*mixture-of-experts layers \[0, 1\]"):
        moe.W_in
    assert moe.W_Q.shape[:2] == (2, moe.cfg.n_heads)  # attention is uniform there


def test_tokenizer_helpers() -> None:
    m = pair_for("llava").model
    ids = m.to_tokens(["what colour is the square ?", "red"])
    assert ids.shape[0] == 2 and ids.dtype == torch.long
    strs = m.to_str_tokens(ids[1])
    assert len(strs) == ids.shape[1] and strs == [m.tokenizer.decode([int(i)]) for i in ids[1]]
    assert m.to_str_tokens("red") == m.to_str_tokens(m.to_tokens("red")[0])
    with pytest.raises(TypeError, match="integer ids"):
        m.to_str_tokens(torch.zeros(3))
    with pytest.raises(TypeError, match="a string or a list of strings"):
        m.to_tokens(5)
    bare = HookedMLLM(m.hf_model)
    with pytest.raises(ValueError, match="has no tokenizer: load it with HookedMLLM.from_pretrained"):
        bare.to_tokens("red")


@pytest.mark.parametrize(
    "family", ["llava", "qwen2_vl", "gemma3", "idefics3", "paligemma2", "gemma4", "hyperclovax_vision_v2"]
)
def test_resid_to_logits_of_the_last_residual_is_the_models_output(family: str) -> None:
    """The logit lens's head: final norm, W_U and the family's post-processing (softcap, logit scaling)."""
    m = pair_for(family).model
    last = f"blocks.{m.cfg.n_layers - 1}.hook_resid_post"
    logits, cache = m.run_with_cache(pair_for(family).inputs, names_filter=[last, "ln_final.hook_normalized"])
    torch.testing.assert_close(m.apply_ln_final(cache[last]), cache["ln_final.hook_normalized"], rtol=0, atol=0)
    torch.testing.assert_close(m.resid_to_logits(cache[last]), logits, rtol=0, atol=0)
    lens = m.resid_to_logits(cache[last][:, :3])  # any positions, any leading shape
    torch.testing.assert_close(lens, logits[:, :3], rtol=0, atol=0)
