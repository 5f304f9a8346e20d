"""Circuits of a :class:`~hooks_mm.circuits.Graph` measured exactly: faithfulness, random controls, agreement.

A circuit is a set of the graph's edges (:func:`select_circuit`: the top ``k`` edges by ``|score|``, the top nodes
and their edges, or those above a threshold; pruned to input -> logit paths with ``connected=True``: the rules are
in :mod:`hooks_mm.circuits.selection`). Its metric ``M(circuit)`` is the clean batch run with EVERY other edge
between the graph's nodes (those missing from the graph included) patched to its corrupted value
(:mod:`hooks_mm.circuits.patching`), and

    faithfulness = (M(circuit) - M(corrupted)) / (M(clean) - M(corrupted)),

1 for the full graph, 0 for the empty circuit. :func:`faithfulness` reports it with random circuits of the same
size (the percentile of the circuit among them, their mean and 2.5-97.5 % interval); :func:`faithfulness_curve`
over a list of ``k``; :func:`eap_agreement` compares the graph's scores with the exact effect of patching each
edge alone (Spearman rank correlation).

Example::

    g = eap_graph(model, clean, corrupted, metric=metric, inputs="cell")
    f = faithfulness(model, g, clean, corrupted, metric, k=20)      # f.value, f.percentile, f.random_mean
    curve = faithfulness_curve(model, g, clean, corrupted, metric, ks=[5, 10, 20, 50])   # a DataFrame
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from hooks_mm.circuits.graph import Graph
from hooks_mm.circuits.patching import Reader, Source, edge_patched_logits, precedes, prepare
from hooks_mm.circuits.selection import (
    check_keep,
    check_rule,
    circuit_of,
    n_items,
    select,
    select_circuit,  # noqa: F401  (its home before circuits/selection.py)
)
from hooks_mm.layout import Modality
from hooks_mm.progress import check_progress, progress_bar
from hooks_mm.sweep.metrics import check_metric_batch

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM

MODALITY = {"image": Modality.IMAGE, "video": Modality.VIDEO, "audio": Modality.AUDIO}


def _positions_mask(positions: list[list[int]], shape: tuple[int, int], what: str) -> Tensor:
    if len(positions) != shape[0] or any(p and not 0 <= min(p) <= max(p) < shape[1] for p in positions):
        raise ValueError(
            f"{what}'s positions are for another batch ({len(positions)} rows) than this one (shape {shape}): build "
            "the graph for this clean batch (eap_graph(model, clean, ...))."
        )
    m = torch.zeros(shape, dtype=torch.bool)
    for row, p in enumerate(positions):
        m[row, p] = True
    return m


def edge_units(model: HookedMLLM, graph: Graph) -> list[list[int]]:
    """``graph``'s edges in units that can be patched alone: one edge each, except under grouped-query attention,
    where the edges from one source into the query heads sharing a key / value head are one unit (those heads'
    keys and values cannot read different inputs)."""
    cfg = model.cfg
    per = cfg.n_heads // cfg.n_key_value_heads
    out: dict[tuple, list[int]] = {}
    for e in range(graph.n_edges):
        dst = graph.nodes[int(graph.dst[e])]
        key: tuple = (
            ("group", int(graph.src[e]), dst.layer, dst.head // per) if per > 1 and dst.kind == "head" else (e,)
        )
        out.setdefault(key, []).append(e)
    return list(out.values())


class EdgePatcher:
    """The graph's edges on one (model, clean, corrupted, metric): ``metric(keep)`` runs the clean batch with every
    edge outside ``keep`` patched (module docstring). ``m_clean`` / ``m_corrupted``: the metric of the two runs.

    Example::

        ep = EdgePatcher(model, g, clean, corrupted, metric)
        ep.metric(select_circuit(g, k=10)), ep.m_clean, ep.m_corrupted
    """

    def __init__(self, model: HookedMLLM, graph: Graph, clean: Any, corrupted: Any, metric: Callable[[Tensor], Any]):
        if not isinstance(graph, Graph):
            raise TypeError(f"give a hooks_mm.circuits.Graph (eap_graph's value), not {type(graph).__name__}.")
        if not callable(metric):
            raise TypeError(
                f"metric must be a callable of the logits (e.g. answer_logprob(model, clean)), not {metric!r}."
            )
        cfg, meta = model.cfg, graph.meta
        for key, mine in (("architecture", cfg.architecture), ("n_layers", cfg.n_layers), ("n_heads", cfg.n_heads)):
            if key in meta and meta[key] != mine:
                raise ValueError(
                    f"the graph was built on another model ({key} {meta[key]!r}, this model {mine!r}): build it on "
                    "this model (eap_graph(model, ...))."
                )
        given = corrupted if isinstance(corrupted, str) else "batch"
        if meta.get("corruption", given) != given:
            raise ValueError(
                f"the graph was scored with corruption {meta['corruption']!r}, this call gives {given!r}: measure a "
                "circuit with the corruption its graph was built with (or build the graph again)."
            )
        clean = model.prepare(clean)
        check_metric_batch(metric, clean)  # a hooks_mm metric made for other inputs: its positions would be wrong
        if "batch_shape" in meta and tuple(meta["batch_shape"]) != clean.shape:
            raise ValueError(
                f"the graph was built for a batch of shape {tuple(meta['batch_shape'])}, the clean batch is "
                f"{clean.shape}: build the graph for this clean batch."
            )
        self.model, self.graph, self.metric_fn = model, graph, metric
        real = clean.layout.modality != Modality.PAD
        sources: list[Source] = []
        readers: list[Reader] = []
        self.s_of: dict[int, int] = {}
        self.r_of: dict[int, int] = {}
        covered = torch.zeros(clean.shape, dtype=torch.long)
        for i, nd in enumerate(graph.nodes):
            mask = _positions_mask(nd.positions, clean.shape, f"node {nd.id}") if nd.positions else None
            if nd.kind == "input":
                if mask is None:
                    raise ValueError(f"input node {nd.id} has no positions: build the graph with eap_graph.")
                code = MODALITY.get(nd.modality)
                if code is not None and not bool((clean.layout.modality[mask] == code).all()):
                    raise ValueError(
                        f"input node {nd.id}'s positions are not {nd.modality} positions of this clean batch: the "
                        "graph was built for another batch; build it for this one."
                    )
                covered += mask
            elif nd.kind == "attn":
                raise NotImplementedError(
                    f"node {nd.id} is a whole attention layer (no per-head outputs): exact edge patching does not "
                    "support such layers; use node-level patching there."
                )
            if mask is not None and nd.kind != "input" and torch.equal(mask, real):
                mask = None  # every real position: no mask (padding is never read)
            if nd.kind in ("input", "head", "mlp"):
                self.s_of[i] = len(sources)
                sources.append(Source(nd.kind, nd.layer, nd.head if nd.kind == "head" else None, mask))
            if nd.kind in ("head", "mlp", "logit"):
                self.r_of[i] = len(readers)
                readers.append(Reader(nd.kind, nd.layer, nd.head if nd.kind == "head" else None, mask))
        if not torch.equal(covered, real.long()):
            raise ValueError(
                "the graph's input nodes do not cover this clean batch's real positions exactly once: it was built "
                "for another batch (or layout); build it for this one."
            )
        self.sources, self.readers = sources, readers
        self.possible = torch.tensor([[precedes(s, r) for s in sources] for r in readers], dtype=torch.bool)
        self.edge_r = torch.tensor([self.r_of.get(int(d), -1) for d in graph.dst], dtype=torch.long)
        self.edge_s = torch.tensor([self.s_of.get(int(s), -1) for s in graph.src], dtype=torch.long)
        ok = (self.edge_r >= 0) & (self.edge_s >= 0)
        ok[ok.clone()] = self.possible[self.edge_r[ok], self.edge_s[ok]]
        if not bool(ok.all()):
            e = int((~ok).nonzero()[0])
            raise ValueError(
                f"edge {graph.nodes[int(graph.src[e])].id} -> {graph.nodes[int(graph.dst[e])].id} cannot exist in "
                f"this {cfg.architecture} (its source is not upstream of its destination): the graph is not of this "
                "model."
            )
        self.units = edge_units(model, graph)
        self.prep = prepare(model, clean, corrupted, sources)
        self.m_clean = self.value(self.prep.clean_logits)
        self.m_corrupted = self.value(self.prep.corrupted_logits)

    def value(self, logits: Tensor) -> float:
        out = self.metric_fn(logits)
        if not torch.is_tensor(out) or out.numel() != 1:
            raise ValueError(
                f"the metric must return one number (a scalar tensor: the mean over rows), got {out!r:.80}: reduce it."
            )
        return float(out)

    def patched(self, keep: Tensor) -> Bool[Tensor, "reader source"]:
        """The [reader, source] mask of patched edges: every possible edge except the kept graph edges."""
        check_keep(self.graph, keep)
        split = [u for u in self.units if len(u) > 1 and 0 < int(keep[u].sum()) < len(u)]
        if split:
            ids = [n.id for n in self.graph.nodes]
            u = split[0]
            raise ValueError(
                f"keep holds some but not all of the edges {ids[int(self.graph.src[u[0]])]} -> "
                f"{', '.join(ids[int(self.graph.dst[e])] for e in u)}: those heads share one key / value head "
                "(grouped-query attention) and cannot read different inputs; keep or drop them together "
                "(select_circuit(g, k, units=patcher.units))."
            )
        out = self.possible.clone()
        out[self.edge_r[keep], self.edge_s[keep]] = False
        return out

    def metric(self, keep: Bool[Tensor, " edge"]) -> float:
        """M(circuit): the metric with every edge outside ``keep`` patched."""
        return self.value(edge_patched_logits(self.model, self.prep, self.readers, self.patched(keep)))

    def faithfulness(self, keep: Bool[Tensor, " edge"]) -> float:
        gap = self.m_clean - self.m_corrupted
        if abs(gap) <= 1e-6 * max(1.0, abs(self.m_clean)):
            raise ValueError(
                f"the corruption does not change the metric (clean {self.m_clean:.6g}, corrupted "
                f"{self.m_corrupted:.6g}): faithfulness is undefined; pick a corruption that changes the answer."
            )
        return (self.metric(keep) - self.m_corrupted) / gap


@dataclass
class Faithfulness:
    """One circuit's faithfulness and its random control (module docstring): ``random`` holds the faithfulness
    of each random circuit of the same size; ``percentile``: the % of them below the circuit's."""

    k: int
    value: float
    metric: float
    m_clean: float
    m_corrupted: float
    random: Float[Tensor, " draw"]
    percentile: float
    random_mean: float
    random_interval: tuple[float, float]


