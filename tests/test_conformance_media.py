"""Video and audio on the same interface: layouts match the features the model writes, times
match the processors' rates, audio-side hooks land on audio positions, and interventions
take the new selectors with no special case.

(The generic checks — exact logits with no hooks, cache-everything logits, resid_post vs
hidden_states, every hook edit reaching the logits — run for these families in
test_conformance.py, parametrised over every zoo builder.)"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import AUDIO_FAMILIES, VIDEO_FAMILIES, assert_clean, pair_for

from hooks_mm import Audio, AudioTime, Frame, Last, Modality, Video
from hooks_mm.interventions import AttentionKnockout, Intervention, NeuronAblation, Steer

# seconds per LM audio step, from the feature extractors / tokenizers (independent of the layout):
# Whisper-style: 10 ms hop x conv stride 2 x pool 2; Voxtral: x 4 frames per token; AnyGPT: 40 ms codes
SECONDS_PER_STEP = {
    "qwen2_audio": 0.04,
    "qwen2_5_omni": 0.04,
    "voxtral": 0.08,
    "anygpt_audio": 0.04,
    "qwen3_asr": 0.08,  # three stride-2 convs: 8 frames (clips under one 1 s chunk)
    "glm_asr": 0.08,  # conv stride 2 x 4 frames stacked
    "moss_transcribe_diarize": 0.08,  # conv stride 2 x audio_merge_size 4
    "granite_speech": 0.1,  # 2 stacked mel frames x downsample_rate 5 per query
    "granite_speech_plus": 0.1,
    "fun_asr_nano": 0.06,  # low frame rate: every 6th 10 ms fbank frame
    "gemma4_audio": 0.04,
    "qwen3_omni_moe": 0.08,  # Qwen3-ASR's encoder: three stride-2 convs (clips under one 1 s chunk)
}
# steps that share one start time: the Q-Former queries of one projector window (3 per 15 frames)
STEPS_PER_TIME = {"granite_speech": 3, "granite_speech_plus": 3}
# seconds per LM video frame: temporal_patch_size (2) / fps (2) where the model receives a rate
SECONDS_PER_FRAME = {"qwen2_5_vl_video": 1.0, "qwen2_5_omni": 1.0, "qwen3_omni_moe": 1.0}


def _mask(p, kind: str) -> torch.Tensor:  # noqa: ANN001
    a, cfg = p.model.adapter, p.model.hf_model.config
    fn = a.video_mask if kind == "video" else a.audio_mask
    return fn(cfg, p.inputs["input_ids"]) & p.real


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_layout_matches_video_features(family: str) -> None:
    p = pair_for(family)
    layout = p.model.layout(p.inputs)
    video = layout.modality == Modality.VIDEO
    assert int(video.sum()) == int(_mask(p, "video").sum()) > 0
    assert layout.n_videos >= 1 and layout.select(Video()).equal(video)
    for k in range(layout.n_videos):
        at = layout.video_id == k
        assert at.any(1).sum() == 1  # one row per video
        frames, rows, cols = layout.video_grids[k]
        cells = torch.stack([layout.frame[at], layout.grid_row[at], layout.grid_col[at]], 1)
        patches = cells[cells[:, 2] >= 0]
        assert len(torch.unique(patches, dim=0)) == len(patches) == frames * rows * cols
        assert sorted(layout.frame[at].unique().tolist()) == list(range(frames))
        assert (layout.frame[at].diff() >= 0).all()  # frames in order along the sequence
    assert (layout.frame[~video & (layout.modality != Modality.AUDIO)] == -1).all()
    per_frame = layout.select(Frame(0)) | layout.select(Frame((1, 10**6)))
    assert torch.equal(per_frame, video)
    if family in SECONDS_PER_FRAME:
        expected = layout.frame[video].double() * SECONDS_PER_FRAME[family]
        assert torch.allclose(layout.time[video], expected)
    else:
        assert torch.isnan(layout.time[video]).all()  # the model is given no frame rate


@pytest.mark.parametrize("family", AUDIO_FAMILIES)
def test_layout_matches_audio_features_and_times(family: str) -> None:
    p = pair_for(family)
    layout = p.model.layout(p.inputs)
    audio = layout.modality == Modality.AUDIO
    assert int(audio.sum()) == int(_mask(p, "audio").sum()) > 0
    assert layout.n_audios >= 1 and layout.select(Audio()).equal(audio)
    step, g = SECONDS_PER_STEP[family], STEPS_PER_TIME.get(family, 1)
    for k in range(layout.n_audios):
        at = layout.audio_id == k
        assert at.any(1).sum() == 1
        n = layout.audio_lengths[k]
        assert layout.frame[at].tolist() == list(range(n))
        assert torch.allclose(layout.time[at], torch.arange(n, dtype=torch.float64).div(g).floor() * g * step)
    # AudioTime picks exactly the steps in [t0, t1) of every clip
    sel = layout.select(AudioTime(2 * g * step - 1e-9, 5 * g * step - 1e-9))
    assert torch.equal(sel, audio & (layout.frame >= 2 * g) & (layout.frame < 5 * g))
    assert not (layout.time[~(audio | (layout.modality == Modality.VIDEO))]).isfinite().any()


def test_omni_times_are_its_time_aligned_position_ids() -> None:
    """Qwen2.5-Omni: the layout's times are the thinker's temporal M-RoPE ids / 25, and agree
    with the feature arithmetic (40 ms per audio step, 1 s per video frame at 2 fps)."""
    p = pair_for("qwen2_5_omni")
    inputs = p.inputs
    pos, _ = p.model.hf_model.model.get_rope_index(
        inputs["input_ids"],
        inputs["image_grid_thw"],
        inputs["video_grid_thw"],
        inputs["attention_mask"],
        False,
        inputs["feature_attention_mask"].sum(-1),
        inputs["video_second_per_grid"],
    )
    layout = p.model.layout(inputs)
    for kind in (Modality.AUDIO, Modality.VIDEO):
        for r in range(layout.shape[0]):
            at = layout.modality[r] == kind
            if not at.any():
                continue
            t = pos[0, r][at].double()
            first = layout.frame[r][at] == 0
            assert torch.allclose(layout.time[r][at], (t - t[first].min()) / 25)
    assert layout.describe(0).count("audio0 25 steps 1.00s") == 1 and "video0 2f 2x3" in layout.describe(0)
    assert "audio0 15 steps 0.60s" in layout.describe(1) and "pad" in layout.describe(1)


@pytest.mark.parametrize(
    "family", ["qwen2_audio", "voxtral", "qwen2_5_omni", "qwen3_asr", "glm_asr", "moss_transcribe_diarize"]
)
def test_hook_audio_projector_out_lands_on_audio_positions(family: str) -> None:
    p = pair_for(family)
    m = p.model
    layout = m.layout(p.inputs)
    audio = layout.modality == Modality.AUDIO
    _, clean = m.run_with_cache(p.inputs, names_filter="blocks.0.hook_resid_pre")
    seen: dict[str, torch.Tensor] = {}
    m.run_with_hooks(
        p.inputs,
        fwd_hooks=[
            ("hook_audio_projector_out", lambda x, hook: x + 1.0),
            ("hook_audio_out", lambda x, hook: seen.__setitem__("enc", x.detach())),
            ("blocks.0.hook_resid_pre", lambda x, hook: seen.__setitem__("r", x.detach())),
        ],
    )
    moved = (seen["r"] - clean["blocks.0.hook_resid_pre"]).abs().amax(-1) > 1e-4
    assert torch.equal(moved & p.real, audio)
    assert seen["enc"].shape[-1] != m.cfg.d_model or seen["enc"].numel() > 0
    assert_clean(m)


@pytest.mark.parametrize("family", ["qwen2_5_omni", "qwen2_5_vl_video", "anygpt_audio"])
def test_interventions_take_video_and_audio_selectors(family: str) -> None:
    """NeuronAblation / Steer / AttentionKnockout with Audio(), Frame(t), AudioTime(...):
    each touches exactly the selected positions, and the specs round-trip through JSON."""
    p = pair_for(family)
    m, l = p.model, 0
    layout = m.layout(p.inputs)
    has_video = bool((layout.modality == Modality.VIDEO).any())
    sel = (Video(0) & Frame(1)) if has_video else (Audio() & AudioTime(0.08, 0.2))
    picked = layout.select(sel)
    assert picked.any()
    name = f"blocks.{l}.mlp.hook_post"
    spec = NeuronAblation(layers=l, neurons=[1, 2, 3], positions=sel)
    again = Intervention.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again.to_dict() == spec.to_dict()
    cache: dict[str, torch.Tensor] = {}
    with torch.no_grad(), m.interventions(again, p.inputs):
        m.run_with_hooks(p.inputs, fwd_hooks=[(name, lambda x, hook: cache.__setitem__("a", x.detach().clone()))])
    _, clean = m.run_with_cache(p.inputs, names_filter=[name])
    changed = (cache["a"] - clean[name]).abs().amax(-1) > 0
    assert torch.equal(changed, picked)
    assert (cache["a"][..., [1, 2, 3]][picked] == 0).all()
    # steering the selected positions changes the logits; a knockout from Last() to them too
    v = torch.randn(m.cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = m(p.inputs)
        steered = m.run_with_interventions(p.inputs, Steer(layers=l, vector=v.tolist(), positions=sel, scale=4.0))
        knocked = m.run_with_interventions(
            p.inputs, AttentionKnockout(layers=[0, 1], queries=Last(), keys=sel | Audio())
        )
    assert (steered - base)[p.real].abs().max() > 1e-4
    assert (knocked - base)[:, -1].abs().max() > 1e-6
    assert_clean(m)


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_cached_projector_hooks_hold_every_call_of_the_forward(family: str) -> None:
    """Images and videos are projected in separate calls (Qwen-VL, LLaVA-NeXT-Video, Video-LLaVA, ...): the cached
    hook_vision_out / hook_projector_out hold the rows of every call in call order (the cache kept only the last
    call before), equal to the projector's inputs / outputs seen by a plain torch hook on the bare model."""
    p = pair_for(family)
    m = p.model
    if "hook_projector_out" not in m.hook_dict:
        pytest.skip(f"{family}: no projector path")
    bare = p.fresh_bare()
    seen: dict[str, list[torch.Tensor]] = {"in": [], "out": []}

    def grab(mod, args, out) -> None:  # noqa: ANN001
        seen["in"].append(args[0].detach())
        for t in out if isinstance(out, (list, tuple)) else [out]:
            seen["out"].append(t.detach())

    handle = bare.get_submodule(m.adapter.projector).register_forward_hook(grab)
    try:
        with torch.no_grad():
            bare(**p.inputs)
    finally:
        handle.remove()
    _, cache = m.run_with_cache(p.inputs, names_filter=["hook_vision_out", "hook_projector_out"])
    for key, name in (("in", "hook_vision_out"), ("out", "hook_projector_out")):
        rows = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen[key]])
        ours = cache[name].reshape(-1, cache[name].shape[-1])
        assert ours.shape == rows.shape, (name, len(seen[key]))
        assert (ours - rows).abs().max().item() <= 1e-5
    assert_clean(m)


def test_a_residual_hook_firing_twice_in_one_forward_is_refused_not_overwritten() -> None:
    from hooks_mm.model.batch import again

    x = torch.zeros(2, 5, 8)
    assert again("hook_projector_out", torch.zeros(3, 8), torch.ones(4, 8)).shape == (7, 8)
    with pytest.raises(RuntimeError, match="fired twice in one forward.*separate forwards"):
        again("blocks.0.hook_resid_post", x, x)
