"""Gemma-4 and Fuyu: each image position's (row, col) is the cell whose patches the model writes there, hook
points keep their meaning over Gemma-4's per-layer head sizes and layer_scalar, unsupported blocks are refused."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import pair_for

from hooks_mm import HookedMLLM, Modality
from hooks_mm.zoo.gemma4 import gemma4_config, gemma4_tokenizer


def test_gemma4_plan_cells_are_the_pooled_patch_cells() -> None:
    """Replace every patch's encoding by its (x, y): the pooled soft token written at a position then holds the
    mean (x, y) of its k x k patches, so (y // k, x // k) is the cell HF wrote there."""
    p = pair_for("gemma4")
    m = p.model
    k = m.hf_model.config.vision_config.pooling_kernel_size
    positions = p.inputs["image_position_ids"]

    def coords(module, args, out):  # noqa: ANN001, ANN202
        h = torch.zeros_like(out.last_hidden_state)
        h[..., :2] = positions.to(h)
        out.last_hidden_state = h
        return out

    handle = m.hf_model.model.vision_tower.encoder.register_forward_hook(coords)
    try:
        _, cache = m.run_with_cache(p.inputs, names_filter="hook_vision_out")
    finally:
        handle.remove()
    scale = m.hf_model.config.vision_config.hidden_size**0.5
    xy = cache["hook_vision_out"][:, :2] / scale  # rows in the order they are written
    layout = m.layout(p.inputs)
    img = layout.modality == Modality.IMAGE
    assert img.sum() == xy.shape[0]
    assert torch.equal(layout.grid_row[img], (xy[:, 1] // k).long())
    assert torch.equal(layout.grid_col[img], (xy[:, 0] // k).long())


def test_gemma4_resid_mid_edit_equals_the_bare_model_with_the_edit() -> None:
    """An edit at resid_mid gives the logits of the bare model whose attention branch adds the edit too
    (the block then scales it by layer_scalar, as it scales the whole residual)."""
    p = pair_for("gemma4")
    assert any(float(layer.layer_scalar) != 1.0 for layer in p.bare.model.language_model.layers)
    delta = torch.randn(p.model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = p.model.run_with_hooks(p.inputs, fwd_hooks=[("blocks.0.hook_resid_mid", lambda x, hook: x + delta)])
        norm = p.bare.model.language_model.layers[0].post_attention_layernorm
        handle = norm.register_forward_hook(lambda mod, i, out: out + delta)
        try:
            ref = p.bare(**p.inputs).logits
        finally:
            handle.remove()
    assert (ours - ref)[p.real].abs().max().item() <= 1e-5


def test_gemma4_heads_have_each_layer_s_size() -> None:
    p = pair_for("gemma4")
    _, cache = p.model.run_with_cache(p.inputs, names_filter=lambda n: n.endswith(("attn.hook_q", "attn.hook_z")))
    for l, layer in enumerate(p.bare.model.language_model.layers):
        d = layer.self_attn.head_dim
        assert cache[f"blocks.{l}.attn.hook_q"].shape[-2:] == (p.model.cfg.n_heads, d)
        assert cache[f"blocks.{l}.attn.hook_z"].shape[-2:] == (p.model.cfg.n_heads, d)
    assert {layer.self_attn.head_dim for layer in p.bare.model.language_model.layers} == {8, 16}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"hidden_size_per_layer_input": 4}, "per-layer inputs"),
        (
            {
                "num_kv_shared_layers": 1,
                "num_hidden_layers": 3,
                "layer_types": ["sliding_attention", "full_attention", "full_attention"],
            },
            "num_kv_shared_layers",
        ),
        ({"enable_moe_block": True, "num_experts": 2, "top_k_experts": 1, "moe_intermediate_size": 8}, "experts"),
    ],
)
def test_gemma4_blocks_with_unhooked_terms_are_refused(extra: dict, named: str) -> None:
    from transformers import Gemma4ForConditionalGeneration

    config = gemma4_config(gemma4_tokenizer())
    text = copy.deepcopy(config.text_config.to_dict()) | extra
    text.pop("per_layer_config", None)
    config = type(config)(**{**config.to_dict(), "text_config": text})
    torch.manual_seed(0)
    with pytest.raises(NotImplementedError, match=named):
        HookedMLLM(Gemma4ForConditionalGeneration(config).eval())


def test_gemma4_audio_row_only_where_the_model_has_an_audio_tower() -> None:
    """E2B / E4B-style (audio tower): audio positions and embed_audio; 31B-style (none): no audio hooks."""
    assert pair_for("gemma4").model.adapter.audio_projector is None
    m = pair_for("gemma4_audio").model
    assert m.adapter.audio_projector == "model.embed_audio" and "hook_audio_projector_out" in m.hook_dict


def test_fuyu_plan_cells_are_the_patches_written_there() -> None:
    """Images whose pixels encode their own (y, x): the raw patch the model embeds at a position then tells
    which patch row and column HF wrote there (patch features are laid out (py, px, channel))."""
    import numpy as np
    from PIL import Image

    from hooks_mm.zoo.fuyu import PATCH, fuyu_inputs

    p = pair_for("fuyu")
    m = p.model
    images = []
    for h, w in [(24, 32), (32, 16)]:
        arr = np.zeros((h, w, 3), dtype=np.uint8)
        arr[..., 0] = (np.arange(h) * 7)[:, None]
        arr[..., 1] = (np.arange(w) * 7)[None, :]
        images.append(Image.fromarray(arr))
    inputs = fuyu_inputs(m.processor, ["what is in the image ?", "describe it"], images)
    _, cache = m.run_with_cache(inputs, names_filter="hook_vision_out")
    patches = cache["hook_vision_out"].view(-1, PATCH * PATCH, 3)  # rows in the order they are written
    pixels = ((patches * 0.5 + 0.5) * 255).mean(1)  # undo the processor's rescale / normalise
    layout = m.layout(inputs)
    img = layout.modality == Modality.IMAGE
    assert img.sum() == patches.shape[0] == 24 // PATCH * 32 // PATCH + 32 // PATCH * 16 // PATCH
    assert torch.equal(layout.grid_row[img], (pixels[:, 0] / 7 // PATCH).long())
    assert torch.equal(layout.grid_col[img], (pixels[:, 1] / 7 // PATCH).long())
    assert layout.n_images == 2 and torch.equal(layout.image_id[img].unique(), torch.tensor([0, 1]))


def test_phi4_multimodal_is_refused_with_its_reason() -> None:
    from transformers import Phi4MultimodalConfig

    from hooks_mm.adapters import adapter_for_names

    cls = "Phi4MultimodalForCausalLM"
    with pytest.raises(NotImplementedError, match=f"embed_tokens_extend.*: hooks_mm does not support {cls} yet"):
        adapter_for_names([cls], Phi4MultimodalConfig())


def test_molmo2_plan_cells_are_the_pooled_patches() -> None:
    """image_token_pooling (what the model pools for each image position, in order) names the patches of each
    position: low-resolution tile cells pool patches (2r.., 2c..) of the resized crop; mosaic rows pool crop rows
    (2r, 2r + 1) (image 0 is one row of crops)."""
    from hooks_mm.zoo.molmo2 import CROP, PATCH

    p = pair_for("molmo2")
    layout = p.model.layout(p.inputs)
    img = layout.modality == Modality.IMAGE
    pooling = p.inputs["image_token_pooling"].long()
    assert pooling.shape[0] == int(img.sum())
    side = CROP // PATCH
    tile, rows, cols, image = (t[img] for t in (layout.tile, layout.grid_row, layout.grid_col, layout.image_id))
    crops = torch.repeat_interleave(torch.cumsum(p.inputs["image_num_crops"], 0) - p.inputs["image_num_crops"], 1)
    first_crop = crops[image]  # each image's low-resolution crop
    for k in range(pooling.shape[0]):
        idx = pooling[k][pooling[k] >= 0]
        crop, patch = idx // side**2, idx % side**2
        if tile[k] == 0:
            assert (crop == first_crop[k]).all()
            assert set((patch // side // 2).tolist()) == {int(rows[k])}
            assert set((patch % side // 2).tolist()) == {int(cols[k])}
        elif image[k] == 0:
            assert set((patch // side // 2).tolist()) == {int(rows[k])}
    assert set(tile.tolist()) == {0, 1}


def test_kosmos2_5_image_positions_are_the_written_mask_and_a_stale_mask_is_refused() -> None:
    p = pair_for("kosmos2_5")
    layout = p.model.layout(p.inputs)
    written = p.inputs["image_embeds_position_mask"] == 1
    assert torch.equal(layout.modality == Modality.IMAGE, written)
    assert (layout.grid_row[written] == -1).all()  # resampler latents: no patch grid
    assert p.model.cfg.d_mlp == p.model.hf_model.config.text_config.ffn_dim
    # the processor's own mask assumes right padding: on this left-padded batch it points at the wrong tokens
    stale = torch.zeros_like(written, dtype=torch.long)
    stale[:, 2:10] = 1
    with pytest.raises(ValueError, match="image_embeds_position_mask"):
        p.model.layout({**p.inputs, "image_embeds_position_mask": stale})


def test_gemma4_audio_projector_edit_lands_on_exactly_the_audio_positions() -> None:
    p = pair_for("gemma4_audio")
    m = p.model
    audio = m.layout(p.inputs).modality == Modality.AUDIO
    _, clean = m.run_with_cache(p.inputs, names_filter="blocks.0.hook_resid_pre")
    seen: dict[str, torch.Tensor] = {}
    m.run_with_hooks(
        p.inputs,
        fwd_hooks=[
            ("hook_audio_projector_out", lambda x, hook: x + 1.0),
            ("blocks.0.hook_resid_pre", lambda x, hook: seen.__setitem__("r", x.detach())),
        ],
    )
    moved = (seen["r"] - clean["blocks.0.hook_resid_pre"]).abs().amax(-1) > 1e-4
    assert audio.any() and torch.equal(moved & p.real, audio)
    assert m.layout(p.inputs).n_audios == 2


def test_gemma4_k_eq_v_layers_keep_hook_k_and_hook_v_apart() -> None:
    """attention_k_eq_v: a full-attention layer has no v_proj and reads its values from k_proj's output. hook_k /
    hook_v are the inputs of k_norm / v_norm: both that output, and an edit to one reaches only keys or values."""
    from transformers import Gemma4ForConditionalGeneration

    p = pair_for("gemma4")
    config = p.bare.config.to_dict()
    text = {k: v for k, v in config["text_config"].items() if k != "per_layer_config"}
    text |= {"attention_k_eq_v": True, "global_head_dim": 16, "num_global_key_value_heads": 1}
    config = type(p.bare.config)(**{**config, "text_config": text})
    torch.manual_seed(0)
    bare = Gemma4ForConditionalGeneration(config).eval()
    model = HookedMLLM(copy.deepcopy(bare))
    attn = bare.model.language_model.layers[1].self_attn
    assert attn.v_proj is None and attn.head_dim == 16
    with torch.no_grad():
        assert torch.equal(model(p.inputs), bare(**p.inputs).logits)
    seen = {}
    handle = attn.k_proj.register_forward_hook(lambda m, i, out: seen.__setitem__("k", out))
    try:
        _, cache = model.run_with_cache(p.inputs, names_filter=lambda n: n.startswith("blocks.1.attn.hook_"))
        with torch.no_grad():
            bare(**p.inputs)
    finally:
        handle.remove()
    k = seen["k"].unflatten(-1, (-1, 16))
    assert torch.equal(cache["blocks.1.attn.hook_k"], k) and torch.equal(cache["blocks.1.attn.hook_v"], k)
    noise = torch.randn(16, generator=torch.Generator().manual_seed(5))
    results = {}
    for key in ("k", "v"):
        with torch.no_grad():
            ours = model.run_with_hooks(p.inputs, fwd_hooks=[(f"blocks.1.attn.hook_{key}", lambda x, hook: x + noise)])
            norm = getattr(attn, f"{key}_norm")
            handle = norm.register_forward_pre_hook(lambda m, args: (args[0] + noise,))
            try:
                ref = bare(**p.inputs).logits
            finally:
                handle.remove()
        assert (ours - ref)[p.real].abs().max().item() <= 1e-5
        results[key] = ours
    assert (results["k"] - results["v"])[p.real].abs().max().item() > 1e-4


def test_to_inputs_refuses_media_when_the_processor_is_only_a_tokenizer() -> None:
    """A saved model whose processor does not load back comes with its tokenizer: images must not vanish."""
    from hooks_mm.zoo.llava import sample_images

    p = pair_for("fuyu")
    model = HookedMLLM(p.model.hf_model, p.model.processor.tokenizer)
    with pytest.raises(ValueError, match="only its tokenizer.*images given would be dropped"):
        model.to_inputs(["what is in the image ?"], images=sample_images(0, [(24, 32)]))
