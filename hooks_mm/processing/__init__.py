"""Loading and saving processors, including where transformers wants torchvision.

Everything a saved model needs to get its processor back lives here (not in
:mod:`hooks_mm.zoo`, which builds tiny models and may import this package).

transformers 5.23 attaches a video processor to every Qwen-VL-style processor and that
class needs torchvision, which does not install beside the CPU torch wheel. hooks_mm then
builds the processor from its tokenizer, its slow (PIL) image processor and its audio
feature extractor (Qwen2.5-Omni), and puts :class:`~hooks_mm.media.QwenVideoProcessorPil`
(PIL + numpy) in the video slot of Qwen-style processors, so videos work too.  A model whose
processor cannot be built at all (Voxtral: mistral_common) gets its tokenizer and feature
extractor (:class:`~hooks_mm.processing.audio_text.AudioTextProcessor`); one saved with a
codebook, a :class:`~hooks_mm.processing.codebook.CodebookProcessor`.

Example::

    save_processor(processor, path)
    processor = load_processor(path)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer
from transformers.processing_utils import ProcessorMixin

from hooks_mm.processing.audio_text import AudioTextProcessor
from hooks_mm.processing.codebook import CodebookProcessor


@contextmanager
def allow_missing_video_processor() -> Iterator[None]:
    """Let a processor be constructed with ``video_processor=None`` (for this block only)."""
    original = ProcessorMixin.check_argument_for_proper_class

    def check(self: Any, argument_name: str, argument: Any) -> Any:
        if argument is None and argument_name == "video_processor":
            return None
        return original(self, argument_name, argument)

    ProcessorMixin.check_argument_for_proper_class = check  # type: ignore[method-assign]
    try:
        yield
    finally:
        ProcessorMixin.check_argument_for_proper_class = original  # type: ignore[method-assign]


def load_processor(path: str) -> Any | None:
    """The processor saved in ``path`` (or hub id), else its tokenizer, else None."""
    if CodebookProcessor.is_saved_in(path):
        return CodebookProcessor.from_pretrained(path)
    try:
        processor = AutoProcessor.from_pretrained(path)
        if hasattr(processor, "tokenizer") or not os.path.isfile(os.path.join(path, "preprocessor_config.json")):
            return processor
    # RecursionError: a saved LlavaNextImageProcessor makes AutoVideoProcessor guess the name
    # "LlavaNextVideoProcessor", which is the (multimodal) processor class itself, and so on
    except (ImportError, OSError, ValueError, KeyError, TypeError, RecursionError):
        pass
    try:  # a processor class whose video slot needs torchvision, or one Auto* does not map
        processor = _without_video(path)
    except (OSError, ValueError, KeyError, TypeError, ImportError):  # ImportError: the class needs torchvision
        processor = None
    if processor is not None:
        return processor
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    feature_extractor = _feature_extractor(path)
    if feature_extractor is not None:
        return AudioTextProcessor(tokenizer, feature_extractor)
    return tokenizer


# processor classes of model types that AutoProcessor does not map
PROCESSORS = {"qwen2_5_omni_thinker": "Qwen2_5OmniProcessor", "glm_ocr": "Glm46VProcessor"}
FEATURE_EXTRACTOR_DIR = "feature_extractor"  # beside an image processor (both use preprocessor_config.json)
# a FramewiseVideoProcessor (not an HF class): its frame rate, and its image processor when not the processor's own
FRAMEWISE_FILE, FRAMEWISE_DIR = "hooks_mm_framewise_video.json", "framewise_video"
OPTIONS_FILE = "hooks_mm_processor_options.json"  # constructor options of a processor saved as its parts


def _feature_extractor(path: str) -> Any | None:
    from transformers import AutoFeatureExtractor

    for where in (os.path.join(path, FEATURE_EXTRACTOR_DIR), path):
        try:
            return AutoFeatureExtractor.from_pretrained(where)
        except (OSError, ValueError, KeyError, TypeError, ImportError):
            continue
    return None


def _without_video(path: str) -> Any | None:
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    config = AutoConfig.from_pretrained(path)
    name = PROCESSOR_MAPPING_NAMES.get(config.model_type) or PROCESSORS.get(config.model_type, "")
    cls = getattr(transformers, name, None)
    if cls is None or "video_processor" not in cls.get_attributes():
        return None
    from hooks_mm.media import QwenVideoProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")
    parts: dict[str, Any] = {"image_processor": image_processor, "tokenizer": tokenizer, "video_processor": None}
    if "feature_extractor" in cls.get_attributes():
        parts["feature_extractor"] = _feature_extractor(path)
    options = {}
    if os.path.isfile(os.path.join(path, OPTIONS_FILE)):
        with open(os.path.join(path, OPTIONS_FILE)) as f:
            options = json.load(f)
    with allow_missing_video_processor():
        processor = cls(**parts, chat_template=getattr(tokenizer, "chat_template", None), **options)
    if all(hasattr(image_processor, k) for k in ("patch_size", "merge_size", "temporal_patch_size")):
        processor.video_processor = QwenVideoProcessorPil(image_processor)
    framewise = os.path.join(path, FRAMEWISE_FILE)
    if os.path.isfile(framewise):  # a frame-by-frame video processor saved by save_processor
        from hooks_mm.media import FramewiseVideoProcessor

        with open(framewise) as f:
            spec = json.load(f)
        frames = image_processor if spec["same_image_processor"] else _pil_image_processor(path, FRAMEWISE_DIR)
        processor.video_processor = FramewiseVideoProcessor(frames, fps=spec["fps"])
    return processor


def processor_options(processor: Any) -> dict[str, Any]:
    """The processor's own constructor options (patch size, image-token counts...), not its parts."""
    import inspect

    skip = {"self", "chat_template", "kwargs", "args", *processor.get_attributes()}
    names = [n for n in inspect.signature(type(processor).__init__).parameters if n not in skip]
    values = {n: getattr(processor, n) for n in names if hasattr(processor, n)}
    return {n: v for n, v in values.items() if isinstance(v, (int, float, str, bool, type(None), list))}


def _pil_image_processor(path: str, sub: str) -> Any:
    return AutoImageProcessor.from_pretrained(os.path.join(path, sub), backend="pil")


def save_processor(processor: Any, path: str) -> None:
    """``processor.save_pretrained(path)``; without an HF video processor, its parts."""
    from hooks_mm.media import FramewiseVideoProcessor, QwenVideoProcessorPil

    video = getattr(processor, "video_processor", "absent")
    if video is None and "video_processor" not in processor.get_attributes():
        video = "absent"  # a plain attribute (Qianfan-OCR sets it to None), not a processor part: save it whole
    if video is None or isinstance(video, (QwenVideoProcessorPil, FramewiseVideoProcessor)):
        processor.tokenizer.save_pretrained(path)
        processor.image_processor.save_pretrained(path)
        with open(os.path.join(path, OPTIONS_FILE), "w") as f:
            json.dump(processor_options(processor), f)
        if isinstance(video, FramewiseVideoProcessor):
            same = video.image_processor is processor.image_processor
            if not same:
                video.image_processor.save_pretrained(os.path.join(path, FRAMEWISE_DIR))
            with open(os.path.join(path, FRAMEWISE_FILE), "w") as f:
                json.dump({"fps": video.fps, "same_image_processor": same}, f)
        if getattr(processor, "feature_extractor", None) is not None:
            processor.feature_extractor.save_pretrained(os.path.join(path, FEATURE_EXTRACTOR_DIR))
    else:
        processor.save_pretrained(path)
