"""save_pretrained -> HookedMLLM.from_pretrained(dir) offline, with processor, from raw text + PIL."""

from __future__ import annotations

import pytest
import torch

from hooks_mm import Answer, HookedMLLM, Image, Instruction, Last, Modality, zoo
from hooks_mm.layout import SEGMENTS_KEY
from hooks_mm.zoo import toy_image

CHAT = {
    "llava": True,
    "qwen2_vl": True,
    "anygpt": False,
    "llava_next": True,
    "qwen2_5_vl": True,
    "qwen3_vl": True,
    "vipllava": True,
}


@pytest.mark.parametrize("family", sorted(CHAT))
def test_from_pretrained_offline_runs_raw_text_and_images(family, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny = zoo.build(family)
    zoo.save(tiny, str(tmp_path))
    model = HookedMLLM.from_pretrained(str(tmp_path))
    assert model.processor is not None and model.cfg.architecture == type(tiny.model).__name__
    prompts = ["<image> what colour is the square ?", "<image> <image> which image is red ?"]
    if not CHAT[family]:
        prompts = [p.replace("<image>", model.processor.image_token) for p in prompts]
    images = [[toy_image(1)], [toy_image(2), toy_image(3)]]
    inputs = model.to_inputs(prompts, images=images, chat=CHAT[family])

    bare = type(tiny.model).from_pretrained(str(tmp_path)).eval()
    hf_inputs = {k: v for k, v in inputs.items() if k != SEGMENTS_KEY}
    with torch.no_grad():
        expected = bare(**hf_inputs).logits
        got = model(inputs)
    assert torch.equal(got, expected)

    layout = model.layout(inputs)
    assert layout.n_images == 3
    assert [int(layout.image_index[r].max()) + 1 for r in range(2)] == [1, 2]
    assert layout.select(Image(1)).sum(1).tolist()[0] == 0 and layout.select(Image(1))[1].any()
    assert (layout.select(Instruction()) <= (layout.modality == Modality.TEXT)).all()
    assert layout.select(Instruction()).any(1).all()


def test_answer_segment_follows_the_prompt(tmp_path) -> None:  # noqa: ANN001
    tiny = zoo.build("llava")
    zoo.save(tiny, str(tmp_path))
    model = HookedMLLM.from_pretrained(str(tmp_path))
    inputs = model.to_inputs(
        ["<image> what colour is the square ?", "<image> where is it ?"],
        images=[toy_image(1), toy_image(2)],
        answer=["red", "top left"],
        chat=True,
    )
    layout = model.layout(inputs)
    answer = layout.select(Answer())
    assert answer.sum(1).tolist() == [1, 2]
    assert answer[:, -1].all()  # answers end each (left-padded) row
    assert layout.select(Last())[answer].sum() == 2
    assert not (answer & layout.select(Instruction())).any()
    ids = inputs["input_ids"][1][answer[1]].tolist()
    assert model.processor.tokenizer.decode(ids) == "top left"
    with torch.no_grad():
        model(inputs)  # the segments key never reaches the HF model


def test_builtin_name_is_saved_once_and_loaded_like_a_hub_model(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("HOOKS_MM_CACHE", str(tmp_path))
    model = HookedMLLM.from_pretrained("tiny-llava")
    assert (tmp_path / "tiny-llava" / "config.json").is_file()
    again = HookedMLLM.from_pretrained("tiny-llava")
    a, b = model.hf_model.state_dict(), again.hf_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", ["qwen2_5_omni", "qwen2_audio", "qwen2_5_vl_video", "anygpt_audio"])
def test_from_pretrained_offline_runs_raw_audio_and_video(family, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Saved and loaded like a hub model; raw waveforms / frames go through the loaded
    processor (video slot: the PIL video processor) and the logits equal the bare model's."""
    from hooks_mm import Audio, Frame
    from hooks_mm.media import moving_square, tone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny = zoo.build(family)
    zoo.save(tiny, str(tmp_path))
    model = HookedMLLM.from_pretrained(str(tmp_path))
    kwargs, prompt = {}, "<audio> what is this ?"
    if family == "qwen2_5_vl_video":
        kwargs, prompt = {"videos": [moving_square(4, 56, 84)], "fps": 2.0}, "<video> what is this ?"
    elif family == "qwen2_5_omni":
        kwargs, prompt = (
            {"audio": [tone(0.5)], "videos": [moving_square(2, 56, 56)], "fps": 2.0},
            "<audio> <video> what ?",
        )
    else:
        kwargs = {"audio": [tone(0.5)]}
    inputs = model.to_inputs([prompt], chat=family != "anygpt_audio", **kwargs)
    bare = type(tiny.model).from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(model(inputs), bare(**{k: v for k, v in inputs.items() if k != SEGMENTS_KEY}).logits)
    layout = model.layout(inputs)
    if "audio" in kwargs:
        assert layout.audio_lengths == [12] and layout.select(Audio()).sum() == 12  # 0.5 s: 12 steps of 40 ms
        assert torch.isfinite(layout.time[layout.select(Audio())]).all()
    if "videos" in kwargs:
        assert layout.n_videos == 1 and layout.select(Frame(0)).any()


@pytest.mark.parametrize("family", ["video_llava", "llava_next_video"])
def test_saves_and_reloads_its_frame_by_frame_video_processor(family, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """The built-in name used to crash on save (its video processor is not an HF class); reloaded,
    the processor gives the very inputs the original gives, and the logits equal the bare model's."""
    from hooks_mm import Frame
    from hooks_mm.media import moving_square

    monkeypatch.setenv("HOOKS_MM_CACHE", str(tmp_path))
    tiny = zoo.build(family)
    model = HookedMLLM.from_pretrained("tiny-" + family.replace("_", "-"))
    kwargs = {"images": [toy_image(1)], "videos": [moving_square(2, 40, 40)]}
    prompts = ["USER: <image> <video> what moves ? ASSISTANT:"]
    want = tiny.processor(text=prompts, return_tensors="pt", padding=True, **kwargs)
    got = model.to_inputs(prompts, chat=False, **kwargs)
    assert all(torch.equal(got[k], want[k]) for k in want)
    with torch.no_grad():
        assert torch.equal(model(got), tiny.model(**want).logits)
    assert model.layout(got).select(Frame(1)).any()


def test_mistral3_loads_although_its_processor_class_needs_torchvision(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    # PixtralProcessor is a torchvision dummy here: loading must fall back, not raise ImportError
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny = zoo.build("mistral3")
    zoo.save(tiny, str(tmp_path))
    model = HookedMLLM.from_pretrained(str(tmp_path))
    inputs = dict(tiny.inputs)
    with torch.no_grad():
        assert torch.equal(model(inputs), tiny.model(**inputs).logits)
    assert model.layout(inputs).n_images == 3
