"""Video and audio inputs without torchvision: a Qwen-VL video processor on PIL + numpy,
synthetic frames and tones, and the frame rates of audio feature extractors.

transformers 5.23 implements every video processor (``Qwen2VLVideoProcessor``,
``LlavaOnevisionVideoProcessor``, ...) on torchvision, which does not install beside the CPU
torch wheel. :class:`QwenVideoProcessorPil` does what ``Qwen2VLVideoProcessor`` does for
decoded frames (smart resize per frame, rescale, normalize, pad the frame count to a multiple
of ``temporal_patch_size`` by repeating the last frame, patchify into
``[grid_t * grid_h * grid_w, C * T * P * P]``) with the family's PIL image processor, so the
family's own HF processor expands ``<|video_pad|>`` and computes ``mm_token_type_ids`` /
``second_per_grid_ts`` as usual. Two identical frames give exactly the image processor's
pixel values (tested), which is how a static image enters the same vision tower.

Example::

    proc.video_processor = QwenVideoProcessorPil(proc.image_processor)
    batch = proc(text=[prompt], videos=[tone_frames(4, 56, 84)], fps=2.0, return_tensors="pt")
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from einops import rearrange
from jaxtyping import Float
from transformers import BatchFeature


def _as_frames(video: Any) -> list[np.ndarray]:
    """One video as a list of uint8 ``[H, W, 3]`` frames (PIL images, arrays or a 4-D array)."""
    if isinstance(video, np.ndarray) and video.ndim == 4:
        return [np.asarray(f) for f in video]
    if torch.is_tensor(video) and video.dim() == 4:
        return [f.numpy() for f in video]
    frames = []
    for f in video:
        frames.append(np.asarray(f.convert("RGB")) if hasattr(f, "convert") else np.asarray(f))
    if not frames:
        raise ValueError("a video with no frames: pass at least one frame per video.")
    return frames


def _as_videos(videos: Any) -> list[list[np.ndarray]]:
    if isinstance(videos, np.ndarray) and videos.ndim == 4 or torch.is_tensor(videos) and videos.dim() == 4:
        return [_as_frames(videos)]
    videos = list(videos)
    if videos and hasattr(videos[0], "convert"):  # one video given as a list of PIL frames
        return [_as_frames(videos)]
    return [_as_frames(v) for v in videos]


class QwenVideoProcessorPil:
    """``Qwen2VLVideoProcessor`` arithmetic on decoded frames, with a PIL image processor.

    ``fps``: frames per second of the frames given (default 2.0, the rate HF assumes when a
    checkpoint stores none); it becomes ``video_metadata`` (Qwen2.5-VL derives
    ``second_per_grid_ts = temporal_patch_size / fps`` from it).
    """

    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, image_processor: Any, fps: float = 2.0):
        self.image_processor = image_processor
        self.patch_size = int(image_processor.patch_size)
        self.merge_size = int(image_processor.merge_size)
        self.temporal_patch_size = int(image_processor.temporal_patch_size)
        self.fps = float(fps)

    def _resize(self, frame: np.ndarray, height: int, width: int) -> np.ndarray:
        from PIL import Image

        img = Image.fromarray(frame.astype(np.uint8), "RGB")
        return np.asarray(img.resize((width, height), resample=Image.Resampling.BICUBIC), dtype=np.float32)

    def _frames(self, frames: list[np.ndarray]) -> Float[np.ndarray, "t c h w"]:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        ip = self.image_processor
        h, w = frames[0].shape[:2]
        if any(f.shape[:2] != (h, w) for f in frames):
            raise ValueError("all frames of a video must have the same size; resize them first.")
        size = ip.size
        factor = self.patch_size * self.merge_size
        rh, rw = smart_resize(h, w, factor=factor, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
        mean = np.asarray(ip.image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(ip.image_std, dtype=np.float32)[:, None, None]
        out = []
        for f in frames:
            x = self._resize(f, rh, rw).transpose(2, 0, 1) * np.float32(ip.rescale_factor)
            out.append((x - mean) / std)
        return np.stack(out)

    def patchify(self, video: Float[np.ndarray, "t c h w"]) -> tuple[np.ndarray, list[int]]:
        """``[T, C, H, W]`` -> ``[grid_t * grid_h * grid_w, C * tps * P * P]`` and ``[t, h, w]``."""
        tps, p, m = self.temporal_patch_size, self.patch_size, self.merge_size
        if pad := -len(video) % tps:
            video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)])
        t, _, h, w = video.shape
        patches = rearrange(
            video, "(gt tp) c (gh mh ph) (gw mw pw) -> (gt gh gw mh mw) (c tp ph pw)", tp=tps, mh=m, ph=p, mw=m, pw=p
        )
        return patches, [t // tps, h // p, w // p]

    def __call__(
        self, videos: Any, return_tensors: str | None = None, fps: float | Sequence[float] | None = None, **kwargs: Any
    ) -> BatchFeature:
        from transformers.video_utils import VideoMetadata

        videos = _as_videos(videos)
        rates = [fps] * len(videos) if fps is None or isinstance(fps, (int, float)) else list(fps)
        rates = [float(r) if r is not None else self.fps for r in rates]
        all_patches, grids, metadata = [], [], []
        for frames, rate in zip(videos, rates):
            patches, grid = self.patchify(self._frames(frames))
            all_patches.append(patches)
            grids.append(grid)
            metadata.append(
                VideoMetadata(
                    total_num_frames=len(frames),
                    fps=rate,
                    height=frames[0].shape[0],
                    width=frames[0].shape[1],
                    frames_indices=list(range(len(frames))),
                )
            )
        data = {"pixel_values_videos": np.concatenate(all_patches), "video_grid_thw": np.asarray(grids, dtype=np.int64)}
        out = BatchFeature(data, tensor_type=return_tensors)
        out["video_metadata"] = metadata
        return out

    def get_num_of_video_patches(self, num_frames: int, height: int, width: int, videos_kwargs: Any = None) -> int:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        size = self.image_processor.size
        factor = self.patch_size * self.merge_size
        rh, rw = smart_resize(
            height, width, factor=factor, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"]
        )
        t = -(-num_frames // self.temporal_patch_size)
        return t * (rh // self.patch_size) * (rw // self.patch_size)


class FramewiseVideoProcessor:
    """A video processor that runs a PIL image processor on every frame and stacks them:
    ``pixel_values_videos`` ``[n_videos, frames, C, H, W]`` (LLaVA-style video towers).

    This is what ``VideoLlavaVideoProcessor`` / ``LlavaOnevisionVideoProcessor`` compute per
    frame (resize, optional crop, rescale, normalize; no frame sampling) when handed the
    matching image processor (CLIP-style: crop for Video-LLaVA, plain resize for OneVision).
    """

    model_input_names = ["pixel_values_videos"]

    def __init__(self, image_processor: Any, fps: float | None = None):
        self.image_processor = image_processor
        self.fps = fps

    def __call__(self, videos: Any, return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        from PIL import Image

        stacked = []
        for frames in _as_videos(videos):
            pil = [Image.fromarray(f.astype(np.uint8), "RGB") for f in frames]
            out = self.image_processor(pil, return_tensors="np")
            stacked.append(np.asarray(out["pixel_values"] if "pixel_values" in out else out["pixel_values_images"]))
        shapes = {v.shape for v in stacked}
        data = {"pixel_values_videos": np.stack(stacked) if len(shapes) == 1 else stacked}
        return BatchFeature(data, tensor_type=return_tensors if len(shapes) == 1 else None)


# ---------------------------------------------------------------------------------------
# synthetic media (no downloads)


def moving_square(n_frames: int, height: int, width: int, seed: int = 0) -> list[Any]:
    """``n_frames`` PIL frames: noise with a bright square moving left to right."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    side = max(2, min(height, width) // 3)
    frames = []
    for t in range(n_frames):
        arr = rng.integers(0, 96, size=(height, width, 3), dtype=np.uint8)
        x = int((width - side) * t / max(1, n_frames - 1))
        arr[height // 3 : height // 3 + side, x : x + side, seed % 3] = 255
        frames.append(Image.fromarray(arr, "RGB"))
    return frames


def tone(
    seconds: float, freq: float = 440.0, sampling_rate: int = 16000, amplitude: float = 0.5
) -> Float[np.ndarray, " samples"]:
    """A sine tone (float32 waveform) of ``seconds`` at ``freq`` Hz."""
    t = np.arange(int(round(seconds * sampling_rate))) / sampling_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chirp(
    seconds: float, f0: float = 200.0, f1: float = 2000.0, sampling_rate: int = 16000
) -> Float[np.ndarray, " samples"]:
    """A linear sweep from ``f0`` to ``f1`` Hz: its spectrogram shows time clearly."""
    t = np.arange(int(round(seconds * sampling_rate))) / sampling_rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(seconds, 1e-9)))
    return (0.5 * np.sin(phase)).astype(np.float32)


def feature_seconds(processor: Any) -> float | None:
    """Seconds per feature frame of a processor's audio feature extractor (hop / rate)."""
    fe = getattr(processor, "feature_extractor", None) or getattr(processor, "audio_processor", None)
    hop, rate = getattr(fe, "hop_length", None), getattr(fe, "sampling_rate", None)
    return float(hop) / float(rate) if hop and rate else None
