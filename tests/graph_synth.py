"""A small synthetic circuit graph (hooks_mm.circuits.Graph) with planted values, for the view and export tests.

One image of 3x3 patch cells, an instruction span with a hostile label, 2 layers of 2 heads and an MLP, the logit.
Every node feeds every later node with a small random score; two edges are planted far above the rest.
"""

from __future__ import annotations

import torch

from hooks_mm.circuits import Graph, Node

STRONG = ("input:image0/t0r1c2", "L1.H0", 3.0)  # the strongest edge (positive: the red end of RdBu_r)
NEGATIVE = ("L0.MLP", "logit", -2.0)  # second strongest (negative: the blue end)
NASTY_LABEL = '<script>window.__pwned=1</script> & "q" $x$'


def synthetic_graph(seed: int = 0, n_layers: int = 2, n_heads: int = 2, side: int = 3) -> Graph:
    nodes = [
        Node(
            f"input:image0/t0r{r}c{c}",
            "input",
            -1,
            modality="image",
            image=0,
            tile=0,
            row=r,
            col=c,
            positions=[[1 + r * side + c]],
        )
        for r in range(side)
        for c in range(side)
    ]
    text_pos = 1 + side * side
    nodes.append(
        Node("input:instruction", "input", -1, modality="instruction", positions=[[text_pos]], label=NASTY_LABEL)
    )
    for l in range(n_layers):
        nodes += [Node(f"L{l}.H{h}", "head", l, head=h, positions=[list(range(text_pos + 1))]) for h in range(n_heads)]
        nodes.append(Node(f"L{l}.MLP", "mlp", l, positions=[list(range(text_pos + 1))]))
    nodes.append(Node("logit", "logit", n_layers, positions=[[text_pos]], label="logit: answer 'red'"))
    writes = [i for i, n in enumerate(nodes) if n.kind != "logit"]
    src, dst = [], []
    for i in writes:
        for j, v in enumerate(nodes):
            later = v.layer > nodes[i].layer or (
                v.layer == nodes[i].layer and v.kind == "mlp" and nodes[i].kind == "head"
            )
            if v.kind != "input" and later:
                src.append(i), dst.append(j)
    g = torch.Generator().manual_seed(seed)
    scores = (torch.rand(len(src), generator=g) - 0.5) * 0.5
    ids = [n.id for n in nodes]
    for a, b, v in (STRONG, NEGATIVE):
        hit = [e for e in range(len(src)) if ids[src[e]] == a and ids[dst[e]] == b]
        scores[hit[0]] = v
    node_scores = torch.zeros(len(nodes))
    for e in range(len(src)):
        node_scores[src[e]] += scores[e]
    return Graph(
        nodes,
        torch.tensor(src),
        torch.tensor(dst),
        scores,
        node_scores,
        "eap",
        "answer_logprob('red')",
        {
            "n_layers": n_layers,
            "n_heads": n_heads,
            "architecture": "synthetic",
            "str_tokens": ["<s>"] + ["<image>"] * side * side + ["what colour ? <b>"],
            "corruption": "blank image",
        },
    )


def toy_llava_graph(n: int = 2):
    """A real graph: EAP on the trained toy-llava, colour questions, corrupted by other scenes; with the images."""
    from hooks_mm import HookedMLLM
    from hooks_mm.circuits import eap_graph
    from hooks_mm.sweep.metrics import answer_logprob
    from hooks_mm.tasks import make_qa
    from hooks_mm.tasks.evaluate import answer_ids, encode

    model = HookedMLLM.from_pretrained("toy-llava")
    qa = make_qa(n, split="test", seed=0, p_text=0.0, kinds=("colour",))
    other = make_qa(n, split="test", seed=1, p_text=0.0, kinds=("colour",))
    clean = model.prepare(encode(model, qa))
    corrupted = model.to_inputs([e.prompt for e in qa], images=[e.image for e in other])
    metric = answer_logprob(model, clean, answer_ids(model, qa))
    return eap_graph(model, clean, corrupted, metric, inputs="cell"), [qa[0].image]
