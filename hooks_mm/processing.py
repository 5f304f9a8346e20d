"""Loading and saving processors, including where transformers wants torchvision.

transformers 5.23 attaches a video processor to every Qwen-VL-style processor and that
class needs torchvision, which does not install beside the CPU torch wheel. For images and
text the video processor is not needed: hooks_mm then builds the processor from its
tokenizer and its slow (PIL) image processor, with ``video_processor=None``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer
from transformers.processing_utils import ProcessorMixin


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
    from hooks_mm.zoo.codebook import CodebookProcessor

    if CodebookProcessor.is_saved_in(path):
        return CodebookProcessor.from_pretrained(path)
    try:
        return AutoProcessor.from_pretrained(path)
    except ImportError:
        processor = _without_video(path)
        if processor is not None:
            return processor
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _without_video(path: str) -> Any | None:
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    config = AutoConfig.from_pretrained(path)
    cls = getattr(transformers, PROCESSOR_MAPPING_NAMES.get(config.model_type, "") or "", None)
    if cls is None or "video_processor" not in cls.get_attributes():
        return None
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")
    with allow_missing_video_processor():
        return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                   chat_template=getattr(tokenizer, "chat_template", None))


def save_processor(processor: Any, path: str) -> None:
    """``processor.save_pretrained(path)``; without a video processor, its parts."""
    if getattr(processor, "video_processor", "absent") is None:
        processor.tokenizer.save_pretrained(path)
        processor.image_processor.save_pretrained(path)
    else:
        processor.save_pretrained(path)
