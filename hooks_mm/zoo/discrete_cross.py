"""Tiny random-weight builders: Janus, Chameleon, Emu3 (discrete image tokens) and Mllama
(cross-attention to the image).

Each builder returns a real Hugging Face model built from a tiny config (fp32, eval, default
sdpa attention) and inputs for ``model(**inputs)``: two rows, the second left-padded, one row
with two images and the other with one, image tokens already expanded the way the family's
processor writes them.
"""

from __future__ import annotations

import torch

from hooks_mm.zoo.base import BOS, EOS, PAD, SPECIAL_IDS, Tiny, init_model, left_pad, lm_config


def _images(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """``n`` distinct random images in [-1, 1], shape [n, 3, h, w]."""
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.rand((n, 3, h, w), generator=g) * 2 - 1


# ---------------------------------------------------------------------------------------
# Janus: SigLIP-like vision_model + aligner MLP; features replace <image_placeholder> ids


def build_janus(seed: int = 0) -> Tiny:
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusVisionConfig,
        JanusVQVAEConfig,
        LlamaConfig,
    )

    hidden = 64
    image_token, boi, eoi = 100, 101, 102
    text = LlamaConfig(**lm_config(128, max_position_embeddings=256, **SPECIAL_IDS))
    vision = JanusVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        mlp_ratio=2.0,
        projection_dim=hidden,
        depth=2,
        num_image_tokens=16,
    )
    vq = JanusVQVAEConfig(
        embed_dim=8,
        num_embeddings=32,
        latent_channels=32,
        base_channels=32,
        channel_multiplier=[1, 1],
        num_res_blocks=1,
        projection_dim=hidden,
        image_token_embed_dim=hidden,
        num_hidden_layers=1,
    )
    config = JanusConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), vq_config=vq.to_dict(), image_token_id=image_token
    )
    model = init_model(JanusForConditionalGeneration, config, seed)

    n_tok = (32 // 8) ** 2  # processor: boi + <image>*num_image_tokens + eoi
    img = [boi] + [image_token] * n_tok + [eoi]
    rows = [[BOS, 10, 11, *img, 12, *img, 13, 14], [BOS, 20, *img, 21, 22]]
    return Tiny(model, {**left_pad(rows), "pixel_values": _images(3, 32, 32, seed)})


# ---------------------------------------------------------------------------------------
# Chameleon: VQ-VAE codes -> BPE ids -> embed_tokens, written over the <image> placeholders


def _chameleon_code_name(code: int) -> str:
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


def build_chameleon(seed: int = 0) -> Tiny:
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    n_codes, first_code = 32, 16
    vocabulary_map = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<image>": 3, "<racm3:break>": 4, "<eoss>": 5}
    vocabulary_map.update({_chameleon_code_name(i): first_code + i for i in range(n_codes)})
    config = ChameleonConfig(
        **lm_config(64, **SPECIAL_IDS),
        vocabulary_map=vocabulary_map,
        vq_config=dict(
            embed_dim=8,
            num_embeddings=n_codes,
            latent_channels=16,
            resolution=32,
            base_channels=32,
            channel_multiplier=[1, 1, 1],
            num_res_blocks=1,
            attn_resolutions=None,
        ),
    )
    model = init_model(ChameleonForConditionalGeneration, config, seed)

    side = 32 // 4  # two downsamples
    n_tok = side * side
    img = [4] + [3] * n_tok + [5]  # <racm3:break> <image>*n <eoss>
    rows = [[BOS, 6, 7, *img, 8, *img, 9], [BOS, 10, *img, 11, 12]]
    return Tiny(model, {**left_pad(rows), "pixel_values": _images(3, 32, 32, seed)})


# ---------------------------------------------------------------------------------------
# Emu3: VQ codes per row plus one end-of-row token, n = h * (w + 1), over <image> placeholders


def build_emu3(seed: int = 0) -> Tiny:
    from transformers import Emu3Config, Emu3ForConditionalGeneration

    n_codes, first_code = 32, 16
    special = {
        "<image>": 3,
        "<|image start|>": 4,
        "<|image end|>": 5,
        "<|image token|>": 6,
        "<|extra_200|>": 7,
        "<|extra_201|>": 8,
    }
    vocabulary_map = {"<|endoftext|>": PAD, "<|extra_203|>": BOS, "<|extra_204|>": EOS, **special}
    vocabulary_map.update({f"<|visual token{i:06d}|>": first_code + i for i in range(n_codes)})
    config = Emu3Config(
        text_config=lm_config(64, attention_dropout=0.0, **SPECIAL_IDS),
        vq_config=dict(
            codebook_size=n_codes,
            embed_dim=4,
            latent_channels=4,
            temporal_downsample_factor=4,
            base_channels=32,
            channel_multiplier=[1, 1, 1, 1],
            num_res_blocks=1,
            attn_resolutions=[],
            hidden_size=32,
            num_attention_heads=1,
        ),
        vocabulary_map=vocabulary_map,
    )
    model = init_model(Emu3ForConditionalGeneration, config, seed)

    factor = 8  # 2 ** (len(channel_multiplier) - 1), as the Emu3 processor assumes
    sizes = [(32, 32), (24, 32), (32, 16)]  # (height, width) of each image, in order

    def img(h: int, w: int) -> list[int]:
        gh, gw = h // factor, w // factor
        # processor: boi "{h}*{w}" <|image token|> <image>*(h*(w+1)) eof eoi
        return [4, 52 + gh, 60, 52 + gw, 6] + [3] * (gh * (gw + 1)) + [8, 5]

    rows = [[BOS, 9, 10, *img(*sizes[0]), 11, *img(*sizes[1]), 12], [BOS, 13, *img(*sizes[2]), 14, 15]]
    inputs = left_pad(rows)
    # the image processor pads every image to the largest (bottom/right) in the batch
    pixel_values = torch.zeros(3, 3, 32, 32)
    content = _images(3, 32, 32, seed)
    for i, (h, w) in enumerate(sizes):
        pixel_values[i, :, :h, :w] = content[i, :, :h, :w]
    inputs.update(pixel_values=pixel_values, image_sizes=torch.tensor(sizes, dtype=torch.long))
    return Tiny(model, inputs)


# ---------------------------------------------------------------------------------------
# Mllama: self / CROSS / self; text attends to the tiles through tanh-gated cross layers


def build_mllama(seed: int = 0) -> Tiny:
    from transformers import MllamaConfig, MllamaForConditionalGeneration
    from transformers.models.mllama.processing_mllama import (
        convert_sparse_cross_attention_mask_to_dense,
        get_cross_attention_token_mask,
    )

    vocab, image_token = 128, 128  # the <|image|> id sits past the LM head (embed has vocab+8)
    vision_hidden = 32
    layers_idx = [0, 1]
    config = MllamaConfig(
        text_config=lm_config(
            vocab, num_hidden_layers=3, max_position_embeddings=256, cross_attention_layers=[1], **SPECIAL_IDS
        ),
        vision_config=dict(
            hidden_size=vision_hidden,
            num_hidden_layers=2,
            num_global_layers=1,
            attention_heads=2,
            intermediate_size=64,
            image_size=28,
            patch_size=14,
            max_num_tiles=2,
            intermediate_layers_indices=layers_idx,
            vision_output_dim=vision_hidden * (1 + len(layers_idx)),
            supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
        ),
        image_token_index=image_token,
    )
    model = init_model(MllamaForConditionalGeneration, config, seed)
    # the tanh gates are initialised to 0: make them nonzero so the cross path (and the
    # gated tile / position embeddings of the vision tower) change the output
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gate", "gate_attn", "gate_ffn")):
                sign = torch.where(torch.rand(p.shape, generator=g) < 0.5, -1.0, 1.0)
                p.copy_(sign * (0.5 + torch.rand(p.shape, generator=g)))

    rows = [[BOS, image_token, 10, 11, image_token, 12, 13, 14], [BOS, 20, image_token, 21, 22]]
    inputs = left_pad(rows)
    input_ids = inputs["input_ids"]
    # images per row, as aspect ratios (tiles_h, tiles_w); supported ratio ids are 1-based
    ratios = [[(1, 2), (1, 1)], [(2, 1)]]
    supported = [tuple(r) for r in config.vision_config.supported_aspect_ratios]
    max_images, max_tiles = 2, config.vision_config.max_num_tiles
    pixel_values = torch.zeros(2, max_images, max_tiles, 3, 28, 28)
    aspect_ratio_ids = torch.zeros(2, max_images, dtype=torch.long)
    aspect_ratio_mask = torch.zeros(2, max_images, max_tiles, dtype=torch.long)
    aspect_ratio_mask[:, :, 0] = 1  # as the image processor does, padding images included
    content = _images(6, 28, 28, seed)
    k = 0
    for b, row in enumerate(ratios):
        for i, (th, tw) in enumerate(row):
            n = th * tw
            pixel_values[b, i, :n] = content[k : k + n]
            k += n
            aspect_ratio_ids[b, i] = supported.index((th, tw)) + 1
            aspect_ratio_mask[b, i, :n] = 1
    token_masks = [get_cross_attention_token_mask(r.tolist(), image_token) for r in input_ids]
    num_tiles = [[th * tw for th, tw in row] for row in ratios]
    cross_attention_mask = torch.from_numpy(
        convert_sparse_cross_attention_mask_to_dense(
            token_masks, num_tiles=num_tiles, max_num_tiles=max_tiles, length=input_ids.shape[1]
        )
    )
    inputs.update(
        pixel_values=pixel_values,
        aspect_ratio_ids=aspect_ratio_ids,
        aspect_ratio_mask=aspect_ratio_mask,
        cross_attention_mask=cross_attention_mask,
    )
    return Tiny(model, inputs)
