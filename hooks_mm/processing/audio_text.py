"""A processor made of a tokenizer and an audio feature extractor.

For a model whose HF processor cannot be built here (Voxtral: ``mistral_common``).
:func:`hooks_mm.processing.load_processor` returns one for a saved model with a tokenizer and
a feature extractor but no loadable processor.

Example::

    proc = AudioTextProcessor(tokenizer, WhisperFeatureExtractor(feature_size=16))
    proc.save_pretrained(path)  # tokenizer + preprocessor_config.json
"""

from __future__ import annotations

from typing import Any


class AudioTextProcessor:
    """Tokenizer + Whisper feature extractor. Holds what the layout needs (``feature_extractor``,
    ``tokenizer``) and saves / loads with the model.
    """

    def __init__(self, tokenizer: Any, feature_extractor: Any):
        self.tokenizer, self.feature_extractor = tokenizer, feature_extractor

    def __call__(self, text: Any, **kwargs: Any) -> Any:
        return self.tokenizer(text, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def save_pretrained(self, path: str) -> None:
        self.tokenizer.save_pretrained(path)
        self.feature_extractor.save_pretrained(path)
