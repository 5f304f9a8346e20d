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
from jaxtyping import Float
from torch import Tensor

from hooks_mm.interventions import CentroidBank, CentroidReplacement
from hooks_mm.interventions.centroid import as_saved, attention_follows
from hooks_mm.layout import Modality
from hooks_mm.progress import check_progress, progress_bar
from hooks_mm.selectors import After, Image, Last
from hooks_mm.sweep.metrics import modality_nll

if TYPE_CHECKING:
    from hooks_mm.model import Batch, HookedMLLM

Score = Callable[[Tensor, Tensor], Tensor]  # (last-position logits [b, vocab], answers [b]) -> correct [b]


def choice_score(option_ids: Sequence[int]) -> Score:
    """Correct when the argmax over the option tokens is the answer's index.

    ``answers`` are option indices ``0..k-1`` (``option_ids.index(token_id)``), not token ids;
    anything else is refused.
    """
    opts = torch.as_tensor(option_ids)
    if opts.ndim != 1 or len(opts) < 1 or opts.is_floating_point():
        raise ValueError(f"choice_score: option_ids must be a non-empty list of token ids, got {option_ids!r}.")
    k = len(opts)

    def score(last_logits: Tensor, answers: Tensor) -> Tensor:
        answers = torch.as_tensor(answers)
        if answers.is_floating_point() or answers.is_complex() or answers.dtype == torch.bool:
            raise ValueError(f"answers must be integer option indices 0..{k - 1}, got dtype {answers.dtype}.")
        if answers.numel() and not bool(((answers >= 0) & (answers < k)).all()):
            bad = answers[(answers < 0) | (answers >= k)][:5].tolist()
            raise ValueError(
                f"answers {bad} are outside 0..{k - 1}: answers are option indices 0..{k - 1}, "
                f"not token ids: pass options.index(token_id) for each answer."
            )
        if vocab_bad := [i for i in opts.tolist() if not 0 <= i < last_logits.shape[-1]]:
            raise ValueError(
                f"option token ids {vocab_bad} are outside the vocabulary (0..{last_logits.shape[-1] - 1})."
            )
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
    progress: bool | None = None,
    per_example: bool = False,
) -> float | Float[Tensor, " example"]:
    """Mean score over ``batches`` (``answers[i]``: one answer per row of batch i), optionally
    under ``spec`` or with the last-position logits given by ``logits_fn(batch)``;
    ``per_example=True`` returns every row's score instead (batches concatenated), for intervals
    (:func:`hooks_mm.analysis.stats.bootstrap`) and paired differences.

    With :func:`choice_score`, answers are option indices. A centroid replacement in ``spec``
    that cannot change a row's last position (no replaced position before it; a bank after
    the last attention) is refused: its cost would be 0 by construction.

    Example::

        accuracy(model, [inputs], [torch.tensor([0, 2])], choice_score(option_ids))

    ``progress``: a bar over the batches (None: automatic, :mod:`hooks_mm.progress`).
    """
    check_progress(progress, "accuracy")
    batches, answers = list(batches), list(answers)
    if not batches or len(answers) != len(batches):
        raise ValueError(
            f"accuracy: {len(batches)} batches and {len(answers)} answer tensors: give one answer tensor "
            "(one answer per row) for each batch, and at least one batch."
        )
    scores = []
    pairs = progress_bar(zip(batches, answers), desc="accuracy", total=len(batches), unit="batch", progress=progress)
    for i, (inputs, ans) in enumerate(pairs):
        batch = model.prepare(inputs)
        ans = torch.as_tensor(ans)
        rows = batch.layout.modality.shape[0]
        if ans.shape != (rows,):
            raise ValueError(
                f"accuracy: answers[{i}] has shape {tuple(ans.shape)}, but batch {i} has {rows} rows: "
                "give one answer per row."
            )
        if logits_fn is not None:
            last = logits_fn(batch)
        else:
            if spec is not None:
                check_reaches_last(model, batch, spec)
            logits = model(batch) if spec is None else model.run_with_interventions(batch, spec)
            last = _last(batch, logits)
        s = torch.as_tensor(score(last, ans))
        if s.shape != (rows,):
            raise ValueError(
                f"accuracy: the score returned shape {tuple(s.shape)} for batch {i} of {rows} rows: "
                "a score returns one value per row ([batch])."
            )
        scores.append(s.detach().double().cpu())
    out = torch.cat(scores)
    return out if per_example else float(out.mean())


