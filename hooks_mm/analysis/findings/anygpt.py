"""The text-centric-bias finding on the discrete-token organisms: per held-out caption, the log bias
of ``toy-anygpt`` (paired training) minus that of ``toy-anygpt-monotune`` (a unimodal stage after it)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from jaxtyping import Float

from hooks_mm.analysis.findings.common import Finding, check_sizes
from hooks_mm.analysis.stats import bootstrap, verdict
from hooks_mm.model import HookedMLLM
from hooks_mm.sweep.metrics import modality_nll
from hooks_mm.tasks.shapes import make_drawings


@torch.no_grad()
def log_bias(model: HookedMLLM, texts: Sequence[str], images: Sequence[Any]) -> Float[torch.Tensor, " ex"]:
    """Per example, log(image gain) - log(text gain) in mean NLL per token: (NLL of the image codes
    alone - with the caption before them) - (NLL of the caption alone - with the image before it); the
    per-example form of :func:`hooks_mm.analysis.erasure.text_centric_bias` (whose ratio is of
    perplexities pooled over examples).

    Example::

        log_bias(model, [d.scene.caption() for d in drawings], [d.image for d in drawings]).mean()
    """
    token = getattr(model.processor, "image_token", None)
    if token is None:
        raise ValueError("log_bias needs a processor with an image placeholder token (a discrete-token model).")
    texts, images = list(texts), list(images)

    def nll(prompts: list[str], imgs: list[Any] | None, modality: str) -> torch.Tensor:
        inputs = model.to_inputs(prompts, images=imgs)
        return modality_nll(model, inputs, modality, per_row=True)(model(inputs)).double().cpu()

    image_gain = nll([token] * len(texts), images, "image") - nll([f"{t} {token}" for t in texts], images, "image")
    text_gain = nll(texts, None, "text") - nll([f"{token} {t}" for t in texts], images, "text")
    return image_gain - text_gain


def bias(
    paired: HookedMLLM,
    monotune: HookedMLLM,
    n: int = 200,
    seed: int = 0,
    names: tuple[str, str] = ("toy-anygpt", "toy-anygpt-monotune"),
) -> Finding:
    """Text-centric bias, paired vs unimodal-stage organism (``names``: their labels), on ``n`` held-out
    captions and images: per example, log bias(paired) - log bias(monotune); expected > 0 (the unimodal
    stage lowers it)."""
    check_sizes(n)
    drawings = make_drawings(n, "test", seed)
    texts, images = [d.scene.caption() for d in drawings], [d.image for d in drawings]
    lp, lm = [], []
    for i in range(0, n, 64):
        lp.append(log_bias(paired, texts[i : i + 64], images[i : i + 64]))
        lm.append(log_bias(monotune, texts[i : i + 64], images[i : i + 64]))
    a, b = torch.cat(lp), torch.cat(lm)
    return Finding(
        "text-centric bias: monotune lowers it",
        f"{names[0]} vs {names[1]}",
        "log bias(paired) - log bias(monotune) > 0",
        verdict(bootstrap(a - b, seed=seed), null=0.0, expect="greater"),
        {"log_bias_paired": float(a.mean()), "log_bias_monotune": float(b.mean())},
    )
