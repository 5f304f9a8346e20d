"""Score a HookedMLLM on the shapes task: QA accuracy and per-modality perplexity.

Prompts go through the model's own processor (``HookedMLLM.to_inputs``, with the chat
template where the processor has one), exactly as the organisms were trained. Hooks given
as ``fwd_hooks`` are active during every forward pass, so an ablation is scored the same way.

Example::

    model = HookedMLLM.from_pretrained("toy-llava")
    result = evaluate(model)
    print(result.format())            # accuracy image / text / all, perplexities
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from hooks_mm.layout import Modality, Segment
from hooks_mm.model import HookedMLLM
from hooks_mm.tasks.shapes import Example, Scene, make_captions, make_drawings, make_qa

EOS = "</s>"  # every answer ends with it in training, so generation stops after the answer


def uses_chat(model: HookedMLLM) -> bool:
    return bool(getattr(model.processor, "chat_template", None))


def encode(model: HookedMLLM, examples: Sequence[Example], answers: bool = False) -> dict[str, Tensor]:
    """Model inputs for ``examples`` (left-padded), answers (+ ``</s>``) appended if asked."""
    answer = [f"{e.answer} {EOS}".strip() for e in examples] if answers else None
    return model.to_inputs(
        [e.prompt for e in examples], images=[e.image for e in examples], chat=uses_chat(model), answer=answer
    )


def word_ids(model: HookedMLLM, words: Sequence[str]) -> Int[Tensor, " n"]:
    """Token id of each word (each must be one token of the model's tokenizer)."""
    tok = getattr(model.processor, "tokenizer", model.processor)
    ids = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
    if any(len(i) != 1 for i in ids):
        bad = next(w for w, i in zip(words, ids) if len(i) != 1)
        raise ValueError(f"answer {bad!r} is not one token of this tokenizer; QA accuracy needs one-word answers.")
    return torch.tensor([i[0] for i in ids])


def answer_ids(model: HookedMLLM, examples: Sequence[Example]) -> Int[Tensor, " batch"]:
    """Token id of each example's (one-word) answer."""
    return word_ids(model, [e.answer for e in examples])


@torch.no_grad()
def qa_correct(
    model: HookedMLLM, examples: Sequence[Example], batch_size: int = 128, fwd_hooks: Sequence[Any] = ()
) -> Bool[Tensor, " n"]:
    """Whether the most likely next token after each prompt is its answer."""
    out = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        logits = model.run_with_hooks(encode(model, chunk), fwd_hooks=list(fwd_hooks))
        out.append(logits[:, -1].argmax(-1).cpu() == answer_ids(model, chunk))
    return torch.cat(out)


def accuracy_table(examples: Sequence[Example], correct: Tensor) -> dict[str, float]:
    """Accuracy over ``image`` (needs the image), ``text`` (text-guessable), ``all``, and per
    ``image/<kind>`` / ``text/<kind>``."""
    groups: dict[str, list[bool]] = {}
    for e, ok in zip(examples, correct.tolist()):
        split = "image" if e.needs_image else "text"
        for key in (split, "all", f"{split}/{e.kind}"):
            groups.setdefault(key, []).append(ok)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items(), key=lambda kv: ("/" in kv[0], kv[0]))}


@torch.no_grad()
def perplexity(
    model: HookedMLLM,
    examples: Sequence[Example],
    target: str = "answer",
    batch_size: int = 128,
    fwd_hooks: Sequence[Any] = (),
) -> float:
    """exp(mean NLL) of the target tokens: ``"answer"`` (the answer text + ``</s>``) or
    ``"image"`` (image-token positions, for models that predict image tokens)."""
    if target not in ("answer", "image"):
        raise ValueError(f"target must be 'answer' or 'image', not {target!r}")
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        inputs = encode(model, examples[i : i + batch_size], answers=target == "answer")
        layout = model.layout(inputs)
        mask = layout.segment == Segment.ANSWER if target == "answer" else layout.modality == Modality.IMAGE
        logits = model.run_with_hooks(inputs, fwd_hooks=list(fwd_hooks)).float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, inputs["input_ids"][:, 1:, None])[..., 0]
        keep = mask[:, 1:].to(logp.device)
        total -= float(logp[keep].sum())
        count += int(keep.sum())
    if count == 0:
        raise ValueError(f"no {target} tokens in these examples: nothing to score.")
    return math.exp(total / count)


def predicts_image_tokens(model: HookedMLLM) -> bool:
    """Discrete-token models (image codes in the vocabulary) predict image tokens."""
    return bool(getattr(model.hf_model.config, "modality_token_ranges", None))


@dataclass
class Evaluation:
    """QA accuracy (keys as in :func:`accuracy_table`), ``blind`` accuracy (every image
    replaced by an empty one), and perplexities (``text`` = captions given the image;
    ``image|text`` / ``image`` = image tokens after the caption / alone)."""

    accuracy: dict[str, float]
    blind: dict[str, float]
    perplexity: dict[str, float]
    n: dict[str, int] = field(default_factory=dict)

    def format(self) -> str:
        lines = [f"{'held-out QA accuracy':<24}{'image-dependent':>16}{'text-guessable':>16}{'all':>8}"]
        for label, acc in (("with the image", self.accuracy), ("blind (empty image)", self.blind)):
            if acc:
                lines.append(f"{label:<24}{acc['image']:>16.3f}{acc['text']:>16.3f}{acc['all']:>8.3f}")
        kinds = [k for k in self.accuracy if "/" in k]
        lines.append("per kind: " + ", ".join(f"{k} {self.accuracy[k]:.3f}" for k in kinds))
        lines.append("perplexity: " + ", ".join(f"{k} {v:.3f}" for k, v in self.perplexity.items()))
        lines.append("examples: " + ", ".join(f"{k} {v}" for k, v in self.n.items()))
        return "\n".join(lines)


def blind(examples: Sequence[Example]) -> list[Example]:
    """The same prompts with an empty image (no objects)."""
    empty = Scene((), ())
    return [dataclasses.replace(e, scene=empty) for e in examples]


def evaluate(
    model: HookedMLLM,
    n_qa: int = 600,
    n_text: int = 200,
    seed: int = 0,
    fwd_hooks: Sequence[Any] = (),
    with_blind: bool = True,
) -> Evaluation:
    """Held-out (test-split) QA accuracy and perplexities of ``model`` on the shapes task."""
    qa = make_qa(n_qa, "test", seed)
    acc = accuracy_table(qa, qa_correct(model, qa, fwd_hooks=fwd_hooks))
    acc_blind = accuracy_table(qa, qa_correct(model, blind(qa), fwd_hooks=fwd_hooks)) if with_blind else {}
    captions = make_captions(n_text, "test", seed)
    ppl = {"text": perplexity(model, captions, "answer", fwd_hooks=fwd_hooks)}
    n = {"qa": len(qa), "captions": len(captions)}
    if predicts_image_tokens(model):
        ppl["image|text"] = perplexity(model, make_drawings(n_text, "test", seed), "image", fwd_hooks=fwd_hooks)
        ppl["image"] = perplexity(
            model, make_drawings(n_text, "test", seed, with_text=False), "image", fwd_hooks=fwd_hooks
        )
        n["drawings"] = n_text
    return Evaluation(acc, acc_blind, ppl, n)
