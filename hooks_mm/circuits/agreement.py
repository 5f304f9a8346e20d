"""Do a graph's edge scores rank edges as exact edge patching does? One patched run per edge.

The exact effect of an edge ``u -> v`` is ``M(only u -> v patched) - M(clean)``, the quantity EAP estimates to
first order. Grouped-query attention: the query heads sharing one key / value head cannot read different inputs,
so edges from one source into such a group are one unit (:func:`~hooks_mm.circuits.faithfulness.edge_units`:
patched together, their scores summed); elsewhere each edge is its own unit. The agreement is the Spearman
rank correlation of scores and effects over the units.

Example::

    ag = eap_agreement(model, g, clean, corrupted, metric)
    ag.spearman, ag.n_units, ag.table.head()      # src, dst, score, effect per unit
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from hooks_mm.circuits.faithfulness import EdgePatcher
from hooks_mm.circuits.graph import Graph
from hooks_mm.circuits.patching import edge_patched_logits

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM


@dataclass
class Agreement:
    """``spearman``: rank correlation of ``scores`` and exact ``effects`` over ``n_units`` units (module
    docstring); ``table``: one row per unit (``src``, ``dst``, ``edges``, ``score``, ``effect``)."""

    spearman: float
    n_units: int
    scores: Float[Tensor, " unit"]
    effects: Float[Tensor, " unit"]
    table: pd.DataFrame


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    ra = torch.tensor(pd.Series(a.double().numpy()).rank().to_numpy())
    rb = torch.tensor(pd.Series(b.double().numpy()).rank().to_numpy())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / den) if den > 0 else float("nan")


def edge_effects(ep: EdgePatcher, groups: list[list[int]]) -> Float[Tensor, " unit"]:
    """``M(only the unit's edges patched) - M(clean)`` for each unit (one patched run each)."""
    effects = []
    for unit in groups:
        patched = torch.zeros_like(ep.possible)
        idx = torch.tensor(unit)
        patched[ep.edge_r[idx], ep.edge_s[idx]] = True
        effects.append(ep.value(edge_patched_logits(ep.model, ep.prep, ep.readers, patched)) - ep.m_clean)
    return torch.tensor(effects, dtype=torch.float64)


def eap_agreement(
    model: HookedMLLM,
    graph: Graph,
    clean: Any,
    corrupted: Any,
    metric: Callable[[Tensor], Any],
    *,
    patcher: EdgePatcher | None = None,
) -> Agreement:
    """Spearman rank correlation between ``graph``'s edge scores and the exact effect of patching each edge (or
    grouped-query unit) alone, over every unit of the graph (module docstring).

    Example::

        ag = eap_agreement(model, g, clean, corrupted, answer_logprob(model, clean))
        print(f"{ag.spearman:.3f} over {ag.n_units} edges")
    """
    ep = patcher or EdgePatcher(model, graph, clean, corrupted, metric)
    groups = ep.units
    if len(groups) < 3:
        raise ValueError(f"the graph has {len(groups)} patchable edge units: a rank correlation needs at least 3.")
    effects = edge_effects(ep, groups)
    scores = torch.tensor([float(graph.scores[u].double().sum()) for u in groups], dtype=torch.float64)
    ids = [n.id for n in graph.nodes]
    table = pd.DataFrame(
        {
            "src": [ids[int(graph.src[u[0]])] for u in groups],
            "dst": [ids[int(graph.dst[u[0]])] if len(u) == 1 else f"{ids[int(graph.dst[u[0]])]}+" for u in groups],
            "edges": [len(u) for u in groups],
            "score": scores.tolist(),
            "effect": effects.tolist(),
        }
    )
    return Agreement(spearman(scores, effects), len(groups), scores, effects, table)
