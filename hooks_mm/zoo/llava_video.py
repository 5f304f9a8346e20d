"""Video input to LLaVA-style models: LlavaOnevision (video frames pooled 2x2, one newline per
video) and Video-LLaVA (separate image and video CLIP towers, CLS kept per frame).

Frames are preprocessed by :class:`~hooks_mm.media.FramewiseVideoProcessor` with the
family's PIL image transform (HF's video processors need torchvision); the family's own
HF code expands ``<video>`` (Video-LLaVA: ``VideoLlavaProcessor``; OneVision:
``LlavaOnevisionProcessor.replace_video_token`` on a bare instance, as for its images).
"""

from __future__ import annotations

import torch

from hooks_mm.media import FramewiseVideoProcessor, moving_square
from hooks_mm.processing import allow_missing_video_processor
from hooks_mm.zoo.base import Tiny
from hooks_mm.zoo.llava import (
    LLAVA_CHAT_TEMPLATE,
    ONEVISION_ASPECT,
    PATCH,
    TILE,
    _clip_vision,
    _images,
    _llama_text,
    _onevision_expand,
    _vocab_size,
    build_llava_onevision_model,
    build_tokenizer,
)

FPS = 1.0


def build_llava_onevision_video(seed: int = 0) -> Tiny:
    """LlavaOnevision: row 0 = image + 2-frame video, row 1 = 2-frame video (left-padded).

    ``pixel_values_videos`` is one ``[n_videos, frames, C, H, W]`` tensor, so the videos of a
    batch share their frame count."""
    from transformers import CLIPImageProcessorPil, LlavaOnevisionProcessor

    model, tok, image_processor = build_llava_onevision_model(seed)
    frames = CLIPImageProcessorPil(
        size={"height": TILE, "width": TILE},
        do_center_crop=False,
        image_mean=image_processor.image_mean,
        image_std=image_processor.image_std,
    )
    video_processor = FramewiseVideoProcessor(frames, fps=FPS)
    text = ["USER: <image>\n<video>\nwhat is in the image ? ASSISTANT:", "USER: <video>\ndescribe this ? ASSISTANT:"]
    image_inputs = image_processor([_images(seed, [(40, 90)])], return_tensors="pt")
    side = TILE // PATCH
    text = _onevision_expand(text, image_inputs, image_processor, side * side, "full", ONEVISION_ASPECT)
    videos = [moving_square(2, 40, 40, seed), moving_square(2, 48, 36, seed + 1)]
    video_inputs = {"pixel_values_videos": [video_processor([v])["pixel_values_videos"][0] for v in videos]}
    bare = LlavaOnevisionProcessor.__new__(LlavaOnevisionProcessor)
    bare.num_image_tokens, bare.video_token = side * side, "<video>"
    k, out = 0, []
    for sample in text:
        pieces = sample.split("<video>")
        expanded = pieces[0]
        for piece in pieces[1:]:
            expanded += bare.replace_video_token(video_inputs, k) + piece
            k += 1
        out.append(expanded)
    inputs = dict(tok(out, return_tensors="pt", padding=True))
    inputs.pop("token_type_ids", None)
    inputs.update(image_inputs)
    inputs["pixel_values_videos"] = _stack_videos(video_inputs["pixel_values_videos"])
    return Tiny(model=model, inputs=inputs)


def _stack_videos(videos: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(v.shape) for v in videos}
    if len(shapes) != 1:
        raise ValueError(
            f"videos of one batch need the same number of frames and size for pixel_values_videos; got {shapes}"
        )
    return torch.stack(list(videos))


def build_video_llava(seed: int = 0) -> Tiny:
    """Video-LLaVA: row 0 = image + 2-frame video, row 1 = 2-frame video (left-padded)."""
    from transformers import (
        VideoLlavaConfig,
        VideoLlavaForConditionalGeneration,
        VideoLlavaImageProcessor,
        VideoLlavaProcessor,
    )

    tok = build_tokenizer(("<image>", "<video>"))
    image_processor = VideoLlavaImageProcessor(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE})
    with allow_missing_video_processor():
        processor = VideoLlavaProcessor(
            image_processor=image_processor,
            video_processor=None,
            tokenizer=tok,
            patch_size=PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=LLAVA_CHAT_TEMPLATE,
        )
    processor.video_processor = FramewiseVideoProcessor(image_processor, fps=FPS)
    config = VideoLlavaConfig(
        text_config=_llama_text(_vocab_size(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id).to_dict(),
        vision_config=_clip_vision().to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(TILE // PATCH) ** 2,
        video_seq_length=2 * ((TILE // PATCH) ** 2 + 1),
    )
    config.architectures = ["VideoLlavaForConditionalGeneration"]
    torch.manual_seed(seed)
    model = VideoLlavaForConditionalGeneration(config).float().eval()
    text = ["USER: <image>\n<video>\nwhat is in the image ? ASSISTANT:", "USER: <video>\ndescribe this ? ASSISTANT:"]
    videos = [moving_square(2, 40, 40, seed), moving_square(2, 48, 36, seed + 1)]
    out = processor(text=text, images=_images(seed, [(40, 30)]), videos=videos, return_tensors="pt", padding=True)
    inputs = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    return Tiny(model=model, inputs=inputs, processor=processor)
