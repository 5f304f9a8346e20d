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


# ---------------------------------------------------------------------------------------
# Granite Speech: its feature extractor takes log-mels from torchaudio (not installable beside this
# torch); the subclass below computes them with transformers.audio_utils (n_fft 512, window 400,
# hop 160, centred: raw // 160 + 1 frames), with the same normalisation, odd last frame dropped and
# pairs of frames stacked, and keeps the HF arithmetic (audio_embed_sizes, input_features_mask) and
# GraniteSpeechProcessor's expansion of each <|AUDIO|>.


def granite_feature_extractor() -> Any:
    """A ``GraniteSpeechFeatureExtractor`` (16 mel bins) that needs no torchaudio."""
    from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
    from transformers.feature_extraction_utils import BatchFeature
    from transformers.models.granite_speech.feature_extraction_granite_speech import GraniteSpeechFeatureExtractor

    class MelFeatureExtractor(GraniteSpeechFeatureExtractor):
        def __init__(self, n_mels: int = N_MELS, **kwargs: Any) -> None:
            kwargs.pop("feature_size", None)
            SequenceFeatureExtractor.__init__(self, feature_size=n_mels, sampling_rate=SAMPLING_RATE, padding_value=0.0)
            self.sampling_rate = SAMPLING_RATE
            self.melspec_kwargs = {
                "sample_rate": SAMPLING_RATE, "n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": n_mels,
            }  # fmt: skip
            self.projector_window_size, self.projector_downsample_rate = 15, 5

        def __call__(self, audios: Any, device: str | None = "cpu") -> Any:
            import torch

            batched, lengths = self._get_audios_and_audio_lengths(audios)
            sizes = self._get_num_audio_features(lengths)
            mask = torch.arange(max(sizes)).view(1, -1) < torch.tensor(sizes).view(-1, 1)
            features = torch.stack([self._log_mel(w) for w in batched])
            return BatchFeature({"input_features": features, "audio_embed_sizes": sizes, "input_features_mask": mask})

        def _log_mel(self, wave: Any) -> Any:
            import torch
            from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

            kw = self.melspec_kwargs
            filters = mel_filter_bank(
                num_frequency_bins=kw["n_fft"] // 2 + 1, num_mel_filters=kw["n_mels"], min_frequency=0.0,
                max_frequency=self.sampling_rate / 2, sampling_rate=self.sampling_rate, norm=None, mel_scale="htk",
            )  # fmt: skip
            mel = spectrogram(
                wave.numpy(), window_function(kw["win_length"], "hann", frame_length=kw["n_fft"]),
                frame_length=kw["n_fft"], hop_length=kw["hop_length"], fft_length=kw["n_fft"], power=2.0,
                center=True, pad_mode="reflect", mel_filters=filters,
            )  # fmt: skip
            logmel = torch.from_numpy(mel.T).float().clamp(min=1e-10).log10()
            logmel = torch.maximum(logmel, logmel.max() - 8.0) / 4 + 1
            if logmel.shape[0] % 2 == 1:  # remove last frame if odd, then stack pairs of frames
                logmel = logmel[:-1]
            return logmel.reshape(-1, 2 * logmel.shape[-1])

    return MelFeatureExtractor()


def build_granite_speech(seed: int = 0, plus: bool = False) -> Tiny:
    """Granite Speech: conformer encoder, windowed Q-Former projector (3 queries per 15 frames),
    Granite LM with its multipliers. ``plus``: Granite Speech Plus (encoder layer 1 concatenated
    to the final encoder output before the projector)."""
    import transformers
    from transformers import GraniteSpeechProcessor

    name = "GraniteSpeechPlus" if plus else "GraniteSpeech"
    processor = GraniteSpeechProcessor(
        audio_processor=granite_feature_extractor(),
        tokenizer=build_tokenizer(),
        audio_token="<|AUDIO|>",
        chat_template=CHAT_TEMPLATE,
    )
    tok = processor.tokenizer
    hidden, n_cat = 32, (2 if plus else 1)
    config = getattr(transformers, f"{name}Config")(
        encoder_config=dict(
            input_dim=2 * N_MELS, num_layers=2, hidden_dim=hidden, num_heads=2, dim_head=16, output_dim=8,
            context_size=40, max_pos_emb=64, dropout=0.0, conv_kernel_size=5,
            **({"cat_hidden_layers": [1]} if plus else {}),
        ),
        projector_config=dict(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            encoder_hidden_size=hidden * n_cat, cross_attention_frequency=1,
        ),
        text_config=lm_config(
            64, head_dim=16, embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.3,
            logits_scaling=4.0, model_type="granite", **token_ids(tok),
        ),
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"),
        window_size=15,
        downsample_rate=5,
        has_lora_adapter=False,
    )  # fmt: skip
    model = init_model(getattr(transformers, f"{name}ForConditionalGeneration"), config, seed)
    texts = chat_prompts(processor, *PROMPTS)
    inputs = processor_batch(processor, texts, audio=[tone(1.8, 880.0), chirp(0.7)])
    return Tiny(model=model, inputs=inputs, processor=processor)


