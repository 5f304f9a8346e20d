"""Findings about modality-specific neurons, each against random neurons of the same count in the same
layers: ablating them on toy-llava's image questions, masking them on toy-anygpt's captions (each cell of the
masking matrix: :func:`masking` for the diagonal, :func:`masking_specificity` for a row's own - other increase)."""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from jaxtyping import Float

from hooks_mm.analysis.controls import random_neurons
from hooks_mm.analysis.erasure import accuracy, choice_score
from hooks_mm.analysis.findings.common import Finding, batches, check_sizes, image_questions
from hooks_mm.analysis.neurons import activation_probabilities, lape, mask_spec, top_difference
from hooks_mm.analysis.stats import Control, bootstrap, verdict
from hooks_mm.model import HookedMLLM
from hooks_mm.sweep.metrics import modality_nll
from hooks_mm.tasks.evaluate import word_ids
from hooks_mm.tasks.shapes import ANSWERS, make_captions, make_qa

Selector = Literal["lape", "top5", "top2"]
LABELS = {"lape": "LAPE", "top5": "top 5%", "top2": "top 2%"}


def select(model: HookedMLLM, calibration: Sequence[Any], modality: str, selector: Selector) -> list[tuple[int, int]]:
    """``modality``-specific neurons on the calibration batches: LAPE (published defaults) or the top
    5 % / 2 % by probability difference."""
    if selector not in LABELS:
        raise ValueError(f"selector={selector!r}: give one of {sorted(LABELS)}.")
    if modality not in ("text", "image"):
        raise ValueError(f"modality={modality!r}: give 'image' or 'text'.")
    probs = activation_probabilities(model, calibration, ("text", "image"))
    if selector == "lape":
        return lape(probs).specific[modality]
    return top_difference(probs, 5.0 if selector == "top5" else 2.0)[modality]


@torch.no_grad()
def ablation_drop(
    model: HookedMLLM,
    qa: Sequence[Any],
    answers: Sequence[torch.Tensor],
    neurons: Sequence[tuple[int, int]],
    clean: Float[torch.Tensor, " example"] | None = None,
) -> Float[torch.Tensor, " example"]:
    """Per held-out example, correct (1) / wrong (0) clean minus the same with ``neurons`` zeroed at every
    real position (answer = argmax over every answer word at the last position); ``clean``: the clean
    per-example scores when already computed (``accuracy(..., per_example=True)``).

    Example::

        ablation_drop(model, *image_questions(model, 200, "test", 0), [(1, 5), (2, 17)]).mean()
    """
    score = choice_score(word_ids(model, ANSWERS).tolist())
    if clean is None:
        clean = accuracy(model, qa, answers, score, per_example=True)
    if not neurons:
        return clean - clean
    return clean - accuracy(model, qa, answers, score, mask_spec(list(neurons)), per_example=True)


@torch.no_grad()
def neuron_ablation(
    model: HookedMLLM,
    modality: str = "image",
    selector: Selector = "lape",
    n: int = 200,
    draws: int = 20,
    seed: int = 0,
    name: str = "toy-llava",
) -> Finding:
    """Zero the ``modality``-specific MLP neurons (selected on ``n`` training-split prompts: LAPE with
    its published defaults, or the top 5 % / 2 % by probability difference) at every position of ``n``
    held-out image-dependent questions; the effect is the per-example accuracy drop (answer = argmax
    over every answer word), the control the mean drop with random neurons of the same count in the
    same layers (``draws`` seeds).

    Example::

        neuron_ablation(model, selector="top5", n=200, draws=20).verdict.agrees
    """
    check_sizes(n, draws)
    neurons = select(model, batches(model, make_qa(n, "train", seed)), modality, selector)
    label = LABELS[selector]
    if not neurons:
        raise ValueError(f"{label} selected no {modality} neurons in {name}: nothing to ablate; try selector='top5'.")
    qa, answers = image_questions(model, n, "test", seed)
    clean = accuracy(model, qa, answers, choice_score(word_ids(model, ANSWERS).tolist()), per_example=True)
    effect = bootstrap(ablation_drop(model, qa, answers, neurons, clean), seed=seed)
    rand = [random_neurons(neurons, model.cfg.d_mlp, s) for s in range(draws)]
    control = Control.of([float(ablation_drop(model, qa, answers, r, clean).mean()) for r in rand])
    return Finding(
        f"ablating {modality} neurons ({label}) drops accuracy",
        name,
        "drop > drop with random neurons",
        verdict(effect, control, expect="greater"),
        {"n_neurons": float(len(neurons)), "clean_accuracy": float(clean.mean())},
    )


@torch.no_grad()
def row_nll(model: HookedMLLM, held_out: Sequence[Any], modality: str, spec: Any = None) -> Float[torch.Tensor, " ex"]:
    """Per held-out example, the mean next-token NLL of its ``modality`` tokens (under ``spec``)."""
    out = []
    for inputs in held_out:
        batch = model.prepare(inputs)
        logits = model(batch) if spec is None else model.run_with_interventions(batch, spec)
        out.append(modality_nll(model, batch, modality, per_row=True)(logits).double().cpu())
    return torch.cat(out)


OTHER = {"image": "text", "text": "image"}


