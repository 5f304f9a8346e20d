"""Tiny random-weight Idefics3, SmolVLM, PaliGemma, Gemma3 and InternVL models.

Each builder returns a real HF ``...ForConditionalGeneration`` (fp32, sdpa, eval) and
inputs laid out exactly as the family's processor writes them (image tokens expanded,
structural tokens in place): row 0 holds two images, row 1 one image and is left-padded.
No processor is built: the token ids are constants, listed below.

Shared token ids (vocabulary 160): 0 pad, 1 bos, 2 eos (``hooks_mm.zoo.base``), 10 "\\n", 20..89 words,
100 image token, 101/102 structural (fake/global, boi/eoi, <img>/</img>),
103.. Idefics row/col markers.
"""

from __future__ import annotations

from typing import Any

import torch

from hooks_mm.zoo.base import BOS, EOS, SPECIAL_IDS, Tiny, init_model, left_pad, lm_config

VOCAB = 160
NL = 10
IMG, S1, S2 = 100, 101, 102
ROWCOL0 = 103  # <row_{r+1}_col_{c+1}> = ROWCOL0 + 6 * r + c


def _words(g: torch.Generator, n: int) -> list[int]:
    return torch.randint(20, 90, (n,), generator=g).tolist()


def _rows(g: torch.Generator, images: list[list[list[int]]], end: list[int]) -> list[list[int]]:
    """Token rows: ``<bos>`` and 3 random words, each image's tokens followed by 2 words, ``end``."""
    rows = []
    for row in images:
        r = [BOS] + _words(g, 3)
        for tokens in row:
            r += tokens + _words(g, 2)
        rows.append(r + end)
    return rows


def _text(model_type: str, **kw: Any) -> dict[str, Any]:
    """The LM: ``lm_config`` at hidden 32; ``kw`` adds or overrides."""
    return lm_config(VOCAB, model_type=model_type, hidden_size=32, intermediate_size=64, **SPECIAL_IDS) | kw


def _gemma_text(model_type: str, **kw: Any) -> dict[str, Any]:
    return _text(model_type, num_key_value_heads=1, head_dim=8) | kw


def _vision(patch_size: int, **kw: Any) -> dict[str, Any]:
    """A 2-layer vision tower, width 32, over 32 px images."""
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    return dict(**sizes, image_size=32, patch_size=patch_size, **kw)


def _siglip(patch_size: int) -> dict[str, Any]:
    return _vision(patch_size, model_type="siglip_vision_model", vision_use_head=False)


# ---------------------------------------------------------------------------------------
# Idefics3 / SmolVLM


def _idefics_image(rows: int, cols: int, seq: int) -> list[int]:
    """The processor's prompt for one image (``<fake>``=S1, ``<global-img>``=S2)."""
    if rows == 0 and cols == 0:
        return [S1, S2] + [IMG] * seq + [S1]
    out: list[int] = []
    for r in range(rows):
        for c in range(cols):
            out += [S1, ROWCOL0 + 6 * r + c] + [IMG] * seq
        out += [NL]
    return out + [NL, S1, S2] + [IMG] * seq + [S1]


