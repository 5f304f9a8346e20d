"""A discrete image (and audio) tokenizer for AnyGPT-style models.

Images: patches -> nearest codebook colour. The processor expands every ``<image>``
placeholder into ``<soi> <img_k> ... <eoi>`` code tokens (one per grid cell, row-major).
Audio (when an ``audio_codebook`` is given): the waveform is cut into frames of
``audio_frame_seconds``, each frame's log band energies (a coarse spectrogram column) go to
the nearest codebook entry, and ``<audio>`` becomes ``<soa> <aud_k> ... <eoa>``: one code per
frame, in time order. A plain causal LM with an extended vocabulary then reads both as tokens.

Example::

    proc = CodebookProcessor(tokenizer, codebook=torch.rand(16, 3), grid=(4, 4),
                             audio_codebook=torch.randn(16, 8), audio_frame_seconds=0.04)
    batch = proc(text=["<image> <audio> what ?"], images=[pil_image], audio=[waveform])
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from einops import rearrange
from transformers import AutoTokenizer, BatchEncoding

CONFIG_NAME = "hooks_mm_codebook.json"


class CodebookProcessor:
    image_token = "<image>"
    audio_token = "<audio>"

    def __init__(
        self,
        tokenizer: Any,
        codebook: torch.Tensor,
        grid: tuple[int, int] = (4, 4),
        image_size: int = 32,
        audio_codebook: torch.Tensor | None = None,
        audio_frame_seconds: float = 0.04,
        sampling_rate: int = 16000,
    ):
        self.tokenizer = tokenizer
        self.codebook = torch.as_tensor(codebook, dtype=torch.float32)
        self.grid = tuple(grid)
        self.image_size = image_size
        self.code_ids = tokenizer.convert_tokens_to_ids([f"<img_{k}>" for k in range(len(self.codebook))])
        self.soi, self.eoi = tokenizer.convert_tokens_to_ids(["<soi>", "<eoi>"])
        self.audio_codebook = None if audio_codebook is None else torch.as_tensor(audio_codebook, dtype=torch.float32)
        self.audio_frame_seconds = float(audio_frame_seconds)
        self.sampling_rate = int(sampling_rate)
        if self.audio_codebook is not None:
            audio_codes = [f"<aud_{k}>" for k in range(len(self.audio_codebook))]
            self.audio_code_ids = tokenizer.convert_tokens_to_ids(audio_codes)
            self.soa, self.eoa = tokenizer.convert_tokens_to_ids(["<soa>", "<eoa>"])

    def audio_features(self, waveform: Any) -> torch.Tensor:
        """``[n_frames, n_bands]`` log band energies of a waveform (one row per code)."""
        x = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
        hop = round(self.audio_frame_seconds * self.sampling_rate)
        n = max(1, len(x) // hop)
        x = torch.nn.functional.pad(x, (0, n * hop - len(x)))[: n * hop]
        spec = torch.fft.rfft(rearrange(x, "(n h) -> n h", h=hop), dim=-1).abs() ** 2
        bands = self.audio_codebook.shape[1]
        edges = torch.linspace(0, spec.shape[1], bands + 1).long()
        energy = torch.stack([spec[:, a:b].sum(-1) for a, b in pairwise(edges)], -1)
        return torch.log1p(energy)

    def encode_audio(self, waveform: Any) -> list[int]:
        """Token ids of one waveform: one audio code per frame of ``audio_frame_seconds``."""
        if self.audio_codebook is None:
            raise ValueError("this processor has no audio codebook: build it with audio_codebook=... to encode audio.")
        codes = torch.cdist(self.audio_features(waveform), self.audio_codebook).argmin(1)
        return [self.audio_code_ids[int(c)] for c in codes]

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
        audio: Any = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        texts = [text] if isinstance(text, str) else list(text)
        flat = list(images) if images is not None else []
        flat = [im for group in flat for im in (group if isinstance(group, (list, tuple)) else [group])]
        clips = [] if audio is None else [audio] if isinstance(audio, np.ndarray) and audio.ndim == 1 else list(audio)
        for token, items, what in ((self.image_token, flat, "image"), (self.audio_token, clips, "audio clip")):
            n_placeholders = sum(t.count(token) for t in texts)
            if n_placeholders != len(items):
                raise ValueError(
                    f"{n_placeholders} {token} placeholders in the text but {len(items)} {what}s: "
                    f"give one {what} per placeholder."
                )
        rows, images_it, audio_it = [], iter(flat), iter(clips)
        for t in texts:
            ids: list[int] = [self.tokenizer.bos_token_id]
            for piece in re.split(f"({re.escape(self.image_token)}|{re.escape(self.audio_token)})", t):
                if piece == self.image_token:
                    ids += [self.soi, *self.encode_image(next(images_it)), self.eoi]
                elif piece == self.audio_token:
                    ids += [self.soa, *self.encode_audio(next(audio_it)), self.eoa]
                elif piece:
                    ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"]
            rows.append(ids)
        return self.tokenizer.pad({"input_ids": rows}, padding=padding, return_tensors=return_tensors)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def save_pretrained(self, path: str) -> None:
        self.tokenizer.save_pretrained(path)
        cfg = {"codebook": self.codebook.tolist(), "grid": list(self.grid), "image_size": self.image_size}
        if self.audio_codebook is not None:
            cfg.update(
                audio_codebook=self.audio_codebook.tolist(),
                audio_frame_seconds=self.audio_frame_seconds,
                sampling_rate=self.sampling_rate,
            )
        with open(os.path.join(path, CONFIG_NAME), "w") as f:
            json.dump(cfg, f)

    @classmethod
    def from_pretrained(cls, path: str) -> CodebookProcessor:
        with open(os.path.join(path, CONFIG_NAME)) as f:
            cfg = json.load(f)
        tok = AutoTokenizer.from_pretrained(path)
        audio = cfg.get("audio_codebook")
        return cls(
            tok,
            torch.tensor(cfg["codebook"]),
            tuple(cfg["grid"]),
            cfg["image_size"],
            audio_codebook=None if audio is None else torch.tensor(audio),
            audio_frame_seconds=cfg.get("audio_frame_seconds", 0.04),
            sampling_rate=cfg.get("sampling_rate", 16000),
        )

    @staticmethod
    def is_saved_in(path: str) -> bool:
        return os.path.isfile(os.path.join(path, CONFIG_NAME))
