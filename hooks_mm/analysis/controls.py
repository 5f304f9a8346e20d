"""Random controls of the same size as a selection: neurons (same count in the same layers) and positions.

A finding about selected neurons ("ablating the image neurons drops accuracy") means something
only beside the same intervention on random neurons of the same count in the same layers, drawn
many times; a finding about positions, beside random positions of the same count per row.

Example::

    image = lape(probs).specific["image"]                         # [(layer, neuron), ...]
    draws = [random_neurons(image, model.cfg.d_mlp, seed=s) for s in range(20)]
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
from jaxtyping import Bool
from torch import Tensor


def random_neurons(neurons: Sequence[tuple[int, int]], d_mlp: int, seed: int) -> list[tuple[int, int]]:
    """As many neurons in each layer as ``neurons`` holds there, drawn uniformly without
    replacement among that layer's *other* neurons (seeded: one draw per seed).

    Example::

        random_neurons([(0, 3), (0, 7), (2, 1)], d_mlp=512, seed=0)   # two in layer 0, one in layer 2
    """
    neurons = [(int(l), int(j)) for l, j in neurons]
    if len(set(neurons)) != len(neurons):
        raise ValueError("random_neurons: the selection lists a neuron twice: pass distinct (layer, neuron) pairs.")
    bad = [(l, j) for l, j in neurons if l < 0 or not 0 <= j < d_mlp]
    if bad:
        raise ValueError(f"random_neurons: {bad[:4]} are not (layer >= 0, 0 <= neuron < d_mlp={d_mlp}) pairs.")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for layer, count in sorted(Counter(l for l, _ in neurons).items()):
        taken = {j for l, j in neurons if l == layer}
        pool = torch.tensor([j for j in range(d_mlp) if j not in taken], dtype=torch.long)
        if len(pool) < count:
            raise ValueError(
                f"random_neurons: layer {layer} has {count} selected neurons and only {len(pool)} others: "
                "a control of the same size cannot avoid the selection; select fewer neurons there."
            )
        out += [(layer, int(j)) for j in pool[torch.randperm(len(pool), generator=gen)[:count]]]
    return out


def random_positions(
    selected: Bool[Tensor, "batch pos"], allowed: Bool[Tensor, "batch pos"], seed: int
) -> Bool[Tensor, "batch pos"]:
    """Per row, as many positions as ``selected`` holds, drawn uniformly among the ``allowed``
    positions that are not selected (e.g. ``allowed`` = the row's text or non-padding positions).

    Example::

        control = random_positions(layout.mask(Image()), layout.mask(NonPad()), seed=0)
    """
    if selected.shape != allowed.shape or selected.dim() != 2:
        raise ValueError(
            f"random_positions: selected {tuple(selected.shape)} and allowed {tuple(allowed.shape)} must be "
            "[batch, pos] masks of one layout."
        )
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros_like(selected, dtype=torch.bool)
    for r in range(selected.shape[0]):
        pool = (allowed[r] & ~selected[r]).nonzero().flatten()
        count = int(selected[r].sum())
        if len(pool) < count:
            raise ValueError(
                f"random_positions: row {r} selects {count} positions but only {len(pool)} other allowed ones "
                "remain: allow more positions (e.g. every non-padding one) or select fewer."
            )
        out[r, pool[torch.randperm(len(pool), generator=gen)[:count]]] = True
    return out