@torch.no_grad()
def nll_increase(
    model: HookedMLLM,
    held_out: Sequence[Any],
    modality: str,
    neurons: Sequence[tuple[int, int]],
    clean: Float[torch.Tensor, " ex"] | None = None,
) -> Float[torch.Tensor, " ex"]:
    """Per held-out example, the increase of the mean NLL (log perplexity) of its ``modality`` tokens when
    ``neurons`` are zeroed at every real position; ``clean``: ``row_nll(model, held_out, modality)`` when
    already computed.

    Example::

        nll_increase(model, held_out, "text", [(0, 5), (2, 17)]).mean()   # nats per text token
    """
    if clean is None:
        clean = row_nll(model, held_out, modality)
    if not neurons:
        return clean - clean
    return row_nll(model, held_out, modality, mask_spec(list(neurons))) - clean


def caption_neurons(
    model: HookedMLLM, masked: str, selector: Selector, n: int, seed: int, name: str
) -> tuple[list[tuple[int, int]], list[Any]]:
    """The ``masked``-specific neurons selected on ``n`` training-split captioning sequences, and ``n``
    held-out (test split) ones in batches (``select`` refuses a modality other than image / text).

    Example::

        neurons, held_out = caption_neurons(model, "text", "top2", n=200, seed=0, name="toy-anygpt")
        nll_increase(model, held_out, "text", neurons)          # per held-out caption
    """
    neurons = select(model, batches(model, make_captions(n, "train", seed), answers=True), masked, selector)
    if not neurons:
        raise ValueError(f"{LABELS[selector]} selected no {masked} neurons in {name}: try selector='top2'.")
    return neurons, batches(model, make_captions(n, "test", seed), answers=True)


@torch.no_grad()
def masking(
    model: HookedMLLM,
    masked: str = "image",
    selector: Selector = "lape",
    n: int = 200,
    draws: int = 20,
    seed: int = 0,
    name: str = "toy-anygpt",
) -> Finding:
    """Zero the ``masked``-specific neurons (selected on ``n`` training-split captioning sequences
    ``<image> describe the image . <caption>``) on ``n`` held-out ones; the effect is the per-example
    increase of the mean NLL (log perplexity) of the ``masked`` modality's own tokens, the control the
    mean increase with random neurons of the same count in the same layers. The other modality's mean
    increase (the masking matrix's off-diagonal) is in ``details["other_increase"]``; with its interval
    and control: :func:`masking_specificity`.

    Example::

        masking(model, "image", selector="top2").verdict.agrees   # image neurons hurt image codes
        masking(model, "text", selector="top2").verdict.agrees    # text neurons hurt text
    """
    check_sizes(n, draws)
    neurons, held_out = caption_neurons(model, masked, selector, n, seed, name)
    clean = row_nll(model, held_out, masked)
    effect = bootstrap(nll_increase(model, held_out, masked, neurons, clean), seed=seed)
    rand = [random_neurons(neurons, model.cfg.d_mlp, s) for s in range(draws)]
    control = Control.of([float(nll_increase(model, held_out, masked, r, clean).mean()) for r in rand])
    other_increase = nll_increase(model, held_out, OTHER[masked], neurons)
    return Finding(
        f"masking {masked} neurons ({LABELS[selector]}) raises {masked} log-ppl",
        name,
        "increase > increase with random neurons",
        verdict(effect, control, expect="greater"),
        {
            "n_neurons": float(len(neurons)),
            "clean_nll": float(clean.mean()),
            "other_increase": float(other_increase.mean()),
        },
    )


@torch.no_grad()
def masking_specificity(
    model: HookedMLLM,
    masked: str = "image",
    selector: Selector = "lape",
    n: int = 200,
    draws: int = 20,
    seed: int = 0,
    name: str = "toy-anygpt",
) -> Finding:
    """The masking matrix's row for ``masked`` as one paired finding: zero the ``masked``-specific neurons
    (selected as in :func:`masking`) on ``n`` held-out captioning sequences; per sequence, the increase of
    the ``masked`` modality's mean NLL minus the increase of the other modality's, both read from the same
    sequence under the same masking (image codes first, then the text given them), so the two are paired
    and the bootstrap resamples sequences. The control: the same mean difference with random neurons of the
    same count in the same layers (``draws`` seeds); a uniformly harmful mask (random neurons hurting the
    image codes more than text anyway) does not pass.

    Example::

        f = masking_specificity(model, "image", selector="top2")
        f.verdict.effect, f.details["own_increase"], f.details["other_increase"]
    """
    check_sizes(n, draws)
    neurons, held_out = caption_neurons(model, masked, selector, n, seed, name)
    other = OTHER[masked]
    clean = {m: row_nll(model, held_out, m) for m in (masked, other)}

    def increases(ns: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        own, off = (nll_increase(model, held_out, m, ns, clean[m]) for m in (masked, other))
        return own, off

    own, off = increases(neurons)
    effect = bootstrap(own - off, seed=seed)
    gaps = []
    for s in range(draws):
        a, b = increases(random_neurons(neurons, model.cfg.d_mlp, s))
        gaps.append(float((a - b).mean()))
    control = Control.of(gaps)
    return Finding(
        f"masking {masked} neurons ({LABELS[selector]}) raises {masked} log-ppl more than {other}",
        name,
        f"increase({masked}) - increase({other}) > same with random neurons",
        verdict(effect, control, expect="greater"),
        {"n_neurons": float(len(neurons)), "own_increase": float(own.mean()), "other_increase": float(off.mean())},
    )
