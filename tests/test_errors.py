"""Bad input gets a clear error naming the fix, and the model is left clean."""

from __future__ import annotations

import pytest
import torch
from conftest import IMAGE_FAMILIES, assert_clean, pair_for

from hooks_mm import HookedMLLM, Image, Positions, zoo


def _clean_after(pair, clean: torch.Tensor) -> None:  # noqa: ANN001
    assert_clean(pair.model)
    with torch.no_grad():
        assert torch.equal(pair.model(pair.inputs), clean)


@pytest.fixture()
def llava():  # noqa: ANN201
    p = pair_for("llava")
    with torch.no_grad():
        clean = p.model(p.inputs)
    yield p
    _clean_after(p, clean)


def test_unknown_hook_name_suggests_close_matches(llava) -> None:  # noqa: ANN001
    with pytest.raises(KeyError, match=r"blocks\.0\.hook_resid_post"):
        llava.model.run_with_hooks(llava.inputs, fwd_hooks=[("blocks.0.hook_resid_psot", lambda x, hook: x)])
    with pytest.raises(KeyError, match="no hook point named 'blocks.9.hook_resid_post'.*layers 0..1"):
        llava.model.run_with_cache(llava.inputs, names_filter=["blocks.9.hook_resid_post"])
    with pytest.raises(KeyError, match=r"blocks\.1\.mlp\.hook_post"):
        llava.model.add_hook("blocks.1.mlp.hook_pots", lambda x, hook: x)


def test_unsupported_architecture_names_supported_ones_and_how_to_add(tmp_path) -> None:  # noqa: ANN001
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    with pytest.raises(NotImplementedError, match=r"GPT2LMHeadModel.*LlavaForConditionalGeneration.*register"):
        HookedMLLM(gpt2)
    gpt2.config.architectures = ["GPT2LMHeadModel"]
    gpt2.save_pretrained(tmp_path)
    with pytest.raises(NotImplementedError, match="Supported"):
        HookedMLLM.from_pretrained(str(tmp_path))


@pytest.mark.parametrize(
    "family", [f for f in IMAGE_FAMILIES if "anygpt" not in f]
)  # anygpt, toy-anygpt*: codes are the image
def test_image_token_count_that_does_not_match_the_images(family: str) -> None:
    p = pair_for(family)
    with torch.no_grad():
        clean = p.model(p.inputs)
    bad = dict(p.inputs)
    ids = bad["input_ids"].clone()
    img = p.model.adapter.image_mask(p.model.hf_model.config, ids) & bad["attention_mask"].bool()
    row, col = img.nonzero()[-1].tolist()  # turn the last image token into text
    ids[row, col] = ids[row, 0] if not img[row, 0] else 1
    bad["input_ids"] = ids
    with pytest.raises(ValueError, match="image token count does not match the images.*to_inputs"):
        p.model(bad)
    with pytest.raises(ValueError, match="image token count does not match"):
        p.model.run_with_cache(bad)
    _clean_after(p, clean)


def test_positions_out_of_range(llava) -> None:  # noqa: ANN001
    seq = llava.inputs["input_ids"].shape[1]
    with pytest.raises(IndexError, match=f"out of range for sequence length {seq}"):
        llava.model.run_with_cache(llava.inputs, pos=Positions([seq + 3]))
    with pytest.raises(IndexError, match="out of range"):
        llava.model.run_with_cache(llava.inputs, pos=[-seq - 1])
    with pytest.raises(ValueError, match=r"Image\(5\) is out of range"):
        llava.model.run_with_cache(llava.inputs, pos=Image(5))
    with pytest.raises(IndexError, match="stop_at_layer=7"):
        llava.model(llava.inputs, stop_at_layer=7)


def test_selector_that_selects_nothing_or_ragged_rows(llava) -> None:  # noqa: ANN001
    text_only = pair_for("llama")
    with pytest.raises(ValueError, match="selects no position"):
        text_only.model.run_with_cache(text_only.inputs, pos=Image())
    with pytest.raises(ValueError, match="different number of positions per row"):
        llava.model.layout(llava.inputs).indices(Image())  # row 0 has two images, row 1 one (pos= pads: test_ragged)
    assert_clean(text_only.model)


def test_no_processor_for_raw_text() -> None:
    tiny = zoo.build("llava")
    model = HookedMLLM(tiny.model)  # wrapped without its processor
    with pytest.raises(ValueError, match="no processor"):
        model.to_inputs("hello")


def test_in_place_edit_of_validated_inputs_is_checked_again(llava) -> None:  # noqa: ANN001
    ids = llava.inputs["input_ids"].clone()
    inputs = {**llava.inputs, "input_ids": ids}
    with torch.no_grad():
        llava.model(inputs)  # valid: remembered
        row, col = (ids == llava.model.hf_model.config.image_token_id).nonzero()[-1].tolist()
        ids[row, col] = 5  # in place: same tensor object, new version
        with pytest.raises(ValueError, match="image token count does not match"):
            llava.model(inputs)


@pytest.mark.parametrize(
    ("family", "kind"),
    [
        ("qwen2_audio", "audio"),
        ("qwen2_5_omni", "audio"),
        ("qwen2_5_omni", "video"),
        ("voxtral", "audio"),
        ("qwen2_vl_video", "video"),
        ("video_llava", "video"),
        ("llava_next_video", "video"),
    ],
)
def test_media_token_count_that_does_not_match_the_inputs(family: str, kind: str) -> None:
    p = pair_for(family)
    with torch.no_grad():
        clean = p.model(p.inputs)
    bad = dict(p.inputs)
    ids = bad["input_ids"].clone()
    fn = p.model.adapter.audio_mask if kind == "audio" else p.model.adapter.video_mask
    at = fn(p.model.hf_model.config, ids) & bad["attention_mask"].bool()
    row, col = at.nonzero()[-1].tolist()
    ids[row, col] = ids[row, col + 1]  # the last audio / video token becomes the next (text) token
    bad["input_ids"] = ids
    if family == "voxtral":  # a clip is a run of [AUDIO]: a shorter run is a valid layout, HF raises
        with pytest.raises(Exception, match="do not match|tokens"):
            p.model(bad)
    else:
        with pytest.raises(ValueError, match=f"{kind} token count does not match the {kind} inputs"):
            p.model(bad)
    _clean_after(p, clean)
