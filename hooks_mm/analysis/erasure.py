"""Centroid erasure, text-centroid contrastive decoding (TCCD) and visual contrastive
decoding (VCD) (methods.md section 4), and the text-centric bias probe (section 1).

Example::

    text_bank = CentroidBank.fit(model, fit_batches, positions=After(Image()))   # ~0.4 depth
    visual_bank = CentroidBank.fit(model, fit_batches, positions=Image())       # ~0.5 depth
    score = choice_score(option_ids)                    # argmax over the option tokens
    erasure_cost(model, eval_batches, answers, score, text_bank, visual_bank)
    tccd_logits(model, inputs, text_bank, alpha=1.0, a_interp=0.4)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

from hooks_mm.interventions import CentroidBank, CentroidReplacement
from hooks_mm.layout import Modality
from hooks_mm.selectors import After, Image, Last
from hooks_mm.sweep.metrics import modality_nll

if TYPE_CHECKING:
    from hooks_mm.model import Batch, HookedMLLM

Score = Callable[[Tensor, Tensor], Tensor]  # (last-position logits [b, vocab], answers [b]) -> correct [b]


def choice_score(option_ids: Sequence[int]) -> Score:
    """Correct when the argmax over the option tokens is the answer's index."""
    opts = torch.as_tensor(option_ids)

    def score(last_logits: Tensor, answers: Tensor) -> Tensor:
        return (last_logits[:, opts.to(last_logits.device)].argmax(-1) == answers.to(last_logits.device)).float()

    return score


def _last(batch: Batch, logits: Tensor) -> Tensor:
    idx = batch.layout.indices(Last())[:, 0]
    return logits[torch.arange(len(idx)), idx]


@torch.no_grad()
def accuracy(
    model: "HookedMLLM",
    batches: Sequence[Any],
    answers: Sequence[Tensor],
    score: Score,
    spec: Any = None,
    logits_fn: Callable | None = None,
) -> float:
    """Mean score over ``batches`` (``answers[i]`` for batch i), optionally under ``spec``."""
    hits, n = 0.0, 0
    for inputs, ans in zip(batches, answers):
        batch = model.prepare(inputs)
        if logits_fn is not None:
            last = logits_fn(batch)
        else:
            logits = model(batch) if spec is None else model.run_with_interventions(batch, spec)
            last = _last(batch, logits)
        s = score(last, torch.as_tensor(ans))
        hits, n = hits + float(s.sum()), n + len(s)
    return hits / n


def erasure_cost(
    model: "HookedMLLM",
    batches: Sequence[Any],
    answers: Sequence[Tensor],
    score: Score,
    text_bank: CentroidBank,
    visual_bank: CentroidBank,
    a_interp: float = 0.0,
) -> dict[str, float]:
    """Accuracy clean, with the text after the image erased, with the image span erased;
    cost = clean - erased (the paper: text erasure costs ~4x visual erasure)."""
    clean = accuracy(model, batches, answers, score)
    text = accuracy(model, batches, answers, score, CentroidReplacement(text_bank, After(Image()), a_interp))
    visual = accuracy(model, batches, answers, score, CentroidReplacement(visual_bank, Image(), a_interp))
    return {
        "clean": clean,
        "text_erased": text,
        "visual_erased": visual,
        "text_cost": clean - text,
        "visual_cost": clean - visual,
    }


@torch.no_grad()
def tccd_logits(
    model: "HookedMLLM", inputs: Any, text_bank: CentroidBank, alpha: float = 1.0, a_interp: float = 0.4
) -> Tensor:
    """Text-centroid contrastive decoding at the last position:
    ``l_clean + alpha (l_clean - l_text_erased)`` (no plausibility cut-off)."""
    batch = model.prepare(inputs)
    clean = _last(batch, model(batch))
    erased = _last(batch, model.run_with_interventions(batch, CentroidReplacement(text_bank, After(Image()), a_interp)))
    return clean + alpha * (clean - erased)


def tune_tccd(
    model: "HookedMLLM",
    batches: Sequence[Any],
    answers: Sequence[Tensor],
    score: Score,
    text_bank: CentroidBank,
    alphas: Sequence[float] = (-1.0, 0.5, 1.0, 2.0),
    a_interps: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8),
) -> dict[str, Any]:
    """Per-task search over alpha and a_interp; the best accuracy and its setting."""
    grid = {
        (alpha, a): accuracy(
            model, batches, answers, score, logits_fn=lambda x, al=alpha, ai=a: tccd_logits(model, x, text_bank, al, ai)
        )
        for alpha in alphas
        for a in a_interps
    }
    (alpha, a), best = max(grid.items(), key=lambda kv: kv[1])
    return {
        "alpha": alpha,
        "a_interp": a,
        "accuracy": best,
        "clean": accuracy(model, batches, answers, score),
        "grid": grid,
    }


