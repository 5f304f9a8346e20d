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
from hooks_mm.zoo.base import Tiny
from hooks_mm.zoo.qwen import _images, build_image_processor

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
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for t in SPECIAL + WORDS:
        vocab.setdefault(t, len(vocab))
    assert len(vocab) <= VOCAB
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens(SPECIAL)  # matched whole: "<|im_start|>" stays one token
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
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
    )
    # the rest of SPECIAL (<|im_start|>, ...) are special too, beside the named ones
    tok.add_special_tokens(
        {"additional_special_tokens": [t for t in SPECIAL if t != "<unk>"]}, replace_extra_special_tokens=False
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_feature_extractor(chunk_seconds: int = 2) -> Any:
    """Whisper log-mel features: 16 mel bins, 10 ms hop, inputs padded to ``chunk_seconds``."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=N_MELS, sampling_rate=SAMPLING_RATE, hop_length=160, chunk_length=chunk_seconds, n_fft=400
    )


def build_processor(patch: int = 14) -> Any:
    from transformers import Qwen2_5OmniProcessor

    from hooks_mm.processing import allow_missing_video_processor

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
    msgs = [
        [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "audio"},
                    {"type": "video"},
                    {"type": "text", "text": "what is in this image video and sound ?"},
                ],
            }
        ],
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "describe the pitch"}]}],
    ]
    texts = [processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]
    out = processor(
        text=texts,
        images=[_images(seed, factor)[0]],
        videos=[moving_square(4, 2 * factor, 3 * factor, seed)],
        audio=[tone(1.0, 440.0), chirp(0.6)],
        fps=FPS,
        return_tensors="pt",
        padding=True,
    )
    inputs = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    assert bool((inputs["attention_mask"][1] == 0).any()), "row 1 should be padded"
    return inputs


def build_config(processor: Any, patch: int = 14) -> Any:
    from transformers import Qwen2_5OmniThinkerConfig

    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(
            num_mel_bins=N_MELS,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            d_model=32,
            max_source_positions=100,
            n_window=50,
            output_dim=64,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=patch,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            pad_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
        ),
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
    config.architectures = ["Qwen2_5OmniThinkerForConditionalGeneration"]
    return config


def build_qwen2_5_omni(seed: int = 0) -> Tiny:
    """Qwen2.5-Omni thinker with image, video, audio and text in one prompt."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    processor = build_processor()
    config = build_config(processor)
    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config).float().eval()
    model.config.architectures = ["Qwen2_5OmniThinkerForConditionalGeneration"]
    inputs = omni_inputs(processor, seed)
    return Tiny(model=model, inputs=inputs, processor=processor)
