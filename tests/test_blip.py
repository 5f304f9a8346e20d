"""BLIP-2 / InstructBLIP over OPT: query slots (no patch grid), OPT's flat MLP half, and the refusals
(encoder-decoder Flan-T5, post-LN OPT-350m, project_in / project_out)."""

from __future__ import annotations

import pytest
import torch

from hooks_mm import HookedMLLM, NonPad, zoo
from hooks_mm.interventions import NeuronAblation
from hooks_mm.layout import Modality
from hooks_mm.remote.compile import compile_plan
from hooks_mm.sweep import sweep
from hooks_mm.vis.patches import patch_maps
from hooks_mm.zoo.base import init_model
from hooks_mm.zoo.blip import QUERIES, _qformer, _vision, build_blip2_processor, opt_config


@pytest.fixture(scope="module")
def tiny() -> zoo.Tiny:
    return zoo.build("blip2")


def _blip2(text_config: object) -> object:
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    config = Blip2Config(
        vision_config=_vision(), qformer_config=_qformer(), text_config=text_config, num_query_tokens=QUERIES,
        image_token_index=4,
    )  # fmt: skip
    return init_model(Blip2ForConditionalGeneration, config, 0)


def test_query_slots_are_image_positions_with_no_patch_grid(tiny: zoo.Tiny) -> None:
    m = HookedMLLM(tiny.model, tiny.processor)
    layout = m.layout(tiny.inputs)
    img = layout.modality == Modality.IMAGE
    assert layout.n_images == 2 and int(img.sum()) == 2 * QUERIES
    assert torch.equal(img, tiny.inputs["input_ids"] == tiny.model.config.image_token_id)
    assert bool((layout.grid_row[img] == -1).all()) and layout.grid(0, 0, 0) is None
    with pytest.raises(ValueError, match="no patch grid"):
        patch_maps(torch.zeros(img.shape), layout, row=0)


def test_video_frames_are_tiles_of_query_slots() -> None:
    tiny = zoo.build("instructblipvideo")
    layout = HookedMLLM(tiny.model, tiny.processor).layout(tiny.inputs)
    img = layout.modality == Modality.IMAGE
    frames = tiny.inputs["pixel_values"].shape[1]
    assert int(img.sum()) == 2 * frames * QUERIES
    assert layout.tile[0][img[0]].tolist() == [f for f in range(frames) for _ in range(QUERIES)]


def test_opt_flat_mlp_hooks_are_batch_pos_and_edits_match_the_bare_model(tiny: zoo.Tiny) -> None:
    """OPT runs fc1 / fc2 on [batch * pos, d]: the hooks show [batch, pos, d]; an edit at one position of
    mlp.hook_post equals the same edit on the bare model's fc2 input row (batch-major rows)."""
    m = HookedMLLM(tiny.model, tiny.processor)
    bare = zoo.build("blip2").model
    seen = {}
    fc1 = bare.language_model.model.decoder.layers[1].fc1
    h = fc1.register_forward_hook(lambda mod, i, out: seen.__setitem__("pre", out.detach()))
    with torch.no_grad():
        clean = bare(**tiny.inputs).logits
    h.remove()
    _, cache = m.run_with_cache(tiny.inputs, names_filter=["blocks.1.mlp.hook_pre", "blocks.1.hook_mlp_out"])
    b, s = tiny.inputs["input_ids"].shape
    assert cache["blocks.1.mlp.hook_pre"].shape == (b, s, 128)
    assert torch.equal(cache["blocks.1.mlp.hook_pre"], seen["pre"].view(b, s, -1))
    assert cache["blocks.1.hook_mlp_out"].shape == (b, s, 64)

    def edit(x, hook):  # noqa: ANN001, ANN202
        x = x.clone()
        x[1, -2] += 3.0
        return x

    def hand(mod, args):  # noqa: ANN001, ANN202
        x = args[0].clone()
        x[1 * s + s - 2] += 3.0
        return (x,)

    ours = m.run_with_hooks(tiny.inputs, fwd_hooks=[("blocks.1.mlp.hook_post", edit)])
    h = bare.language_model.model.decoder.layers[1].fc2.register_forward_pre_hook(hand)
    with torch.no_grad():
        ref = bare(**tiny.inputs).logits
    h.remove()
    assert (ours - ref).abs().max().item() <= 1e-5 and (ours - clean).abs().max().item() > 1e-4


