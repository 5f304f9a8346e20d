"""What a tiny-config builder returns."""

from __future__ import annotations

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
