"""Tiny ASR models: Qwen3-ASR, GLM-ASR, MOSS-Transcribe-Diarize, Fun-ASR-Nano, Granite Speech.

Audio is synthesised (:mod:`hooks_mm.media`); the tokenizer is the local WordLevel one of
:mod:`hooks_mm.zoo.omni` (``<|AUDIO|>``, ``<|audio_bos|>``, ``<|audio_eos|>``, left padding,
chat template), 16 mel bins. Each batch: row 0 one longer clip, row 1 one shorter clip,
left-padded (the processors take one clip per text).

* Qwen3-ASR: ``Qwen3ASRProcessor`` + ``Qwen3ASRFeatureExtractor`` (features padded to whole
  1 s chunks). Row 0: 0.9 s tone, row 1: 0.5 s chirp (one chunk each; the multi-chunk case is
  tested on its own).
* GLM-ASR: ``GlmAsrProcessor`` + ``WhisperFeatureExtractor`` with 2 s windows. Row 0: 2.3 s
  tone (two windows: 25 + 3 tokens), row 1: 0.7 s chirp.
"""

from __future__ import annotations

from typing import Any

from hooks_mm.media import chirp, tone
from hooks_mm.zoo.base import Tiny, chat_prompts, init_model, lm_config, processor_batch, token_ids
from hooks_mm.zoo.omni import CHAT_TEMPLATE, N_MELS, SAMPLING_RATE, build_feature_extractor, build_tokenizer

PROMPTS = ((["audio"], "which sound is high ?"), (["audio"], "describe the sound"))


def _batch(processor: Any, audio: list[Any]) -> dict[str, Any]:
    texts = chat_prompts(processor, *PROMPTS)
    return processor_batch(processor, texts, audio=audio, sampling_rate=SAMPLING_RATE)


def build_qwen3_asr_processor() -> Any:
    from transformers import Qwen3ASRProcessor
    from transformers.models.qwen3_asr.feature_extraction_qwen3_asr import Qwen3ASRFeatureExtractor

    fe = Qwen3ASRFeatureExtractor(feature_size=N_MELS)
    return Qwen3ASRProcessor(feature_extractor=fe, tokenizer=build_tokenizer(), chat_template=CHAT_TEMPLATE)


def build_qwen3_asr(seed: int = 0, audio: list[Any] | None = None) -> Tiny:
    """Qwen3-ASR: chunked conv encoder (8 frames per step) + MLP projector + Qwen3 LM."""
    from transformers import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

    processor = build_qwen3_asr_processor()
    tok = processor.tokenizer
    config = Qwen3ASRConfig(
        audio_config=dict(
            num_mel_bins=N_MELS,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            d_model=32,
            output_dim=64,
            downsample_hidden_size=8,
        ),
        text_config=lm_config(64, head_dim=16, **token_ids(tok)),
        audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = init_model(Qwen3ASRForConditionalGeneration, config, seed)
    inputs = _batch(processor, audio or [tone(0.9, 880.0), chirp(0.5)])
    return Tiny(model=model, inputs=inputs, processor=processor)


def build_glm_asr(seed: int = 0) -> Tiny:
    """GLM-ASR: encoder over 2 s windows, 4 frames stacked per token, MLP projector, Llama LM."""
    from transformers import GlmAsrConfig, GlmAsrForConditionalGeneration, GlmAsrProcessor

    tok = build_tokenizer()
    processor = GlmAsrProcessor(
        feature_extractor=build_feature_extractor(chunk_seconds=2),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
        audio_token="<|AUDIO|>",
    )
    config = GlmAsrConfig(
        audio_config=dict(
            num_mel_bins=N_MELS, num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=128
        ),
        text_config=lm_config(64, head_dim=16, **token_ids(tok)),
        audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"),
    )
    model = init_model(GlmAsrForConditionalGeneration, config, seed)
    inputs = _batch(processor, [tone(2.3, 880.0), chirp(0.7)])
    return Tiny(model=model, inputs=inputs, processor=processor)


def build_moss_transcribe_diarize(seed: int = 0) -> Tiny:
    """MOSS-Transcribe-Diarize: Whisper encoder over 2 s windows, 4 frames packed per token,
    MLP projector, Qwen3 LM; a time marker ("1", "2", ...) every second of audio tokens."""
    from transformers import (
        MossTranscribeDiarizeConfig,
        MossTranscribeDiarizeForConditionalGeneration,
        MossTranscribeDiarizeProcessor,
    )
    from transformers.models.moss_transcribe_diarize.feature_extraction_moss_transcribe_diarize import (
        MossTranscribeDiarizeFeatureExtractor,
    )

    tok = build_tokenizer()
    tok.add_tokens([str(s) for s in range(1, 4)])  # the processor's numeric time markers
    chunk_seconds = 2
    processor = MossTranscribeDiarizeProcessor(
        feature_extractor=MossTranscribeDiarizeFeatureExtractor(feature_size=N_MELS, chunk_length=chunk_seconds),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
        audio_token="<|AUDIO|>",
        audio_bos_token="<|audio_bos|>",
        audio_eos_token="<|audio_eos|>",
        time_marker_every_seconds=1,
    )
    config = MossTranscribeDiarizeConfig(
        audio_config=dict(
            num_mel_bins=N_MELS,
            num_hidden_layers=2,
            num_attention_heads=2,
            hidden_size=32,
            intermediate_size=64,
            max_source_positions=chunk_seconds * 50,  # mel frames per window / conv stride 2
        ),
        text_config=lm_config(64, head_dim=16, **token_ids(tok)),
        audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"),
        audio_chunk_size=chunk_seconds * SAMPLING_RATE,
    )
    model = init_model(MossTranscribeDiarizeForConditionalGeneration, config, seed)
    inputs = _batch(processor, [tone(2.3, 880.0), chirp(0.7)])
    return Tiny(model=model, inputs=inputs, processor=processor)