def _control(
    ep: EdgePatcher,
    k: int,
    value: float,
    n_random: int,
    gen: torch.Generator,
    rule: str,
    connected: bool,
    progress: bool | None = None,
) -> dict[str, Any]:
    """The same selection rule applied to ``n_random`` random rankings: ``k`` random items (edge units or nodes)."""
    draws = []
    for _ in progress_bar(range(n_random), desc="faithfulness controls", unit="circuit", progress=progress):
        chosen = torch.randperm(n_items(ep.graph, ep.units, rule), generator=gen)[:k].tolist()
        draws.append(ep.faithfulness(circuit_of(ep.graph, chosen, ep.units, rule, connected)))
    r = torch.tensor(draws, dtype=torch.float64)
    lo, hi = (torch.quantile(r, q).item() for q in (0.025, 0.975)) if n_random else (float("nan"),) * 2
    pct = 100.0 * float((r < value).double().mean()) if n_random else float("nan")
    mean = float(r.mean()) if n_random else float("nan")
    return {"random": r, "percentile": pct, "random_mean": mean, "random_interval": (lo, hi)}


def _check_draws(n_random: int) -> None:
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
        raise ValueError(f"n_random={n_random!r}: give the number of random circuits (an int >= 0; 20 or more).")


def faithfulness(
    model: HookedMLLM,
    graph: Graph,
    clean: Any,
    corrupted: Any,
    metric: Callable[[Tensor], Any],
    k: int | None = None,
    *,
    threshold: float | None = None,
    rule: str = "edges",
    connected: bool = False,
    n_random: int = 20,
    seed: int = 0,
    patcher: EdgePatcher | None = None,
    progress: bool | None = None,
) -> Faithfulness:
    """Faithfulness of the circuit of ``graph``'s top ``k`` edges (or those above ``threshold``; ``rule`` and
    ``connected`` as in :func:`select_circuit`), with ``n_random`` random controls drawn with ``seed``: the same
    rule applied to a random ranking (``k`` random edge units, or ``k`` random nodes and their edges; pruned the
    same way when ``connected``): under the edge rule, as many edges as the circuit before pruning.

    Example::

        f = faithfulness(model, g, clean, corrupted, answer_logprob(model, clean), k=20)
        f.value, f.percentile, f.random_mean, f.random_interval
        faithfulness(model, g, clean, corrupted, metric, k=20, connected=True).k    # the edges that can matter

    ``progress``: a bar over the random circuits (None: automatic, :mod:`hooks_mm.progress`).
    """
    _check_draws(n_random)
    check_rule(rule, connected)
    check_progress(progress, "faithfulness")
    if patcher is not None and (patcher.graph is not graph or patcher.model is not model):
        raise ValueError("patcher= was made for another graph or model: pass the EdgePatcher of this graph and model.")
    ep = patcher or EdgePatcher(model, graph, clean, corrupted, metric)
    keep, n_chosen = select(graph, k, threshold, ep.units, rule, connected)
    value = ep.faithfulness(keep)
    gen = torch.Generator().manual_seed(seed)
    ctl = _control(ep, n_chosen, value, n_random, gen, rule, connected, progress)
    m = value * (ep.m_clean - ep.m_corrupted) + ep.m_corrupted
    return Faithfulness(int(keep.sum()), value, m, ep.m_clean, ep.m_corrupted, **ctl)