def check_reaches_last(model: "HookedMLLM", batch: Batch, spec: Any) -> None:
    """Refuse a centroid replacement in ``spec`` that cannot change some row's last position."""
    for item in getattr(spec, "items", [spec]):
        if isinstance(item, CentroidReplacement):
            rows = item.rows_unreached(model, batch.layout)
            if rows:
                why = (
                    "no replaced position at or before it"
                    if attention_follows(model, item.bank.layer, item.bank.hook)
                    else "no attention follows the bank and the last position is not replaced"
                )
                raise ValueError(
                    f"CentroidReplacement at {item.bank.hook_name} over {item.positions!r} cannot change the "
                    f"last position of rows {rows[:8]} ({why}; present: {batch.layout.summary()}): its cost "
                    "there is 0 by construction; give rows that hold those positions, or bank an earlier layer."
                )


def check_bank(bank: CentroidBank, positions: Any, what: str) -> None:
    """Refuse a bank fitted on other positions than the ones it will replace."""
    fitted = bank.meta.get("positions")
    if fitted is not None and as_saved(fitted) != as_saved(positions.to_dict()):
        raise ValueError(
            f"{what} was fitted at positions {fitted}, but is used here for {positions!r}: "
            "pass the bank fitted on those positions (text_bank: After(Image()), visual_bank: Image())."
        )


def erasure_cost(
    model: "HookedMLLM",
    batches: Sequence[Any],
    answers: Sequence[Tensor],
    score: Score,
    text_bank: CentroidBank,
    visual_bank: CentroidBank,
    a_interp: float = 0.0,
    progress: bool | None = None,
) -> dict[str, float]:
    """Accuracy clean, with the text after the image erased, with the image span erased;
    cost = clean - erased (the paper: text erasure costs ~4x visual erasure).

    Every row must hold image positions and text after them (a row without them would cost
    0 by construction), and each bank must have been fitted on the positions it erases;
    ``progress``: a bar per accuracy pass (None: automatic, :mod:`hooks_mm.progress`).
    """
    check_bank(text_bank, After(Image()), "text_bank")
    check_bank(visual_bank, Image(), "visual_bank")
    clean = accuracy(model, batches, answers, score, progress=progress)
    text_spec, visual_spec = (
        CentroidReplacement(text_bank, After(Image()), a_interp),
        CentroidReplacement(visual_bank, Image(), a_interp),
    )
    text = accuracy(model, batches, answers, score, text_spec, progress=progress)
    visual = accuracy(model, batches, answers, score, visual_spec, progress=progress)
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
    check_bank(text_bank, After(Image()), "text_bank")
    batch = model.prepare(inputs)
    spec = CentroidReplacement(text_bank, After(Image()), a_interp)
    check_reaches_last(model, batch, spec)
    clean = _last(batch, model(batch))
    erased = _last(batch, model.run_with_interventions(batch, spec))
    return clean + alpha * (clean - erased)


