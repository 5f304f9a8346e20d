"""Tiny audio-language models: Qwen2-Audio (with its HF processor) and Voxtral.

Audio is synthesised (sine tones and chirps, :mod:`hooks_mm.media`); log-mel features come
from a real ``WhisperFeatureExtractor`` (16 mel bins, 10 ms hop, 16 kHz, 2 s chunks).

* Qwen2-Audio: ``Qwen2AudioProcessor`` (local tokenizer with ``<|AUDIO|>``,
  ``<|audio_bos|>``, ``<|audio_eos|>``) expands each placeholder to
  ``((L - 1) // 2 + 1 - 2) // 2 + 1`` tokens for ``L`` valid mel frames. Row 0: two clips
  (0.8 s tone, 0.4 s chirp); row 1: one clip (1.2 s tone), left-padded.
* Voxtral: ``VoxtralProcessor`` needs ``mistral_common`` (not installed here), so the batch
  is built the way it builds it: every clip padded to whole 2 s chunks (``input_features``
  ``[n_chunks, 16, 200]``), ``[AUDIO]`` repeated ``max_source_positions * d_model /
  intermediate_size`` = 25 times per chunk (80 ms per step, as in the released model), inside
  ``[INST][BEGIN_AUDIO] ... [/INST]``. The saved processor is then the feature extractor
  plus the tokenizer (:class:`~hooks_mm.processing.audio_text.AudioTextProcessor`), so
  layout times are known.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hooks_mm.media import chirp, tone
from hooks_mm.processing.audio_text import AudioTextProcessor
from hooks_mm.zoo.base import Tiny, chat_prompts, init_model, lm_config, processor_batch, token_ids
from hooks_mm.zoo.omni import CHAT_TEMPLATE, build_feature_extractor, build_tokenizer, whisper_encoder
from hooks_mm.zoo.tokenizers import word_level

SAMPLING_RATE = 16000


def build_qwen2_audio_processor() -> Any:
    from transformers import Qwen2AudioProcessor

    return Qwen2AudioProcessor(
        feature_extractor=build_feature_extractor(), tokenizer=build_tokenizer(), chat_template=CHAT_TEMPLATE
    )


def build_qwen2_audio(seed: int = 0) -> Tiny:
    """Qwen2-Audio: Whisper encoder + linear projector + Qwen2 LM."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    processor = build_qwen2_audio_processor()
    tok = processor.tokenizer
    config = Qwen2AudioConfig(
        audio_config=whisper_encoder(),
        text_config=lm_config(64, **token_ids(tok)),
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"),
    )
    model = init_model(Qwen2AudioForConditionalGeneration, config, seed)
    texts = chat_prompts(processor, (["audio", "audio"], "which sound is high ?"), (["audio"], "describe the sound"))
    audio = [tone(0.8, 880.0), chirp(0.4), tone(1.2, 220.0)]
    inputs = processor_batch(processor, texts, audio=audio, sampling_rate=SAMPLING_RATE)
    return Tiny(model=model, inputs=inputs, processor=processor)


# ---------------------------------------------------------------------------------------
# Voxtral


VOXTRAL_SPECIAL = ["<pad>", "<s>", "</s>", "[INST]", "[/INST]", "[BEGIN_AUDIO]", "[AUDIO]", "<unk>"]
VOXTRAL_WORDS = "what is this sound describe the pitch high low which one . ? ,".split()


def build_voxtral_tokenizer() -> Any:
    return word_level(
        VOXTRAL_SPECIAL + VOXTRAL_WORDS,
        VOXTRAL_SPECIAL,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=VOXTRAL_SPECIAL[3:7],
        padding_side="left",
    )


def voxtral_chunks(waveform: np.ndarray, feature_extractor: Any) -> torch.Tensor:
    """Log-mel features of one clip padded to whole chunks: ``[n_chunks, mel, frames]``."""
    chunk = feature_extractor.n_samples
    n = max(1, -(-len(waveform) // chunk))
    padded = np.zeros(n * chunk, dtype=np.float32)
    padded[: len(waveform)] = waveform
    parts = [padded[i * chunk : (i + 1) * chunk] for i in range(n)]
    out = feature_extractor(parts, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
    return out["input_features"]


def build_voxtral(seed: int = 0) -> Tiny:
    """Voxtral: Whisper encoder over 2 s chunks, 4 frames per token, Llama LM."""
    from transformers import VoxtralConfig, VoxtralForConditionalGeneration

    tok = build_voxtral_tokenizer()
    fe = build_feature_extractor(chunk_seconds=2)
    d_model, factor = 32, 4
    config = VoxtralConfig(
        audio_config=dict(
            num_mel_bins=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=d_model * factor,
            hidden_size=d_model,
            max_source_positions=100,
            num_key_value_heads=2,
        ),
        text_config=lm_config(64, head_dim=16, **token_ids(tok)),
        audio_token_id=tok.convert_tokens_to_ids("[AUDIO]"),
        projector_hidden_act="gelu",
    )
    model = init_model(VoxtralForConditionalGeneration, config, seed)
    per_chunk = config.audio_config.max_source_positions * d_model // config.audio_config.intermediate_size
    clips = [[tone(2.5, 660.0)], [chirp(1.0)]]  # row 0: 2 chunks (50 steps), row 1: 1 chunk (25 steps)
    texts, feats = [], []
    for row in clips:
        parts = []
        for wave in row:
            f = voxtral_chunks(wave, fe)
            feats.append(f)
            parts.append("[BEGIN_AUDIO]" + "[AUDIO]" * (per_chunk * f.shape[0]))
        texts.append("<s>[INST]" + "".join(parts) + " what is this sound ? [/INST]")
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    inputs = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "input_features": torch.cat(feats),
    }
    return Tiny(model=model, inputs=inputs, processor=AudioTextProcessor(tok, fe))
