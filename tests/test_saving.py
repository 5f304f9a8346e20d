"""HookedMLLM.save_pretrained(dir) -> HookedMLLM.from_pretrained(dir): same logits, layout, cfg; misuse refused."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
import transformers

from hooks_mm import HookedMLLM, zoo
from hooks_mm.model.saving import META_FILE
from hooks_mm.zoo.organisms import ORGANISMS
from hooks_mm.zoo.versions import TESTED, version_tuple
from tests.conftest import assert_clean, pair_for

TINY = ["llava", "qwen2_vl", "gemma3", "idefics3", "paligemma"]


def layout_fields(layout) -> dict:  # noqa: ANN001
    return {k: v for k, v in vars(layout).items() if v is not None}


def same_layout(a, b) -> bool:  # noqa: ANN001
    fa, fb = layout_fields(a), layout_fields(b)
    if fa.keys() != fb.keys():
        return False
    return all(equal(x, fb[k]) for k, x in fa.items())


def equal(x, y) -> bool:  # noqa: ANN001
    if not isinstance(x, torch.Tensor):
        return x == y
    # ``time`` is NaN off video and audio positions
    return x.shape == y.shape and x.dtype == y.dtype and bool(torch.isclose(x, y, rtol=0, atol=0, equal_nan=True).all())


def check_round_trip(model: HookedMLLM, inputs, path: str) -> HookedMLLM:  # noqa: ANN001
    state = {k: v.clone() for k, v in model.hf_model.state_dict().items()}
    assert model.save_pretrained(path) == os.path.abspath(path)
    again = HookedMLLM.from_pretrained(path)
    with torch.no_grad():
        expected = model(inputs)
        got = again(inputs)
        # the independent check: the HF class's own loader reads back the same weights
        bare = type(model.hf_model).from_pretrained(path).eval()
        assert all(torch.equal(bare.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(got, expected)
    assert same_layout(again.layout(inputs), model.layout(inputs))
    assert vars(again.cfg) == vars(model.cfg)
    assert list(again.hook_dict) == list(model.hook_dict)
    assert type(again.processor) is type(model.processor)
    assert all(torch.equal(v, model.hf_model.state_dict()[k]) for k, v in state.items())  # weights never change
    assert_clean(model)
    return again


@pytest.mark.parametrize("family", TINY)
def test_tiny_families_round_trip(family: str, tmp_path) -> None:  # noqa: ANN001
    p = pair_for(family)
    if family == "qwen2_vl" and version_tuple(transformers.__version__) < version_tuple(TESTED):
        # transformers 5.9 reloads a saved Qwen2VLProcessor as a bare tokenizer: refused, not a changed layout
        with pytest.raises(ValueError, match="saved with a Qwen2VLProcessor and loads as a TokenizersBackend"):
            check_round_trip(p.model, p.inputs, str(tmp_path / "saved"))
        return
    check_round_trip(p.model, p.inputs, str(tmp_path / "saved"))
    meta = json.loads((tmp_path / "saved" / META_FILE).read_text())
    assert meta["adapter"] == p.model.adapter.name and meta["organism"] is None


@pytest.mark.parametrize("name", ["toy-llava", "toy-anygpt"])
def test_organisms_round_trip_with_their_metadata(name: str, tmp_path) -> None:  # noqa: ANN001
    p = pair_for(name)
    again = check_round_trip(p.model, p.inputs, str(tmp_path / "a"))
    meta = json.loads((tmp_path / "a" / META_FILE).read_text())
    assert meta["organism"] == name
    training = os.path.join(ORGANISMS[name].path, "hooks_mm_training.json")
    assert (tmp_path / "a" / "hooks_mm_training.json").read_bytes() == open(training, "rb").read()
    # a second save of the reloaded model keeps what the first carried
    again.save_pretrained(str(tmp_path / "b"))
    assert json.loads((tmp_path / "b" / META_FILE).read_text())["organism"] == name
    assert (tmp_path / "b" / "hooks_mm_training.json").exists()


def test_bfloat16_round_trip_keeps_the_dtype(tmp_path) -> None:  # noqa: ANN001
    model = HookedMLLM.from_pretrained("toy-llava", dtype="bfloat16")
    p = pair_for("toy-llava")
    again = check_round_trip(model, p.inputs, str(tmp_path / "bf16"))
    assert again.cfg.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------ misuse


@pytest.fixture(scope="module")
def llava() -> HookedMLLM:
    return pair_for("llava").model


def test_a_non_empty_directory_is_refused_without_overwrite(llava: HookedMLLM, tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not empty: pass overwrite=True.*new or empty"):
        llava.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]
    with pytest.raises(FileExistsError, match="no saved model.*not deleted"):
        llava.save_pretrained(str(tmp_path), overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_a_saved_model_and_leaves_no_stale_file(tmp_path) -> None:  # noqa: ANN001
    path = str(tmp_path / "m")
    HookedMLLM.from_pretrained("toy-anygpt").save_pretrained(path)
    p = pair_for("llava")
    p.model.save_pretrained(path, overwrite=True)
    assert not os.path.exists(os.path.join(path, "hooks_mm_codebook.json"))  # toy-anygpt's, gone
    assert not os.path.exists(os.path.join(path, "hooks_mm_training.json"))
    again = HookedMLLM.from_pretrained(path)
    with torch.no_grad():
        assert torch.equal(again(p.inputs), p.model(p.inputs))
    assert [n for n in os.listdir(tmp_path) if n != "m"] == []  # no temporary directory left


def test_a_file_path_and_a_bad_path_are_refused(llava: HookedMLLM, tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="is a file, not a directory"):
        llava.save_pretrained(str(tmp_path / "f"))
    with pytest.raises(TypeError, match="pass a directory path"):
        llava.save_pretrained(None)  # type: ignore[arg-type]


def test_a_weightless_model_is_refused(tmp_path) -> None:  # noqa: ANN001
    model = HookedMLLM.from_config("tiny-llava")
    with pytest.raises(ValueError, match="holds none.*from_config.*from_pretrained"):
        model.save_pretrained(str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_saving_into_the_directory_it_was_loaded_from_is_refused(tmp_path) -> None:  # noqa: ANN001
    path = str(tmp_path / "m")
    pair_for("llava").model.save_pretrained(path)
    model = HookedMLLM.from_pretrained(path)
    before = {n: os.path.getmtime(os.path.join(path, n)) for n in os.listdir(path)}
    with pytest.raises(ValueError, match="directory this model was loaded from.*another directory"):
        model.save_pretrained(path, overwrite=True)
    assert {n: os.path.getmtime(os.path.join(path, n)) for n in os.listdir(path)} == before


def test_a_model_saved_with_another_adapter_is_refused_on_load(tmp_path) -> None:  # noqa: ANN001
    tiny = zoo.build("llava")
    custom = dataclasses.replace(HookedMLLM(tiny.model, tiny.processor).adapter, name="my-llava")
    model = HookedMLLM(tiny.model, tiny.processor, adapter=custom)
    model.save_pretrained(str(tmp_path / "c"))
    with pytest.raises(ValueError, match="adapter 'my-llava'.*register the adapter"):
        HookedMLLM.from_pretrained(str(tmp_path / "c"))


def test_a_saved_shape_that_differs_or_a_newer_format_is_refused(llava: HookedMLLM, tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "s"
    llava.save_pretrained(str(path))
    meta = json.loads((path / META_FILE).read_text())
    (path / META_FILE).write_text(json.dumps({**meta, "cfg": {**meta["cfg"], "n_layers": 99}}))
    with pytest.raises(ValueError, match="differs from the one saved.*n_layers: saved 99"):
        HookedMLLM.from_pretrained(str(path))
    (path / META_FILE).write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(ValueError, match="newer hooks_mm.*upgrade"):
        HookedMLLM.from_pretrained(str(path))


def test_a_checkpoint_that_leaves_parameters_random_is_refused(llava: HookedMLLM, tmp_path) -> None:  # noqa: ANN001
    # what a checkpoint written by a newer transformers whose module names changed gives an older one:
    # HF fills the parameters it cannot find at random and only logs it
    from safetensors.torch import load_file, save_file

    path = tmp_path / "m"
    llava.save_pretrained(str(path))
    weights = load_file(str(path / "model.safetensors"))
    name = next(k for k in weights if "vision_tower" in k)
    del weights[name]
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"1 parameters of the model are not in the checkpoint.*transformers>="):
        HookedMLLM.from_pretrained(str(path))
