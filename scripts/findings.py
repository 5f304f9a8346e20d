"""The research findings, measured on the built-in organisms (the README's findings table).

    python scripts/findings.py [--n 200]
    python scripts/findings.py --by-depth      # erasure cost at every block input (toy-llava)

Each finding is one library call on one organism, reported with its measured numbers and
whether it agrees with what the papers report (methods.md):

- centroid erasure (``toy-llava``): erasing the text after the image costs more accuracy
  than erasing the image (K = 256, text bank at ~0.4 and visual at ~0.5 of depth);
- text-centric bias (``toy-anygpt`` vs ``toy-anygpt-monotune``): the unimodal stage lowers
  the bias ratio;
- neuron masking (``toy-anygpt``): masking the image-specific neurons (LAPE) hurts
  image-token perplexity more than text perplexity;
- implicit alignment (``toy-llava``): pooled image and text states have a low cosine, below
  the image-image control, and image tokens have larger norms.

A development tool, outside the package (it writes the README's table from library calls).

Example::

    from findings import findings           # with scripts/ on sys.path
    for f in findings(n=100):
        print(f.name, f.holds, f.measured)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from hooks_mm.analysis.alignment import cross_modal_cosine, pooled_embeddings
from hooks_mm.analysis.erasure import accuracy, choice_score, erasure_cost, text_centric_bias
from hooks_mm.analysis.neurons import activation_probabilities, lape, neuron_masking_matrix, top_difference
from hooks_mm.interventions import CentroidBank, CentroidReplacement
from hooks_mm.model import HookedMLLM
from hooks_mm.selectors import After, Image
from hooks_mm.tasks.evaluate import encode, word_ids
from hooks_mm.tasks.shapes import ANSWERS, Example, make_captions, make_drawings, make_qa


@dataclass
class Finding:
    name: str
    model: str
    expected: str
    measured: dict[str, float]
    holds: bool

    def row(self) -> str:
        nums = ", ".join(f"{k} {v:.3g}" for k, v in self.measured.items())
        return f"| {self.name} | `{self.model}` | {self.expected} | {nums} | {'yes' if self.holds else 'no'} |"


def _batches(
    model: HookedMLLM, examples: Sequence[Example], size: int = 64, answers: bool = False
) -> list[dict[str, Any]]:
    return [encode(model, examples[i : i + size], answers=answers) for i in range(0, len(examples), size)]


def _erasure_data(model: HookedMLLM, n: int, seed: int) -> tuple[list[Any], list[Any], list[torch.Tensor], Any]:
    """Fit prompts (training split, 4n), ``n`` held-out image-dependent questions, their answers
    (indices into ANSWERS) and the score (argmax over every answer word)."""
    fit = _batches(model, make_qa(4 * n, "train", seed))
    qa = [e for e in make_qa(2 * n, "test", seed) if e.needs_image][:n]
    answers = [torch.tensor([ANSWERS.index(e.answer) for e in qa[i : i + 64]]) for i in range(0, len(qa), 64)]
    return fit, _batches(model, qa), answers, choice_score(word_ids(model, ANSWERS).tolist())


def erasure(model: HookedMLLM, n: int = 200, seed: int = 0, k: int = 256) -> dict[str, float]:
    """Accuracy on image-dependent questions with the text after the image, or the image,
    replaced by its nearest centroid (banks fitted on training-split prompts at the protocol's
    depth, the input of block floor(0.4 n + 1/2) / floor(0.5 n + 1/2); ``k`` centroids, the
    protocol's 256 by default); answers scored by argmax over every answer word."""
    fit, qa, answers, score = _erasure_data(model, n, seed)
    text_bank = CentroidBank.fit(model, fit, positions=After(Image()), k=k)
    visual_bank = CentroidBank.fit(model, fit, positions=Image(), k=k)
    out = erasure_cost(model, qa, answers, score, text_bank, visual_bank)
    return {**out, "text_layer": float(text_bank.layer), "visual_layer": float(visual_bank.layer)}


def erasure_by_depth(model: HookedMLLM, n: int = 200, seed: int = 0, ks: Sequence[int] = (256, 64, 1)) -> list[dict]:
    """Text and visual erasure cost at the input of every block (``blocks.{l}.hook_resid_pre``),
    for each K in ``ks`` (K = 1: every position replaced by the mean, the information-removed
    control). The last block's output is not a site: nothing there reaches the answer from
    another position (``accuracy`` refuses it)."""
    fit, qa, answers, score = _erasure_data(model, n, seed)
    clean = accuracy(model, qa, answers, score)
    rows = []
    for layer in range(model.cfg.n_layers):
        row: dict[str, Any] = {"site": f"blocks.{layer}.hook_resid_pre", "clean": clean}
        for name, pos in (("text", After(Image())), ("visual", Image())):
            for k in ks:
                bank = CentroidBank.fit(model, fit, layer=layer, positions=pos, k=k)
                row[f"{name}_cost_k{k}"] = clean - accuracy(model, qa, answers, score, CentroidReplacement(bank, pos))
        rows.append(row)
    return rows


def bias(model: HookedMLLM, n: int = 200, seed: int = 0) -> dict[str, float]:
    """:func:`text_centric_bias` over ``n`` held-out captions and their images."""
    drawings = make_drawings(n, "test", seed)
    return text_centric_bias(model, [d.scene.caption() for d in drawings], [d.image for d in drawings])


def masking(model: HookedMLLM, n: int = 200, seed: int = 0, selector: str = "lape") -> dict[str, float]:
    """Modality-specific neurons over the image and text tokens of captioning sequences
    (``<image> describe the image . <caption>``; ``selector``: ``"lape"`` with the published
    defaults, or ``"top2"``: the top 2% by probability difference), then the masking matrix on
    held-out ones: perplexity of the image codes (predicted with no text before them) and of
    the text (given the image), with each modality's neurons zeroed. (In caption-then-image
    sequences the codes are copied from the caption at perplexity ~1.00: nothing to hurt.)"""
    batches = _batches(model, make_captions(n, "train", seed), answers=True)
    probs = activation_probabilities(model, batches, ("text", "image"))
    specific = lape(probs).specific if selector == "lape" else top_difference(probs, 2.0)
    held_out = _batches(model, make_captions(n, "test", seed), answers=True)
    m = neuron_masking_matrix(model, held_out, specific, ("text", "image"))
    out = {f"n_{k}_neurons": float(len(v)) for k, v in specific.items()}
    for masked in m.index:
        for ev in m.columns:
            out[f"ppl_{ev}|mask_{masked}"] = float(m.loc[masked, ev])
    return out


def alignment(model: HookedMLLM, n: int = 200, seed: int = 0) -> dict[str, float]:
    """Pooled image / text states of ``n`` QA prompts: the highest per-layer mean cosine over
    all image-text pairs, the image-image control at that layer, and the median token norms
    (image / text) at the last layer."""
    emb = pooled_embeddings(model, _batches(model, make_qa(n, "test", seed)))
    cross, _ = cross_modal_cosine(emb.image, emb.text)
    same, _ = cross_modal_cosine(emb.image, emb.image, exclude_diagonal=True)
    text_same, _ = cross_modal_cosine(emb.text, emb.text, exclude_diagonal=True)
    layer = int(cross.argmax())
    return {
        "layer": float(layer),
        "cos_image_text": float(cross[layer]),
        "cos_image_image": float(same[layer]),
        "cos_text_text": float(text_same[layer]),
        "norm_image": float(emb.image_norm[-1]),
        "norm_text": float(emb.text_norm[-1]),
    }


def findings(n: int = 200, seed: int = 0, models: dict[str, HookedMLLM] | None = None) -> list[Finding]:
    """Measure every finding on the organisms (loaded once each, or taken from ``models``)."""
    models = dict(models or {})
    for name in ("toy-llava", "toy-anygpt", "toy-anygpt-monotune"):
        if name not in models:
            models[name] = HookedMLLM.from_pretrained(name)
    out = []
    e = erasure(models["toy-llava"], n, seed)
    out.append(
        Finding(
            "centroid erasure: text costs more than image",
            "toy-llava",
            "text_cost > visual_cost",
            {k: e[k] for k in ("clean", "text_cost", "visual_cost", "text_layer", "visual_layer")},
            e["text_cost"] > e["visual_cost"],
        )
    )
    paired, mono = bias(models["toy-anygpt"], n, seed), bias(models["toy-anygpt-monotune"], n, seed)
    out.append(
        Finding(
            "text-centric bias: monotune lowers it",
            "toy-anygpt(-monotune)",
            "bias(monotune) < bias(paired)",
            {
                "bias_paired": paired["bias"],
                "bias_monotune": mono["bias"],
                "image_gain_paired": paired["image_gain"],
                "image_gain_monotune": mono["image_gain"],
            },
            mono["bias"] < paired["bias"],
        )
    )
    for selector in ("lape", "top2"):
        m = masking(models["toy-anygpt"], n, seed, selector)
        if "ppl_image|mask_image" in m:
            hurt_image = m["ppl_image|mask_image"] / m["ppl_image|mask_none"]
            hurt_text = m["ppl_text|mask_image"] / m["ppl_text|mask_none"]
        else:  # no image-specific neuron found
            hurt_image = hurt_text = 1.0
        out.append(
            Finding(
                f"masking image neurons ({'LAPE' if selector == 'lape' else 'top 2%'}) hurts image tokens most",
                "toy-anygpt",
                "ppl x image > ppl x text",
                {
                    "n_image_neurons": m.get("n_image_neurons", 0.0),
                    "image_ppl_x": hurt_image,
                    "text_ppl_x": hurt_text,
                    "text_neurons_text_ppl_x": m["ppl_text|mask_text"] / m["ppl_text|mask_none"]
                    if "ppl_text|mask_text" in m
                    else 1.0,
                },
                hurt_image > hurt_text,
            )
        )
    a = alignment(models["toy-llava"], n, seed)
    out.append(
        Finding(
            "implicit alignment: cross-modal cosine low",
            "toy-llava",
            "cos(image, text) < cos(image, image)",
            {k: a[k] for k in ("layer", "cos_image_text", "cos_image_image")},
            a["cos_image_text"] < a["cos_image_image"],
        )
    )
    out.append(
        Finding(
            "image tokens have larger norms",
            "toy-llava",
            "norm(image) > norm(text)",
            {k: a[k] for k in ("norm_image", "norm_text")},
            a["norm_image"] > a["norm_text"],
        )
    )
    return out


def markdown(rows: list[Finding]) -> str:
    head = "| finding | organism | expected | measured | agrees |\n|---|---|---|---|---|"
    return "\n".join([head, *(f.row() for f in rows)])


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python scripts/findings.py", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200, help="examples per measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--by-depth", action="store_true", help="only the erasure cost at every depth (toy-llava)")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    if args.by_depth:
        rows = erasure_by_depth(HookedMLLM.from_pretrained("toy-llava"), args.n, args.seed)
        keys = list(rows[0])
        print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        for r in rows:
            print("| " + " | ".join(f"`{v}`" if isinstance(v, str) else f"{v:.3f}" for v in r.values()) + " |")
        return
    print(markdown(findings(args.n, args.seed)))


if __name__ == "__main__":
    main()