def build_granite_speech_plus(seed: int = 0) -> Tiny:
    return build_granite_speech(seed, plus=True)


# ---------------------------------------------------------------------------------------
# Fun-ASR-Nano: its feature extractor takes Kaldi fbanks from torchaudio (not installable here);
# the subclass below computes them with transformers.audio_utils (same frames: 25 ms Hamming
# windows every 10 ms, no padding at the edges) and keeps the rest of the HF feature extractor
# (low-frame-rate stacking of 7 frames every 6, padding, input_features_mask).


def fun_asr_feature_extractor() -> Any:
    """A ``FunAsrNanoFeatureExtractor`` (16 mel bins) whose fbanks need no torchaudio."""
    from transformers.models.fun_asr_nano.feature_extraction_fun_asr_nano import FunAsrNanoFeatureExtractor

    class FbankFeatureExtractor(FunAsrNanoFeatureExtractor):
        def _extract_fbank_features(self, waveform: Any) -> Any:
            import torch
            from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

            win, hop = (int(ms * self.sampling_rate / 1000) for ms in (self.frame_length, self.frame_shift))
            filters = mel_filter_bank(
                num_frequency_bins=257, num_mel_filters=self.feature_size, min_frequency=20.0,
                max_frequency=self.sampling_rate / 2, sampling_rate=self.sampling_rate, norm=None, mel_scale="kaldi",
            )  # fmt: skip
            spec = spectrogram(
                waveform.numpy(), window_function(win, "hamming", frame_length=512), frame_length=512,
                hop_length=hop, fft_length=512, power=2.0, center=False, mel_filters=filters, log_mel="log",
                mel_floor=1.1920929e-07,
            )  # fmt: skip
            return torch.from_numpy(spec.T).float()

    return FbankFeatureExtractor(feature_size=N_MELS)


def build_fun_asr_nano(seed: int = 0) -> Tiny:
    """Fun-ASR-Nano: SAN-M encoder over LFR features (one token per 60 ms), Transformer adaptor,
    Qwen3 LM. Row 0: 1.3 s tone, row 1: 0.6 s chirp."""
    from transformers import FunAsrNanoConfig, FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor

    tok = build_tokenizer()
    processor = FunAsrNanoProcessor(
        feature_extractor=fun_asr_feature_extractor(),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
        audio_token="<|AUDIO|>",
    )
    config = FunAsrNanoConfig(
        audio_config=dict(
            num_mel_bins=N_MELS, hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=3,
            num_timestamp_prediction_layers=1, fsmn_kernel_size=5, max_position_embeddings=256,
            hidden_dropout=0.0, attention_dropout=0.0,
        ),
        adaptor_config=dict(
            hidden_size=64, num_attention_heads=2, intermediate_size=16, num_hidden_layers=1, projector_hidden_size=48
        ),
        text_config=lm_config(64, head_dim=16, **token_ids(tok)),
        audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"),
    )  # fmt: skip
    model = init_model(FunAsrNanoForConditionalGeneration, config, seed)
    # built from a config or loaded (transformers 5.23), the adaptor's attention implementation is left
    # unset and its layers then ignore input_features_mask (a padded clip attends to its padding, unlike
    # the eager reference): name one
    model.set_attn_implementation("sdpa")
    inputs = _batch(processor, [tone(1.3, 880.0), chirp(0.6)])
    return Tiny(model=model, inputs=inputs, processor=processor)
