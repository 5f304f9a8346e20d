"""The modality-specific-neuron and alignment analyses over any set of modalities (text /
image / video / audio), checked against independent computations on the bare HF model with
modality masks taken from the input ids."""

from __future__ import annotations

import pytest
import torch
from conftest import pair_for

from hooks_mm import Audio, Text
from hooks_mm.analysis import (
    activation_probabilities,
    alignment_matrix,
    cross_modal_cosine,
    lape,
    neuron_masking_matrix,
    pooled_by_modality,
    pooled_embeddings,
    top_difference,
)


def id_masks(p) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Modality masks straight from the Omni token ids (not from the layout)."""
    cfg, ids, real = p.model.hf_model.config, p.inputs["input_ids"], p.real
    special = torch.isin(
        ids,
        torch.tensor(
            [
                cfg.vision_start_token_id,
                cfg.vision_end_token_id,
                cfg.audio_start_token_id,
                cfg.audio_end_token_id,
                *p.tiny.processor.tokenizer.all_special_ids,
            ]
        ),
    )
    return {
        "image": (ids == cfg.image_token_id) & real,
        "video": (ids == cfg.video_token_id) & real,
        "audio": (ids == cfg.audio_token_id) & real,
        "text": ~special & real,
    }


def gate_acts(p) -> list[torch.Tensor]:  # noqa: ANN001
    """act_fn(gate_proj(x)) per layer of the bare model (what LAPE counts as active when > 0)."""
    a = p.model.adapter
    seen: list[torch.Tensor] = []
    handles = [
        layer.get_submodule(a.mlp)
        .get_submodule(a.gate)
        .register_forward_hook(
            lambda m, args, out, mlp=layer.get_submodule(a.mlp): seen.append(mlp.act_fn(out).detach())
        )
        for layer in p.bare.get_submodule(a.layers)
    ]
    try:
        p.bare_out()
    finally:
        for h in handles:
            h.remove()
    return seen


def test_activation_probabilities_over_text_image_video_audio() -> None:
    p = pair_for("qwen2_5_omni")
    mods = ("text", "image", "video", "audio")
    probs = activation_probabilities(p.model, [p.inputs], modalities=mods)
    masks, acts = id_masks(p), gate_acts(p)
    expected = torch.stack([torch.stack([(a[masks[m]] > 0).double().mean(0) for m in mods], -1) for a in acts]).float()
    assert probs.probs.shape == (2, p.model.cfg.d_mlp, 4)
    assert torch.allclose(probs.probs, expected, atol=1e-6)
    assert probs.tokens == {m: int(masks[m].sum()) for m in mods}
    found = lape(probs, filter_rate=0.5, top_rate=0.05)  # few tokens per modality: many probabilities tie at 1.0
    assert set(found.specific) == set(mods) and len(found.selected) > 0
    q = probs.probs.double() / probs.probs.double().sum(-1, keepdim=True)
    assert torch.allclose(found.entropy.double(), -(q * q.log()).nan_to_num(0.0).sum(-1), atol=1e-5)
    top = top_difference(probs, top_percent=2.0)
    assert set(top) == set(mods) and all(len(v) == round(2 * 128 * 0.02) for v in top.values())
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        activation_probabilities(p.model, [p.inputs], modalities=("text", "smell"))


def test_pooled_by_modality_and_alignment_matrix() -> None:
    p = pair_for("qwen2_5_omni")
    mods = ("text", "image", "audio")
    pooled = pooled_by_modality(p.model, [p.inputs], mods)
    hs = p.bare_out(output_hidden_states=True).hidden_states
    masks = id_masks(p)
    # only row 0 holds all three modalities
    for m in mods:
        assert pooled.means[m].shape == (1, 2, p.model.cfg.d_model)
        expected = torch.stack([hs[l + 1][0][masks[m][0]].mean(0) for l in range(1)])  # layer 0 (HF's last is normed)
        assert torch.allclose(pooled.means[m][0, :1], expected, atol=1e-5)
    mat = alignment_matrix(pooled)
    assert mat.shape == (3, 3, 2)
    assert torch.allclose(mat[1, 2], cross_modal_cosine(pooled.means["image"], pooled.means["audio"])[0].float())
    assert torch.allclose(mat, mat.transpose(0, 1), atol=1e-6)
    # the old image/text API takes any modality through selectors
    emb = pooled_embeddings(p.model, [p.inputs], image=Audio())
    assert torch.allclose(emb.image, pooled_by_modality(p.model, [p.inputs], {"a": Audio(), "t": Text()}).means["a"])


def test_neuron_masking_matrix_over_text_and_audio_codes() -> None:
    """AnyGPT-style model with audio codes: masking each modality's neurons, perplexity of
    text and of audio-code tokens."""
    p = pair_for("anygpt_audio")
    probs = activation_probabilities(p.model, [p.inputs], modalities=("text", "image", "audio"))
    found = lape(probs, filter_rate=0.5, top_rate=0.05)  # few tokens per modality: many probabilities tie at 1.0
    specific = {m: v for m, v in found.specific.items() if v} or {"audio": found.selected}
    table = neuron_masking_matrix(p.model, [p.inputs], specific, evaluate=("text", "audio"))
    assert list(table.columns) == ["text", "audio"] and table.index[0] == "none"
    assert (table.values > 1).all()
    masked = table.loc[next(iter(specific))]
    assert (masked != table.loc["none"]).any()  # masking did something
