"""The README pictures, produced by the library on tiny random-weight models.

``python scripts/readme_figures.py [OUT_DIR]`` (default ``docs/img``; ``make figures``) writes

* ``patch_heatmap.png``: attention from the last token over the patches of a wide image
  in tiny LLaVA-NeXT (base grid, unpadded high-res grid and its newline tokens);
* ``attention_view.png``: the offline circuitsvis attention view of tiny LLaVA with its
  two image spans collapsed and their patch grids below (a headless-Chromium screenshot,
  so Chromium must be installed: the tests' Playwright helper, ``tests/browser.py``);
* ``circuit_graph.png``: the EAP-IG circuit graph of colour questions on the trained ``toy-llava``
  (``graph_figure``, the 30 strongest edges over the image's 3x3 cells).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from hooks_mm import HookedMLLM
from hooks_mm.vis.circuits import attention_heads
from hooks_mm.vis.common import str_tokens
from hooks_mm.vis.heatmap import patch_heatmap
from hooks_mm.vis.html import page
from hooks_mm.zoo import toy_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # for tests/browser.py


def heatmap_figure(out: Path) -> Path:
    model = HookedMLLM.from_pretrained("tiny-llava_next")
    image = toy_image(3, size=64).resize((96, 40))
    inputs = model.to_inputs(["<image> what is in the image ?"], images=[[image]], chat=False)
    layout = model.layout(inputs)
    _, cache = model.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_pattern"))
    attn = cache["blocks.1.attn.hook_pattern"][0, :, -1].mean(0)  # [seq]: from the last token
    fig = patch_heatmap(
        attn,
        layout,
        0,
        images=[image],
        title="tiny-llava-next (random weights): attention from the last token, layer 1, mean of heads",
    )
    path = out / "patch_heatmap.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def attention_figure(out: Path) -> Path:
    from browser import Chromium  # tests/browser.py: Playwright driving Debian's chromium

    model = HookedMLLM.from_pretrained("tiny-llava")
    images = [toy_image(1), toy_image(2)]
    inputs = model.to_inputs(["<image> <image> what is the red square ?"], images=[images], chat=False)
    layout = model.layout(inputs)
    _, cache = model.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_pattern"))
    view = attention_heads(
        cache["blocks.1.attn.hook_pattern"],
        str_tokens(model, inputs),
        layout,
        images=images,
        title="tiny-llava (random weights), layer 1: image spans collapsed, patch grids below",
    )
    path = out / "attention_view.png"
    with tempfile.TemporaryDirectory() as tmp, Chromium(width=900, height=900) as browser:
        html = Path(tmp) / "view.html"
        html.write_text(page([view]), encoding="utf-8")
        loaded = browser.open(html, ready="document.querySelector('.hmm-cv').children.length > 0", settle=0.8)
        if loaded.external:
            raise RuntimeError(f"the view requested {loaded.external}")
        browser.screenshot(".hmm-vis").save(path)
    return path


def circuit_figure(out: Path) -> Path:
    from hooks_mm.circuits import eap_graph
    from hooks_mm.sweep.metrics import answer_logprob
    from hooks_mm.tasks import make_qa
    from hooks_mm.tasks.evaluate import answer_ids, encode
    from hooks_mm.vis.graph import graph_figure

    model = HookedMLLM.from_pretrained("toy-llava")
    qa = make_qa(8, split="test", seed=0, p_text=0.0, kinds=("colour",))
    other = make_qa(8, split="test", seed=1, p_text=0.0, kinds=("colour",))
    clean = model.prepare(encode(model, qa))
    corrupted = model.to_inputs([e.prompt for e in qa], images=[e.image for e in other])
    metric = answer_logprob(model, clean, answer_ids(model, qa))
    g = eap_graph(model, clean, corrupted, metric, inputs="cell", method="eap-ig", steps=5)
    title = "toy-llava, colour questions (8 rows, other scenes as corruption): EAP-IG, 30 strongest edges"
    path = out / "circuit_graph.png"
    graph_figure(g, images=[qa[0].image], k=30, title=title).savefig(path, dpi=110, bbox_inches="tight")
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "docs/img")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for path in (heatmap_figure(out), attention_figure(out), circuit_figure(out)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
