"""HookedMLLM as an nn.Module around the HF model; runs nested in hooks; interventions bound to their batch."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_clean, pair_for

from hooks_mm import HookedMLLM, zoo
from hooks_mm.interventions import NeuronAblation
from hooks_mm.layout import SEGMENTS_KEY
from hooks_mm.zoo import toy_image


def fresh(family: str = "llava", seed: int = 0) -> tuple[HookedMLLM, dict, torch.nn.Module]:
    """A wrapped tiny model, its example inputs and an independent bare copy with the same weights."""
    tiny = zoo.build(family, seed=seed)
    return HookedMLLM(tiny.model, tiny.processor), tiny.inputs, zoo.build(family, seed=seed).model


def hf_inputs(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k != SEGMENTS_KEY}


# ---------------------------------------------------------------------------------- nn.Module


def test_parameters_state_dict_and_modes_are_the_hf_models() -> None:
    model, inputs, _ = fresh()
    hf = model.hf_model
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in hf.named_parameters()]
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters()) > 0
    assert list(model.state_dict()) == list(hf.state_dict())  # HF's own keys
    model.requires_grad_(False)
    assert not any(p.requires_grad for p in hf.parameters())
    assert not model.training and not hf.training  # the wrapper reports the HF model's mode (eval once loaded)
    model.train()
    assert hf.training and all(m.training for m in hf.modules())
    model.eval()
    assert not any(m.training for m in hf.modules())
    assert len(model.hook_dict) == len(fresh()[0].hook_dict)  # registering the HF model renamed no hook point

    other, _, other_bare = fresh(seed=1)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert torch.equal(model(inputs), other_bare(**inputs).logits)


@pytest.mark.parametrize(
    ("family", "convert"),
    [(f, "bfloat16") for f in sorted(zoo.BUILDERS)]
    + [(f, "half") for f in ("llava", "idefics3", "qwen2_vl", "chameleon", "mllama", "qwen2_audio")],
)
def test_half_and_bfloat16_follow_in_cfg_and_equal_the_bare_model(family: str, convert: str) -> None:
    model, inputs, bare = fresh(family)
    batch = model.prepare(inputs)
    assert model.cfg.dtype == torch.float32
    assert getattr(model, convert)() is model
    dtype = {"half": torch.float16, "bfloat16": torch.bfloat16}[convert]
    assert model.cfg.dtype == dtype and all(p.dtype == dtype for p in model.hf_model.parameters())
    getattr(bare, convert)()
    # pixels cast to the model's dtype, as the HF vision towers do themselves (Chameleon's VQ encoder does not)
    cast = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        got = model(inputs)
        assert got.dtype == dtype
        assert torch.equal(got, bare(**cast).logits)
        assert torch.equal(model(batch), got)  # a batch prepared before the conversion is prepared again
    converted = model.prepare(inputs)
    for key in ("pixel_values", "pixel_values_videos", "input_features"):
        if key in inputs:
            assert model.prepare(inputs)[key].dtype == dtype
    model.float()
    bare.float()
    assert model.cfg.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(model(inputs), bare(**inputs).logits)
        assert torch.equal(model(converted), bare(**inputs).logits)  # from the given pixels, not the rounded ones


def test_cfg_device_follows_a_move() -> None:
    model, _, _ = fresh()
    model.to_empty(device="meta")  # any nn.Module move, not only .to()
    assert model.cfg.device == torch.device("meta")
    assert all(p.device.type == "meta" for p in model.hf_model.parameters())


def test_from_pretrained_takes_dtype_device_and_device_map() -> None:
    for dtype in ("bfloat16", torch.bfloat16, "torch.bfloat16"):
        model = HookedMLLM.from_pretrained("tiny-llava", dtype=dtype)
        assert model.cfg.dtype == torch.bfloat16 == next(model.parameters()).dtype
    model = HookedMLLM.from_pretrained("tiny-llava", device="cpu", dtype=torch.float16)
    assert (model.cfg.device, model.cfg.dtype) == (torch.device("cpu"), torch.float16)
    model = HookedMLLM.from_pretrained("tiny-llava", device_map="cpu")
    assert model.cfg.device == torch.device("cpu")
    with pytest.raises(ValueError, match="not a floating torch dtype.*bfloat16"):
        HookedMLLM.from_pretrained("tiny-llava", dtype="int8")
    with pytest.raises(ValueError, match="device= .* or device_map="):
        HookedMLLM.from_pretrained("tiny-llava", device="cpu", device_map="cpu")


@pytest.mark.parametrize("name", ["tiny-llava", "toy-anygpt"])
def test_save_pretrained_reloads_model_and_processor(name: str, tmp_path) -> None:  # noqa: ANN001
    model = HookedMLLM.from_pretrained(name)
    model.save_pretrained(str(tmp_path))
    again = HookedMLLM.from_pretrained(str(tmp_path))
    assert type(again.processor) is type(model.processor)
    token = model.processor.image_token
    inputs = model.to_inputs([f"{token} what colour is the square ?"], images=[toy_image(1)], chat=False)
    inputs2 = again.to_inputs([f"{token} what colour is the square ?"], images=[toy_image(1)], chat=False)
    assert all(torch.equal(inputs[k], inputs2[k]) for k in inputs)
    with torch.no_grad():
        assert torch.equal(model(inputs), again(inputs2))


def test_an_unknown_model_name_lists_the_built_in_names() -> None:
    with pytest.raises(KeyError, match="no built-in model 'tiny-lava'.*Did you mean 'tiny-llava'.*toy-anygpt"):
        HookedMLLM.from_pretrained("tiny-lava")
    with pytest.raises(OSError, match="not a local directory.*toy-llava.*tiny-<family>.*network"):
        HookedMLLM.from_pretrained("no-such-org/no-such-model")


# ---------------------------------------------------------------------------------- nested runs


def test_a_run_inside_a_hook_is_refused_and_the_outer_run_stays_clean() -> None:
    p = pair_for("llava")
    model = p.model
    with torch.no_grad():
        clean = model(p.inputs)
    fired = []

    def nested(x, hook):  # noqa: ANN001, ANN202
        fired.append(hook.name)
        model(p.inputs)

    for call in (
        lambda: model.run_with_hooks(p.inputs, fwd_hooks=[("blocks.0.hook_resid_post", nested)]),
        lambda: model.run_with_hooks(
            p.inputs, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: model.run_with_cache(p.inputs))]
        ),
        lambda: model.run_with_hooks(
            p.inputs, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: model.generate(p.inputs))]
        ),
    ):
        with pytest.raises(RuntimeError, match="already running.*before the run.*run_with_cache"):
            call()
        assert_clean(model)
    assert fired == ["blocks.0.hook_resid_post"]  # once: the inner run never started
    with torch.no_grad():
        assert torch.equal(model(p.inputs), clean)


def test_two_wrappers_of_one_hf_model_share_the_running_state() -> None:
    p = pair_for("llava")
    a, b = p.model, HookedMLLM(p.model.hf_model, p.model.processor)
    with pytest.raises(RuntimeError, match="already running.*another HookedMLLM"):
        a.run_with_hooks(p.inputs, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: b(p.inputs))])
    assert_clean(a)
    assert_clean(b)
    with torch.no_grad():  # both run again, and equal the bare model
        assert torch.equal(a(p.inputs), p.bare_out().logits)
        assert torch.equal(b(p.inputs), p.bare_out().logits)


def test_interventions_with_sources_still_run_their_source_forwards() -> None:
    p = pair_for("llava")
    spec = NeuronAblation(1, [3], mode="resample", source="clean")
    flipped = {**p.inputs, "pixel_values": -p.inputs["pixel_values"]}  # other images, the same layout
    with torch.no_grad():
        want = p.model.run_with_interventions(p.inputs, spec, sources={"clean": flipped})
        with p.model.interventions(spec, p.inputs, sources={"clean": flipped}):
            assert torch.equal(p.model(p.inputs), want)
    assert_clean(p.model)


# ---------------------------------------------------------------------------------- interventions bound to a batch


def test_an_interventions_block_refuses_another_batch_of_the_same_shape() -> None:
    p = pair_for("llava")
    model, spec = p.model, NeuronAblation(0, [1, 2, 3])
    reversed_rows = {k: v.flip(0) if torch.is_tensor(v) and v.shape[0] == 2 else v for k, v in p.inputs.items()}
    assert reversed_rows["input_ids"].shape == p.inputs["input_ids"].shape
    with torch.no_grad():
        want = model.run_with_interventions(p.inputs, spec)
        copy = {k: v.clone() for k, v in p.inputs.items()}  # an equal, separately prepared batch
        with model.interventions(spec, p.inputs):
            for call in (
                lambda: model(reversed_rows),
                lambda: model.run_with_cache(reversed_rows),
                lambda: model.run_with_hooks(reversed_rows),
            ):
                with pytest.raises(ValueError, match=r"compile the spec for this batch: .*model.interventions"):
                    call()
            with pytest.raises(ValueError, match=r"interventions\(spec, inputs\) block.*interventions=spec"):
                model.generate(reversed_rows, max_new_tokens=1)  # generate refuses any block: generate(interventions=)
            assert torch.equal(model(p.inputs), want)
            assert torch.equal(model(copy), want)
            assert torch.equal(model(model.prepare(copy)), want)
            plain = {k: v for k, v in copy.items() if k != SEGMENTS_KEY}  # segments are not a model input
            labels = p.inputs["input_ids"]
            assert torch.equal(model(plain, return_type="output", labels=labels).logits, want)
    assert_clean(model)
    with torch.no_grad():  # the block is over: any batch runs again
        model(reversed_rows)


def test_a_spec_whose_sources_are_another_batch_is_refused_inside_a_block() -> None:
    p = pair_for("llava")
    flipped = {**p.inputs, "pixel_values": -p.inputs["pixel_values"]}  # other images, the same layout
    resample = NeuronAblation(1, [3], mode="resample", source="clean")
    with p.model.interventions(NeuronAblation(0, [1]), p.inputs):
        with pytest.raises(ValueError, match="block's hooks would edit its source runs"):
            with p.model.interventions(resample, p.inputs, sources={"clean": flipped}):
                pass
    assert_clean(p.model)