def tune_tccd(
    model: "HookedMLLM",
    batches: Sequence[Any],
    answers: Sequence[Tensor],
    score: Score,
    text_bank: CentroidBank,
    test_batches: Sequence[Any],
    test_answers: Sequence[Tensor],
    alphas: Sequence[float] = (-1.0, 0.5, 1.0, 2.0),
    a_interps: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8),
    progress: bool | None = None,
) -> dict[str, Any]:
    """Per-task search over alpha and a_interp on the development split (``batches``,
    ``answers``), reported on the held-out split (``test_batches``, ``test_answers``).

    Returns ``alpha``, ``a_interp`` (chosen on dev), ``dev_accuracy`` / ``dev_clean`` (in-sample:
    optimistic), ``test_accuracy`` / ``test_clean`` / ``test_gain`` (the honest figure) and the
    dev ``grid``. A test batch that repeats a dev batch is refused.

    Example::

        tuned = tune_tccd(model, dev, dev_answers, score, text_bank, test, test_answers)
        tuned["test_gain"]          # held-out accuracy gain of TCCD over the clean model

    ``progress``: a bar over the grid points (None: automatic, :mod:`hooks_mm.progress`).
    """
    check_progress(progress, "tune_tccd")
    dev, test = [model.prepare(b) for b in batches], [model.prepare(b) for b in test_batches]
    for i, t in enumerate(test):
        for j, d in enumerate(dev):
            if t["input_ids"].shape == d["input_ids"].shape and torch.equal(t["input_ids"], d["input_ids"]):
                raise ValueError(
                    f"tune_tccd: test batch {i} repeats dev batch {j}; the held-out figure needs other "
                    "examples: split your data into a development and a test part."
                )

    def acc(bs: list[Any], ans: Sequence[Tensor], alpha: float, a: float) -> float:
        return accuracy(
            model, bs, ans, score, logits_fn=lambda x: tccd_logits(model, x, text_bank, alpha, a), progress=False
        )

    points = [(alpha, a) for alpha in alphas for a in a_interps]
    grid = {p: acc(dev, answers, *p) for p in progress_bar(points, desc="tune_tccd", unit="point", progress=progress)}
    (alpha, a), best = max(grid.items(), key=lambda kv: kv[1])
    test_acc, test_clean = acc(test, test_answers, alpha, a), accuracy(model, test, test_answers, score)
    return {
        "alpha": alpha,
        "a_interp": a,
        "dev_accuracy": best,
        "dev_clean": accuracy(model, dev, answers, score),
        "test_accuracy": test_acc,
        "test_clean": test_clean,
        "test_gain": test_acc - test_clean,
        "grid": grid,
    }


def diffusion_noise(pixel_values: Tensor, t: int = 500, steps: int = 1000, seed: int = 0) -> Tensor:
    """The forward diffusion step ``sqrt(abar_t) x + sqrt(1 - abar_t) eps`` (linear betas
    1e-4 .. 0.02), VCD's distorted image."""
    betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)[t - 1].item()
    eps = torch.randn(pixel_values.shape, generator=torch.Generator().manual_seed(seed)).to(pixel_values)
    return abar**0.5 * pixel_values + (1 - abar) ** 0.5 * eps


def noised_pixels(pixel_values: Tensor, t: int = 500, seed: int = 0) -> Tensor:
    """VCD's distorted image for a batch's ``pixel_values``: :func:`diffusion_noise`, with the
    all-zero padding image slots of [batch, slots, c, h, w] pixels (Idefics) kept zero, as the
    model skips them only while they are zero."""
    out = diffusion_noise(pixel_values, t, seed=seed)
    if pixel_values.dim() == 5:
        out[(pixel_values == 0).flatten(2).all(-1)] = 0
    return out


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
    noised = dict(batch.inputs, pixel_values=noised_pixels(batch["pixel_values"], t, seed=seed))
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
    if len(texts) != len(images) or not texts:
        raise ValueError(f"text_centric_bias: {len(texts)} texts and {len(images)} images: give one image per text.")
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
    progress: bool | None = None,
) -> list[dict[str, float]]:
    """Accuracy vs compute when the FFN (or attention / block) is skipped for the image
    positions every ``interval`` layers from ``start`` (the implicit-alignment paper's
    computation skipping). ``mlp_flops_saved`` = the fraction of all MLP FLOPs skipped;
    ``progress``: a bar per accuracy pass (None: automatic, :mod:`hooks_mm.progress`)."""
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
            "accuracy": accuracy(model, batches, answers, score, progress=progress),
            "mlp_flops_saved": 0.0,
        }
    ]
    for k in intervals:
        layers = layer_window(start, n, k)
        acc = accuracy(model, batches, answers, score, Skip(layers, component, Image()), progress=progress)
        rows.append(
            {
                "interval": k,
                "layers_skipped": len(layers),
                "accuracy": acc,
                "mlp_flops_saved": len(layers) / n * image / real,
            }
        )
    return rows
