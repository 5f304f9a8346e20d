"""How often contrastive decoding changes toy-llava's captions (the README's contrastive-decoding figure).

    python scripts/contrastive_captions.py [--n 16] [--tokens 32]

Captions ``n`` held-out (test-split) scenes greedily, with VCD (beta 0.1, t = 500) and with
TCCD (text bank fitted on 128 train-split captions at the protocol depth, K = 16, a_interp
0.4, beta 0), each at alpha 1, 5 and 20, and counts the captions that differ from greedy and
those that equal the scene's true caption. A description, not a finding: no interval, and the
organism's greedy captions are near perfect, so there is little for contrast to fix.

A development tool, outside the package.
"""

from __future__ import annotations

import argparse

import torch

from hooks_mm.analysis import contrastive_generate, tccd, vcd
from hooks_mm.interventions import CentroidBank
from hooks_mm.model import HookedMLLM
from hooks_mm.selectors import After, Image
from hooks_mm.tasks import make_captions
from hooks_mm.tasks.evaluate import encode


def captions(model: HookedMLLM, tokens: torch.Tensor, prompt: int) -> list[str]:
    text = model.tokenizer.batch_decode(tokens[:, prompt:], skip_special_tokens=True)
    return [" ".join(t.split()) for t in text]


def main(n: int = 16, new: int = 32, alphas: tuple[float, ...] = (1.0, 5.0, 20.0)) -> dict[str, list[str]]:
    model = HookedMLLM.from_pretrained("toy-llava")
    examples = make_captions(n, "test", 0)
    inputs = encode(model, examples)
    prompt = inputs["input_ids"].shape[1]
    fit = [encode(model, make_captions(32, "train", seed)) for seed in range(4)]
    bank = CentroidBank.fit(model, fit, positions=After(Image()), k=16)
    runs = {"greedy": model.generate(inputs, max_new_tokens=new)}
    for alpha in alphas:
        runs[f"vcd a={alpha:g}"] = contrastive_generate(model, inputs, vcd(), alpha=alpha, beta=0.1, max_new_tokens=new)
        runs[f"tccd a={alpha:g}"] = contrastive_generate(
            model, inputs, tccd(bank, 0.4), alpha=alpha, beta=0.0, max_new_tokens=new
        )
    out = {k: captions(model, v, prompt) for k, v in runs.items()}
    truth = [" ".join(e.answer.split()) for e in examples]
    for k, caps in out.items():
        differ = sum(c != g for c, g in zip(caps, out["greedy"]))
        right = sum(c == t for c, t in zip(caps, truth))
        print(f"{k:12s} differ from greedy {differ:2d}/{n}  equal to the true caption {right:2d}/{n}")
    for k, caps in out.items():
        for c, g, t in zip(caps, out["greedy"], truth):
            if c != g:
                print(f"{k}: truth {t!r}\n    greedy {g!r}\n    this   {c!r}")
                break
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    main(args.n, args.tokens)
