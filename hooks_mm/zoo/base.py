"""What a tiny-config builder returns, and the pieces the builders share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Tiny:
    """A real HF model with random weights, plus inputs that exercise its image path.

    ``inputs`` can be passed as ``model(**inputs)``: a batch of two rows with padding in
    one of them, images in at least one row (two images in a row where the family allows).
    """

    model: Any
    inputs: dict[str, torch.Tensor]
    processor: Any | None = None


def toy_image(seed: int, size: int = 32) -> Any:
    """A deterministic PIL image: a coloured background with a square of another colour."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    bg, fg = (torch.rand(2, 3, generator=g) * 255).to(torch.uint8).tolist()
    img = Image.new("RGB", (size, size), tuple(bg))
    x, y = (torch.randint(0, size // 2, (2,), generator=g)).tolist()
    img.paste(tuple(fg), (x, y, x + size // 2, y + size // 2))
    return img


WORDS = (
    "USER ASSISTANT : ? . , a an the is are what which where how many colour color shape "
    "red green blue yellow white black square circle triangle left right top bottom "
    "of in on image picture describe answer yes no one two three four there"
).split()

# special ids of the builders that write token ids by hand (no tokenizer); left_pad pads with PAD
PAD, BOS, EOS = 0, 1, 2
SPECIAL_IDS = dict(pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)


def lm_config(vocab_size: int, **extra: Any) -> dict[str, Any]:
    """Config arguments of a tiny language model: 2 layers, hidden 64, 4 query and 2 key/value
    heads, 512 positions. ``extra`` (special token ids, other sizes) adds or overrides.

    Example::

        LlamaConfig(**lm_config(128, max_position_embeddings=256, **SPECIAL_IDS))
    """
    sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    return dict(vocab_size=vocab_size, **sizes, num_key_value_heads=2, max_position_embeddings=512) | extra


def token_ids(tokenizer: Any) -> dict[str, int]:
    """The tokenizer's ``pad_token_id``, ``bos_token_id``, ``eos_token_id`` (those it has), as config arguments."""
    ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("pad", "bos", "eos")}
    return {k: v for k, v in ids.items() if v is not None}


def init_model(model_cls: Any, config: Any, seed: int) -> Any:
    """``model_cls(config)`` with weights drawn after ``torch.manual_seed(seed)``: fp32, eval mode,
    ``config.architectures`` naming the class (as a saved hub model has it).

    Example::

        model = init_model(LlamaForCausalLM, LlamaConfig(**lm_config(64)), seed=0)
    """
    torch.manual_seed(seed)
    model = model_cls(config)
    model.config.architectures = [model_cls.__name__]
    return model.float().eval()


def left_pad(rows: list[list[int]], types: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """Token rows left-padded (with PAD) into ``input_ids`` and ``attention_mask``, plus
    ``token_type_ids`` from per-token ``types`` where given.

    Example::

        left_pad([[BOS, 7, 8], [BOS, 9]])["attention_mask"]  # [[1, 1, 1], [0, 1, 1]]
    """
    width = max(len(r) for r in rows)
    out = {"input_ids": torch.full((len(rows), width), PAD, dtype=torch.long)}
    out["attention_mask"] = torch.zeros((len(rows), width), dtype=torch.long)
    if types is not None:
        out["token_type_ids"] = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        out["input_ids"][b, width - len(r) :] = torch.tensor(r)
        out["attention_mask"][b, width - len(r) :] = 1
        if types is not None:
            out["token_type_ids"][b, width - len(r) :] = torch.tensor(types[b])
    return out


def chat_prompts(processor: Any, *rows: tuple[Sequence[str], str]) -> list[str]:
    """One user turn per row, ``(media types, text)``, through the processor's chat template,
    with the generation prompt.

    Example::

        texts = chat_prompts(processor, (["image", "image"], "compare them"), (["audio"], "describe"))
    """

    def turn(media: Sequence[str], text: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": t} for t in media] + [{"type": "text", "text": text}]}]

    return [processor.apply_chat_template(turn(m, t), tokenize=False, add_generation_prompt=True) for m, t in rows]


def processor_batch(processor: Any, text: list[str], **media: Any) -> dict[str, torch.Tensor]:
    """The tensors of ``processor(text=text, **media)``, padded; checks that row 1 holds padding.

    Example::

        inputs = processor_batch(processor, texts, images=[img0, img1, img2])
    """
    out = processor(text=text, **media, return_tensors="pt", padding=True)
    inputs = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    assert bool((inputs["attention_mask"][1] == 0).any()), "row 1 should be padded"
    return inputs
