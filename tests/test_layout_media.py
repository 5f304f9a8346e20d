"""ModalityLayout with video and audio: hand-made mixed batches (text + image + video + audio
in one row) with left/right padding, the new selectors, JSON round trips, clear errors; and
the same on a real mixed prompt (Qwen2.5-Omni thinker, text + image + audio + video, padded)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import pair_for

from hooks_mm import Audio, AudioTime, Frame, Image, Last, Modality, NonPad, Selector, Special, Text, Video, Where
from hooks_mm.adapters import MediaPlan, grid_plan
from hooks_mm.layout import build_layout

IMG, VID, AUD, BOS, PAD = 9, 8, 7, 1, 0


def _batch(side: str):  # noqa: ANN202
    """Row 0: BOS img(2x2) t VID(2 frames of 1x2) t AUD(5 steps) t; row 1: BOS AUD(3) t + pads."""
    row0 = [BOS, IMG, IMG, IMG, IMG, 5, VID, VID, VID, VID, 5, AUD, AUD, AUD, AUD, AUD, 6]
    row1 = [BOS, AUD, AUD, AUD, 6]
    pad = [PAD] * (len(row0) - len(row1))
    row1 = pad + row1 if side == "left" else row1 + pad
    ids = torch.tensor([row0, row1])
    layout = build_layout(
        ids,
        (ids != PAD).long(),
        ids == IMG,
        [grid_plan(2, 2)],
        {BOS},
        video_mask=ids == VID,
        video_plans=[MediaPlan.video(2, 1, 2, seconds_per_frame=0.5)],
        audio_mask=ids == AUD,
        audio_plans=[MediaPlan.audio(5, 0.04), MediaPlan.audio(3, 0.04)],
    )
    return layout, ids


@pytest.mark.parametrize("side", ["left", "right"])
def test_mixed_row_with_padding(side: str) -> None:
    layout, ids = _batch(side)
    off = 12 if side == "left" else 0
    assert layout.modality[0].tolist() == [2, 1, 1, 1, 1, 0, 4, 4, 4, 4, 0, 5, 5, 5, 5, 5, 0]
    assert (layout.modality[1] == Modality.PAD).sum() == 12
    assert layout.frame[0].tolist() == [-1] * 6 + [0, 0, 1, 1] + [-1] + [0, 1, 2, 3, 4] + [-1]
    assert layout.grid_col[0, 6:10].tolist() == [0, 1, 0, 1] and layout.grid_row[0, 6:10].tolist() == [0, 0, 0, 0]
    assert layout.time[0, 6:10].tolist() == [0.0, 0.0, 0.5, 0.5]
    assert torch.allclose(layout.time[0, 11:16], torch.tensor([0.0, 0.04, 0.08, 0.12, 0.16], dtype=torch.float64))
    assert torch.allclose(layout.time[1, off + 1 : off + 4], torch.tensor([0.0, 0.04, 0.08], dtype=torch.float64))
    assert torch.isnan(layout.time[layout.modality <= Modality.PAD]).all()  # text, image, special, pad
    assert layout.audio_id[1, off + 1 : off + 4].tolist() == [1, 1, 1] and layout.audio_index[1, off + 1] == 0
    assert layout.video_grids == [(2, 1, 2)] and layout.audio_lengths == [5, 3]
    assert layout.summary() == {"text": 4, "image": 4, "special": 2, "pad": 12, "video": 4, "audio": 8}
    d = layout.describe(0)
    assert "image0 2x2[1:5]" in d and "video0 2f 1x2[6:10]" in d and "audio0 5 steps 0.20s[11:16]" in d
    assert "audio0 3 steps 0.12s" in layout.describe(1) and "pad" in layout.describe(1)
    # selectors
    assert layout.select(Frame(1))[0].nonzero().flatten().tolist() == [8, 9]
    assert layout.select(Frame(range(0, 2))).sum() == 4 and layout.select(Frame((1, 2))).sum() == 2
    assert layout.select(AudioTime(0.05, 0.13)).sum(1).tolist() == [2, 1]
    assert layout.select(Audio(0)).sum(1).tolist() == [5, 3] and layout.select(Video(0)).sum(1).tolist() == [4, 0]
    assert torch.equal(layout.select(Text() | Image() | Video() | Audio() | Special()), layout.select(NonPad()))
    assert not (layout.select(~Audio()) & (layout.modality == Modality.PAD)).any()
    last = layout.select(Last())
    assert last[0, 16] and last[1, (16 if side == "left" else 4)]
    assert layout.indices(Audio() & AudioTime(0.0, 0.1)).tolist() == [[11, 12, 13], [off + 1, off + 2, off + 3]]


def test_new_selectors_compose_and_round_trip_through_json() -> None:
    layout, _ = _batch("left")
    sel = (Video(0) & Frame(1)) | (Audio() & AudioTime(0.0, 0.1)) | (Image(0) & ~Frame(0))
    again = Selector.from_dict(json.loads(json.dumps(sel.to_dict())))
    assert again == sel and torch.equal(again.mask(layout), sel.mask(layout))
    assert Selector.from_dict(Frame(range(1, 3)).to_dict()) == Frame((1, 3))
    assert layout.select(Where(lambda L: L.frame == 1)).sum() == 2 + 2  # video frame 1 and audio step 1


def test_bad_media_input_is_named() -> None:
    layout, ids = _batch("left")
    with pytest.raises(ValueError, match="audio token count does not match"):
        build_layout(ids, None, ids == IMG, [grid_plan(2, 2)], audio_mask=ids == AUD, audio_plans=[MediaPlan.audio(5)])
    with pytest.raises(ValueError, match="video token count does not match"):
        build_layout(
            ids,
            None,
            ids == IMG,
            [grid_plan(2, 2)],
            video_mask=ids == VID,
            video_plans=[MediaPlan.video(1, 1, 2)],
            audio_mask=ids == AUD,
            audio_plans=[MediaPlan.audio(5), MediaPlan.audio(3)],
        )
    with pytest.raises(ValueError, match=r"Video\(3\) is out of range"):
        layout.select(Video(3))
    with pytest.raises(ValueError, match="stop > start"):
        Frame((3, 1))
    with pytest.raises(ValueError, match="t1 must be larger"):
        AudioTime(1.0, 0.5)
    unknown = build_layout(
        ids, None, None, [], audio_mask=ids == AUD, audio_plans=[MediaPlan.audio(5), MediaPlan.audio(3)]
    )
    assert math.isnan(float(unknown.time[0, 11]))
    with pytest.raises(ValueError, match="no known times"):
        unknown.select(AudioTime(0.0, 1.0))


def test_real_mixed_prompt_text_image_audio_video_with_padding() -> None:
    """Qwen2.5-Omni thinker, processor-built: row 0 = image + 1.0 s audio + 2-frame video +
    text, row 1 = 0.6 s audio + text, left-padded. Positions come from the input ids."""
    p = pair_for("qwen2_5_omni")
    cfg = p.model.hf_model.config
    ids, am = p.inputs["input_ids"], p.inputs["attention_mask"]
    layout = p.model.layout(p.inputs)
    expect = torch.full_like(ids, int(Modality.TEXT))
    expect[
        torch.isin(
            ids,
            torch.tensor(
                [cfg.vision_start_token_id, cfg.vision_end_token_id, cfg.audio_start_token_id, cfg.audio_end_token_id]
            ),
        )
    ] = Modality.SPECIAL
    expect[ids == cfg.image_token_id] = Modality.IMAGE
    expect[ids == cfg.video_token_id] = Modality.VIDEO
    expect[ids == cfg.audio_token_id] = Modality.AUDIO
    expect[am == 0] = Modality.PAD
    special_text = (layout.modality == Modality.SPECIAL) & (expect == Modality.TEXT)  # <|im_start|> etc.
    assert torch.equal(torch.where(special_text, expect, layout.modality), expect)
    # audio: 1.0 s -> 25 steps, 0.6 s -> 15 steps of 40 ms (Whisper hop 10 ms, x4)
    assert layout.audio_lengths == [25, 15]
    a1 = layout.select(Audio())[1]
    assert a1.sum() == 15 and not (a1 & (am[1] == 0)).any()
    assert torch.allclose(layout.time[1][a1], torch.arange(15, dtype=torch.float64) * 0.04)
    # video: 4 frames at 2 fps, temporal patch 2 -> 2 LM frames 1 s apart, 2x3 cells each
    assert layout.video_grids == [(2, 2, 3)]
    v = layout.select(Frame(1))[0]
    assert v.sum() == 6 and (layout.time[0][v] == 1.0).all()
    assert layout.select(Frame(1))[1].sum() == 0
    # the last position predicts the next token in both rows
    assert layout.indices(Last()).flatten().tolist() == [ids.shape[1] - 1] * 2
