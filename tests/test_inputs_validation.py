"""Inputs that would give a silent wrong result are refused before any hook, with the problem and the fix."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, assert_clean, pair_for

from hooks_mm import HookedMLLM, Image
from hooks_mm.zoo import toy_image

# the inputs that carry pixels / audio features (written out, independent of hooks_mm's own list)
MEDIA = ["pixel_values", "pixel_values_images", "pixel_values_videos", "input_features"]


def refused(p, bad, match: str, error: type = ValueError) -> None:  # noqa: ANN001
    """Every entry point raises ``error`` on ``bad``; no hook is left and the model still runs clean."""
    model = p.model
    with torch.no_grad():
        clean = model(p.inputs)
    probe = []
    hooks = [("blocks.0.hook_resid_post", lambda x, hook: probe.append(1))]
    for call in (
        lambda: model(bad),
        lambda: model.run_with_cache(bad),
        lambda: model.run_with_hooks(bad, fwd_hooks=hooks),
        lambda: model.generate(bad, max_new_tokens=1),
        lambda: model.prepare(bad),
    ):
        with pytest.raises(error, match=match):
            call()
    assert not probe  # raised before the forward
    assert_clean(model)
    with torch.no_grad():
        assert torch.equal(model(p.inputs), clean)


@pytest.mark.parametrize("family", FAMILIES)
def test_placeholders_without_their_media_are_refused_in_every_family(family: str) -> None:
    p = pair_for(family)
    dropped = [k for k in MEDIA if k in p.inputs]
    without = {k: v for k, v in p.inputs.items() if k not in dropped}
    if not dropped:  # codes are the tokens (AnyGPT, the toy-anygpt organisms) or text only: runs as the bare model
        with torch.no_grad():
            assert torch.equal(p.model(without), p.bare_out().logits)
        return
    refused(p, without, r"placeholder tokens but no .*to_inputs")
    refused(p, p.inputs["input_ids"], r"placeholder tokens but no")  # model(input_ids), the TransformerLens habit
    for key in dropped:  # one medium missing, the other inputs (image_grid_thw ...) kept
        refused(p, {k: v for k, v in p.inputs.items() if k != key}, r"placeholder tokens but no")


def test_return_type_is_checked(llava) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=r"return_type='logit'.*'logits', 'loss', 'output', None"):
        llava.model(llava.inputs, return_type="logit")
    with pytest.raises(ValueError, match="return_type='logit'"):
        llava.model.run_with_cache(llava.inputs, return_type="logit")
    with pytest.raises(ValueError, match="return_type='loss' needs labels"):
        llava.model(llava.inputs, return_type="loss")
    labels = llava.inputs["input_ids"].clone()
    with torch.no_grad():
        loss = llava.model(llava.inputs, return_type="loss", labels=labels)
        assert torch.equal(loss, llava.bare_out(labels=labels).loss)


@pytest.fixture()
def llava():  # noqa: ANN201
    return pair_for("llava")


def test_integer_pixels_are_refused(llava) -> None:  # noqa: ANN001
    raw = (llava.inputs["pixel_values"].clamp(0, 1) * 255).to(torch.uint8)
    refused(
        llava, {**llava.inputs, "pixel_values": raw}, r"pixel_values are torch.uint8 raw pixels.*normalised", TypeError
    )


def test_nan_image_tile_is_named_before_the_token_count(llava) -> None:  # noqa: ANN001
    p = pair_for("idefics3")
    pixels = p.inputs["pixel_values"].clone()
    pixels[0, 0, 0, 0, 0] = float("nan")
    refused(p, {**p.inputs, "pixel_values": pixels}, r"pixel_values hold 1 NaN / inf values")


def test_empty_batches_and_prompts(llava) -> None:  # noqa: ANN001
    ids = llava.inputs["input_ids"]
    refused(llava, {"input_ids": ids[:0]}, "empty batch")
    refused(llava, {"input_ids": ids[:, :0], "attention_mask": ids[:, :0]}, "empty batch")
    model = HookedMLLM.from_pretrained("tiny-llava")
    for bad in ([], [1, 2]):
        with pytest.raises(ValueError, match="to_inputs needs one prompt string or a non-empty list"):
            model.to_inputs(bad)


def test_token_ids_outside_the_vocabulary_and_float_ids() -> None:
    p = pair_for("llama")
    ids = p.inputs["input_ids"]
    size = p.model.hf_model.get_input_embeddings().num_embeddings
    for value in (size, -1):
        bad = ids.clone()
        bad[0, -1] = value
        refused(p, {**p.inputs, "input_ids": bad}, rf"token id {value} at row 0.*outside the vocabulary")
    refused(p, {**p.inputs, "input_ids": ids.float()}, "input_ids are torch.float32: token ids are integers", TypeError)
    refused(p, ids[0], r"\[batch, seq\].*ids\[None\]")


def test_inputs_on_the_meta_device(llava) -> None:  # noqa: ANN001
    meta = {k: v.to("meta") for k, v in llava.inputs.items()}
    refused(llava, meta, "on the meta device hold no values")


def test_masks_of_another_shape_and_rows_without_tokens(llava) -> None:  # noqa: ANN001
    am = llava.inputs["attention_mask"]
    refused(llava, {**llava.inputs, "attention_mask": am[:, 1:]}, "attention_mask has shape .* but input_ids")
    refused(llava, {**llava.inputs, "attention_mask": am[:1]}, "attention_mask has shape")
    empty = am.clone()
    empty[1] = 0
    refused(llava, {**llava.inputs, "attention_mask": empty}, "row 1 of the batch has no real token")


def test_per_row_pixels_of_another_batch_size() -> None:
    p = pair_for("idefics3")
    bad = {**p.inputs, **{k: p.inputs[k][:1] for k in ("pixel_values", "pixel_attention_mask")}}
    refused(p, bad, "pixel_attention_mask has 1 rows but input_ids 2")


def test_bad_run_options_raise_before_the_run(llava) -> None:  # noqa: ANN001
    with pytest.raises(TypeError, match="stop_at_layer=1.5"):
        llava.model(llava.inputs, stop_at_layer=1.5)
    with pytest.raises(RuntimeError, match="device"):
        llava.model.run_with_cache(llava.inputs, device="cdua")
    with pytest.raises(TypeError, match="cannot run on a tuple"):
        llava.model((llava.inputs["input_ids"],))
    assert_clean(llava.model)


def test_a_keyword_the_forward_would_ignore_is_refused(llava) -> None:  # noqa: ANN001
    from hooks_mm import Last

    with pytest.raises(TypeError, match="'pos' is not an input of this model's forward.*model.run_with_cache"):
        llava.model(llava.inputs, pos=Last())
    with pytest.raises(TypeError, match="'names_filter' is not an input.*run_with_cache"):
        llava.model.run_with_hooks(llava.inputs, names_filter=["blocks.0.hook_resid_post"])
    typo = {
        **{k: v for k, v in llava.inputs.items() if k != "pixel_values"},
        "pixel_value": llava.inputs["pixel_values"],
    }
    refused(llava, typo, "'pixel_value' is not an input.*Did you mean 'pixel_values'", TypeError)
    with torch.no_grad():  # the forward's documented keywords still pass
        out = llava.model(llava.inputs, return_type="output", output_hidden_states=True)
    assert len(out.hidden_states) == llava.model.cfg.n_layers + 1


def test_generate_refuses_right_padded_rows(llava) -> None:  # noqa: ANN001
    am = llava.inputs["attention_mask"]
    row = int((am == 0).any(1).nonzero()[0])
    shift = int((am[row] == 0).sum())
    right = {k: v.clone() for k, v in llava.inputs.items()}
    for key in ("input_ids", "attention_mask"):
        right[key][row] = right[key][row].roll(-shift)
    with pytest.raises(ValueError, match=f"row {row} is right-padded.*Left-pad"):
        llava.model.generate(right, max_new_tokens=2)
    assert_clean(llava.model)


# ---------------------------------------------------------------------------------- chat template by default


def test_to_inputs_applies_the_chat_template_the_model_was_trained_with() -> None:
    model = HookedMLLM.from_pretrained("toy-llava")
    prompt, img = "<image> what colour is the square ?", toy_image(1)
    default = model.to_inputs(prompt, images=img)
    chat = model.to_inputs(prompt, images=img, chat=True)
    plain = model.to_inputs(prompt, images=img, chat=False)
    assert torch.equal(default["input_ids"], chat["input_ids"])
    assert not torch.equal(default["input_ids"][..., -plain["input_ids"].shape[1] :], plain["input_ids"])
    rendered = model.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the square ?"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert "USER:" in rendered
    # a prompt that already carries the template is not wrapped twice
    assert torch.equal(model.to_inputs(rendered, images=img)["input_ids"], chat["input_ids"])
    assert torch.equal(model.layout(default).select(Image()), model.layout(chat).select(Image()))


def test_default_to_inputs_keeps_the_organism_accurate() -> None:
    from hooks_mm.tasks import make_qa
    from hooks_mm.tasks.evaluate import answer_ids

    model = HookedMLLM.from_pretrained("toy-llava")
    examples = make_qa(32, "test", 0)
    want = answer_ids(model, examples)

    def accuracy(**kw) -> float:  # noqa: ANN003
        inputs = model.to_inputs([e.prompt for e in examples], images=[e.image for e in examples], **kw)
        with torch.no_grad():
            return float((model(inputs)[:, -1].argmax(-1) == want).float().mean())

    default, plain = accuracy(), accuracy(chat=False)
    assert default == accuracy(chat=True) >= 0.9 > 0.5 > plain


def test_positions_that_do_not_fit_an_activation_are_an_error_not_the_whole_tensor() -> None:
    from hooks_mm.model.batch import take_positions

    index = torch.zeros(2, 1, dtype=torch.long)
    assert take_positions(torch.arange(30.0).view(2, 5, 3), "blocks.0.hook_resid_post", index).shape == (2, 1, 3)
    with pytest.raises(RuntimeError, match="does not match the batch of positions.*without pos="):
        take_positions(torch.zeros(3, 5, 4), "blocks.0.hook_resid_post", index)
    assert take_positions(torch.zeros(7, 4), "hook_vision_out", index).shape == (7, 4)  # no position axis


def test_a_config_without_its_placeholder_id_names_the_field_not_images() -> None:
    """Voxtral with audio_token_id=None: the error named 'image positions'; it names the field and the fix."""
    from hooks_mm import zoo

    tiny = zoo.build("voxtral")
    tiny.model.config.audio_token_id = None
    model = HookedMLLM(tiny.model, tiny.processor)
    with pytest.raises(ValueError, match=r"none of \('audio_token_id',\).*: set config.audio_token_id"):
        model(tiny.inputs)
    assert_clean(model)
