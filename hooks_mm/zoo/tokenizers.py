"""Word-level tokenizers built locally (no hub): enough for tiny models and organisms."""

from __future__ import annotations

from typing import Sequence

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")


def word_tokenizer(words: Sequence[str], extra_special: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over ``words`` (split on whitespace and punctuation).

    Ids: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2, ``</s>`` 3, then ``extra_special``, then words.
    Special tokens are matched whole, so ``"<image>"`` stays one token.
    """
    vocab: dict[str, int] = {}
    for w in (*SPECIALS, *extra_special, *words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=list(extra_special),
    )
    fast.add_bos_token = True
    return fast
