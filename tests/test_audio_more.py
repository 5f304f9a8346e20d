"""Clip plans of the ASR families against the models' own length arithmetic: several windows /
chunks per clip, where the conformance batches keep to one."""

from __future__ import annotations

import pytest
import torch

from hooks_mm import HookedMLLM, Modality, zoo
from hooks_mm.media import chirp, tone
from hooks_mm.zoo.audio_more import build_qwen3_asr


def _times(model: HookedMLLM, inputs: dict) -> list[torch.Tensor]:
    layout = model.layout(inputs)
    return [layout.time[layout.audio_id == k] for k in range(layout.n_audios)]


def test_qwen3_asr_plan_follows_its_one_second_chunks() -> None:
    """A 2.3 s clip: chunks of 100 frames give 13 + 13 + 4 steps (the processor's count); step
    13 starts the second chunk at 1.00 s, not at 13 * 80 ms."""
    tiny = build_qwen3_asr(audio=[tone(2.3, 880.0), chirp(0.5)])
    model = HookedMLLM(tiny.model, tiny.processor)
    audio_id = tiny.model.config.audio_token_id
    counts = (tiny.inputs["input_ids"] == audio_id).sum(-1).tolist()
    expected = tiny.processor._get_audio_token_length(tiny.inputs["input_features_mask"].sum(-1)).tolist()
    assert counts == expected == [30, 7]
    t0, t1 = _times(model, tiny.inputs)
    hand = [0.08 * k for k in range(13)] + [1.0 + 0.08 * k for k in range(13)] + [2.0 + 0.08 * k for k in range(4)]
    assert torch.allclose(t0, torch.tensor(hand, dtype=torch.float64))
    assert torch.allclose(t1, torch.arange(7, dtype=torch.float64) * 0.08)
    # what the encoder really writes: as many features as the plans have steps
    with torch.no_grad():
        feats = tiny.model.model.get_audio_features(
            tiny.inputs["input_features"], tiny.inputs["input_features_mask"]
        ).pooler_output
    assert feats.shape[0] == len(t0) + len(t1)


def test_glm_asr_plan_spans_its_windows() -> None:
    """GLM-ASR: a 2.3 s clip is two 2 s windows (25 + 3 tokens); window 1 starts at 2.00 s."""
    tiny = zoo.build("glm_asr")
    model = HookedMLLM(tiny.model, tiny.processor)
    mask = tiny.inputs["input_features_mask"]
    assert mask.shape[0] == 3  # windows: clip 0 has two, clip 1 one
    per_window = (((mask.sum(-1) - 1) // 2 + 1 - 4) // 4 + 1).tolist()
    t0, t1 = _times(model, tiny.inputs)
    assert [len(t0), len(t1)] == [per_window[0] + per_window[1], per_window[2]] == [28, 8]
    assert torch.allclose(t0[25:], 2.0 + torch.arange(3, dtype=torch.float64) * 0.08)
    layout = model.layout(tiny.inputs)
    assert "audio0 28 steps" in layout.describe(0) and int((layout.modality == Modality.AUDIO).sum()) == 36


def test_glm_asr_windows_that_do_not_fill_the_clips_are_refused() -> None:
    tiny = zoo.build("glm_asr")
    model = HookedMLLM(tiny.model, tiny.processor)
    inputs = dict(tiny.inputs, input_features_mask=tiny.inputs["input_features_mask"][:, :-40])
    with pytest.raises(ValueError, match="do not fill the clips"):
        model.layout(inputs)


def test_moss_plan_spans_windows_and_skips_time_markers() -> None:
    """MOSS: a 2.3 s clip is two 2 s windows (25 + ceil(15 / 4) = 4 tokens); the numeric time
    markers between its audio tokens are text; window 1 starts at 2.00 s."""
    tiny = zoo.build("moss_transcribe_diarize")
    model = HookedMLLM(tiny.model, tiny.processor)
    tok = tiny.processor.tokenizer
    ids = tiny.inputs["input_ids"]
    markers = torch.isin(ids, torch.tensor(tok.convert_tokens_to_ids(["1", "2"])))
    assert int(markers[0].sum()) == 2  # after 1 s and 2 s of audio tokens
    layout = model.layout(tiny.inputs)
    assert not (layout.modality[markers] == Modality.AUDIO).any()
    mask = tiny.inputs["input_features_mask"]
    per_window = (((mask.sum(-1) - 1) // 2 + 1 + 3) // 4).tolist()
    t0, t1 = _times(model, tiny.inputs)
    assert [len(t0), len(t1)] == [per_window[0] + per_window[1], per_window[2]] == [29, 9]
    assert torch.allclose(t0[25:], 2.0 + torch.arange(4, dtype=torch.float64) * 0.08)


@pytest.mark.parametrize("with_audio", [True, False])
def test_granite_speech_hook_embed_edits_the_embedding_it_uses(with_audio: bool) -> None:
    """Granite Speech embeds input_ids, then (with audio) embeds them again and uses that copy:
    an edit at hook_embed must match the same edit on every embedding call of the bare model."""
    tiny = zoo.build("granite_speech")
    inputs = dict(tiny.inputs)
    if not with_audio:  # text only: one embedding call
        tok = tiny.processor.tokenizer
        inputs = dict(tok(["describe the sound", "which sound is high ?"], return_tensors="pt", padding=True))
    model = HookedMLLM(tiny.model, tiny.processor)
    bare = zoo.build("granite_speech").model
    with torch.no_grad():
        hooked = model.run_with_hooks(inputs, fwd_hooks=[("hook_embed", lambda x, hook: x + 0.5)])
        handle = bare.model.language_model.embed_tokens.register_forward_hook(lambda m, i, o: o + 0.5)
        try:
            expected = bare(**inputs).logits
        finally:
            handle.remove()
        plain = bare(**inputs).logits
    real = inputs["attention_mask"].bool()
    assert (hooked - plain)[real].abs().max() > 1e-3
    assert torch.allclose(hooked[real], expected[real], atol=1e-5)
