"""Word-level tokenizers built locally (no hub): enough for tiny models and organisms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")


def word_level(
    tokens: Sequence[str],
    special: Sequence[str] = (),
    *,
    pre_tokenizer: Any = None,
    post_processor: Any = None,
    **fast: Any,
) -> PreTrainedTokenizerFast:
    """A WordLevel fast tokenizer: ``tokens`` get ids in order (a repeat keeps its first id),
    anything else is ``<unk>``.

    ``special`` are added to the backend whole, so ``"<image><image>"`` is two ids whatever the
    pre-tokenizer (default: ``Whitespace``) does; ``fast`` goes to ``PreTrainedTokenizerFast``
    (``unk_token``, ``pad_token``, ``padding_side``, ``chat_template``, ...).

    Example::

        tok = word_level(["<unk>", "<pad>", "<image>", "red"], ["<image>"], unk_token="<unk>", pad_token="<pad>")
    """
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizer or pre_tokenizers.Whitespace()
    backend.add_special_tokens(list(special))
    if post_processor is not None:
        backend.post_processor = post_processor
    return PreTrainedTokenizerFast(tokenizer_object=backend, **fast)


def word_tokenizer(words: Sequence[str], extra_special: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over ``words`` (split on whitespace and punctuation).

    Ids: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2, ``</s>`` 3, then ``extra_special``, then words.
    Special tokens are matched whole, so ``"<image>"`` stays one token.
    """
    fast = word_level(
        [*SPECIALS, *extra_special, *words],
        pre_tokenizer=pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]),
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=list(extra_special),
    )
    fast.add_bos_token = True
    return fast