def test_opt_neuron_sweep_equals_the_intervention_runs(tiny: zoo.Tiny) -> None:
    m = HookedMLLM(tiny.model, tiny.processor)
    metric = lambda logits: logits[:, -1].log_softmax(-1)[:, 7].sum()  # noqa: E731
    configs = [NeuronAblation(1, [2, 3], NonPad()), NeuronAblation(0, [5], NonPad())]
    result = sweep(m, tiny.inputs, configs, metric, progress=False)
    expected = torch.stack([metric(m.run_with_interventions(tiny.inputs, c)) for c in configs])
    assert (result.values - expected).abs().max().item() <= 1e-5 and result.meta["fast"] == len(configs)


def test_nnsight_refuses_opt_mlp_sites(tiny: zoo.Tiny) -> None:
    m = HookedMLLM(tiny.model, tiny.processor)
    with pytest.raises(NotImplementedError, match=r"\[batch \* pos"):
        compile_plan(m, [NeuronAblation(0, [1], NonPad())], tiny.inputs)


def test_blip2_over_flan_t5_is_refused_as_not_decoder_only() -> None:
    from transformers import T5Config

    t5 = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, decoder_start_token_id=0)
    with pytest.raises(NotImplementedError, match=r"over 't5' is not decoder-only.*encoder-decoder"):
        HookedMLLM(_blip2(t5.to_dict()))


@pytest.mark.parametrize(
    "extra, problem",
    [
        ({"do_layer_norm_before": False}, r"do_layer_norm_before=False \(post-LN"),
        ({"word_embed_proj_dim": 32}, r"word_embed_proj_dim=32 != hidden_size: project_in / project_out"),
    ],
)
def test_opt_blocks_the_row_does_not_describe_are_refused(extra: dict, problem: str) -> None:
    tok = build_blip2_processor().tokenizer
    with pytest.raises(NotImplementedError, match=rf"backbone 'opt' \(row 'opt'\).*{problem}"):
        HookedMLLM(_blip2(opt_config(tok, **extra).to_dict()))


def test_instructblip_over_a_llama_lm_is_exact_without_the_opt_paths() -> None:
    """InstructBLIP-Vicuna: the same wrapper row over a Llama decoder (language_model.model.layers, no decoder)."""
    import copy

    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration, LlamaConfig

    from hooks_mm.zoo.base import lm_config

    tiny = zoo.build("instructblip")
    text = LlamaConfig(**lm_config(64, pad_token_id=1, bos_token_id=2, eos_token_id=3))
    config = InstructBlipConfig(
        vision_config=_vision(), qformer_config=_qformer(64), text_config=text.to_dict(), num_query_tokens=QUERIES,
        image_token_index=tiny.model.config.image_token_id,
    )  # fmt: skip
    bare = init_model(InstructBlipForConditionalGeneration, config, 0)
    m = HookedMLLM(copy.deepcopy(bare), tiny.processor)
    assert (m.adapter.backbone.name, m.adapter.layers) == ("llama", "language_model.model.layers")
    with torch.no_grad():
        ref = bare(**tiny.inputs, output_hidden_states=True)
        assert torch.equal(m(tiny.inputs), ref.logits)
    _, c = m.run_with_cache(tiny.inputs)
    real = tiny.inputs["attention_mask"].bool()
    assert (c["blocks.0.hook_resid_post"] - ref.language_model_outputs.hidden_states[1])[real].abs().max() <= 1e-5
