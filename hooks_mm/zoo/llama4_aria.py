"""A tiny random-weight Llama 4 (``Llama4ForConditionalGeneration``) on a padded 2-row batch.

``Llama4ImageProcessor`` needs torchvision (not installable beside this torch), so the batch is made
as it makes it: each image resized to ``rows x cols`` tiles of ``S x S`` pixels (rescaled, normalised
with mean / std 0.5), cut with transformers' ``split_to_tiles`` (row-major), plus the whole image
resized to one tile when there are several; the prompt expanded with ``Llama4Processor``'s own
``_prompt_split_image``. Row 0: an image of 2 x 1 tiles and an image of one tile; row 1: an image of
1 x 2 tiles (left-padded). The decoder: layer 0 with RoPE, chunked attention (chunks shorter than the
prompts) and the L2 qk-norm, a dense MLP; layer 1 NoPE with temperature-tuned queries, a MoE MLP (4 experts,
top-1 sigmoid routing on the experts' input, a shared expert).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hooks_mm.zoo.base import Tiny, init_model, lm_config, token_ids
from hooks_mm.zoo.llava import build_tokenizer, sample_images

TILE, PATCH = 48, 8  # 6 x 6 patches per tile -> 3 x 3 cells after the pixel shuffle
SPECIAL = ("<|image_start|>", "<|image_end|>", "<|image|>", "<|patch|>", "<|tile_x_separator|>", "<|tile_y_separator|>")
TILES = [(2, 1), (1, 1), (1, 2)]  # (rows, cols) of tiles per image, in batch order
PROMPTS = ["USER: <img> <img> compare these two images ? ASSISTANT:", "USER: <img> what is in the image ? ASSISTANT:"]


def llama4_tiles(image: Any, rows: int, cols: int) -> torch.Tensor:
    """[n_tiles, 3, TILE, TILE]: the image's tiles row-major, then (several tiles) the whole image."""
    from PIL import Image
    from transformers.image_transforms import split_to_tiles

    def pixels(img: Any, h: int, w: int) -> torch.Tensor:
        arr = np.asarray(img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        return (torch.from_numpy(arr).permute(2, 0, 1) - 0.5) / 0.5

    tiles = split_to_tiles(pixels(image, rows * TILE, cols * TILE)[None], rows, cols)[0]
    return torch.cat([tiles, pixels(image, TILE, TILE)[None]]) if rows * cols > 1 else tiles


def build_llama4(seed: int = 0) -> Tiny:
    """Llama 4 with tiled images (see the module docstring); no processor (its image processor needs
    torchvision)."""
    from transformers import Llama4Config, Llama4ForConditionalGeneration, Llama4Processor

    tok = build_tokenizer(SPECIAL)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    text = lm_config(
        (len(tok) + 8) // 8 * 8,
        **token_ids(tok),
        intermediate_size=32,  # each expert's (and the shared expert's) width
        intermediate_size_mlp=128,
        moe_layers=[1],
        num_local_experts=4,
        num_experts_per_tok=1,
        no_rope_layers=[1, 0],
        attention_chunk_size=8,
        floor_scale=4,
        attn_scale=0.5,
        head_dim=16,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=128,  # 4 x hidden: the pixel shuffle's output width
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=TILE,
        patch_size=PATCH,
        vision_output_dim=48,
        projector_input_dim=48,
        projector_output_dim=48,
        pixel_shuffle_ratio=0.5,
    )
    config = Llama4Config(
        text_config=text,
        vision_config=vision,
        image_token_index=ids["<|patch|>"],
        boi_token_index=ids["<|image_start|>"],
        eoi_token_index=ids["<|image_end|>"],
        tie_word_embeddings=False,
    )
    model = init_model(Llama4ForConditionalGeneration, config, seed)
    images = sample_images(seed, [(70, 40), (50, 50), (30, 64)])
    per_tile = (TILE // PATCH) ** 2 // 4
    spans = iter(Llama4Processor._prompt_split_image(None, t, per_tile) for t in TILES)
    texts = [" ".join(next(spans) if w == "<img>" else w for w in p.split(" ")) for p in PROMPTS]
    inputs = dict(tok(texts, return_tensors="pt", padding=True))
    inputs.pop("token_type_ids", None)
    inputs["pixel_values"] = torch.cat([llama4_tiles(img, *t) for img, t in zip(images, TILES)])
    return Tiny(model=model, inputs=inputs)


# ---------------------------------------------------------------------------------------
# Aria: an Idefics3 tower per crop, a learned-query projector, a MoE LM in every layer


def build_aria(seed: int = 0) -> Tiny:
    """Aria with ``AriaProcessor`` (``AriaImageProcessorPil`` at ``max_image_size`` 490, the smaller size it
    accepts; 70-pixel patches: 7 x 7 per crop, 8 learned queries each): row 0 two images, row 1 one image,
    left-padded; every LM layer a MoE (3 experts, top-2, a shared expert)."""
    from transformers import AriaConfig, AriaForConditionalGeneration, AriaProcessor
    from transformers.models.aria.image_processing_pil_aria import AriaImageProcessorPil

    size, patch, queries = 490, 70, 8
    tok = build_tokenizer(("<|img|>",))
    tok.image_token, tok.image_token_id = "<|img|>", tok.convert_tokens_to_ids("<|img|>")
    processor = AriaProcessor(
        image_processor=AriaImageProcessorPil(max_image_size=size, min_image_size=patch),
        tokenizer=tok,
        size_conversion={size: queries},
    )
    text = lm_config((len(tok) + 8) // 8 * 8, **token_ids(tok), moe_num_experts=3, moe_topk=2, moe_num_shared_experts=1)
    vision = dict(
        model_type="idefics3_vision",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=size,
        patch_size=patch,
    )
    config = AriaConfig(
        text_config=text,
        vision_config=vision,
        projector_patch_to_query_dict={(size // patch) ** 2: queries},
        image_token_index=tok.image_token_id,
    )
    model = init_model(AriaForConditionalGeneration, config, seed)
    texts = ["USER: <|img|> and <|img|> compare these two images ? ASSISTANT:", PROMPTS[1].replace("<img>", "<|img|>")]
    images = sample_images(seed, [(300, 200), (250, 250), (180, 400)])
    out = processor(text=texts, images=images, return_tensors="pt", padding=True, max_image_size=size)
    inputs = {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and k != "num_crops"}
    return Tiny(model=model, inputs=inputs, processor=processor)
