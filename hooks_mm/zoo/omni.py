"""Tiny Qwen2.5-Omni thinker: text, image, video and audio in one prompt.

A real ``Qwen2_5OmniThinkerForConditionalGeneration`` (Whisper-style audio encoder,
Qwen2.5-VL-style vision encoder, Qwen2 LM with 3-axis M-RoPE) and its own
``Qwen2_5OmniProcessor`` (local WordLevel tokenizer with the Omni special tokens, the PIL
Qwen2-VL image processor, :class:`~hooks_mm.media.QwenVideoProcessorPil` in the video slot,
a ``WhisperFeatureExtractor`` with 2 s chunks). The thinker's position ids are time-aligned:
``position_id_per_seconds`` (25) temporal ids per second for audio steps and video frames.

Batch: row 0 = image + audio (1.0 s tone) + video (4 frames at 2 fps) + text; row 1 = audio
(0.6 s chirp) + text, left-padded.
"""

from __future__ import annotations

from typing import Any

import torch

from hooks_mm.media import QwenVideoProcessorPil, chirp, moving_square, tone
from hooks_mm.processing import allow_missing_video_processor
from hooks_mm.zoo.base import Tiny, chat_prompts, init_model, lm_config, processor_batch, token_ids
from hooks_mm.zoo.qwen import build_image_processor, grid_images, mrope, vision_config

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
    "<|AUDIO|>",
    "<unk>",
]
WORDS = (
    "system user assistant you are a helpful what is in this image video sound audio the "
    "and hear see describe which colour pitch high low . , ? :"
).split()
VOCAB = 64
FPS = 2.0
N_MELS = 16
SAMPLING_RATE = 16000

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif c['type'] == 'video' %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif c['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer() -> Any:
    """A WordLevel fast tokenizer with the Omni special tokens, named as Qwen2.5-Omni names them
    (``image_token``, ``audio_bos_token``, ...); left padding."""
    from hooks_mm.zoo.tokenizers import word_level

    tok = word_level(
        SPECIAL + WORDS,
        SPECIAL,  # matched whole: "<|im_start|>" stays one token
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        padding_side="left",
        extra_special_tokens={
            "image_token": "<|IMAGE|>",
            "video_token": "<|VIDEO|>",
            "audio_token": "<|AUDIO|>",
            "vision_bos_token": "<|vision_bos|>",
            "vision_eos_token": "<|vision_eos|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
        },
        chat_template=CHAT_TEMPLATE,
    )
    # the rest of SPECIAL (<|im_start|>, ...) are special too, beside the named ones
    tok.add_special_tokens(
        {"additional_special_tokens": [t for t in SPECIAL if t != "<unk>"]}, replace_extra_special_tokens=False
    )
    assert len(tok) <= VOCAB
    return tok


def build_feature_extractor(chunk_seconds: int = 2) -> Any:
    """Whisper log-mel features: 16 mel bins, 10 ms hop, inputs padded to ``chunk_seconds``."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=N_MELS, sampling_rate=SAMPLING_RATE, hop_length=160, chunk_length=chunk_seconds, n_fft=400
    )


def whisper_encoder(**extra: Any) -> dict[str, Any]:
    """A tiny Whisper-style audio encoder config (16 mel bins, 2 layers, width 32); ``extra`` adds."""
    sizes = dict(encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32)
    return dict(num_mel_bins=N_MELS, **sizes, max_source_positions=100, **extra)


def build_processor(patch: int = 14) -> Any:
    from transformers import Qwen2_5OmniProcessor

    image_processor = build_image_processor(patch)
    with allow_missing_video_processor():
        proc = Qwen2_5OmniProcessor(
            image_processor=image_processor,
            video_processor=None,
            feature_extractor=build_feature_extractor(),
            tokenizer=build_tokenizer(),
            chat_template=CHAT_TEMPLATE,
        )
    proc.video_processor = QwenVideoProcessorPil(image_processor, fps=FPS)
    return proc


def omni_inputs(processor: Any, seed: int = 0, factor: int = 28) -> dict[str, torch.Tensor]:
    texts = chat_prompts(
        processor,
        (["image", "audio", "video"], "what is in this image video and sound ?"),
        (["audio"], "describe the pitch"),
    )
    return processor_batch(
        processor,
        texts,
        images=grid_images(seed, factor)[:1],
        videos=[moving_square(4, 2 * factor, 3 * factor, seed)],
        audio=[tone(1.0, 440.0), chirp(0.6)],
        fps=FPS,
    )


def build_config(processor: Any, patch: int = 14) -> Any:
    from transformers import Qwen2_5OmniThinkerConfig

    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    return Qwen2_5OmniThinkerConfig(
        audio_config=whisper_encoder(n_window=50, output_dim=64),
        vision_config=vision_config(patch, window_size=56, fullatt_block_indexes=[1]),
        text_config=lm_config(VOCAB, max_position_embeddings=1024, rope_parameters=mrope(2, 3, 3), **token_ids(tok)),
        audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"],
        vision_end_token_id=ids["<|vision_eos|>"],
        position_id_per_seconds=25,
        seconds_per_chunk=2,
    )


def build_qwen2_5_omni(seed: int = 0) -> Tiny:
    """Qwen2.5-Omni thinker with image, video, audio and text in one prompt."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    processor = build_processor()
    model = init_model(Qwen2_5OmniThinkerForConditionalGeneration, build_config(processor), seed)
    return Tiny(model=model, inputs=omni_inputs(processor, seed), processor=processor)
