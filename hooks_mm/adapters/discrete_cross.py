"""Adapter tables: Janus, Chameleon, Emu3 (image codes in the vocabulary) and Mllama
(cross-attention to the image).

* Janus: a SigLIP-like ``vision_model`` and the ``aligner`` MLP (the projector) write one
  feature per patch over the ``<image_placeholder>`` ids (square grid).
* Chameleon: no vision encoder.  A VQ-VAE (``model.vqmodel``) turns each image into a square
  grid of codes, which are mapped to BPE ids and embedded with the LM's own ``embed_tokens``;
  those embeddings replace the ``<image>`` placeholders.
* Emu3: like Chameleon, but every row of codes ends with an end-of-row token
  (``<|extra_200|>``), so an image of h x w codes fills ``h * (w + 1)`` placeholders; the grid
  comes from ``image_sizes``.
* Mllama: images never enter the token stream.  Cross-attention layers (``cross_attn`` and
  tanh gates) attend from text to the projected tiles; the ``<|image|>`` token marks where an
  image sits, one position per image.

The tables are plain constants gathered in ``ADAPTERS``; the registry registers them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hooks_mm.adapters.base import (
    Adapter,
    ImagePlan,
    config_get,
    grid_plan,
    lm_paths,
    patch_grid,
    special_ids,
    token_id_mask,
)

# ---------------------------------------------------------------------------------------
# Janus


def _janus_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    # JanusVisionEmbeddings: conv patch embedding (no CLS token); the aligner keeps every
    # patch, features are reshaped to (-1, hidden) and scattered image after image.
    pixel_values = inputs.get("pixel_values")
    if pixel_values is None:
        return []
    return [grid_plan(*patch_grid(config, pixel_values)) for _ in range(int(pixel_values.shape[0]))]


JANUS = Adapter(
    name="janus",
    architectures=("JanusForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.aligner",
    image_mask=token_id_mask("image_token_id", vocab="<image_placeholder>"),
    image_plans=_janus_plans,
    special_ids=special_ids("image_token_id"),
    notes=(
        "Janus: Llama LM; understanding path = vision_model -> aligner, one feature per "
        "patch (square grid, no CLS) over image_token_id; boi/eoi ids live only in the "
        "tokenizer; the VQ model / generation_head are for image generation and unused here"
    ),
)


# ---------------------------------------------------------------------------------------
# Chameleon


def _vq_grid(side: int, n_down: int) -> int:
    # Conv downsample: pad (0, 1, 0, 1) then 3x3 conv stride 2, once per level but the last
    for _ in range(n_down):
        side = (side + 1 - 3) // 2 + 1
    return side


def _chameleon_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    # VQ-VAE encoder -> codes [n, h', w'] -> flattened row-major per image -> embed_tokens.
    pixel_values = inputs.get("pixel_values")
    if pixel_values is None:
        return []
    n_down = len(config.vq_config.channel_multiplier) - 1
    rows, cols = (_vq_grid(int(side), n_down) for side in pixel_values.shape[-2:])
    return [grid_plan(rows, cols) for _ in range(int(pixel_values.shape[0]))]


def _no_image_codes(hf_model: Any, logits: Tensor) -> Tensor:
    """Chameleon's head never emits image codes."""
    logits[..., hf_model.model.vocabulary_mapping.image_tokens] = torch.finfo(logits.dtype).min
    return logits


CHAMELEON = Adapter(
    name="chameleon",
    architectures=("ChameleonForConditionalGeneration",),
    **lm_paths("model"),
    image_mask=token_id_mask("image_token_id", vocab="<image>"),
    image_plans=_chameleon_plans,
    logits_post=_no_image_codes,
    special_ids=special_ids("image_token_id", vocab=("<image>", "<racm3:break>", "<eoss>")),
    notes=(
        "Chameleon: discrete image codes, no projector; the VQ-VAE codes are embedded by "
        "model.embed_tokens in a SECOND call (after the input_ids call) and written over the "
        "<image> placeholders; decoder layers return a tuple; q_norm/k_norm LayerNorm per "
        "head after q_proj/k_proj; logits of image-code ids are set to finfo.min; "
        "paths assume swin_norm=False (swin_norm=True is refused: its input_layernorm normalises the "
        "attention OUTPUT and post_attention_layernorm the MLP OUTPUT)"
    ),
)


# ---------------------------------------------------------------------------------------
# Emu3


def _emu3_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    # Emu3Model.get_image_features: codes cropped to (h // f, w // f) per image_sizes[i],
    # each row followed by the end-of-row token; images concatenated in order.
    sizes = inputs.get("image_sizes")
    if sizes is None or inputs.get("pixel_values") is None:
        return []
    f = 2 ** (len(config.vq_config.channel_multiplier) - 1)
    plans = []
    for hw in torch.as_tensor(sizes).tolist():
        rows, cols = int(hw[0] / f), int(hw[1] / f)
        plans.append(grid_plan(rows, cols, newline=True))
    return plans


EMU3 = Adapter(
    name="emu3",
    architectures=("Emu3ForConditionalGeneration",),
    **lm_paths("model.text_model"),
    image_mask=token_id_mask("image_token_id", vocab="<image>"),
    image_plans=_emu3_plans,
    special_ids=special_ids(
        "image_token_id",
        vocab=("<image>", "<|image start|>", "<|image end|>", "<|image token|>", "<|extra_200|>", "<|extra_201|>"),
    ),
    notes=(
        "Emu3: discrete image codes, no projector; needs image_sizes; every <image> "
        "placeholder is overwritten: h*(w+1) per image, the last of each row with the "
        "end-of-row token <|extra_200|> (plan col -1); code/eol embeddings come from a SECOND "
        "model.text_model.embed_tokens call"
    ),
)


# ---------------------------------------------------------------------------------------
# Mllama


def _mllama_plans(config: Any, inputs: dict[str, Any]) -> list[ImagePlan]:
    # The image is not in the token stream: each <|image|> token stands for one image and
    # is its only position.
    ids = inputs.get("input_ids")
    if ids is None or inputs.get("pixel_values") is None:
        return []
    ratio = inputs.get("aspect_ratio_ids")  # 0 marks a padding image slot
    n = int((ratio > 0).sum()) if ratio is not None else int(inputs["pixel_values"].shape[1] * ids.shape[0])
    return [torch.tensor([[0, -1, -1]]) for _ in range(n)]


MLLAMA = Adapter(
    name="mllama",
    architectures=("MllamaForConditionalGeneration",),
    **lm_paths("model.language_model"),
    projector="model.multi_modal_projector",
    image_mask=token_id_mask("image_token_index", "image_token_id", vocab="<|image|>"),
    image_plans=_mllama_plans,
    cross_attn_layers=lambda config: list(config_get(config, "cross_attention_layers") or []),
    special_ids=special_ids("image_token_index"),
    notes=(
        "Mllama: images enter only through cross-attention layers (cross_attn, keys/values = "
        "projected vision tiles, q_norm/k_norm); resid_mid = x + tanh(cross_attn_attn_gate) * "
        "cross_attn(...); out = mid + tanh(cross_attn_mlp_gate) * row_mask * mlp(...); cross "
        "layers are SKIPPED when no pixel_values; needs aspect_ratio_ids, aspect_ratio_mask, "
        "cross_attention_mask; projector output is K/V source, not written at image positions"
    ),
)


ADAPTERS = (JANUS, CHAMELEON, EMU3, MLLAMA)
