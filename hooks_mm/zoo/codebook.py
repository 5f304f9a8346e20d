"""A discrete image tokenizer for AnyGPT-style models: patches -> nearest codebook colour.

The processor expands every ``<image>`` placeholder in the text into
``<soi> <img_k> ... <eoi>`` code tokens (one per grid cell, row-major), so a plain causal LM
with an extended vocabulary reads images as tokens.

Example::

    proc = CodebookProcessor(tokenizer, codebook=torch.rand(16, 3), grid=(4, 4))
    batch = proc(text=["<image> what colour ?"], images=[pil_image], return_tensors="pt")
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
import torch
from einops import rearrange
from transformers import AutoTokenizer, BatchEncoding

CONFIG_NAME = "hooks_mm_codebook.json"


class CodebookProcessor:
    image_token = "<image>"

    def __init__(self, tokenizer: Any, codebook: torch.Tensor, grid: tuple[int, int] = (4, 4), image_size: int = 32):
        self.tokenizer = tokenizer
        self.codebook = torch.as_tensor(codebook, dtype=torch.float32)
        self.grid = tuple(grid)
        self.image_size = image_size
        self.code_ids = tokenizer.convert_tokens_to_ids([f"<img_{k}>" for k in range(len(self.codebook))])
        self.soi, self.eoi = tokenizer.convert_tokens_to_ids(["<soi>", "<eoi>"])

    def encode_image(self, image: Any) -> list[int]:
        """Token ids of one PIL image: ``grid`` cells, each its nearest codebook colour."""
        img = image.convert("RGB").resize((self.image_size, self.image_size))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
        cells = rearrange(x, "(gh h) (gw w) c -> (gh gw) (h w) c", gh=self.grid[0], gw=self.grid[1]).mean(1)
        codes = torch.cdist(cells, self.codebook).argmin(1)
        return [self.code_ids[int(c)] for c in codes]

    def __call__(
        self,
        text: str | Sequence[str],
        images: Any = None,
        return_tensors: str | None = "pt",
        padding: bool = True,
        **kwargs: Any,
    ) -> BatchEncoding:
        texts = [text] if isinstance(text, str) else list(text)
        flat = list(images) if images is not None else []
        flat = [im for group in flat for im in (group if isinstance(group, (list, tuple)) else [group])]
        n_placeholders = sum(t.count(self.image_token) for t in texts)
        if n_placeholders != len(flat):
            raise ValueError(
                f"{n_placeholders} {self.image_token} placeholders in the text but {len(flat)} images: "
                "give one image per placeholder."
            )
        rows, it = [], iter(flat)
        for t in texts:
            ids: list[int] = [self.tokenizer.bos_token_id]
            for i, part in enumerate(t.split(self.image_token)):
                if i:
                    ids += [self.soi, *self.encode_image(next(it)), self.eoi]
                ids += self.tokenizer(part, add_special_tokens=False)["input_ids"]
            rows.append(ids)
        return self.tokenizer.pad({"input_ids": rows}, padding=padding, return_tensors=return_tensors)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def save_pretrained(self, path: str) -> None:
        self.tokenizer.save_pretrained(path)
        with open(os.path.join(path, CONFIG_NAME), "w") as f:
            json.dump({"codebook": self.codebook.tolist(), "grid": list(self.grid), "image_size": self.image_size}, f)

    @classmethod
    def from_pretrained(cls, path: str) -> "CodebookProcessor":
        with open(os.path.join(path, CONFIG_NAME)) as f:
            cfg = json.load(f)
        tok = AutoTokenizer.from_pretrained(path)
        return cls(tok, torch.tensor(cfg["codebook"]), tuple(cfg["grid"]), cfg["image_size"])

    @staticmethod
    def is_saved_in(path: str) -> bool:
        return os.path.isfile(os.path.join(path, CONFIG_NAME))
