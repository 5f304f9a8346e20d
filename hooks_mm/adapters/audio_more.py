"""More audio-text families: Qwen3-ASR, GLM-ASR, Granite Speech (and Plus), Fun-ASR-Nano,
MOSS-Transcribe-Diarize.

Each writes one projected feature per LM audio step at its audio placeholder id
(``masked_scatter``, clips in order). A plan gives every step its start in seconds from the
start of its clip, following the model's own length arithmetic:

* Qwen3-ASR: the log-mel of a clip is cut into chunks of ``2 * n_window`` frames; three
  stride-2 convolutions per chunk give ``ceil(ceil(ceil(L / 2) / 2) / 2)`` steps of 8 frames
  (80 ms) for ``L`` valid frames in the chunk; chunk ``c`` starts at ``c * 2 * n_window``
  frames (a full 1 s chunk gives 13 steps, the last one 40 ms long).
* GLM-ASR: the processor cuts a clip into windows of ``chunk_length`` seconds (one row of
  ``input_features`` each); conv stride 2 then 4 frames stacked per token: 80 ms steps,
  ``(ceil(L / 2) - 4) // 4 + 1`` per window of ``L`` valid frames.
* MOSS-Transcribe-Diarize: Whisper windows of ``audio_chunk_size`` samples; conv stride 2,
  then ``audio_merge_size`` frames packed per token (80 ms), each window rounded up to whole
  tokens. Numeric time-marker tokens sit between the audio tokens of one clip (text, not
  audio positions).
* Fun-ASR-Nano: one token per low-frame-rate feature (``stride_lfr`` 10 ms frames: 60 ms).
* Granite Speech: a Q-Former reads windows of ``window_size`` encoder frames (2 stacked mel
  frames each, 20 ms) and writes ``window_size // downsample_rate`` query tokens per window;
  the queries of a window all attend to the whole window, so every query of window ``b``
  gets that window's start time (``b * window_size * 20 ms``), not a finer one.

Seconds come from the processor's feature extractor (``hop_length / sampling_rate``);
without a processor the times are NaN.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from hooks_mm.adapters.audio import QWEN2_AUDIO, frame_seconds
from hooks_mm.adapters.base import MediaPlan, lm_paths, run_lengths, token_id_mask


def frames_plan(start_frames: Tensor, seconds: float | None) -> MediaPlan:
    """One clip's plan: step ``k`` starts at feature frame ``start_frames[k]`` of the clip
    (seconds per frame ``seconds``; NaN times where None)."""
    steps = torch.arange(len(start_frames))
    cells = torch.stack([steps, torch.full_like(steps, -1), torch.full_like(steps, -1)], 1)
    rate = float("nan") if seconds is None else float(seconds)
    return MediaPlan(cells, start_frames.double() * rate)


def windowed_plan(tokens: list[int], window_frames: int, frames_per_token: int, seconds: float | None) -> MediaPlan:
    """One clip cut into windows of ``window_frames`` frames, window ``w`` giving ``tokens[w]``
    steps of ``frames_per_token`` frames from its own start."""
    starts = [w * window_frames + k * frames_per_token for w, n in enumerate(tokens) for k in range(n)]
    return frames_plan(torch.tensor(starts, dtype=torch.long), seconds)


def group_windows(tokens: list[int], clip_sizes: list[int], what: str) -> list[list[int]]:
    """Split the per-window token counts (in order) into clips of ``clip_sizes`` tokens each."""
    out, w = [], 0
    for size in clip_sizes:
        clip, total = [], 0
        while total < size and w < len(tokens):
            clip.append(tokens[w])
            total += tokens[w]
            w += 1
        if total != size:
            raise ValueError(
                f"the audio windows of input_features_mask do not fill the clips of input_ids ({what}: "
                f"windows give {tokens} tokens, clips hold {clip_sizes}): build the inputs with the model's "
                "processor, from the same audio, so the placeholder runs match the windows"
            )
        out.append(clip)
    if w != len(tokens):
        raise ValueError(
            f"{len(tokens) - w} audio window(s) of input_features_mask have no placeholder tokens in input_ids "
            f"({what}): build the inputs with the model's processor"
        )
    return out


def _mask_lengths(inputs: dict[str, Any], key: str = "input_features_mask") -> Tensor:
    mask = inputs.get(key)
    if mask is None:
        raise ValueError(f"inputs have no {key!r}: build them with the model's processor, which returns it")
    return torch.as_tensor(mask).long()


def qwen3_asr_plans(config: Any, inputs: dict[str, Any], processor: Any = None) -> list[MediaPlan]:
    """Qwen3-ASR: one plan per clip (row of ``input_features_mask``), chunked as the encoder is."""
    mask = _mask_lengths(inputs)
    chunk = 2 * config.audio_config.n_window
    if mask.shape[-1] % chunk:
        raise ValueError(f"input_features_mask has {mask.shape[-1]} frames, not a multiple of 2 * n_window ({chunk})")
    per_chunk = mask.view(mask.shape[0], -1, chunk).sum(-1)
    seconds = frame_seconds(processor)
    plans = []
    for row in per_chunk.tolist():
        starts = []
        for c, valid in enumerate(row):
            n = valid
            for _ in range(3):  # three (k=3, s=2, p=1) convolutions; an empty chunk stays empty
                n = (n - 1) // 2 + 1 if n > 0 else 0
            starts += [c * chunk + 8 * k for k in range(n)]
        plans.append(frames_plan(torch.tensor(starts, dtype=torch.long), seconds))
    return plans


def glm_asr_plans(config: Any, inputs: dict[str, Any], processor: Any = None) -> list[MediaPlan]:
    """GLM-ASR: windows (rows of ``input_features``) grouped into the clips of ``input_ids``
    (one run of audio tokens per clip)."""
    mask = _mask_lengths(inputs)
    conv = (mask.sum(-1) - 1) // 2 + 1
    tokens = ((conv - 4) // 4 + 1).tolist()
    clips = run_lengths(token_id_mask("audio_token_id")(config, inputs["input_ids"]), inputs.get("attention_mask"))
    seconds = frame_seconds(processor)
    return [windowed_plan(t, mask.shape[-1], 8, seconds) for t in group_windows(tokens, clips, "GLM-ASR")]


def moss_plans(config: Any, inputs: dict[str, Any], processor: Any = None) -> list[MediaPlan]:
    """MOSS-Transcribe-Diarize: windows mapped to clips by ``padding_mask`` (raw samples per
    clip) and ``config.audio_chunk_size``, as the model and its processor map them."""
    mask = _mask_lengths(inputs)
    merge = config.audio_merge_size
    conv = (mask.sum(-1) - 1) // 2 + 1
    tokens = ((conv + merge - 1) // merge).tolist()
    samples = _mask_lengths(inputs, "padding_mask").sum(-1)
    windows = ((samples + config.audio_chunk_size - 1) // config.audio_chunk_size).clamp(min=1).tolist()
    if sum(windows) != len(tokens):
        raise ValueError(
            f"padding_mask gives {sum(windows)} windows of audio_chunk_size={config.audio_chunk_size} samples but "
            f"input_features has {len(tokens)}: build the inputs with the model's processor (its feature "
            "extractor's chunk_length * sampling_rate must equal config.audio_chunk_size)"
        )
    seconds = frame_seconds(processor)
    plans, w = [], 0
    for n in windows:
        plans.append(windowed_plan(tokens[w : w + n], mask.shape[-1], 2 * merge, seconds))
        w += n
    return plans


def fun_asr_plans(config: Any, inputs: dict[str, Any], processor: Any = None) -> list[MediaPlan]:
    """Fun-ASR-Nano: one step per valid low-frame-rate feature, ``stride_lfr`` frames apart."""
    mask = _mask_lengths(inputs)
    fe = getattr(processor, "feature_extractor", None)
    stride, shift = getattr(fe, "stride_lfr", None), getattr(fe, "frame_shift", None)
    seconds = stride * shift / 1000.0 if stride and shift else None
    return [MediaPlan.audio(int(n), seconds) for n in mask.sum(-1).tolist()]


def granite_speech_plans(config: Any, inputs: dict[str, Any], processor: Any = None) -> list[MediaPlan]:
    """Granite Speech: ``input_features_mask`` (per clip, per query token) gives the steps; the
    ``window_size // downsample_rate`` queries of window ``b`` share its start time (``b *
    window_size`` encoder frames of ``input_dim / n_mels`` stacked mel frames each)."""
    mask = _mask_lengths(inputs)
    per_window = config.window_size // config.downsample_rate
    fe = getattr(processor, "audio_processor", None) or getattr(processor, "feature_extractor", None)
    mel = getattr(fe, "melspec_kwargs", None) or {}  # GraniteSpeechFeatureExtractor keeps hop and mels here
    hop, n_mels, rate = mel.get("hop_length"), mel.get("n_mels"), getattr(fe, "sampling_rate", None)
    seconds = hop / rate if hop and rate and n_mels else None
    stacked = config.encoder_config.input_dim // n_mels if seconds else 0
    plans = []
    for n in mask.sum(-1).tolist():
        frames = torch.arange(n) // per_window * config.window_size * stacked
        plans.append(frames_plan(frames, seconds))
    return plans


def _audio(name: str, arch: str, plans: Any, projector: str, notes: str, lm: str = "model.language_model") -> Any:
    return replace(
        QWEN2_AUDIO,
        name=name,
        architectures=(arch,),
        **lm_paths(lm),
        audio_projector=projector,
        audio_mask=token_id_mask("audio_token_id", "audio_token_index"),
        audio_plans=plans,
        notes=notes,
    )


QWEN3_ASR = _audio(
    "qwen3_asr",
    "Qwen3ASRForConditionalGeneration",
    qwen3_asr_plans,
    "model.multi_modal_projector",
    "Whisper-style encoder over 1 s chunks (three stride-2 convs: 13 steps per chunk, 80 ms) -> "
    "multi_modal_projector -> masked_scatter at the audio token; Qwen3 LM",
)
GLM_ASR = _audio(
    "glm_asr",
    "GlmAsrForConditionalGeneration",
    glm_asr_plans,
    "model.multi_modal_projector",
    "encoder over processor windows (conv stride 2, 4 frames stacked per token: 80 ms) -> "
    "multi_modal_projector; Llama LM",
)
MOSS_TRANSCRIBE = _audio(
    "moss_transcribe_diarize",
    "MossTranscribeDiarizeForConditionalGeneration",
    moss_plans,
    "model.multi_modal_projector",
    "Whisper encoder over 30 s windows, audio_merge_size frames packed per token (80 ms) -> "
    "multi_modal_projector; numeric time markers between audio tokens are text; Qwen3 LM",
)
FUN_ASR_NANO = _audio(
    "fun_asr_nano",
    "FunAsrNanoForConditionalGeneration",
    fun_asr_plans,
    "model.multi_modal_projector",
    "SenseVoice SAN-M encoder over LFR features (60 ms) -> adaptor (multi_modal_projector, "
    "linear + transformer layers); Qwen3 LM",
)


def granite_embed_call(kwargs: dict[str, Any]) -> int:
    """Granite Speech embeds ``input_ids`` once, then again (the copy it uses) when it merges audio."""
    return 1 if kwargs.get("input_features") is not None else 0


GRANITE_SPEECH = replace(
    _audio(
        "granite_speech",
        "GraniteSpeechForConditionalGeneration",
        granite_speech_plans,
        "model.projector",
        "conformer CTC encoder -> windowed Q-Former projector (window_size / downsample_rate queries per "
        "window; queries carry their window's start time) -> masked_scatter; Granite LM (multipliers); "
        "input_ids are embedded twice with audio, hook_embed is the second (used) call",
    ),
    embed_call=granite_embed_call,
)
GRANITE_SPEECH_PLUS = replace(
    GRANITE_SPEECH, name="granite_speech_plus", architectures=("GraniteSpeechPlusForConditionalGeneration",)
)

ADAPTERS = (QWEN3_ASR, GLM_ASR, MOSS_TRANSCRIBE, FUN_ASR_NANO, GRANITE_SPEECH, GRANITE_SPEECH_PLUS)