def _build_idefics(name: str, seed: int) -> Tiny:
    import transformers

    image_size, patch, scale = 32, 4, 2
    seq = (image_size // patch) ** 2 // scale**2  # 16 tokens per tile (4 x 4)
    config = getattr(transformers, f"{name}Config")(
        text_config=_text("llama"),
        vision_config=_vision(patch),
        image_token_id=IMG,
        scale_factor=scale,
        tie_word_embeddings=False,
    )
    # optional ids hooks_mm reads (tokenizer ids; real configs lack them)
    config.fake_image_token_id = S1
    config.global_image_token_id = S2
    config.row_col_token_ids = [ROWCOL0 + i for i in range(36)]
    model = init_model(getattr(transformers, f"{name}ForConditionalGeneration"), config, seed)

    g = torch.Generator().manual_seed(seed + 1)
    # row 0: a 1x2-split image (2 tiles + global) and an unsplit image; row 1: 2x2 split
    layouts = [[(1, 2), (0, 0)], [(2, 2)]]
    inputs = left_pad(_rows(g, [[_idefics_image(rr, cc, seq) for rr, cc in images] for images in layouts], [NL]))
    tiles = [[rr * cc + 1 for rr, cc in images] for images in layouts]
    n_sub = max(sum(t) for t in tiles)
    pixel_values = torch.zeros(2, n_sub, 3, image_size, image_size)
    pixel_attention_mask = torch.zeros(2, n_sub, image_size, image_size, dtype=torch.bool)
    for b, t in enumerate(tiles):
        pixel_values[b, : sum(t)] = torch.randn(sum(t), 3, image_size, image_size, generator=g)
        pixel_attention_mask[b, : sum(t)] = True
    inputs["pixel_values"] = pixel_values
    inputs["pixel_attention_mask"] = pixel_attention_mask
    return Tiny(model=model, inputs=inputs)


def build_idefics3(seed: int = 0) -> Tiny:
    return _build_idefics("Idefics3", seed)


def build_smolvlm(seed: int = 0) -> Tiny:
    return _build_idefics("SmolVLM", seed)


# ---------------------------------------------------------------------------------------
# PaliGemma


def _build_paligemma(text: dict[str, Any], seed: int) -> Tiny:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    config = PaliGemmaConfig(
        text_config=text,
        vision_config=_siglip(8),
        image_token_index=IMG,
        vocab_size=VOCAB,
        projection_dim=32,
        hidden_size=32,
    )
    model = init_model(PaliGemmaForConditionalGeneration, config, seed)
    per = (32 // 8) ** 2  # 16 tokens per image, 4 x 4

    g = torch.Generator().manual_seed(seed + 1)
    rows, types = [], []
    for n_img, n_prompt, n_suffix in ((2, 4, 3), (1, 3, 2)):
        prefix = [IMG] * (per * n_img) + [BOS] + _words(g, n_prompt) + [NL]
        suffix = _words(g, n_suffix) + [EOS]
        rows.append(prefix + suffix)
        types.append([0] * len(prefix) + [1] * len(suffix))  # 0: the prefix (bidirectional), 1: the suffix
    inputs = left_pad(rows, types)
    inputs["pixel_values"] = torch.randn(3, 3, 32, 32, generator=g)
    return Tiny(model=model, inputs=inputs)


def build_paligemma(seed: int = 0) -> Tiny:
    return _build_paligemma(_gemma_text("gemma"), seed)


def build_paligemma2(seed: int = 0) -> Tiny:
    """PaliGemma with a Gemma2 LM (sandwich norms); same HF class, see PALIGEMMA2."""
    return _build_paligemma(_gemma_text("gemma2", query_pre_attn_scalar=8, sliding_window=24), seed)


# ---------------------------------------------------------------------------------------
# Gemma3


def build_gemma3(seed: int = 0) -> Tiny:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    mm = 16  # 8 x 8 patches avg-pooled to 4 x 4
    config = Gemma3Config(
        text_config=_gemma_text(
            "gemma3_text",
            query_pre_attn_scalar=8,
            sliding_window=24,
            layer_types=["sliding_attention", "full_attention"],
            num_key_value_heads=2,
        ),
        vision_config=_siglip(4),
        mm_tokens_per_image=mm,
        image_token_index=IMG,
        boi_token_index=S1,
        eoi_token_index=S2,
    )
    model = init_model(Gemma3ForConditionalGeneration, config, seed)
    with torch.no_grad():  # HF initialises the projection to zeros: the image path would be dead
        proj = model.model.multi_modal_projector.mm_input_projection_weight
        proj.copy_(torch.randn(proj.shape, generator=torch.Generator().manual_seed(seed)) * 0.2)

    g = torch.Generator().manual_seed(seed + 1)
    image = [NL, NL, S1] + [IMG] * mm + [S2, NL, NL]  # processor's full_image_sequence
    rows = _rows(g, [[image, image], [image]], [NL])
    types = [[int(t == IMG) for t in r] for r in rows]  # 1 at image tokens (a bidirectional block)
    inputs = left_pad(rows, types)
    inputs["pixel_values"] = torch.randn(3, 3, 32, 32, generator=g)
    return Tiny(model=model, inputs=inputs)


# ---------------------------------------------------------------------------------------
# InternVL


def build_internvl(seed: int = 0) -> Tiny:
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    seq = 16  # (32 / 4)^2 patches * 0.5^2
    config = InternVLConfig(
        text_config=_text("qwen2"),
        vision_config=_vision(4),
        image_token_id=IMG,
        image_seq_length=seq,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    config.start_image_token_id = S1  # optional ids hooks_mm reads (tokenizer ids)
    config.end_image_token_id = S2
    model = init_model(InternVLForConditionalGeneration, config, seed)

    g = torch.Generator().manual_seed(seed + 1)
    # row 0: a 3-tile image (2 crops + thumbnail) and a 1-tile image; row 1: 3 tiles
    layouts = [[3, 1], [3]]
    inputs = left_pad(_rows(g, [[[S1] + [IMG] * (seq * t) + [S2, NL] for t in tiles] for tiles in layouts], []))
    inputs["pixel_values"] = torch.randn(sum(map(sum, layouts)), 3, 32, 32, generator=g)
    return Tiny(model=model, inputs=inputs)
