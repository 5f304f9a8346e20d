"""Findings on ``toy-llava``'s held-out image questions, each a paired per-example difference judged
against zero: centroid erasure (text vs image), TCCD's gain, implicit alignment, token norms."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float

from hooks_mm.analysis.alignment import pooled_embeddings
from hooks_mm.analysis.erasure import accuracy, choice_score, tccd_logits, tune_tccd
from hooks_mm.analysis.findings.common import Finding, batches, check_sizes, image_questions
from hooks_mm.analysis.stats import bootstrap, verdict
from hooks_mm.interventions import CentroidBank, CentroidReplacement
from hooks_mm.model import HookedMLLM
from hooks_mm.selectors import After, Image, Text
from hooks_mm.tasks.evaluate import word_ids
from hooks_mm.tasks.shapes import ANSWERS, make_qa


def _score(model: HookedMLLM) -> Any:
    return choice_score(word_ids(model, ANSWERS).tolist())


@torch.no_grad()
def erasure(model: HookedMLLM, n: int = 200, k: int = 256, seed: int = 0, name: str = "toy-llava") -> Finding:
    """Centroid erasure at the protocol's depths (banks of ``k`` centroids fitted on ``4 n`` training-split
    prompts): per held-out example, (correct with the image erased) - (correct with the text after the image
    erased) = text cost - visual cost; the paper expects > 0.

    Example::

        erasure(model, n=200).verdict.effect        # text cost - visual cost [95 % interval]
    """
    check_sizes(n)
    fit = batches(model, make_qa(4 * n, "train", seed))
    qa, answers = image_questions(model, n, "test", seed)
    score = _score(model)
    text_bank = CentroidBank.fit(model, fit, positions=After(Image()), k=k)
    visual_bank = CentroidBank.fit(model, fit, positions=Image(), k=k)
    clean = accuracy(model, qa, answers, score, per_example=True)
    text = accuracy(model, qa, answers, score, CentroidReplacement(text_bank, After(Image())), per_example=True)
    visual = accuracy(model, qa, answers, score, CentroidReplacement(visual_bank, Image()), per_example=True)
    return Finding(
        "centroid erasure: text costs more than image",
        name,
        "text cost - visual cost > 0",
        verdict(bootstrap(visual - text, seed=seed), null=0.0, expect="greater"),
        {
            "clean": float(clean.mean()),
            "text_cost": float((clean - text).mean()),
            "visual_cost": float((clean - visual).mean()),
            "text_layer": float(text_bank.layer),
            "visual_layer": float(visual_bank.layer),
        },
    )


@torch.no_grad()
def tccd_gain(
    model: HookedMLLM,
    n: int = 200,
    k: int = 256,
    seed: int = 0,
    alphas: Sequence[float] = (-1.0, 0.5, 1.0, 2.0),
    a_interps: Sequence[float] = (0.0, 0.2, 0.4, 0.6),
    name: str = "toy-llava",
) -> Finding:
    """TCCD's accuracy gain on held-out questions: alpha and a_interp chosen on ``n`` development
    questions (training split), the text bank fitted on ``4 n`` other training prompts; per held-out
    example, correct with TCCD - correct clean.

    Example::

        tccd_gain(model, n=200).details["alpha"]
    """
    check_sizes(n)
    fit = batches(model, make_qa(4 * n, "train", seed + 1))
    dev, dev_answers = image_questions(model, n, "train", seed)
    test, test_answers = image_questions(model, n, "test", seed)
    score = _score(model)
    bank = CentroidBank.fit(model, fit, positions=After(Image()), k=k)
    tuned = tune_tccd(model, dev, dev_answers, score, bank, test, test_answers, alphas, a_interps)
    alpha, a = tuned["alpha"], tuned["a_interp"]
    clean = accuracy(model, test, test_answers, score, per_example=True)
    tccd = accuracy(
        model, test, test_answers, score, logits_fn=lambda b: tccd_logits(model, b, bank, alpha, a), per_example=True
    )
    return Finding(
        "TCCD raises held-out accuracy",
        name,
        "accuracy gain > 0",
        verdict(bootstrap(tccd - clean, seed=seed), null=0.0, expect="greater"),
        {"alpha": alpha, "a_interp": a, "dev_gain": tuned["dev_accuracy"] - tuned["dev_clean"]},
    )


def _pooled(model: HookedMLLM, qa: Sequence[Any]) -> tuple[Float[torch.Tensor, "n layer d"], ...]:
    """Per example and layer, the mean image and mean text state (``hook_resid_post``)."""
    emb = pooled_embeddings(model, qa)
    return emb.image, emb.text


@torch.no_grad()
def alignment(model: HookedMLLM, n: int = 200, seed: int = 0, name: str = "toy-llava") -> Finding:
    """Implicit alignment: the layer where pooled image and text states are most alike is chosen on ``n``
    training-split prompts; on ``n`` held-out ones, per example i, mean_j cos(image_i, image_j) (j != i,
    the control) - mean_j cos(image_i, text_j); the paper expects > 0 (the modalities stay apart).

    Example::

        alignment(model).details["layer"]
    """
    check_sizes(n)
    img, txt = _pooled(model, batches(model, make_qa(n, "train", seed)))
    layer = int(F.cosine_similarity(img[:, None], txt[None], dim=-1).mean((0, 1)).argmax())
    img, txt = (x[:, layer] for x in _pooled(model, batches(model, make_qa(n, "test", seed))))
    cross = F.cosine_similarity(img[:, None], txt[None], dim=-1).mean(1)
    same = F.cosine_similarity(img[:, None], img[None], dim=-1)
    same = (same.sum(1) - same.diagonal()) / (len(img) - 1)
    return Finding(
        "implicit alignment: cross-modal cosine below image-image",
        name,
        "cos(image, image) - cos(image, text) > 0",
        verdict(bootstrap((same - cross).double(), seed=seed), null=0.0, expect="greater"),
        {"layer": float(layer), "cos_image_text": float(cross.mean()), "cos_image_image": float(same.mean())},
    )


@torch.no_grad()
def norms(model: HookedMLLM, n: int = 200, seed: int = 0, name: str = "toy-llava") -> Finding:
    """Per held-out example, the median L2 norm of its image tokens minus that of its text tokens at the
    last layer's output (``blocks.{L-1}.hook_resid_post``).

    Example::

        norms(model).verdict.effect
    """
    check_sizes(n)
    hook = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    diffs, img_med, txt_med = [], [], []
    for inputs in batches(model, make_qa(n, "test", seed)):
        batch = model.prepare(inputs)
        _, cache = model.run_with_cache(batch, names_filter=[hook])
        norm = cache[hook].norm(dim=-1)
        image, text = batch.layout.select(Image()), batch.layout.select(Text())
        for r in range(norm.shape[0]):
            if image[r].any() and text[r].any():
                i, t = norm[r][image[r]].median(), norm[r][text[r]].median()
                diffs.append(float(i - t))
                img_med.append(float(i))
                txt_med.append(float(t))
    return Finding(
        "image tokens have larger norms",
        name,
        "norm(image) - norm(text) > 0",
        verdict(bootstrap(diffs, seed=seed), null=0.0, expect="greater"),
        {"norm_image": float(torch.tensor(img_med).median()), "norm_text": float(torch.tensor(txt_med).median())},
    )
