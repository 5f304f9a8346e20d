"""Model inputs from raw text, images, videos and audio, through a model's processor.

Example::

    enc = to_inputs(processor, ["<image> what colour ?"], images=[img], chat=True)
    enc = as_inputs(processor, "plain text", device)      # tokenised, left-padded
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Sequence

import torch
from torch import Tensor

from hooks_mm.layout import SEGMENTS_KEY, Segment

PLACEHOLDERS = ("<image>", "<video>", "<audio>")


def as_inputs(processor: Any, inputs: Any, device: torch.device, **kwargs: Any) -> dict[str, Any]:
    """A dict of model inputs on ``device`` from a dict, a tensor of input_ids, or text."""
    if isinstance(inputs, (str, list)) and (isinstance(inputs, str) or all(isinstance(t, str) for t in inputs)):
        tok = getattr(processor, "tokenizer", processor)
        if tok is None:
            raise ValueError("text input needs a tokenizer: load the model with its processor or pass input_ids.")
        tok.padding_side = "left"
        inputs = dict(tok(inputs, return_tensors="pt", padding=True))
    elif isinstance(inputs, Tensor):
        inputs = {"input_ids": inputs}
    elif inputs is None:
        inputs = {}
    elif isinstance(inputs, Mapping):
        inputs = dict(inputs)
    else:
        raise TypeError(
            f"cannot run on a {type(inputs).__name__}: pass a dict of model inputs (model.to_inputs(...)), "
            "a Batch (model.prepare(...)), a [batch, seq] tensor of token ids, or text."
        )
    inputs.update(kwargs)
    meta = [k for k, v in inputs.items() if torch.is_tensor(v) and v.is_meta]
    if meta and device.type != "meta":
        raise ValueError(
            f"{', '.join(meta)} on the meta device hold no values: build the inputs on a real device "
            "(model.to_inputs(...) gives CPU tensors; hooks_mm moves them to the model's device)."
        )
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs.items()}


def to_inputs(
    processor: Any,
    text: str | Sequence[str],
    images: Any = None,
    *,
    videos: Any = None,
    audio: Any = None,
    answer: str | Sequence[str] | None = None,
    chat: bool | None = None,
    **processor_kwargs: Any,
) -> dict[str, Tensor]:
    """See :meth:`hooks_mm.HookedMLLM.to_inputs`."""
    if processor is None:
        raise ValueError(
            "this model has no processor: pass model inputs (input_ids, attention_mask, "
            "pixel_values, ...) directly, or load it with HookedMLLM.from_pretrained(dir) "
            "from a directory holding the processor, or HookedMLLM(hf_model, processor)."
        )
    texts = [text] if isinstance(text, str) else list(text)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(
            f"to_inputs needs one prompt string or a non-empty list of strings, got {text!r}: pass at least one prompt."
        )
    if chat is None:  # the template the model was trained with, unless the text already carries it
        markers = template_markers(processor) if getattr(processor, "chat_template", None) else None
        chat = markers is not None and not any(m in t for m in markers for t in texts)
    if chat:
        texts = [render_chat(processor, t) for t in texts]
    tok = getattr(processor, "tokenizer", processor)
    media = [k for k, v in (("images", images), ("videos", videos), ("audio", audio)) if v is not None]
    if media and tok is processor:  # a tokenizer would drop them without a word
        raise ValueError(
            f"this model's processor is only its tokenizer (the full processor could not be loaded), so the {media[0]} "
            "given would be dropped: build the inputs with the family's processor and pass them to the model directly."
        )
    tok.padding_side = "left"
    kwargs: dict[str, Any] = {"return_tensors": "pt", "padding": True}
    if images is not None:
        kwargs["images"] = images if isinstance(images, (list, tuple)) else [images]
    if videos is not None:
        kwargs["videos"] = videos
    if audio is not None:
        kwargs["audio"] = audio
        fe = getattr(processor, "feature_extractor", None)
        if getattr(fe, "sampling_rate", None):
            kwargs.setdefault("sampling_rate", fe.sampling_rate)
    kwargs.update(processor_kwargs)
    enc = {k: v for k, v in dict(processor(text=texts, **kwargs)).items() if torch.is_tensor(v)}
    seq_keys = [k for k, v in enc.items() if v.shape[:2] == enc["input_ids"].shape]
    enc[SEGMENTS_KEY] = torch.where(enc["attention_mask"].bool(), int(Segment.INSTRUCTION), int(Segment.NONE))
    if answer is not None:
        answers = [answer] * len(texts) if isinstance(answer, str) else list(answer)
        if len(answers) != len(texts):
            raise ValueError(f"{len(answers)} answers for {len(texts)} prompts: give one answer per prompt.")
        ids = [tok(a, add_special_tokens=False)["input_ids"] for a in answers]
        enc = append_answers(enc, [*seq_keys, SEGMENTS_KEY], ids, tok.pad_token_id or 0)
    return enc


def render_chat(processor: Any, text: str) -> str:
    """One user turn through the processor's chat template; ``<image>`` etc. mark the media."""
    if not getattr(processor, "chat_template", None):
        raise ValueError(
            "this processor has no chat template: call to_inputs(..., chat=False) with the "
            "processor's own image placeholder in the text."
        )
    parts: list[dict[str, str]] = []
    for piece in re.split("(" + "|".join(PLACEHOLDERS) + ")", text):
        if piece in PLACEHOLDERS:
            parts.append({"type": piece[1:-1]})
        elif piece.strip():
            parts.append({"type": "text", "text": piece.strip()})
    messages = [{"role": "user", "content": parts}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


MARK = "HOOKSMMPROMPT"


def template_markers(processor: Any) -> list[str]:
    """The chat template's turn markers around a user turn (``USER:`` / ``ASSISTANT:``, ``<|im_start|>user`` ...)."""
    try:
        rendered = render_chat(processor, MARK)
    except Exception:  # a template that cannot render a text-only turn: nothing to detect
        return []
    before, _, after = rendered.partition(MARK)
    bos = getattr(getattr(processor, "tokenizer", processor), "bos_token", None)
    before = before.removeprefix(bos).strip() if bos else before.strip()
    return [m for m in (before.splitlines()[-1].strip() if before else "", after.strip().split("\n")[0]) if m]


def append_answers(enc: dict[str, Any], seq_keys: list[str], answers: list[list[int]], pad_id: int) -> dict[str, Any]:
    """Append answer ids after each row's prompt and left-pad again."""
    am = enc["attention_mask"].bool()
    rows: dict[str, list[Tensor]] = {k: [] for k in seq_keys}
    for i, ans in enumerate(answers):
        a = torch.tensor(ans, dtype=torch.long)
        fill = {
            "input_ids": a,
            "attention_mask": torch.ones_like(a),
            SEGMENTS_KEY: torch.full_like(a, int(Segment.ANSWER)),
        }
        for k in seq_keys:
            rows[k].append(torch.cat([enc[k][i][am[i]], fill.get(k, torch.zeros_like(a)).to(enc[k].dtype)]))
    width = max(len(r) for r in rows["input_ids"])
    for k in seq_keys:
        value = pad_id if k == "input_ids" else 0
        enc[k] = torch.stack([torch.cat([torch.full((width - len(r),), value, dtype=r.dtype), r]) for r in rows[k]])
    return enc