def diffusion_noise(pixel_values: Tensor, t: int = 500, steps: int = 1000, seed: int = 0) -> Tensor:
    """The forward diffusion step ``sqrt(abar_t) x + sqrt(1 - abar_t) eps`` (linear betas
    1e-4 .. 0.02), VCD's distorted image."""
    betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)[t - 1].item()
    eps = torch.randn(pixel_values.shape, generator=torch.Generator().manual_seed(seed)).to(pixel_values)
    return abar**0.5 * pixel_values + (1 - abar) ** 0.5 * eps


@torch.no_grad()
def vcd_logits(
    model: "HookedMLLM", inputs: Any, alpha: float = 1.0, beta: float = 0.1, t: int = 500, seed: int = 0
) -> Tensor:
    """Visual contrastive decoding at the last position: ``(1 + a) l(y|v,x) - a l(y|v',x)``
    with v' the noised image, and -inf where ``p(y|v,x) < beta * max_w p(w|v,x)``."""
    batch = model.prepare(inputs)
    if "pixel_values" not in batch:
        raise ValueError(
            "visual contrastive decoding noises pixel_values; these inputs have none (a discrete-token model?)."
        )
    clean = _last(batch, model(batch)).float().log_softmax(-1)
    noised = dict(batch.inputs, pixel_values=diffusion_noise(batch["pixel_values"], t, seed=seed))
    distorted = _last(batch, model(noised)).float().log_softmax(-1)
    out = (1 + alpha) * clean - alpha * distorted
    cutoff = clean < (torch.log(torch.tensor(beta)) + clean.max(-1, keepdim=True).values)
    return out.masked_fill(cutoff, float("-inf"))


@torch.no_grad()
def text_centric_bias(model: "HookedMLLM", texts: Sequence[str], images: Sequence[Any]) -> dict[str, float]:
    """Perplexity of image tokens with vs without the paired text, and of text tokens with vs
    without the image (discrete-token models, where image tokens are predicted).

    ``image_gain = ppl(image | alone) / ppl(image | text)``, ``text_gain = ppl(text | alone) /
    ppl(text | image)``; ``bias = image_gain / text_gain`` (> 1: the model leans on text to
    predict images more than on images to predict text).
    """
    proc = model.processor
    token = getattr(proc, "image_token", None)
    if token is None:
        raise ValueError(
            "text_centric_bias needs a processor with an image placeholder token (a discrete-token model)."
        )

    def ppl(prompts: list[str], imgs: list[Any] | None, modality: str) -> float:
        inputs = model.to_inputs(prompts, images=imgs)
        return float(modality_nll(model, inputs, modality)(model(inputs)).exp())

    texts, images = list(texts), list(images)
    paired = [f"{t} {token}" for t in texts]  # text first: the image tokens see the text
    paired_rev = [f"{token} {t}" for t in texts]  # image first: the text sees the image
    out = {
        "image_ppl_with_text": ppl(paired, images, "image"),
        "image_ppl_alone": ppl([token] * len(texts), images, "image"),
        "text_ppl_with_image": ppl(paired_rev, images, "text"),
        "text_ppl_alone": ppl(texts, None, "text"),
    }
    out["image_gain"] = out["image_ppl_alone"] / out["image_ppl_with_text"]
    out["text_gain"] = out["text_ppl_alone"] / out["text_ppl_with_image"]
    out["bias"] = out["image_gain"] / out["text_gain"]
    return out


def skip_tradeoff(
    model: "HookedMLLM",
    batches: Sequence[Any],
    answers: Sequence[Tensor],
    score: Score,
    intervals: Sequence[int] = (1, 2, 4),
    start: int = 0,
    component: str = "mlp",
) -> list[dict[str, float]]:
    """Accuracy vs compute when the FFN (or attention / block) is skipped for the image
    positions every ``interval`` layers from ``start`` (the implicit-alignment paper's
    computation skipping). ``mlp_flops_saved`` = the fraction of all MLP FLOPs skipped."""
    from hooks_mm.interventions import Skip, layer_window

    n = model.cfg.n_layers
    batches = [model.prepare(b) for b in batches]
    layouts = [b.layout for b in batches]
    real = sum(int((L.modality != Modality.PAD).sum()) for L in layouts)
    image = sum(int(L.select(Image()).sum()) for L in layouts)
    rows = [
        {
            "interval": 0,
            "layers_skipped": 0,
            "accuracy": accuracy(model, batches, answers, score),
            "mlp_flops_saved": 0.0,
        }
    ]
    for k in intervals:
        layers = layer_window(start, n, k)
        acc = accuracy(model, batches, answers, score, Skip(layers, component, Image()))
        rows.append(
            {
                "interval": k,
                "layers_skipped": len(layers),
                "accuracy": acc,
                "mlp_flops_saved": len(layers) / n * image / real,
            }
        )
    return rows
