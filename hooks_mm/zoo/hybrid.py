"""Tiny random-weight models over hybrid decoder stacks, with their processors.

``build_qwen3_5``: ``Qwen3_5ForConditionalGeneration`` (Qwen3-VL-like vision side, no deepstack)
over a 4-layer ``qwen3_5_text`` stack [linear, full, linear, full] (gated DeltaNet and gated
attention), with ``Qwen3VLProcessor`` (the processor transformers maps ``qwen3_5`` to) on the
Qwen-VL family's batch: row 0 two images, row 1 one image, left-padded.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from hooks_mm.zoo.base import Tiny, init_model, lm_config, token_ids
from hooks_mm.zoo.llava import build_tokenizer, sample_images
from hooks_mm.zoo.qwen import SPECIAL_TOKENS, VOCAB_SIZE, build_processor, mrope, processor_inputs, vision_config

# a hybrid stack whose first layer is linear attention and whose attention layers are not all at one end
QWEN3_5_LAYERS = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
QWEN3_5_LINEAR = dict(linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4)


def build_qwen3_5(seed: int = 0, moe: bool = False) -> Tiny:
    """Qwen3.5 (``moe``: Qwen3.5-MoE, every MLP a top-2 of 4 experts plus a gated shared expert) over a
    [linear, full, linear, full] stack, with the Qwen3-VL processor."""
    import transformers

    processor = build_processor(transformers.Qwen3VLProcessor, 16)
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    # head_dim 16, half of it rotary (Qwen3.5: a quarter of 256): 4 frequencies over (t, h, w)
    rope = mrope(2, 1, 1, mrope_interleaved=True, partial_rotary_factor=0.5)
    experts = dict(moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=4, num_experts_per_tok=2)
    text = lm_config(
        VOCAB_SIZE,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<|im_end|>"],
        num_hidden_layers=len(QWEN3_5_LAYERS),
        layer_types=QWEN3_5_LAYERS,
        head_dim=16,
        rope_parameters=rope,
        **QWEN3_5_LINEAR,
        **(experts if moe else {}),
    )
    if moe:
        text.pop("intermediate_size")  # Qwen3.5-MoE has no dense MLP
    kind = "Qwen3_5Moe" if moe else "Qwen3_5"
    config = getattr(transformers, f"{kind}Config")(
        text_config=text,
        vision_config=vision_config(16, num_position_embeddings=16),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = init_model(getattr(transformers, f"{kind}ForConditionalGeneration"), config, seed)
    return Tiny(model=model, inputs=processor_inputs(processor, seed, 32), processor=processor)


# ---------------------------------------------------------------------------------------
# LFM2-VL

LFM2_VL_IMAGE = dict(
    encoder_patch_size=4, downsample_factor=2, tile_size=16, min_tiles=2, max_tiles=4, min_image_tokens=2,
    max_image_tokens=4, max_pixels_tolerance=2.0, use_thumbnail=True,
)  # fmt: skip
# (height, width): 2x2 crops + thumbnail, one small tile, 1x2 crops + thumbnail
LFM2_VL_SIZES = [(70, 64), (12, 28), (40, 96)]
LFM2_VL_SPECIAL = ("<image>", "<|image_start|>", "<|image_end|>", "<|img_thumbnail|>")


def _closest_ratio(aspect: float, ratios: list[tuple[int, int]], width: int, height: int, tile: int) -> tuple:
    best, best_diff = (1, 1), float("inf")
    for ratio in ratios:  # find_closest_aspect_ratio of image_processing_lfm2_vl
        diff = abs(aspect - ratio[0] / ratio[1])
        if diff < best_diff:
            best, best_diff = ratio, diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * ratio[0] * ratio[1]:
            best = ratio
    return best


def _smart_resize(height: int, width: int, p: int, f: int, min_tokens: int, max_tokens: int) -> tuple[int, int]:
    """(height, width) of a single tile / the thumbnail: Lfm2VlImageProcessor.smart_resize."""
    factor = p * f
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_tokens * factor**2:
        beta = math.sqrt(height * width / (max_tokens * factor**2))
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_tokens * factor**2:
        beta = math.sqrt(min_tokens * factor**2 / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def lfm2_vl_image(image: Any, o: dict[str, Any]) -> tuple[list[torch.Tensor], int, int, tuple[int, int]]:
    """Lfm2VlImageProcessor by hand (it imports torchvision): the tiles of one PIL image as normalised (3, h, w)
    tensors (crops row-major, then the thumbnail), the grid rows and cols, and the single-tile / thumbnail size."""
    p, f, tile = o["encoder_patch_size"], o["downsample_factor"], o["tile_size"]
    x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    height, width = x.shape[-2:]

    def resize(h: int, w: int) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=True)[0]

    factor = p * f
    large = max(p, round(height / factor) * factor) * max(p, round(width / factor) * factor)
    large = large > o["max_image_tokens"] * factor**2 * o["max_pixels_tolerance"]
    size = _smart_resize(height, width, p, f, o["min_image_tokens"], o["max_image_tokens"])
    if not large:
        tiles, rows, cols = [resize(*size)], 1, 1
    else:
        n_range = range(o["min_tiles"], o["max_tiles"] + 1)
        ratios = {(w, h) for n in n_range for w in range(1, n + 1) for h in range(1, n + 1) if w * h in n_range}
        cols, rows = _closest_ratio(width / height, sorted(ratios, key=lambda r: r[0] * r[1]), width, height, tile)
        big = resize(tile * rows, tile * cols)
        tiles = [big[:, r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] for r in range(rows) for c in range(cols)]
        tiles += [resize(*size)] if o["use_thumbnail"] else []
    return [(t / 255 - 0.5) / 0.5 for t in tiles], rows, cols, size


def lfm2_vl_inputs(tok: Any, texts: list[str], images: list[list[Any]], o: dict[str, Any]) -> dict[str, torch.Tensor]:
    """What Lfm2VlProcessor gives for ``texts`` with ``images`` per row: each ``<image>`` expanded by the
    processor's own ``_build_image_tokens``; ``pixel_values`` (tiles, max patches, p*p*3) padded, with
    ``pixel_attention_mask`` and ``spatial_shapes`` (patch rows, cols) per tile."""
    from transformers import Lfm2VlProcessor

    p, f = o["encoder_patch_size"], o["downsample_factor"]
    names = SimpleNamespace(
        image_token="<image>",
        image_start_token="<|image_start|>",
        image_end_token="<|image_end|>",
        image_thumbnail_token="<|img_thumbnail|>",
    )
    max_patches = max(o["max_image_tokens"] * f**2, (o["tile_size"] // p) ** 2)
    pixel_values, masks, shapes, out = [], [], [], []
    for text, row in zip(texts, images):
        for image in row:
            tiles, rows, cols, (h, w) = lfm2_vl_image(image, o)
            per_tile = math.ceil(o["tile_size"] // p / f) ** 2
            expanded = Lfm2VlProcessor._build_image_tokens(
                names, rows, cols, per_tile, math.ceil(h // p / f) * math.ceil(w // p / f), o["use_thumbnail"], True
            )
            text = text.replace("<image>", expanded.replace("<image>", "<IMG>"), 1)
            for t in tiles:  # convert_image_to_patches: (rows, cols, p, p, 3) row-major
                n_h, n_w = t.shape[1] // p, t.shape[2] // p
                patches = t.reshape(3, n_h, p, n_w, p).permute(1, 3, 2, 4, 0).reshape(n_h * n_w, -1)
                pixel_values.append(
                    torch.cat([patches, patches.new_zeros(max_patches - len(patches), len(patches[0]))])
                )
                masks.append((torch.arange(max_patches) < len(patches)).int())
                shapes.append([n_h, n_w])
        out.append(text.replace("<IMG>", "<image>"))
    enc = tok(out, padding=True, return_tensors="pt", add_special_tokens=False)
    media = dict(pixel_values=torch.stack(pixel_values), pixel_attention_mask=torch.stack(masks))
    return {**enc, **media, "spatial_shapes": torch.tensor(shapes)}


def build_lfm2_vl(seed: int = 0) -> Tiny:
    """LFM2-VL: SigLIP2 NaFlex tower (4 px patches, up to 16 per tile), projector per tile (2x2 pixel unshuffle),
    over a 4-layer LFM2 stack [conv, attention, conv, attention]. Row 0: a 2x2-crop image (+ thumbnail) and a
    single-tile one; row 1: a 1x2-crop image (+ thumbnail), left-padded. No processor is returned (its image
    processor imports torchvision): inputs are made by hand as Lfm2VlProcessor makes them."""
    from transformers import Lfm2Config, Lfm2VlConfig, Lfm2VlForConditionalGeneration, Siglip2VisionConfig

    grid = [f"<|img_row_{r}_col_{c}|>" for r in (1, 2) for c in (1, 2)]
    tok = build_tokenizer((*LFM2_VL_SPECIAL, *grid))
    vocab = (len(tok) + 8) // 8 * 8
    text = Lfm2Config(
        **lm_config(vocab, num_hidden_layers=4, **token_ids(tok)),
        layer_types=["conv", "full_attention", "conv", "full_attention"],
        block_auto_adjust_ff_dim=False,
    )
    o = LFM2_VL_IMAGE
    vision = Siglip2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_patches=16,
        patch_size=o["encoder_patch_size"],
    )  # fmt: skip
    config = Lfm2VlConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        projector_hidden_size=48,
        downsample_factor=o["downsample_factor"],
    )
    model = init_model(Lfm2VlForConditionalGeneration, config, seed)
    images = sample_images(seed, LFM2_VL_SIZES)
    texts = ["USER : <image> <image> compare these two images ? ASSISTANT :", "USER : <image> what is in the image ?"]
    return Tiny(model=model, inputs=lfm2_vl_inputs(tok, texts, [images[:2], images[2:]], o))


# ---------------------------------------------------------------------------------------
# LFM3-VL


def build_lfm3_vl(seed: int = 0, video: bool = False) -> Tiny:
    """LFM3-VL: the LFM3 vision tower (16 px patches, [conv, attention] layers, 2x2 merge) over a 4-layer LFM3
    stack [conv, full, conv, sliding] with sandwich norms and gated attention heads, with ``Lfm3VlProcessor`` (a
    Qwen3-VL processor: PIL image processor; ``video``: the Qwen-VL batch of an image and two videos through
    :class:`~hooks_mm.media.QwenVideoProcessorPil`, frames stamped ``<t seconds>``)."""
    import transformers

    from hooks_mm.media import QwenVideoProcessorPil
    from hooks_mm.zoo.qwen import FPS, video_inputs

    processor = build_processor(transformers.Lfm3VlProcessor, 16)
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = transformers.Lfm3Config(
        **lm_config(VOCAB_SIZE, num_hidden_layers=4, head_dim=16, sliding_window=4),
        layer_types=["conv", "full_attention", "conv", "sliding_attention"],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    vision = transformers.Lfm3VlVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        layer_types=["conv", "full_attention"], patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
    )  # fmt: skip
    config = transformers.Lfm3VlConfig(
        text_config=text,
        vision_config=vision,
        projector_hidden_size=48,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = init_model(transformers.Lfm3VlForConditionalGeneration, config, seed)
    if video:
        processor.video_processor = QwenVideoProcessorPil(processor.image_processor, fps=FPS)
        return Tiny(model=model, inputs=video_inputs(processor, seed, 32), processor=processor)
    return Tiny(model=model, inputs=processor_inputs(processor, seed, 32, mm_types=False), processor=processor)


def build_lfm3_vl_video(seed: int = 0) -> Tiny:
    """LFM3-VL with an image and videos (row 0: image + 4-frame video; row 1: 2-frame video)."""
    return build_lfm3_vl(seed, video=True)
