"""The findings' curves, every point with a bootstrap interval over held-out examples: centroid erasure per
block input and K, TCCD's held-out gain per alpha, and the implicit-alignment cosines per layer with their
image-image and text-text controls.

Example::

    from hooks_mm.analysis.findings.curves import erasure_by_depth
    table = erasure_by_depth(HookedMLLM.from_pretrained("toy-llava"), n=200)   # one row per (site, K)
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from hooks_mm.analysis.alignment import pooled_embeddings
from hooks_mm.analysis.erasure import accuracy, choice_score, tccd_logits
from hooks_mm.analysis.findings.common import batches, check_sizes, image_questions
from hooks_mm.analysis.stats import Interval, bootstrap
from hooks_mm.interventions import CentroidBank, CentroidReplacement
from hooks_mm.model import HookedMLLM
from hooks_mm.selectors import After, Image
from hooks_mm.tasks.evaluate import word_ids
from hooks_mm.tasks.shapes import ANSWERS, make_qa


def _cols(name: str, iv: Interval) -> dict[str, float]:
    return {name: iv.value, f"{name}_lo": iv.lo, f"{name}_hi": iv.hi}


@torch.no_grad()
def erasure_by_depth(
    model: HookedMLLM, n: int = 200, ks: Sequence[int] = (256, 64, 1), seed: int = 0, progress: bool | None = False
) -> pd.DataFrame:
    """Text and visual erasure cost at the input of every block that can still reach the answer, for each K
    in ``ks`` (K = 1: every position replaced by the bank's mean, the information-removed control);
    ``erases_nothing`` names the banks with at least as many centroids as distinct states (their cost is 0
    by construction). Banks
    are fitted on ``4 n`` training-split prompts; costs and their paired difference (text - visual) are
    measured on ``n`` held-out image questions, each with a 95 % interval over examples.

    Example::

        t = erasure_by_depth(model, n=200, ks=(64,))
        t[["site", "k", "text_cost", "text_cost_lo", "text_cost_hi", "gap", "gap_lo", "gap_hi"]]
    """
    check_sizes(n)
    fit = batches(model, make_qa(4 * n, "train", seed))
    qa, answers = image_questions(model, n, "test", seed)
    score = choice_score(word_ids(model, ANSWERS).tolist())
    clean = accuracy(model, qa, answers, score, per_example=True)
    rows = []
    for layer in range(model.cfg.n_layers):
        for k in ks:
            cost, inert = {}, {}
            for name, pos in (("text", After(Image())), ("visual", Image())):
                with warnings.catch_warnings():  # recorded in the row instead
                    warnings.filterwarnings("ignore", message="CentroidBank.fit: .* distinct states")
                    bank = CentroidBank.fit(model, fit, layer=layer, positions=pos, k=k, progress=progress)
                inert[name] = bank.meta["n_distinct"] <= k
                erased = accuracy(model, qa, answers, score, CentroidReplacement(bank, pos), per_example=True)
                cost[name] = clean - erased
            rows.append(
                {
                    "site": f"blocks.{layer}.hook_resid_pre",
                    "k": k,
                    "clean": float(clean.mean()),
                    **_cols("text_cost", bootstrap(cost["text"], seed=seed)),
                    **_cols("visual_cost", bootstrap(cost["visual"], seed=seed)),
                    **_cols("gap", bootstrap(cost["text"] - cost["visual"], seed=seed)),
                    "erases_nothing": ",".join(n for n, v in inert.items() if v),  # k >= distinct states
                }
            )
    return pd.DataFrame(rows)


@torch.no_grad()
def tccd_by_alpha(
    model: HookedMLLM,
    n: int = 200,
    alphas: Sequence[float] = (-1.0, 0.5, 1.0, 2.0, 5.0),
    a_interp: float = 0.4,
    k: int = 256,
    seed: int = 0,
) -> pd.DataFrame:
    """TCCD's accuracy gain over the clean model on ``n`` held-out image questions for each ``alpha`` (text
    bank of ``k`` centroids fitted on ``4 n`` training-split prompts at its default depth; ``a_interp``
    fixed), each with a 95 % interval over examples. Nothing is tuned on the held-out split.

    Example::

        tccd_by_alpha(model, n=200)[["alpha", "gain", "gain_lo", "gain_hi"]]
    """
    check_sizes(n)
    fit = batches(model, make_qa(4 * n, "train", seed + 1))
    qa, answers = image_questions(model, n, "test", seed)
    score = choice_score(word_ids(model, ANSWERS).tolist())
    bank = CentroidBank.fit(model, fit, positions=After(Image()), k=k, progress=False)
    clean = accuracy(model, qa, answers, score, per_example=True)
    rows = []
    for alpha in alphas:

        def logits(b: Any, alpha: float = alpha) -> torch.Tensor:
            return tccd_logits(model, b, bank, alpha, a_interp)

        gain = accuracy(model, qa, answers, score, logits_fn=logits, per_example=True) - clean
        rows.append({"alpha": alpha, "a_interp": a_interp, **_cols("gain", bootstrap(gain, seed=seed))})
    return pd.DataFrame(rows)


@torch.no_grad()
def alignment_by_layer(model: HookedMLLM, n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per layer, on ``n`` held-out prompts: per example i, the mean cosine of its pooled image state with every
    example's pooled text state (cross-modal, its own included, as the paper's all pairs), with every other
    example's image state (image-image control) and of its text state with the others' text states (text-text
    control); each a mean over examples with a 95 % interval, and the per-example gap image-image -
    cross-modal (:func:`hooks_mm.analysis.findings.alignment` at one layer).

    Example::

        alignment_by_layer(model, n=200)[["layer", "cross", "cross_lo", "cross_hi", "image_image", "gap_lo"]]
    """
    check_sizes(n)
    emb = pooled_embeddings(model, batches(model, make_qa(n, "test", seed)))
    m = emb.image.shape[0]
    off = ~torch.eye(m, dtype=torch.bool)

    def mean_cos(a: torch.Tensor, b: torch.Tensor, same: bool) -> torch.Tensor:  # [m]: over j (j != i if same)
        sims = F.cosine_similarity(a[:, None], b[None], dim=-1).double()
        return (sims * off).sum(1) / (m - 1) if same else sims.mean(1)

    rows = []
    for layer in range(emb.image.shape[1]):
        img, txt = emb.image[:, layer], emb.text[:, layer]
        cross, ii, tt = mean_cos(img, txt, False), mean_cos(img, img, True), mean_cos(txt, txt, True)
        rows.append(
            {
                "layer": layer,
                **_cols("cross", bootstrap(cross, seed=seed)),
                **_cols("image_image", bootstrap(ii, seed=seed)),
                **_cols("text_text", bootstrap(tt, seed=seed)),
                **_cols("gap", bootstrap(ii - cross, seed=seed)),
            }
        )
    return pd.DataFrame(rows)