def faithfulness_curve(
    model: HookedMLLM,
    graph: Graph,
    clean: Any,
    corrupted: Any,
    metric: Callable[[Tensor], Any],
    ks: Sequence[int],
    *,
    rule: str = "edges",
    connected: bool = False,
    n_random: int = 20,
    seed: int = 0,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Faithfulness of the top-``k`` circuit for each ``k`` in ``ks`` (``rule``, ``connected``: as in
    :func:`faithfulness`), with the random control band: one row per ``k`` (``k``, ``faithfulness``,
    ``random_mean``, ``random_lo``, ``random_hi``, ``percentile``, ``edges``: the circuit's edge count).

    Example::

        curve = faithfulness_curve(model, g, clean, corrupted, metric, ks=[1, 5, 10, 50, g.n_edges])
        faithfulness_curve(model, g, clean, corrupted, metric, ks=[2, 4, 8], rule="nodes", connected=True)

    ``progress``: a bar over ``ks`` (None: automatic, :mod:`hooks_mm.progress`).
    """
    _check_draws(n_random)
    check_rule(rule, connected)
    check_progress(progress, "faithfulness_curve")
    ks = list(ks)
    if not ks:
        raise ValueError("faithfulness_curve needs a non-empty list of k.")
    ep = EdgePatcher(model, graph, clean, corrupted, metric)
    for k in ks:
        select(graph, k, None, ep.units, rule, connected)  # every k checked before the runs
    rows = []
    for k in progress_bar(ks, desc="faithfulness_curve", unit="k", progress=progress):
        f = faithfulness(
            model,
            graph,
            clean,
            corrupted,
            metric,
            k,
            rule=rule,
            connected=connected,
            n_random=n_random,
            seed=seed,
            patcher=ep,
            progress=False,
        )  # fmt: skip  (one bar: the curve's)
        rows.append(
            {
                "k": k,
                "faithfulness": f.value,
                "random_mean": f.random_mean,
                "random_lo": f.random_interval[0],
                "random_hi": f.random_interval[1],
                "percentile": f.percentile,
                "edges": f.k,
            }
        )
    return pd.DataFrame(rows)
