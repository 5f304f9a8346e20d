"""The shipped organisms: offline loading, exact logits, modality layout, trained accuracy,
and reproducible training."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import transformers

from hooks_mm import HookedMLLM, Image, Modality, Text
from hooks_mm.layout import SEGMENTS_KEY
from hooks_mm.tasks import cell_code, make_drawings, make_qa
from hooks_mm.tasks.evaluate import accuracy_table, encode, evaluate, perplexity, qa_correct
from hooks_mm.zoo import resolve
from hooks_mm.zoo.organisms import ORGANISMS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from train_organism import LOG_NAME, train, weights_hash  # noqa: E402

NAMES = sorted(ORGANISMS)
TARGET = 0.9  # held-out accuracy on the image-dependent questions
_MODELS: dict[str, HookedMLLM] = {}


def load(name: str) -> HookedMLLM:
    if name not in _MODELS:
        _MODELS[name] = HookedMLLM.from_pretrained(name)
    return _MODELS[name]


@pytest.fixture(autouse=True)
def offline(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name", NAMES)
def test_loads_offline_with_logits_equal_to_the_bare_model(name: str) -> None:
    model = load(name)
    path = resolve(name)
    assert path == ORGANISMS[name].path and os.path.isfile(os.path.join(path, "model.safetensors"))
    arch = model.hf_model.config.architectures[0]
    assert arch == ("LlavaForConditionalGeneration" if "llava" in name else "LlamaForCausalLM")
    bare = getattr(transformers, arch).from_pretrained(path).eval()
    inputs = encode(model, make_qa(6, "test", 5), answers=True)
    with torch.no_grad():
        expected = bare(**{k: v for k, v in inputs.items() if k != SEGMENTS_KEY}).logits
        got = model(inputs)
    assert torch.equal(got, expected)
    with open(os.path.join(path, LOG_NAME)) as f:
        assert weights_hash(model.hf_model) == json.load(f)["sha256"], "shipped weights are the trained ones"


@pytest.mark.parametrize("name", NAMES)
def test_layout_finds_each_image_as_a_3x3_grid(name: str) -> None:
    model = load(name)
    examples = make_drawings(4, "test", with_text=False) + make_qa(4, "test", 6)
    inputs = encode(model, examples)
    layout = model.layout(inputs)
    assert layout.n_images == len(examples) and layout.grids == [[(0, 3, 3)]] * len(examples)
    img = layout.select(Image())
    assert img.sum(1).tolist() == [9] * len(examples)
    for r in range(len(examples)):  # the image's positions are one run, row-major over the grid
        pos = img[r].nonzero().flatten()
        assert (pos.diff() == 1).all()
        assert layout.grid_row[r, pos].tolist() == [i // 3 for i in range(9)]
        assert layout.grid_col[r, pos].tolist() == [i % 3 for i in range(9)]
    assert layout.select(Text()).any(1)[len(examples) // 2 :].all()
    if "anygpt" in name:  # an image token's grid cell is the cell its code was read from
        proc = model.processor
        for r, e in enumerate(examples):
            codes = inputs["input_ids"][r][img[r]].tolist()
            assert codes == proc.encode_image(e.image)
            cells = {(o.row, o.col): o for o in e.scene.objects}
            expect = [proc.code_ids[cell_code(r, c, cells.get((r, c)))] for r in range(3) for c in range(3)]
            assert codes == expect, "each image token is the code of its own cell"


@pytest.mark.parametrize("name", NAMES)
def test_held_out_accuracy_meets_the_target(name: str) -> None:
    """The figure the training script prints and the README reports (evaluate's 600
    held-out questions), recomputed from the shipped weights."""
    model = load(name)
    qa = make_qa(600, "test", 0)
    acc = accuracy_table(qa, qa_correct(model, qa))
    with open(os.path.join(resolve(name), LOG_NAME)) as f:
        assert acc == pytest.approx(json.load(f)["evaluation"]["accuracy"])
    assert acc["image"] >= TARGET, acc
    assert acc["text"] >= TARGET, acc


def test_case_insensitive_prompts_through_to_inputs() -> None:
    model = load("toy-llava")
    (e,) = make_qa(1, "test", 0)
    upper = e.prompt.replace("<image> ", "<image> ").upper().replace("<IMAGE>", "<image>")
    a, b = (model.to_inputs(p, images=e.image, chat=True)["input_ids"] for p in (e.prompt, upper))
    assert torch.equal(a, b)
    assert model.processor.tokenizer.unk_token_id not in a


def test_evaluate_reports_what_the_parts_compute() -> None:
    model = load("toy-anygpt")
    result = evaluate(model, n_qa=60, n_text=20, seed=3)
    qa = make_qa(60, "test", 3)
    assert result.accuracy == accuracy_table(qa, qa_correct(model, qa))
    assert set(result.perplexity) == {"text", "image|text", "image"}
    drawings = make_drawings(20, "test", 3)
    inputs = encode(model, drawings)
    with torch.no_grad():
        logp = torch.log_softmax(model(inputs), -1)
    layout = model.layout(inputs)
    nll = [
        -logp[r, p - 1, inputs["input_ids"][r, p]] for r, p in (layout.modality == Modality.IMAGE).nonzero().tolist()
    ]
    assert result.perplexity["image|text"] == pytest.approx(torch.stack(nll).mean().exp().item(), rel=1e-5)
    assert perplexity(model, drawings, "image") == pytest.approx(result.perplexity["image|text"], rel=1e-6)
    assert "image-dependent" in result.format()


def test_unknown_organism_and_missing_weights_are_clear_errors(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from hooks_mm.zoo import organisms

    with pytest.raises(KeyError, match="no organism"):
        organisms.get("toy-nothing")
    monkeypatch.setattr(organisms, "DIR", str(tmp_path))
    monkeypatch.setitem(
        organisms.ORGANISMS, "toy-llava", organisms.Organism("toy-llava", organisms.build_toy_llava, ())
    )
    object.__setattr__(organisms.ORGANISMS["toy-llava"], "name", "toy-llava")
    with pytest.raises(FileNotFoundError, match="python scripts/train_organism.py toy-llava"):
        resolve("toy-llava")


@pytest.mark.parametrize("name", NAMES)
def test_training_is_reproducible(name: str, tmp_path) -> None:  # noqa: ANN001
    kw = dict(steps=3, n_scenes=16, with_eval=False, log_every=0)
    a = train(name, seed=1, out=str(tmp_path / "a"), **kw)
    b = train(name, seed=1, out=str(tmp_path / "b"), **kw)
    c = train(name, seed=2, out=str(tmp_path / "c"), **kw)
    assert a.sha256 == b.sha256 != c.sha256
    loaded = HookedMLLM.from_pretrained(a.path)
    assert weights_hash(loaded.hf_model) == a.sha256
    untrained, _ = ORGANISMS[name].build(1)
    assert weights_hash(untrained) != a.sha256  # the steps changed the weights


def test_monotune_starts_from_its_base_and_says_so_when_it_is_missing(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(FileNotFoundError, match="python scripts/train_organism.py toy-anygpt"):
        train(
            "toy-anygpt-monotune",
            out=str(tmp_path / "m"),
            steps=1,
            n_scenes=4,
            with_eval=False,
            base=str(tmp_path / "none"),
        )
    assert not (tmp_path / "m").exists()
    with open(os.path.join(ORGANISMS["toy-anygpt-monotune"].path, LOG_NAME)) as f:
        log = json.load(f)
    assert log["base"] == "toy-anygpt" and log["base_sha256"] == weights_hash(load("toy-anygpt").hf_model)


@pytest.mark.parametrize("name", NAMES)
def test_shipped_weights_come_from_the_recipe(name: str) -> None:
    """The training log beside the weights names the recipe in organisms.py (seed 0)."""
    from dataclasses import asdict

    with open(os.path.join(resolve(name), LOG_NAME)) as f:
        log = json.load(f)
    assert log["name"] == name and log["seed"] == 0
    assert log["stages"] == [asdict(s) for s in ORGANISMS[name].stages]
    assert log.get("base") == ORGANISMS[name].base


@pytest.mark.parametrize("every", [-1, 2.5, True])
def test_a_bad_checkpoint_interval_is_refused_before_training(every, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="checkpoint_every=.*give a number of steps >= 0"):
        train("toy-llava", out=str(tmp_path / "m"), steps=1, n_scenes=4, with_eval=False, checkpoint_every=every)
    assert not (tmp_path / "m").exists() and not (tmp_path / "m-checkpoints").exists()
